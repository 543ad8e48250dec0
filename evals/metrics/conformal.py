"""Split-conformal prediction sets from class probabilities: THR/LAC, APS and RAPS scores. Writes nothing.

Non-conformity scores of label y for a row p of `probs` [N, C] (`softmax_probs(logits)`; lower = more conforming).
Classes are ranked by descending probability, ties to the lower class index; o(y) is y's 1-based rank, C_j the
probability mass of the top j classes, and u ~ U(0, 1) one uniform per sample:

- "thr" (alias "lac"): 1 − p_y. Sadinle, Lei & Wasserman 2019, "Least ambiguous set-valued classifiers with bounded
  error levels", JASA (the LAC/THR score of TorchCP).
- "aps": C_{o(y)} − u·p_y when randomized (the default), C_{o(y)} when not. Romano, Sesia & Candès 2020,
  "Classification with valid and adaptive coverage", NeurIPS. The randomized score is the paper's main definition:
  its coverage is 1 − α up to 1/(n + 1) rather than conservative, and its sets are smaller. One u per sample, so a
  set is always a prefix of the ranking.
- "raps": the APS score + λ·(o(y) − k_reg)⁺. Angelopoulos, Bates, Malik & Jordan 2021, "Uncertainty sets for image
  classifiers using conformal prediction", ICLR; defaults λ = 0.01, k_reg = 5 (their code's defaults).

`conformal_threshold` is the ⌈(n+1)(1−α)⌉-th smallest calibration score (the empirical ⌈(n+1)(1−α)⌉/n quantile,
numpy's method="inverted_cdf"), or +inf when that rank exceeds n; the set of a test row is {y : score(y) ≤ threshold}
and may be empty. On exchangeable data P(y ∈ set) ≥ 1 − α, and ≤ 1 − α + 1/(n + 1) when scores have no ties
(Vovk et al. 2005; Lei et al. 2018). Reductions run in float64 and return Python floats.
"""

from __future__ import annotations

import math
from numbers import Real

import torch

from .calibration import _check_labels, _check_matrix, _check_probs

__all__ = ["CONFORMAL_METHODS", "conformal_scores", "conformal_threshold", "prediction_sets", "coverage",
           "mean_set_size", "split_conformal"]

#: Accepted `method` names; "lac" is an alias of "thr".
CONFORMAL_METHODS = ("thr", "lac", "aps", "raps")


def _method(method: str) -> str:
    if method not in CONFORMAL_METHODS:
        raise ValueError(f"method must be one of {CONFORMAL_METHODS}, got {method!r}")
    return "thr" if method == "lac" else method


def _probs_only(probs: torch.Tensor) -> torch.Tensor:
    """Validated float64 probs [N, C] (the label check of `_check_probs` is fed dummy labels)."""
    _check_matrix(probs, "probs")
    p, _ = _check_probs(probs, torch.zeros(probs.shape[0], dtype=torch.long, device=probs.device))
    return p


def conformal_scores(probs: torch.Tensor, method: str = "aps", *, randomized: bool = True, lam: float = 0.01,
                     k_reg: int = 5, u: torch.Tensor | None = None, seed: int = 0) -> torch.Tensor:
    """[N, C] float64 non-conformity score of every label (module docstring). For randomized APS/RAPS, `u` [N] gives
    the per-sample uniforms; by default they are drawn from a CPU `torch.Generator` seeded with `seed`."""
    return _scores(_probs_only(probs), _method(method), randomized, lam, k_reg, u, seed)


def _scores(p: torch.Tensor, method: str, randomized: bool, lam: float, k_reg: int, u: torch.Tensor | None,
            seed: int) -> torch.Tensor:
    """`conformal_scores` of validated float64 probs and a canonical method name."""
    if method == "thr":
        return 1.0 - p
    if isinstance(lam, bool) or not isinstance(lam, Real) or not 0 <= lam < math.inf:
        raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
    if isinstance(k_reg, bool) or not isinstance(k_reg, int) or k_reg < 0:
        raise ValueError(f"k_reg must be an int >= 0, got {k_reg!r}")
    n, c = p.shape
    ordered, order = torch.sort(p, dim=1, descending=True, stable=True)
    ranked = torch.cumsum(ordered, dim=1)
    if randomized:
        if u is None:
            u = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        u = torch.as_tensor(u).detach()
        if u.shape != (n,) or not ((u >= 0) & (u <= 1)).all():
            raise ValueError(f"u must be an [N] = [{n}] tensor of values in [0, 1], got shape {tuple(u.shape)}")
        ranked = ranked - u.to(p.device, torch.float64).unsqueeze(1) * ordered
    if method == "raps":
        rank = torch.arange(1, c + 1, dtype=torch.float64, device=p.device)
        ranked = ranked + lam * (rank - k_reg).clamp(min=0)
    return torch.empty_like(ranked).scatter_(1, order, ranked)


def _check_alpha(alpha: float) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, Real) or not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")


def conformal_threshold(scores_cal: torch.Tensor, alpha: float) -> float:
    """The ⌈(n+1)(1−α)⌉-th smallest of the n calibration scores (finite-sample split-conformal quantile), +inf when
    ⌈(n+1)(1−α)⌉ > n. The rank is computed with an 8-decimal rounding guard, so 0.3·10 = 3.0000000000000004 is 3."""
    _check_alpha(alpha)
    s = torch.as_tensor(scores_cal).detach()
    if s.ndim != 1 or s.numel() == 0:
        raise ValueError(f"scores_cal must be a non-empty 1-D tensor, got shape {tuple(s.shape)}")
    s = s.double()
    if torch.isnan(s).any():
        raise ValueError("scores_cal contains NaN")
    n = s.numel()
    k = math.ceil(round((n + 1) * (1 - alpha), 8))
    if k > n:
        return math.inf
    return float(torch.kthvalue(s.cpu(), k).values)


def prediction_sets(probs: torch.Tensor, threshold: float, method: str = "aps", *, randomized: bool = True,
                    lam: float = 0.01, k_reg: int = 5, u: torch.Tensor | None = None, seed: int = 0) -> torch.Tensor:
    """Bool mask [N, C] of the labels whose `conformal_scores` (same keyword arguments) are ≤ `threshold`."""
    if not isinstance(threshold, (Real, torch.Tensor)) or math.isnan(float(threshold)):
        raise ValueError(f"threshold must be a number (inf allowed), got {threshold!r}")
    scores = conformal_scores(probs, method, randomized=randomized, lam=lam, k_reg=k_reg, u=u, seed=seed)
    return scores <= float(threshold)


def _check_sets(sets: torch.Tensor) -> torch.Tensor:
    if not isinstance(sets, torch.Tensor) or sets.ndim != 2 or sets.shape[0] == 0 or sets.shape[1] == 0:
        shape = tuple(sets.shape) if isinstance(sets, torch.Tensor) else type(sets).__name__
        raise ValueError(f"sets must be a non-empty [N, C] mask, got {shape}")
    if sets.dtype != torch.bool:
        if not ((sets == 0) | (sets == 1)).all():
            raise ValueError("sets must be bool or 0/1")
        sets = sets != 0
    return sets


def coverage(sets: torch.Tensor, labels: torch.Tensor) -> float:
    """Empirical coverage: share of rows whose set [N, C] contains the row's label."""
    sets = _check_sets(sets)
    labels = _check_labels(labels, sets.shape[0], sets.shape[1]).to(sets.device)
    return float(sets.gather(1, labels.view(-1, 1)).double().mean())


def mean_set_size(sets: torch.Tensor) -> float:
    """Mean number of labels per prediction set [N, C] (empty sets count 0)."""
    return float(_check_sets(sets).double().sum(dim=1).mean())


def split_conformal(probs: torch.Tensor, labels: torch.Tensor, *, alpha: float = 0.1, method: str = "aps",
                    cal_fraction: float = 0.5, seed: int = 0, randomized: bool = True, lam: float = 0.01,
                    k_reg: int = 5) -> dict[str, float | int | str]:
    """Split conformal on one seeded split: {"coverage", "set_size", "alpha", "method", "n_cal", "n_test",
    "threshold"}.

    A CPU `torch.Generator(seed)` draws `torch.randperm(N)`, whose first n_cal = round(cal_fraction·N) rows calibrate
    the threshold at level α, then (randomized APS/RAPS) one uniform per row; coverage and mean set size are measured
    on the other n_test rows. `method` comes back canonical ("lac" -> "thr"); `threshold` may be +inf.
    """
    _check_alpha(alpha)
    method = _method(method)
    p, labels = _check_probs(probs, labels)
    n = p.shape[0]
    if not 0 < cal_fraction < 1:
        raise ValueError(f"cal_fraction must be in (0, 1), got {cal_fraction!r}")
    n_cal = int(math.floor(cal_fraction * n + 0.5))
    if not 1 <= n_cal <= n - 1:
        raise ValueError(f"cal_fraction {cal_fraction} of N = {n} leaves n_cal = {n_cal}; need 1 <= n_cal <= N - 1")
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen).to(p.device)
    u = torch.rand(n, generator=gen, dtype=torch.float64) if randomized and method != "thr" else None
    scores = _scores(p, method, randomized, lam, k_reg, u, seed)
    cal, test = perm[:n_cal], perm[n_cal:]
    # index_select, not scores[test]: advanced indexing of a few thousand rows stalls for ms on a busy CPU
    cal_scores = scores.index_select(0, cal).gather(1, labels.index_select(0, cal).view(-1, 1)).squeeze(1)
    threshold = conformal_threshold(cal_scores, alpha)
    sets = scores.index_select(0, test) <= threshold
    return {"coverage": coverage(sets, labels.index_select(0, test)), "set_size": mean_set_size(sets),
            "alpha": float(alpha), "method": method, "n_cal": n_cal, "n_test": n - n_cal, "threshold": threshold}
