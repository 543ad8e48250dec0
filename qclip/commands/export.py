"""`qclip export`: a model (and its quantized variant) as an export folder: `float/` for stock open_clip, the integer
model (`int.safetensors`) that `qclip eval` / `qclip bench` load, and `export.json` listing every quantized map."""

from __future__ import annotations

import argparse

from .flags import add_data_root, add_model_args, add_progress, one_line_errors
from .values import parse_quant, positive_int

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    """Register `qclip export` and its flags."""
    ex = one_line_errors(sub.add_parser("export", help="write a model as a float open_clip folder and its integer "
                                        "(int8 kernel) model, with a manifest of every quantized map"))
    add_model_args(ex, model_help="open_clip architecture, demo, local-dir:PATH, hf-hub:ORG/NAME or a checkpoint file "
                   "(a qclip fit last.ckpt exports with its learned LSQ steps)",
                   quant_help="quantization spec, e.g. w8a8, w4a8-rot, w6a8-lsq, w4 (without it only the float folder "
                   "is written)")
    ex.add_argument("--calib-batches", type=positive_int, default=None,
                    help="calibration batches of 64 images (default: the spec's, 8)")
    ex.add_argument("--dataset", default=None, metavar="wds/NAME",
                    help="calibration images (its train split) for specs that quantize activations")
    add_data_root(ex)
    add_progress(ex)
    ex.add_argument("--out", required=True, help="output folder (float/, int.safetensors, export.json)")


def run(args: argparse.Namespace) -> int:
    """Load, quantize (calibrated), write the export folder; return the exit status."""
    from qclip.experiments.export import export_line, run_export

    spec = parse_quant(args.quant)
    manifest = run_export(args.model, args.out, pretrained=args.pretrained, spec=spec, dataset=args.dataset,
                          data_root=args.data_root, calib_batches=args.calib_batches, progress=not args.no_progress)
    print(export_line(args.model, args.out, spec, manifest))
    for note in manifest["notes"]:
        print(f"note: {note}")
    return 0
