"""The demo CLIP: a 32-px open_clip model (ModifiedResNet image tower, small text transformer) for CIFAR-10.

Its architecture is data (`model_configs/qclip-demo.json`, registered with open_clip as `qclip-demo`). Trained
weights live in a `local-dir:`-style folder (`open_clip_config.json` + `open_clip_model.safetensors`) under the
user cache; `qclip.train.demo.ensure_demo_model()` creates them on first use.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import open_clip

from .paths import cache_dir

__all__ = ["DEMO_MODEL_NAME", "DEMO_RECIPE_VERSION", "CONFIG_FILE", "WEIGHTS_FILE", "register_model_configs",
           "demo_model_config", "demo_dir", "is_trained"]

DEMO_MODEL_NAME = "qclip-demo"
#: Bump when the pretraining recipe changes, so a stale cached demo model is not reused.
DEMO_RECIPE_VERSION = "v1"
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
_CONFIG_DIR = Path(__file__).with_name("model_configs")


def register_model_configs() -> None:
    """Register qclip's JSON architectures with open_clip (idempotent)."""
    if DEMO_MODEL_NAME not in open_clip.list_models():
        open_clip.add_model_config(_CONFIG_DIR)


def demo_model_config() -> dict:
    """Return the demo architecture as an open_clip `model_cfg` dict."""
    return json.loads((_CONFIG_DIR / f"{DEMO_MODEL_NAME}.json").read_text())


def demo_dir() -> Path:
    """Folder of the cached demo model: `$QCLIP_DEMO_DIR`, else `<cache>/demo/<recipe version>`."""
    env = os.environ.get("QCLIP_DEMO_DIR")
    return Path(env) if env else cache_dir("demo", DEMO_RECIPE_VERSION)


def is_trained(folder: str | os.PathLike | None = None) -> bool:
    """True when `folder` (default: the demo dir) holds a complete demo checkpoint."""
    folder = Path(folder) if folder is not None else demo_dir()
    return (folder / CONFIG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()
