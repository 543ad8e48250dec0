"""Weight spectra: singular values of every linear map (batched by shape), rank/entropy/power-law statistics,
the damping of singular values under quantization or truncation, and where the quantization error lives.

Definitions (σ sorted descending, p_i = σ_i² / Σσ²):
- stable rank  = ‖W‖²_F / ‖W‖²_2 = Σσ² / σ_max²;
- effective rank = exp(H(p)) (Roy & Vetterli's entropy rank, on the energy distribution p = σ²/Σσ²);
- spectral entropy = H(p) / log(r), in [0, 1];
- power-law alpha: Clauset–Shalizi–Newman continuous MLE α = 1 + n / Σ ln(λ_i / λ_min) on the eigenvalues
  λ = σ² of WᵀW (the empirical spectral density WeightWatcher fits), with λ_min chosen by minimising the
  Kolmogorov–Smirnov distance between the empirical and fitted tails.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import torch

__all__ = ["as_matrix", "svdvals_batched", "stable_rank", "effective_rank", "spectral_entropy", "powerlaw_alpha",
           "damping_ratio", "error_energy_split", "layer_statistics"]


def as_matrix(weight: torch.Tensor) -> torch.Tensor:
    """A weight as a matrix [out, in·k·k] (convolutions flattened per output channel)."""
    return weight.detach().reshape(weight.shape[0], -1)


@torch.no_grad()
def svdvals_batched(weights: list[torch.Tensor], *, dtype: torch.dtype = torch.float32,
                    method: str = "svd") -> list[torch.Tensor]:
    """Singular values (descending) of many matrices, stacked by shape into one batched LAPACK call each.

    method "svd": `torch.linalg.svdvals` (backward-stable; non-square matrices are first reduced to their square
    R factor by a QR decomposition, ~8x faster for 3072x768 on 2 cores). method "gram": eigenvalues of the smaller Gram
    matrix, σ = sqrt(λ); faster for wide/tall matrices but squares the condition number, so singular values
    below about sqrt(eps)·σ_max (≈ 3e-4·σ_max in float32, 1.5e-8 in float64) lose their relative accuracy.
    """
    if method not in ("svd", "gram"):
        raise ValueError(f"method must be 'svd' or 'gram', got {method!r}")
    mats = [as_matrix(w).to(dtype) for w in weights]
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, m in enumerate(mats):
        groups[tuple(m.shape)].append(i)
    # Thread policy: LAPACK's SVD scales poorly across threads, so split each shape's stack over `workers`
    # Python threads with one intra-op thread each (about 1.25x faster than one 2-thread call on 2 cores).
    workers = max(1, min(2, os.cpu_count() or 1))
    jobs = []
    for (rows, cols), idx in groups.items():
        for part in (idx[w::workers] for w in range(workers)):
            if part:
                jobs.append((rows, cols, part))

    def run(job):
        rows, cols, idx = job
        stack = torch.stack([mats[i] for i in idx])
        if method == "svd":
            if rows != cols:  # QR first: the R factor has the same singular values, and is square
                tall = stack if rows > cols else stack.mT
                stack = torch.linalg.qr(tall, mode="r").R
            return idx, torch.linalg.svdvals(stack)
        gram = stack @ stack.mT if rows <= cols else stack.mT @ stack
        return idx, torch.linalg.eigvalsh(gram).clamp(min=0).sqrt().flip(-1)

    out: list[torch.Tensor | None] = [None] * len(mats)
    threads = torch.get_num_threads()
    try:
        if workers > 1 and len(jobs) > 1:
            torch.set_num_threads(1)
            with ThreadPoolExecutor(workers) as pool:
                results = list(pool.map(run, jobs))
        else:
            results = [run(j) for j in jobs]
    finally:
        torch.set_num_threads(threads)
    for idx, s in results:
        for j, i in enumerate(idx):
            out[i] = s[j]
    return out


def _energy(s: torch.Tensor) -> torch.Tensor:
    e = s.double() ** 2
    return e / e.sum().clamp(min=1e-300)


def stable_rank(s: torch.Tensor) -> float:
    """‖W‖²_F / ‖W‖²_2 from singular values."""
    s = s.double()
    return float((s ** 2).sum() / (s.max() ** 2).clamp(min=1e-300))


def effective_rank(s: torch.Tensor) -> float:
    """exp of the Shannon entropy of p = σ² / Σσ²."""
    p = _energy(s)
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def spectral_entropy(s: torch.Tensor) -> float:
    """Shannon entropy of p = σ² / Σσ², normalised by log(len(σ)) to [0, 1]."""
    if s.numel() < 2:
        return 0.0
    return math.log(effective_rank(s)) / math.log(s.numel())


def powerlaw_alpha(s: torch.Tensor, *, min_tail: int = 10, eigenvalues: bool = False) -> dict[str, float]:
    """Power-law exponent of the ESD tail (Clauset MLE, KS-chosen λ_min), like WeightWatcher's `alpha`.

    `s` are singular values (λ = σ²) unless `eigenvalues=True`. Returns alpha, xmin, the KS distance and the
    tail size; alpha is NaN when fewer than `min_tail` positive eigenvalues exist.
    """
    lam = (s.double() if eigenvalues else s.double() ** 2)
    lam = torch.sort(lam[lam > 0]).values
    n_all = lam.numel()
    nan = {"alpha": float("nan"), "xmin": float("nan"), "ks": float("nan"), "n_tail": 0}
    if n_all < min_tail:
        return nan
    logs = lam.log()
    suffix = torch.flip(torch.cumsum(torch.flip(logs, [0]), 0), [0])  # Σ_{j≥i} log λ_j
    cand = torch.arange(0, n_all - min_tail + 1)
    n = (n_all - cand).double()
    denom = suffix[cand] - n * logs[cand]
    alpha = 1.0 + n / denom.clamp(min=1e-300)
    j = torch.arange(n_all)
    best_ks = torch.full((cand.numel(),), float("inf"), dtype=torch.float64)
    for start in range(0, cand.numel(), 256):  # vectorised over candidate xmin, in chunks to bound memory
        c = cand[start:start + 256]
        a = alpha[start:start + 256, None]
        ratio = (lam[None, :] / lam[c, None]).clamp(min=1.0)
        fit = 1.0 - ratio ** (1.0 - a)
        pos = (j[None, :] - c[:, None]).double()
        nn_ = n[start:start + 256, None]
        dev = torch.maximum((fit - pos / nn_).abs(), ((pos + 1) / nn_ - fit).abs())
        dev = torch.where(pos >= 0, dev, torch.zeros_like(dev))
        best_ks[start:start + 256] = dev.amax(1)
    best_ks = torch.where(denom > 0, best_ks, torch.full_like(best_ks, float("inf")))
    i = int(torch.argmin(best_ks))
    if not torch.isfinite(best_ks[i]):
        return nan
    return {"alpha": float(alpha[i]), "xmin": float(lam[cand[i]]), "ks": float(best_ks[i]), "n_tail": int(n[i])}


def damping_ratio(s_ref: torch.Tensor, s_other: torch.Tensor) -> torch.Tensor:
    """σ_other,i / σ_ref,i per index (below 1: damped); 0/0 gives 1, x/0 gives inf."""
    a, b = s_ref.double(), s_other.double()
    ratio = b / a
    return torch.where((a == 0) & (b == 0), torch.ones_like(ratio), ratio)


@torch.no_grad()
def error_energy_split(weight: torch.Tensor, other: torch.Tensor, k: int) -> dict[str, float]:
    """Energy of E = other − weight in the top-k left singular subspace of `weight` vs the rest.

    Returns absolute energies, the top share ‖U_kᵀE‖²/‖E‖², and k/m — the share a direction-blind (white)
    error would put there — so `top_share / uniform_share` below 1 means the error avoids the top subspace.
    """
    w, e = as_matrix(weight).double(), (as_matrix(other) - as_matrix(weight)).double()
    k = max(0, min(k, min(w.shape)))
    u = torch.linalg.svd(w, full_matrices=False).U[:, :k]
    total = float((e ** 2).sum())
    top = float(((u.T @ e) ** 2).sum())
    return {"error_energy": total, "error_top": top, "error_rest": total - top,
            "top_share": top / total if total > 0 else float("nan"), "uniform_share": k / w.shape[0]}


def layer_statistics(s: torch.Tensor) -> dict[str, float]:
    """σ_max, Frobenius energy, stable rank, effective rank, spectral entropy and power-law alpha of one layer."""
    stats = {"sigma_max": float(s.max()), "frobenius2": float((s.double() ** 2).sum()), "rank": int(s.numel()),
             "stable_rank": stable_rank(s), "effective_rank": effective_rank(s), "spectral_entropy": spectral_entropy(s)}
    stats.update({f"alpha_{k}" if k != "alpha" else "alpha": v for k, v in powerlaw_alpha(s).items()})
    return stats
