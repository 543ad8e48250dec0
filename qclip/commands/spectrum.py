"""`qclip spectrum`: weight and feature spectra of a model and its quantized variant (CSVs, PNGs, wandb)."""

from __future__ import annotations

import argparse

from .flags import (
    add_runtime_args,
    check_outputs,
    device_of,
    non_negative_int,
    one_line_errors,
    parse_quant,
    positive_int,
)

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    """Register `qclip spectrum` and its flags."""
    sp = one_line_errors(sub.add_parser("spectrum", help="weight and feature spectra of a model and its quantized "
                                        "variant"))
    sp.add_argument("--model", required=True)
    sp.add_argument("--pretrained", default=None)
    sp.add_argument("--quant", default=None, help="quantization spec to compare against FP (e.g. w4a8)")
    sp.add_argument("--truncate", default=None, help="rank-truncation spec as a control (e.g. rank-e0.9)")
    sp.add_argument("--features", default=None, metavar="wds/NAME",
                    help="dataset for the feature analyses (per-rank SQNR, rank-band accuracy)")
    sp.add_argument("--limit", type=positive_int, default=2000, help="images for the feature analyses")
    sp.add_argument("--bands", default="0-8,8-64,64-", help="rank bands, e.g. 0-8,8-64,64-")
    sp.add_argument("--svd", default="svd", choices=["svd", "gram"], help="singular values by batched SVD or "
                    "Gram eigenvalues (faster, less accurate below ~3e-4·σ_max in float32)")
    sp.add_argument("--frequency-images", type=non_negative_int, default=512, help="images for the 2D-FFT and band-limited "
                    "perturbation analyses (0: skip)")
    sp.add_argument("--data-root", default=None)
    sp.add_argument("--wandb", action="store_true", help="log tables and plots to wandb (offline unless configured)")
    sp.add_argument("--wandb-project", default="qclip")
    sp.add_argument("--no-cache", action="store_true")
    sp.add_argument("--out", required=True, help="output folder")
    add_runtime_args(sp)


def run(args: argparse.Namespace) -> int:
    """Run the spectral analyses into --out; return the exit status."""
    import os

    from qclip.experiments.spectrum import SpectrumConfig, run_spectrum

    parse_quant(args.quant)  # a bad spec reads as a bad --quant flag
    cfg = SpectrumConfig(model=args.model, pretrained=args.pretrained, quant=args.quant, features=args.features,
                         limit=args.limit, bands=args.bands, truncate=args.truncate, svd=args.svd,
                         precision=args.precision, frequency_images=args.frequency_images)  # validates (exit 2)
    check_outputs(dirs={"--out": args.out})  # before any model or data is loaded
    if args.model == "demo":
        from qclip.train.demo import ensure_demo_model

        ensure_demo_model(data_root=args.data_root, progress=not args.no_progress)
    run = None
    if args.wandb:
        import wandb

        os.makedirs(args.out, exist_ok=True)

        run = wandb.init(project=args.wandb_project, mode=os.environ.get("WANDB_MODE", "offline"), dir=args.out,
                         config=vars(args), job_type="spectrum")
    try:
        summary = run_spectrum(cfg, args.out, data_root=args.data_root, device=device_of(args.device),
                               progress=not args.no_progress, use_cache=not args.no_cache, wandb_run=run)
    finally:
        if run is not None:
            run.finish()
    line = f"spectrum of {args.model}: {summary['layers']} linear maps"
    if "sqnr_spearman_rho" in summary:
        line += f", per-rank SQNR Spearman rho = {summary['sqnr_spearman_rho']:.3f}"
    print(f"{line} -> {args.out}")
    return 0
