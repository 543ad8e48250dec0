"""Paired differences against FP: the bootstrap's p-value, ECE from (confidence, correctness), and the suite's
paired block on labelled and OOD sets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qclip.evals.metrics import ece, ece_of_confidence, paired_bootstrap, paired_bootstrap_diff, top_label


def test_ece_of_confidence_equals_ece():
    g = torch.Generator().manual_seed(3)
    probs = torch.softmax(torch.randn(500, 7, generator=g) * 3, -1)
    labels = torch.randint(7, (500,), generator=g)
    conf, correct = top_label(probs, labels)
    assert ece_of_confidence(conf, correct) == pytest.approx(ece(probs, labels), abs=1e-12)


def test_paired_bootstrap_p_value_against_numpy():
    g = torch.Generator().manual_seed(0)
    a = (torch.rand(400, generator=g) < 0.70).double()
    b = (torch.rand(400, generator=g) < 0.62).double()
    out = paired_bootstrap(lambda r: float(r.mean()), (a,), (b,), n_boot=300, seed=5)
    assert (out["diff"], out["low"], out["high"]) == paired_bootstrap_diff(lambda r: float(r.mean()), (a,), (b,),
                                                                          n_boot=300, seed=5)
    # the same resamples by hand: the r-th randint(N, (N,)) of one CPU generator, applied to both arrays
    gen = torch.Generator().manual_seed(5)
    diffs = np.array([float(a[idx].mean() - b[idx].mean()) for idx in (torch.randint(400, (400,), generator=gen)
                                                                        for _ in range(300))])
    expected_p = min(1.0, 2 * min((diffs <= 0).mean(), (diffs >= 0).mean()))
    assert out["p"] == pytest.approx(expected_p)
    assert out["diff"] == pytest.approx(float(a.mean() - b.mean()))


def test_paired_bootstrap_of_a_model_against_itself():
    x = torch.rand(200, generator=torch.Generator().manual_seed(1))
    out = paired_bootstrap(lambda v: float(v.mean()), (x,), (x,), n_boot=50)
    assert out == {"diff": 0.0, "low": 0.0, "high": 0.0, "p": 1.0}
