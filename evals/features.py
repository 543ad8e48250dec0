"""Image features of a (model, dataset, corruption), extracted once and cached on disk by content hash."""

from __future__ import annotations

import hashlib
import io
import json
from typing import Callable

import torch
from torch import nn
from torchvision.transforms import Compose, Normalize

from .data import DatasetSpec, make_loader
from .paths import atomic_write_bytes, cache_dir
from .zeroshot import extract_image_features

__all__ = ["split_normalize", "dataset_features"]


def split_normalize(preprocess: Callable) -> tuple[Callable, Normalize | None]:
    """The transform without its final `Normalize`, and that `Normalize` (corruptions act on [0, 1] pixels)."""
    if isinstance(preprocess, Compose) and preprocess.transforms and isinstance(preprocess.transforms[-1], Normalize):
        return Compose(preprocess.transforms[:-1]), preprocess.transforms[-1]
    return preprocess, None


def _normalizer(norm: Normalize | None, device) -> Callable[[torch.Tensor], torch.Tensor]:
    if norm is None:
        return lambda x: x
    mean = torch.tensor(norm.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(norm.std, device=device).view(1, -1, 1, 1)
    return lambda x: (x - mean) / std


@torch.no_grad()
def dataset_features(model: nn.Module, preprocess: Callable, spec: DatasetSpec, *, model_key: str,
                     corruption: tuple[str, int] | None = None, limit: int | None = None, batch_size: int = 256,
                     num_workers: int = 2, device: str | torch.device = "cpu", progress: bool = True,
                     use_cache: bool = True, seed: int = 0, autocast: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 image features and labels of `spec` (optionally corrupted), cached by model/data/corruption key."""
    key = hashlib.sha256(json.dumps({"model": model_key, "dataset": spec.name, "split": spec.split,
                                     "shards": list(spec.shards), "limit": limit, "corruption": corruption,
                                     "seed": seed, "autocast": autocast, "order": "stream",  # loader order v2
                                     "preprocess": repr(preprocess)}).encode()).hexdigest()[:32]
    path = cache_dir("features") / f"{key}.pt"
    if use_cache and path.is_file():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            return blob["features"], blob["labels"]
        except Exception:  # a damaged entry is recomputed
            path.unlink(missing_ok=True)
    batch_transform = None
    transform = preprocess
    if corruption is not None:
        from .corruptions import corrupt

        transform, norm = split_normalize(preprocess)
        normalize = _normalizer(norm, device)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        name, severity = corruption

        def batch_transform(x: torch.Tensor) -> torch.Tensor:
            return normalize(corrupt(x, name, severity, generator=generator))

    loader = make_loader(spec, transform, batch_size=batch_size, num_workers=num_workers, limit=limit)
    desc = spec.name + (f" {corruption[0]}:{corruption[1]}" if corruption else "")
    feats, labels = extract_image_features(model, loader, device=device, total=limit, progress=progress, desc=desc,
                                           batch_transform=batch_transform, autocast=autocast)
    if use_cache:
        buf = io.BytesIO()
        torch.save({"features": feats, "labels": labels}, buf)
        atomic_write_bytes(path, buf.getvalue())
    return feats, labels
