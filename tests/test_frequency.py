"""spectral.frequency: radial spectra of gratings and white noise, numpy references for the radial profile and band
shares, blur shifts power to the low band, band-limited noise stays in its annulus with the asked norm, token grids."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from qclip.spectral.frequency import (
    BANDS,
    band_energy_fractions,
    band_limited_noise,
    band_mask,
    perturb_band,
    radial_energy,
    radial_frequencies,
    tokens_to_grid,
)


def _np_radius(h: int, w: int) -> np.ndarray:
    return np.hypot(*np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij"))


def _np_radial_energy(maps: np.ndarray, n_bins: int, remove_mean: bool = True) -> np.ndarray:
    """Reference: ortho fft2 power averaged over maps, then over rings of radius rounded to the nearest centre."""
    x = maps - maps.mean(axis=(-2, -1), keepdims=True) if remove_mean else maps
    power = (np.abs(np.fft.fft2(x, norm="ortho")) ** 2).reshape(-1, *maps.shape[-2:]).mean(0)
    step = 0.5 / (n_bins - 1)
    ring = np.rint(_np_radius(*maps.shape[-2:]) / step).astype(int)
    keep = ring < n_bins
    sums = np.bincount(ring[keep], weights=power[keep], minlength=n_bins)
    counts = np.bincount(ring[keep], minlength=n_bins)
    return sums / np.maximum(counts, 1)


def _np_band_fractions(maps: np.ndarray, bands: dict[str, tuple[float, float]]) -> dict[str, float]:
    power = (np.abs(np.fft.fft2(maps)) ** 2).reshape(-1, *maps.shape[-2:]).sum(0)
    r = _np_radius(*maps.shape[-2:])
    disc = (r > 0) & (r <= 0.5)
    total = power[disc].sum()
    return {k: power[disc & (r >= lo) & (r < hi)].sum() / total for k, (lo, hi) in bands.items()}


def _grating(n: int, ku: int, kv: int) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(n, dtype=torch.float64), torch.arange(n, dtype=torch.float64), indexing="ij")
    return torch.cos(2 * torch.pi * (ku * y + kv * x) / n + 0.3)


# --- radial_energy -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ku,kv", [(0, 6), (3, 4), (5, 12), (16, 0)])
def test_radial_energy_of_a_grating_sits_in_its_ring(ku, kv):
    n = 32
    maps = torch.stack([_grating(n, ku, kv), 2 * _grating(n, ku, kv)])[:, None]  # [2, 1, 32, 32]
    profile = radial_energy(maps, normalize=True)
    freqs = radial_frequencies(n, n)
    assert profile.shape == freqs.shape == (n // 2 + 1,)
    f = np.hypot(ku, kv) / n
    ring = int(torch.argmin((freqs - f).abs()))
    assert profile.sum().item() == pytest.approx(1.0)
    assert profile[ring].item() == pytest.approx(1.0, abs=1e-9)


def test_radial_frequencies_run_from_dc_to_nyquist():
    freqs = radial_frequencies(14, 14)
    assert freqs.shape == (8,) and freqs[0] == 0 and freqs[-1] == 0.5
    np.testing.assert_allclose(freqs.numpy(), np.arange(8) / 14)
    assert radial_frequencies(14, 20, 5).tolist() == [0.0, 0.125, 0.25, 0.375, 0.5]
    with pytest.raises(ValueError, match="n_bins"):
        radial_frequencies(14, 14, 1)


def test_radial_energy_of_white_noise_is_flat():
    g = torch.Generator().manual_seed(0)
    profile = radial_energy(torch.randn(64, 8, 32, 32, generator=g))
    assert profile[0].item() == pytest.approx(0.0, abs=1e-6)  # the DC ring, mean removed
    np.testing.assert_allclose(profile[1:].numpy(), 1.0, rtol=0.1)  # unit variance → unit power (ortho FFT)
    kept = radial_energy(torch.randn(64, 8, 32, 32, generator=g) + 3.0, remove_mean=False)
    assert kept[0].item() > 100 * kept[1:].max().item()


@pytest.mark.parametrize("shape,n_bins", [((3, 5, 16, 16), None), ((2, 4, 14, 14), None), ((2, 3, 12, 20), None),
                                          ((4, 2, 15, 15), 6), ((2, 2, 16, 16), 33)])
def test_radial_energy_matches_numpy(shape, n_bins):
    g = torch.Generator().manual_seed(1)
    maps = torch.randn(shape, generator=g) * torch.linspace(0.5, 2.0, shape[-1]) + 0.7
    n = n_bins or min(shape[-2:]) // 2 + 1
    for remove_mean in (True, False):
        ours = radial_energy(maps, n_bins=n_bins, remove_mean=remove_mean).double().numpy()
        ref = _np_radial_energy(maps.double().numpy(), n, remove_mean)
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6 * ref.max())
    normed = radial_energy(maps.double(), n_bins=n_bins, normalize=True).numpy()
    ref = _np_radial_energy(maps.double().numpy(), n)
    np.testing.assert_allclose(normed, ref / ref.sum(), rtol=1e-10, atol=1e-15)


# --- band shares ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4, 6, 16, 16), (2, 3, 14, 14), (3, 2, 24, 18)])
def test_band_energy_fractions_sum_to_one_and_match_numpy(shape):
    g = torch.Generator().manual_seed(2)
    maps = torch.randn(shape, generator=g) + torch.linspace(0, 3, shape[-2])[:, None]
    ours = band_energy_fractions(maps)
    assert list(ours) == ["low", "mid", "high"]
    assert sum(ours.values()) == pytest.approx(1.0, abs=1e-6)
    ref = _np_band_fractions(maps.double().numpy(), BANDS)
    for k in BANDS:
        assert ours[k] == pytest.approx(ref[k], rel=1e-5)
    tuples = band_energy_fractions(maps, bands=tuple(BANDS.values()))
    assert list(tuples) == ["0-0.125", "0.125-0.25", "0.25-0.5"]
    assert list(tuples.values()) == pytest.approx(list(ours.values()))


def test_blur_moves_power_to_the_low_band():
    g = torch.Generator().manual_seed(3)
    maps = torch.randn(4, 8, 32, 32, generator=g)
    blurred = F.interpolate(F.avg_pool2d(maps, 4), scale_factor=4, mode="bilinear", align_corners=False)
    sharp, smooth = band_energy_fractions(maps), band_energy_fractions(blurred)
    assert sharp["low"] == pytest.approx(np.pi * 0.125**2 / (np.pi * 0.25), abs=0.02)  # white: area share
    assert smooth["low"] > sharp["low"] + 0.3 and smooth["high"] < sharp["high"]
    assert radial_energy(blurred, normalize=True)[:5].sum() > radial_energy(maps, normalize=True)[:5].sum()


def test_band_energy_fractions_reject_constant_maps():
    with pytest.raises(ValueError, match="no non-DC power"):
        band_energy_fractions(torch.full((1, 1, 8, 8), 2.0))


def test_band_mask_is_the_fftfreq_annulus():
    for h, w in ((16, 16), (15, 22)):
        r = _np_radius(h, w)
        for lo, hi in BANDS.values():
            np.testing.assert_array_equal(band_mask(h, w, lo, hi).numpy(), (r >= lo) & (r < hi))
        tiled = sum(band_mask(h, w, lo, hi).int() for lo, hi in BANDS.values())
        np.testing.assert_array_equal(tiled.numpy(), (r <= 0.5).astype(int))  # the bands tile the Nyquist disc
    assert band_mask(8, 8, 0, 0.01)[0, 0] and band_mask(8, 8, 0, 0.01).sum() == 1
    with pytest.raises(ValueError, match="low < high"):
        band_mask(8, 8, 0.25, 0.125)


# --- band-limited noise --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hw", [(32, 32), (24, 40), (21, 21)])
@pytest.mark.parametrize("name", list(BANDS))
def test_band_limited_noise_lives_in_its_annulus_with_the_asked_norm(hw, name):
    lo, hi = BANDS[name]
    noise = band_limited_noise((3, 3, *hw), lo, hi, eps=2.5, generator=torch.Generator().manual_seed(4))
    assert noise.shape == (3, 3, *hw) and noise.dtype == torch.float32
    power = np.abs(np.fft.fft2(noise.double().numpy())) ** 2
    r = _np_radius(*hw)
    inside = power[..., (r >= lo) & (r < hi) & (r > 0)].sum(-1)
    assert (inside / power.sum((-2, -1)) >= 0.99).all()
    np.testing.assert_allclose(np.sqrt((noise.double().numpy() ** 2).sum((1, 2, 3))), 2.5, rtol=1e-5)
    np.testing.assert_allclose(noise.double().mean((-2, -1)).numpy(), 0.0, atol=1e-6)  # no DC


def test_band_limited_noise_std_and_determinism():
    shape = (2, 3, 16, 16)
    a = band_limited_noise(shape, *BANDS["mid"], std=0.05, generator=torch.Generator().manual_seed(5))
    b = band_limited_noise(shape, *BANDS["mid"], std=0.05, generator=torch.Generator().manual_seed(5))
    c = band_limited_noise(shape, *BANDS["mid"], std=0.05, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    np.testing.assert_allclose(a.double().std((1, 2, 3), unbiased=False).numpy(), 0.05, rtol=1e-5)
    d = band_limited_noise(shape, *BANDS["low"], eps=1.0, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(5))
    assert d.dtype == torch.float64
    with_dc = band_limited_noise(shape, *BANDS["low"], eps=1.0, keep_dc=True,
                                 generator=torch.Generator().manual_seed(5))
    assert with_dc.mean((-2, -1)).abs().max() > 1e-3


def test_band_limited_noise_bands_are_orthogonal():
    g = torch.Generator().manual_seed(7)
    noises = [band_limited_noise((4, 3, 32, 32), *BANDS[k], eps=1.0, generator=g).double() for k in BANDS]
    for i in range(3):
        for j in range(i + 1, 3):
            cos = F.cosine_similarity(noises[i].flatten(1), noises[j].flatten(1), dim=1)
            assert cos.abs().max() < 1e-5
    same = F.cosine_similarity(noises[0].flatten(1), band_limited_noise((4, 3, 32, 32), *BANDS["low"], eps=1.0,
                                                                        generator=g).double().flatten(1), dim=1)
    assert same.abs().max() > 1e-3  # two draws in one band are not orthogonal by construction


def test_band_limited_noise_validates():
    with pytest.raises(ValueError, match="exactly one"):
        band_limited_noise((1, 1, 8, 8), 0, 0.1)
    with pytest.raises(ValueError, match="exactly one"):
        band_limited_noise((1, 1, 8, 8), 0, 0.1, eps=1.0, std=0.1)
    with pytest.raises(ValueError, match="B, C, H, W"):
        band_limited_noise((8, 8), 0, 0.1, eps=1.0)
    with pytest.raises(ValueError, match="holds no frequency"):
        band_limited_noise((1, 1, 8, 8), 0, 0.05, eps=1.0)  # only DC is below 1/8
    with pytest.raises(ValueError, match="low < high"):
        band_limited_noise((1, 1, 8, 8), 0.3, 0.2, eps=1.0)


def test_perturb_band_stays_in_unit_range():
    g = torch.Generator().manual_seed(8)
    images = torch.rand(4, 3, 32, 32, generator=g)
    for name in BANDS:
        out = perturb_band(images, name, eps=8.0, generator=torch.Generator().manual_seed(9))
        assert out.shape == images.shape and out.dtype == images.dtype
        assert out.min() >= 0 and out.max() <= 1 and not torch.equal(out, images)
    mid = perturb_band(images, BANDS["mid"], std=0.02, generator=torch.Generator().manual_seed(9))
    noise = band_limited_noise(images.shape, *BANDS["mid"], std=0.02, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(mid, (images + noise).clamp(0, 1))
    with pytest.raises(ValueError, match="unknown band"):
        perturb_band(images, "ultra", eps=1.0)


# --- tokens_to_grid ------------------------------------------------------------------------------------------------


def test_tokens_to_grid_round_trip():
    b, c, h, w = 2, 5, 3, 4
    maps = torch.randn(b, c, h, w)
    tokens = maps.permute(0, 2, 3, 1).reshape(b, h * w, c)  # row-major patches, as a ViT flattens its conv grid
    with_cls = torch.cat([torch.full((b, 1, c), 99.0), tokens], dim=1)
    assert torch.equal(tokens_to_grid(with_cls, grid=(h, w)), maps)
    assert torch.equal(tokens_to_grid(tokens, has_cls=False, grid=(h, w)), maps)
    square = torch.randn(b, 1 + 49, c)
    grid = tokens_to_grid(square)
    assert grid.shape == (b, c, 7, 7)
    assert torch.equal(grid[1, :, 2, 5], square[1, 1 + 2 * 7 + 5])


def test_tokens_to_grid_rejects_non_square_or_mismatched_counts():
    with pytest.raises(ValueError, match="not a square grid"):
        tokens_to_grid(torch.randn(1, 1 + 12, 4))
    with pytest.raises(ValueError, match="not a square grid"):
        tokens_to_grid(torch.randn(1, 49, 4))  # 49 tokens with CLS leaves 48 patches
    with pytest.raises(ValueError, match="needs 12 patch tokens"):
        tokens_to_grid(torch.randn(1, 1 + 16, 4), grid=(3, 4))
    with pytest.raises(ValueError, match=r"\[B, N, C\]"):
        tokens_to_grid(torch.randn(16, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_matches_cpu():
    g = torch.Generator().manual_seed(10)
    maps = torch.randn(2, 4, 16, 16, generator=g)
    torch.testing.assert_close(radial_energy(maps.cuda()).cpu(), radial_energy(maps))
    cuda_frac, cpu_frac = band_energy_fractions(maps.cuda()), band_energy_fractions(maps)
    assert list(cuda_frac.values()) == pytest.approx(list(cpu_frac.values()), rel=1e-5)
    noise = band_limited_noise((2, 3, 16, 16), *BANDS["high"], eps=1.0, generator=torch.Generator().manual_seed(1),
                               device="cuda")
    assert noise.device.type == "cuda"
    torch.testing.assert_close(noise.cpu(), band_limited_noise((2, 3, 16, 16), *BANDS["high"], eps=1.0,
                                                               generator=torch.Generator().manual_seed(1)))
