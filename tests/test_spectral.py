"""spectral: weight statistics vs numpy/scipy, power-law alpha on a known exponent, per-rank SQNR vs the analytic
value, rank-band accuracy at full band, error-subspace split."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import entropy

from qclip.spectral.features import (DEFAULT_BANDS, band_accuracy, band_sqnr, feature_basis, parse_bands, per_rank_sqnr,
                               restrict_to_band, truncate_features)
from qclip.spectral.weights import (damping_ratio, effective_rank, error_energy_split, layer_statistics, powerlaw_alpha,
                              powerlaw_alpha_ww, spectral_entropy, stable_rank, svdvals_batched)


def test_svdvals_batched_matches_numpy_for_mixed_shapes():
    g = torch.Generator().manual_seed(0)
    ws = [torch.randn(8, 12, generator=g), torch.randn(8, 12, generator=g), torch.randn(6, 4, 3, 3, generator=g),
          torch.randn(20, 5, generator=g)]
    for method, tol in (("svd", 1e-5), ("gram", 1e-4)):
        for w, s in zip(ws, svdvals_batched(ws, method=method)):
            ref = np.linalg.svd(w.reshape(w.shape[0], -1).double().numpy(), compute_uv=False)
            np.testing.assert_allclose(s.double().numpy(), ref, rtol=tol, atol=tol)


def test_rank_statistics_match_numpy_definitions():
    s = torch.tensor([4.0, 2.0, 1.0, 0.5, 0.0])
    e = s.double().numpy() ** 2
    p = e / e.sum()
    assert stable_rank(s) == pytest.approx(e.sum() / 16.0)
    assert effective_rank(s) == pytest.approx(math.exp(entropy(p[p > 0])))
    assert spectral_entropy(s) == pytest.approx(entropy(p[p > 0]) / math.log(5))
    flat = torch.ones(10)
    assert effective_rank(flat) == pytest.approx(10.0) and spectral_entropy(flat) == pytest.approx(1.0)
    assert stable_rank(flat) == pytest.approx(10.0)


@pytest.mark.parametrize("alpha", [2.5, 3.0, 4.0])
def test_powerlaw_alpha_recovers_known_exponent(alpha):
    rng = np.random.default_rng(int(alpha * 10))
    lam = rng.pareto(alpha - 1.0, 4000) + 1.0  # density ∝ λ^(-alpha) for λ ≥ 1
    fit = powerlaw_alpha(torch.from_numpy(lam), eigenvalues=True)
    assert fit["alpha"] == pytest.approx(alpha, rel=0.06)
    assert fit["ks"] < 0.05


def test_powerlaw_alpha_matches_closed_form_mle_at_fixed_xmin():
    lam = torch.tensor([1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0, 34.0, 55.0, 89.0], dtype=torch.float64)
    fit = powerlaw_alpha(lam, eigenvalues=True, min_tail=len(lam))  # only xmin = min(λ) is allowed
    expected = 1 + len(lam) / float(torch.log(lam / lam.min()).sum())
    assert fit["alpha"] == pytest.approx(expected) and fit["xmin"] == 1.0


def test_damping_ratio_and_error_split():
    assert damping_ratio(torch.tensor([2.0, 1.0, 0.0]), torch.tensor([1.0, 1.0, 0.0])).tolist() == [0.5, 1.0, 1.0]
    g = torch.Generator().manual_seed(1)
    u, _ = torch.linalg.qr(torch.randn(32, 32, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(32, 32, generator=g, dtype=torch.float64))
    w = u @ torch.diag(torch.linspace(10, 0.1, 32, dtype=torch.float64)) @ v.T
    e = 0.01 * u[:, 4:] @ torch.randn(28, 32, generator=g, dtype=torch.float64)  # error outside the top-4
    split = error_energy_split(w, w + e, k=4)
    assert split["error_top"] == pytest.approx(0.0, abs=1e-12)
    assert split["error_energy"] == pytest.approx(float((e ** 2).sum()))
    white = error_energy_split(w, w + 0.01 * torch.randn(32, 32, generator=g, dtype=torch.float64), k=8)
    assert white["top_share"] == pytest.approx(white["uniform_share"], abs=0.1)


def test_layer_statistics_keys():
    s = torch.linspace(5, 0.1, 64)
    stats = layer_statistics(s)
    assert {"sigma_max", "stable_rank", "effective_rank", "spectral_entropy", "alpha", "alpha_clauset2"} <= stats.keys()
    assert stats["alpha"] == powerlaw_alpha_ww(s)["alpha"]  # WeightWatcher's definition
    assert stats["alpha_clauset2"] == powerlaw_alpha(s)["alpha"]  # Clauset et al., two-sided KS


def _synthetic(n=6000, d=48, noise=1e-3, seed=0):
    g = torch.Generator().manual_seed(seed)
    var = torch.tensor([2.0 ** (-i / 4) for i in range(d)], dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    f = (torch.randn(n, d, generator=g, dtype=torch.float64) * var.sqrt()) @ q.T + 0.3
    fq = f + torch.randn(n, d, generator=g, dtype=torch.float64) * noise ** 0.5
    return f, fq, var, noise


def test_per_rank_sqnr_matches_analytic_value():
    f, fq, var, noise = _synthetic()
    r = per_rank_sqnr(f, fq)
    analytic = 10 * torch.log10(var / noise)
    assert torch.allclose(r["sqnr_db"], analytic, atol=0.35)  # sampling error of 6000 draws
    # white noise, decaying signal: SQNR falls with rank (the paper's Analysis A)
    from scipy.stats import spearmanr

    assert spearmanr(np.arange(len(var)), r["sqnr_db"].numpy()).statistic < -0.95
    bands = band_sqnr(r["signal"], r["error"], ((0, 8), (8, 48), (48, None)))
    assert bands["0-8"] > bands["8-48"] and math.isnan(bands["48+"])


def test_full_band_is_identity_and_accuracy_unchanged():
    f, _, _, _ = _synthetic(n=500, d=16)
    basis = feature_basis(f)
    torch.testing.assert_close(restrict_to_band(f, basis, (0, None)), f)
    g = torch.Generator().manual_seed(3)
    clf = torch.nn.functional.normalize(torch.randn(16, 5, generator=g, dtype=torch.float64), dim=0)
    labels = torch.randint(0, 5, (500,), generator=g)
    plain = float(((torch.nn.functional.normalize(f, dim=-1) @ clf).argmax(-1) == labels).float().mean())
    assert band_accuracy(f, labels, clf, basis, bands=((0, None),))["0+"] == pytest.approx(plain)
    assert truncate_features(f, basis, 16).allclose(f)


def test_bands_partition_the_centred_features():
    f, _, _, _ = _synthetic(n=300, d=12)
    basis = feature_basis(f)
    parts = sum(restrict_to_band(f, basis, b, keep_mean=False) for b in ((0, 3), (3, 8), (8, None)))
    torch.testing.assert_close(parts + basis.mean, f)


def test_parse_bands():
    assert parse_bands("0-8,8-64,64-") == DEFAULT_BANDS
    with pytest.raises(ValueError, match="LO-HI"):
        parse_bands("a-b")
    with pytest.raises(ValueError, match="exceed"):
        parse_bands("8-4")
