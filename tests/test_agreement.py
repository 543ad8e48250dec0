"""Feature agreement between two models' features on the same images (integer cells vs their fake-quant cell):
known answers on constructed features."""

from __future__ import annotations

import math

import pytest
import torch
from qclip.evals.agreement import feature_agreement


def test_identical_features_agree_exactly():
    f = torch.randn(10, 6, generator=torch.Generator().manual_seed(0))
    clf = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    assert feature_agreement(f, f.clone(), clf) == {"n": 10, "max_abs_diff": 0.0, "min_cosine": 1.0, "top1_flips": 0}


def test_known_differences_flips_and_cosine():
    clf = torch.eye(2)  # class = the larger coordinate of the normalised feature
    ref = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 1.0]])
    other = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 1.5]])  # image 1 turns 90 degrees: one flip, cosine 0
    agr = feature_agreement(ref, other, clf)
    assert agr["top1_flips"] == 1 and agr["n"] == 3
    assert agr["max_abs_diff"] == 2.0
    assert agr["min_cosine"] == pytest.approx(0.0, abs=1e-15)
    # a second classifier for the other model: its own prediction counts (here it swaps the classes: every image
    # whose prediction did not change under the first classifier now flips, and the turned one does not)
    assert feature_agreement(ref, other, clf, clf.flip(1))["top1_flips"] == 2
    scaled = feature_agreement(ref, 2 * ref, clf)  # same directions: cosine 1, no flips, max |Δ| = max |ref|
    assert scaled["top1_flips"] == 0 and math.isclose(scaled["min_cosine"], 1.0) and scaled["max_abs_diff"] == 3.0


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="one shape"):
        feature_agreement(torch.zeros(3, 2), torch.zeros(2, 2), torch.eye(2))
