"""Selective prediction: risk–coverage curve, AURC, AUGRC and selective accuracy at a fixed coverage. Writes nothing.

A selective classifier answers on the samples whose confidence is at least a threshold τ and abstains on the rest.
Coverage is the share answered; selective risk r is the error rate among the answered (Geifman & El-Yaniv 2017,
"Selective classification for deep neural networks", NeurIPS); generalized risk is the answered errors divided by
all N (Traub et al. 2024, "Overcoming common flaws in the evaluation of selective classification systems").

Ties: a threshold answers or rejects tied samples together, so the achievable operating points are the distinct
confidence values (`risk_coverage_curve`). The areas and `accuracy_at_coverage` evaluate every coverage k/N,
k = 1..N; where k cuts through a group of tied confidences, the group's errors are spread evenly over its members
(the answered error count is interpolated linearly inside the group). That is exactly the expectation over uniformly
random tie-breaking, so no result depends on input order; without ties it is the plain sorted-by-confidence value.

`confidence` is any 1-D score where higher means more confident (top-label probability by default in
`selective_metrics`); `correct` is 1-D bool or 0/1. Reductions run in float64 and return Python floats.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Sequence

import numpy as np
import torch

from .calibration import _top_label

__all__ = ["risk_coverage_curve", "aurc", "augrc", "accuracy_at_coverage", "selective_metrics"]

ArrayLike = torch.Tensor | np.ndarray | Sequence[float]


def _check_inputs(confidence: ArrayLike, correct: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated float64 CPU confidence [N] and error indicator [N] (1.0 = wrong)."""
    conf = torch.as_tensor(confidence).detach().to("cpu")
    corr = torch.as_tensor(correct).detach().to("cpu")
    if conf.ndim != 1 or conf.numel() == 0:
        raise ValueError(f"confidence must be a non-empty 1-D array, got shape {tuple(conf.shape)}")
    if corr.shape != conf.shape:
        raise ValueError(f"correct must have the shape of confidence {tuple(conf.shape)}, got {tuple(corr.shape)}")
    conf = conf.double()
    if not torch.isfinite(conf).all():
        raise ValueError("confidence must be finite (no NaN or inf)")
    corr = corr.double()
    if not ((corr == 0) | (corr == 1)).all():
        raise ValueError("correct must be bool or 0/1")
    return conf, 1.0 - corr


def _accepted_errors(conf: torch.Tensor, err: torch.Tensor) -> torch.Tensor:
    """[N + 1] answered-error counts E_k at coverage k/N (E_0 = 0), linear inside groups of tied confidences."""
    order = torch.argsort(conf, descending=True, stable=True)
    # index_select, not x[idx]: advanced indexing of a few thousand elements stalls for ms on a busy CPU
    c, e = conf.index_select(0, order), err.index_select(0, order)
    first = torch.ones_like(c, dtype=torch.bool)
    first[1:] = c[1:] != c[:-1]
    gid = torch.cumsum(first.long(), 0) - 1
    n_g = torch.bincount(gid).double()
    e_g = torch.bincount(gid, weights=e)
    start = (torch.cumsum(n_g, 0) - n_g).index_select(0, gid)  # samples answered before the group
    before = (torch.cumsum(e_g, 0) - e_g).index_select(0, gid)  # errors answered before the group
    k = torch.arange(1, c.numel() + 1, dtype=torch.float64)
    inside = before + (k - start) * (e_g / n_g).index_select(0, gid)
    return torch.cat([torch.zeros(1, dtype=torch.float64), inside])


def risk_coverage_curve(confidence: ArrayLike, correct: ArrayLike) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(coverage, risk, threshold) float64 tensors at each distinct confidence τ, descending: answering the samples
    with confidence ≥ τ covers `coverage` of them at selective risk (error rate) `risk`; tied samples go together."""
    conf, err = _check_inputs(confidence, correct)
    thresholds, inverse = torch.unique(conf, sorted=True, return_inverse=True)
    n_g = torch.bincount(inverse, minlength=thresholds.numel()).double().flip(0)
    e_g = torch.bincount(inverse, weights=err, minlength=thresholds.numel()).flip(0)
    answered = torch.cumsum(n_g, 0)
    return answered / conf.numel(), torch.cumsum(e_g, 0) / answered, thresholds.flip(0)


def _aurc(errors: torch.Tensor) -> float:
    n = errors.numel() - 1
    return float((errors[1:] / torch.arange(1, n + 1, dtype=torch.float64)).mean())


def _augrc(errors: torch.Tensor) -> float:
    n = errors.numel() - 1
    return float((errors[1:] + errors[:-1]).sum() / (2 * n * n))


def _acc_at(errors: torch.Tensor, coverage: float) -> float:
    if isinstance(coverage, bool) or not isinstance(coverage, Real) or not 0 < coverage <= 1:
        raise ValueError(f"coverage must be a number in (0, 1], got {coverage!r}")
    n = errors.numel() - 1
    k = max(1, math.ceil(round(coverage * n, 8)))  # the rounding keeps e.g. 0.9·N = 90.00000000000001 at 90
    return 1.0 - float(errors[k]) / k


def aurc(confidence: ArrayLike, correct: ArrayLike) -> float:
    """Area under the risk–coverage curve, AURC = (1/N) Σ_{k=1..N} r(k/N), with r(k/N) the error rate of the k most
    confident samples (Geifman, Uziel & El-Yaniv 2019, "Bias-reduced uncertainty estimation for deep neural
    classifiers", ICLR). Lower is better; 0 when all are right, 1 when all are wrong.

    This is the plain Riemann sum. torch-uncertainty's `AURC` instead integrates the points k = 1..N with the
    trapezoid rule and divides by 1 − 1/N, which differs by O(1/N): theirs·(1 − 1/N) = ours − (r(1/N) + r(1))/(2N).
    """
    return _aurc(_accepted_errors(*_check_inputs(confidence, correct)))


def augrc(confidence: ArrayLike, correct: ArrayLike) -> float:
    """Area under the generalized risk–coverage curve (Traub et al. 2024): the generalized risk at coverage k/N is
    (errors among the k most confident) / N, interpolated linearly from (0, 0), and AUGRC = ∫₀¹ of it (trapezoid).

    Equivalently AUGRC = (1 − AUROC_f)·acc·(1 − acc) + ½(1 − acc)², with AUROC_f the AUROC of the confidence for
    separating right from wrong (ties count ½) and acc the accuracy; lower is better, ½ when all are wrong.
    torch-uncertainty's `AUGRC` starts its trapezoid at k = 1 and divides by 1 − 1/N:
    theirs·(1 − 1/N) = ours − E_1/(2N²), with E_1 = 1 if the most confident sample is wrong.
    """
    return _augrc(_accepted_errors(*_check_inputs(confidence, correct)))


def accuracy_at_coverage(confidence: ArrayLike, correct: ArrayLike, coverage: float) -> float:
    """Selective accuracy of the k = ⌈coverage·N⌉ most confident samples (at least the requested coverage); a tie
    group cut by k contributes its mean correctness per answered member."""
    return _acc_at(_accepted_errors(*_check_inputs(confidence, correct)), coverage)


def selective_metrics(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """{"aurc", "augrc", "acc_at_80", "acc_at_90"} of the top-label confidence max_c p_c and top-1 correctness of
    `probs` [N, C] (`softmax_probs(logits)`; argmax ties go to the lowest class index)."""
    conf, correct = _top_label(probs, labels)
    errors = _accepted_errors(*_check_inputs(conf.cpu(), correct.cpu()))
    return {"aurc": _aurc(errors), "augrc": _augrc(errors), "acc_at_80": _acc_at(errors, 0.8),
            "acc_at_90": _acc_at(errors, 0.9)}
