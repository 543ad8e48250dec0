"""Split-conformal prediction sets: hand-computed scores and thresholds, a loop-by-loop numpy transcription of the
papers' score definitions, the exact finite-sample coverage over seeded splits, and TorchCP's frozen outputs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from qclip.evals.metrics import (CONFORMAL_METHODS, conformal_scores, conformal_threshold, coverage, mean_set_size,
                                 prediction_sets, split_conformal)


def calibrated_data(seed: int, n: int, c: int, scale: float = 1.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax of Gaussian logits with each label drawn from its own row: exchangeable and calibrated."""
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(scale * torch.randn(n, c, generator=g, dtype=torch.float64), 1)
    return probs, torch.multinomial(probs, 1, generator=g).squeeze(1)


# --- reference: the papers' scores, one label at a time -------------------------------------------------------------

def reference_score(p: np.ndarray, y: int, method: str, u: float | None, lam: float, k_reg: int) -> float:
    """THR 1 − p_y (Sadinle et al.); APS = mass of the classes ranked above y, plus p_y (non-randomized) or
    (1 − u)·p_y (randomized, written as C_{o(y)} − u·p_y), ranked by descending p with ties to the lower index
    (Romano et al.); RAPS adds λ·max(0, o(y) − k_reg) with o(y) the 1-based rank (Angelopoulos et al.)."""
    if method == "thr":
        return 1.0 - p[y]
    above = [j for j in range(len(p)) if p[j] > p[y] or (p[j] == p[y] and j < y)]
    rank = len(above) + 1
    score = sum(p[j] for j in above) + (p[y] if u is None else (1 - u) * p[y])
    if method == "raps":
        score += lam * max(0, rank - k_reg)
    return score


def test_scores_hand_computed():
    probs = torch.tensor([[0.2, 0.5, 0.3], [0.4, 0.2, 0.4]], dtype=torch.float64)
    # row 0 ranks class 1 (.5), 2 (.3), 0 (.2): C = .5, .8, 1.0
    thr = conformal_scores(probs, "thr")
    torch.testing.assert_close(thr[0], torch.tensor([0.8, 0.5, 0.7], dtype=torch.float64))
    torch.testing.assert_close(conformal_scores(probs, "lac"), thr)
    aps = conformal_scores(probs, "aps", randomized=False)
    torch.testing.assert_close(aps[0], torch.tensor([1.0, 0.5, 0.8], dtype=torch.float64))
    # row 1 ties classes 0 and 2 at .4: the lower index ranks first, so 0 -> .4, 2 -> .8, 1 -> 1.0
    torch.testing.assert_close(aps[1], torch.tensor([0.4, 1.0, 0.8], dtype=torch.float64))
    # randomized with u = .25 on row 0: C − u·p = 1 − .05, .5 − .125, .8 − .075
    rnd = conformal_scores(probs, "aps", u=torch.tensor([0.25, 0.0]))
    torch.testing.assert_close(rnd[0], torch.tensor([0.95, 0.375, 0.725], dtype=torch.float64))
    # RAPS λ = .1, k_reg = 1 (non-randomized): + .1·(rank − 1)⁺ = 0, .1, .2 for ranks 1, 2, 3
    raps = conformal_scores(probs, "raps", randomized=False, lam=0.1, k_reg=1)
    torch.testing.assert_close(raps[0], torch.tensor([1.2, 0.5, 0.9], dtype=torch.float64))
    # sets at threshold .8: THR keeps p ≥ .2 (all of row 0); APS keeps the top two of row 0, classes 0 and 2 of row 1
    sets = prediction_sets(probs, 0.8, "aps", randomized=False)
    assert sets.tolist() == [[False, True, True], [True, False, True]]
    assert prediction_sets(probs, 0.8, "thr").tolist() == [[True, True, True], [True, True, True]]
    assert prediction_sets(probs, 0.45, "raps", randomized=False, lam=0.1, k_reg=1).tolist() == [[False] * 3,
                                                                                                 [True, False, False]]


@pytest.mark.parametrize("method,randomized", [("thr", False), ("aps", False), ("aps", True), ("raps", False),
                                               ("raps", True)])
def test_scores_match_loop_reference(method, randomized):
    probs, _ = calibrated_data(0, 40, 6)
    probs[0] = torch.tensor([0.3, 0.1, 0.3, 0.1, 0.1, 0.1], dtype=torch.float64)  # ties
    u = torch.rand(40, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours = conformal_scores(probs, method, randomized=randomized, lam=0.05, k_reg=2, u=u)
    p = probs.numpy()
    ref = [[reference_score(p[i], y, method, float(u[i]) if randomized else None, 0.05, 2) for y in range(6)]
           for i in range(40)]
    np.testing.assert_allclose(ours.numpy(), np.array(ref), rtol=0, atol=1e-12)
    # default uniforms come from torch.Generator(seed)
    default = conformal_scores(probs, method, randomized=randomized, lam=0.05, k_reg=2, seed=1)
    torch.testing.assert_close(default, ours)


def test_threshold_hand_computed():
    scores = torch.tensor([0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6])  # n = 9
    assert conformal_threshold(scores, 0.2) == pytest.approx(0.8)  # ⌈10·0.8⌉ = 8th smallest
    assert conformal_threshold(scores, 0.5) == pytest.approx(0.5)  # ⌈5⌉ = 5th
    # 10·(1 − 0.7) is 3.0000000000000004 in floats; the rank is 3, not 4
    assert 10 * (1 - 0.7) > 3
    assert conformal_threshold(scores, 0.7) == pytest.approx(0.3)
    assert conformal_threshold(scores, 0.05) == math.inf  # ⌈9.5⌉ = 10 > 9
    rng = np.random.default_rng(0)
    for n, alpha in [(50, 0.1), (101, 0.05), (1000, 0.2), (7, 0.3)]:
        s = rng.random(n)
        k = math.ceil((n + 1) * (1 - alpha) - 1e-9)
        ref = np.quantile(s, k / n, method="inverted_cdf")  # the k-th order statistic
        assert conformal_threshold(torch.from_numpy(s), alpha) == ref == np.sort(s)[k - 1]


def test_coverage_and_set_size_hand_computed():
    sets = torch.tensor([[1, 0, 1], [0, 0, 0], [1, 1, 1]])
    labels = torch.tensor([2, 0, 1])
    assert coverage(sets, labels) == pytest.approx(2 / 3)
    assert mean_set_size(sets) == pytest.approx(5 / 3)
    assert coverage(sets.bool(), labels) == pytest.approx(2 / 3)


@pytest.mark.parametrize("method", ["thr", "aps", "raps"])
def test_split_coverage_is_exact_finite_sample_value(method):
    # With n = 50 calibration rows and α = 0.1, the rank is k = ⌈51·0.9⌉ = 46; for a uniformly random split of a
    # fixed data set with tie-free scores, each test row is covered with probability exactly k/(n+1) = 46/51, inside
    # [1 − α, 1 − α + 1/(n+1)] = [0.9, 0.9196]. The mean over seeded splits must be within 4 standard errors of it
    # (one order statistic higher would give 47/51, about 10 standard errors away).
    probs, labels = calibrated_data(1, 600, 10)
    runs = [split_conformal(probs, labels, alpha=0.1, method=method, cal_fraction=1 / 12, seed=s) for s in range(500)]
    assert {r["n_cal"] for r in runs} == {50} and {r["n_test"] for r in runs} == {550}
    cov = np.array([r["coverage"] for r in runs])
    se = cov.std(ddof=1) / math.sqrt(len(cov))
    assert 0.001 < se < 0.003
    assert abs(cov.mean() - 46 / 51) < 4 * se
    assert cov.mean() > 0.9 - 4 * se
    if method == "thr":
        assert cov.mean() < 0.9 + 1 / 51 + 4 * se


def test_thr_gives_smallest_sets_on_calibrated_data():
    # Sadinle et al. 2019: on calibrated probabilities THR/LAC minimizes the expected set size at a given coverage
    probs, labels = calibrated_data(2, 1000, 10)
    size = {(m, rnd): np.mean([split_conformal(probs, labels, method=m, seed=s, randomized=rnd)["set_size"]
                               for s in range(30)]) for m in ("thr", "aps", "raps") for rnd in (True, False)}
    assert size["thr", True] == size["thr", False]  # THR draws no uniforms
    for m in ("aps", "raps"):
        assert size["thr", True] < size[m, True] < size[m, False]  # randomization also shrinks APS/RAPS sets


def test_split_conformal_result_and_determinism():
    probs, labels = calibrated_data(3, 201, 5)
    out = split_conformal(probs, labels, alpha=0.2, method="lac", cal_fraction=0.5, seed=7)
    assert set(out) == {"coverage", "set_size", "alpha", "method", "n_cal", "n_test", "threshold"}
    assert out["method"] == "thr" and out["alpha"] == 0.2
    assert out["n_cal"] == 101 and out["n_test"] == 100  # round(100.5) = 101 (half up)
    # recompute by hand from the documented split: randperm of a Generator(seed); first n_cal rows calibrate
    perm = torch.randperm(201, generator=torch.Generator().manual_seed(7))
    cal, test = perm[:101], perm[101:]
    s_cal = 1 - probs[cal, labels[cal]]
    q = float(np.sort(s_cal.numpy())[math.ceil(102 * 0.8) - 1])
    sets = (1 - probs[test]) <= q
    assert out["threshold"] == q
    assert out["coverage"] == pytest.approx(float(sets[torch.arange(100), labels[test]].double().mean()))
    assert out["set_size"] == pytest.approx(float(sets.double().sum(1).mean()))
    assert split_conformal(probs, labels, seed=7) == split_conformal(probs, labels, seed=7)
    assert split_conformal(probs, labels, seed=7) != split_conformal(probs, labels, seed=8)
    tiny = split_conformal(probs[:10], labels[:10], alpha=0.05, method="aps")  # ⌈6·0.95⌉ = 6 > 5: full sets
    assert tiny["threshold"] == math.inf and tiny["coverage"] == 1.0 and tiny["set_size"] == 5.0


def test_validation():
    probs, labels = calibrated_data(4, 20, 3)
    with pytest.raises(ValueError, match="method must be one of"):
        conformal_scores(probs, "naive")
    assert CONFORMAL_METHODS == ("thr", "lac", "aps", "raps")
    with pytest.raises(ValueError, match="alpha"):
        conformal_threshold(torch.rand(10), 1.0)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        conformal_threshold(torch.rand(2, 3), 0.1)
    with pytest.raises(ValueError, match="u must be"):
        conformal_scores(probs, "aps", u=torch.rand(19))
    with pytest.raises(ValueError, match="k_reg"):
        conformal_scores(probs, "raps", k_reg=-1)
    with pytest.raises(ValueError, match="lam"):
        conformal_scores(probs, "raps", lam=-0.1)
    with pytest.raises(ValueError, match="cal_fraction"):
        split_conformal(probs, labels, cal_fraction=1.0)
    with pytest.raises(ValueError, match="n_cal = 0"):
        split_conformal(probs, labels, cal_fraction=0.01)
    with pytest.raises(ValueError, match="softmax_probs"):
        split_conformal(torch.log(probs), labels)
    with pytest.raises(ValueError, match="labels"):
        coverage(torch.ones(3, 3, dtype=torch.bool), torch.tensor([0, 1, 3]))
    with pytest.raises(ValueError, match="0/1"):
        mean_set_size(torch.full((2, 2), 2))


# --- TorchCP (frozen reference) -------------------------------------------------------------------------------------
# TorchCP is not a dependency (its package __init__s need torch_geometric, transformers and torchsort): its outputs
# for fixed inputs are frozen in tests/reference/torchcp_conformal.npz by tests/reference/make_torchcp_reference.py
# (TorchCP 1.2.1), inputs included, so this runs everywhere and does not depend on torch's random streams.

TORCHCP = Path(__file__).parent / "reference" / "torchcp_conformal.npz"


@pytest.mark.parametrize("seed", [0, 1])
def test_against_torchcp(seed):
    ref = np.load(TORCHCP)
    probs, labels = (torch.from_numpy(ref[f"s{seed}/{k}"]) for k in ("probs", "labels"))
    n_cal, alpha, lam, k_reg = 300, 0.1, 0.05, 2
    cal, test = slice(0, n_cal), slice(n_cal, None)
    # TorchCP builds the RAPS penalty λ·(rank − k_reg) in float32: agreement to float32 rounding of values ≤ ~1.3
    # (half an ulp of 2 is 1.2e-7); THR/APS are float64 sums of ≤ 8 terms: a few ulps of 1
    tol = {"thr": 1e-12, "aps": 1e-12, "raps": 1e-7}
    for method in ("thr", "aps", "raps"):
        ref_cal = torch.from_numpy(ref[f"s{seed}/{method}/cal_scores"])
        ours = conformal_scores(probs, method, randomized=False, lam=lam, k_reg=k_reg)
        ours_cal = ours[cal].gather(1, labels[cal].view(-1, 1)).squeeze(1)
        torch.testing.assert_close(ours_cal, ref_cal, rtol=0, atol=tol[method])
        q_ref = float(ref[f"s{seed}/{method}/q"])
        q = conformal_threshold(ours_cal, alpha)
        assert q == pytest.approx(q_ref, abs=tol[method])
        ours_sets = prediction_sets(probs[test], q, method, randomized=False, lam=lam, k_reg=k_reg)
        ref_sets = torch.from_numpy(ref[f"s{seed}/{method}/sets"])
        # a set member whose score sits within tol of q may flip: count them and allow exactly those
        near = (conformal_scores(probs[test], method, randomized=False, lam=lam, k_reg=k_reg) - q).abs() <= tol[method]
        assert torch.equal(ours_sets[~near], ref_sets[~near])
        assert 0.85 < coverage(ours_sets, labels[test]) < 0.97
    # randomized APS/RAPS true-label scores: TorchCP drew one torch.rand(N) per call, stored as u. (Its all-label
    # scores draw a uniform per (row, label), so its randomized sets need not be prefixes; ours use one uniform per
    # row, as in Romano et al., and are not compared.)
    for method in ("aps", "raps"):
        u = torch.from_numpy(ref[f"s{seed}/{method}/u"])
        ours = conformal_scores(probs[cal], method, u=u, lam=lam, k_reg=k_reg)
        torch.testing.assert_close(ours.gather(1, labels[cal].view(-1, 1)).squeeze(1),
                                   torch.from_numpy(ref[f"s{seed}/{method}/randomized_cal_scores"]),
                                   rtol=0, atol=tol[method])
