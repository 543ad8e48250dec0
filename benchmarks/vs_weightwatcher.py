"""qclip weight spectra vs WeightWatcher 0.7.7, measured in one run on the same attention-surgered models: speed per
spectrum, and layer-by-layer agreement of the power-law alpha.

Setup (benchmark-only): pip install "weightwatcher==0.7.7"
Usage: python benchmarks/vs_weightwatcher.py [--models demo vit-b-32] [--repeats 2] [--path gram64|svd32+eig64]
       [--per-layer] [--levers]

Models, both random-init (timing depends on the architecture, not on the weights): the demo architecture built
from its open_clip config (`qclip/io/model_configs/qclip-demo.json`: a ModifiedResNet image tower, 19 convolutions,
and a small text transformer) and an open_clip ViT-B-32. Attention surgery exposes every linear map (q/k/v/out,
MLP, projections, convolutions); WeightWatcher's `analyze()` (defaults) runs on the same surgered model, so both
sides see the same layers.

Speed. qclip: the FP weights and their w8 fake-quantized weights (RTN, both towers; activation quantization does
not change spectra) get their spectra — path "gram64" (qclip's `spectrum --svd gram` path): one float64 Gram
eigendecomposition per matrix batched by shape (`layer_spectra_batched`), giving σ and WeightWatcher's ESD;
path "svd32+eig64" (`--svd svd`): float32 `svdvals_batched` for σ plus `layer_eigenvalues_batched` for the ESD
— then `layer_statistics` (stable/effective rank, entropy, WeightWatcher alpha, Clauset alpha) per spectrum.
WeightWatcher: `WeightWatcher(model=surgered).analyze()`. Repeats alternate qclip and WeightWatcher; reported are
the minima (the machine is shared: minima are the least disturbed runs) and the ratio of the per-spectrum minima.

Levers (`--levers`, no WeightWatcher): the decompositions alone, interleaved — the former path (float32 SVD for σ,
float64 SVD for the ESD), float32 SVD + float64 Gram ESD, the shared float64 Gram, and that one without the
two-thread split or without batching by shape.

Agreement. For every layer WeightWatcher fits (not -1), |Δα| between its `alpha` and qclip's `alpha` from the
same path, counted against 1e-9.
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import platform
import time

import open_clip
import torch


def cpu_name() -> str:
    """The CPU model and its SIMD features relevant here, from /proc/cpuinfo (Linux) or platform."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return platform.processor() or "unknown CPU"
    name = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "?")
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    keep = [f for f in ("avx2", "avx512f", "avx512_vnni", "amx_int8") if f in flags]
    return f"{name} ({', '.join(keep) or 'no AVX2'}), {len(__import__('os').sched_getaffinity(0))} CPUs"


def build(name: str) -> torch.nn.Module:
    """A random-init open_clip model: 'demo' (qclip's demo architecture) or 'vit-b-32'."""
    torch.manual_seed(0)
    if name == "demo":
        from qclip.io.demo import DEMO_MODEL_NAME, register_model_configs

        register_model_configs()
        return open_clip.create_model(DEMO_MODEL_NAME).eval()
    return open_clip.create_model("ViT-B-32").eval()


def spectra(weights: list[torch.Tensor], path: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(σ, ESD) of every weight by the chosen path."""
    from qclip.spectral.weights import layer_eigenvalues_batched, layer_spectra_batched, svdvals_batched

    if path == "gram64":
        return layer_spectra_batched(weights)
    return list(zip(svdvals_batched(weights), layer_eigenvalues_batched(weights)))


def qclip_spectra(weights: list[torch.Tensor], path: str) -> tuple[list[dict], dict]:
    """All spectra with statistics; returns the statistics and the seconds spent in decompositions and fits."""
    from qclip.spectral.weights import layer_statistics_batched

    t0 = time.perf_counter()
    pairs = spectra(weights, path)
    t1 = time.perf_counter()
    stats = layer_statistics_batched(pairs)
    return stats, {"decompose": t1 - t0, "fit": time.perf_counter() - t1}


def run_model(name: str, ww, repeats: int, path: str, per_layer: bool) -> dict:
    """Interleaved timing and alpha agreement on one model."""
    from qclip.quant.api import quantize_
    from qclip.quant.modules import effective_weight
    from qclip.quant.surgery import attention_surgery_, list_linear_maps

    fp = attention_surgery_(build(name))
    quantized = copy.deepcopy(fp)
    quantize_(quantized, "w8-vt", None)
    maps = list_linear_maps(fp)
    weights = [fp.get_submodule(m.name).weight.detach() for m in maps]
    weights += [effective_weight(quantized.get_submodule(m.name)).detach() for m in maps]
    q_times, w_times, parts, details, stats = [], [], [], None, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        stats, part = qclip_spectra(weights, path)
        q_times.append(time.perf_counter() - t0)
        parts.append(part)
        t0 = time.perf_counter()
        details = ww.WeightWatcher(model=fp).analyze()
        w_times.append(time.perf_counter() - t0)
    q, w = min(q_times), min(w_times)
    n_q, n_w = len(weights), len(details)
    ref = {row.longname: float(row.alpha) for row in details.itertuples()}
    keep = [i for i, m in enumerate(maps) if m.name in ref and ref[m.name] != -1]
    deltas = [abs(stats[i]["alpha"] - ref[maps[i].name]) for i in keep]
    equal = sum(d <= 1e-9 or (math.isinf(ref[maps[i].name]) and math.isinf(stats[i]["alpha"]))
                for i, d in zip(keep, deltas))
    convs = [i for i in keep if len(maps[i].shape) == 4]
    best = parts[q_times.index(q)]
    print(f"\n{name}: {len(maps)} maps ({len(convs)} convolutions fitted by WeightWatcher), {n_q} qclip spectra "
          f"(FP + w8), {n_w} WeightWatcher layers; {repeats} interleaved repeats, minima")
    print(f"  qclip ({path}): {q:.2f} s = {1000 * q / n_q:.1f} ms/spectrum (decompositions {best['decompose']:.2f} s, "
          f"fits {best['fit']:.2f} s); all: {', '.join(f'{t:.2f}' for t in q_times)}")
    print(f"  WeightWatcher {ww.__version__}: {w:.2f} s = {1000 * w / n_w:.1f} ms/spectrum; all: "
          f"{', '.join(f'{t:.2f}' for t in w_times)}")
    ratio = (w / n_w) / (q / n_q)
    print(f"  speed-up per spectrum (ratio of minima): {ratio:.1f}x (goal >= 5)")
    finite = [d for d in deltas if math.isfinite(d)]
    print(f"  alpha equal within 1e-9 on {equal}/{len(keep)} layers WeightWatcher fits "
          f"({100 * equal / max(1, len(keep)):.1f}%), max |Δα| {max(finite) if finite else float('nan'):.2g}; "
          f"convolutions {sum(deltas[keep.index(i)] <= 1e-9 for i in convs)}/{len(convs)}")
    for i, d in zip(keep, deltas):
        if per_layer or d > 1e-9:
            print(f"    {maps[i].name:52s} {'x'.join(map(str, maps[i].shape)):>12s}  ww {ref[maps[i].name]:.12g}  "
                  f"qclip {stats[i]['alpha']:.12g}  |Δα| {d:.2g}")
    return {"ratio": ratio, "equal": equal, "fitted": len(keep)}


def levers(name: str, repeats: int) -> None:
    """Time the decomposition alternatives alone on one model's FP + w8 weights, interleaved, minima."""
    import os
    from unittest import mock

    from qclip.quant.api import quantize_
    from qclip.quant.modules import effective_weight
    from qclip.quant.surgery import attention_surgery_, list_linear_maps
    from qclip.spectral.weights import layer_eigenvalues_batched, layer_spectra_batched, svdvals_batched

    fp = attention_surgery_(build(name))
    quantized = copy.deepcopy(fp)
    quantize_(quantized, "w8-vt", None)
    maps = list_linear_maps(fp)
    ws = [fp.get_submodule(m.name).weight.detach() for m in maps]
    ws += [effective_weight(quantized.get_submodule(m.name)).detach() for m in maps]
    lin = [w for w in ws if w.dim() == 2]

    def one_thread_pool():
        with mock.patch.object(os, "cpu_count", return_value=1):
            return layer_spectra_batched(ws)

    variants = {
        "before: float32 SVD (σ) + float64 SVD (ESD)": lambda: (svdvals_batched(ws),
                                                                 svdvals_batched(lin, dtype=torch.float64)),
        "float32 SVD (σ) + float64 Gram (ESD)  [--svd svd]": lambda: (svdvals_batched(ws),
                                                                       layer_eigenvalues_batched(ws)),
        "float64 Gram, shared σ + ESD          [--svd gram]": lambda: layer_spectra_batched(ws),
        "  same, one worker thread (no split)": one_thread_pool,
        "  same, not batched by shape": lambda: [layer_spectra_batched([w]) for w in ws],
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):
        for key, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    print(f"\nlevers on {name} ({len(ws)} spectra; decompositions only; {repeats} interleaved repeats, minima):")
    for key, ts in times.items():
        print(f"  {key:52s} {min(ts):7.2f} s  (all: {', '.join(f'{t:.2f}' for t in ts)})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["demo", "vit-b-32"], choices=["demo", "vit-b-32"])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--path", default="gram64", choices=["gram64", "svd32+eig64"])
    ap.add_argument("--levers", action="store_true", help="time the decomposition alternatives only (no WeightWatcher)")
    ap.add_argument("--per-layer", action="store_true", help="print every layer's alphas, not only those that differ")
    args = ap.parse_args()
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    import weightwatcher as ww

    print(f"CPU: {cpu_name()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.levers:
        for name in args.models:
            levers(name, max(1, args.repeats))
        return
    for name in args.models:
        run_model(name, ww, max(1, args.repeats), args.path, args.per_layer)
    print(f"(load average at the end: {', '.join(f'{x:.1f}' for x in __import__('os').getloadavg())})")


if __name__ == "__main__":
    main()
