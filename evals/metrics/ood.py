"""OOD detection scores (higher = more in-distribution) and detection metrics with ID as the positive class.

Two softmaxes (docs/conventions.md): `mcm_score` takes the raw cosine similarities `cos` [N, C] and applies
`softmax(cos / T)` with T = 1 (MCM, Ming et al. 2022); the other scores take the calibration-convention logits
`logit_scale.exp() * cos`. `SCORE_INPUTS` says which input each entry of `SCORES` expects.

Metrics treat ID as positive: AUROC, AUPR (average precision, ID positive) and FPR95 = share of OOD samples
accepted (score ≥ threshold) at the threshold where 95% of ID samples are accepted (MCM/SeTAR convention).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

__all__ = ["mcm_score", "max_logit_score", "energy_score", "neg_entropy_score", "msp_score", "SCORES",
           "SCORE_INPUTS", "auroc", "aupr", "fpr_at_95_tpr", "ood_metrics"]

ArrayLike = torch.Tensor | np.ndarray | Sequence[float]


def _check_matrix(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[1] == 0:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be an [N, C] tensor with C ≥ 1, got {shape}")
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def mcm_score(cos: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """MCM score: max_c softmax(cos / T)_c of RAW cosine similarities [N, C] (not logit-scaled); T = 1 by default."""
    _check_temperature(temperature)
    return torch.softmax(_check_matrix(cos, "cos") / temperature, dim=1).amax(dim=1)


def max_logit_score(logits: torch.Tensor) -> torch.Tensor:
    """Maximum logit max_c logits_c of calibration-convention logits [N, C]."""
    return _check_matrix(logits, "logits").amax(dim=1)


def energy_score(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Negative free energy T·logsumexp(logits / T) of calibration-convention logits [N, C]."""
    _check_temperature(temperature)
    return temperature * torch.logsumexp(_check_matrix(logits, "logits") / temperature, dim=1)


def neg_entropy_score(logits: torch.Tensor) -> torch.Tensor:
    """Negative predictive entropy Σ_c p_c log p_c of softmax(logits) (calibration-convention logits [N, C])."""
    logp = torch.log_softmax(_check_matrix(logits, "logits"), dim=1)
    return (logp.exp() * logp).sum(dim=1)


def msp_score(logits: torch.Tensor) -> torch.Tensor:
    """Maximum softmax probability max_c softmax(logits)_c of calibration-convention logits [N, C]."""
    return torch.softmax(_check_matrix(logits, "logits"), dim=1).amax(dim=1)


#: Score name -> function of one [N, C] tensor; see `SCORE_INPUTS` for which tensor each takes.
SCORES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "mcm": mcm_score,                # raw cosine similarities, softmax(cos / 1)
    "max_logit": max_logit_score,    # logit_scale.exp() * cos
    "energy": energy_score,          # logit_scale.exp() * cos
    "entropy": neg_entropy_score,    # logit_scale.exp() * cos
}

#: Score name -> "cos" (raw cosine similarities) or "logits" (`logit_scale.exp() * cos`).
SCORE_INPUTS: dict[str, str] = {"mcm": "cos", "max_logit": "logits", "energy": "logits", "entropy": "logits"}


def _scores_1d(x: ArrayLike, name: str) -> torch.Tensor:
    t = torch.as_tensor(x).detach().to("cpu", torch.float64).reshape(-1)
    if t.numel() == 0:
        raise ValueError(f"{name} is empty")
    if torch.isnan(t).any():
        raise ValueError(f"{name} contains NaN")
    return t


def _pooled(id_scores: ArrayLike, ood_scores: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores sorted descending and the matching 0/1 ID indicator (float64)."""
    pos, neg = _scores_1d(id_scores, "id_scores"), _scores_1d(ood_scores, "ood_scores")
    scores = torch.cat([pos, neg])
    is_id = torch.cat([torch.ones_like(pos), torch.zeros_like(neg)])
    order = torch.argsort(scores, descending=True, stable=True)
    return scores[order], is_id[order]


def _curve(id_scores: ArrayLike, ood_scores: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Cumulative TPs and FPs at each distinct threshold, from the highest score down (accept = score ≥ t)."""
    s, is_id = _pooled(id_scores, ood_scores)
    last_of_value = torch.cat([torch.nonzero(s[1:] != s[:-1]).reshape(-1), torch.tensor([s.numel() - 1])])
    tps = torch.cumsum(is_id, 0)[last_of_value]
    fps = (last_of_value + 1).double() - tps
    return tps, fps


def auroc(id_scores: ArrayLike, ood_scores: ArrayLike) -> float:
    """Area under the ROC curve with ID as positive: P(s_id > s_ood) + ½·P(tie) (Mann–Whitney, average ranks)."""
    pos, neg = _scores_1d(id_scores, "id_scores"), _scores_1d(ood_scores, "ood_scores")
    scores = torch.cat([pos, neg])
    values, inverse, counts = torch.unique(scores, sorted=True, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()  # 1-based rank of each distinct value's last copy
    avg_rank = ends - (counts.double() - 1) / 2
    rank_sum = avg_rank[inverse[: pos.numel()]].sum()
    n_pos, n_neg = pos.numel(), neg.numel()
    return float((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def aupr(id_scores: ArrayLike, ood_scores: ArrayLike) -> float:
    """Average precision with ID as positive: Σ_k (R_k − R_{k−1})·P_k over distinct thresholds (sklearn's AP)."""
    tps, fps = _curve(id_scores, ood_scores)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    steps = torch.diff(recall, prepend=recall.new_zeros(1))
    return float((steps * precision).sum())


def fpr_at_95_tpr(id_scores: ArrayLike, ood_scores: ArrayLike, recall: float = 0.95) -> float:
    """FPR at 95% TPR, MCM/SeTAR convention: share of OOD samples accepted (score ≥ t) at the threshold t whose
    ID recall (share of ID accepted) is closest to `recall`, as MCM's `fpr_and_fdr_at_recall` does.

    Thresholds are the distinct pooled score values, from the highest down to the first that accepts every ID
    sample. The achieved recall can sit just below or above `recall` (it moves in steps of 1/N_id, larger with
    tied scores). Among thresholds equally close to `recall`, MCM's `argmin` over its reversed curve keeps the
    LOWEST one: the higher recall, and for equal recall the most OOD accepted.
    """
    if not 0 < recall <= 1:
        raise ValueError(f"recall must be in (0, 1], got {recall}")
    tps, fps = _curve(id_scores, ood_scores)
    n_id = tps[-1]
    n_ood = float(fps[-1])
    full = int(torch.searchsorted(tps, n_id))  # first threshold accepting every ID sample
    achieved = tps[: full + 1] / n_id
    gap = (achieved - recall).abs()
    cut = int(torch.nonzero(gap == gap.min()).max())  # ties -> the lowest threshold, as MCM's reversed argmin
    return float(fps[cut]) / n_ood


def ood_metrics(id_scores: ArrayLike, ood_scores: ArrayLike) -> dict[str, float]:
    """`{"auroc", "aupr", "fpr95"}` with ID as positive (see `auroc`, `aupr`, `fpr_at_95_tpr`)."""
    return {"auroc": auroc(id_scores, ood_scores), "aupr": aupr(id_scores, ood_scores),
            "fpr95": fpr_at_95_tpr(id_scores, ood_scores)}
