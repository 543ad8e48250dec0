"""`qclip spectrum`: weight and feature spectra of a model and its quantized variant (CSVs, PNGs, wandb)."""

from __future__ import annotations

import argparse

from .flags import add_data_root, add_model_args, add_no_cache, add_runtime_args, add_wandb_args, given, one_line_errors
from .values import check_outputs, device_of, non_negative_int, parse_quant, positive_int

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    """Register `qclip spectrum` and its flags."""
    sp = one_line_errors(sub.add_parser("spectrum", help="weight and feature spectra of a model and its quantized "
                                        "variant"))
    add_model_args(sp, model_help="open_clip architecture, demo, local-dir:PATH, hf-hub:ORG/NAME or a checkpoint "
                   "file", quant_help="quantization spec to compare against FP (e.g. w4a8)")
    sp.add_argument("--truncate", default=None, help="rank-truncation spec as a control (e.g. rank-e0.9)")
    sp.add_argument("--features", default=None, metavar="wds/NAME",
                    help="dataset for the feature analyses (per-rank SQNR, rank-band accuracy)")
    sp.add_argument("--limit", type=positive_int, default=None, help="images for the feature analyses")
    sp.add_argument("--bands", default=None, help="rank bands, e.g. 0-8,8-64,64-")
    sp.add_argument("--svd", default=None, choices=["svd", "gram"], help="singular values from float64 Gram "
                    "eigenvalues shared with alpha's ESD (gram, the default: faster) or a float32 SVD (svd)")
    sp.add_argument("--frequency-images", type=non_negative_int, default=None, help="images for the 2D-FFT and "
                    "band-limited perturbation analyses (0: skip)")
    add_data_root(sp)
    add_wandb_args(sp, "log tables and plots to wandb (offline unless configured)")
    add_no_cache(sp)
    sp.add_argument("--out", required=True, help="output folder")
    add_runtime_args(sp)


def run(args: argparse.Namespace) -> int:
    """Run the spectral analyses into --out; return the exit status."""
    from qclip.experiments.demo import ensure_demo
    from qclip.experiments.spectrum import SpectrumConfig, run_spectrum
    from qclip.experiments.tracking import wandb_run

    parse_quant(args.quant)  # a bad spec reads as a bad --quant flag
    cfg = SpectrumConfig(model=args.model, pretrained=args.pretrained, quant=args.quant, features=args.features,
                         truncate=args.truncate, **given(args, "limit", "bands", "svd", "precision",
                                                         "frequency_images"))  # validates (exit 2)
    check_outputs(dirs={"--out": args.out})  # before any model or data is loaded
    ensure_demo(args.model, args.data_root, not args.no_progress)
    with wandb_run(args.wandb, project=args.wandb_project, out=args.out, config=vars(args), job_type="spectrum") as run:
        summary = run_spectrum(cfg, args.out, data_root=args.data_root, device=device_of(args.device),
                               progress=not args.no_progress, use_cache=not args.no_cache, wandb_run=run)
    line = f"spectrum of {args.model}: {summary['layers']} linear maps"
    if "sqnr_spearman_rho" in summary:
        line += f", per-rank SQNR Spearman rho = {summary['sqnr_spearman_rho']:.3f}"
    print(f"{line} -> {args.out}")
    return 0
