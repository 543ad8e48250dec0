"""Result documents: library versions and atomic JSON and CSV writes (the record itself is built by
`qclip.evals.suite`). Writes the file it is given, atomically."""

from __future__ import annotations

import csv
import io
import json
import os
import platform
from importlib import metadata

from .paths import atomic_write_text

__all__ = ["versions", "write_json", "write_csv"]


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


def write_csv(path: str | os.PathLike, rows: list[dict], columns: list[str] | None = None) -> None:
    """Write `rows` as a CSV (LF line ends) atomically; `columns` default to every key in first-seen order."""
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=columns or list(dict.fromkeys(k for r in rows for k in r)),
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())
