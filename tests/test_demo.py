"""Demo CLIP pretraining: augmentation, a 2-step run, determinism, the cache, and stock open_clip loading."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
from qclip.train.demo import (
    DemoRecipe,
    ensure_demo_model,
    pretrain_demo,
    random_crop_flip,
)

from qclip.io.demo import DEMO_MODEL_NAME, WEIGHTS_FILE, demo_dir, is_trained
from qclip.io.models import load_model

TINY = dict(max_steps=2, limit=64, batch_size=16)  # precision auto: bf16-mixed where native, else 32-true


def test_random_crop_flip_returns_shifted_crops():
    g = torch.Generator().manual_seed(0)
    images = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6) + 1
    out = random_crop_flip(images, pad=2, generator=g)
    assert out.shape == images.shape
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for b in range(2):  # each output is one window of the padded image, maybe mirrored
        windows = [padded[b, :, y:y + 6, x:x + 6] for y in range(5) for x in range(5)]
        assert any(torch.equal(out[b], w) or torch.equal(out[b], w.flip(-1)) for w in windows)


def test_random_crop_flip_varies_and_flips():
    g = torch.Generator().manual_seed(1)
    images = torch.rand(64, 3, 8, 8)
    out = random_crop_flip(images, pad=0, generator=g)  # pad 0: only flips
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, images)]
    same = [torch.equal(o, i) for o, i in zip(out, images)]
    assert all(f or s for f, s in zip(flipped, same))
    assert 10 < sum(flipped) < 54


def test_recipe_validates():
    with pytest.raises(ValueError, match="epochs"):
        DemoRecipe(epochs=0)
    with pytest.raises(ValueError, match="lr"):
        DemoRecipe(lr=-1.0)


@pytest.fixture(scope="session")
def tiny_demo(wds_root, session_tmp):
    """A 2-step demo pretraining run on 64 (synthetic) CIFAR-10 images (folder, metadata)."""
    out = session_tmp / "tiny-demo"
    meta = pretrain_demo(out, DemoRecipe(**TINY), data_root=str(wds_root), progress=False, evaluate=False)
    return out, meta


def test_two_step_pretraining_writes_an_open_clip_folder(tiny_demo):
    folder, meta = tiny_demo
    assert is_trained(folder)
    assert meta["steps"] == 2 and meta["train_images"] == 64
    assert json.loads((folder / "qclip_demo.json").read_text())["recipe"]["max_steps"] == 2
    ours = load_model(f"local-dir:{folder}")
    # stock open_clip: by registered name + checkpoint path, and as a local-dir
    stock, _, _ = open_clip.create_model_and_transforms(DEMO_MODEL_NAME, pretrained=str(folder / WEIGHTS_FILE))
    stock_dir, _, _ = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    for m in (stock, stock_dir):
        for k, v in ours.model.state_dict().items():
            assert torch.equal(v, m.state_dict()[k]), k
    assert ours.tokenizer.context_length == 16


def test_pretraining_changes_weights_and_is_deterministic(tiny_demo, wds_root, tmp_path):
    folder, _ = tiny_demo
    pretrain_demo(tmp_path / "again", DemoRecipe(**TINY), data_root=str(wds_root), progress=False, evaluate=False)
    a = load_model(f"local-dir:{folder}").model.state_dict()
    b = load_model(f"local-dir:{tmp_path / 'again'}").model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    torch.manual_seed(0)
    init = open_clip.create_model(DEMO_MODEL_NAME).state_dict()
    assert not torch.equal(init["visual.layer1.0.conv1.weight"], a["visual.layer1.0.conv1.weight"])


def test_demo_dir_env_override_and_first_use(tiny_demo, wds_root, tmp_path, monkeypatch):
    monkeypatch.setenv("QCLIP_DEMO_DIR", str(tmp_path / "demo"))
    assert demo_dir() == tmp_path / "demo"
    recipe = DemoRecipe(**TINY, precision="32-true")  # tiny_demo runs the default precision; this one tests caching
    folder = ensure_demo_model(data_root=str(wds_root), progress=False, recipe=recipe, evaluate=False)
    assert folder == tmp_path / "demo" and is_trained(folder)
    mtime = (folder / WEIGHTS_FILE).stat().st_mtime_ns
    ensure_demo_model(data_root=str(wds_root), progress=False, recipe=DemoRecipe(**TINY))  # cached: no retrain
    assert (folder / WEIGHTS_FILE).stat().st_mtime_ns == mtime
    assert isinstance(load_model("demo").model, open_clip.CLIP)


def test_auto_precision_picks_bf16_only_where_it_is_native(monkeypatch):
    from qclip.train.demo import resolve_precision

    assert resolve_precision("32-true") == "32-true" and resolve_precision("bf16-mixed") == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert resolve_precision("auto") == "32-true"
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert resolve_precision("auto") == "bf16-mixed"
