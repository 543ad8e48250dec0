"""qclip weight spectra vs WeightWatcher 0.7.x on a random-init open_clip ViT-B-32, measured in one run: speed, and
layer-by-layer agreement of the power-law alpha.

Setup (benchmark-only): pip install "weightwatcher==0.7.7"
Usage: python benchmarks/vs_weightwatcher.py [--repeats 2] [--method svd|gram] [--dtype float64|float32] [--per-layer]
       [--no-agreement]

Speed. qclip: attention surgery exposes every linear map (q/k/v/out, MLP, projections, patch embedding: 147 maps
of both towers); the FP weights and their w8a8 fake-quantized weights (RTN, both towers) get batched
`svdvals` (float64 by default, which WeightWatcher's alpha needs to be reproduced exactly) plus per-layer
statistics (stable/effective rank, entropy, WeightWatcher alpha — on `layer_eigenvalues` for the convolution —
and the Clauset alpha). WeightWatcher: `WeightWatcher(model=m).analyze()` on the stock model (it skips MHA's
packed in_proj_weight). Reported: wall time, layers covered, and time per spectrum (one spectrum = one matrix's
singular values + statistics).

Agreement. `WeightWatcher(model=surgered).analyze()` on the attention-surgered FP model (so it sees the same
linear maps as qclip), matched to qclip's maps by module path; per layer |Δα| against WeightWatcher's `alpha` for
`layer_statistics` on float64 and on float32 `svdvals_batched` σ (with `esd=layer_eigenvalues(w)` for the
convolution), `powerlaw_alpha_ww(layer_eigenvalues_batched(...))`, and the previous qclip alpha (now
`alpha_clauset2`: Clauset two-sided-KS fit, on the flattened [out, in·k·k] float32 σ for the convolution).
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import statistics
import time

import open_clip
import torch


def qclip_spectra(model, quantized, method: str, dtype: torch.dtype) -> int:
    """All FP and quantized spectra with statistics; returns the number of spectra computed."""
    from qclip.quant.modules import effective_weight
    from qclip.quant.surgery import attention_surgery_, list_linear_maps
    from qclip.spectral.weights import layer_eigenvalues, layer_statistics, svdvals_batched

    fp = attention_surgery_(copy.deepcopy(model))
    maps = list_linear_maps(fp)
    weights = [fp.get_submodule(m.name).weight for m in maps]
    weights += [effective_weight(quantized.get_submodule(m.name)) for m in maps]
    for w, s in zip(weights, svdvals_batched(weights, method=method, dtype=dtype)):
        layer_statistics(s, esd=layer_eigenvalues(w) if w.dim() == 4 else None)
    return len(weights)


def _summary(deltas: list[float]) -> str:
    finite = [d for d in deltas if math.isfinite(d)]
    if not finite:
        return "no comparable layers"
    differ = sum(d > 1e-6 for d in finite)
    return (f"{len(finite)} layers, |Δα| > 1e-6 on {differ:3d} ({100 * differ / len(finite):3.0f}%), "
            f"median {statistics.median(finite):.2g}, max {max(finite):.3g}")


def alpha_agreement(model, ww, method: str, per_layer: bool) -> None:
    """Per-layer |Δα| between qclip and WeightWatcher's `analyze()` on the attention-surgered model."""
    from qclip.quant.surgery import attention_surgery_, list_linear_maps
    from qclip.spectral.weights import (
        layer_eigenvalues_batched,
        layer_statistics,
        powerlaw_alpha,
        powerlaw_alpha_ww,
        svdvals_batched,
    )

    fp = attention_surgery_(copy.deepcopy(model))
    maps = list_linear_maps(fp)
    t0 = time.perf_counter()
    details = ww.WeightWatcher(model=fp).analyze()
    t_ww = time.perf_counter() - t0
    ref = {row.longname: float(row.alpha) for row in details.itertuples()}
    weights = [fp.get_submodule(m.name).weight.detach() for m in maps]
    t0 = time.perf_counter()
    s64 = svdvals_batched(weights, method=method, dtype=torch.float64)
    esds = layer_eigenvalues_batched(weights)
    t_q = time.perf_counter() - t0
    s32 = svdvals_batched(weights, method=method)
    variants: dict[str, list[float]] = {k: [] for k in ("float64 σ", "float32 σ", "ESD", "previous")}
    for m, w, a, b, esd in zip(maps, weights, s64, s32, esds):
        conv = esd if w.dim() == 4 else None
        variants["float64 σ"].append(layer_statistics(a, esd=conv)["alpha"])
        variants["float32 σ"].append(layer_statistics(b, esd=conv)["alpha"])
        variants["ESD"].append(powerlaw_alpha_ww(esd, eigenvalues=True)["alpha"])
        variants["previous"].append(powerlaw_alpha(b)["alpha"])  # the old `alpha`: flattened float32 σ, Clauset
    keep = [i for i, m in enumerate(maps) if m.name in ref and ref[m.name] != -1]  # -1: WeightWatcher's fit failed
    print(f"alpha agreement on the surgered FP model: {len(maps)} qclip maps, {len(details)} WeightWatcher layers, "
          f"{len(keep)} matched (WeightWatcher analyze {t_ww:.1f} s; qclip float64 σ + ESDs {t_q:.1f} s)")
    labels = {"float64 σ": "layer_statistics(svdvals_batched(float64), conv esd)",
              "float32 σ": "layer_statistics(svdvals_batched(float32), conv esd)",
              "ESD": "powerlaw_alpha_ww(layer_eigenvalues_batched)",
              "previous": "previous alpha (now alpha_clauset2, flattened conv)"}
    for key, label in labels.items():
        print(f"  {label:53s} {_summary([abs(variants[key][i] - ref[maps[i].name]) for i in keep])}")
    for i in keep:
        if per_layer or len(maps[i].shape) == 4:
            print(f"    {maps[i].name:52s} {'x'.join(map(str, maps[i].shape)):>12s}  ww {ref[maps[i].name]:9.4f}  "
                  + "  ".join(f"{k} {variants[k][i]:9.4f}" for k in variants))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--method", default="svd", choices=["svd", "gram"])
    ap.add_argument("--dtype", default="float64", choices=["float32", "float64"],
                    help="qclip's singular values; float64 gives WeightWatcher's alpha exactly (float32: not always)")
    ap.add_argument("--per-layer", action="store_true", help="print every layer's alphas, not only convolutions")
    ap.add_argument("--no-agreement", action="store_true", help="skip the alpha comparison (one more analyze())")
    args = ap.parse_args()
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    import weightwatcher as ww
    from qclip.quant.api import quantize_

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32").eval()
    pristine = copy.deepcopy(model)  # WeightWatcher tags the modules it visits; compare on an untouched copy
    quantized = copy.deepcopy(model)
    quantize_(quantized, "w8-vt", None)  # weights as in w8a8 (activation quant does not change spectra)
    q_times, w_times, n_q, n_w = [], [], 0, 0
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        n_q = qclip_spectra(model, quantized, args.method, getattr(torch, args.dtype))
        q_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        details = ww.WeightWatcher(model=model).analyze()
        w_times.append(time.perf_counter() - t0)
        n_w = len(details)
    if args.repeats > 0:
        q, w = statistics.median(q_times), statistics.median(w_times)
        print(f"torch threads {torch.get_num_threads()}, {args.repeats} alternating repeats, median wall seconds")
        print(f"qclip ({args.method}, {args.dtype}): {n_q} spectra (FP + w8a8 of {n_q // 2} linear maps) in {q:.2f} s "
              f"= {1000 * q / n_q:.1f} ms/spectrum")
        print(f"WeightWatcher {ww.__version__}: {n_w} layers in {w:.2f} s = {1000 * w / n_w:.1f} ms/spectrum")
        print(f"speed-up per spectrum: {(w / n_w) / (q / n_q):.1f}x (goal >= 4)")
    if not args.no_agreement:
        alpha_agreement(pristine, ww, args.method, args.per_layer)


if __name__ == "__main__":
    main()
