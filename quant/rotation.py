"""Hadamard rotation (QuaRot-style online rotation of every linear map's input).

For a map y = W x and an orthogonal H, y = (W Hᵀ)(H x): the rotated weight W Hᵀ is folded into the module and
the input is rotated at run time, so the float function is unchanged while outliers in x and W are spread
across channels before quantization. H is block-diagonal Sylvester-Hadamard (normalised) with the largest
power-of-two block dividing the channel count; channels with an odd count are left unrotated.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

__all__ = ["hadamard", "block_size_for", "HadamardRotation", "rotation_matrix"]


def hadamard(n: int, dtype=torch.float32) -> torch.Tensor:
    """The normalised Sylvester Hadamard matrix of order n (a power of two): orthogonal and symmetric."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"Hadamard order must be a power of two, got {n}")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return (h / h.shape[0] ** 0.5).to(dtype)


def block_size_for(channels: int) -> int:
    """Largest power of two dividing `channels`."""
    return channels & -channels


def rotation_matrix(channels: int, dtype=torch.float32) -> torch.Tensor:
    """The dense block-diagonal Hadamard rotation of `channels` (for tests and folding)."""
    b = block_size_for(channels)
    return torch.block_diag(*([hadamard(b, torch.float64)] * (channels // b))).to(dtype)


class HadamardRotation(nn.Module):
    """Rotate channel `dim` (-1 for linear inputs, 1 for conv inputs) by the block Hadamard matrix."""

    def __init__(self, channels: int, dim: int = -1):
        super().__init__()
        self.channels, self.dim = channels, dim
        self.block = block_size_for(channels)
        self.register_buffer("h", hadamard(self.block), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.block == 1:
            return x
        x = x.movedim(self.dim, -1)
        y = rearrange(x, "... (g b) -> ... g b", b=self.block) @ self.h.to(x.dtype).T
        return rearrange(y, "... g b -> ... (g b)").movedim(-1, self.dim)

    @torch.no_grad()
    def fold_into_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """W Hᵀ along the input-channel axis (dim 1 of [out, in, ...]), so that W'(H x) = W x."""
        if self.block == 1:
            return weight
        w = weight.movedim(1, -1)
        w = rearrange(w, "... (g b) -> ... g b", b=self.block) @ self.h.to(weight.dtype).T
        return rearrange(w, "... g b -> ... (g b)").movedim(-1, 1).contiguous()

    @torch.no_grad()
    def unfold_from_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """Inverse of `fold_into_weight` (W' H), to export a plain float module."""
        if self.block == 1:
            return weight
        w = weight.movedim(1, -1)
        w = rearrange(w, "... (g b) -> ... g b", b=self.block) @ self.h.to(weight.dtype)
        return rearrange(w, "... g b -> ... (g b)").movedim(-1, 1).contiguous()

    def extra_repr(self) -> str:
        return f"channels={self.channels}, block={self.block}, dim={self.dim}"
