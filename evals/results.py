"""Result records: library versions and the `qclip eval` JSON document (written atomically)."""

from __future__ import annotations

import json
import os
import platform
from importlib import metadata

from .paths import atomic_write_text

__all__ = ["versions", "eval_record", "write_json"]


def versions() -> dict[str, str]:
    """Versions of python and the libraries whose numerics a result depends on."""
    out = {"python": platform.python_version()}
    for dist in ("qclip", "torch", "open_clip_torch", "torchao", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def eval_record(*, model: str, pretrained: str | None, quant: str | None, dataset: str, n: int,
                metrics: dict) -> dict:
    """Assemble the `qclip eval` JSON of DESIGN.md."""
    return {"model": model, "pretrained": pretrained, "quant": quant, "dataset": dataset, "n": int(n),
            "metrics": metrics, "versions": versions()}


def write_json(path: str | os.PathLike, obj: dict) -> None:
    """Write a JSON document atomically (NaN/inf rejected so every reader can parse it)."""
    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")
