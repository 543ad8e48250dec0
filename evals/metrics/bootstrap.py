"""Percentile bootstrap confidence intervals for metrics of paired arrays or of two independent groups."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

__all__ = ["bootstrap_ci", "bootstrap_ci_two_sample"]


def _as_arrays(arrays: Sequence[torch.Tensor] | torch.Tensor, name: str) -> list[torch.Tensor]:
    if isinstance(arrays, torch.Tensor):
        arrays = [arrays]
    arrays = [torch.as_tensor(a) for a in arrays]
    if not arrays:
        raise ValueError(f"{name}: need at least one array")
    n = arrays[0].shape[0] if arrays[0].ndim else 0
    if n == 0 or any(a.ndim == 0 or a.shape[0] != n for a in arrays):
        raise ValueError(f"{name}: arrays must be non-empty and share their first dimension, "
                         f"got shapes {[tuple(a.shape) for a in arrays]}")
    return arrays


def _check(n_boot: int, alpha: float) -> None:
    if not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive int, got {n_boot!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def _draw(arrays: list[torch.Tensor], gen: torch.Generator) -> list[torch.Tensor]:
    n = arrays[0].shape[0]
    idx = torch.randint(n, (n,), generator=gen)
    return [a.index_select(0, idx.to(a.device)) for a in arrays]


def _interval(values: list[float], alpha: float) -> tuple[float, float]:
    v = torch.tensor(values, dtype=torch.float64)
    lo, hi = torch.quantile(v, torch.tensor([alpha / 2, 1 - alpha / 2], dtype=torch.float64)).tolist()
    return lo, hi


def bootstrap_ci(metric: Callable[..., float], *arrays: torch.Tensor, n_boot: int = 1000, seed: int = 0,
                 alpha: float = 0.05) -> tuple[float, float]:
    """(low, high) percentile interval of `metric(*arrays)` over `n_boot` joint resamples of rows (seeded CPU
    `torch.Generator`; one index draw per resample shared by all arrays, e.g. probs and labels)."""
    _check(n_boot, alpha)
    data = _as_arrays(list(arrays), "arrays")
    gen = torch.Generator().manual_seed(seed)
    return _interval([float(metric(*_draw(data, gen))) for _ in range(n_boot)], alpha)


def bootstrap_ci_two_sample(metric: Callable[..., float], a_arrays: Sequence[torch.Tensor] | torch.Tensor,
                            b_arrays: Sequence[torch.Tensor] | torch.Tensor, *, n_boot: int = 1000, seed: int = 0,
                            alpha: float = 0.05) -> tuple[float, float]:
    """(low, high) percentile interval of `metric(*a_arrays, *b_arrays)`, resampling groups a and b independently
    (e.g. `bootstrap_ci_two_sample(auroc, id_scores, ood_scores)`); a bare tensor counts as a one-array group."""
    _check(n_boot, alpha)
    a, b = _as_arrays(a_arrays, "a_arrays"), _as_arrays(b_arrays, "b_arrays")
    gen = torch.Generator().manual_seed(seed)
    return _interval([float(metric(*_draw(a, gen), *_draw(b, gen))) for _ in range(n_boot)], alpha)
