"""Where qclip reads data and writes caches: data root and user cache dir resolution, atomic writes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["REMOTE_DATA_ROOT", "resolve_data_root", "cache_dir", "atomic_write_bytes", "atomic_write_text"]

#: The public CLIP_benchmark wds location; `{name}` is the dataset name without the `wds/` prefix.
REMOTE_DATA_ROOT = "https://huggingface.co/datasets/clip-benchmark"


def resolve_data_root(data_root: str | os.PathLike | None = None) -> str:
    """Return the data root: the argument, else `$QCLIP_DATA_ROOT`, else the public CLIP_benchmark HTTP location."""
    if data_root:
        return str(data_root)
    env = os.environ.get("QCLIP_DATA_ROOT")
    return env if env else REMOTE_DATA_ROOT


def cache_dir(*parts: str) -> Path:
    """Return (and create) a folder under the user cache dir: `$QCLIP_CACHE_DIR`, else `$XDG_CACHE_HOME/qclip`."""
    root = os.environ.get("QCLIP_CACHE_DIR")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(xdg, "qclip")
    path = Path(root, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` via a temp file in the same folder and `os.replace`, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 text atomically (see `atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))
