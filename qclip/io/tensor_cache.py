"""The content-hash cache of tensors under the user cache dir: an entry is `<cache>/<folder>/<key>.pt`, keyed by the
hash of a JSON description of everything it was computed from, read with `torch.load(weights_only=True)`, written
atomically; a damaged entry is recomputed, never trusted."""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any, Callable, TypeVar

import torch

from .paths import atomic_write_bytes, cache_dir

__all__ = ["cache_key", "cached_tensors"]

T = TypeVar("T")


def cache_key(description: dict[str, Any]) -> str:
    """The 32-hex-digit key of a JSON-serialisable description of what an entry was computed from."""
    return hashlib.sha256(json.dumps(description).encode()).hexdigest()[:32]


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    return value


def cached_tensors(folder: str, description: dict[str, Any], compute: Callable[[], T], *, use_cache: bool = True,
                   map_location: str | torch.device = "cpu", fits: Callable[[Any], bool] | None = None) -> T:
    """`compute()` (a tensor or a dict of tensors), served from `<cache>/<folder>/` when an entry for `description`
    is there (loaded onto `map_location`) and, with `fits`, fits what was asked (shape, dtype, range: an entry that
    decodes is not yet the right one), else computed and stored (on the CPU); `use_cache=False` computes only."""
    if not use_cache:
        return compute()
    path = cache_dir(folder) / f"{cache_key(description)}.pt"
    if path.is_file():
        try:
            cached = torch.load(path, map_location=map_location, weights_only=True)
        except Exception:  # a damaged entry is recomputed, never trusted
            cached = None
        if cached is not None and (fits is None or fits(cached)):
            return cached
        path.unlink(missing_ok=True)  # damaged, or not what was asked for: recomputed
    value = compute()
    buf = io.BytesIO()
    torch.save(_to_cpu(value), buf)
    atomic_write_bytes(path, buf.getvalue())
    return value
