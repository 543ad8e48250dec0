"""McNemar's exact test for a paired difference in accuracy (a binomial sign test on the discordant pairs) and the
Bonett–Price adjusted Wald interval for the difference of two paired proportions. Pure functions."""

from __future__ import annotations

import math
import sys

import torch

from .power import mde, z_two_sided

__all__ = ["sign_test", "mcnemar"]


def sign_test(k: int, n: int) -> float:
    """Two-sided exact binomial p-value of `k` successes in `n` trials at success probability 1/2:
    min(1, 2·P(X ≤ min(k, n − k))) (1 when n = 0); the distribution is symmetric, so this is the sum of every
    outcome's probability no larger than the observed one's."""
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k = {k}, n = {n}")
    if n == 0:
        return 1.0
    low = min(k, n - k)
    # log-space binomial pmf, summed with a log-sum-exp (n can be in the thousands)
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2) for i in range(low + 1)]
    top = max(logs)
    # a p below the smallest normal double (e.g. 0 of 2,000 discordant pairs) is clamped to it, never 0
    return min(1.0, max(sys.float_info.min, 2.0 * math.exp(top) * sum(math.exp(v - top) for v in logs)))


def mcnemar(correct_a: torch.Tensor, correct_b: torch.Tensor, alpha: float = 0.05) -> dict:
    """Paired test of accuracy(a) − accuracy(b) on the same N samples from 0/1 correctness vectors:
    {"test": "mcnemar", "diff", "low", "high", "p", "se", "mde", "n", "better", "worse"}.

    better / worse: samples only a / only b gets right (the discordant pairs). p: McNemar's exact test (`sign_test`
    of better among better + worse). Interval: Bonett & Price (2012) adjusted Wald, which adds 1 to each discordant
    count and 2 to N (so it never collapses to a point); se is that interval's standard error, mde the minimum detectable effect
    at `alpha` and 80% power from it."""
    a, b = correct_a.reshape(-1).bool(), correct_b.reshape(-1).bool()
    if a.numel() != b.numel() or a.numel() == 0:
        raise ValueError(f"correctness vectors must be non-empty and of one length, got {a.numel()} and {b.numel()}")
    n = a.numel()
    better, worse = int((a & ~b).sum()), int((~a & b).sum())
    p12, p21 = (better + 1) / (n + 2), (worse + 1) / (n + 2)
    d_adj = p12 - p21
    se = math.sqrt(max(0.0, (p12 + p21 - d_adj ** 2) / (n + 2)))
    z = z_two_sided(alpha)
    return {"test": "mcnemar", "diff": (better - worse) / n, "low": max(-1.0, d_adj - z * se),
            "high": min(1.0, d_adj + z * se), "p": sign_test(better, better + worse), "se": se, "mde": mde(se, alpha),
            "n": n, "better": better, "worse": worse}
