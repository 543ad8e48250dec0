"""Quantization-aware training: `prepare_qat_` (LSQ fake quantizers) and `convert_qat_` (back to plain modules).

Two backends share one spec:
- `"lsq"` (default): project LSQ modules for every in-scope map (weights per-channel steps, activations a
  per-tensor step, the LSQ gradient scale), optionally after a Hadamard rotation (`rotation+lsq`).
- `"torchao"`: torchao's `QATConfig` with `IntxFakeQuantizeConfig(range_learning=True)` (learnable weight scales,
  dynamic per-token activations) on plain `nn.Linear` maps; the maps torchao does not cover (convolutions, the
  tower projections applied as `x @ P`) get project LSQ modules.
`convert_qat_` folds every fake quantizer into float weights and returns plain `nn.Linear` / `nn.Conv2d` modules.
"""

from __future__ import annotations

import torch
from torch import nn

from .api import (
    Calibrator,
    QuantReport,
    check_quantizable,
    convert_to_float_,
    quantize_,
    quantize_maps_,
    towers_of,
)
from .spec import QuantSpec, parse_spec
from .surgery import attention_surgery_, list_linear_maps

__all__ = ["prepare_qat_", "convert_qat_", "BACKENDS"]

BACKENDS = ("lsq", "torchao")


class _Runner(nn.Module):
    """Lets torchao's `initialize_fake_quantizers` drive our calibration function."""

    def __init__(self, model: nn.Module, calibrate: Calibrator):
        super().__init__()
        self.model, self._calibrate = model, calibrate

    def forward(self):
        self._calibrate(self.model)


def _as_lsq(spec: QuantSpec) -> QuantSpec:
    if spec.learns_scales:
        return spec
    if spec.method not in ("rtn", "rotation"):
        raise ValueError(f"QAT learns step sizes with LSQ; method {spec.method!r} cannot be trained (use -lsq or "
                         "-rot-lsq)")
    return spec.with_(method="rotation+lsq" if spec.rotates else "lsq")


def prepare_qat_(model: nn.Module, spec: QuantSpec | str, calibrate: Calibrator | None = None, *,
                backend: str = "lsq") -> QuantReport:
    """Insert trainable fake quantizers in place (the model stays in its current train/eval mode); every argument
    is validated before the model is touched."""
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    if spec.kind != "quant":
        raise ValueError(f"QAT needs a uniform quantization spec (e.g. w4a8-lsq); {spec} is a {spec.kind} spec")
    spec = _as_lsq(spec)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    check_quantizable(model, spec, calibrate)
    training = model.training
    if backend == "lsq":
        report = quantize_(model, spec, calibrate)
        model.train(training)
        return report
    if spec.rotates:
        raise ValueError("rotation+lsq needs the 'lsq' backend (torchao's fake-quantized linear cannot rotate inputs)")
    if spec.granularity == "per_tensor":
        raise ValueError("the torchao backend quantizes weights per channel or per group")
    if calibrate is None:
        raise ValueError("the torchao backend initialises its learnable scales from data: pass calibrate(model)")
    from torchao.quantization import quantize_ as ao_quantize_
    from torchao.quantization.qat import (
        IntxFakeQuantizeConfig,
        QATConfig,
        initialize_fake_quantizers,
    )

    attention_surgery_(model)
    names = {m.name for m in list_linear_maps(model, include_conv=False) if m.tower in towers_of(spec.scope)}
    covered = {n for n, m in model.named_modules() if n in names and type(m) is nn.Linear}
    weight_cfg = IntxFakeQuantizeConfig(getattr(torch, f"int{spec.w_bits}"),
                                        "per_channel" if spec.granularity == "per_channel" else None,
                                        group_size=spec.group_size, is_symmetric=True, is_dynamic=False,
                                        range_learning=True)
    act_cfg = None
    if spec.a_bits is not None:
        act_cfg = IntxFakeQuantizeConfig(getattr(torch, f"int{spec.a_bits}" if spec.a_bits < 8 else "int8"),
                                         "per_token", is_symmetric=False)
    ao_quantize_(model, QATConfig(activation_config=act_cfg, weight_config=weight_cfg, step="prepare"),
                 filter_fn=lambda m, fqn: fqn in covered)
    # the rest (convolutions, `x @ P` projections) with project LSQ modules
    rest = [m for m in list_linear_maps(model) if m.tower in towers_of(spec.scope) and m.name not in covered]
    with torch.no_grad():
        initialize_fake_quantizers(_Runner(model, calibrate), ())
    if rest:
        quantize_maps_(model, {m.name: model.get_submodule(m.name) for m in rest}, spec, calibrate)
    all_maps = list_linear_maps(model)
    chosen = [m for m in all_maps if m.tower in towers_of(spec.scope)]
    coverage = {t: (sum(m.tower == t for m in chosen), sum(m.tower == t for m in all_maps)) for t in ("vision", "text")}
    model.train(training)
    return QuantReport(str(spec), chosen, coverage)


@torch.no_grad()
def convert_qat_(model: nn.Module) -> nn.Module:
    """Fold all fake quantizers (project LSQ and torchao QAT) into float weights; plain modules come back."""
    from torchao.quantization.qat import FakeQuantizedLinear

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, FakeQuantizedLinear):
                weight = child.weight_fake_quantizer(child.weight) if child.weight_fake_quantizer else child.weight
                linear = child.to_linear()
                linear.weight.copy_(weight)
                setattr(parent, name, linear)
    return convert_to_float_(model)
