"""Top-label calibration metrics (ECE, adaptive ECE, debiased ℓ2 CE, MCE, NLL, Brier) and reliability-diagram
bins. Writes nothing.

Convention (docs/conventions.md, "Two softmaxes"): calibration is measured on the calibration-convention logits
`logit_scale.exp() * cos`, softmaxed by `softmax_probs`; never on MCM's `softmax(cos / T)`. Functions named
after probabilities take `probs` [N, C] (rows on the simplex), `nll` takes the logits themselves; `labels` are
[N] class indices. All reductions run in float64 and return Python floats.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["softmax_probs", "ece", "ece_of_confidence", "top_label", "ece_floor", "adaptive_ece", "debiased_ece", "mce", "nll", "brier",
           "reliability_bins", "ece_from_bins"]

_SIMPLEX_ATOL = 1e-3  # float16/bfloat16 softmax rows are off by a few 1e-4


def softmax_probs(logits: torch.Tensor) -> torch.Tensor:
    """Float64 softmax over classes of [N, C] calibration-convention logits (`logit_scale.exp() * cos`)."""
    _check_matrix(logits, "logits")
    return torch.softmax(logits.double(), dim=1)


def _check_matrix(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a non-empty [N, C] tensor, got {shape}")


def _check_labels(labels: torch.Tensor, n: int, c: int) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor) or labels.ndim != 1 or labels.shape[0] != n:
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"labels must be a [N] tensor with N = {n}, got {shape}")
    labels = labels.long()
    if labels.min() < 0 or labels.max() >= c:
        raise ValueError(f"labels must lie in [0, {c}), got range [{int(labels.min())}, {int(labels.max())}]")
    return labels


def _check_probs(probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    _check_matrix(probs, "probs")
    labels = _check_labels(labels, probs.shape[0], probs.shape[1])
    p = probs.double()
    if not torch.isfinite(p).all() or p.min() < 0 or p.max() > 1:
        raise ValueError("probs must be finite and in [0, 1]; for logits pass softmax_probs(logits)")
    dev = float((p.sum(dim=1) - 1).abs().max())
    if dev > _SIMPLEX_ATOL:
        raise ValueError(f"probs rows must sum to 1 (max deviation {dev:.3g}); for logits pass softmax_probs(logits)")
    return p, labels.to(p.device)


def _top_label(probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-label confidence and correctness (float64 0/1); ties in the max go to the lowest class index."""
    p, labels = _check_probs(probs, labels)
    conf, pred = p.amax(dim=1), p.argmax(dim=1)  # not max(dim=1): on a busy CPU its thread pool stalls for ms
    return conf, (pred == labels).double()


def _check_bins(n_bins: int) -> None:
    if not isinstance(n_bins, int) or isinstance(n_bins, bool) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int, got {n_bins!r}")


def _bin_index(conf: torch.Tensor, n_bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Equal-width bin edges and each confidence's bin (i/n, (i+1)/n]; 0 goes to bin 0, 1 to the last bin."""
    _check_bins(n_bins)
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64, device=conf.device)
    # bin = number of inner edges strictly below conf; plain comparisons, because bucketize's thread pool makes
    # bootstrap loops of small calls stall on a busy CPU
    return edges, (conf.unsqueeze(1) > edges[1:-1]).sum(dim=1)


def _equal_width(conf: torch.Tensor, correct: torch.Tensor,
                 n_bins: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bin edges and per-bin count, summed correctness and summed confidence for bins (i/n, (i+1)/n].

    Bin 0 also takes a confidence of exactly 0; a confidence of exactly 1 lands in the last bin.
    """
    edges, idx = _bin_index(conf, n_bins)
    count = torch.bincount(idx, minlength=n_bins).double()
    acc_sum = torch.bincount(idx, weights=correct, minlength=n_bins)
    conf_sum = torch.bincount(idx, weights=conf, minlength=n_bins)
    return edges, count, acc_sum, conf_sum


def ece(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Expected calibration error: Σ_b (n_b/N)·|acc_b − conf_b| over equal-width top-label bins (i/n, (i+1)/n]."""
    return ece_of_confidence(*_top_label(probs, labels), n_bins)


def ece_of_confidence(conf: torch.Tensor, correct: torch.Tensor, n_bins: int = 15) -> float:
    """`ece` from the top-label confidences [N] and 0/1 correctness [N] alone (what paired bootstraps resample)."""
    conf, correct = conf.double(), correct.double()
    _, count, acc_sum, conf_sum = _equal_width(conf, correct, n_bins)
    return float((acc_sum - conf_sum).abs().sum() / conf.numel())


def ece_gaps(conf: torch.Tensor, correct: torch.Tensor, n_bins: int = 15) -> torch.Tensor:
    """Per-sample signed gaps by bin for `ece_of_gaps`: [S·n_bins, N] with row s·n_bins + b holding
    correct_i − conf_i where sample i of statistic s falls in bin b, else 0 (`conf`, `correct`: [N] or [S, N])."""
    conf, correct = conf.double(), correct.double()
    conf, correct = conf.reshape(-1, conf.shape[-1]), correct.reshape(-1, conf.shape[-1])
    s, n = conf.shape
    _, idx = _bin_index(conf.reshape(-1), n_bins)
    gaps = torch.zeros(s, n_bins, n, dtype=torch.float64)
    gaps[torch.arange(s).repeat_interleave(n), idx, torch.arange(n).repeat(s)] = (correct - conf).reshape(-1)
    return gaps.reshape(s * n_bins, n)


def ece_of_gaps(weights: torch.Tensor, gaps: torch.Tensor, n_bins: int = 15) -> torch.Tensor:
    """ECE of every statistic under every row of sample weights [R, N] (e.g. bootstrap counts) from `ece_gaps`:
    [R, S], ECE_r = Σ_b |Σ_i w_ri·gap_bi| / Σ_i w_ri; one matrix product in the weights' dtype (float32 for
    bootstrap counts, float64 for the full data)."""
    sums = (weights @ gaps.to(weights.dtype).T).reshape(weights.shape[0], -1, n_bins)
    return sums.abs().sum(-1) / weights.sum(1, keepdim=True)


def ece_weighted(weights: torch.Tensor, conf: torch.Tensor, correct: torch.Tensor, n_bins: int = 15) -> torch.Tensor:
    """`ece_of_confidence` of every statistic under every row of sample weights at once: `weights` [R, N],
    `conf` and `correct` [N] or [S, N] → [R] or [R, S] (`ece_of_gaps` of `ece_gaps`)."""
    out = ece_of_gaps(weights, ece_gaps(conf, correct, n_bins), n_bins)
    return out[:, 0] if conf.ndim == 1 else out


def top_label(probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(top-label confidence [N], 0/1 correctness [N]) of probabilities [N, C], validated, in float64."""
    return _top_label(probs, labels)


def ece_floor(probs: torch.Tensor, n_bins: int = 15, n_draws: int = 200, seed: int = 0) -> tuple[float, float]:
    """(mean, std) of the ECE a perfectly calibrated model with these top-label confidences shows on this many
    samples: each draw marks row i correct with probability conf_i (seeded), so an observed ECE within a couple of
    std of the mean is indistinguishable from perfect calibration at this N."""
    _check_matrix(probs, "probs")
    if not isinstance(n_draws, int) or n_draws < 2:
        raise ValueError(f"n_draws must be an int >= 2, got {n_draws!r}")
    conf, _ = _top_label(probs, probs.argmax(dim=1))  # validated confidences; the "labels" play no part
    _, idx = _bin_index(conf, n_bins)
    gen = torch.Generator().manual_seed(seed)
    draws = (torch.rand(n_draws, conf.numel(), generator=gen, dtype=torch.float64) < conf).double() - conf
    per_bin = torch.zeros(n_draws, n_bins, dtype=torch.float64).index_add_(1, idx, draws)
    values = per_bin.abs().sum(dim=1) / conf.numel()
    return float(values.mean()), float(values.std())


def adaptive_ece(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Equal-mass ECE: sort by top-label confidence, split into `n_bins` near-equal groups, Σ (n_b/N)·|gap_b|."""
    _check_bins(n_bins)
    conf, correct = _top_label(probs, labels)
    order = torch.argsort(conf, stable=True)
    total = torch.zeros((), dtype=torch.float64, device=conf.device)
    for group in torch.tensor_split(order, n_bins):
        if group.numel():  # fewer samples than bins leaves some groups empty
            total += (correct[group].sum() - conf[group].sum()).abs()
    return float(total / conf.numel())


def debiased_ece(probs: torch.Tensor, labels: torch.Tensor, *, n_bins: int = 15, squared: bool = False) -> float:
    """Debiased top-label ℓ2 calibration error over equal-mass bins (Kumar, Liang & Ma 2019, "Verified Uncertainty
    Calibration", NeurIPS; their `calibration` library's `get_calibration_error(..., debias=True)` with p = 2).

    Bins are those of `adaptive_ece` (sort by top-label confidence, `n_bins` near-equal groups). With bin weight
    w_b = n_b/N, bin accuracy ȳ_b and bin mean confidence p̄_b, the squared estimate is

        Σ_b w_b · [(ȳ_b − p̄_b)² − ȳ_b(1 − ȳ_b)/(n_b − 1)],

    i.e. the plug-in binned ℓ2² minus each bin's unbiased estimate of Var(ȳ_b), which removes the plug-in's upward
    bias of order n_bins/N. `squared=True` returns this unbiased estimate of the binned ℓ2² error itself; it can be
    slightly negative (around a perfectly calibrated model it centres on 0). The default returns the root value
    sqrt(max(estimate, 0)), in probability units like `ece`, as Kumar et al.'s library does. Every bin needs at
    least 2 samples, so N ≥ 2·n_bins.
    """
    _check_bins(n_bins)
    conf, correct = _top_label(probs, labels)
    n = conf.numel()
    if n < 2 * n_bins:
        raise ValueError(f"debiased_ece needs at least 2 samples per bin: N = {n} < 2 * n_bins = {2 * n_bins}")
    order = torch.argsort(conf, stable=True)
    # bin of each sorted position with torch.tensor_split's sizes (the first n % n_bins bins hold one extra), by
    # arithmetic: repeat_interleave's thread pool stalls for ms on a busy CPU
    q, r = divmod(n, n_bins)
    pos = torch.arange(n, device=conf.device)
    bin_of = torch.where(pos < r * (q + 1), pos // (q + 1), r + (pos - r * (q + 1)) // q)
    count = torch.full((n_bins,), float(q), dtype=torch.float64, device=conf.device)
    count[:r] += 1
    acc = torch.bincount(bin_of, weights=correct.index_select(0, order), minlength=n_bins) / count
    mean_conf = torch.bincount(bin_of, weights=conf.index_select(0, order), minlength=n_bins) / count
    est = float((count * ((acc - mean_conf) ** 2 - acc * (1 - acc) / (count - 1))).sum() / n)
    return est if squared else math.sqrt(max(est, 0.0))


def mce(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Maximum calibration error: max over non-empty equal-width bins (as in `ece`) of |acc_b − conf_b|."""
    conf, correct = _top_label(probs, labels)
    _, count, acc_sum, conf_sum = _equal_width(conf, correct, n_bins)
    full = count > 0
    return float(((acc_sum[full] - conf_sum[full]) / count[full]).abs().max())


def nll(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean negative log-likelihood of softmax(logits) at the labels (cross-entropy, natural log)."""
    _check_matrix(logits, "logits")
    labels = _check_labels(labels, logits.shape[0], logits.shape[1])
    return float(F.cross_entropy(logits.double(), labels.to(logits.device)))


def brier(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Multiclass Brier score: mean over samples of Σ_c (p_c − onehot_c)², in [0, 2]."""
    p, labels = _check_probs(probs, labels)
    onehot = F.one_hot(labels, p.shape[1]).double()
    return float(((p - onehot) ** 2).sum(dim=1).mean())


def reliability_bins(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> dict[str, list]:
    """Per-bin lists of the equal-width bins used by `ece`: `lower`, `upper`, `count`, `accuracy`, `confidence`.

    `accuracy` and `confidence` are None for empty bins (JSON-safe); `count` is an int per bin.
    """
    conf, correct = _top_label(probs, labels)
    edges, count, acc_sum, conf_sum = _equal_width(conf, correct, n_bins)
    counts = [int(c) for c in count.tolist()]
    acc = [a / c if c else None for a, c in zip(acc_sum.tolist(), counts)]
    mean_conf = [s / c if c else None for s, c in zip(conf_sum.tolist(), counts)]
    return {"lower": edges[:-1].tolist(), "upper": edges[1:].tolist(), "count": counts,
            "accuracy": acc, "confidence": mean_conf}


def ece_from_bins(bins: dict[str, list]) -> float:
    """ECE of a `reliability_bins` table (count-weighted |accuracy - confidence|)."""
    total = sum(bins["count"])
    if not total:
        return math.nan
    return sum(c * abs(a - f) for c, a, f in zip(bins["count"], bins["accuracy"], bins["confidence"]) if c) / total
