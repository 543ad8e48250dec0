"""`qclip export`: a model (and its quantized variant) as an export folder: `float/` for stock open_clip, the integer
model (`int.safetensors`) that `qclip eval` / `qclip bench` load, and `export.json` listing every quantized map."""

from __future__ import annotations

import argparse

from .flags import check_outputs, one_line_errors, parse_quant, positive_int

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    """Register `qclip export` and its flags."""
    ex = one_line_errors(sub.add_parser("export", help="write a model as a float open_clip folder and its integer "
                                        "(int8 kernel) model, with a manifest of every quantized map"))
    ex.add_argument("--model", required=True, help="open_clip architecture, demo, local-dir:PATH, hf-hub:ORG/NAME "
                    "or a checkpoint file (a qclip fit last.ckpt exports with its learned LSQ steps)")
    ex.add_argument("--pretrained", default=None, help="pretrained tag (e.g. openai) or checkpoint path")
    ex.add_argument("--quant", default=None, help="quantization spec, e.g. w8a8, w4a8-rot, w6a8-lsq, w4 (without "
                    "it only the float folder is written)")
    ex.add_argument("--calib-batches", type=positive_int, default=None,
                    help="calibration batches of 64 images (default: the spec's, 8)")
    ex.add_argument("--dataset", default=None, metavar="wds/NAME",
                    help="calibration images (its train split) for specs that quantize activations")
    ex.add_argument("--data-root", default=None, help="folder (or URL) holding wds_NAME/ folders; default "
                    "$QCLIP_DATA_ROOT")
    ex.add_argument("--no-progress", action="store_true", help="hide progress bars")
    ex.add_argument("--out", required=True, help="output folder (float/, int.safetensors, export.json)")


def run(args: argparse.Namespace) -> int:
    """Load, quantize (calibrated), write the export folder; return the exit status."""
    from qclip.evals.variants import needs_calibration, quantize_loaded
    from qclip.io.errors import ConfigError, ModelLoadError
    from qclip.io.models import export_dir_of, load_model, model_config, save_export_dir

    spec = parse_quant(args.quant)
    if spec is not None and needs_calibration(spec) and args.dataset is None:
        raise ConfigError(f"--quant {spec} quantizes activations: pass --dataset wds/NAME for calibration images")
    if export_dir_of(args.model) is not None:
        raise ModelLoadError(f"--model {args.model} is already an export folder: export its source model instead")
    check_outputs(dirs={"--out": args.out})  # before any model or data is loaded
    dataset = None
    if args.dataset is not None:
        from qclip.io.data import resolve_dataset

        dataset = resolve_dataset(args.dataset, args.data_root, "test")
    if args.model == "demo":
        from qclip.train.demo import ensure_demo_model

        ensure_demo_model(data_root=args.data_root, progress=not args.no_progress)
    fp = load_model(args.model, args.pretrained)
    model_cfg, preprocess_cfg = model_config(args.model)
    source = {"model": args.model, "pretrained": args.pretrained, "quant": None if spec is None else str(spec)}
    model, w_bits = fp.model, None
    if spec is not None:
        ckpt = next((p for p in (args.model, args.pretrained) if p and p.endswith(".ckpt")), None)
        q, summary = quantize_loaded(fp, str(spec), dataset, data_root=args.data_root,
                                     calib_batches=args.calib_batches, qat_checkpoint=ckpt)
        model, w_bits = q.model, summary.get("bits")
        source.update(calibration=None if dataset is None or not needs_calibration(spec) else
                      {"dataset": args.dataset, "batches": args.calib_batches or getattr(spec, "calib_batches", 8)},
                      qat_checkpoint=ckpt, coverage=summary["coverage"])
    manifest = save_export_dir(model, spec, args.out, model_cfg=model_cfg, preprocess_cfg=preprocess_cfg,
                               source=source, w_bits=w_bits)
    s = manifest["summary"]
    line = f"exported {args.model} -> {args.out}/float"
    if s["maps"]:
        ops = ", ".join(f"{op} {v['integer_arithmetic']}/{v['quantized']}" for op, v in s["by_op"].items()
                        if v["quantized"])
        line += (f" and the {spec} integer model: {s['integer_arithmetic']} of {s['maps']} quantized maps in integer "
                 f"arithmetic ({ops}), {s['dequantized']} dequantized to float")
    print(line)
    for note in manifest["notes"]:
        print(f"note: {note}")
    return 0
