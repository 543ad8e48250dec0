"""Metrics against independent references: torchmetrics (ECE/MCE), sklearn (NLL, AUROC, AUPR), a transcription of
MCM's FPR95 code, and hand-computed numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score
from torchmetrics.classification import MulticlassCalibrationError

from qclip.experiments.plots import plot_reliability

from qclip.evals.metrics import (SCORE_INPUTS, SCORES, adaptive_ece, aupr, auroc, bootstrap_ci, bootstrap_ci_two_sample,
                           brier, delta_rsg, ece, ece_floor, energy_score, fpr_at_95_tpr, max_logit_score, mce,
                           mcm_score, msp_score, neg_entropy_score, nll, ood_metrics, relative_change,
                           relative_changes, reliability_bins, rsg, softmax_probs, vuln_add)
from qclip.evals.metrics import debiased_ece, paired_bootstrap_diff


# --- MCM's FPR95 (deeplearning-wisc/MCM, utils/detection_util.py), transcribed as the reference -------------------

def stable_cumsum(arr, rtol=1e-05, atol=1e-08):
    out = np.cumsum(arr, dtype=np.float64)
    expected = np.sum(arr, dtype=np.float64)
    if not np.allclose(out[-1], expected, rtol=rtol, atol=atol):
        raise RuntimeError("cumsum was found to be unstable: its last element does not correspond to sum")
    return out


def fpr_and_fdr_at_recall(y_true, y_score, recall_level=0.95, pos_label=1.0):
    y_true = y_true == pos_label
    desc_score_indices = np.argsort(y_score, kind="mergesort")[::-1]
    y_score = y_score[desc_score_indices]
    y_true = y_true[desc_score_indices]
    distinct_value_indices = np.where(np.diff(y_score))[0]
    threshold_idxs = np.r_[distinct_value_indices, y_true.size - 1]
    tps = stable_cumsum(y_true)[threshold_idxs]
    fps = 1 + threshold_idxs - tps
    thresholds = y_score[threshold_idxs]
    recall = tps / tps[-1]
    last_ind = tps.searchsorted(tps[-1])
    sl = slice(last_ind, None, -1)
    recall, fps, tps, thresholds = np.r_[recall[sl], 1], np.r_[fps[sl], 0], np.r_[tps[sl], 0], thresholds[sl]
    cutoff = np.argmin(np.abs(recall - recall_level))
    return fps[cutoff] / (np.sum(np.logical_not(y_true)))


def mcm_fpr95(id_scores, ood_scores) -> float:
    """MCM's `get_measures` call: ID scores are the positives (label 1)."""
    ids, oods = np.asarray(id_scores, dtype=np.float64), np.asarray(ood_scores, dtype=np.float64)
    labels = np.r_[np.ones(len(ids)), np.zeros(len(oods))]
    return float(fpr_and_fdr_at_recall(labels, np.r_[ids, oods], 0.95, pos_label=1))


def sk_pair(id_scores, ood_scores):
    ids, oods = np.asarray(id_scores, dtype=np.float64), np.asarray(ood_scores, dtype=np.float64)
    return np.r_[np.ones(len(ids)), np.zeros(len(oods))], np.r_[ids, oods]


# --- calibration ----------------------------------------------------------------------------------------------------

def random_probs(seed: int, n: int, c: int, scale: float = 1.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-saturated softmax of modest logits; labels agree with the argmax about half the time."""
    g = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(n, c, generator=g, dtype=torch.float64)
    labels = torch.where(torch.rand(n, generator=g) < 0.5, logits.argmax(1), torch.randint(c, (n,), generator=g))
    return torch.softmax(logits, 1), labels


@pytest.mark.parametrize("seed,n,c", [(0, 500, 10), (1, 1000, 3), (2, 257, 100), (3, 40, 5)])
@pytest.mark.parametrize("norm", ["l1", "max"])
def test_ece_mce_match_torchmetrics(seed, n, c, norm):
    probs, labels = random_probs(seed, n, c)
    ref = float(MulticlassCalibrationError(num_classes=c, n_bins=15, norm=norm)(probs, labels))
    ours = ece(probs, labels) if norm == "l1" else mce(probs, labels)
    assert ours == pytest.approx(ref, abs=1e-6)


@pytest.mark.parametrize("n_bins", [5, 10, 20])
def test_ece_matches_torchmetrics_other_bin_counts(n_bins):
    probs, labels = random_probs(7, 600, 8)
    ref = float(MulticlassCalibrationError(num_classes=8, n_bins=n_bins, norm="l1")(probs, labels))
    assert ece(probs, labels, n_bins=n_bins) == pytest.approx(ref, abs=1e-6)


def test_confidence_one_lands_in_last_bin():
    # conf 1.0 (wrong) and 0.95 (right) share bin (14/15, 1]: acc 0.5, conf 0.975 -> ECE 0.475.
    # Left-closed bins would put 1.0 in a 16th bin and give 0.5·1 + 0.5·0.05 = 0.525.
    probs = torch.tensor([[1.0, 0.0], [0.95, 0.05]], dtype=torch.float64)
    labels = torch.tensor([1, 0])
    assert ece(probs, labels) == pytest.approx(0.475, abs=1e-12)
    assert mce(probs, labels) == pytest.approx(0.475, abs=1e-12)
    bins = reliability_bins(probs, labels)
    assert bins["count"] == [0] * 14 + [2]
    assert bins["accuracy"][-1] == pytest.approx(0.5) and bins["confidence"][-1] == pytest.approx(0.975)
    assert bins["accuracy"][0] is None and bins["confidence"][0] is None


def _two_level_probs(groups: list[tuple[float, int]], c: int = 10) -> torch.Tensor:
    """Rows whose top-label confidence is p (n rows per (p, n) group), the rest spread over c − 1 classes."""
    rows = [torch.tensor([p] + [(1 - p) / (c - 1)] * (c - 1), dtype=torch.float64).expand(n, c) for p, n in groups]
    return torch.cat(rows)


@pytest.mark.parametrize("groups", [[(0.7, 200)], [(0.7, 300), (0.95, 100)], [(0.35, 50), (0.8, 400)]])
def test_ece_floor_matches_binomial_expectation(groups):
    # every group has one confidence p in one bin, so a calibrated model's ECE is Σ_g E|K_g − n_g p_g| / N with
    # K_g ~ Binomial(n_g, p_g): exact from scipy's pmf
    from scipy.stats import binom

    total = sum(n for _, n in groups)
    exact = sum(float((binom.pmf(k := np.arange(n + 1), n, p) * np.abs(k - n * p)).sum()) for p, n in groups) / total
    second = sum(float((binom.pmf(k := np.arange(n + 1), n, p) * (k - n * p) ** 2).sum()) for p, n in groups)
    mean, std = ece_floor(_two_level_probs(groups), n_draws=4000, seed=1)
    assert mean == pytest.approx(exact, abs=5 * std / math.sqrt(4000))
    if len(groups) == 1:  # one group: Var|K − np| / N² = (E(K − np)² − E|K − np|²) / N²
        assert std == pytest.approx(math.sqrt(second / total ** 2 - exact ** 2), rel=0.05)


def test_ece_floor_shrinks_with_n_and_is_seeded():
    small = ece_floor(_two_level_probs([(0.7, 100)]), n_draws=500)
    large = ece_floor(_two_level_probs([(0.7, 10000)]), n_draws=500)
    assert large[0] < small[0] / 5  # ~ 1/sqrt(N): 10× fewer
    assert ece_floor(_two_level_probs([(0.7, 100)]), n_draws=500) == small
    assert ece_floor(_two_level_probs([(0.7, 100)]), n_draws=500, seed=1) != small
    with pytest.raises(ValueError, match="n_draws"):
        ece_floor(_two_level_probs([(0.7, 10)]), n_draws=1)


# debiased ℓ2 calibration error (Kumar, Liang & Ma 2019) ----------------------------------------------------------

def test_debiased_ece_hand_computed():
    # two equal-mass bins of 4: conf .5 with 1 right of 4 (ȳ = .25, gap² = .0625, variance term .25·.75/3 = .0625)
    # and conf .9 all right (gap² = .01, variance term 0): (4·0 + 4·.01) / 8 = .005; the plug-in would be .03625
    conf = torch.tensor([0.9, 0.5, 0.9, 0.5, 0.9, 0.5, 0.9, 0.5], dtype=torch.float64)
    right = [True, True, True, False, True, False, True, False]
    probs = torch.stack([conf, 1 - conf], 1)
    labels = torch.tensor([0 if r else 1 for r in right])
    assert debiased_ece(probs, labels, n_bins=2, squared=True) == pytest.approx(0.005, abs=1e-15)
    assert debiased_ece(probs, labels, n_bins=2) == pytest.approx(math.sqrt(0.005), abs=1e-15)
    # one bin: ȳ = 5/8, p̄ = .7: (.075² − (5/8)(3/8)/7) < 0, so the root form clips to 0
    neg = 0.075 ** 2 - (5 / 8) * (3 / 8) / 7
    assert debiased_ece(probs, labels, n_bins=1, squared=True) == pytest.approx(neg, abs=1e-15) and neg < 0
    assert debiased_ece(probs, labels, n_bins=1) == 0.0
    with pytest.raises(ValueError, match="at least 2 samples per bin"):
        debiased_ece(probs, labels, n_bins=5)


@pytest.mark.parametrize("seed,n,c,n_bins", [(0, 500, 10, 15), (1, 1000, 3, 10), (2, 257, 100, 15), (3, 60, 5, 4)])
def test_debiased_ece_matches_torch_uncertainty(seed, n, c, n_bins):
    # torch-uncertainty's adaptive-bin ℓ2 with debias=True (a private helper; its metric classes don't expose
    # debias) uses the same tensor_split equal-mass bins and the same Var(ȳ_b) estimate, and returns the clipped root
    ace = pytest.importorskip("torch_uncertainty.metrics.classification.calibration.adaptive_calibration_error")
    probs, labels = random_probs(seed, n, c)
    conf, pred = probs.max(1)
    ref = ace._ace_compute(conf, (pred == labels).double(), n_bins, norm="l2", debias=True)
    assert debiased_ece(probs, labels, n_bins=n_bins) == pytest.approx(float(ref), abs=1e-12)


def _synthetic_binary(seed: int, n: int, slope: float) -> tuple[np.ndarray, np.ndarray, torch.Tensor, torch.Tensor]:
    """conf ~ U(0.5, 1) and correct ~ Bernoulli(g(conf)), g(c) = 0.5 + slope·(c − 0.5), as 2-class probs."""
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0.5, 1.0, n)
    right = rng.random(n) < 0.5 + slope * (conf - 0.5)
    probs = torch.from_numpy(np.stack([conf, 1 - conf], 1))
    return conf, right, probs, torch.from_numpy((~right).astype(np.int64))


def _plugin_l2_squared(conf: np.ndarray, right: np.ndarray, n_bins: int) -> float:
    """Plug-in binned ℓ2² over the same equal-mass bins: Σ_b (n_b/N)(ȳ_b − p̄_b)²."""
    order = np.argsort(conf, kind="stable")
    return sum(len(b) * (right[b].mean() - conf[b].mean()) ** 2 for b in np.array_split(order, n_bins)) / len(conf)


@pytest.mark.parametrize("slope,true_sq", [
    # g(c) = 0.5 + 0.8(c − 0.5): gap 0.2(c − 0.5), E[gap²] = 0.04·Var(U(0, ½)) = 0.04·(1/4)/3 = 1/300
    (0.8, 1 / 300),
    # g(c) = c: perfectly calibrated, true ℓ2 CE = 0
    (1.0, 0.0),
])
def test_debiased_ece_recovers_known_l2_error(slope, true_sq):
    n, seeds = 300, 400  # 15 bins of 20: the plug-in's variance bias Σ_b w_b ȳ(1 − ȳ)/n_b ≈ 0.01 swamps 1/300
    deb, plug = [], []
    for seed in range(seeds):
        conf, right, probs, labels = _synthetic_binary(seed, n, slope)
        deb.append(debiased_ece(probs, labels, squared=True))
        plug.append(_plugin_l2_squared(conf, right, 15))
    deb, plug = np.array(deb), np.array(plug)
    se = deb.std(ddof=1) / math.sqrt(seeds)
    assert abs(deb.mean() - true_sq) < 4 * se  # unbiased for the (binned) squared error
    assert plug.mean() - true_sq > 10 * se  # while the plug-in is biased upward
    truth = math.sqrt(true_sq)
    roots = np.sqrt(np.maximum(deb, 0))
    assert np.abs(roots - truth).mean() < 0.7 * np.abs(np.sqrt(plug) - truth).mean()
    if true_sq == 0:  # centred on 0, so the squared form is often negative
        assert 0.3 < (deb < 0).mean() < 0.7
    conf, right, probs, labels = _synthetic_binary(0, n, slope)
    assert debiased_ece(probs, labels) == pytest.approx(math.sqrt(max(deb[0], 0.0)), abs=1e-15)


def test_bins_are_right_closed():
    # with 2 bins, a confidence of exactly 0.5 belongs to (0, 0.5], not (0.5, 1]
    bins = reliability_bins(torch.tensor([[0.5, 0.5], [0.7, 0.3]]), torch.tensor([0, 1]), n_bins=2)
    assert bins["count"] == [1, 1]
    assert bins["lower"] == [0.0, 0.5] and bins["upper"] == [0.5, 1.0]
    assert bins["accuracy"] == [1.0, 0.0]


ADAPTIVE_CONF = [0.9, 0.6, 0.8, 0.55, 0.95, 0.7]
ADAPTIVE_RIGHT = [True, False, True, True, True, False]


@pytest.mark.parametrize("n_bins,expected", [
    # sorted: (.55 R, .6 W) (.7 W, .8 R) (.9 R, .95 R): |1 − 1.15| + |1 − 1.5| + |2 − 1.85| = 0.8, /6
    (3, 0.8 / 6),
    # tensor_split sizes 2, 2, 1, 1: 0.15 + 0.5 + 0.1 + 0.05 = 0.8, /6
    (4, 0.8 / 6),
    # more bins than samples: one sample per bin, Σ|correct − conf| = .45 + .6 + .7 + .2 + .1 + .05 = 2.1, /6
    (10, 2.1 / 6),
    # one bin: |4 − 4.5| / 6
    (1, 0.5 / 6),
])
def test_adaptive_ece_hand_computed(n_bins, expected):
    conf = torch.tensor(ADAPTIVE_CONF, dtype=torch.float64)
    probs = torch.stack([conf, 1 - conf], 1)  # prediction is class 0 everywhere
    labels = torch.tensor([0 if r else 1 for r in ADAPTIVE_RIGHT])
    assert adaptive_ece(probs, labels, n_bins=n_bins) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nll_matches_cross_entropy_and_sklearn(seed):
    g = torch.Generator().manual_seed(seed)
    cos = 0.2 + 0.05 * torch.randn(300, 7, generator=g)  # CLIP-like cosine similarities
    logits = 100 * cos  # logit_scale.exp() * cos
    labels = torch.randint(7, (300,), generator=g)
    ours = nll(logits, labels)
    assert ours == pytest.approx(float(F.cross_entropy(logits.double(), labels)), abs=1e-10)
    sk = log_loss(labels.numpy(), softmax_probs(logits).numpy(), labels=list(range(7)))
    assert ours == pytest.approx(sk, rel=1e-9)


@pytest.mark.parametrize("seed", [0, 1])
def test_brier_matches_numpy(seed):
    probs, labels = random_probs(seed, 200, 6)
    p, y = probs.numpy(), labels.numpy()
    onehot = np.eye(6)[y]
    assert brier(probs, labels) == pytest.approx(float(np.mean(np.sum((p - onehot) ** 2, axis=1))), abs=1e-12)
    assert brier(torch.tensor([[1.0, 0.0]]), torch.tensor([1])) == pytest.approx(2.0)


def test_probability_metrics_reject_logits():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.3]])
    with pytest.raises(ValueError, match="softmax_probs"):
        ece(logits, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels"):
        brier(softmax_probs(logits), torch.tensor([0, 2]))


def test_reliability_plot_writes_png(tmp_path):
    probs, labels = random_probs(0, 300, 10)
    bins = reliability_bins(probs, labels)
    assert sum(bins["count"]) == 300 and len(bins["lower"]) == 15
    path = plot_reliability(bins, tmp_path / "sub" / "rel.png", title="demo / cifar10")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


# --- OOD scores -----------------------------------------------------------------------------------------------------

def test_scores_hand_computed():
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(energy_score(logits), torch.tensor([math.log(4.0), math.log(2.0)], dtype=torch.float64))
    # T = 2: 2·log(e^0 + e^{log(3)/2}) = 2·log(1 + √3)
    assert float(energy_score(logits, temperature=2.0)[0]) == pytest.approx(2 * math.log(1 + math.sqrt(3)))
    torch.testing.assert_close(msp_score(logits), torch.tensor([0.75, 0.5], dtype=torch.float64))
    torch.testing.assert_close(max_logit_score(logits), torch.tensor([math.log(3.0), 0.0], dtype=torch.float64))
    # p = (1/4, 3/4): Σ p log p = ¼·log ¼ + ¾·log ¾; uniform over 2: −log 2
    expected = [0.25 * math.log(0.25) + 0.75 * math.log(0.75), -math.log(2.0)]
    torch.testing.assert_close(neg_entropy_score(logits), torch.tensor(expected, dtype=torch.float64))

    cos = torch.tensor([[0.3, 0.1], [0.2, 0.2]], dtype=torch.float64)
    # softmax of raw cosines at T = 1: 1 / (1 + e^{−0.2}); at T = 0.1: 1 / (1 + e^{−2})
    torch.testing.assert_close(mcm_score(cos), torch.tensor([1 / (1 + math.exp(-0.2)), 0.5], dtype=torch.float64))
    assert float(mcm_score(cos, temperature=0.1)[0]) == pytest.approx(1 / (1 + math.exp(-2.0)))


def test_scores_rank_id_above_ood():
    g = torch.Generator().manual_seed(0)
    n, c = 200, 10
    id_cos = 0.15 + 0.02 * torch.randn(n, c, generator=g)
    id_cos[torch.arange(n), torch.randint(c, (n,), generator=g)] += 0.15  # one class clearly matches
    ood_cos = 0.18 + 0.02 * torch.randn(n, c, generator=g)  # nothing stands out
    inputs = {"cos": (id_cos, ood_cos), "logits": (100 * id_cos, 100 * ood_cos)}
    assert set(SCORES) == {"mcm", "max_logit", "energy", "entropy"} and set(SCORE_INPUTS) == set(SCORES)
    for name, fn in SCORES.items():
        id_x, ood_x = inputs[SCORE_INPUTS[name]]
        s_id, s_ood = fn(id_x), fn(ood_x)
        assert s_id.shape == (n,)
        assert s_id.mean() > s_ood.mean(), name
        assert auroc(s_id, s_ood) > 0.9, name


# --- OOD metrics ----------------------------------------------------------------------------------------------------

def random_scores(seed: int, n_id: int, n_ood: int, decimals: int | None):
    rng = np.random.default_rng(seed)
    ids, oods = rng.normal(1.0, 1.0, n_id), rng.normal(0.0, 1.0, n_ood)
    if decimals is not None:  # heavy ties, within and across groups
        ids, oods = np.round(ids, decimals), np.round(oods, decimals)
    return torch.from_numpy(ids), torch.from_numpy(oods)


RANDOM_CASES = [(0, 1000, 800, None), (1, 333, 500, None), (2, 57, 31, None), (3, 500, 500, 1), (4, 333, 120, 0),
                (5, 19, 400, 1), (6, 2000, 3000, 2)]


@pytest.mark.parametrize("seed,n_id,n_ood,decimals", RANDOM_CASES)
def test_auroc_aupr_match_sklearn(seed, n_id, n_ood, decimals):
    ids, oods = random_scores(seed, n_id, n_ood, decimals)
    y, s = sk_pair(ids, oods)
    assert auroc(ids, oods) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert aupr(ids, oods) == pytest.approx(average_precision_score(y, s), abs=1e-12)


@pytest.mark.parametrize("seed,n_id,n_ood,decimals", RANDOM_CASES)
def test_fpr95_matches_mcm_random(seed, n_id, n_ood, decimals):
    ids, oods = random_scores(seed, n_id, n_ood, decimals)
    assert fpr_at_95_tpr(ids, oods) == pytest.approx(mcm_fpr95(ids, oods), abs=1e-15)


FPR_CASES = [
    ([1.0] * 20, [1.0] * 5),                                    # everything tied
    ([2.0] * 10 + [1.0] * 10, [2.0, 1.0, 0.0, 0.0]),            # two tie groups straddle 95%
    (list(range(1, 21)), [0.5, 2.5, 5.5, 19.5, 25.0]),          # exact 95% reachable
    (list(range(1, 20)), [0.5, 1.0, 3.0]),                      # closest recall 18/19 < 0.95
    (list(range(1, 20)), [0.5, 1.5, 3.0]),                      # two thresholds with recall 18/19
    (list(range(1, 21)), [1.5, 25.0]),                          # two thresholds with recall 0.95
    (list(range(1, 11)), [0.0, 1.0, 5.0, 10.0, 11.0]),          # 0.9 vs 1.0, equidistant on paper
    ([0.9, 0.8, 0.8, 0.7, 0.7, 0.7, 0.1], [0.8, 0.7, 0.7, 0.2, 0.1]),
    ([5.0], [4.0, 5.0, 6.0]),                                    # single ID sample
    (list(range(40)), [39.0, 38.0, 37.0]),                      # OOD above every threshold used
]


@pytest.mark.parametrize("ids,oods", FPR_CASES)
def test_fpr95_matches_mcm_hand_cases(ids, oods):
    assert fpr_at_95_tpr(torch.tensor(ids), torch.tensor(oods)) == pytest.approx(mcm_fpr95(ids, oods), abs=1e-15)


def test_fpr95_hand_computed():
    # 20 ID scores 1..20: score ≥ 2 accepts 19 of them (recall 0.95); OOD ≥ 2 are 2.5, 5.5, 19.5, 25 -> 4/5
    assert fpr_at_95_tpr(torch.arange(1.0, 21.0), torch.tensor([0.5, 2.5, 5.5, 19.5, 25.0])) == pytest.approx(0.8)
    # 19 ID scores: recalls 18/19 ≈ 0.947 (threshold 2) and 1 (threshold 1); MCM takes the closer, 18/19,
    # which accepts only OOD 3.0 -> 1/3 (the "first recall ≥ 0.95" rule would accept 1.0 too: 2/3)
    assert fpr_at_95_tpr(torch.arange(1.0, 20.0), torch.tensor([0.5, 1.0, 3.0])) == pytest.approx(1 / 3)
    # thresholds 2 and 1.5 both give recall 0.95; MCM keeps the lower one, which also accepts OOD 1.5 -> 2/2
    assert fpr_at_95_tpr(torch.arange(1.0, 21.0), torch.tensor([1.5, 25.0])) == pytest.approx(1.0)
    # two tie groups: recall 0.5 at 2.0, 1.0 at 1.0 -> threshold 1.0 accepts OOD 2.0 and 1.0: 2/4
    ids = torch.tensor([2.0] * 10 + [1.0] * 10)
    assert fpr_at_95_tpr(ids, torch.tensor([2.0, 1.0, 0.0, 0.0])) == pytest.approx(0.5)


def test_ood_metrics_hand_computed():
    # ID {3, 2}, OOD {2, 1}: pairs (3>2, 3>1, 2=2, 2>1) -> AUROC 3.5/4
    ids, oods = torch.tensor([3.0, 2.0]), torch.tensor([2.0, 1.0])
    out = ood_metrics(ids, oods)
    assert set(out) == {"auroc", "aupr", "fpr95"}
    assert out["auroc"] == pytest.approx(0.875)
    # thresholds 3 (P 1, R ½), 2 (P ⅔, R 1): AP = ½·1 + ½·⅔
    assert out["aupr"] == pytest.approx(0.5 + 1 / 3)
    # recall 1.0 (threshold 2) is closest to 0.95: OOD 2 accepted -> ½
    assert out["fpr95"] == pytest.approx(0.5)
    assert auroc(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])) == 0.0


def test_ood_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="empty"):
        auroc(torch.tensor([]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="NaN"):
        fpr_at_95_tpr(torch.tensor([1.0, float("nan")]), torch.tensor([1.0]))


# --- robustness deltas ----------------------------------------------------------------------------------------------

def test_relative_change_rsg_vuln_hand_computed():
    assert relative_change(0.8, 0.6) == pytest.approx(0.25)
    assert relative_change(0.5, 0.6) == pytest.approx(-0.2)  # negative = the quantized model is better
    with pytest.raises(ValueError):
        relative_change(0.0, 0.1)
    assert rsg(0.9, 0.6) == pytest.approx(1 / 3)
    # RSG(q) = (0.8 − 0.4)/0.8 = ½, RSG(fp) = ⅓
    assert delta_rsg(0.9, 0.6, 0.8, 0.4) == pytest.approx(1 / 6)
    # δ_C = (0.6 − 0.4)/0.6 = ⅓, δ_N = (0.9 − 0.8)/0.9 = 1/9
    assert vuln_add(0.9, 0.6, 0.8, 0.4) == pytest.approx(2 / 9)
    with pytest.raises(ValueError):
        rsg(0.0, 0.5)


def test_relative_changes_nested():
    fp = {"acc1": 0.8, "ece": 0.05, "n": 100, "model": "demo", "ok": True, "nothing": None, "fp_only": 1.0,
          "ood": {"svhn": {"mcm": {"auroc": 0.9, "fpr95": 0.0, "aupr": 0.5}}, "dtd": {"mcm": {"auroc": 0.7}}},
          "corruptions": {"fog:1": {"acc1": 0.5, "note": "x"}}, "list": [1, 2]}
    q = {"acc1": 0.6, "ece": 0.1, "n": 100, "model": "demo", "ok": False, "nothing": None, "q_only": 2.0,
         "ood": {"svhn": {"mcm": {"auroc": 0.72, "fpr95": 0.3, "aupr": "n/a"}}},
         "corruptions": {"fog:1": {"acc1": 0.25, "note": "y"}}, "list": [1, 2]}
    out = relative_changes(fp, q)
    assert out.keys() == {"acc1", "ece", "n", "ood", "corruptions"}
    assert out["acc1"] == pytest.approx(0.25) and out["ece"] == pytest.approx(-1.0) and out["n"] == 0.0
    assert out["ood"] == {"svhn": {"mcm": {"auroc": pytest.approx(0.2), "fpr95": None}}}
    assert out["corruptions"] == {"fog:1": {"acc1": pytest.approx(0.5)}}


# --- bootstrap ------------------------------------------------------------------------------------------------------

def test_bootstrap_deterministic_and_contains_estimate():
    probs, labels = random_probs(0, 400, 10)
    a = bootstrap_ci(ece, probs, labels, n_boot=200, seed=3)
    assert a == bootstrap_ci(ece, probs, labels, n_boot=200, seed=3)
    assert a != bootstrap_ci(ece, probs, labels, n_boot=200, seed=4)
    low, high = a
    assert low < ece(probs, labels) < high
    acc = lambda p, y: float((p.argmax(1) == y).double().mean())  # noqa: E731
    low, high = bootstrap_ci(acc, probs, labels, n_boot=200, alpha=0.1)
    assert low < acc(probs, labels) < high


def test_bootstrap_shrinks_with_more_data():
    widths = []
    for n in (100, 2000):
        ids, oods = random_scores(0, n, n, None)
        low, high = bootstrap_ci_two_sample(auroc, ids, oods, n_boot=200, seed=0)
        assert low < auroc(ids, oods) < high
        widths.append(high - low)
    assert widths[1] < 0.5 * widths[0]  # ~1/√20 in theory


def test_bootstrap_two_sample_deterministic_and_validated():
    ids, oods = random_scores(1, 300, 200, 1)
    a = bootstrap_ci_two_sample(auroc, [ids], [oods], n_boot=100, seed=5)
    assert a == bootstrap_ci_two_sample(auroc, ids, oods, n_boot=100, seed=5)
    with pytest.raises(ValueError, match="first dimension"):
        bootstrap_ci(ece, torch.rand(5, 3), torch.zeros(4, dtype=torch.long))


def _acc1(probs: torch.Tensor, labels: torch.Tensor) -> float:
    return float((probs.argmax(1) == labels).double().mean())


def _two_models(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two correlated models on the same samples: b is a perturbed a."""
    probs_a, labels = random_probs(seed, n, 10)
    g = torch.Generator().manual_seed(seed + 100)
    probs_b = torch.softmax(torch.log(probs_a) + 0.8 * torch.randn(n, 10, generator=g, dtype=torch.float64), 1)
    return probs_a, probs_b, labels


def test_paired_bootstrap_diff_matches_numpy_resamples():
    probs_a, probs_b, labels = _two_models(0, 500)
    diff, low, high = paired_bootstrap_diff(_acc1, (probs_a, labels), (probs_b, labels), n_boot=300, seed=11,
                                            alpha=0.1)
    right_a = (probs_a.argmax(1) == labels).numpy().astype(float)
    right_b = (probs_b.argmax(1) == labels).numpy().astype(float)
    assert diff == pytest.approx(right_a.mean() - right_b.mean(), abs=1e-15)
    # the documented index stream: the r-th torch.randint(N, (N,)) of Generator(seed), shared by both models
    gen = torch.Generator().manual_seed(11)
    idx = [torch.randint(500, (500,), generator=gen).numpy() for _ in range(300)]
    diffs = np.array([right_a[i].mean() - right_b[i].mean() for i in idx])
    ref = np.quantile(diffs, [0.05, 0.95])
    assert (low, high) == pytest.approx(tuple(ref), abs=1e-12)
    assert low < diff < high
    # pairing matters: the same model against itself gives exactly zero in every resample
    assert paired_bootstrap_diff(_acc1, (probs_a, labels), (probs_a, labels), n_boot=50) == (0.0, 0.0, 0.0)


def test_paired_bootstrap_diff_shrinks_with_n_and_validates():
    widths = []
    for n in (200, 5000):
        probs_a, probs_b, labels = _two_models(1, n)
        right_a, right_b = (probs_a.argmax(1) == labels).double(), (probs_b.argmax(1) == labels).double()
        # acc1 from per-sample correctness (a bare tensor counts as a one-array tuple)
        _, low, high = paired_bootstrap_diff(lambda r: float(r.mean()), right_a, right_b, n_boot=200)
        widths.append(high - low)
    assert widths[1] < 0.4 * widths[0]  # ~1/√25 = 0.2 in theory
    probs_a, probs_b, labels = _two_models(2, 50)
    with pytest.raises(ValueError, match="same samples"):
        paired_bootstrap_diff(_acc1, (probs_a, labels), (probs_b[:40], labels[:40]))
    with pytest.raises(ValueError, match="n_boot"):
        paired_bootstrap_diff(_acc1, (probs_a, labels), (probs_b, labels), n_boot=0)
