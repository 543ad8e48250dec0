"""spectral.penalties: tail energy (exact / gram / lowrank) vs numpy SVD, gradients vs the analytic 2(I − U_kU_kᵀ)W
and autograd through a full SVD, centred feature tail with gradcheck, nuclear norm, power iteration (warm start,
gradient u vᵀ), and SpectralTailPenalty's refresh interval, fractional k, conv weights and effect under SGD."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from qclip.spectral.penalties import (
    SpectralTailPenalty,
    feature_tail_energy,
    nuclear_norm,
    projected_tail_energy,
    resolve_rank,
    tail_energy,
    top_singular_value,
    top_subspace,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _np_tail(w: torch.Tensor, k: int, normalized: bool = True) -> float:
    s = np.linalg.svd(w.reshape(w.shape[0], -1).double().numpy(), compute_uv=False)
    tail = float((s[k:] ** 2).sum())
    return tail / float((s ** 2).sum()) if normalized else tail


def _low_rank_plus_noise(rows: int, cols: int, rank: int, noise: float, seed: int,
                         dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = _gen(seed)
    a, b = torch.randn(rows, rank, generator=g, dtype=dtype), torch.randn(rank, cols, generator=g, dtype=dtype)
    return a @ b + noise * torch.randn(rows, cols, generator=g, dtype=dtype)


def _np_projector_grad(w: np.ndarray, k: int) -> np.ndarray:
    """2 (W − U_k U_kᵀ W) from numpy's SVD."""
    u = np.linalg.svd(w, full_matrices=False)[0][:, :k]
    return 2.0 * (w - u @ (u.T @ w))


def test_resolve_rank_int_fraction_and_errors():
    assert resolve_rank(5, 64) == 5 and resolve_rank(100, 64) == 64 and resolve_rank(0, 8) == 0
    assert resolve_rank(0.25, 64) == 16 and resolve_rank(0.01, 10) == 1
    for bad, exc in ((-1, ValueError), (1.5, ValueError), (0.0, ValueError), (True, TypeError), ("3", TypeError)):
        with pytest.raises(exc):
            resolve_rank(bad, 8)


@pytest.mark.parametrize("shape", [(12, 20), (20, 12), (6, 4, 3, 3)])
@pytest.mark.parametrize("method,tol", [("exact", 1e-5), ("gram", 1e-4)])
def test_tail_energy_matches_numpy_on_random_matrices(shape, method, tol):
    w = torch.randn(*shape, generator=_gen(1))
    for k in (0, 1, 3, 5):
        for normalized in (True, False):
            got = float(tail_energy(w, k, normalized=normalized, method=method))
            assert got == pytest.approx(_np_tail(w, k, normalized), rel=tol, abs=tol)
    assert float(tail_energy(w, 0)) == pytest.approx(1.0)
    assert float(tail_energy(w, min(w.shape[0], w[0].numel()), method=method)) == 0.0  # k ≥ rank: nothing left


@pytest.mark.parametrize("shape", [(40, 60), (60, 40)])
def test_tail_energy_on_low_rank_plus_noise_all_methods(shape):
    w = _low_rank_plus_noise(*shape, rank=6, noise=0.05, seed=2)
    ref = _np_tail(w, 6)
    assert 1e-4 < ref < 1e-2  # a clear spectral gap at k = 6
    torch.manual_seed(0)
    assert float(tail_energy(w, 6, method="exact")) == pytest.approx(ref, rel=1e-10)
    assert float(tail_energy(w, 6, method="gram")) == pytest.approx(ref, rel=1e-6)
    low = float(tail_energy(w, 6, method="lowrank", niter=2, oversample=8))
    assert ref * (1 - 1e-9) <= low <= ref * 1.01  # Ky Fan: a k-dim projection leaves at least the true tail
    # float32: the same within float32 accuracy
    w32 = w.float()
    assert float(tail_energy(w32, 6, method="exact")) == pytest.approx(ref, rel=1e-3)
    assert float(tail_energy(w32, 6, method="lowrank")) == pytest.approx(ref, rel=2e-2)


def test_lowrank_never_below_exact_on_flat_spectrum():
    w = torch.randn(30, 50, generator=_gen(3), dtype=torch.float64)
    torch.manual_seed(0)
    for k in (2, 5, 10):
        assert float(tail_energy(w, k, method="lowrank", niter=1, oversample=2)) >= _np_tail(w, k) - 1e-12


@pytest.mark.parametrize("shape", [(10, 16), (16, 10), (6, 3, 2, 2)])
@pytest.mark.parametrize("normalized", [False, True])
@pytest.mark.parametrize("method", ["exact", "gram"])
def test_tail_energy_gradient_matches_analytic_and_full_svd_autograd(shape, normalized, method):
    k = 3
    w = torch.randn(*shape, generator=_gen(4), dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(tail_energy(w, k, normalized=normalized, method=method), w)
    mat = w.detach().reshape(shape[0], -1).numpy()
    analytic = _np_projector_grad(mat, k)
    if normalized:  # d(T/F) = (∇T·F − T·2W) / F²
        total, tail = (mat ** 2).sum(), _np_tail(w.detach(), k, normalized=False)
        analytic = (analytic * total - tail * 2.0 * mat) / total ** 2
    np.testing.assert_allclose(grad.reshape(shape[0], -1).numpy(), analytic, rtol=1e-8, atol=1e-10)
    # autograd through torch.linalg.svd (U, S, Vh) of the flattened weight
    w2 = w.detach().clone().requires_grad_(True)
    s = torch.linalg.svd(w2.reshape(shape[0], -1), full_matrices=False)[1]
    ref = (s[k:] ** 2).sum() / ((s ** 2).sum() if normalized else 1.0)
    (ref_grad,) = torch.autograd.grad(ref, w2)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("shape", [(12, 30), (30, 12)])
def test_projected_tail_gradient_is_projector_at_fixed_basis(shape):
    w = torch.randn(*shape, generator=_gen(5), dtype=torch.float64, requires_grad=True)
    side = min(shape)
    basis = torch.linalg.qr(torch.randn(side, 4, generator=_gen(6), dtype=torch.float64))[0]  # any orthonormal B
    val = projected_tail_energy(w, basis, normalized=False)
    (grad,) = torch.autograd.grad(val, w)
    m, b = w.detach().numpy(), basis.numpy()
    p = b @ b.T
    left = shape[0] <= shape[1]
    proj = p @ m if left else m @ p
    assert val.item() == pytest.approx(((m - proj) ** 2).sum(), rel=1e-12)
    np.testing.assert_allclose(grad.numpy(), 2.0 * (m - proj), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError):
        projected_tail_energy(w, torch.zeros(side + 1, 4, dtype=torch.float64))


@pytest.mark.parametrize("shape", [(40, 60), (60, 40)])
def test_lowrank_gradient_is_exact_gradient_at_its_basis(shape):
    w = _low_rank_plus_noise(*shape, rank=5, noise=0.05, seed=7).requires_grad_(True)
    torch.manual_seed(11)
    basis = top_subspace(w, 5)
    torch.manual_seed(11)  # same random sketch, so tail_energy uses the same basis
    (grad,) = torch.autograd.grad(tail_energy(w, 5, normalized=False, method="lowrank"), w)
    m, b = w.detach().numpy(), basis.numpy()
    fixed = 2.0 * (m - b @ (b.T @ m)) if shape[0] <= shape[1] else 2.0 * (m - (m @ b) @ b.T)
    np.testing.assert_allclose(grad.numpy(), fixed, rtol=1e-10, atol=1e-12)
    # and with a gapped spectrum that subspace gradient is close to the exact one
    exact = _np_projector_grad(m, 5)
    assert np.linalg.norm(grad.numpy() - exact) <= 0.02 * np.linalg.norm(exact)


@pytest.mark.parametrize("method", ["exact", "gram", "lowrank"])
def test_top_subspace_spans_top_singular_vectors(method):
    w = _low_rank_plus_noise(20, 35, rank=4, noise=0.01, seed=8)
    torch.manual_seed(0)
    b = top_subspace(w, 4, method=method).numpy()
    u = np.linalg.svd(w.numpy(), full_matrices=False)[0][:, :4]
    np.testing.assert_allclose(b.T @ b, np.eye(4), atol=1e-10)
    np.testing.assert_allclose(b @ b.T, u @ u.T, atol=1e-3)


@pytest.mark.parametrize("n,d", [(12, 8), (6, 10)])
def test_feature_tail_energy_is_centred_and_matches_numpy(n, d):
    f = torch.randn(n, d, generator=_gen(9), dtype=torch.float64) * torch.linspace(3.0, 0.2, d, dtype=torch.float64)
    fc = f.numpy() - f.numpy().mean(0, keepdims=True)
    s = np.linalg.svd(fc, compute_uv=False)
    for k in (1, 3):
        ref = (s[k:] ** 2).sum() / (s ** 2).sum()
        for method in ("exact", "gram"):
            got = feature_tail_energy(f, k, method=method)
            assert float(got) == pytest.approx(ref, rel=1e-8)
            shifted = feature_tail_energy(f + 7.5 * torch.randn(1, d, generator=_gen(10), dtype=torch.float64),
                                          k, method=method)
            assert float(shifted) == pytest.approx(float(got), rel=1e-8)
        assert float(feature_tail_energy(f, k, normalized=False)) == pytest.approx((s[k:] ** 2).sum(), rel=1e-8)
    # uncentred tail differs: centring matters
    assert abs(float(tail_energy(f + 5.0, 1)) - float(feature_tail_energy(f + 5.0, 1))) > 1e-2
    with pytest.raises(ValueError):
        feature_tail_energy(f[None], 1)


@pytest.mark.parametrize("method", ["exact", "gram"])
def test_feature_tail_energy_gradcheck(method):
    f = torch.randn(6, 4, generator=_gen(12), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: feature_tail_energy(x, 1, method=method), (f,))
    assert torch.autograd.gradcheck(lambda x: feature_tail_energy(x, 2, normalized=False, method=method), (f,))


def test_nuclear_norm_and_gradient_vs_numpy():
    w = torch.randn(7, 11, generator=_gen(13), dtype=torch.float64, requires_grad=True)
    u, s, vt = np.linalg.svd(w.detach().numpy(), full_matrices=False)
    val = nuclear_norm(w)
    assert val.item() == pytest.approx(s.sum(), rel=1e-12)
    (grad,) = torch.autograd.grad(val, w)
    np.testing.assert_allclose(grad.numpy(), u @ vt, rtol=1e-8, atol=1e-10)
    conv = torch.randn(4, 2, 3, 3, generator=_gen(14))
    assert float(nuclear_norm(conv)) == pytest.approx(
        np.linalg.svd(conv.reshape(4, -1).double().numpy(), compute_uv=False).sum(), rel=1e-5)


def test_top_singular_value_converges_warm_starts_and_has_gradient_uv():
    g = _gen(15)
    # a known spectrum with σ2/σ1 = 0.9, so cold power iteration needs many steps
    q1 = torch.linalg.qr(torch.randn(30, 30, generator=g, dtype=torch.float64))[0]
    q2 = torch.linalg.qr(torch.randn(20, 20, generator=g, dtype=torch.float64))[0]
    spectrum = torch.cat([torch.tensor([10.0, 9.0], dtype=torch.float64), torch.linspace(5.0, 0.1, 18,
                                                                                        dtype=torch.float64)])
    w = (q1[:, :20] * spectrum) @ q2.T
    ref = np.linalg.svd(w.numpy(), compute_uv=False)[0]
    torch.manual_seed(0)
    sigma, state = top_singular_value(w, n_iter=500, tol=1e-12)
    assert float(sigma) == pytest.approx(ref, rel=1e-9)
    cold = state.iterations
    assert 10 < cold < 500
    # the weight moves a little (one SGD step); the warm start needs far fewer iterations than a cold one
    w2 = w + 1e-4 * torch.randn(30, 20, generator=g, dtype=torch.float64)
    sigma2, warm_state = top_singular_value(w2, n_iter=500, tol=1e-12, state=state)
    torch.manual_seed(1)
    _, cold_state = top_singular_value(w2, n_iter=500, tol=1e-12)
    assert float(sigma2) == pytest.approx(np.linalg.svd(w2.numpy(), compute_uv=False)[0], rel=1e-9)
    assert warm_state.iterations < cold_state.iterations / 2
    # fixed n_iter without tol: exactly n_iter iterations, and the estimate never exceeds σ_max
    s5, st5 = top_singular_value(w, n_iter=5)
    assert st5.iterations == 5 and float(s5) <= ref + 1e-9
    # gradient u vᵀ
    wg = w.clone().requires_grad_(True)
    sigma, _ = top_singular_value(wg, n_iter=500, tol=1e-14, state=state)
    (grad,) = torch.autograd.grad(sigma, wg)
    u, _, vt = np.linalg.svd(w.numpy())
    np.testing.assert_allclose(grad.numpy(), np.outer(u[:, 0], vt[0]), atol=1e-6)
    with pytest.raises(ValueError):
        top_singular_value(w.T, state=state)


def _counting_svd_lowrank(monkeypatch) -> list[int]:
    calls: list[int] = []
    original = torch.svd_lowrank

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "svd_lowrank", counting)
    return calls


def test_penalty_refresh_interval_is_honoured(monkeypatch):
    calls = _counting_svd_lowrank(monkeypatch)
    torch.manual_seed(0)
    weights = {"a": torch.randn(16, 24), "b": torch.randn(16, 24), "c": torch.randn(20, 12), "tiny": torch.randn(3, 40)}
    pen = SpectralTailPenalty(k=4, refresh_every=3)
    for _ in range(7):  # refreshes at calls 0, 3, 6
        pen(weights)
    assert pen.refresh_count == 3
    assert len(calls) == 3 * 2  # two distinct shapes per refresh, each one batched call; "tiny" (3 ≤ k) never
    assert set(pen.last_values) == {"a", "b", "c", "tiny"} and pen.last_values["tiny"] == 0.0
    pen.reset()
    pen(weights)
    assert pen.refresh_count == 4
    # a new matrix (or a new shape) is refreshed on its own even between refreshes
    pen(dict(weights, d=torch.randn(8, 9)))
    assert pen.refresh_count == 5 and len(calls) == 4 * 2 + 1


@pytest.mark.parametrize("method,tol", [("exact", 1e-6), ("gram", 1e-6), ("lowrank", 2e-5)])
def test_penalty_equals_exact_tail_after_refresh_and_bounds_it_between(method, tol):
    torch.manual_seed(0)
    w = torch.nn.Parameter(_low_rank_plus_noise(24, 40, rank=5, noise=0.1, seed=16, dtype=torch.float32))
    w2 = torch.nn.Parameter(torch.randn(8, 4, 3, 3, generator=_gen(17)))  # conv weight, flattened to [8, 36]
    pen = SpectralTailPenalty(k=5, refresh_every=4, method=method)
    val = pen([w, w2])
    ref = [_np_tail(w.detach(), 5), _np_tail(w2.detach(), 5)]
    # float32 projection: ‖W‖² − ‖BᵀW‖² is accurate to ~eps·‖W‖² in absolute terms (normalized: ~1e-7)
    assert list(pen.last_values.values()) == pytest.approx(ref, abs=tol)
    assert val.item() == pytest.approx(np.mean(ref), abs=tol)
    opt = torch.optim.SGD([w, w2], lr=0.05)
    for _ in range(3):  # stale basis between refreshes: still an upper bound on the exact tail
        opt.zero_grad()
        pen([w, w2]).backward()
        opt.step()
        with torch.no_grad():
            cached = pen([w, w2])
        pen.calls -= 1  # the no_grad probe should not shift the refresh schedule
        exact = np.mean([_np_tail(w.detach(), 5), _np_tail(w2.detach(), 5)])
        assert float(cached) >= exact - 1e-6
    assert w2.grad.shape == w2.shape


def test_penalty_conv_weight_value_and_gradient():
    w = torch.randn(8, 4, 3, 3, generator=_gen(18), dtype=torch.float64, requires_grad=True)
    pen = SpectralTailPenalty(k=3, refresh_every=1, method="exact", normalized=False)
    val = pen({"conv": w})
    (grad,) = torch.autograd.grad(val, w)
    assert val.item() == pytest.approx(_np_tail(w.detach(), 3, normalized=False), rel=1e-10)
    np.testing.assert_allclose(grad.reshape(8, -1).numpy(), _np_projector_grad(w.detach().reshape(8, -1).numpy(), 3),
                               rtol=1e-8, atol=1e-10)


def test_penalty_fractional_k_and_small_matrices():
    w = torch.randn(16, 32, generator=_gen(19), dtype=torch.float64)
    pen = SpectralTailPenalty(k=0.25, method="exact")  # 0.25 · min(16, 32) = 4
    assert float(pen([w])) == pytest.approx(_np_tail(w, 4), rel=1e-10)
    small = SpectralTailPenalty(k=8)
    val = small([torch.randn(5, 30), torch.randn(8, 8)])  # min(out, in) ≤ k: penalty 0
    assert float(val) == 0.0 and small.refresh_count == 0
    mixed = SpectralTailPenalty(k=4, method="exact")
    assert float(mixed([w, torch.randn(3, 9)])) == pytest.approx(_np_tail(w, 4) / 2, rel=1e-10)  # mean counts 0s
    for kwargs in ({"k": -1}, {"k": 1.5}, {"k": 4, "refresh_every": 0}, {"k": 4, "method": "qr"}):
        with pytest.raises(ValueError):
            SpectralTailPenalty(**kwargs)
    with pytest.raises(ValueError):
        SpectralTailPenalty(k=2)([])
    with pytest.raises(ValueError):
        SpectralTailPenalty(k=2)([torch.randn(5)])


def test_sgd_with_penalty_lowers_tail_energy():
    g = _gen(20)
    w0 = torch.randn(24, 32, generator=g) / 32 ** 0.5
    x = torch.randn(128, 32, generator=g)
    y = x @ (torch.randn(24, 32, generator=g) / 32 ** 0.5).T

    def train(lam: float) -> float:
        torch.manual_seed(0)
        w = torch.nn.Parameter(w0.clone())
        pen = SpectralTailPenalty(k=4, refresh_every=5)
        opt = torch.optim.SGD([w], lr=0.1)
        for _ in range(30):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(x @ w.T, y) + lam * pen([w])
            loss.backward()
            opt.step()
        return _np_tail(w.detach(), 4)

    before, plain, penalized = _np_tail(w0, 4), train(0.0), train(1.0)
    assert penalized < plain - 0.05 and penalized < before - 0.05


@pytest.mark.parametrize("k, expected", [(16, 16), (16.0, 16), (1, 1), (0.25, 0.25)])
def test_rank_spec_one_rule(k, expected):
    from qclip.spectral.penalties import rank_spec, resolve_rank

    out = rank_spec(k)
    assert out == expected and type(out) is type(expected)
    assert resolve_rank(out, 64) == (16 if k == 16 else 1 if k == 1 else 16)


def test_rank_spec_rejects_bools_and_strings():
    from qclip.spectral.penalties import rank_spec

    for bad in (True, "8", None):
        with pytest.raises(TypeError):
            rank_spec(bad)
