"""Activation range observers for static per-tensor calibration: min-max, EMA, percentile, MSE."""

from __future__ import annotations

import torch
from torch import nn

from .primitives import fake_quantize, qparams_from_minmax, qrange

__all__ = ["Observer", "MinMaxObserver", "EMAObserver", "PercentileObserver", "MSEObserver", "make_observer"]

_SAMPLE = 1 << 16  # values kept per batch for percentile / MSE searches


def _subsample(x: torch.Tensor, n: int = _SAMPLE) -> torch.Tensor:
    flat = x.detach().float().reshape(-1)
    if flat.numel() <= n:
        return flat
    step = flat.numel() // n  # deterministic strided sample
    return flat[::step][:n]


class Observer(nn.Module):
    """Collects statistics of the tensors it sees and turns them into (scale, zero_point)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("lo", torch.tensor(float("inf")))
        self.register_buffer("hi", torch.tensor(float("-inf")))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Fold one batch into the running statistics."""
        self.lo = torch.minimum(self.lo, x.detach().min().float())
        self.hi = torch.maximum(self.hi, x.detach().max().float())

    @property
    def seen(self) -> bool:
        """True once a batch was observed."""
        return bool(torch.isfinite(self.lo))

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The (lo, hi) clipping range to quantize."""
        return self.lo, self.hi

    def qparams(self, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero point for `bits`."""
        if not self.seen:
            raise RuntimeError("observer saw no data: run calibration batches first")
        lo, hi = self.range()
        return qparams_from_minmax(lo, hi, bits, symmetric)


class MinMaxObserver(Observer):
    """Running min and max over all calibration batches."""


class EMAObserver(Observer):
    """Exponential moving average of per-batch min and max."""

    def __init__(self, decay: float = 0.9):
        super().__init__()
        self.decay = decay

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        lo, hi = x.detach().min().float(), x.detach().max().float()
        if not self.seen:
            self.lo, self.hi = lo, hi
        else:
            self.lo = self.decay * self.lo + (1 - self.decay) * lo
            self.hi = self.decay * self.hi + (1 - self.decay) * hi


class PercentileObserver(Observer):
    """Mean over batches of the per-batch (100-p, p) percentiles: clips rare outliers."""

    def __init__(self, percentile: float = 99.99):
        super().__init__()
        self.q = percentile / 100.0
        self.register_buffer("n", torch.tensor(0))
        self.register_buffer("lo_sum", torch.tensor(0.0))
        self.register_buffer("hi_sum", torch.tensor(0.0))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        super().update(x)
        sample = _subsample(x)
        qs = torch.quantile(sample, torch.tensor([1 - self.q, self.q]))
        self.lo_sum += qs[0]
        self.hi_sum += qs[1]
        self.n += 1

    def range(self):
        return self.lo_sum / self.n, self.hi_sum / self.n


class MSEObserver(Observer):
    """Min-max range shrunk by the factor (searched on a grid) that minimises the fake-quant MSE on a sample."""

    def __init__(self, grid: int = 40):
        super().__init__()
        self.grid = grid
        self.samples: list[torch.Tensor] = []
        self._bits: tuple[int, bool] | None = None

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        super().update(x)
        self.samples.append(_subsample(x, _SAMPLE // 4))

    @torch.no_grad()
    def qparams(self, bits: int, symmetric: bool):
        if not self.seen:
            raise RuntimeError("observer saw no data: run calibration batches first")
        sample = torch.cat(self.samples)
        qmin, qmax = qrange(bits, symmetric)
        best, best_err = None, float("inf")
        for frac in torch.linspace(1.0, 0.3, self.grid):
            scale, zp = qparams_from_minmax(self.lo * frac, self.hi * frac, bits, symmetric)
            err = (fake_quantize(sample, scale, zp, qmin, qmax) - sample).pow(2).mean().item()
            if err < best_err:
                best, best_err = (scale, zp), err
        return best


def make_observer(name: str, *, percentile: float = 99.99, ema_decay: float = 0.9) -> Observer:
    """Observer by spec name: minmax | ema | percentile | mse."""
    if name == "minmax":
        return MinMaxObserver()
    if name == "ema":
        return EMAObserver(ema_decay)
    if name == "percentile":
        return PercentileObserver(percentile)
    if name == "mse":
        return MSEObserver()
    raise ValueError(f"unknown observer {name!r}")
