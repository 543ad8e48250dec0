"""Result documents: library versions and atomic JSON writes (the record itself is built by
`qclip.evals.suite`). Writes the JSON file it is given, atomically."""

from __future__ import annotations

import json
import os
import platform
from importlib import metadata

from .paths import atomic_write_text

__all__ = ["versions", "write_json"]


def versions() -> dict[str, str]:
    """Versions of python and the libraries whose numerics a result depends on."""
    out = {"python": platform.python_version()}
    for dist in ("qclip", "torch", "open_clip_torch", "torchao", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def write_json(path: str | os.PathLike, obj: dict) -> None:
    """Write a JSON document atomically (NaN/inf rejected so every reader can parse it)."""
    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")
