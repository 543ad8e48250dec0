"""Calibration data for quantization (not calibration metrics): a few image batches and the class prompts."""

from __future__ import annotations

import logging
from itertools import islice
from typing import Callable

import torch
from torch import nn

from .data import DatasetSpec, make_loader, resolve_dataset
from .errors import DataError
from .models import LoadedModel

__all__ = ["calibration_images", "make_calibrator", "parse_quant_arg", "quantize_loaded"]

log = logging.getLogger(__name__)


def calibration_images(spec: DatasetSpec, preprocess: Callable, *, batches: int = 8, batch_size: int = 64,
                       data_root: str | None = None, num_workers: int = 0) -> list[torch.Tensor]:
    """The first `batches` batches of the dataset's train split (its eval split when it has no train split)."""
    calib = spec
    if spec.kind == "wds" and spec.split != "train":
        try:
            calib = resolve_dataset(spec.name, data_root, "train")
        except DataError:
            log.warning("%s has no train split: calibrating on the first %d images of its %s split",
                        spec.name, batches * batch_size, spec.split)
    loader = make_loader(calib, preprocess, batch_size=batch_size, num_workers=num_workers,
                         limit=batches * batch_size)
    return [images for images, _ in islice(loader, batches)]


def make_calibrator(loaded: LoadedModel, spec: DatasetSpec, *, batches: int = 8, batch_size: int = 64,
                    device: str | torch.device = "cpu", data_root: str | None = None,
                    text: bool = True) -> Callable[[nn.Module], None]:
    """A `calibrate(model)` callable for `quant.quantize_model`: image batches, then (optionally) all prompts."""
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


def parse_quant_arg(text: str):
    """Parse a quantization/truncation spec given by a user; a bad one is a `QclipInputError` (exit 2)."""
    from quant.spec import parse_spec

    from .errors import QclipInputError

    try:
        return parse_spec(text)
    except ValueError as exc:
        raise QclipInputError(f"bad --quant {text!r}: {exc}") from None


def quantize_loaded(fp: LoadedModel, spec_text: str, dataset: DatasetSpec, *, device: str | torch.device = "cpu",
                    data_root: str | None = None, calib_batches: int | None = None,
                    qat_checkpoint: str | None = None) -> tuple[LoadedModel, dict]:
    """A quantized (or rank-truncated) deep copy of `fp`, calibrated on `dataset`, with its coverage summary.

    With `qat_checkpoint` (a `qclip fit` checkpoint of the same spec), the trained quantizer step sizes are
    loaded over the calibrated ones, so the model is the QAT model as trained."""
    import copy

    from quant.api import quantize_model

    spec = parse_quant_arg(spec_text)
    loaded = fp._replace(model=copy.deepcopy(fp.model))
    calibrate = None
    if spec.kind == "quant":
        calibrate = make_calibrator(loaded, dataset, batches=calib_batches or spec.calib_batches, device=device,
                                    data_root=data_root, text=spec.scope == "vision+text")
    report = quantize_model(loaded.model, spec, calibrate)
    if qat_checkpoint is not None:
        _load_quantizer_state(loaded.model, qat_checkpoint)
    summary = {"spec": str(spec), "coverage": {t: {"quantized": q, "total": n} for t, (q, n) in report.coverage.items()}}
    if report.truncation:
        summary["kept_ranks"] = {r.name: r.kept for r in report.truncation}
    return loaded, summary


def _load_quantizer_state(model: torch.nn.Module, checkpoint: str) -> None:
    """Copy a QAT checkpoint's quantizer tensors (LSQ steps, activation scales) into a prepared model."""
    from .errors import ModelLoadError
    from .models import read_state_dict

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
