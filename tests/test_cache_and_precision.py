"""Caches keyed by content (a replaced shard is never served from the cache) and every --precision on CPU."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from qclip.evals.features import dataset_features, shard_fingerprints
from qclip.io.data import resolve_dataset
from qclip.io.models import load_model
from qclip.io.validate import PRECISIONS

from synthdata import SYNTHETIC, build_dataset


def _two_sets(tmp_path):
    """Two 1-shard wds sets with the same classes and sample count but different pixels (PACS photo / sketch)."""
    return (build_dataset(tmp_path / "a", SYNTHETIC["pacs_photo"]),
            build_dataset(tmp_path / "b", SYNTHETIC["pacs_sketch"]))


def test_replaced_shard_is_not_served_from_the_cache(tmp_path, micro_model):
    a, b = _two_sets(tmp_path)
    root = tmp_path / "root"
    shutil.copytree(a, root / "wds_tiny")
    spec = resolve_dataset("wds/tiny", root, "test")
    kw = dict(model_key="m", num_workers=0, progress=False)
    first, _ = dataset_features(micro_model.model, micro_model.preprocess, spec, **kw)
    # replace the shard by another one with the same name (and force an equal mtime: only the bytes differ)
    shard = root / "wds_tiny" / "test" / "0.tar"
    st = os.stat(shard)
    shutil.copyfile(b / "test" / "0.tar", shard)
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    again, _ = dataset_features(micro_model.model, micro_model.preprocess, resolve_dataset("wds/tiny", root, "test"),
                                **kw)
    fresh, _ = dataset_features(micro_model.model, micro_model.preprocess, resolve_dataset("wds/tiny", root, "test"),
                                use_cache=False, **{k: v for k, v in kw.items()})
    assert not torch.equal(first, again)
    assert torch.equal(again, fresh)


class _CountingTower(torch.nn.Module):
    """A model wrapper that counts the images its image tower forwards."""

    def __init__(self, model):
        super().__init__()
        self.model, self.images = model, 0

    def encode_image(self, x):
        self.images += x.shape[0]
        return self.model.encode_image(x)


def test_clean_features_are_shared_across_seeds_and_corrupted_ones_are_not(tmp_path, micro_model, monkeypatch):
    monkeypatch.setenv("QCLIP_CACHE_DIR", str(tmp_path / "cache"))
    folder = build_dataset(tmp_path / "root", SYNTHETIC["pacs_photo"])
    spec = resolve_dataset("wds/" + folder.name.removeprefix("wds_"), folder.parent, "test")
    model = _CountingTower(micro_model.model.eval())
    kw = dict(model_key="m", num_workers=0, progress=False, limit=16, batch_size=8)
    got = {}
    for corruption in (None, ("gaussian_noise", 3)):
        for seed in (0, 1):
            before = model.images
            got[corruption, seed] = dataset_features(model, micro_model.preprocess, spec, corruption=corruption,
                                                     seed=seed, **kw)[0]
            got[corruption, seed, "forwarded"] = model.images - before
    clean, noisy = None, ("gaussian_noise", 3)
    assert got[clean, 0, "forwarded"] == 16 and got[clean, 1, "forwarded"] == 0  # seed 1 reads seed 0's entry
    assert torch.equal(got[clean, 0], got[clean, 1])
    assert got[noisy, 0, "forwarded"] == got[noisy, 1, "forwarded"] == 16  # other noise, other features
    assert not torch.equal(got[noisy, 0], got[noisy, 1])


def test_shard_fingerprints_follow_bytes_not_paths(tmp_path):
    a, b = _two_sets(tmp_path)
    fa, fb = shard_fingerprints([str(a / "test" / "0.tar")]), shard_fingerprints([str(b / "test" / "0.tar")])
    import hashlib

    assert fa == [hashlib.sha256((a / "test" / "0.tar").read_bytes()).hexdigest()] and fa != fb
    assert shard_fingerprints(["https://example.org/0.tar"]) == ["https://example.org/0.tar"]


@pytest.mark.parametrize("precision", PRECISIONS)
def test_every_precision_extracts_features_on_cpu(tmp_path, precision):
    from qclip.evals.features import extract_image_features

    torch.manual_seed(0)
    loaded = load_model("qclip-micro-vit", precision=precision)
    images = torch.rand(4, 3, 32, 32)
    feats, labels = extract_image_features(loaded.model, [(images, torch.arange(4))], progress=False,
                                           autocast=precision.startswith("amp"))
    assert feats.dtype == torch.float32 and feats.shape[0] == 4 and torch.isfinite(feats).all()
    torch.manual_seed(0)
    ref = load_model("qclip-micro-vit").model.encode_image(images)
    tol = 1e-5 if precision == "fp32" else 0.1  # half precisions: a few mantissa bits
    assert torch.allclose(feats, ref, atol=tol * ref.abs().max().item(), rtol=0)
