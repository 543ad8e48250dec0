"""acc1 of the demo model under every PTQ method x bits x scope (issue: quant), plus coverage counts.

Usage: python benchmarks/quant_table.py [--data-root DIR] [--limit 2000]
Prints a Markdown table; features are recomputed per config (each changes the image tower).
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from qclip.evals.variants import make_calibrator
from qclip.evals.zeroshot import evaluate_zero_shot
from qclip.quant.api import quantize_
from qclip.quant.spec import parse_spec
from qclip.train.demo import ensure_demo_model

from qclip.io.data import resolve_dataset
from qclip.io.models import load_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-root", default=None, help="data root (default: $QCLIP_DATA_ROOT, else the cache, where "
                    "registered datasets are built on first use)")
    ap.add_argument("--limit", type=int, default=2000)
    ap.add_argument("--bits", default="w8a8,w6a8,w4a8")
    ap.add_argument("--methods", default=",-smoothquant,-rot")
    args = ap.parse_args()
    torch.manual_seed(0)
    ensure_demo_model(data_root=args.data_root)
    base = load_model("demo")
    spec = resolve_dataset("wds/cifar10", args.data_root, "test")
    calibrate_vt = make_calibrator(base, spec, batches=8, data_root=args.data_root, text=True)
    fp = evaluate_zero_shot(base, spec, limit=args.limit, progress=False).metrics()["acc1"]
    print("| spec | scope | acc1 | Δ vs FP | coverage (vision, text) | seconds |\n|---|---|---|---|---|---|")
    print(f"| fp | - | {fp:.4f} | - | - | - |")
    for bits in args.bits.split(","):
        for method in args.methods.split(","):
            for scope in ("", "-vt"):
                text = f"{bits}{method}{scope}"
                t0 = time.perf_counter()
                loaded = base._replace(model=copy.deepcopy(base.model))
                report = quantize_(loaded.model, parse_spec(text), calibrate_vt)
                acc = evaluate_zero_shot(loaded, spec, limit=args.limit, progress=False).metrics()["acc1"]
                cov = report.coverage_line()
                print(f"| {text} | {parse_spec(text).scope} | {acc:.4f} | {100 * (acc - fp):+.2f} pt | {cov} | "
                      f"{time.perf_counter() - t0:.1f} |", flush=True)


if __name__ == "__main__":
    main()
