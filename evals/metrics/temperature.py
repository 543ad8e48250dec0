"""Logit-scale (temperature) tuning: fit β in softmax(β · cos) by NLL on held-out data, backbone frozen.

NLL(β) = mean_i [logsumexp_c(β cos_ic) − β cos_iy] is convex in β, with derivative E_p[cos] − cos_y and
curvature Var_p[cos] ≥ 0, so a safeguarded Newton iteration on a bracket finds the optimum deterministically.
"""

from __future__ import annotations

import math

import torch

__all__ = ["nll_at", "fit_logit_scale"]


def nll_at(beta: float, cos: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean negative log-likelihood of softmax(beta · cos)."""
    logits = beta * cos.double()
    return float((torch.logsumexp(logits, 1) - logits.gather(1, labels.view(-1, 1)).squeeze(1)).mean())


def _grad_curv(beta: float, cos: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    p = torch.softmax(beta * cos, 1)
    mean = (p * cos).sum(1)
    grad = (mean - cos.gather(1, labels.view(-1, 1)).squeeze(1)).mean()
    curv = ((p * cos ** 2).sum(1) - mean ** 2).mean()
    return float(grad), float(curv)


@torch.no_grad()
def fit_logit_scale(cos: torch.Tensor, labels: torch.Tensor, *, lo: float = 1e-2, hi: float = 1e3,
                    tol: float = 1e-8, max_iter: int = 100) -> float:
    """Return log(β*) (open_clip's `logit_scale` parameterisation) minimising the NLL of softmax(β·cos)."""
    if cos.ndim != 2 or labels.shape[0] != cos.shape[0]:
        raise ValueError(f"need cos [N, C] and labels [N], got {tuple(cos.shape)} and {tuple(labels.shape)}")
    cos, labels = cos.double(), labels.long()
    g_lo, _ = _grad_curv(lo, cos, labels)
    g_hi, _ = _grad_curv(hi, cos, labels)
    if g_lo >= 0:
        return math.log(lo)
    if g_hi <= 0:
        return math.log(hi)
    beta = math.sqrt(lo * hi)
    for _ in range(max_iter):
        g, h = _grad_curv(beta, cos, labels)
        if abs(g) < 1e-12:
            break
        if g > 0:
            hi = beta
        else:
            lo = beta
        step = beta - g / h if h > 0 else None
        beta = step if step is not None and lo <= step <= hi else 0.5 * (lo + hi)
        if hi - lo < tol * beta or abs(g / h if h > 0 else hi - lo) < tol * beta:
            break
    return math.log(beta)
