"""Feature spectra (the paper's Analyses A and B): per-rank SQNR of quantized features in the full-precision
feature basis, rank-band sums, zero-shot accuracy of features restricted to rank bands, truncation controls.

The basis is the complete eigenbasis V of the covariance of the centred features (descending variance), so
restricting to the band [0, D) returns the features themselves. Per rank i:
signal_i = mean_n ((f_n − μ)·v_i)², error_i = mean_n ((f_q,n − f_n)·v_i)², SQNR_i = 10·log10(signal_i / error_i).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["FeatureBasis", "feature_basis", "per_rank_sqnr", "band_sums", "band_sqnr", "restrict_to_band",
           "band_name", "band_accuracy", "truncate_features", "parse_bands", "DEFAULT_BANDS"]

#: Rank bands of the paper's Analysis B: [0, 8), [8, 64), [64, D).
DEFAULT_BANDS: tuple[tuple[int, int | None], ...] = ((0, 8), (8, 64), (64, None))


@dataclass(frozen=True)
class FeatureBasis:
    """Mean μ [D], orthonormal basis V [D, D] (columns by descending variance) and variances [D]."""

    mean: torch.Tensor
    vectors: torch.Tensor
    variances: torch.Tensor

    @property
    def dim(self) -> int:
        """Feature dimension D."""
        return self.vectors.shape[0]


@torch.no_grad()
def feature_basis(features: torch.Tensor) -> FeatureBasis:
    """Centre the features and return their covariance eigenbasis (float64)."""
    f = features.double()
    mean = f.mean(0)
    centred = f - mean
    cov = centred.T @ centred / f.shape[0]
    evals, evecs = torch.linalg.eigh(cov)
    order = torch.argsort(evals, descending=True)
    return FeatureBasis(mean, evecs[:, order], evals[order].clamp(min=0))


def parse_bands(text: str) -> tuple[tuple[int, int | None], ...]:
    """'0-8,8-64,64-' → ((0, 8), (8, 64), (64, None))."""
    bands = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise ValueError(f"bad rank band {part!r}: expected LO-HI or LO- (e.g. 0-8,8-64,64-)")
        if hi and int(hi) <= int(lo):
            raise ValueError(f"bad rank band {part!r}: HI must exceed LO")
        bands.append((int(lo), int(hi) if hi else None))
    return tuple(bands)


def _band_slice(band: tuple[int, int | None], dim: int) -> slice:
    lo, hi = band
    return slice(min(lo, dim), dim if hi is None else min(hi, dim))


def band_name(band: tuple[int, int | None]) -> str:
    """'0-8', '64+'."""
    return f"{band[0]}+" if band[1] is None else f"{band[0]}-{band[1]}"


@torch.no_grad()
def per_rank_sqnr(fp: torch.Tensor, quantized: torch.Tensor, basis: FeatureBasis | None = None) -> dict[str, torch.Tensor]:
    """Per-rank signal energy, error energy and SQNR (dB) of `quantized` vs `fp` features in the FP basis."""
    basis = basis or feature_basis(fp)
    v = basis.vectors
    signal = (((fp.double() - basis.mean) @ v) ** 2).mean(0)
    error = (((quantized.double() - fp.double()) @ v) ** 2).mean(0)
    return {"signal": signal, "error": error, "sqnr_db": 10 * torch.log10(signal / error.clamp(min=1e-300))}


def band_sums(values: torch.Tensor, bands=DEFAULT_BANDS) -> dict[str, float]:
    """Sum of a per-rank quantity over each band."""
    return {band_name(b): float(values[_band_slice(b, values.numel())].sum()) for b in bands}


def band_sqnr(signal: torch.Tensor, error: torch.Tensor, bands=DEFAULT_BANDS) -> dict[str, float]:
    """SQNR (dB) of each band: 10·log10(Σ signal / Σ error) over the band's ranks."""
    s, e = band_sums(signal, bands), band_sums(error, bands)
    out = {}
    for band in bands:
        k = band_name(band)
        empty = _band_slice(band, signal.numel()).start >= signal.numel()
        out[k] = float("nan") if empty else 10 * float(torch.log10(torch.tensor(s[k] / max(e[k], 1e-300))))
    return out


@torch.no_grad()
def restrict_to_band(features: torch.Tensor, basis: FeatureBasis, band: tuple[int, int | None],
                     keep_mean: bool = True) -> torch.Tensor:
    """Project centred features onto the basis vectors of one rank band (the mean added back if asked)."""
    v = basis.vectors[:, _band_slice(band, basis.dim)]
    out = ((features.double() - basis.mean) @ v) @ v.T
    return (out + basis.mean if keep_mean else out).to(features.dtype)


def truncate_features(features: torch.Tensor, basis: FeatureBasis, k: int) -> torch.Tensor:
    """Keep the top-k principal components (the truncation control)."""
    return restrict_to_band(features, basis, (0, k))


@torch.no_grad()
def band_accuracy(features: torch.Tensor, labels: torch.Tensor, classifier: torch.Tensor, basis: FeatureBasis,
                  bands=DEFAULT_BANDS, keep_mean: bool = True) -> dict[str, float]:
    """Zero-shot top-1 accuracy when features are restricted to each rank band (classifier [D, C])."""
    out = {}
    for band in bands:
        f = restrict_to_band(features, basis, band, keep_mean)
        pred = (F.normalize(f.float(), dim=-1) @ classifier.float()).argmax(-1)
        out[band_name(band)] = float((pred == labels).float().mean())
    return out
