"""Frequency-domain analysis (the paper's v3 appendix): 2D Fourier power spectra of ViT feature maps, their radial
profile and low/mid/high band shares, and band-limited noise to perturb images in one spatial-frequency band.

Conventions (all frequencies in cycles/pixel, so Nyquist = 0.5):
- the spectrum of a map x [H, W] is F = fft2(x, norm="ortho"), so Σ|F|² = Σx² and unit white noise has a flat
  power of 1 per frequency; frequency (u, v) has radius r = sqrt(u² + v²) with u, v from `torch.fft.fftfreq`
  (the unshifted fftfreq layout: DC at [0, 0]);
- only the isotropic Nyquist disc r ≤ 0.5 is analysed: the corner frequencies (r > 0.5, diagonal only) are
  dropped from radial profiles and from band shares alike;
- rings: n_bins ring centres c_i = i·Δ from DC (i = 0) to Nyquist (i = n_bins − 1), Δ = 0.5 / (n_bins − 1);
  ring i holds the frequencies with |r − c_i| < Δ/2 (ring 0 = [0, Δ/2)). The default n_bins = min(H, W)//2 + 1
  gives Δ = 1/N on an even N×N grid, i.e. ring i = the frequencies whose radius rounds to i/N;
- bands are half-open annuli low ≤ r < high (`BANDS` closes the high band at Nyquist); band shares are of the
  non-DC power inside the Nyquist disc.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from einops import rearrange

__all__ = ["BANDS", "tokens_to_grid", "radial_frequencies", "radial_energy", "band_mask", "band_energy_fractions",
           "band_limited_noise", "perturb_band"]

#: Spatial-frequency bands in cycles/pixel (Nyquist = 0.5; the high band is closed at Nyquist).
BANDS: dict[str, tuple[float, float]] = {"low": (0.0, 0.125), "mid": (0.125, 0.25), "high": (0.25, 0.5000001)}

_NYQUIST_EDGE = 0.5000001  # radii below this are inside the Nyquist disc (r ≤ 0.5 with float slack)

Band = tuple[float, float]


def tokens_to_grid(tokens: torch.Tensor, *, has_cls: bool = True,
                   grid: int | tuple[int, int] | None = None) -> torch.Tensor:
    """ViT tokens [B, 1+H·W, C] (or [B, H·W, C] with has_cls=False), row-major patches, to maps [B, C, H, W]."""
    if tokens.ndim != 3:
        raise ValueError(f"tokens must be [B, N, C], got shape {tuple(tokens.shape)}")
    patches = tokens[:, 1:] if has_cls else tokens
    n = patches.shape[1]
    if grid is None:
        side = math.isqrt(n)
        if side * side != n or n == 0:
            raise ValueError(f"{n} patch tokens (after dropping CLS: {has_cls}) is not a square grid; "
                             "pass grid=(H, W) (or check has_cls)")
        h = w = side
    else:
        h, w = (grid, grid) if isinstance(grid, int) else grid
        if h * w != n:
            raise ValueError(f"grid {h}x{w} needs {h * w} patch tokens, got {n} (has_cls={has_cls})")
    return rearrange(patches, "b (h w) c -> b c h w", h=h, w=w)


def _radius(h: int, w: int, *, device: torch.device | str | None = None, onesided: bool = False) -> torch.Tensor:
    """Radial frequency r = sqrt(u² + v²) (cycles/pixel, float64) of each fft2 (or rfft2 if onesided) bin."""
    u = torch.fft.fftfreq(h, device=device, dtype=torch.float64)
    v = (torch.fft.rfftfreq if onesided else torch.fft.fftfreq)(w, device=device, dtype=torch.float64)
    return torch.hypot(rearrange(u, "h -> h 1"), rearrange(v, "w -> 1 w"))


def _check_band(low: float, high: float) -> None:
    if not (0 <= low < high):
        raise ValueError(f"band must satisfy 0 <= low < high (cycles/pixel, Nyquist 0.5), got ({low}, {high})")


def _n_bins(h: int, w: int, n_bins: int | None) -> int:
    n = min(h, w) // 2 + 1 if n_bins is None else n_bins
    if n < 2:
        raise ValueError(f"n_bins must be >= 2 (DC and Nyquist rings), got {n} for a {h}x{w} map")
    return n


def radial_frequencies(h: int, w: int, n_bins: int | None = None, *,
                       device: torch.device | str | None = None) -> torch.Tensor:
    """Ring centres [R] in cycles/pixel, from 0 (DC) to 0.5 (Nyquist); R defaults to min(h, w)//2 + 1."""
    n = _n_bins(h, w, n_bins)
    return torch.linspace(0.0, 0.5, n, device=device, dtype=torch.float64)


def _power(maps: torch.Tensor, *, remove_mean: bool) -> torch.Tensor:
    """Mean |fft2|² (ortho) over all leading dims of maps [..., H, W] → [H, W]."""
    if maps.ndim < 2:
        raise ValueError(f"maps must be [..., H, W], got shape {tuple(maps.shape)}")
    x = maps.detach()
    x = x if x.dtype == torch.float64 else x.float()
    if remove_mean:
        x = x - x.mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.fft2(x, norm="ortho").abs().square()
    return rearrange(power, "... h w -> (...) h w").mean(0)


@torch.no_grad()
def radial_energy(maps: torch.Tensor, *, n_bins: int | None = None, remove_mean: bool = True,
                  normalize: bool = False) -> torch.Tensor:
    """Ring-averaged 2D power spectrum [R] of maps [B, C, H, W] (or [..., H, W]), DC to Nyquist."""
    h, w = maps.shape[-2:]
    n = _n_bins(h, w, n_bins)
    power = _power(maps, remove_mean=remove_mean)
    step = 0.5 / (n - 1)
    ring = torch.floor(_radius(h, w, device=maps.device) / step + 0.5).long()
    onehot = (rearrange(ring, "h w -> 1 (h w)") == rearrange(torch.arange(n, device=maps.device), "r -> r 1"))
    onehot = onehot.to(power.dtype)
    sums = onehot @ rearrange(power, "h w -> (h w)")
    profile = sums / onehot.sum(1).clamp(min=1)  # an empty ring (n_bins finer than the grid) reads 0
    return profile / profile.sum().clamp(min=torch.finfo(profile.dtype).tiny) if normalize else profile


def band_mask(h: int, w: int, low: float, high: float, *,
              device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean mask [h, w] of the annulus low ≤ r < high (cycles/pixel) in the unshifted fftfreq layout."""
    _check_band(low, high)
    r = _radius(h, w, device=device)
    return (r >= low) & (r < high)


def _named_bands(bands: Mapping[str, Band] | Sequence[Band]) -> dict[str, Band]:
    if isinstance(bands, Mapping):
        return dict(bands)
    return {f"{lo:g}-{hi:g}": (lo, hi) for lo, hi in bands}


@torch.no_grad()
def band_energy_fractions(maps: torch.Tensor,
                          bands: Mapping[str, Band] | Sequence[Band] = BANDS) -> dict[str, float]:
    """Share of the non-DC power (inside the Nyquist disc) of maps [..., H, W] in each band (sums to 1 over `BANDS`)."""
    named = _named_bands(bands)
    h, w = maps.shape[-2:]
    power = _power(maps, remove_mean=False)
    r = _radius(h, w, device=maps.device)
    disc = (r > 0) & (r < _NYQUIST_EDGE)
    total = power[disc].sum()
    if total <= 0:
        raise ValueError("maps have no non-DC power (constant maps): band shares are undefined")
    shares = torch.stack([power[band_mask(h, w, lo, hi, device=maps.device) & disc].sum() for lo, hi in named.values()])
    return dict(zip(named, (shares / total).tolist()))


def band_limited_noise(shape: Sequence[int], low: float, high: float, *, eps: float | None = None,
                       std: float | None = None, keep_dc: bool = False, generator: torch.Generator | None = None,
                       device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """White Gaussian noise [B, C, H, W] filtered to low ≤ r < high, scaled to L2 norm `eps` (or RMS `std`) per image.

    The DC term is removed unless keep_dc (so the noise is zero-mean per channel and `std` is its standard deviation).
    The noise is drawn on the generator's device (CPU without one) and moved to `device`, so a seed gives the same
    noise everywhere.
    """
    if len(shape) != 4:
        raise ValueError(f"shape must be [B, C, H, W], got {tuple(shape)}")
    if (eps is None) == (std is None):
        raise ValueError("give exactly one of eps (L2 norm per image) or std (RMS per image)")
    target = eps if eps is not None else std
    if target < 0:
        raise ValueError(f"the noise size must be >= 0, got {target}")
    b, c, h, w = shape
    _check_band(low, high)
    r = _radius(h, w, onesided=True)  # the rfft2 half of the (Hermitian-symmetric) annulus
    mask = (r >= low) & (r < high)
    if not keep_dc:
        mask[0, 0] = False
    if not mask.any():
        raise ValueError(f"band [{low}, {high}) holds no frequency of a {h}x{w} grid (besides DC); widen it")
    dtype = dtype or torch.get_default_dtype()
    work = torch.float64 if dtype == torch.float64 else torch.float32
    src = generator.device if generator is not None else torch.device("cpu")
    white = torch.randn((b, c, h, w), generator=generator, device=src, dtype=work)
    spec = torch.fft.rfft2(white) * mask.to(src)
    noise = torch.fft.irfft2(spec, s=(h, w))
    norm = noise.square().sum(dim=(1, 2, 3)).sqrt()
    scale = target / norm if eps is not None else target * math.sqrt(c * h * w) / norm
    noise = noise * rearrange(scale, "b -> b 1 1 1")
    return noise.to(device=device if device is not None else src, dtype=dtype)


def perturb_band(images: torch.Tensor, band: str | Band = "low", *, eps: float | None = None,
                 std: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Images [B, C, H, W] in [0, 1] plus band-limited noise (a `BANDS` name or (low, high)), clamped to [0, 1].

    `eps`/`std` size the noise before clamping, so the realised perturbation can be slightly smaller.
    """
    if isinstance(band, str):
        if band not in BANDS:
            raise ValueError(f"unknown band {band!r}: expected one of {sorted(BANDS)} or (low, high)")
        band = BANDS[band]
    dtype = images.dtype if images.is_floating_point() else torch.get_default_dtype()
    noise = band_limited_noise(images.shape, *band, eps=eps, std=std, generator=generator,
                               device=images.device, dtype=dtype)
    return (images.to(dtype) + noise).clamp(0.0, 1.0)
