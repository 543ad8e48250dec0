"""Affine fake-quantization primitives in torchao's conventions (so results match torchao bit for bit).

Conventions (torchao `quant_primitives`): q = clamp(round(x * (1/scale)) + zero_point, qmin, qmax);
x̂ = (q - zero_point) * scale. Symmetric: scale = max|x| / ((qmax - qmin) / 2), zero_point = 0, signed range
[-2^(b-1), 2^(b-1)-1]. Asymmetric: unsigned [0, 2^b - 1], scale = (max - min) / (qmax - qmin) over a range that
always contains 0, zero_point = qmin - round(min / scale).
"""

from __future__ import annotations

import torch
from torchao.quantization.quant_primitives import MappingType, choose_qparams_affine, dequantize_affine, quantize_affine

__all__ = ["qrange", "fake_quantize", "qparams_from_minmax", "weight_qparams", "fake_quantize_weight",
           "weight_block_size"]

EPS = torch.finfo(torch.float32).eps


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """Integer range of a `bits`-bit code: signed for symmetric, unsigned for asymmetric."""
    if symmetric:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, qmin: int,
                  qmax: int) -> torch.Tensor:
    """Quantize-dequantize with broadcastable scale / zero point (no gradient trick; see `qclip.quant.lsq` for STE)."""
    q = torch.round(x * (1.0 / scale))
    if zero_point is not None:
        q = q + zero_point
    q = torch.clamp(q, qmin, qmax)
    if zero_point is not None:
        q = q - zero_point
    return q * scale


def qparams_from_minmax(lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point from observed ranges (torchao's `choose_qparams_affine_with_min_max` rules)."""
    qmin, qmax = qrange(bits, symmetric)
    lo = torch.clamp(lo.float(), max=0.0)
    hi = torch.clamp(hi.float(), min=0.0)
    if symmetric:
        amax = torch.maximum(-lo, hi)
        scale = torch.clamp(amax / ((qmax - qmin) / 2), min=EPS)
        return scale, torch.zeros_like(scale)
    scale = torch.clamp((hi - lo) / float(qmax - qmin), min=EPS)
    zero_point = torch.clamp(qmin - torch.round(lo / scale), qmin, qmax)
    return scale, zero_point


def weight_block_size(weight: torch.Tensor, granularity: str, group_size: int | None) -> tuple[int, ...]:
    """torchao block size of a weight [out, in, ...]: per-channel rows, per-group chunks of the flattened row,
    or the whole tensor."""
    fan_in = weight[0].numel()
    if granularity == "per_tensor":
        return (weight.shape[0], fan_in)
    if granularity == "per_group":
        if fan_in % group_size:
            raise ValueError(f"group_size {group_size} does not divide the layer's fan-in {fan_in}")
        return (1, group_size)
    return (1, fan_in)


@torch.no_grad()
def weight_qparams(weight: torch.Tensor, bits: int, *, granularity: str = "per_channel",
                   group_size: int | None = None, symmetric: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """torchao's (scale, zero_point) of a weight, shaped [out, groups] (groups = 1 per channel)."""
    w = weight.detach().float().reshape(weight.shape[0], -1)
    block = weight_block_size(weight, granularity, group_size)
    qmin, qmax = qrange(bits, symmetric)
    mapping = MappingType.SYMMETRIC if symmetric else MappingType.ASYMMETRIC
    dtype = torch.int8 if symmetric else torch.uint8
    scale, zp = choose_qparams_affine(w, mapping, block, dtype, quant_min=qmin, quant_max=qmax, eps=EPS)
    rows = 1 if granularity == "per_tensor" else weight.shape[0]
    return scale.reshape(rows, -1), zp.reshape(rows, -1)


@torch.no_grad()
def fake_quantize_weight(weight: torch.Tensor, bits: int, *, granularity: str = "per_channel",
                         group_size: int | None = None, symmetric: bool = True) -> torch.Tensor:
    """Round-to-nearest fake quantization of a weight through torchao's affine primitives (2..8 bits)."""
    w = weight.detach().float().reshape(weight.shape[0], -1)
    block = weight_block_size(weight, granularity, group_size)
    qmin, qmax = qrange(bits, symmetric)
    dtype = torch.int8 if symmetric else torch.uint8
    scale, zp = weight_qparams(weight, bits, granularity=granularity, group_size=group_size, symmetric=symmetric)
    q = quantize_affine(w, block, scale, zp, dtype, quant_min=qmin, quant_max=qmax)
    deq = dequantize_affine(q, block, scale, zp, dtype, quant_min=qmin, quant_max=qmax, output_dtype=torch.float32)
    return deq.reshape(weight.shape).to(weight.dtype)
