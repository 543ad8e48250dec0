"""Power-law alpha the WeightWatcher way: known answers (no reference needed), and layer-by-layer agreement with
WeightWatcher 0.7.7's `analyze()` (test-only reference, skipped when `weightwatcher` is not installed).

Agreement tolerance with WeightWatcher: alpha, xmin and D to 1e-9 relative and the same tail size (observed:
≤ 1e-13; both sides fit the same float64 eigenvalues and differ only in summation order)."""

from __future__ import annotations

import contextlib
import io
import logging
import math
import warnings

import numpy as np
import pytest
import torch
from qclip.spectral.weights import (
    layer_eigenvalues,
    layer_spectra_batched,
    layer_statistics,
    powerlaw_alpha,
    powerlaw_alpha_ww,
    svdvals_batched,
)

RTOL = 1e-9  # agreement with WeightWatcher (alpha, xmin, D)


# ------------------------------------------------------------------------------------------------ helpers
def _pareto(alpha: float, n: int, seed: int) -> np.ndarray:
    """n samples with density ∝ λ^(−alpha) on λ ≥ 1."""
    return np.random.default_rng(seed).pareto(alpha - 1.0, n) + 1.0


def _with_spectrum(out: int, inp: int, lam: np.ndarray, seed: int) -> torch.Tensor:
    """A [out, in] matrix U diag(sqrt(λ)) Vᵀ with random orthonormal U, V: its ESD is exactly λ."""
    g = torch.Generator().manual_seed(seed)
    k = min(out, inp)
    u, _ = torch.linalg.qr(torch.randn(out, k, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(inp, k, generator=g, dtype=torch.float64))
    return (u * torch.from_numpy(np.sqrt(lam[:k]))) @ v.T


def _linear(weight: torch.Tensor) -> torch.nn.Linear:
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(weight)
    return layer


def _conv(weight: torch.Tensor) -> torch.nn.Conv2d:
    layer = torch.nn.Conv2d(weight.shape[1], weight.shape[0], tuple(weight.shape[2:]))
    with torch.no_grad():
        layer.weight.copy_(weight)
    return layer


@pytest.fixture(scope="module")
def ww():
    mod = pytest.importorskip("weightwatcher")
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    return mod


def _ww_row(ww, layer: torch.nn.Module):
    """WeightWatcher's default `analyze()` row for a one-layer model (None when it skips the layer)."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():  # its small-N fit prints;
        warnings.simplefilter("ignore")  # pandas deprecation warnings from inside weightwatcher
        details = ww.WeightWatcher(model=torch.nn.Sequential(layer)).analyze()
    return None if details.empty else details.iloc[0]


def _assert_agrees(ww, layer: torch.nn.Module) -> dict:
    row = _ww_row(ww, layer)
    ours = powerlaw_alpha_ww(layer_eigenvalues(layer.weight), eigenvalues=True)
    assert row is not None
    assert ours["alpha"] == pytest.approx(float(row.alpha), rel=RTOL)
    assert ours["xmin"] == pytest.approx(float(row.xmin), rel=RTOL)
    assert ours["ks"] == pytest.approx(float(row.D), rel=RTOL)
    assert ours["n_tail"] == int(row.num_pl_spikes)
    return ours


# ---------------------------------------------------------------------------------- known answers (no ww)
@pytest.mark.parametrize("alpha", [2.0, 2.5, 3.0, 4.0])
def test_planted_power_law_recovers_exponent(alpha):
    fit = powerlaw_alpha_ww(torch.from_numpy(_pareto(alpha, 2000, seed=int(10 * alpha))), eigenvalues=True)
    assert fit["alpha"] == pytest.approx(alpha, rel=0.06)  # worst of 20 seeds: 5.3%
    assert 0 < fit["ks"] < 0.05 and fit["n_tail"] >= 200


def test_planted_layer_spectrum_is_recovered_through_the_weight():
    lam = _pareto(3.0, 300, seed=0)
    w = _with_spectrum(600, 300, lam, seed=0).float()
    np.testing.assert_allclose(layer_eigenvalues(w).numpy(), np.sort(lam)[::-1], rtol=1e-5)
    assert powerlaw_alpha_ww(layer_eigenvalues(w), eigenvalues=True)["alpha"] == pytest.approx(3.0, rel=0.1)


def test_small_n_rule_is_the_bias_corrected_mle():
    lam = torch.tensor([1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0], dtype=torch.float64)  # n = 8: one tail allowed
    fit = powerlaw_alpha_ww(lam, eigenvalues=True)
    assert fit["alpha"] == pytest.approx(1 + 7 / float(torch.log(lam / lam[0]).sum()))
    assert fit["xmin"] == 1.0 and fit["n_tail"] == 8


def test_flat_spectra_and_skipped_layers():
    assert math.isinf(powerlaw_alpha_ww(torch.ones(25), eigenvalues=True)["alpha"])  # flat, n ≥ 20: α = inf
    assert powerlaw_alpha_ww(torch.ones(16), eigenvalues=True)["alpha"] == 0.0  # flat, n < 20: WW's unset 0
    assert math.isnan(powerlaw_alpha_ww(torch.ones(7), eigenvalues=True)["alpha"])  # < 8 eigenvalues: skipped
    only_one = torch.tensor([1.0] + [1e-7] * 9, dtype=torch.float64)  # one eigenvalue above 1e-5: fit fails
    assert math.isnan(powerlaw_alpha_ww(only_one, eigenvalues=True)["alpha"])


def test_layer_eigenvalues_linear_and_conv_pooling():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(12, 20, generator=g)
    ref = np.linalg.svd(w.double().numpy(), compute_uv=False) ** 2
    np.testing.assert_allclose(layer_eigenvalues(w).numpy(), ref, rtol=1e-12)
    c = torch.randn(6, 4, 3, 2, generator=g)
    slices = [np.linalg.svd(c[:, :, i, j].double().numpy(), compute_uv=False) ** 2 for i in range(3) for j in range(2)]
    pooled = np.sort(np.concatenate(slices))[::-1]
    np.testing.assert_allclose(layer_eigenvalues(c).numpy(), pooled / 2, rtol=1e-12)  # 6 slices × 4, halved
    np.testing.assert_allclose(layer_eigenvalues(c, conv2d_norm=False).numpy(), pooled, rtol=1e-12)
    assert layer_eigenvalues(c).dtype == torch.float64 and layer_eigenvalues(c).numel() == 24


def test_layer_statistics_alpha_keys_and_esd():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(16, 8, 3, 3, generator=g)
    (s,) = svdvals_batched([w])
    esd = layer_eigenvalues(w)
    stats = layer_statistics(s, esd=esd)
    assert stats["alpha"] == powerlaw_alpha_ww(esd, eigenvalues=True)["alpha"]
    assert stats["alpha_clauset2"] == powerlaw_alpha(esd, eigenvalues=True)["alpha"]
    assert {"alpha_xmin", "alpha_ks", "alpha_n_tail", "alpha_clauset2_xmin", "alpha_clauset2_ks",
            "alpha_clauset2_n_tail"} <= stats.keys()
    assert stats["stable_rank"] == layer_statistics(s)["stable_rank"]  # rank statistics stay on the flattened σ
    lin = torch.randn(64, 32, generator=g)
    (sl,) = svdvals_batched([lin], dtype=torch.float64)
    assert layer_statistics(sl)["alpha"] == pytest.approx(layer_statistics(sl, esd=layer_eigenvalues(lin))["alpha"])


def test_input_validation():
    with pytest.raises(ValueError, match="Conv2d weight"):
        layer_eigenvalues(torch.randn(4, 3, 5))
    with pytest.raises(ValueError, match="empty"):
        layer_eigenvalues(torch.empty(0, 3))
    with pytest.raises(ValueError, match="non-finite"):
        layer_eigenvalues(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="1-D"):
        powerlaw_alpha_ww(torch.ones(3, 3))
    with pytest.raises(ValueError, match="NaN"):
        powerlaw_alpha_ww(torch.tensor([1.0, float("nan")] * 5), eigenvalues=True)
    with pytest.raises(ValueError, match="esd"):
        layer_statistics(torch.ones(4), esd=torch.ones(2, 2))


# --------------------------------------------------------------------------- agreement with WeightWatcher
@pytest.mark.parametrize("shape", [(64, 32), (100, 100), (300, 128), (30, 200), (20, 12), (15, 40), (9, 9)])
@pytest.mark.parametrize("seed", [0, 1])
def test_random_linear_matches_weightwatcher(ww, shape, seed):
    g = torch.Generator().manual_seed(seed)
    _assert_agrees(ww, _linear(torch.randn(shape, generator=g) / math.sqrt(shape[1])))


@pytest.mark.parametrize("alpha", [2.5, 3.5])
def test_planted_heavy_tail_matches_weightwatcher(ww, alpha):
    w = _with_spectrum(400, 200, _pareto(alpha, 200, seed=1), seed=1).float()
    ours = _assert_agrees(ww, _linear(w))
    assert ours["alpha"] == pytest.approx(alpha, rel=0.15)


def test_trained_like_matches_weightwatcher(ww):
    """Heavy-tailed entries (Student t, 3 dof) plus a rank-4 signal: a heavy-tailed ESD with outliers."""
    g = torch.Generator().manual_seed(7)
    chi2 = (torch.randn(3, 256, 128, generator=g) ** 2).sum(0)
    t = torch.randn(256, 128, generator=g) / (chi2 / 3).sqrt() / math.sqrt(128)  # Student t with 3 dof
    spikes = torch.randn(256, 4, generator=g) @ torch.randn(4, 128, generator=g) * torch.tensor([0.5])
    ours = _assert_agrees(ww, _linear(t + spikes / math.sqrt(128)))
    assert 1.5 < ours["alpha"] < 6


def test_conv2d_matches_weightwatcher(ww):
    g = torch.Generator().manual_seed(2)
    for shape in [(32, 16, 3, 3), (8, 64, 1, 1), (16, 3, 4, 4)]:  # 3x3 slices, 1x1 (still halved), patch-embed-like
        w = torch.randn(shape, generator=g) * 0.05
        ours = _assert_agrees(ww, _conv(w))
        (s,) = svdvals_batched([w], dtype=torch.float64)
        assert layer_statistics(s, esd=layer_eigenvalues(w))["alpha"] == ours["alpha"]


def test_layers_weightwatcher_skips_have_no_alpha(ww):
    w = torch.randn(768, 3)  # 3 eigenvalues < min_evals = 8
    assert _ww_row(ww, _linear(w)) is None
    assert math.isnan(powerlaw_alpha_ww(layer_eigenvalues(w), eigenvalues=True)["alpha"])


@pytest.mark.parametrize("n", [2, 8, 12, 19, 20, 64, 500])
def test_fit_matches_weightwatcher_wwfit_on_eigenvalues(ww, n):
    from weightwatcher.WW_powerlaw import WWFit

    for alpha, seed in ((2.2, 0), (4.0, 1)):
        lam = _pareto(alpha, n, seed)
        with contextlib.redirect_stdout(io.StringIO()):
            ref = WWFit(lam)
        ours = powerlaw_alpha_ww(torch.from_numpy(lam), eigenvalues=True, min_evals=0)
        assert ours["alpha"] == pytest.approx(ref.alpha, rel=RTOL) and ours["xmin"] == ref.xmin
        assert ours["ks"] == pytest.approx(ref.D, rel=RTOL)


def test_layer_spectra_share_one_float64_gram_decomposition():
    """σ of the flattened matrix and the WeightWatcher ESD from `layer_spectra_batched`, against numpy float64 SVDs.

    Gram eigenvalues carry an absolute error of about n·eps64·σ_max², so σ_i is within n·eps64·σ_max²/σ_i of the SVD's
    (relative 1e-12 here: these random matrices have σ_min/σ_max ≥ ~0.01; a bound of 1e-10 leaves room)."""
    g = torch.Generator().manual_seed(5)
    weights = [torch.randn(48, 20, generator=g), torch.randn(20, 48, generator=g), torch.randn(24, 24, generator=g) + 3,
               torch.randn(16, 8, 3, 3, generator=g), torch.randn(12, 6, 1, 1, generator=g)]
    for w, (sigma, esd) in zip(weights, layer_spectra_batched(weights)):
        ref = np.linalg.svd(w.reshape(w.shape[0], -1).double().numpy(), compute_uv=False)
        assert sigma.dtype == torch.float64 and esd.dtype == torch.float64
        np.testing.assert_allclose(sigma.numpy(), ref, rtol=1e-10)
        np.testing.assert_allclose(esd.numpy(), layer_eigenvalues(w).numpy(), rtol=1e-10)
        if w.dim() == 2:  # a linear map's ESD is σ², from the same decomposition
            assert torch.equal(esd, sigma ** 2) or np.allclose(esd.numpy(), sigma.numpy() ** 2, rtol=1e-15)


def test_spectra_paths_give_weightwatchers_alpha(ww):
    """Both `qclip spectrum` paths (--svd gram: shared float64 Gram; --svd svd: float32 σ + float64 Gram ESD) fit
    WeightWatcher's alpha on the ESD, so alpha agrees with the package to RTOL either way."""
    from qclip.experiments.analysis import FpWeights, weight_spectra

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.Conv2d(8, 16, 3), torch.nn.Linear(96, 40))
    rows = {m: {r["layer"]: r for r in weight_spectra(FpWeights(model, method=m), None)[0]} for m in ("gram", "svd")}
    for name, layer in (("0", model[0]), ("1", model[1]), ("2", model[2])):
        ref = float(_ww_row(ww, layer).alpha)
        for method in ("gram", "svd"):
            assert rows[method][name]["fp_alpha"] == pytest.approx(ref, rel=RTOL)
