"""Weight spectra: singular values of every linear map (batched by shape), rank/entropy/power-law statistics,
the damping of singular values under quantization or truncation, and where the quantization error lives.

Definitions (σ sorted descending, p_i = σ_i² / Σσ²):
- stable rank  = ‖W‖²_F / ‖W‖²_2 = Σσ² / σ_max²;
- effective rank = exp(H(p)) (Roy & Vetterli's entropy rank, on the energy distribution p = σ²/Σσ²);
- spectral entropy = H(p) / log(r), in [0, 1];
- power-law alpha (`alpha`, `powerlaw_alpha_ww`): WeightWatcher 0.7.7's `alpha` of `WeightWatcher.analyze()` with
  its defaults (Martin & Mahoney, "Implicit self-regularization in deep neural networks", JMLR 2021; "Predicting
  trends in the quality of state-of-the-art neural networks without access to training or testing data",
  Nat. Commun. 2021). On the empirical spectral density (ESD) λ = σ² of WᵀW — for a Conv2d [out, in, kh, kw]
  the pooled σ² of its kh·kw per-position [out, in] matrices, each scaled by 1/√2 (`layer_eigenvalues`) —
  λ ≤ 1e-5 is dropped, and for every candidate xmin = λ_(i) (all sorted eigenvalues but the largest) the
  continuous MLE α_i = 1 + n_i / Σ_{λ≥xmin} ln(λ/xmin) is scored by the one-sided Kolmogorov–Smirnov distance
  D_i = max_k |1 − (λ_(i+k)/xmin)^(1−α_i) − k/n_i|; alpha is α at the first minimal D. Fewer than 20 kept
  eigenvalues switch to WeightWatcher's small-N rule (bias-corrected α = 1 + (n−1)/Σ ln(λ/xmin), tails ≥ 8,
  minimal D); fewer than 8 eigenvalues in all: no alpha (WeightWatcher skips the layer).
- `alpha_clauset2` (`powerlaw_alpha`): the Clauset–Shalizi–Newman (SIAM Rev. 2009) continuous MLE on the same
  λ with xmin chosen by the two-sided KS distance and a minimum tail of 10 eigenvalues. It is not
  WeightWatcher's number: the different xmin rule moves alpha a little on most layers and by tens on some.
WeightWatcher's alpha is reproduced to rounding only from float64 eigenvalues: float32 singular values move small
eigenvalues enough to change the chosen xmin on some layers. They come from the float64 Gram matrix (not
WeightWatcher's float64 SVD: about 2x cheaper per 768x768 matrix, and within ~n·eps64·σ_max² of it), and
`layer_spectra_batched` takes a linear map's σ from the same decomposition (see docs/performance.md).
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import torch

__all__ = ["as_matrix", "svdvals_batched", "layer_eigenvalues", "layer_eigenvalues_batched",
           "layer_spectra_batched", "stable_rank", "effective_rank", "spectral_entropy", "powerlaw_alpha", "powerlaw_alpha_ww", "damping_ratio",
           "error_energy_split", "layer_statistics", "layer_statistics_batched"]

WW_EVALS_THRESH = 1e-5  # WeightWatcher's EVALS_THRESH: eigenvalues at or below it are not fitted
WW_MIN_EVALS = 8  # WeightWatcher's DEFAULT_MIN_EVALS: layers with fewer eigenvalues are skipped
WW_SMALL_N = 20  # WeightWatcher's SMALL_N_CUTOFF: fewer kept eigenvalues use the small-N fit
WW_SMALL_N_MIN_TAIL = 8  # the small-N fit's minimum tail (k_min)
WW_CONV2D_SCALE = 0.5  # conv2d_norm=True scales each Conv2d slice by sqrt(1/2), i.e. its eigenvalues by 1/2


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

    def run(stack: torch.Tensor) -> torch.Tensor:
        rows, cols = stack.shape[-2:]
        if method == "svd":
            if rows != cols:  # QR first: the R factor has the same singular values, and is square
                tall = stack if rows > cols else stack.mT
                stack = torch.linalg.qr(tall, mode="r").R
            return torch.linalg.svdvals(stack)
        return _gram_eigvalsh(stack).clamp(min=0).sqrt().flip(-1)

    return _by_shape(mats, run)


def _gram_eigvalsh(stack: torch.Tensor) -> torch.Tensor:
    """Ascending eigenvalues of the smaller Gram matrix of each matrix in a [b, rows, cols] stack."""
    rows, cols = stack.shape[-2:]
    return torch.linalg.eigvalsh(stack @ stack.mT if rows <= cols else stack.mT @ stack)


def _by_shape(mats: list[torch.Tensor], fn) -> list[torch.Tensor]:
    """fn applied to the matrices stacked by shape, each shape's stack split over the single-threaded workers."""
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, m in enumerate(mats):
        groups[tuple(m.shape)].append(i)
    workers = _workers()
    jobs = [part for idx in groups.values() for part in (idx[w::workers] for w in range(workers)) if part]
    out: list[torch.Tensor | None] = [None] * len(mats)
    for idx, s in _single_threaded_map(lambda idx: (idx, fn(torch.stack([mats[i] for i in idx]))), jobs):
        for j, i in enumerate(idx):
            out[i] = s[j]
    return out


def _workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def _single_threaded_map(fn, items: list) -> list:
    """fn over items on `_workers()` Python threads with one intra-op thread each, results in order.

    Thread policy: LAPACK's SVD and eigensolvers scale poorly across threads (a 2-worker split is about 1.25x faster
    than one 2-thread call on 2 cores), and the statistics' small elementwise ops lose 3-4x to OpenMP
    synchronisation on a busy machine (measured on 2 shared cores: 29 vs 103 ms per 768-eigenvalue layer)."""
    workers = _workers()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        if workers > 1 and len(items) > 1:
            with ThreadPoolExecutor(workers) as pool:
                return list(pool.map(fn, items))
        return [fn(item) for item in items]
    finally:
        torch.set_num_threads(threads)


def _check_layer_weight(weight: torch.Tensor) -> None:
    if weight.dim() not in (2, 4):
        raise ValueError(f"layer_eigenvalues expects a linear weight [out, in] or a Conv2d weight [out, in, kh, kw], "
                         f"got shape {tuple(weight.shape)}")
    if weight.numel() == 0:
        raise ValueError(f"layer_eigenvalues got an empty weight of shape {tuple(weight.shape)}")
    if not bool(torch.isfinite(weight.detach()).all()):
        raise ValueError(f"layer_eigenvalues got a weight of shape {tuple(weight.shape)} with non-finite entries")


def _eig_inputs(weights: list[torch.Tensor], flattened: bool) -> tuple[list[torch.Tensor], list[tuple]]:
    """The float64 matrices whose Gram eigenvalues make each layer's ESD (and, with `flattened`, its σ)."""
    mats: list[torch.Tensor] = []
    spans: list[tuple] = []
    for w in weights:
        _check_layer_weight(w)
        w = w.detach().float().double()  # WeightWatcher reads weights as float32, then decomposes them in float64
        if w.dim() == 2:
            spans.append((len(mats), len(mats) + 1, len(mats)))
            mats.append(w)
        else:
            out_ch, in_ch, kh, kw = w.shape
            flat = len(mats) + kh * kw if flattened else None
            spans.append((len(mats), len(mats) + kh * kw, flat))
            mats.extend(w.permute(2, 3, 0, 1).reshape(kh * kw, out_ch, in_ch).unbind(0))  # W[:, :, i, j]
            if flattened:
                mats.append(as_matrix(w))
    return mats, spans


def _esd(lams: list[torch.Tensor], lo: int, hi: int, conv: bool, conv2d_norm: bool) -> torch.Tensor:
    lam = torch.cat(lams[lo:hi])
    if conv and conv2d_norm:
        lam = lam * WW_CONV2D_SCALE
    return torch.sort(lam, descending=True).values


@torch.no_grad()
def layer_spectra_batched(weights: list[torch.Tensor], *,
                          conv2d_norm: bool = True) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(σ, ESD) of many layers from one float64 Gram eigendecomposition per matrix, batched by shape.

    σ: the singular values (float64, descending) of the layer as a matrix [out, in·k·k], as `svdvals_batched`
    gives them; ESD: `layer_eigenvalues`. For a linear map both come from the same eigenvalues (ESD = σ²), so the
    rank statistics and WeightWatcher's alpha cost one decomposition. Float64 Gram eigenvalues carry an absolute
    error of about eps64·σ_max², so σ keeps its relative accuracy down to ~1e-8·σ_max (float32 SVD: ~1e-7·σ_max/σ).
    """
    mats, spans = _eig_inputs(weights, flattened=True)
    lams = [lam.clamp(min=0).flip(-1) for lam in _by_shape(mats, _gram_eigvalsh)]
    out = []
    for lo, hi, flat in spans:
        conv = flat != lo
        sigma = lams[flat].sqrt()
        out.append((sigma, _esd(lams, lo, hi, conv, conv2d_norm) if conv else lams[flat]))
    return out


@torch.no_grad()
def layer_eigenvalues_batched(weights: list[torch.Tensor], *, conv2d_norm: bool = True) -> list[torch.Tensor]:
    """`layer_eigenvalues` of many layers: float64 Gram eigenvalues, batched by shape (see `layer_eigenvalues`)."""
    mats, spans = _eig_inputs(weights, flattened=False)
    lams = [lam.clamp(min=0) for lam in _by_shape(mats, _gram_eigvalsh)]
    return [_esd(lams, lo, hi, weights[k].dim() == 4, conv2d_norm)
            for k, (lo, hi, _) in enumerate(spans)]


def layer_eigenvalues(weight: torch.Tensor, *, conv2d_norm: bool = True) -> torch.Tensor:
    """A layer's ESD the WeightWatcher way: eigenvalues λ = σ² (float64, descending), Conv2d slices pooled.

    Linear / embedding weight [out, in]: the min(out, in) eigenvalues of WᵀW, unnormalised. Conv2d weight
    [out, in, kh, kw]: the min(out, in) eigenvalues of each kernel position's [out, in] matrix W[:, :, i, j], pooled
    (kh·kw·min(out, in) values) and, with `conv2d_norm` (WeightWatcher's default), halved — WeightWatcher 0.7.7
    scales every slice by sqrt(1/2). As in WeightWatcher the weight is rounded to float32 and then decomposed in
    float64 (float32 singular values shift small eigenvalues enough to move the fitted xmin on some layers); the
    eigenvalues come from the float64 Gram matrix WᵀW (or WWᵀ, the smaller), about 2x cheaper than a float64 SVD
    per 768x768 matrix, within eps64·σ_max² of it in absolute terms (which leaves alpha within 1e-9 of WeightWatcher's). Feed
    the result to `powerlaw_alpha_ww(..., eigenvalues=True)` or `layer_statistics(s, esd=...)`.
    """
    return layer_eigenvalues_batched([weight], conv2d_norm=conv2d_norm)[0]


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
    """Power-law exponent of the ESD tail by Clauset, Shalizi & Newman (2009): two-sided-KS xmin, ≥ `min_tail` points.

    This is `alpha_clauset2` in `layer_statistics`, not WeightWatcher's `alpha` (see `powerlaw_alpha_ww`): the
    KS distance here is two-sided (max of |F − k/n| and |F − (k+1)/n|) and tails shorter than `min_tail` are never
    chosen. `s` are singular values (λ = σ²) unless `eigenvalues=True`. Returns alpha, xmin, the KS distance and
    the tail size; alpha is NaN when fewer than `min_tail` positive eigenvalues exist.
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


def _ww_tail_fits(x: torch.Tensor, cand: torch.Tensor, *,
                  bias_corrected: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For ascending eigenvalues x and ascending candidate xmin indices: tail MLE α, one-sided KS D, Σ ln(λ/xmin)."""
    n_all = x.numel()
    logs = x.log()
    alphas = torch.empty(cand.numel(), dtype=torch.float64)
    ds = torch.empty(cand.numel(), dtype=torch.float64)
    sums = torch.empty(cand.numel(), dtype=torch.float64)
    zero = torch.zeros((), dtype=torch.float64)
    rows = max(1, (1 << 18) // n_all)  # candidates per chunk: [rows, n] temporaries of about 2 MB
    for start in range(0, cand.numel(), rows):
        c = cand[start:start + rows]
        first = int(c[0])  # columns left of the chunk's first candidate are in no tail
        pos = torch.arange(first, n_all)[None, :] - c[:, None]  # rank of λ_j in the tail from λ_c (< 0: outside)
        tail = pos >= 0
        log_ratio = torch.where(tail, logs[None, first:] - logs[c, None], zero)  # ln(λ_j / xmin) ≥ 0 in the tail
        s = log_ratio.sum(1)
        n = (n_all - c).double()
        a = 1.0 + (n - 1.0 if bias_corrected else n) / s  # s = 0 (a flat tail) gives inf, as in WeightWatcher
        expo = (1.0 - a)[:, None] * log_ratio
        expo = torch.where(log_ratio == 0, zero, expo)  # (λ/xmin)^(1−α) = 1 at λ = xmin, also for α = inf
        fit = 1.0 - expo.exp()  # the fitted power-law CDF at each tail point
        dev = torch.where(tail, (fit - pos.double() / n[:, None]).abs(), zero)
        alphas[start:start + rows] = a
        ds[start:start + rows] = dev.amax(1)
        sums[start:start + rows] = s
    return alphas, ds, sums


def powerlaw_alpha_ww(s: torch.Tensor, *, eigenvalues: bool = False, min_evals: int = WW_MIN_EVALS,
                      thresh: float = WW_EVALS_THRESH) -> dict[str, float]:
    """WeightWatcher 0.7.7's power-law `alpha` (default `analyze()`: pl_package "ww", no fix_fingers, no xmax).

    Definition (Martin & Mahoney 2021; WeightWatcher's WWFit): drop λ ≤ `thresh`; sort the n kept λ ascending;
    for every candidate xmin = λ_(i), i < n − 1, fit α_i = 1 + n_i / Σ_{k<n_i} ln(λ_(i+k) / xmin) on the n_i = n − i
    tail and score it by the one-sided KS distance D_i = max_k |1 − (λ_(i+k)/xmin)^(1−α_i) − k/n_i|; alpha is α_i
    at the first minimal D_i (a flat tail gives α = inf). With n < 20 the small-N rule applies instead: the
    bias-corrected α_i = 1 + (n_i − 1) / Σ ln(λ/xmin) over tails n_i ≥ 8 with Σ ln > 1e-12, again at the first
    minimal D_i (WWFit computes a D − 0.868/√n objective there but its constructor re-selects by D); with no such
    tail the whole spectrum is the tail, and a flat spectrum gets alpha = 0 (WeightWatcher's unset value). `s` are
    singular values (λ = σ²) unless `eigenvalues=True`; for WeightWatcher's numbers on a convolution pass
    `layer_eigenvalues(weight)`. Returns alpha, xmin, the KS distance D and the tail size (λ ≥ xmin); alpha is NaN
    where WeightWatcher skips the layer (fewer than `min_evals` eigenvalues in all) or its fit fails (fewer than
    two eigenvalues above `thresh`; it reports -1 there). Its other default filters (layers with more than 15000
    eigenvalues or a dimension above 50000 are skipped) are not applied: such layers still get an alpha.
    """
    if s.dim() != 1:
        what = "eigenvalues" if eigenvalues else "singular values"
        raise ValueError(f"powerlaw_alpha_ww expects a 1-D tensor of {what}, got shape {tuple(s.shape)}")
    if min_evals < 0 or thresh < 0:
        raise ValueError(f"min_evals and thresh must be non-negative, got min_evals={min_evals}, thresh={thresh}")
    lam = s.detach().double() if eigenvalues else s.detach().double() ** 2
    if bool(torch.isnan(lam).any()):
        raise ValueError("powerlaw_alpha_ww got NaN eigenvalues")
    nan = {"alpha": float("nan"), "xmin": float("nan"), "ks": float("nan"), "n_tail": 0}
    if lam.numel() < max(min_evals, 1):
        return nan
    x = torch.sort(lam[lam > thresh]).values
    n_all = x.numel()
    if n_all == 0 or not bool(torch.isfinite(x).all()):
        return nan
    if n_all >= WW_SMALL_N:
        alphas, ds, _ = _ww_tail_fits(x, torch.arange(n_all - 1), bias_corrected=False)
        ds = torch.where(alphas > 1, ds, torch.ones_like(ds))
        i = int(torch.argmin(ds))  # first minimum, as numpy's argmin
        alpha, d = float(alphas[i]), float(ds[i])
    else:  # WWFit's small-N path; its constructor then re-selects by the smallest D (the J objective is unused)
        if n_all < 2:
            return nan  # WeightWatcher's fit raises on an empty candidate list and reports the layer as failed
        cand = torch.arange(n_all - 1)
        alphas, ds, sums = _ww_tail_fits(x, cand, bias_corrected=True)
        valid = ((n_all - cand) >= WW_SMALL_N_MIN_TAIL) & (sums > 1e-12) & (alphas > 1)
        if bool(valid.any()):
            ds = torch.where(valid, ds, torch.ones_like(ds))
            i = int(torch.argmin(ds))
            alpha, d = float(alphas[i]), float(ds[i])
        elif float(sums[0]) > 1e-12:  # no valid tail: the whole spectrum is the tail
            i, alpha, d = 0, float(alphas[0]), float(ds[0])
        else:  # a flat spectrum: WeightWatcher reports its unset alpha, 0
            i, alpha, d = 0, 0.0, 1.0
    xmin = float(x[i])
    return {"alpha": alpha, "xmin": xmin, "ks": d, "n_tail": int((x >= xmin).sum())}


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


def layer_statistics_batched(spectra: list[tuple[torch.Tensor, torch.Tensor | None]]) -> list[dict[str, float]]:
    """`layer_statistics(s, esd=esd)` of many (σ, ESD) pairs, split over single-threaded workers."""
    return _single_threaded_map(lambda pair: layer_statistics(pair[0], esd=pair[1]), list(spectra))


def layer_statistics(s: torch.Tensor, *, esd: torch.Tensor | None = None) -> dict[str, float]:
    """σ_max, Frobenius energy, stable rank, effective rank, spectral entropy and power-law alphas of one layer.

    `s` are the singular values of the layer's matrix (`svdvals_batched`: convolutions flattened to [out, in·k·k]),
    used for the rank statistics. The alphas are fitted on `esd`, the eigenvalues the WeightWatcher way
    (`layer_eigenvalues(weight)`), when given, else on λ = s² — the same thing for a linear layer, not for a
    convolution; WeightWatcher's number exactly needs float64 eigenvalues (float64 `s`, or `esd`). `alpha*` keys: WeightWatcher's alpha (`powerlaw_alpha_ww`); `alpha_clauset2*` keys: the
    Clauset–Shalizi–Newman fit with two-sided KS and a 10-eigenvalue minimum tail (`powerlaw_alpha`).
    """
    if esd is not None and esd.dim() != 1:
        raise ValueError(f"esd must be a 1-D tensor of eigenvalues, got shape {tuple(esd.shape)}")
    stats = {"sigma_max": float(s.max()), "frobenius2": float((s.double() ** 2).sum()), "rank": int(s.numel()),
             "stable_rank": stable_rank(s), "effective_rank": effective_rank(s), "spectral_entropy": spectral_entropy(s)}
    lam, is_eig = (s, False) if esd is None else (esd, True)
    stats.update({"alpha" if k == "alpha" else f"alpha_{k}": v
                  for k, v in powerlaw_alpha_ww(lam, eigenvalues=is_eig).items()})
    stats.update({"alpha_clauset2" if k == "alpha" else f"alpha_clauset2_{k}": v
                  for k, v in powerlaw_alpha(lam, eigenvalues=is_eig).items()})
    return stats
