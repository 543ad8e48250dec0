"""Model loading: every source round-trips bit-exactly; bad input fails with one clear line (exit 2 in the CLI)."""

from __future__ import annotations

import json
import shutil

import lightning as L
import open_clip
import pytest
import torch
from conftest import MICRO
from safetensors.torch import save_file

from qclip.io.errors import ModelLoadError
from qclip.io.models import load_model, read_state_dict, save_open_clip_dir


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    """Every tensor of the two state dicts is identical (bit-exact)."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_open_clip_name_builds_random_model(micro_model):
    assert isinstance(micro_model.model, open_clip.CLIP)
    assert not micro_model.model.training
    tokens = micro_model.tokenizer(["a photo of a cat."])
    assert tokens.shape == (1, 16)
    image = micro_model.preprocess(__import__("PIL.Image").Image.new("RGB", (64, 48)))
    assert image.shape == (3, 32, 32)


@pytest.mark.parametrize("suffix", [".pt", ".bin", ".safetensors"])
def test_checkpoint_file_round_trip(micro_model, tmp_path, suffix):
    path = tmp_path / f"w{suffix}"
    sd = micro_model.model.state_dict()
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(sd, path)
    loaded = load_model(MICRO, pretrained=str(path))
    assert_same_weights(loaded.model, micro_model.model)


def test_wrapped_state_dicts_are_unwrapped(micro_model, tmp_path):
    sd = micro_model.model.state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, tmp_path / "ddp.pt")
    assert_same_weights(load_model(MICRO, pretrained=str(tmp_path / "ddp.pt")).model, micro_model.model)


def test_local_dir_round_trip(micro_model, tmp_path):
    save_open_clip_dir(micro_model.model, open_clip.get_model_config(MICRO), tmp_path / "m")
    loaded = load_model(f"local-dir:{tmp_path / 'm'}")
    assert_same_weights(loaded.model, micro_model.model)
    assert loaded.tokenizer.context_length == 16
    # and stock open_clip reads the same folder
    stock, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'm'}")
    assert_same_weights(stock, micro_model.model)


def test_sibling_config_makes_a_file_self_describing(micro_model, tmp_path):
    folder = save_open_clip_dir(micro_model.model, open_clip.get_model_config(MICRO), tmp_path / "m")
    assert_same_weights(load_model(str(folder / "open_clip_model.safetensors")).model, micro_model.model)


def _build_hf_cache(hub_cache, repo: str, src_dir, revision: str = "0123456789abcdef0123456789abcdef01234567"):
    """Lay out a Hugging Face hub cache entry (refs/main -> snapshots/REV/files) by hand."""
    org, name = repo.split("/")
    root = hub_cache / f"models--{org}--{name}"
    snap = root / "snapshots" / revision
    snap.mkdir(parents=True)
    for f in src_dir.iterdir():
        shutil.copy(f, snap / f.name)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(revision)


def test_hf_hub_from_offline_cache(micro_model, tmp_path, monkeypatch):
    import huggingface_hub.constants as hfc

    assert hfc.HF_HUB_OFFLINE, "tests must run with HF_HUB_OFFLINE=1"
    folder = save_open_clip_dir(micro_model.model, open_clip.get_model_config(MICRO), tmp_path / "src")
    hub = tmp_path / "hub"
    _build_hf_cache(hub, "qclip-test/micro-vit", folder)
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(hub))
    loaded = load_model("hf-hub:qclip-test/micro-vit")
    assert_same_weights(loaded.model, micro_model.model)
    with pytest.raises(ModelLoadError, match="hf-hub:qclip-test/absent"):
        load_model("hf-hub:qclip-test/absent")


class _Wrapper(L.LightningModule):
    """A minimal Lightning module holding an open_clip model as `self.model`, as train/ does."""

    def __init__(self, model_name: str):
        super().__init__()
        self.save_hyperparameters()
        torch.manual_seed(0)
        self.model = open_clip.create_model(model_name)

    def training_step(self, batch, batch_idx):
        return self.model.encode_image(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_checkpoint_round_trip(tmp_path):
    module = _Wrapper(MICRO)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 3, 32, 32)), batch_size=2)
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, data)
    ckpt = tmp_path / "run.ckpt"
    trainer.save_checkpoint(ckpt)
    by_arch = load_model(MICRO, pretrained=str(ckpt))
    assert_same_weights(by_arch.model, module.model)
    self_described = load_model(str(ckpt))  # hyper_parameters carry model_name
    assert_same_weights(self_described.model, module.model)


def test_precision_and_device_arguments(micro_dir):
    loaded = load_model(f"local-dir:{micro_dir}", precision="bf16", device="cpu")
    assert loaded.model.visual.conv1.weight.dtype == torch.bfloat16


@pytest.mark.parametrize(
    "name, pretrained, message",
    [
        ("ViT-Nope-99", None, "unknown model 'ViT-Nope-99'"),
        (MICRO, "no_such_tag", f"unknown pretrained tag 'no_such_tag' for {MICRO}"),
        (MICRO, "/nonexistent/weights.pt", "checkpoint file not found: /nonexistent/weights.pt"),
        ("local-dir:/nonexistent/dir", None, "local-dir /nonexistent/dir has no open_clip_config.json"),
        ("/nonexistent/model.ckpt", None, "checkpoint file not found"),
        ("demo", None, "demo model is not trained yet"),
    ],
)
def test_bad_names_raise_one_clear_line(name, pretrained, message):
    with pytest.raises(ModelLoadError) as info:
        load_model(name, pretrained)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_tag_lists_known_ones():
    with pytest.raises(ModelLoadError, match="known tags: openai"):
        load_model("ViT-B-32", "not-a-tag")


def test_real_tag_offline_fails_cleanly():
    # a real tag, but no network and no cached weights: a clear error instead of random weights
    with pytest.raises(ModelLoadError, match="cannot load model ViT-B-32 \\(pretrained=openai\\)"):
        load_model("ViT-B-32", "openai")


@pytest.mark.parametrize("kind", ["garbage.pt", "truncated.pt", "truncated.safetensors", "pickle.pt"])
def test_corrupt_files_raise(micro_model, tmp_path, kind):
    path = tmp_path / kind
    sd = micro_model.model.state_dict()
    if kind == "garbage.pt":
        path.write_bytes(b"\x00not a checkpoint" * 50)
    elif kind == "truncated.pt":
        torch.save(sd, path)
        path.write_bytes(path.read_bytes()[:4096])
    elif kind == "truncated.safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
        path.write_bytes(path.read_bytes()[:4096])
    else:  # an arbitrary pickled object is refused by weights_only loading
        import pickle

        path.write_bytes(pickle.dumps(_Wrapper))
    with pytest.raises(ModelLoadError, match=f"cannot read checkpoint {path}"):
        load_model(MICRO, pretrained=str(path))


def test_mismatched_checkpoint_names_the_key(micro_model, tmp_path):
    sd = dict(micro_model.model.state_dict())
    sd.pop("visual.proj")
    torch.save(sd, tmp_path / "part.pt")
    with pytest.raises(ModelLoadError, match="missing keys \\(e.g. visual.proj\\)"):
        load_model(MICRO, pretrained=str(tmp_path / "part.pt"))


def test_local_dir_without_weights_is_an_error(tmp_path):
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": open_clip.get_model_config(MICRO)}))
    with pytest.raises(ModelLoadError, match="cannot load model local-dir"):
        load_model(f"local-dir:{tmp_path}")


def test_read_state_dict_keeps_tensors_only(micro_model, tmp_path):
    sd = micro_model.model.state_dict()
    # non-tensor entries inside the state dict (counters, notes, nested dicts) must be dropped, tensors kept as saved
    extras = {"global_step": 7, "note": "not a tensor", "nested": {"a": torch.zeros(1)}, "ratio": 0.5}
    torch.save({"state_dict": {**sd, **extras}, "hyper_parameters": {"model_name": MICRO}}, tmp_path / "x.ckpt")
    out = read_state_dict(tmp_path / "x.ckpt")
    assert out.keys() == sd.keys()
    assert all(torch.equal(out[k], sd[k]) for k in sd)
    # a bare dict (no "state_dict" key) is filtered the same way
    torch.save({**sd, **extras}, tmp_path / "bare.pt")
    assert read_state_dict(tmp_path / "bare.pt").keys() == sd.keys()
