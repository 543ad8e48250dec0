"""Model variants an evaluation runs: quantized or rank-truncated copies of a loaded model, calibrated on a
dataset's images and class prompts (the glue between `qclip.quant` and loaded models). Writes nothing."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from qclip.io.calibration import calibration_images
from qclip.io.data import DatasetSpec
from qclip.io.models import LoadedModel
from qclip.io.records import QuantSummary
from qclip.io.validate import check_spec

__all__ = ["make_calibrator", "check_specs_fit", "quantize_loaded", "needs_calibration", "compile_image_tower_",
           "integer_loaded"]


def make_calibrator(loaded: LoadedModel, spec: DatasetSpec, *, batches: int = 8, batch_size: int = 64,
                    device: str | torch.device = "cpu", data_root: str | None = None,
                    text: bool = True) -> Callable[[nn.Module], None]:
    """A `calibrate(model)` callable for `qclip.quant.quantize_`: image batches, then (optionally) all prompts."""
    images = calibration_images(spec, loaded.preprocess, batches=batches, batch_size=batch_size,
                                data_root=data_root)
    prompts = [t.replace("{c}", c) for c in spec.classnames for t in spec.templates]
    tokens = loaded.tokenizer(prompts) if text else None

    @torch.no_grad()
    def calibrate(model: nn.Module) -> None:
        for batch in images:
            model.encode_image(batch.to(device))
        if tokens is not None:
            for start in range(0, len(tokens), 256):
                model.encode_text(tokens[start:start + 256].to(device))

    return calibrate


def check_specs_fit(fp: LoadedModel, *spec_texts: str | None) -> None:
    """Refuse, right after the model is loaded and before any work, a spec that cannot apply to it (a group size
    that does not divide a layer's fan-in): `ConfigError` naming the spec and the layer. None entries are skipped."""
    from qclip.quant.api import check_spec_fits

    from qclip.io.errors import ConfigError

    for text in spec_texts:
        if text is None:
            continue
        try:
            check_spec_fits(fp.model, check_spec("spec", text))
        except ValueError as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"spec {text} does not fit the model: {exc}") from None


def needs_calibration(spec) -> bool:
    """True when a parsed spec quantizes activations or smooths them (its variant needs calibration images)."""
    return spec.kind in ("quant", "mixed") and (spec.a_bits is not None or spec.method == "smoothquant")


def quantize_loaded(fp: LoadedModel, spec_text: str, dataset: DatasetSpec | None, *,
                    device: str | torch.device = "cpu",
                    data_root: str | None = None, calib_batches: int | None = None,
                    qat_checkpoint: str | None = None) -> tuple[LoadedModel, QuantSummary]:
    """A quantized (or rank-truncated) deep copy of `fp`, calibrated on `dataset`, with its coverage summary.

    With `qat_checkpoint` (a `qclip fit` checkpoint of the same spec), the trained quantizer step sizes are
    loaded over the calibrated ones, so the model is the QAT model as trained. `dataset` may be None for specs
    that need no calibration (weight-only, rank truncation)."""
    import copy

    from qclip.quant.api import quantize_

    spec = check_spec("--quant", spec_text)
    loaded = fp._replace(model=copy.deepcopy(fp.model))
    calibrate = None
    if needs_calibration(spec):
        if dataset is None:
            from qclip.io.errors import ConfigError

            raise ConfigError(f"spec {spec} quantizes activations: it needs a dataset for calibration images")
        calibrate = make_calibrator(loaded, dataset, batches=calib_batches or spec.calib_batches, device=device,
                                    data_root=data_root, text=spec.scope == "vision+text")
    report = quantize_(loaded.model, spec, calibrate)
    if qat_checkpoint is not None:
        _load_quantizer_state(loaded.model, qat_checkpoint)
    summary: QuantSummary = {"spec": str(spec), "coverage": {t: {"quantized": q, "total": n} for t, (q, n) in report.coverage.items()}}
    if report.truncation:
        summary["kept_ranks"] = {r.name: r.kept for r in report.truncation}
    if getattr(report, "bits", None):
        summary["bits"], summary["avg_bits"] = report.bits, report.avg_bits
    return loaded, summary


def integer_loaded(fq: LoadedModel, spec_text: str, *, w_bits: dict[str, int] | None = None
                   ) -> tuple[LoadedModel, QuantSummary]:
    """The integer model of a fake-quant model (`fq`, not changed), on the CPU, as `qclip export` would rebuild it:
    every quantized map from its integer codes and grids, on oneDNN int8 kernels where they run (see
    `qclip.quant.export`); with the export summary (maps, integer-arithmetic maps, maps exact without VNNI)."""
    import copy

    from qclip.quant.export import build_integer_model_, integer_tensors
    from qclip.quant.kernels import cpu_int8_vnni, int8_features
    from qclip.quant.qat import convert_qat_

    spec = check_spec("--quant", spec_text)
    work = copy.deepcopy(fq.model).cpu().eval()
    tensors, entries = integer_tensors(work, spec, w_bits=w_bits)
    model = build_integer_model_(convert_qat_(work), entries, tensors)
    n_int = sum(e["kernel"] == "onednn" for e in entries)
    summary: QuantSummary = {"spec": f"int:{spec}", "maps": len(entries), "integer_arithmetic": n_int,
                             "dequantized": len(entries) - n_int,
                             "int16_safe": sum(bool(e["int16_safe"]) for e in entries if e["kernel"] == "onednn"),
                             "vnni": cpu_int8_vnni(), "int8_path": int8_features()["int8_path"]}
    return fq._replace(model=model), summary


def _load_quantizer_state(model: torch.nn.Module, checkpoint: str) -> None:
    """Copy a QAT checkpoint's quantizer tensors (LSQ steps, activation scales) into a prepared model."""
    from qclip.io.errors import ModelLoadError
    from qclip.io.models import read_state_dict

    sd = read_state_dict(checkpoint)
    own = model.state_dict()
    quantizer_keys = [k for k in own if any(p in k for p in ("weight_quant.", "input_quant.", "weight_scale"))]
    found = {}
    for key in quantizer_keys:
        for prefix in ("model.", ""):
            if prefix + key in sd:
                found[key] = sd[prefix + key]
                break
    if quantizer_keys and not found:
        raise ModelLoadError(f"{checkpoint} holds no quantizer state for this spec (was it trained with it?)")
    model.load_state_dict(found, strict=False)


def compile_image_tower_(loaded: LoadedModel) -> LoadedModel:
    """`torch.compile` the image tower in place (Inductor, static shapes, freezing on: weights become constants, so
    integer maps of an export run oneDNN's prepacked int8 kernels); the first batch of each shape compiles.

    The tower is replaced by the compiled wrapper (its state-dict keys gain `_orig_mod.`), so feature caches keep
    compiled and eager features apart."""
    import torch._inductor.config as inductor_config
    from qclip.quant.kernels import prepack_

    inductor_config.freezing = True
    model = loaded.model
    if not isinstance(model.visual, torch._dynamo.eval_frame.OptimizedModule):
        prepack_(model.visual)
        model.visual = torch.compile(model.visual, dynamic=False)
    return loaded
