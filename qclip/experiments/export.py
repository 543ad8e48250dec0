"""The `qclip export` workflow as a library call: load a model, quantize it (calibrated, or with a QAT checkpoint's
learned steps) and write the export folder (`float/`, `int.safetensors`, `export.json`) under `out`."""

from __future__ import annotations

from qclip.evals.variants import check_specs_fit, needs_calibration, quantize_loaded
from qclip.io.errors import ConfigError, ModelLoadError
from qclip.io.export_dir import ExportManifest, check_export_target, export_dir_of, save_export_dir
from qclip.io.models import load_model, model_config
from qclip.io.paths import check_output_dir

from .demo import ensure_demo

__all__ = ["run_export", "export_line"]


def run_export(model: str, out: str, *, pretrained: str | None = None, spec=None, dataset: str | None = None,
               data_root: str | None = None, calib_batches: int | None = None,
               progress: bool = True) -> ExportManifest:
    """Write the export folder of `model` (and of its `spec` variant, a parsed spec) under `out`; return the manifest.

    Bad input (an activation spec without `dataset`, an export folder as `model`, an unusable `out`, or one that
    holds files but is not an export folder) is refused before any model or data is loaded."""
    if spec is not None and needs_calibration(spec) and dataset is None:
        raise ConfigError(f"--quant {spec} quantizes activations: pass --dataset wds/NAME for calibration images")
    if export_dir_of(model) is not None:
        raise ModelLoadError(f"--model {model} is already an export folder: export its source model instead")
    check_output_dir(out, "--out")
    check_export_target(out)
    calib = None
    if dataset is not None:
        from qclip.io.data import resolve_dataset

        calib = resolve_dataset(dataset, data_root, "test")
    ensure_demo(model, data_root, progress)
    fp = load_model(model, pretrained)
    check_specs_fit(fp, None if spec is None else str(spec))
    model_cfg, preprocess_cfg = model_config(model)
    source = {"model": model, "pretrained": pretrained, "quant": None if spec is None else str(spec)}
    net, w_bits = fp.model, None
    if spec is not None:
        ckpt = next((p for p in (model, pretrained) if p and p.endswith(".ckpt")), None)
        q, summary = quantize_loaded(fp, str(spec), calib, data_root=data_root, calib_batches=calib_batches,
                                     qat_checkpoint=ckpt)
        net, w_bits = q.model, summary.get("bits")
        source.update(calibration=None if calib is None or not needs_calibration(spec) else
                      {"dataset": dataset, "batches": calib_batches or getattr(spec, "calib_batches", 8)},
                      qat_checkpoint=ckpt, coverage=summary["coverage"])
    return save_export_dir(net, spec, out, model_cfg=model_cfg, preprocess_cfg=preprocess_cfg, source=source,
                           w_bits=w_bits)


def export_line(model: str, out: str, spec, manifest: ExportManifest) -> str:
    """The one-line summary `qclip export` prints: the folders written and how many maps run in integer arithmetic."""
    s = manifest["summary"]
    line = f"exported {model} -> {out}/float"
    if s["maps"]:
        ops = ", ".join(f"{op} {v['integer_arithmetic']}/{v['quantized']}" for op, v in s["by_op"].items()
                        if v["quantized"])
        line += (f" and the {spec} integer model: {s['integer_arithmetic']} of {s['maps']} quantized maps in integer "
                 f"arithmetic ({ops}), {s['dequantized']} dequantized to float")
    return line
