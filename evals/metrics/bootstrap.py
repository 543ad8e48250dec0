"""Percentile bootstrap confidence intervals for metrics of paired arrays, of two independent groups, and of the
difference of a metric between two models scored on the same samples; and the vectorised paired bootstrap test
(one resample-count matrix, the metric evaluated for every resample at once) whose p-value is valid at its
resample count, p = (k + 1)/(B + 1), with the smallest B a test family needs."""

from __future__ import annotations

import functools
import math
from typing import Callable, Iterator, Sequence

import torch

__all__ = ["bootstrap_ci", "bootstrap_ci_two_sample", "paired_bootstrap_diff", "paired_bootstrap",
           "paired_bootstrap_many", "resample_counts", "min_resamples", "RESAMPLE_MARGIN"]


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
    return diff, low, high


RESAMPLE_MARGIN = 5  # a paired bootstrap's p floor 1/(B+1) sits at least this far below Holm's first threshold α/m
_CHUNK = 256  # resamples drawn per batch: bounds memory at 3 × 256 × N numbers
_STORED_ROWS_ELEMENTS = 2**22  # kept counts are handed out in batches of about this many numbers (16 MB float32)
_STORED_BYTES = 256 * 2**20  # resample counts kept for reuse up to this size (uint8), per (N, B, seed), 8 at most


def min_resamples(family_size: int, alpha: float = 0.05, margin: int = RESAMPLE_MARGIN) -> int:
    """Smallest B whose p floor 1/(B+1) is at most α/(margin·m), Holm's first threshold α/m over `margin`, for a
    family of `family_size` = m tests: ⌈margin·m/α⌉ − 1."""
    if not isinstance(family_size, int) or family_size < 1:
        raise ValueError(f"family_size must be a positive int, got {family_size!r}")
    return math.ceil(margin * family_size / alpha) - 1


def _draw_counts(n: int, n_boot: int, seed: int) -> Iterator[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, n_boot, _CHUNK):
        r = min(_CHUNK, n_boot - start)
        idx = torch.randint(n, (r, n), generator=gen)
        yield torch.zeros(r, n).scatter_add_(1, idx, torch.ones(r, n))


@functools.lru_cache(maxsize=8)
def _stored_counts(n: int, n_boot: int, seed: int) -> torch.Tensor | None:
    """`_draw_counts` as one uint8 matrix [B, N], or None if a count exceeds 255 (never seen: the largest of N
    multinomial counts is about log N / log log N)."""
    counts = torch.cat(list(_draw_counts(n, n_boot, seed)))
    return counts.to(torch.uint8) if counts.max() <= 255 else None


def resample_counts(n: int, n_boot: int, seed: int = 0) -> Iterator[torch.Tensor]:
    """The `n_boot` resamples of N rows with replacement as count matrices [R, N], in batches:
    batch j is `torch.randint(N, (R, N))` of one CPU `torch.Generator(seed)` turned into per-row counts, so the same
    seed gives the same resamples for every set of that N. float32: counts are exact integers there (N < 2²⁴), and
    float64 scatters and products took 3× as long. Up to 256 MB of them are kept as uint8 for the next call with the
    same (N, B, seed) — a grid's cells all share them — so drawing them costs once per process."""
    _check(n_boot, 0.05)
    stored = _stored_counts(n, n_boot, seed) if n * n_boot <= _STORED_BYTES else None
    if stored is None:
        yield from _draw_counts(n, n_boot, seed)
        return
    rows = max(_CHUNK, _STORED_ROWS_ELEMENTS // n)  # kept counts convert in larger batches: fewer, larger products
    for start in range(0, n_boot, rows):
        yield stored[start:start + rows].float()


def paired_bootstrap_many(metric: Callable[..., torch.Tensor], a: Sequence[torch.Tensor] | torch.Tensor,
                          b: Sequence[torch.Tensor] | torch.Tensor, *, n_boot: int, alpha: float = 0.05,
                          seed: int = 0) -> list[dict]:
    """Paired bootstrap tests of metric(*a) − metric(*b) for S statistics at once, one resample matrix for all.

    `metric(weights, *arrays)` takes bootstrap counts [R, N] (float32; float64 ones for the full data) and per-sample arrays whose last dimension is
    N and returns [R, S] weighted metric values (ones give the plain metric); `a` and `b` hold the two models'
    arrays on the SAME N samples. Per statistic: {"test": "bootstrap", "diff", "low", "high", "p", "se", "mde",
    "n", "resamples"}: diff on the full data, the percentile interval of the resampled differences, se their
    standard deviation, mde the minimum detectable effect at `alpha` and 80% power from it, and the two-sided
    p = (k + 1)/(B + 1) with k the resamples whose centred difference |Δ* − Δ| is at least |Δ| (the null
    distribution is the bootstrap distribution shifted to 0; Davison & Hinkley 1997, §4.4), so p ≥ 1/(B + 1)."""
    from .power import mde

    _check(n_boot, alpha)
    a_arr, b_arr = _as_arrays(a, "a"), _as_arrays(b, "b")
    n = a_arr[0].shape[-1]
    if any(x.shape[-1] != n for x in a_arr + b_arr):
        raise ValueError(f"a and b must cover the same samples, got N = {[x.shape[-1] for x in a_arr + b_arr]}")

    def diff_of(w: torch.Tensor) -> torch.Tensor:
        d = metric(w, *a_arr).double() - metric(w, *b_arr).double()
        return d.reshape(w.shape[0], -1)

    full = diff_of(torch.ones(1, n, dtype=torch.float64))[0]
    draws = torch.cat([diff_of(w) for w in resample_counts(n, n_boot, seed)]).double()  # [B, S]
    lo, hi = torch.quantile(draws, torch.tensor([alpha / 2, 1 - alpha / 2], dtype=torch.float64), dim=0)
    k = ((draws - full).abs() >= full.abs()).sum(0)
    sd = draws.std(dim=0, correction=1) if n_boot > 1 else torch.zeros_like(full)
    return [{"test": "bootstrap", "diff": float(full[s]), "low": float(lo[s]), "high": float(hi[s]),
             "p": (int(k[s]) + 1) / (n_boot + 1), "se": float(sd[s]), "mde": mde(float(sd[s]), alpha), "n": n,
             "resamples": n_boot} for s in range(full.numel())]


def paired_bootstrap(metric: Callable[..., torch.Tensor], a: Sequence[torch.Tensor] | torch.Tensor,
                     b: Sequence[torch.Tensor] | torch.Tensor, *, n_boot: int, alpha: float = 0.05,
                     seed: int = 0) -> dict:
    """`paired_bootstrap_many` of a metric with one statistic (`metric(weights, *arrays)` returns [R])."""
    return paired_bootstrap_many(metric, a, b, n_boot=n_boot, alpha=alpha, seed=seed)[0]
