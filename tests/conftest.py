"""Shared fixtures: an isolated environment (offline hubs, temp caches), micro open_clip models, data roots (a
synthetic one for every test, the real one only for tests of the real datasets' figures)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Before any hub library is imported: offline, and every cache inside one temp folder for this session.
_SESSION_TMP = Path(tempfile.mkdtemp(prefix="qclip-tests-"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_DIR"] = str(_SESSION_TMP / "wandb")
os.environ["HF_HOME"] = str(_SESSION_TMP / "hf")
os.environ["HF_HUB_CACHE"] = str(_SESSION_TMP / "hf" / "hub")
os.environ["QCLIP_CACHE_DIR"] = str(_SESSION_TMP / "cache")
os.environ.pop("QCLIP_DEMO_DIR", None)

import open_clip  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MICRO = "qclip-micro-vit"
open_clip.add_model_config(Path(__file__).with_name("model_configs"))


def pytest_configure(config):
    config.addinivalue_line("markers", "real_data: asserts figures of the real datasets; needs $QCLIP_DATA_ROOT")


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real datasets (CIFAR-10, PACS, ...) in CLIP_benchmark wds layout, from `$QCLIP_DATA_ROOT`; skips without
    them. Only tests of the real sets' own figures use it (named `..._real_data` or marked `real_data`); every other
    test reads the synthetic `wds_root`."""
    env = os.environ.get("QCLIP_DATA_ROOT")
    if not env or not (Path(env) / "wds_cifar10").is_dir():
        pytest.skip(f"real-data test: needs the real datasets in $QCLIP_DATA_ROOT (now {env or 'unset'})")
    return Path(env)


@pytest.fixture(scope="session")
def wds_root() -> Path:
    """A small synthetic data root in the real wds layout, built once per session (see tests/synthdata.py):
    wds_cifar10 (train 2 x 256, test 320), wds_fashion_mnist, wds_pacs_photo/sketch, wds_imagenet_samples,
    wds_imagenet_cifar10_shift/ood, with the real sets' class names, templates and image formats."""
    from synthdata import build_synthetic_root

    return build_synthetic_root(_SESSION_TMP / "data")


@pytest.fixture(scope="session")
def session_tmp() -> Path:
    """The session's temp folder (holds the HF and qclip caches)."""
    return _SESSION_TMP


@pytest.fixture()
def micro_model():
    """A randomly initialised micro ViT CLIP (2 layers, 32 px) with its transform and tokenizer."""
    from qclip.io.models import load_model

    torch.manual_seed(0)
    return load_model(MICRO)


@pytest.fixture(scope="session")
def micro_dir(session_tmp) -> Path:
    """The micro model saved as an open_clip local-dir (config + safetensors)."""
    from qclip.io.models import load_model, save_open_clip_dir

    torch.manual_seed(0)
    loaded = load_model(MICRO)
    cfg = open_clip.get_model_config(MICRO)
    return save_open_clip_dir(loaded.model, cfg, session_tmp / "micro-dir")
