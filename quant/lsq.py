"""LSQ: learned step-size quantization (Esser et al., 2020) for weights and activations.

Forward: x̂ = round(clamp(x · (1/s), qmin, qmax)) · s, identical to torchao's quantize/dequantize with
scale s and zero point 0. Backward: straight-through for x inside the range (zero outside), and for the step

    ∂x̂/∂s = (round(x/s) − x/s) inside,  qmin or qmax outside,

multiplied by the gradient scale g = 1/sqrt(n · qmax), where n is the number of elements sharing one step
(a weight row for per-channel steps, the whole weight for a per-tensor step, the features of one sample for
activations; for per-tensor steps this is Esser's N_W / N_F).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .primitives import EPS, qrange

__all__ = ["grad_scale", "round_ste", "lsq_quantize", "LSQQuantizer", "clamp_steps_"]


def grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    """Identity in the forward pass; multiplies the gradient by `g`."""
    scaled = x * g
    return x.detach() + (scaled - scaled.detach())  # forward value is exactly x


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass; identity gradient."""
    return torch.round(x).detach() + (x - x.detach())  # forward value is exactly round(x)


class _LSQFunction(torch.autograd.Function):
    """Fused LSQ fake quantization: 3 element-wise ops forward, gradients in closed form backward."""

    @staticmethod
    def forward(ctx, x, step, qmin: int, qmax: int, g: float):
        v = x * (1.0 / step)
        out = torch.clamp(torch.round(v), qmin, qmax) * step
        ctx.save_for_backward(v, step)
        ctx.qmin, ctx.qmax, ctx.g = qmin, qmax, g
        return out

    @staticmethod
    def backward(ctx, grad):
        v, step = ctx.saved_tensors
        inside = (v >= ctx.qmin) & (v <= ctx.qmax)
        grad_x = grad * inside if ctx.needs_input_grad[0] else None
        grad_step = None
        if ctx.needs_input_grad[1]:
            q = torch.clamp(torch.round(v), ctx.qmin, ctx.qmax)
            d_step = (grad * torch.where(inside, q - v, q)) * ctx.g
            grad_step = d_step.sum_to_size(step.shape)
        return grad_x, grad_step, None, None, None


def lsq_quantize(x: torch.Tensor, step: torch.Tensor, qmin: int, qmax: int, g: float) -> torch.Tensor:
    """LSQ fake quantization of `x` with a broadcastable learnable `step` (fused forward and backward)."""
    return _LSQFunction.apply(x, step, qmin, qmax, g)


class LSQQuantizer(nn.Module):
    """A learnable-step fake quantizer: per-channel (dim 0) for weights or per-tensor for activations.

    `init_from(x)` sets the step from data: max|x| / ((qmax - qmin) / 2) per step group (so an untrained LSQ
    model equals symmetric round-to-nearest), or from an explicit step (e.g. an activation observer's scale).
    """

    def __init__(self, bits: int, *, per_channel: bool, channels: int = 1, is_weight: bool = True):
        super().__init__()
        self.bits, self.per_channel, self.is_weight = bits, per_channel, is_weight
        self.qmin, self.qmax = qrange(bits, True)
        self.step = nn.Parameter(torch.ones(channels if per_channel else 1))
        self.register_buffer("initialized", torch.tensor(False))

    def _view(self, x: torch.Tensor) -> torch.Tensor:
        if self.per_channel:
            return self.step.view(-1, *([1] * (x.dim() - 1)))
        return self.step.view(())

    @torch.no_grad()
    def init_from(self, x: torch.Tensor | None = None, step: torch.Tensor | float | None = None) -> None:
        """Initialise the step from a tensor's range, or set it explicitly."""
        if step is None:
            flat = x.detach().float().reshape(x.shape[0], -1) if self.per_channel else x.detach().float().reshape(1, -1)
            step = flat.abs().amax(dim=1) / ((self.qmax - self.qmin) / 2)
        self.step.copy_(torch.clamp(torch.as_tensor(step, dtype=torch.float32).reshape(self.step.shape), min=EPS))
        self.initialized.fill_(True)

    def group_numel(self, x: torch.Tensor) -> int:
        """Number of elements that share one step (n in g = 1/sqrt(n·qmax))."""
        if self.is_weight:
            return x[0].numel() if self.per_channel else x.numel()
        return x[0].numel() if x.dim() > 1 else x.numel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.initialized):
            self.init_from(x)
        g = 1.0 / math.sqrt(self.group_numel(x) * self.qmax)
        return lsq_quantize(x, self._view(x).to(x.dtype), self.qmin, self.qmax, g)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, per_channel={self.per_channel}, steps={self.step.numel()}"


@torch.no_grad()
def clamp_steps_(model: nn.Module, min_step: float = EPS) -> int:
    """Keep every LSQ step of `model` ≥ `min_step` (call after each optimizer update: a step pushed through 0
    would divide by zero or flip the grid); returns the number of steps that were clamped."""
    clamped = 0
    for module in model.modules():
        if isinstance(module, LSQQuantizer):
            low = module.step < min_step
            clamped += int(low.sum())
            module.step.clamp_(min=min_step)
    return clamped
