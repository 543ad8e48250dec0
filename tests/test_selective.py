"""Selective prediction (risk–coverage, AURC, AUGRC, accuracy at coverage) against hand-computed numbers, brute force
over tie-breaking orders, the AUGRC–AUROC identity of Traub et al. (sklearn) and torch-uncertainty."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from qclip.evals.metrics import accuracy_at_coverage, augrc, aurc, risk_coverage_curve, selective_metrics

# conf .9 R, .8 W, .7 R, .6 R, .5 W (already sorted): errors answered E_1..E_5 = 0, 1, 1, 1, 2
CONF = [0.9, 0.8, 0.7, 0.6, 0.5]
RIGHT = [True, False, True, True, False]

# .9 R, then a tie group at .7 holding R, W, W, then .2 R; E_k spreads the group's 2 errors evenly over its 3 slots:
# E_1..E_5 = 0, 2/3, 4/3, 2, 2
TIE_CONF = [0.7, 0.2, 0.7, 0.9, 0.7]
TIE_RIGHT = [False, True, True, True, False]


def test_hand_computed_no_ties():
    # risks r(k/5) = 0, 1/2, 1/3, 1/4, 2/5: AURC = (89/60) / 5
    assert aurc(CONF, RIGHT) == pytest.approx(89 / 300, abs=1e-15)
    # trapezoid of E_k/5 from (0, 0): (0 + ½ + 1 + 1 + 3/2) / 25
    assert augrc(CONF, RIGHT) == pytest.approx(4 / 25, abs=1e-15)
    # k = ⌈0.8·5⌉ = 4: 1 − 1/4; k = ⌈4.5⌉ = 5: 3/5; k = ⌈2.5⌉ = 3: 2/3; k = ⌈0.01·5⌉ = 1: the top one is right
    assert accuracy_at_coverage(CONF, RIGHT, 0.8) == pytest.approx(0.75)
    assert accuracy_at_coverage(CONF, RIGHT, 0.9) == pytest.approx(0.6)
    assert accuracy_at_coverage(CONF, RIGHT, 0.5) == pytest.approx(2 / 3)
    assert accuracy_at_coverage(CONF, RIGHT, 0.01) == 1.0
    cov, risk, thr = risk_coverage_curve(CONF, RIGHT)
    torch.testing.assert_close(cov, torch.tensor([0.2, 0.4, 0.6, 0.8, 1.0], dtype=torch.float64))
    torch.testing.assert_close(risk, torch.tensor([0, 1 / 2, 1 / 3, 1 / 4, 2 / 5], dtype=torch.float64))
    torch.testing.assert_close(thr, torch.tensor(CONF, dtype=torch.float64))


def test_hand_computed_ties():
    # r(k/5) = 0, (2/3)/2, (4/3)/3, 2/4, 2/5 = 0, 1/3, 4/9, 1/2, 2/5: sum 151/90
    assert aurc(TIE_CONF, TIE_RIGHT) == pytest.approx(151 / 450, abs=1e-15)
    # trapezoid: (0 + 1/3 + 1 + 5/3 + 2) / 25 = 5/25
    assert augrc(TIE_CONF, TIE_RIGHT) == pytest.approx(0.2, abs=1e-15)
    # k = 2 cuts the tie group after one member: 1 − (2/3)/2
    assert accuracy_at_coverage(TIE_CONF, TIE_RIGHT, 0.4) == pytest.approx(2 / 3)
    cov, risk, thr = risk_coverage_curve(TIE_CONF, TIE_RIGHT)  # the tie group is one operating point
    torch.testing.assert_close(cov, torch.tensor([0.2, 0.8, 1.0], dtype=torch.float64))
    torch.testing.assert_close(risk, torch.tensor([0.0, 0.5, 0.4], dtype=torch.float64))
    torch.testing.assert_close(thr, torch.tensor([0.9, 0.7, 0.2], dtype=torch.float64))


def _sorted_order_values(conf: np.ndarray, right: np.ndarray) -> tuple[float, float, float]:
    """AURC (Riemann), AUGRC (trapezoid from 0) and accuracy of the top ⌈0.6·N⌉ in one fixed sorted order."""
    err = 1.0 - right[np.argsort(-conf, kind="stable")]
    n = len(err)
    cum = np.concatenate([[0.0], np.cumsum(err)])
    k = np.arange(1, n + 1)
    top = math.ceil(0.6 * n)
    return float(np.mean(cum[1:] / k)), float(np.sum(cum[1:] + cum[:-1]) / (2 * n * n)), 1 - cum[top] / top


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ties_equal_mean_over_all_tie_breaking_orders(seed):
    # brute force: feed every permutation of the rows to a stable sort (so every tie-breaking order appears equally
    # often) and average; the interpolated values must equal that mean
    rng = np.random.default_rng(seed)
    conf = rng.choice([0.2, 0.5, 0.9], size=7)
    right = rng.random(7) < 0.5
    values = np.array([_sorted_order_values(conf[list(p)], right[list(p)])
                       for p in itertools.permutations(range(7))])
    expected = values.mean(axis=0)
    assert aurc(conf, right) == pytest.approx(expected[0], abs=1e-12)
    assert augrc(conf, right) == pytest.approx(expected[1], abs=1e-12)
    assert accuracy_at_coverage(conf, right, 0.6) == pytest.approx(expected[2], abs=1e-12)


@pytest.mark.parametrize("seed,n,decimals", [(0, 500, None), (1, 300, 1), (2, 1000, 2), (3, 50, 0)])
def test_augrc_auroc_identity_against_sklearn(seed, n, decimals):
    # Traub et al. 2024: AUGRC = (1 − AUROC_f)·acc·(1 − acc) + ½(1 − acc)², AUROC_f of confidence for right vs wrong
    rng = np.random.default_rng(seed)
    right = rng.random(n) < 0.7
    conf = rng.normal(0.0, 1.0, n) + 0.8 * right
    if decimals is not None:
        conf = np.round(conf, decimals)
    acc = right.mean()
    expected = (1 - roc_auc_score(right, conf)) * acc * (1 - acc) + 0.5 * (1 - acc) ** 2
    assert augrc(torch.from_numpy(conf), torch.from_numpy(right)) == pytest.approx(expected, abs=1e-12)
    if decimals is None:  # no ties: the plain sorted-order values
        ref_aurc, ref_augrc, ref_acc = _sorted_order_values(conf, right.astype(float))
        assert aurc(conf, right) == pytest.approx(ref_aurc, abs=1e-12)
        assert augrc(conf, right) == pytest.approx(ref_augrc, abs=1e-12)
        assert accuracy_at_coverage(conf, right, 0.6) == pytest.approx(ref_acc, abs=1e-12)


def test_invariant_to_row_order_and_monotone_transforms():
    rng = np.random.default_rng(4)
    right = rng.random(400) < 0.6
    conf = np.round(rng.random(400) * 0.5 + 0.4 * right, 2)  # ties
    base = (aurc(conf, right), augrc(conf, right), accuracy_at_coverage(conf, right, 0.8))
    perm = rng.permutation(400)
    for c, r in [(conf[perm], right[perm]), (np.exp(3 * conf) - 7, right), (np.log(conf + 1e-3), right)]:
        got = (aurc(c, r), augrc(c, r), accuracy_at_coverage(c, r, 0.8))
        assert got == pytest.approx(base, abs=1e-12)


def test_extremes_and_ordering():
    n, n_right = 10, 6
    right = np.array([True] * n_right + [False] * (n - n_right))
    oracle = right.astype(float) + np.linspace(0, 0.1, n)  # every right sample above every wrong one
    # oracle AURC: r(k/N) = 0 for k ≤ 6, (k − 6)/k after
    assert aurc(oracle, right) == pytest.approx(sum((k - 6) / k for k in range(7, 11)) / 10, abs=1e-15)
    # all four errors last: E = 0 (k ≤ 6), 1, 2, 3, 4; trapezoid (0.5 + 1.5 + 2.5 + 3.5) / 100
    assert augrc(oracle, right) == pytest.approx(0.08, abs=1e-15)
    assert accuracy_at_coverage(oracle, right, 0.6) == 1.0
    worst = -oracle  # every wrong sample above every right one
    assert aurc(worst, right) > aurc(oracle, right)
    assert augrc(worst, right) == pytest.approx(((1 - 0) * 0.6 * 0.4 + 0.5 * 0.16), abs=1e-15)  # AUROC_f = 0
    assert aurc(np.arange(5.0), np.ones(5)) == 0.0 and augrc(np.arange(5.0), np.ones(5)) == 0.0
    assert aurc(np.arange(5.0), np.zeros(5)) == 1.0 and augrc(np.arange(5.0), np.zeros(5)) == 0.5
    # moving one error below a right answer strictly lowers both areas
    conf = np.array(CONF)
    swapped = conf.copy()
    swapped[[1, 2]] = swapped[[2, 1]]  # the .8 W and .7 R trade confidences
    assert aurc(swapped, RIGHT) < aurc(conf, RIGHT) and augrc(swapped, RIGHT) < augrc(conf, RIGHT)


def test_selective_metrics_on_probs():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(2.0 * torch.randn(300, 5, generator=g, dtype=torch.float64), 1)
    labels = torch.multinomial(probs, 1, generator=g).squeeze(1)  # calibrated: confidence predicts correctness
    out = selective_metrics(probs, labels)
    assert list(out) == ["aurc", "augrc", "acc_at_80", "acc_at_90"]
    conf, right = probs.amax(1).numpy(), (probs.argmax(1) == labels).numpy()
    ref_aurc, ref_augrc, _ = _sorted_order_values(conf, right.astype(float))
    assert out["aurc"] == pytest.approx(ref_aurc, abs=1e-12) and out["augrc"] == pytest.approx(ref_augrc, abs=1e-12)
    top = np.argsort(-conf, kind="stable")
    assert out["acc_at_80"] == pytest.approx(right[top[:240]].mean(), abs=1e-12)
    assert out["acc_at_90"] == pytest.approx(right[top[:270]].mean(), abs=1e-12)
    assert all(isinstance(v, float) for v in out.values())
    assert out["acc_at_80"] > right.mean()  # confidence carries signal here


def test_validation():
    with pytest.raises(ValueError, match="non-empty 1-D"):
        aurc([], [])
    with pytest.raises(ValueError, match="shape of confidence"):
        augrc([0.1, 0.2], [1])
    with pytest.raises(ValueError, match="0/1"):
        aurc([0.1, 0.2], [1, 2])
    with pytest.raises(ValueError, match="finite"):
        aurc([0.1, float("nan")], [1, 0])
    with pytest.raises(ValueError, match=r"coverage must be a number in \(0, 1\]"):
        accuracy_at_coverage([0.1, 0.2], [1, 0], 0.0)
    with pytest.raises(ValueError, match="coverage"):
        accuracy_at_coverage([0.1, 0.2], [1, 0], 1.5)
    with pytest.raises(ValueError, match="softmax_probs"):
        selective_metrics(torch.tensor([[2.0, -1.0]]), torch.tensor([0]))


@pytest.mark.parametrize("seed,n", [(0, 50), (1, 777), (2, 3000)])
def test_against_torch_uncertainty(seed, n):
    # torch-uncertainty (0.13) integrates the points k = 1..N with the trapezoid rule and divides by 1 − 1/N
    # (see the aurc/augrc docstrings); continuous scores, so its unstable argsort meets no ties
    tu = pytest.importorskip("torch_uncertainty.metrics.classification")
    g = torch.Generator().manual_seed(seed)
    logits = 1.5 * torch.randn(n, 7, generator=g, dtype=torch.float64)
    labels = torch.where(torch.rand(n, generator=g) < 0.5, logits.argmax(1), torch.randint(7, (n,), generator=g))
    probs = torch.softmax(logits, 1)
    m_aurc, m_augrc = tu.AURC(), tu.AUGRC()
    m_aurc.update(probs, labels)
    m_augrc.update(probs, labels)
    ref_aurc, ref_augrc = float(m_aurc.compute()), float(m_augrc.compute())
    conf, right = probs.amax(1), probs.argmax(1) == labels
    _, risk, _ = risk_coverage_curve(conf, right)
    r1, rn = float(risk[0]), float(risk[-1])
    assert aurc(conf, right) == pytest.approx(ref_aurc * (1 - 1 / n) + (r1 + rn) / (2 * n), abs=1e-9)
    assert augrc(conf, right) == pytest.approx(ref_augrc * (1 - 1 / n) + r1 / (2 * n * n), abs=1e-9)
    if n >= 777:  # the conventions agree to O(1/N)
        assert aurc(conf, right) == pytest.approx(ref_aurc, abs=2 / n)
        assert augrc(conf, right) == pytest.approx(ref_augrc, abs=1 / n)
