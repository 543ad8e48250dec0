"""Fetch remote files (dataset shards and metadata) into the user cache, atomically and with a progress bar."""

from __future__ import annotations

import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from .errors import DataError

__all__ = ["is_url", "fetch"]

_CHUNK = 1 << 20


def is_url(location: str) -> bool:
    """True for http(s) locations."""
    return location.startswith(("http://", "https://"))


def fetch(url: str, dest: str | os.PathLike, *, progress: bool = True) -> Path:
    """Download `url` to `dest` unless it is already there; raise `DataError` naming the URL on failure."""
    dest = Path(dest)
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, os.fdopen(fd, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"fetch {dest.name}",
                      disable=not progress, leave=False) as bar:
                while chunk := resp.read(_CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise DataError(f"cannot fetch {url}: {exc}") from exc
    return dest
