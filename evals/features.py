"""Image features of a (model, dataset, corruption), extracted once and cached on disk by content hash.

Writes `<cache>/features/<key>.pt` (features + labels; see docs/conventions.md for the key)."""

from __future__ import annotations

import hashlib
import io
import json
import os
from typing import Callable, Iterable

import torch
from torch import nn
from torchvision.transforms import Compose, Normalize
from tqdm.auto import tqdm

from qclip.io.data import DatasetSpec, make_loader
from qclip.io.paths import atomic_write_bytes, cache_dir

__all__ = ["extract_image_features", "split_normalize", "dataset_features", "DecodedImages", "shard_fingerprints"]


@torch.no_grad()
def extract_image_features(model: nn.Module, loader: Iterable, *, device: str | torch.device = "cpu",
                           total: int | None = None, progress: bool = True, desc: str = "image features",
                           batch_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                           autocast: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the image tower over a loader of (images, labels); return unnormalised float32 features and labels.

    `batch_transform` (e.g. corrupt, then normalise) is applied to each image batch on the device first;
    `autocast` runs the tower under bfloat16 autocast (precision "amp_bf16")."""
    device_type = torch.device(device).type
    dtype = _input_dtype(model)
    feats, labels = [], []
    batches = iter(loader)
    try:
        with tqdm(total=total, desc=desc, unit="img", disable=not progress) as bar:
            for batch in batches:
                images, target = batch[0].to(device, non_blocking=True), batch[1]
                if batch_transform is not None:
                    images = batch_transform(images)
                if not autocast and images.dtype != dtype:  # fp16/bf16/pure_* models take images in their dtype
                    images = images.to(dtype)
                with torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast):
                    out = model.encode_image(images)
                feats.append(out.float().cpu())
                labels.append(torch.as_tensor(target).cpu())
                bar.update(len(images))
    finally:  # stop DataLoader workers now: left to the garbage collector after an error, this takes seconds
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
    if not feats:
        raise ValueError("the dataset yielded no samples")
    return torch.cat(feats), torch.cat(labels).long()


def _input_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the image tower's first conv/linear weight: what its input must be (open_clip's fp16/bf16
    precisions cast those weights but keep some parameters, e.g. LayerNorms, in float32)."""
    visual = getattr(model, "visual", model)
    first = next((m.weight for m in visual.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)
    return torch.float32 if first is None else first.dtype


def shard_fingerprints(shards: tuple[str, ...] | list[str]) -> list[str]:
    """A content hash of every local shard (sha256 of its bytes, memoised per path, size and mtime), so a replaced
    shard never returns features cached for the old one; remote shards are keyed by their URL."""
    out = []
    for shard in shards:
        try:
            st = os.stat(shard)
        except OSError:
            out.append(str(shard))  # remote (or missing: the loader will say so)
            continue
        memo_key = (str(shard), st.st_size, st.st_mtime_ns)
        if memo_key not in _SHARD_HASHES:
            h = hashlib.sha256()
            if os.path.isdir(shard):  # an ImageFolder tree: every file's path, size and mtime
                for root, dirs, files in os.walk(shard):
                    dirs.sort()
                    for name in sorted(files):
                        fst = os.stat(os.path.join(root, name))
                        h.update(f"{os.path.relpath(os.path.join(root, name), shard)}:{fst.st_size}:"
                                 f"{fst.st_mtime_ns}\n".encode())
            else:
                with open(shard, "rb") as fh:
                    while chunk := fh.read(1 << 22):
                        h.update(chunk)
            _SHARD_HASHES[memo_key] = h.hexdigest()
        out.append(_SHARD_HASHES[memo_key])
    return out


_SHARD_HASHES: dict[tuple[str, int, int], str] = {}


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


class DecodedImages:
    """Decoded, un-normalised image batches of (dataset, split, limit, transform), kept in memory for reuse.

    A grid evaluates many model variants on the same images (and corrupts the same ID images several ways):
    decoding them once saves the JPEG decode and worker start-up of every later pass. Batches are stored as
    uint8 when that is exact (a `ToTensor` output is k/255), so 2000 CIFAR images take 6 MB; a dataset whose
    batches would pass `max_mb` is streamed each time instead.
    """

    def __init__(self, max_mb: float = 2048.0):
        self.max_bytes = max_mb * 2 ** 20
        self.used = 0
        self._store: dict[tuple, list[tuple[torch.Tensor, torch.Tensor]] | None] = {}

    def batches(self, spec: DatasetSpec, transform: Callable, *, limit: int | None, batch_size: int,
                num_workers: int) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """The cached batches of float images in [0, 1] (decoded now if needed); None when over the budget."""
        key = (spec.name, spec.split, spec.shards, limit, batch_size, repr(transform))
        if key not in self._store:
            self._store[key] = self._decode(spec, transform, limit, batch_size, num_workers)
        stored = self._store[key]
        if stored is None:
            return None
        return [(x.float().div(255) if x.dtype == torch.uint8 else x, y) for x, y in stored]

    def _decode(self, spec, transform, limit, batch_size, num_workers):
        out, used = [], 0
        for images, labels in make_loader(spec, transform, batch_size=batch_size, num_workers=num_workers,
                                          limit=limit):
            packed = (images * 255).round().to(torch.uint8)
            if torch.equal(packed.float().div(255), images):
                images = packed
            used += images.numel() * images.element_size()
            if self.used + used > self.max_bytes:
                return None
            out.append((images, labels))
        self.used += used
        return out


@torch.no_grad()
def dataset_features(model: nn.Module, preprocess: Callable, spec: DatasetSpec, *, model_key: str,
                     corruption: tuple[str, int] | None = None, limit: int | None = None, batch_size: int = 256,
                     num_workers: int = 2, device: str | torch.device = "cpu", progress: bool = True,
                     use_cache: bool = True, seed: int = 0, autocast: bool = False,
                     decoded: DecodedImages | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 image features and labels of `spec` (optionally corrupted), cached by model/data/corruption key.

    With `decoded`, the images come from (and are added to) that in-memory cache of decoded batches; the
    features are the same as from a fresh loader."""
    key = hashlib.sha256(json.dumps({"model": model_key, "dataset": spec.name, "split": spec.split,
                                     "shards": list(spec.shards), "content": shard_fingerprints(spec.shards),
                                     "limit": limit, "corruption": corruption,
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
    raw, norm = split_normalize(preprocess)
    loader = None
    if decoded is not None:
        loader = decoded.batches(spec, raw, limit=limit, batch_size=batch_size, num_workers=num_workers)
    if corruption is not None or loader is not None:
        transform, normalize = raw, _normalizer(norm, device)
        batch_transform = normalize
    if corruption is not None:
        from .corruptions import corrupt

        generator = torch.Generator(device="cpu").manual_seed(seed)
        name, severity = corruption

        def batch_transform(x: torch.Tensor) -> torch.Tensor:
            return normalize(corrupt(x, name, severity, generator=generator))

    if loader is None:
        loader = make_loader(spec, transform, batch_size=batch_size, num_workers=num_workers, limit=limit)
    desc = spec.name + (f" {corruption[0]}:{corruption[1]}" if corruption else "")
    feats, labels = extract_image_features(model, loader, device=device, total=limit, progress=progress, desc=desc,
                                           batch_transform=batch_transform, autocast=autocast)
    if use_cache:
        buf = io.BytesIO()
        torch.save({"features": feats, "labels": labels}, buf)
        atomic_write_bytes(path, buf.getvalue())
    return feats, labels
