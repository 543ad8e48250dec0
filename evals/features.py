"""Image features of a (model, dataset, corruption), extracted once and cached on disk by content hash.

Writes `<cache>/features/<key>.pt` (features + labels; see docs/conventions.md for the key).

Byte batches: when the preprocess ends in `ToTensor` (and `Normalize`), as open_clip's does, the DataLoader workers
run its PIL steps and hand over uint8 images (a quarter of the bytes, no per-image float work); the main process
turns each batch into floats with the operations ToTensor and Normalize apply to one image (`x.float() / 255`,
`(x - mean) / std`, elementwise in float32), so the features are bit-identical to those of the per-image preprocess.
"""

from __future__ import annotations

import hashlib
import os
import sys
from typing import Callable, Iterable

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader
from torchvision.transforms import Compose, Normalize, ToTensor
from torchvision.transforms.functional import get_image_num_channels, to_tensor

from qclip.io.data import DatasetSpec, make_loader
from qclip.io.images import scan_image_folder
from qclip.io.progress import progress_bar
from qclip.io.tensor_cache import cached_tensors

from .zeroshot import embed_dim

__all__ = ["extract_image_features", "split_normalize", "byte_pipeline", "bytes_to_float", "dataset_features",
           "DecodedImages", "shard_fingerprints"]


@torch.no_grad()
def extract_image_features(model: nn.Module, loader: Iterable, *, device: str | torch.device = "cpu",
                           total: int | None = None, progress: bool = True, desc: str = "image features",
                           batch_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                           autocast: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the image tower over a loader of (images, labels); return unnormalised float32 features and labels.

    `batch_transform` (e.g. bytes to floats, corrupt, normalise) is applied to each image batch on the device first;
    `autocast` runs the tower under bfloat16 autocast (precision "amp_bf16")."""
    device_type = torch.device(device).type
    dtype = _input_dtype(model)
    feats, labels = [], []
    batches = iter(loader)
    try:
        with progress_bar(total, desc=desc, unit="img", enabled=progress) as bar:
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
            if os.path.isdir(shard):  # an ImageFolder tree: every image's path, size and mtime (as the loader lists it)
                for path, label in scan_image_folder(shard)[1]:
                    fst = os.stat(path)
                    h.update(f"{os.path.relpath(path, shard)}:{label}:{fst.st_size}:{fst.st_mtime_ns}\n".encode())
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


#: Niceness DataLoader workers add to their own. Where the forward's threads occupy every core (2 cores here), a
#: worker that competes on equal terms preempts one of them and every parallel region of the forward waits for it:
#: measured on 2 cores, the micro model's forward ran at a third of its speed beside 2 workers. Niced, the workers
#: decode while the forward waits (the next batch, its own gaps) and leave it alone when there is no gap; order and
#: results do not depend on it. `QCLIP_WORKER_NICENESS` overrides it (0: off).
WORKER_NICENESS = 10


def _yield_to_forward(_worker_id: int) -> None:
    """DataLoader `worker_init_fn`: lower this worker's priority (see WORKER_NICENESS)."""
    nice = getattr(os, "nice", None)  # POSIX only
    niceness = int(os.environ.get("QCLIP_WORKER_NICENESS", WORKER_NICENESS))
    if nice is not None and niceness > 0:
        try:
            nice(niceness)
        except OSError:  # not permitted here: run at the normal priority
            pass


def byte_pipeline(preprocess: Callable) -> tuple[Callable, Normalize | None] | None:
    """Split a `Compose([...PIL steps, ToTensor, Normalize])` preprocess (its Normalize optional) into the per-image
    part that stops at uint8 tensors and its `Normalize`; None for any other preprocess. A batch of the per-image
    part's outputs, passed through `bytes_to_float` and then the `Normalize` (as `_normalizer`), equals the batch of
    the preprocess's outputs bit for bit."""
    steps = list(preprocess.transforms) if isinstance(preprocess, Compose) else []
    norm = steps.pop() if steps and isinstance(steps[-1], Normalize) else None
    if not steps or type(steps[-1]) not in _to_tensor_types():
        return None
    return Compose([*steps[:-1], _ToBytes(passes_tensors=type(steps[-1]) is not ToTensor)]), norm


def _to_tensor_types() -> tuple[type, ...]:
    """ToTensor and open_clip's MaybeToTensor (a ToTensor that passes tensors through)."""
    try:
        from open_clip.transform import MaybeToTensor
    except ImportError:  # an open_clip without it
        return (ToTensor,)
    return ToTensor, MaybeToTensor


#: ToTensor's numpy types of the PIL modes it does not divide by 255 (torchvision.transforms.functional.to_tensor)
_NON_BYTE_MODES = {"I": np.int32, "I;16" if sys.byteorder == "little" else "I;16B": np.int16, "F": np.float32}


class _ToBytes:
    """ToTensor without its final `.float().div(255)`: the uint8 CHW tensor of a PIL image (or uint8 HWC array)
    that ToTensor would divide; anything else gets ToTensor's own result (tensors pass through with
    `passes_tensors`, as open_clip's MaybeToTensor does)."""

    def __init__(self, passes_tensors: bool):
        self.passes_tensors = passes_tensors

    def __call__(self, pic):
        if self.passes_tensors and isinstance(pic, torch.Tensor):
            return pic
        if isinstance(pic, Image.Image) and pic.mode not in _NON_BYTE_MODES:
            img = torch.from_numpy(np.array(pic, np.uint8, copy=True))
            if pic.mode == "1":
                img = 255 * img
            return img.view(pic.size[1], pic.size[0], get_image_num_channels(pic)).permute((2, 0, 1)).contiguous()
        if isinstance(pic, np.ndarray) and pic.dtype == np.uint8 and pic.ndim in (2, 3):
            return torch.from_numpy((pic[:, :, None] if pic.ndim == 2 else pic).transpose((2, 0, 1))).contiguous()
        return to_tensor(pic)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(passes_tensors={self.passes_tensors})"


def bytes_to_float(images: torch.Tensor) -> torch.Tensor:
    """A uint8 batch as ToTensor's floats (`x.float() / 255`, elementwise, any device); other dtypes unchanged."""
    if images.dtype != torch.uint8:
        return images
    dtype = torch.get_default_dtype()
    return images.to(dtype).div_(torch.tensor(255, dtype=dtype, device=images.device))


def _normalizer(norm: Normalize | None, device) -> Callable[..., torch.Tensor]:
    """`Normalize` on a batch: `(x - mean) / std` per channel, the float32 operations it applies to one image;
    `inplace=True` overwrites `x` (a batch of 224 px images is 150 MB: a second one costs more than the arithmetic)."""
    if norm is None:
        return lambda x, inplace=False: x
    mean = torch.tensor(norm.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(norm.std, device=device).view(1, -1, 1, 1)
    return lambda x, inplace=False: (x.sub_(mean) if inplace else x - mean).div_(std)


class DecodedImages:
    """Decoded, un-normalised image batches of (dataset, split, limit, transform), kept in memory for reuse.

    A grid evaluates many model variants on the same images (and corrupts the same ID images several ways):
    decoding them once saves the JPEG decode and worker start-up of every later pass. Batches are stored as
    uint8 when that is exact (a `ToTensor` output is k/255; a transform ending in ToTensor is decoded straight to
    bytes, see `byte_pipeline`), so 2000 CIFAR images take 6 MB; a dataset whose batches would pass `max_mb` is
    streamed each time instead.
    """

    def __init__(self, max_mb: float = 2048.0):
        self.max_bytes = max_mb * 2 ** 20
        self.used = 0
        self._store: dict[tuple, list[tuple[torch.Tensor, torch.Tensor]] | None] = {}

    def batches(self, spec: DatasetSpec, transform: Callable, *, limit: int | None, batch_size: int,
                num_workers: int) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """The cached batches (decoded now if needed) as stored: uint8 where exact (`bytes_to_float` gives the floats
        in [0, 1]), else floats in [0, 1]; None when over the budget."""
        key = (spec.name, spec.split, spec.shards, limit, batch_size, repr(transform))
        if key not in self._store:
            self._store[key] = self._decode(spec, transform, limit, batch_size, num_workers)
        return self._store[key]

    def _decode(self, spec, transform, limit, batch_size, num_workers):
        split = byte_pipeline(transform)
        if split is not None and split[1] is None:  # ends in ToTensor: decode to bytes
            transform = split[0]
        out, used = [], 0
        for images, labels in make_loader(spec, transform, batch_size=batch_size, num_workers=num_workers,
                                          limit=limit):
            if images.dtype != torch.uint8:
                packed = (images * 255).round().to(torch.uint8)
                if torch.equal(bytes_to_float(packed), images):
                    images = packed
            used += images.numel() * images.element_size()
            if self.used + used > self.max_bytes:
                return None
            out.append((images, labels))
        self.used += used
        return out


@torch.no_grad()
def _cache_fits(blob, limit: int | None, dim: int | None, num_classes: int) -> bool:
    """Whether a cached entry is what was asked for: float32 features [n, dim] (finite) and int64 labels [n] within
    the dataset's classes, with 0 < n <= limit."""
    if not isinstance(blob, dict):
        return False
    feats, labels = blob.get("features"), blob.get("labels")
    if not isinstance(feats, torch.Tensor) or not isinstance(labels, torch.Tensor):
        return False
    if feats.dtype != torch.float32 or labels.dtype != torch.int64 or feats.dim() != 2 or labels.dim() != 1:
        return False
    n = labels.shape[0]
    if feats.shape[0] != n or n == 0 or (limit is not None and n > limit) or (dim is not None and feats.shape[1] != dim):
        return False
    return bool(labels.min() >= 0 and labels.max() < num_classes and torch.isfinite(feats).all())


def dataset_features(model: nn.Module, preprocess: Callable, spec: DatasetSpec, *, model_key: str,
                     corruption: tuple[str, int] | None = None, limit: int | None = None, batch_size: int = 256,
                     num_workers: int = 2, device: str | torch.device = "cpu", progress: bool = True,
                     use_cache: bool = True, seed: int = 0, autocast: bool = False,
                     decoded: DecodedImages | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 image features and labels of `spec` (optionally corrupted), cached by model/data/corruption key
    (`seed` seeds the corruption's noise; clean features are keyed without it, so every seed of a grid shares them).

    With `decoded`, the images come from (and are added to) that in-memory cache of decoded batches; the
    features are the same as from a fresh loader. Workers hand over uint8 batches where the preprocess allows
    (`byte_pipeline`); the features equal those of the per-image preprocess bit for bit, for any `num_workers`."""
    description = {"model": model_key, "dataset": spec.name, "split": spec.split, "shards": list(spec.shards),
                   "content": shard_fingerprints(spec.shards), "limit": limit, "corruption": corruption,
                   # the seed draws corruption noise only: clean features serve every seed
                   "seed": seed if corruption is not None else None,
                   "autocast": autocast, "order": "stream",  # loader order v2
                   "preprocess": repr(preprocess)}
    blob = cached_tensors("features", description, lambda: _extract(
        model, preprocess, spec, corruption=corruption, limit=limit, batch_size=batch_size, num_workers=num_workers,
        device=device, progress=progress, seed=seed, autocast=autocast, decoded=decoded), use_cache=use_cache,
        fits=lambda blob: _cache_fits(blob, limit, embed_dim(model), spec.num_classes))
    return blob["features"], blob["labels"]


def _extract(model: nn.Module, preprocess: Callable, spec: DatasetSpec, *, corruption: tuple[str, int] | None,
             limit: int | None, batch_size: int, num_workers: int, device: str | torch.device, progress: bool,
             seed: int, autocast: bool, decoded: DecodedImages | None) -> dict[str, torch.Tensor]:
    """The features and labels of `dataset_features`, computed (no cache)."""
    raw, norm = split_normalize(preprocess)
    split = byte_pipeline(preprocess)
    loader = None
    if decoded is not None:
        loader = decoded.batches(spec, raw, limit=limit, batch_size=batch_size, num_workers=num_workers)
    per_batch = loader is not None or split is not None or corruption is not None  # else the loader normalises
    if loader is None:
        transform = split[0] if split is not None else raw if corruption is not None else preprocess
        loader = make_loader(spec, transform, batch_size=batch_size, num_workers=num_workers, limit=limit)
        if isinstance(loader, DataLoader) and loader.num_workers > 0 and loader.worker_init_fn is None:
            loader.worker_init_fn = _yield_to_forward
    batch_transform = None
    if per_batch:
        normalize = _normalizer(norm, device)
        if corruption is None:
            def batch_transform(x: torch.Tensor) -> torch.Tensor:
                floats = bytes_to_float(x)
                return normalize(floats, inplace=floats is not x)  # never in a caller's (or the cache's) batch
        else:
            from .corruptions import corrupt

            generator = torch.Generator(device="cpu").manual_seed(seed)
            name, severity = corruption

            def batch_transform(x: torch.Tensor) -> torch.Tensor:
                return normalize(corrupt(bytes_to_float(x), name, severity, generator=generator))

    desc = spec.name + (f" {corruption[0]}:{corruption[1]}" if corruption else "")
    feats, labels = extract_image_features(model, loader, device=device, total=limit, progress=progress, desc=desc,
                                           batch_transform=batch_transform, autocast=autocast)
    return {"features": feats, "labels": labels}
