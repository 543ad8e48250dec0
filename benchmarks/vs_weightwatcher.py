"""qclip weight spectra vs WeightWatcher 0.7.x on a random-init open_clip ViT-B-32, measured in one run.

Setup (benchmark-only): pip install "weightwatcher==0.7.*"
Usage: python benchmarks/vs_weightwatcher.py [--repeats 2] [--method svd|gram]

qclip: attention surgery exposes every linear map (q/k/v/out, MLP, projections, patch embedding: 147 maps
of both towers); the FP weights and their w8a8 fake-quantized weights (RTN, both towers) get batched
`svdvals` plus per-layer statistics (stable/effective rank, entropy, Clauset alpha). WeightWatcher:
`WeightWatcher(model=m).analyze()` on the stock model (it skips MHA's packed in_proj_weight). Reported: wall
time, layers covered, and time per spectrum (one spectrum = one matrix's singular values + statistics).
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import time

import open_clip
import torch


def qclip_spectra(model, quantized, method: str) -> int:
    """All FP and quantized spectra with statistics; returns the number of spectra computed."""
    from qclip.quant.modules import effective_weight
    from qclip.quant.surgery import attention_surgery, list_linear_maps
    from qclip.spectral.weights import layer_statistics, svdvals_batched

    fp = attention_surgery(copy.deepcopy(model))
    maps = list_linear_maps(fp)
    weights = [fp.get_submodule(m.name).weight for m in maps]
    weights += [effective_weight(quantized.get_submodule(m.name)) for m in maps]
    for s in svdvals_batched(weights, method=method):
        layer_statistics(s)
    return len(weights)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--method", default="svd", choices=["svd", "gram"])
    args = ap.parse_args()
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    import weightwatcher as ww

    from qclip.quant.api import quantize_model

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32").eval()
    quantized = copy.deepcopy(model)
    quantize_model(quantized, "w8-vt", None)  # weights as in w8a8 (activation quant does not change spectra)
    q_times, w_times, n_q, n_w = [], [], 0, 0
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        n_q = qclip_spectra(model, quantized, args.method)
        q_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        details = ww.WeightWatcher(model=model).analyze()
        w_times.append(time.perf_counter() - t0)
        n_w = len(details)
    q, w = statistics.median(q_times), statistics.median(w_times)
    print(f"torch threads {torch.get_num_threads()}, {args.repeats} alternating repeats, median wall seconds")
    print(f"qclip ({args.method}): {n_q} spectra (FP + w8a8 of {n_q // 2} linear maps) in {q:.2f} s "
          f"= {1000 * q / n_q:.1f} ms/spectrum")
    print(f"WeightWatcher {ww.__version__}: {n_w} layers in {w:.2f} s = {1000 * w / n_w:.1f} ms/spectrum")
    print(f"speed-up per spectrum: {(w / n_w) / (q / n_q):.1f}x (goal >= 4)")


if __name__ == "__main__":
    main()
