"""Percentile bootstrap confidence intervals for metrics of paired arrays, of two independent groups, and of the
difference of a metric between two models scored on the same samples."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

__all__ = ["bootstrap_ci", "bootstrap_ci_two_sample", "paired_bootstrap_diff", "paired_bootstrap"]


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


def paired_bootstrap_diff(metric: Callable[..., float], a: Sequence[torch.Tensor] | torch.Tensor,
                          b: Sequence[torch.Tensor] | torch.Tensor, *, n_boot: int = 1000, alpha: float = 0.05,
                          seed: int = 0) -> tuple[float, float, float]:
    """(diff, low, high): diff = metric(*a) − metric(*b) on the full data and its percentile interval over `n_boot`
    paired resamples, where `a` and `b` hold per-sample arrays of two models over the SAME N samples (e.g.
    `(probs_fp, labels)` and `(probs_q, labels)`) and every resample applies one index draw to both.

    Resample r uses the r-th `torch.randint(N, (N,))` of a CPU `torch.Generator().manual_seed(seed)`, as in
    `bootstrap_ci`; the interval is `torch.quantile` (linear) at α/2 and 1 − α/2 of the resampled differences.
    """
    out = paired_bootstrap(metric, a, b, n_boot=n_boot, alpha=alpha, seed=seed)
    return out["diff"], out["low"], out["high"]


def paired_bootstrap(metric: Callable[..., float], a: Sequence[torch.Tensor] | torch.Tensor,
                     b: Sequence[torch.Tensor] | torch.Tensor, *, n_boot: int = 1000, alpha: float = 0.05,
                     seed: int = 0) -> dict[str, float]:
    """`paired_bootstrap_diff` as a dict {"diff", "low", "high", "p"}, with the two-sided bootstrap p-value
    p = min(1, 2·min(share of resampled differences ≤ 0, share ≥ 0)) for multiplicity corrections (Holm)."""
    _check(n_boot, alpha)
    a_arr, b_arr = _as_arrays(a, "a"), _as_arrays(b, "b")
    if a_arr[0].shape[0] != b_arr[0].shape[0]:
        raise ValueError(f"a and b must cover the same samples, got N = {a_arr[0].shape[0]} and {b_arr[0].shape[0]}")
    diff = float(metric(*a_arr)) - float(metric(*b_arr))
    gen = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(n_boot):
        drawn = _draw(a_arr + b_arr, gen)
        values.append(float(metric(*drawn[:len(a_arr)])) - float(metric(*drawn[len(a_arr):])))
    low, high = _interval(values, alpha)
    v = torch.tensor(values, dtype=torch.float64)
    p = min(1.0, 2.0 * min(float((v <= 0).double().mean()), float((v >= 0).double().mean())))
    return {"diff": diff, "low": low, "high": high, "p": p}
