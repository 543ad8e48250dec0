"""`quantize_`: the one verb that applies a `QuantSpec` (or a `RankSpec`, or a mixed-precision `MixedSpec`) to an
open_clip model in place."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
from torch import nn

from .lsq import LSQQuantizer
from .modules import ActQuant, dequantize_module_, is_quantized, quantize_module_
from .observers import make_observer
from .primitives import fake_quantize_weight, weight_qparams
from .rotation import HadamardRotation
from .smoothquant import apply_smoothquant_
from .spec import MixedSpec, QuantSpec, RankSpec, parse_spec
from .surgery import LinearMap, attention_surgery_, list_linear_maps, tower_of
from .truncation import TruncationReport, truncate_modules_

__all__ = ["QuantReport", "quantize_", "quantize_maps_", "convert_to_float_", "towers_of", "check_quantizable",
           "check_spec_fits",
           "Calibrator", "quantize_model"]

log = logging.getLogger(__name__)
#: Runs calibration forward passes through the model (image batches, and text prompts for the text tower).
Calibrator = Callable[[nn.Module], None]


@dataclass
class QuantReport:
    """What `quantize_` did: the spec, the maps it changed, coverage per tower, extra per-method facts (for a
    mixed-precision spec: each map's weight bits and their parameter-weighted average)."""

    spec: str
    maps: list[LinearMap]
    coverage: dict[str, tuple[int, int]]
    smoothed_groups: int = 0
    truncation: list[TruncationReport] = field(default_factory=list)
    bits: dict[str, int] = field(default_factory=dict)
    avg_bits: float | None = None

    def coverage_line(self) -> str:
        """'vision 48/48, text 0/28' style summary."""
        return ", ".join(f"{t} {q}/{n}" for t, (q, n) in self.coverage.items())


def towers_of(scope: str) -> tuple[str, ...]:
    """Towers a spec scope covers."""
    return ("vision",) if scope == "vision" else ("vision", "text")


def _coverage(all_maps: list[LinearMap], chosen: list[LinearMap]) -> dict[str, tuple[int, int]]:
    out = {}
    for tower in ("vision", "text"):
        total = sum(m.tower == tower for m in all_maps)
        out[tower] = (sum(m.tower == tower for m in chosen), total)
    return out


def check_quantizable(model: nn.Module, spec: QuantSpec | RankSpec | MixedSpec, calibrate: Calibrator | None) -> None:
    """Raise ValueError when `spec` cannot be applied to `model` as given; touches nothing."""
    if not isinstance(spec, (QuantSpec, RankSpec, MixedSpec)):
        raise TypeError(f"spec must be a QuantSpec, a RankSpec, a MixedSpec or a spec string, got "
                        f"{type(spec).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if any(is_quantized(m) for m in model.modules()):
        raise ValueError("the model is already quantized: quantize a fresh copy")
    if (isinstance(spec, (QuantSpec, MixedSpec)) and (spec.a_bits is not None or spec.method == "smoothquant")
            and calibrate is None):
        raise ValueError(f"spec {spec} quantizes activations or smooths them: pass a calibrate(model) function")
    if calibrate is not None and not callable(calibrate):
        raise TypeError(f"calibrate must be a callable run on the model, got {type(calibrate).__name__}")


def _fan_ins(model: nn.Module, towers: tuple[str, ...]) -> list[tuple[str, int]]:
    """(map name, fan-in) of every linear map in `towers`, read from the model as loaded (before attention surgery:
    MHA's q/k/v and the bare projection parameters count as the maps surgery makes of them)."""
    out = []
    for name, module in model.named_modules():
        if not name or tower_of(name) not in towers:
            continue
        if isinstance(module, nn.Conv2d):
            out.append((name, module.weight[0].numel()))
        elif isinstance(module, nn.Linear):
            out.append((name, module.weight.shape[1]))
        elif isinstance(module, nn.MultiheadAttention):
            out += [(f"{name}.q_proj", module.embed_dim), (f"{name}.k_proj", module.kdim),
                    (f"{name}.v_proj", module.vdim)]
    for name, param in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("proj", "text_projection") and param.dim() == 2 and tower_of(name) in towers:
            out.append((name, param.shape[0]))  # used as x @ proj: its rows are the fan-in
    return out


def check_spec_fits(model: nn.Module, spec: QuantSpec | RankSpec | MixedSpec | str) -> None:
    """Raise ValueError naming the first layer `spec` cannot be applied to (a group size that does not divide its
    fan-in); touches nothing, so it can run right after a model is loaded, before any work."""
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    if not isinstance(spec, QuantSpec) or spec.granularity != "per_group":
        return
    for name, fan_in in _fan_ins(model, towers_of(spec.scope)):
        if fan_in % spec.group_size:
            raise ValueError(f"group size {spec.group_size} of {spec} does not divide the fan-in {fan_in} of layer "
                             f"{name}")


def quantize_(model: nn.Module, spec: QuantSpec | RankSpec | MixedSpec | str, calibrate: Calibrator | None = None
                   ) -> QuantReport:
    """Apply `spec` in place: attention surgery, then rank truncation, (SmoothQuant | rotation) + RTN or LSQ, or
    mixed-precision RTN (per-map weight bits from `qclip.quant.mixed.assign_bits`, listed in `report.bits`).

    `calibrate(model)` must run a few forward passes (`spec.calib_batches` image batches, plus text prompts when
    the text tower is in scope); it is needed for activation quantization and SmoothQuant.
    """
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    check_quantizable(model, spec, calibrate)
    model.eval()
    attention_surgery_(model)
    all_maps = list_linear_maps(model)
    towers = towers_of(spec.scope)
    chosen = [m for m in all_maps if m.tower in towers]
    modules = {m.name: model.get_submodule(m.name) for m in chosen}
    report = QuantReport(str(spec), chosen, _coverage(all_maps, chosen))
    if isinstance(spec, RankSpec):
        report.truncation = truncate_modules_(modules, spec.mode, spec.value)
        return report
    if isinstance(spec, MixedSpec):
        from .mixed import assign_bits, average_bits

        report.bits = assign_bits(modules, spec)
        report.avg_bits = average_bits({n: int(m.weight.numel()) for n, m in modules.items()}, report.bits)
        quantize_maps_(model, modules, spec.at_bits(spec.choices[-1]), calibrate, w_bits=report.bits)
        return report
    if spec.method == "smoothquant":
        in_scope = tuple(("visual",) if spec.scope == "vision" else ("visual", "transformer", "text"))
        report.smoothed_groups = apply_smoothquant_(model, in_scope, calibrate, spec.smoothquant_alpha)
    quantize_maps_(model, modules, spec, calibrate)
    return report


def quantize_maps_(model: nn.Module, modules: dict[str, nn.Module], spec: QuantSpec,
                   calibrate: Calibrator | None, *, w_bits: Mapping[str, int] | None = None) -> None:
    """Attach (rotation +) weight and activation fake quantizers to `modules`, then calibrate activations.

    `w_bits` (name → bits, one per module) overrides `spec.w_bits` per module (mixed precision); the activations of
    all modules are still calibrated in one pass."""
    if spec.a_bits is not None and calibrate is None:
        raise ValueError(f"spec {spec} quantizes activations: pass a calibrate(model) function")
    if w_bits is not None:
        bad = {n: w_bits.get(n) for n in modules
               if not isinstance(w_bits.get(n), int) or isinstance(w_bits.get(n), bool) or not 2 <= w_bits[n] <= 8}
        if bad:
            raise ValueError(f"w_bits must give every module an integer width in 2..8; bad or missing: {bad}")
    act_quants: dict[str, ActQuant] = {}
    with torch.no_grad():
        for name, module in modules.items():
            bits = spec.w_bits if w_bits is None else w_bits[name]
            conv = isinstance(module, nn.Conv2d)
            rotation = None
            if spec.rotates:
                rotation = HadamardRotation(module.weight.shape[1], dim=1 if conv else -1).to(module.weight.device)
                module.weight.copy_(rotation.fold_into_weight(module.weight))
            weight_quant = None
            if spec.learns_scales:
                weight_quant = LSQQuantizer(bits, per_channel=spec.granularity == "per_channel",
                                            channels=module.weight.shape[0]).to(module.weight.device)
                weight_quant.init_from(module.weight)
            else:
                kw = dict(granularity=spec.granularity, group_size=spec.group_size, symmetric=spec.symmetric)
                scale, _ = weight_qparams(module.weight, bits, **kw)
                module.weight.copy_(fake_quantize_weight(module.weight, bits, **kw))
                module.register_buffer("weight_scale", scale)  # the grid, for exact integer export
            input_quant = None
            if spec.a_bits is not None:
                observer = make_observer(spec.observer, percentile=spec.percentile, ema_decay=spec.ema_decay)
                # LSQ activations are symmetric (signed steps); static PTQ activations use the asymmetric range
                input_quant = ActQuant(spec.a_bits, observer, symmetric=spec.learns_scales).to(module.weight.device)
                act_quants[name] = input_quant
            quantize_module_(module, weight_quant=weight_quant, input_quant=input_quant, input_rotation=rotation)
    if act_quants:
        with torch.no_grad():
            calibrate(model)
        for name, aq in act_quants.items():
            if not aq.observer.seen:
                raise RuntimeError(f"calibration never reached {name}: does calibrate() cover the {spec.scope} scope?")
            aq.freeze()
            if spec.learns_scales:
                lsq = LSQQuantizer(spec.a_bits, per_channel=False, is_weight=False).to(aq.scale.device)
                lsq.init_from(step=aq.scale)
                modules[name].input_quant = lsq


def convert_to_float_(model: nn.Module) -> nn.Module:
    """Fold every weight quantizer and rotation into plain float weights (activation quantizers are dropped).

    The result has stock open_clip state-dict keys: a weight-quantized ("dequantized") float export.
    """
    for module in model.modules():
        if is_quantized(module):
            dequantize_module_(module)
    return model


#: The former name of `quantize_` (it quantizes in place, hence the trailing underscore); kept for existing code.
quantize_model = quantize_
