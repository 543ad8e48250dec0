"""Zero-shot classifier and logits against hand computation; the on-disk classifier cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from qclip.evals.features import extract_image_features
from qclip.evals.zeroshot import (
    build_zero_shot_classifier,
    text_tower_fingerprint,
    topk_accuracy,
    zero_shot_classifier,
    zero_shot_logits,
)
from sklearn.metrics import top_k_accuracy_score

from qclip.io.paths import cache_dir

CLASSES = ["cat", "dog", "small red car"]
TEMPLATES = ["a photo of a {c}.", "{c}", "a blurry photo of the {c}."]


def hand_classifier(model, tokenizer) -> torch.Tensor:
    """One prompt at a time, in numpy: normalise, average over templates, renormalise."""
    cols = []
    for c in CLASSES:
        embs = []
        for t in TEMPLATES:
            e = model.encode_text(tokenizer([t.replace("{c}", c)]))[0].detach().double().numpy()
            embs.append(e / np.linalg.norm(e))
        m = np.mean(embs, axis=0)
        cols.append(m / np.linalg.norm(m))
    return torch.from_numpy(np.stack(cols, axis=1))


def test_classifier_equals_hand_computation(micro_model):
    model, tok = micro_model.model, micro_model.tokenizer
    with torch.no_grad():
        ours = build_zero_shot_classifier(model, tok, CLASSES, TEMPLATES, batch_classes=2)
        ref = hand_classifier(model, tok)
    assert ours.shape == (32, 3)
    torch.testing.assert_close(ours.double(), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.norm(dim=0), torch.ones(3), atol=1e-6, rtol=0)


def test_cache_reuses_and_invalidates(micro_model):
    model, tok = micro_model.model, micro_model.tokenizer
    before = set(cache_dir("classifiers").iterdir())
    first = zero_shot_classifier(model, tok, CLASSES, TEMPLATES)
    added = set(cache_dir("classifiers").iterdir()) - before
    assert len(added) == 1
    entry = added.pop()
    # a cache hit returns the stored tensor (prove it by tampering with the entry)
    torch.save(first * 2, entry)
    torch.testing.assert_close(zero_shot_classifier(model, tok, CLASSES, TEMPLATES), first * 2)
    # other templates, or other text weights -> another key; image-tower weights do not matter
    fp = text_tower_fingerprint(model, tok)
    with torch.no_grad():
        model.visual.proj.add_(1.0)
    assert text_tower_fingerprint(model, tok) == fp
    with torch.no_grad():
        model.text_projection.add_(1.0)
    assert text_tower_fingerprint(model, tok) != fp
    fresh = zero_shot_classifier(model, tok, CLASSES, TEMPLATES)
    torch.testing.assert_close(fresh, build_zero_shot_classifier(model, tok, CLASSES, TEMPLATES))


def test_damaged_cache_entry_is_rebuilt(micro_model):
    model, tok = micro_model.model, micro_model.tokenizer
    before = set(cache_dir("classifiers").iterdir())
    good = zero_shot_classifier(model, tok, ["x", "y"], TEMPLATES)
    (entry,) = set(cache_dir("classifiers").iterdir()) - before
    entry.write_bytes(b"broken")
    torch.testing.assert_close(zero_shot_classifier(model, tok, ["x", "y"], TEMPLATES), good)


def test_logits_are_scaled_cosines():
    feats = torch.tensor([[3.0, 4.0], [0.0, -2.0]])
    clf = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # columns = class embeddings
    logits = zero_shot_logits(feats, clf, torch.tensor(np.log(100.0)))
    expected = 100 * torch.tensor([[0.6, 0.8], [0.0, -1.0]])
    torch.testing.assert_close(logits, expected)


@pytest.mark.parametrize("k", [1, 2, 5])
def test_topk_accuracy_matches_sklearn(k):
    g = torch.Generator().manual_seed(k)
    logits = torch.randn(200, 7, generator=g)
    labels = torch.randint(0, 7, (200,), generator=g)
    ours = topk_accuracy(logits, labels, (k,))[k]
    ref = top_k_accuracy_score(labels.numpy(), logits.numpy(), k=k, labels=range(7))
    assert ours == pytest.approx(ref, abs=1e-9)


def test_topk_caps_k_at_class_count():
    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2]])
    acc = topk_accuracy(logits, torch.tensor([0, 1]), (1, 5))
    assert acc == {1: 0.0, 5: 1.0}


def test_feature_extraction_equals_direct_forward(micro_model):
    model = micro_model.model
    images = torch.randn(10, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(10)
    batches = [(images[:4], labels[:4]), (images[4:], labels[4:])]
    feats, out_labels = extract_image_features(model, batches, progress=False)
    with torch.no_grad():
        # batches of 4 and 6 vs one of 10: MKL/oneDNN may block the float32 GEMMs differently per batch size
        torch.testing.assert_close(feats, model.encode_image(images), atol=1e-5, rtol=1e-5)
    assert torch.equal(out_labels, labels)
