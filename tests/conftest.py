"""Shared fixtures: an isolated environment (offline hubs, temp caches), micro open_clip models, data roots."""

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


def _data_root() -> Path:
    env = os.environ.get("QCLIP_DATA_ROOT")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The shared real datasets (CIFAR-10, PACS, ...) in CLIP_benchmark wds layout."""
    root = _data_root()
    if not (root / "wds_cifar10").is_dir():
        pytest.skip(f"shared data not found at {root} (set QCLIP_DATA_ROOT)")
    return root


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
