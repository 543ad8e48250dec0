"""DeLong's paired test of the difference of two AUROCs on the same ID/OOD samples, with the fast midrank
algorithm of Sun & Xu (2014): O(N log N) instead of the O(m·n) placement matrix. ID is the positive class
(higher score = more in-distribution), as everywhere in qclip. Pure functions."""

from __future__ import annotations

import math
import sys
from statistics import NormalDist

import numpy as np
import torch

from .power import mde, z_two_sided

__all__ = ["midranks", "delong_components", "delong"]


def midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of `x` along its last axis, ties sharing their mean rank."""
    from scipy.stats import rankdata

    return rankdata(x, method="average", axis=-1)


def delong_components(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(AUROC [k], V10 [k, m], V01 [k, n]) of k score vectors: AUROC = P(pos > neg) + ½·P(tie), V10_i the share of
    negatives below positive i (ties ½), V01_j the share of positives above negative j (Sun & Xu 2014, eq. 7–9)."""
    m, n = pos.shape[-1], neg.shape[-1]
    tx, ty, tz = midranks(pos), midranks(neg), midranks(np.concatenate([pos, neg], axis=-1))
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    auc = v10.mean(axis=-1)
    return auc, v10, v01


def delong(scores_a: torch.Tensor, scores_b: torch.Tensor, is_pos: torch.Tensor, alpha: float = 0.05) -> dict:
    """Paired test of AUROC(a) − AUROC(b), both scoring the same samples (`is_pos` 1 = ID):
    {"test": "delong", "diff", "low", "high", "p", "se", "mde", "n", "auroc_a", "auroc_b"}.

    Var(Δ) = [1, −1]·(S10/m + S01/n)·[1, −1]ᵀ with S10, S01 the 2×2 covariances of the structural components
    (DeLong, DeLong & Clarke-Pearson 1988); p two-sided from z = Δ/SE; the interval is Δ ± z_{1−α/2}·SE. With a
    zero variance p = 1 when Δ = 0 (identical scores), else None (degenerate)."""
    pos_mask = is_pos.reshape(-1).bool().numpy()
    s = torch.stack([scores_a.reshape(-1), scores_b.reshape(-1)]).double().numpy()
    m, n = int(pos_mask.sum()), int((~pos_mask).sum())
    if m < 2 or n < 2:
        raise ValueError(f"DeLong needs at least 2 positives and 2 negatives, got {m} and {n}")
    auc, v10, v01 = delong_components(s[:, pos_mask], s[:, ~pos_mask])
    cov = np.cov(v10) / m + np.cov(v01) / n
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    diff = float(auc[0] - auc[1])
    se = math.sqrt(var) if var > 0 else 0.0
    if se > 0:
        p: float | None = min(1.0, max(sys.float_info.min, 2 * NormalDist().cdf(-abs(diff) / se)))  # never 0
    else:  # identical scores: no difference; a degenerate Δ ≠ 0 with no variance has no p-value
        p = 1.0 if diff == 0 else None
    z = z_two_sided(alpha)
    return {"test": "delong", "diff": diff, "low": diff - z * se, "high": diff + z * se, "p": p, "se": se,
            "mde": mde(se, alpha), "n": m + n, "auroc_a": float(auc[0]), "auroc_b": float(auc[1])}
