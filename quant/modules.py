"""Quantized versions of linear maps, made by swapping the class of an existing module in place.

`quantize_module_(m, weight_quant=..., input_quant=..., input_rotation=...)` turns an `nn.Linear` /
`nn.Conv2d` (or a subclass such as `ProjectionLinear`) into `Quantized<Class>`, whose forward is
`op(input_quant(input_rotation(x)), weight_quant(weight))`. The object, its parameters, its hooks and its
state-dict keys stay; `dequantize_module_` folds the weight quantizer (and un-rotates) back into a plain module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .kernels import IntMap
from .observers import Observer
from .primitives import fake_quantize, qrange

__all__ = ["ActQuant", "QuantizedMixin", "quantize_module_", "dequantize_module_", "is_quantized",
           "weight_grid_scale", "effective_weight"]


class ActQuant(nn.Module):
    """Static per-tensor activation fake quantizer: observes while calibrating, then quantizes."""

    def __init__(self, bits: int, observer: Observer, symmetric: bool = False):
        super().__init__()
        self.bits, self.symmetric, self.observer = bits, symmetric, observer
        self.qmin, self.qmax = qrange(bits, symmetric)
        self.calibrating = True
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            self.observer.update(x)
            return x
        return fake_quantize(x, self.scale.to(x.dtype), self.zero_point.to(x.dtype), self.qmin, self.qmax)

    @torch.no_grad()
    def freeze(self) -> None:
        """End calibration: fix scale and zero point from the observer."""
        scale, zp = self.observer.qparams(self.bits, self.symmetric)
        self.scale.copy_(scale.reshape(()))
        self.zero_point.copy_(zp.reshape(()))
        self.calibrating = False
        if hasattr(self.observer, "samples"):
            self.observer.samples.clear()

    def extra_repr(self) -> str:
        mode = "calibrating" if self.calibrating else f"scale={self.scale.item():.3g}, zp={self.zero_point.item():g}"
        return f"bits={self.bits}, symmetric={self.symmetric}, {mode}"


class QuantizedMixin:
    """Forward of a quantized linear map (mixed in before nn.Linear / nn.Conv2d)."""

    weight_quant: nn.Module | None
    input_quant: nn.Module | None
    input_rotation: nn.Module | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_rotation is not None:
            x = self.input_rotation(x)
        if self.input_quant is not None:
            x = self.input_quant(x)
        w = self.weight if self.weight_quant is None else self.weight_quant(self.weight)
        if isinstance(self, nn.Conv2d):
            return self._conv_forward(x, w, self.bias)
        return F.linear(x, w, self.bias)


_CLASSES: dict[type, type] = {}


def _quantized_class(cls: type) -> type:
    if issubclass(cls, QuantizedMixin):
        return cls
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"Quantized{cls.__name__}", (QuantizedMixin, cls), {"_base_class": cls})
    return _CLASSES[cls]


def is_quantized(module: nn.Module) -> bool:
    """True for a module converted by `quantize_module_`."""
    return isinstance(module, QuantizedMixin)


def quantize_module_(module: nn.Module, *, weight_quant: nn.Module | None = None,
                     input_quant: nn.Module | None = None, input_rotation: nn.Module | None = None) -> nn.Module:
    """Swap `module`'s class to its quantized twin in place and attach the given quantizers."""
    if not isinstance(module, (nn.Linear, nn.Conv2d)):
        raise TypeError(f"only nn.Linear / nn.Conv2d can be quantized, got {type(module).__name__}")
    module.__class__ = _quantized_class(type(module))
    for name, value in (("weight_quant", weight_quant), ("input_quant", input_quant),
                        ("input_rotation", input_rotation)):
        if value is not None or not hasattr(module, name):
            setattr(module, name, value)
    return module


def weight_grid_scale(module: nn.Module) -> torch.Tensor | None:
    """The per-row weight scale a quantized module's weights lie on (RTN buffer or LSQ step), if known."""
    if "weight_scale" in module._buffers:
        return module.weight_scale
    quant = getattr(module, "weight_quant", None)
    if quant is not None and hasattr(quant, "step"):
        step = quant.step.detach()
        return step.reshape(-1, 1) if step.numel() > 1 else step.reshape(1, 1)
    return None


@torch.no_grad()
def effective_weight(module: nn.Module) -> torch.Tensor:
    """The float weight a (possibly quantized, rotated, integer) linear map applies to its un-rotated input."""
    if isinstance(module, IntMap):  # an exported map: its dequantized integer codes
        w = module.dequantized_weight()
        return (w if module.rotation is None else module.rotation.unfold_from_weight(w)).detach()
    if not is_quantized(module):
        return module.weight.detach()
    w = module.weight_quant(module.weight) if module.weight_quant is not None else module.weight
    if module.input_rotation is not None:
        w = module.input_rotation.unfold_from_weight(w)
    return w.detach()


@torch.no_grad()
def dequantize_module_(module: nn.Module) -> nn.Module:
    """Fold the weight quantizer (and any input rotation) into a plain float weight; restore the plain class.

    Activation quantizers are dropped: the result is the weight-quantized float model that stock code runs.
    """
    if not is_quantized(module):
        return module
    module.weight.data.copy_(effective_weight(module))
    for name in ("weight_quant", "input_quant", "input_rotation", "weight_scale"):
        if name in module._buffers:
            del module._buffers[name]
        elif name in module._modules:
            del module._modules[name]
        elif hasattr(module, name):
            delattr(module, name)
    module.__class__ = module._base_class
    return module
