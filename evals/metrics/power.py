"""Power of a paired test from its own standard error: the minimum detectable effect at 80% power and the N at
which an observed difference would be resolved (SE ∝ 1/√N, an estimate). Pure arithmetic on floats."""

from __future__ import annotations

import math
from statistics import NormalDist

__all__ = ["POWER", "mde", "n_to_resolve", "z_two_sided"]

POWER = 0.8  # the power every minimum detectable effect and N-to-resolve is stated at


def z_two_sided(alpha: float) -> float:
    """z_{1−α/2}: the two-sided normal critical value at level `alpha`."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return NormalDist().inv_cdf(1 - alpha / 2)


def mde(se: float | None, alpha: float = 0.05, power: float = POWER) -> float | None:
    """Minimum detectable effect (z_{1−α/2} + z_power)·SE of a two-sided test at level `alpha` (None without a
    positive SE, e.g. for identical predictions)."""
    if se is None or not math.isfinite(se) or se <= 0:
        return None
    return (z_two_sided(alpha) + NormalDist().inv_cdf(power)) * se


def n_to_resolve(n: int, se: float | None, diff: float | None, alpha: float = 0.05,
                 power: float = POWER) -> int | None:
    """Estimated N at which `diff` equals the minimum detectable effect, scaling the SE measured at `n` by
    √(n/N′): ⌈n·(MDE/|diff|)²⌉ (None when the difference is 0 or there is no SE)."""
    m = mde(se, alpha, power)
    if m is None or diff is None or not math.isfinite(diff) or diff == 0:
        return None
    return max(1, math.ceil(n * (m / abs(diff)) ** 2))
