"""Paired tests of a variant against FP, each against an independent reference on data with known answers:
McNemar's exact test (scipy's binomtest), DeLong's AUROC test (sklearn's AUROC, the O(m·n) placement matrix and a
large bootstrap), the vectorised bootstrap (index-by-index resamples, its p floor, uniform p under a null), the
power formulas, and `compare_to_fp` on synthetic logits. Everything is seeded and CPU-independent."""

from __future__ import annotations

import ast
import inspect
import math
from statistics import NormalDist

import numpy as np
import pytest
import qclip.evals.paired as paired_module
import torch
from qclip.evals.metrics import (
    delong,
    ece_of_confidence,
    ece_weighted,
    mcnemar,
    mde,
    min_resamples,
    n_to_resolve,
    paired_bootstrap,
    paired_bootstrap_many,
    resample_counts,
    sign_test,
    top_label,
)
from qclip.evals.paired import compare_labelled, compare_to_fp, family_resamples

# ------------------------------------------------------------------------------------------------ McNemar


@pytest.mark.parametrize("k,n", [(0, 0), (0, 1), (3, 10), (10, 10), (7, 30), (50, 120), (400, 1000), (0, 2000)])
def test_sign_test_matches_scipy_binomtest(k, n):
    from scipy.stats import binomtest

    expected = 1.0 if n == 0 else binomtest(k, n, 0.5, alternative="two-sided").pvalue
    # relative: the log-space sum and scipy's pmf sum agree to float rounding; 0 of 2,000 underflows to the
    # smallest normal double instead of 0
    assert sign_test(k, n) == pytest.approx(max(expected, 2.2250738585072014e-308), rel=1e-9)
    assert sign_test(k, n) > 0


def test_mcnemar_counts_discordant_pairs_and_matches_binomtest():
    from scipy.stats import binomtest

    g = torch.Generator().manual_seed(0)
    a = torch.rand(800, generator=g) < 0.72
    b = torch.where(torch.rand(800, generator=g) < 0.9, a, ~a)  # b disagrees with a on ~10% of samples
    out = mcnemar(a.double(), b.double())
    better, worse = int((a & ~b).sum()), int((~a & b).sum())
    assert (out["better"], out["worse"], out["n"], out["test"]) == (better, worse, 800, "mcnemar")
    assert out["diff"] == pytest.approx(float(a.double().mean() - b.double().mean()), abs=1e-15)
    assert out["p"] == pytest.approx(binomtest(better, better + worse).pvalue, rel=1e-9)
    # Bonett–Price interval and its SE by hand
    p12, p21 = (better + 1) / 802, (worse + 1) / 802
    se = math.sqrt((p12 + p21 - (p12 - p21) ** 2) / 802)
    assert out["se"] == pytest.approx(se) and out["low"] == pytest.approx(p12 - p21 - 1.959963984540054 * se)
    same = mcnemar(a.double(), a.double())
    assert same["p"] == 1.0 and same["diff"] == 0.0 and same["low"] < 0 < same["high"]


def test_mcnemar_interval_covers_the_true_difference():
    # 400 paired samples per data set, P(only a right) = 0.08, P(only b right) = 0.05: true Δ = +0.03
    rng = np.random.default_rng(1)
    covered = 0
    for _ in range(400):
        u = rng.random(400)
        a = (u < 0.08) | (u >= 0.13) & (u < 0.83)
        b = (u >= 0.08) & (u < 0.83)
        out = mcnemar(torch.from_numpy(a), torch.from_numpy(b))
        covered += out["low"] <= 0.03 <= out["high"]
    assert 0.92 <= covered / 400 <= 0.98  # 95% nominal; binomial sd of the share over 400 sets ≈ 0.011


# ------------------------------------------------------------------------------------------------ DeLong
def _scores(seed: int, m: int = 300, n: int = 200) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two correlated scores of m ID (positive) and n OOD samples, rounded so that ties occur."""
    g = torch.Generator().manual_seed(seed)
    is_id = torch.cat([torch.ones(m), torch.zeros(n)])
    base = torch.randn(m + n, generator=g) + 1.0 * is_id
    a = torch.round((base + 0.5 * torch.randn(m + n, generator=g)) * 10) / 10
    b = torch.round((base + 0.8 * torch.randn(m + n, generator=g) + 0.3 * is_id) * 10) / 10
    return a.double(), b.double(), is_id


def test_delong_auroc_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    a, b, is_id = _scores(0)
    out = delong(a, b, is_id)
    assert out["auroc_a"] == pytest.approx(roc_auc_score(is_id.numpy(), a.numpy()), abs=1e-12)
    assert out["auroc_b"] == pytest.approx(roc_auc_score(is_id.numpy(), b.numpy()), abs=1e-12)
    assert out["diff"] == pytest.approx(out["auroc_a"] - out["auroc_b"], abs=1e-15)


def test_delong_variance_matches_the_placement_matrix():
    a, b, is_id = _scores(1)
    pos, neg = is_id > 0, is_id == 0

    def placements(s: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        x, y = s[pos].numpy()[:, None], s[neg].numpy()[None, :]
        psi = (x > y) + 0.5 * (x == y)  # the O(m·n) kernel of DeLong et al. (1988)
        return psi.mean(1), psi.mean(0)

    (v10a, v01a), (v10b, v01b) = placements(a), placements(b)
    m, n = int(pos.sum()), int(neg.sum())
    var = (np.var(v10a - v10b, ddof=1) / m + np.var(v01a - v01b, ddof=1) / n)
    out = delong(a, b, is_id)
    assert out["se"] == pytest.approx(math.sqrt(var), rel=1e-10)
    assert out["p"] == pytest.approx(2 * NormalDist().cdf(-abs(out["diff"]) / math.sqrt(var)), rel=1e-9)


def test_delong_variance_matches_a_large_bootstrap():
    a, b, is_id = _scores(2)
    pos, neg = is_id > 0, is_id == 0
    # AUROC of a resample from the placement kernel ψ(x_i, y_j), indexed by the resampled ID and OOD rows
    psi = [((s[pos, None] > s[None, neg]).double() + 0.5 * (s[pos, None] == s[None, neg]).double()).numpy()
           for s in (a, b)]
    m, n = int(pos.sum()), int(neg.sum())
    rng = np.random.default_rng(0)
    diffs = []
    for _ in range(4000):  # ID and OOD resampled separately, as DeLong's variance treats them
        i, j = rng.integers(m, size=m), rng.integers(n, size=n)
        diffs.append(psi[0][np.ix_(i, j)].mean() - psi[1][np.ix_(i, j)].mean())
    # the bootstrap SD's own relative error at B = 4000 is ≈ 1/√(2B) ≈ 1.1%; DeLong vs bootstrap differ by O(1/N)
    assert delong(a, b, is_id)["se"] == pytest.approx(np.std(diffs, ddof=1), rel=0.06)


def test_delong_of_identical_scores():
    a, _, is_id = _scores(3)
    out = delong(a, a.clone(), is_id)
    assert out["diff"] == 0.0 and out["se"] == 0.0 and out["p"] == 1.0 and out["mde"] is None


# ------------------------------------------------------------------------------------------------ bootstrap
def test_resample_counts_are_the_index_draws(monkeypatch):
    import qclip.evals.metrics.bootstrap as bootstrap

    gen = torch.Generator().manual_seed(4)
    counts = torch.cat(list(resample_counts(37, 600, seed=4)))  # 600 > one batch of 256; kept for reuse
    assert torch.equal(torch.cat(list(resample_counts(37, 600, seed=4))), counts)
    monkeypatch.setattr(bootstrap, "_STORED_BYTES", 0)  # too large to keep: drawn afresh, the same draws
    assert torch.equal(torch.cat(list(resample_counts(37, 600, seed=4))), counts)
    expected = []
    for start in range(0, 600, 256):
        idx = torch.randint(37, (min(256, 600 - start), 37), generator=gen)
        expected += [torch.bincount(row, minlength=37) for row in idx]
    assert torch.equal(counts, torch.stack(expected).float()) and (counts.sum(1) == 37).all()


def test_ece_weighted_equals_ece_of_confidence_per_resample():
    g = torch.Generator().manual_seed(3)
    probs = torch.softmax(torch.randn(2, 300, 7, generator=g) * 3, -1)
    labels = torch.randint(7, (300,), generator=g)
    (c0, r0), (c1, r1) = top_label(probs[0], labels), top_label(probs[1], labels)
    conf, correct = torch.stack([c0, c1]), torch.stack([r0, r1])
    full = ece_weighted(torch.ones(1, 300, dtype=torch.float64), conf, correct)
    assert full[0].tolist() == pytest.approx([ece_of_confidence(c0, r0), ece_of_confidence(c1, r1)], abs=1e-14)
    idx = torch.randint(300, (5, 300), generator=g)
    w = torch.stack([torch.bincount(i, minlength=300) for i in idx]).float()
    got = ece_weighted(w, conf, correct)
    for r, i in enumerate(idx):  # float32 weights: 7 significant digits
        assert got[r].tolist() == pytest.approx([ece_of_confidence(c0[i], r0[i]), ece_of_confidence(c1[i], r1[i])],
                                                abs=1e-5)


def _weighted_mean(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (w * x.to(w.dtype)).sum(1) / w.sum(1)


def test_bootstrap_p_has_its_floor_and_is_one_for_identical_predictions():
    x = torch.rand(300, generator=torch.Generator().manual_seed(1))
    far = paired_bootstrap(_weighted_mean, (x + 1.0,), (x,), n_boot=199, seed=0)
    assert far["p"] == pytest.approx(1 / 200) and far["resamples"] == 199  # every resample ≥ 1 away: k = 0
    assert far["diff"] == pytest.approx(1.0) and far["low"] == pytest.approx(1.0, abs=1e-5)
    same = paired_bootstrap(_weighted_mean, (x,), (x.clone(),), n_boot=99, seed=0)
    assert (same["diff"], same["low"], same["high"], same["p"], same["se"]) == (0.0, 0.0, 0.0, 1.0, 0.0)


def test_bootstrap_p_is_uniform_under_the_null():
    # exchangeable pairs: each sample's two values are swapped with probability ½, so Δ is symmetric about 0
    rng = np.random.default_rng(7)
    ps = []
    for i in range(200):
        u, v = rng.normal(size=60), rng.normal(size=60) + 0.5
        swap = rng.random(60) < 0.5
        a, b = np.where(swap, v, u), np.where(swap, u, v)
        ps.append(paired_bootstrap(_weighted_mean, (torch.from_numpy(a),), (torch.from_numpy(b),), n_boot=199,
                                   seed=i)["p"])
    ps = np.array(ps)
    assert ps.min() >= 1 / 200
    # uniform: share below 0.05 / 0.5 near 0.05 / 0.5 (binomial sd over 200 draws: 0.015 / 0.035)
    assert 0.01 <= (ps <= 0.05).mean() <= 0.10 and 0.38 <= (ps <= 0.5).mean() <= 0.62


def test_bootstrap_many_is_each_statistic_alone():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(2, 150, generator=g), torch.randn(2, 150, generator=g)
    both = paired_bootstrap_many(lambda w, x: (w @ x.T.to(w.dtype)) / w.sum(1, keepdim=True), (a,), (b,),
                                 n_boot=300, seed=3)
    for s in range(2):
        assert both[s] == pytest.approx(paired_bootstrap(_weighted_mean, (a[s],), (b[s],), n_boot=300, seed=3))


def test_min_resamples_puts_the_floor_below_holms_first_threshold():
    for m in (1, 6, 48, 144):
        b = min_resamples(m)
        assert 1 / (b + 1) <= 0.05 / (5 * m) < 1 / b  # the smallest such B
    assert min_resamples(48) == 4799
    assert family_resamples(100, 48) == 4799 and family_resamples(10_000, 48) == 10_000
    assert family_resamples(0, 48) == 0


# ------------------------------------------------------------------------------------------------ power
def test_mde_and_n_to_resolve_by_hand():
    z = NormalDist().inv_cdf(0.975) + NormalDist().inv_cdf(0.8)  # 1.95996 + 0.84162 = 2.80158
    assert mde(0.01) == pytest.approx(2.80158 * 0.01, rel=1e-5)
    assert n_to_resolve(500, 0.01, 0.014) == math.ceil(500 * (z * 0.01 / 0.014) ** 2)
    assert n_to_resolve(500, 0.01, 0.0) is None and mde(0.0) is None and n_to_resolve(500, None, 0.1) is None


def test_n_to_resolve_gives_the_stated_power():
    # McNemar with P(only a right) = 0.05, P(only b right) = 0.03 (Δ = +0.02): the N the SE at N = 400 predicts
    # should reject at α = 0.05 in about 80% of data sets of that N
    rng = np.random.default_rng(3)

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        u = rng.random(n)
        return torch.from_numpy((u < 0.05) | (u >= 0.08)), torch.from_numpy(u >= 0.05)

    se400 = math.sqrt((0.08 - 0.02 ** 2) / 400)  # the SE at N = 400 of these true proportions
    n_new = n_to_resolve(400, se400, 0.02)
    assert 1000 < n_new < 3000
    power = np.mean([mcnemar(*sample(n_new))["p"] <= 0.05 for _ in range(300)])
    assert 0.7 <= power <= 0.9  # 80% nominal; sd of the share over 300 sets ≈ 0.023, plus the normal approximation


# ------------------------------------------------------------------------------------------------ compare_to_fp
def _inputs(seed: int, shift: float = 0.0) -> dict:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(10, (400,), generator=torch.Generator().manual_seed(0))
    onehot = torch.nn.functional.one_hot(labels, 10).float()

    def logits(scale: float) -> torch.Tensor:
        return scale * (onehot * (1.0 + shift) + torch.randn(400, 10, generator=g))

    is_id = torch.cat([torch.ones(400), torch.zeros(150)])
    return {"id": (logits(3.0), labels), "corruptions": {"noise:3": (logits(2.0), labels)},
            "shift": {"s": (logits(2.0)[:90], labels[:90])},
            "ood": {"o": (torch.randn(550, generator=g) + is_id, is_id)}}


def test_compare_to_fp_on_synthetic_logits():
    fp, q = _inputs(0), _inputs(1, shift=0.3)
    out = compare_to_fp(fp, q, n_boot=499, seed=2)
    assert set(out) == {"id", "corruptions", "shift", "ood"} and set(out["corruptions"]) == {"noise:3"}
    (lg_fp, y), (lg_q, _) = fp["id"], q["id"]
    acc = lambda lg: float((lg.argmax(-1) == y).double().mean())  # noqa: E731
    assert out["id"]["acc1"]["test"] == "mcnemar" and out["id"]["acc1"]["diff"] == pytest.approx(acc(lg_q) - acc(lg_fp))
    ece = lambda lg: ece_of_confidence(*top_label(lg.double().softmax(-1), y))  # noqa: E731
    assert out["id"]["ece"]["test"] == "bootstrap" and out["id"]["ece"]["diff"] == pytest.approx(ece(lg_q) - ece(lg_fp),
                                                                                                 abs=1e-12)
    assert out["id"]["ece"]["p"] >= 1 / 500 and out["ood"]["o"]["auroc"]["test"] == "delong"
    assert out["shift"]["s"]["n"] == 90 and out["ood"]["o"]["n"] == 550
    # sets of one N share the resamples: each equals its own single-set comparison
    # (float32 products of another shape: equal to rounding, p to one resample)
    alone = compare_labelled(fp["corruptions"]["noise:3"][0], q["corruptions"]["noise:3"][0], y, n_boot=499, seed=2)
    together = out["corruptions"]["noise:3"]
    assert alone["acc1"] == together["acc1"] and alone["hash"] == together["hash"]
    assert {k: v for k, v in alone["ece"].items() if k not in ("p", "test")} == pytest.approx(
        {k: v for k, v in together["ece"].items() if k not in ("p", "test")}, rel=1e-5)
    assert alone["ece"]["p"] == pytest.approx(together["ece"]["p"], abs=1.5 / 500)
    # a variant with FP's logits: FP's digest, nothing to test
    same = compare_to_fp(fp, dict(fp), n_boot=99, seed=0)
    assert same["id"]["hash"] == compare_to_fp(q, fp, n_boot=0)["id"]["hash"] != out["id"]["hash"]
    assert all(same["id"][m]["p"] == 1.0 and same["id"][m]["diff"] == 0.0 for m in ("acc1", "ece"))
    assert same["ood"]["o"]["auroc"]["p"] == 1.0 and "ece" not in compare_to_fp(fp, q, n_boot=0)["id"]


def test_paired_module_takes_tensors_not_the_suite():
    tree = ast.parse(inspect.getsource(paired_module))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any(m and m.endswith("suite") for m in imported)  # no import cycle with the suite
