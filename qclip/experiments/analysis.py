"""The spectral analysis of a model variant against its full-precision reference, shared by `qclip ablate` and
`qclip spectrum`: singular values of every linear map (computed once for FP), relative weight error and damping
σ_variant/σ_fp, per-rank SQNR of image features in the FP feature basis (with band SQNR and Spearman ρ), and
rank-band accuracy and effective rank in a model's own feature basis. Writes nothing.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from qclip.quant.modules import effective_weight
from qclip.quant.surgery import attention_surgery_, list_linear_maps
from qclip.spectral.features import (
    band_accuracy,
    band_sqnr,
    feature_basis,
    per_rank_sqnr,
)
from qclip.spectral.weights import (
    damping_ratio,
    effective_rank,
    error_energy_split,
    layer_eigenvalues_batched,
    layer_spectra_batched,
    layer_statistics_batched,
    svdvals_batched,
)

__all__ = ["FpWeights", "weight_spectra", "weight_summary", "layer_interval", "sqnr_profile", "own_basis_accuracy",
           "feature_summary", "DAMPING_BINS"]

DAMPING_BINS = 20


class FpWeights:
    """The FP model's linear maps (after attention surgery on a copy) and their singular values, computed once.

    method "svd": σ from float32 SVDs (`svdvals_batched`), the ESDs for alpha from float64 Gram eigenvalues on first
    use; "gram": σ and ESDs from one float64 Gram eigendecomposition per map (`layer_spectra_batched`).
    """

    def __init__(self, model: torch.nn.Module, *, method: str = "svd"):
        model = attention_surgery_(copy.deepcopy(model))
        self.maps = {m.name: m for m in list_linear_maps(model)}
        self.weights = {n: model.get_submodule(n).weight.detach().float().cpu() for n in self.maps}
        self.method = method
        self._esds: list[torch.Tensor] | None = None
        if method == "gram":
            sigmas, self._esds = _spectra(list(self.weights.values()), method)
        else:
            sigmas = svdvals_batched(list(self.weights.values()), method=method)
        self.sigmas = dict(zip(self.weights, sigmas))

    @property
    def esds(self) -> list[torch.Tensor]:
        """WeightWatcher-style ESDs (`layer_eigenvalues`) of the maps, in `maps` order."""
        if self._esds is None:
            self._esds = layer_eigenvalues_batched(list(self.weights.values()))
        return self._esds


def _spectra(weights: list[torch.Tensor], method: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """σ and ESDs of many maps: one float64 Gram decomposition each ("gram"), or float32 SVD + float64 ESD."""
    if method == "gram":
        pairs = layer_spectra_batched(weights)
        return [p[0] for p in pairs], [p[1] for p in pairs]
    return svdvals_batched(weights, method=method), layer_eigenvalues_batched(weights)


@torch.no_grad()
def weight_spectra(fp: FpWeights, other: torch.nn.Module | None, *,
                   top_fraction: float = 0.1) -> tuple[list[dict], list[dict]]:
    """Per-layer statistics and per-index σ rows for every linear map (FP vs `other`, surgered in place, when
    given)."""
    w_q: list = [None] * len(fp.maps)
    s_q: list = [None] * len(fp.maps)
    e_q: list = [None] * len(fp.maps)
    e_fp = fp.esds  # float64, conv slices pooled: WeightWatcher's alpha
    if other is not None:
        attention_surgery_(other)
        w_q = [effective_weight(other.get_submodule(name)) for name in fp.maps]
        s_q, e_q = _spectra(w_q, fp.method)
    layers, sigmas = [], []
    fp_stats = layer_statistics_batched(list(zip(fp.sigmas.values(), e_fp)))
    q_stats = layer_statistics_batched(list(zip(s_q, e_q))) if other is not None else [None] * len(fp.maps)
    for (name, m), wq, sq, st_fp, st_q in zip(fp.maps.items(), w_q, s_q, fp_stats, q_stats):
        wf, sf = fp.weights[name], fp.sigmas[name]
        row = {"layer": name, "tower": m.tower, "role": m.role, "shape": "x".join(map(str, m.shape))}
        row.update({f"fp_{k}": v for k, v in st_fp.items()})
        if sq is not None:
            row.update({f"q_{k}": v for k, v in st_q.items()})
            k = max(1, int(top_fraction * sf.numel()))
            row.update({f"err_{k2}": v for k2, v in error_energy_split(wf, wq.float().cpu(), k).items()})
            ratio = damping_ratio(sf, sq)
            row["mean_damping_top10pct"] = float(ratio[:k].mean())
            row["mean_damping_bottom50pct"] = float(ratio[sf.numel() // 2:].mean())
        layers.append(row)
        for i in range(sf.numel()):
            r = {"layer": name, "tower": m.tower, "role": m.role, "index": i, "rank_fraction": i / sf.numel(),
                 "sigma_fp": float(sf[i])}
            if sq is not None:
                r["sigma_q"] = float(sq[i])
                r["ratio"] = float(sq[i] / sf[i]) if sf[i] > 0 else float("nan")
            sigmas.append(r)
    return layers, sigmas


@torch.no_grad()
def weight_summary(fp: FpWeights, model: torch.nn.Module, *, bins: int = DAMPING_BINS) -> dict:
    """Relative weight error, binned σ_variant/σ_fp (against rank fraction) over the maps the variant changed, and
    the per-map mean tail ratio (bottom 50% of ranks) as a mean with its interval over maps."""
    changed, num, den = {}, 0.0, 0.0
    for name, w in fp.weights.items():
        wv = effective_weight(model.get_submodule(name)).float().cpu()
        if wv.shape != w.shape:
            continue
        err = float((wv - w).double().norm() ** 2)
        if err > 0:
            changed[name] = wv
            num, den = num + err, den + float(w.double().norm() ** 2)
    if not changed:
        return {"weight_rel_error": 0.0, "weight_maps": 0, "damping": None, "tail_damping": None}
    sums, counts, tails = [0.0] * bins, [0] * bins, []
    for name, sv in zip(changed, svdvals_batched(list(changed.values()))):
        sf = fp.sigmas[name]
        r = sf.numel()
        tail = []
        for i in range(r):
            if sf[i] > 0:
                b = min(bins - 1, int(bins * i / r))
                sums[b] += float(sv[i] / sf[i])
                counts[b] += 1
                if i / r >= 0.5:
                    tail.append(float(sv[i] / sf[i]))
        if tail:
            tails.append(sum(tail) / len(tail))
    ratio = [s / c if c else None for s, c in zip(sums, counts)]
    return {"weight_rel_error": math.sqrt(num / den), "weight_maps": len(changed),
            "damping": {"rank_fraction": [(b + 0.5) / bins for b in range(bins)], "ratio": ratio},
            "tail_damping": layer_interval(tails)}


def layer_interval(values: list[float], level: float = 0.95) -> dict | None:
    """{"mean", "low", "high", "layers"}: the mean of per-map values with its Student-t interval over the maps
    (low/high None with a single map; None without maps)."""
    from scipy.stats import t

    if not values:
        return None
    n = len(values)
    m = sum(values) / n
    if n < 2:
        return {"mean": m, "low": None, "high": None, "layers": n}
    half = float(t.ppf(0.5 + level / 2, n - 1)) * math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1) / n)
    return {"mean": m, "low": m - half, "high": m + half, "layers": n}


@torch.no_grad()
def sqnr_profile(fp_feats: torch.Tensor, feats: torch.Tensor, bands: tuple) -> dict:
    """Per-rank SQNR of `feats` against `fp_feats` in the FP feature basis: the raw per-rank signal/error/SQNR
    tensors, band SQNR (dB) and the Spearman ρ of SQNR against rank (NaN with fewer than 3 finite ranks)."""
    from scipy.stats import spearmanr

    r = per_rank_sqnr(fp_feats, feats, feature_basis(fp_feats))
    sq = r["sqnr_db"]
    finite = torch.isfinite(sq)
    rho = math.nan
    if finite.sum() > 2:
        rho = float(spearmanr(torch.arange(sq.numel())[finite].numpy(), sq[finite].numpy()).statistic)
    return {"signal": r["signal"], "error": r["error"], "sqnr_db": sq,
            "band_sqnr_db": band_sqnr(r["signal"], r["error"], bands), "rho": rho}


@torch.no_grad()
def own_basis_accuracy(feats: torch.Tensor, labels: torch.Tensor, classifier: torch.Tensor,
                       bands: tuple) -> tuple[dict[str, float], float]:
    """Rank-band accuracy of `feats` in their own feature basis (plus "all": plain accuracy), and their effective
    rank."""
    own = feature_basis(feats)
    acc = band_accuracy(feats, labels, classifier, own, bands)
    acc["all"] = float(((F.normalize(feats, dim=-1) @ classifier).argmax(-1) == labels).float().mean())
    return acc, effective_rank(own.variances.clamp_min(0).sqrt())


def _finite_or_none(v: float) -> float | None:
    return v if math.isfinite(v) else None


@torch.no_grad()
def feature_summary(fp_feats: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor, classifier: torch.Tensor,
                    bands: tuple, *, reference: bool) -> dict:
    """Per-rank SQNR in the FP feature basis (non-reference variants), band accuracy in the variant's own basis,
    as a JSON-ready dict (non-finite values become None)."""
    acc, erank = own_basis_accuracy(feats, labels, classifier, bands)
    out = {"band_accuracy": acc, "feature_effective_rank": erank,
           "sqnr_db": None, "band_sqnr_db": None, "sqnr_spearman_rho": None}
    if not reference:
        prof = sqnr_profile(fp_feats, feats, bands)
        out["sqnr_db"] = [_finite_or_none(v) for v in prof["sqnr_db"].tolist()]
        out["band_sqnr_db"] = {k: _finite_or_none(v) for k, v in prof["band_sqnr_db"].items()}
        out["sqnr_spearman_rho"] = _finite_or_none(prof["rho"])
    return out
