"""The fast paths of feature extraction change nothing: uint8 batches from the workers (converted and normalised per
batch in the main process) give bit-identical features and logits for any worker count, with and without
corruptions and the decoded-image cache; --compile compiles each variant's tower only after its copy is made."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from qclip.evals.features import (
    DecodedImages,
    byte_pipeline,
    bytes_to_float,
    dataset_features,
    extract_image_features,
    split_normalize,
)
from qclip.evals.suite import ReliabilitySuite, SuiteConfig
from torchvision.transforms import Compose, Normalize, ToTensor

from qclip.io.data import make_loader, resolve_dataset


def _per_image_reference(model, preprocess, spec, limit, corruption=None):
    """Features the slow way: the whole preprocess (or, corrupted, ToTensor, corrupt, then torchvision's Normalize)
    applied image by image."""
    if corruption is None:
        return extract_image_features(model, make_loader(spec, preprocess, batch_size=16, num_workers=0, limit=limit),
                                      progress=False)
    from qclip.evals.corruptions import corrupt

    raw, norm = split_normalize(preprocess)
    gen = torch.Generator().manual_seed(0)

    def transform(x):
        return torch.stack([norm(img) for img in corrupt(x, *corruption, generator=gen)])

    return extract_image_features(model, make_loader(spec, raw, batch_size=16, num_workers=0, limit=limit),
                                  progress=False, batch_transform=transform)


@pytest.mark.parametrize("corruption", [None, ("gaussian_noise", 3)])
def test_features_are_identical_for_any_worker_count(micro_model, wds_root, corruption):
    model, preprocess = micro_model.model.eval(), micro_model.preprocess
    spec = resolve_dataset("wds/cifar10", str(wds_root), "test")
    assert byte_pipeline(preprocess) is not None  # open_clip's preprocess takes the uint8 path
    want, want_labels = _per_image_reference(model, preprocess, spec, 40, corruption)
    kw = dict(model_key="k", corruption=corruption, limit=40, batch_size=16, progress=False, use_cache=False)
    for workers in (0, 2):
        got, labels = dataset_features(model, preprocess, spec, num_workers=workers, **kw)
        assert torch.equal(got, want) and torch.equal(labels, want_labels), workers
    decoded = DecodedImages(max_mb=64)
    for _ in range(2):  # decoding, then from memory
        got, labels = dataset_features(model, preprocess, spec, num_workers=1, decoded=decoded, **kw)
        assert torch.equal(got, want) and torch.equal(labels, want_labels)
    assert decoded.used == 40 * 3 * 32 * 32  # decoded straight to bytes


def test_suite_logits_are_identical_for_any_worker_count(micro_dir, wds_root):
    cfg = SuiteConfig(model=f"local-dir:{micro_dir}", dataset="wds/cifar10", limit=40,
                      corruptions=[("gaussian_noise", 3)], bootstrap=0)
    sets = []
    for workers in (0, 2):
        suite = ReliabilitySuite(cfg, data_root=str(wds_root), num_workers=workers, batch_size=16, progress=False,
                                 use_cache=False)
        sets.append(suite.set_logits(suite.load()))
    a, b = sets
    for got, want in ((a["id"], b["id"]), (a["corruptions"]["gaussian_noise:3"], b["corruptions"]["gaussian_noise:3"])):
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8), "RGB")
    return [rgb, rgb.convert("L"), rgb.convert("1"), rgb.convert("RGBA")]


@pytest.mark.parametrize("norm", [None, Normalize((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))])
def test_byte_pipeline_equals_the_per_image_preprocess(norm):
    from open_clip.transform import MaybeToTensor
    from torchvision.transforms import CenterCrop, Resize

    for to_tensor in (ToTensor(), MaybeToTensor()):
        for img in _images():
            channels = len(img.getbands())
            n = norm if norm is None or channels == 3 else Normalize(norm.mean[:1] * channels, norm.std[:1] * channels)
            steps = [Resize(16), CenterCrop(16), to_tensor] + ([n] if n is not None else [])
            preprocess = Compose(steps)
            per_image, norm_out = byte_pipeline(preprocess)
            assert norm_out is n
            batch = torch.stack([per_image(img), per_image(img)])
            assert batch.dtype == torch.uint8
            got = bytes_to_float(batch)
            if n is not None:
                mean = torch.tensor(n.mean).view(1, -1, 1, 1)
                std = torch.tensor(n.std).view(1, -1, 1, 1)
                got = (got - mean) / std
            assert torch.equal(got, torch.stack([preprocess(img), preprocess(img)])), (img.mode, to_tensor)


def test_byte_pipeline_leaves_other_preprocesses_alone():
    assert byte_pipeline(lambda img: img) is None
    assert byte_pipeline(Compose([ToTensor(), Normalize((0.5,), (0.5,)), Normalize((0.5,), (0.5,))])) is None
    assert byte_pipeline(Compose([Normalize((0.5,), (0.5,))])) is None
    # modes ToTensor does not divide by 255 keep ToTensor's own result
    per_image, _ = byte_pipeline(Compose([ToTensor()]))
    img = Image.fromarray(np.arange(12, dtype=np.int32).reshape(3, 4), "I")
    assert torch.equal(per_image(img), ToTensor()(img))
    assert torch.equal(bytes_to_float(torch.ones(2, 3)), torch.ones(2, 3))  # floats pass through


class _RecordNiceness:
    """A PIL step that writes the niceness of the process running it to a file (and changes nothing)."""

    def __init__(self, path):
        self.path = path

    def __call__(self, img):
        import os

        self.path.write_text(str(os.nice(0)))
        return img


@pytest.mark.parametrize("env", [None, "0"])
def test_workers_run_niced(micro_model, wds_root, tmp_path, monkeypatch, env):
    import os

    from qclip.evals.features import WORKER_NICENESS

    if env is not None:
        monkeypatch.setenv("QCLIP_WORKER_NICENESS", env)
    record = tmp_path / "niceness"
    preprocess = Compose([_RecordNiceness(record), *micro_model.preprocess.transforms])
    spec = resolve_dataset("wds/cifar10", str(wds_root), "test")
    dataset_features(micro_model.model.eval(), preprocess, spec, model_key="k", limit=4, batch_size=4, num_workers=1,
                     progress=False, use_cache=False)
    assert int(record.read_text()) == min(19, os.nice(0) + (WORKER_NICENESS if env is None else 0))


def test_suite_compile_option_compiles_each_variant_after_the_quantized_copy_is_made(micro_dir, wds_root):
    """--compile is a ReliabilitySuite option: the FP tower is compiled at load when there is no quantized copy to
    make, else both towers after the eager copy (torch.compile wraps now and compiles at the first batch)."""
    from torch._dynamo.eval_frame import OptimizedModule

    def suite(quant, compile):
        cfg = SuiteConfig(model=f"local-dir:{micro_dir}", dataset="wds/cifar10", quant=quant, limit=8)
        return ReliabilitySuite(cfg, data_root=str(wds_root), progress=False, compile=compile)

    assert isinstance(suite(None, True).load().model.visual, OptimizedModule)
    assert not isinstance(suite(None, False).load().model.visual, OptimizedModule)
    s = suite("w8", True)
    fp = s.load()
    assert not isinstance(fp.model.visual, OptimizedModule)  # the quantized copy is made from the eager tower
    q, _ = s.quantized(fp)
    assert isinstance(fp.model.visual, OptimizedModule) and isinstance(q.model.visual, OptimizedModule)
    assert q.model.visual._orig_mod is not fp.model.visual._orig_mod
