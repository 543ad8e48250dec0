"""Datasets for zero-shot evaluation: CLIP_benchmark wds shards (plain or gzip, local or HTTP) and ImageFolder.

Names: `wds/NAME` resolves to `<data root>/wds_NAME/<split>/` (the data root comes from `--data-root`, else
`$QCLIP_DATA_ROOT`, else the user cache `<cache>/data`, where a registered dataset is built from its pinned source
on first use (see `qclip.io.registry` and docs/data.md), else the public CLIP_benchmark location for other names,
whose shards are fetched into the user cache);
`imagefolder:PATH` (or a plain folder path) reads an ImageFolder tree (torchvision's layout, listed and decoded
safely by `qclip.io.images`).
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import io
import lzma
import os
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset, get_worker_info

from .download import fetch, is_url
from .errors import DataError
from .images import ImageFolderDataset, open_rgb, scan_image_folder
from .paths import REMOTE_DATA_ROOT, cache_dir, resolve_data_root

__all__ = [
    "DatasetSpec", "WdsSample", "resolve_dataset", "iter_wds_samples", "WdsImageDataset", "make_dataset",
    "make_loader", "DEFAULT_TEMPLATES",
]

#: The most shards one split may have (a typo'd nshards.txt must not make qclip list a billion paths).
MAX_SHARDS = 100_000
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "ppm", "bmp")
#: Fallback prompts for an ImageFolder without a templates file.
DEFAULT_TEMPLATES = ("a photo of a {c}.", "a blurry photo of a {c}.", "a photo of the large {c}.",
                     "a photo of the small {c}.", "a good photo of a {c}.")


@dataclass(frozen=True)
class DatasetSpec:
    """A resolved dataset: where its samples are and how to name its classes."""

    name: str
    kind: str  # "wds" or "imagefolder"
    split: str
    shards: tuple[str, ...]  # local shard paths (wds) or the folder (imagefolder)
    classnames: tuple[str, ...]
    templates: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classnames)


@dataclass
class WdsSample:
    """One wds sample: its key, raw image bytes with extension, class index and optional caption."""

    key: str
    image: bytes | None = None
    image_ext: str | None = None
    label: int | None = None
    text: str | None = None


def _wds_base(root: str, short: str) -> str:
    """Return the folder (or URL) of dataset `short` under `root`."""
    if "{name}" in root or "{dataset}" in root:
        return root.replace("{name}", short).replace("{dataset}", short)
    if root.rstrip("/") == REMOTE_DATA_ROOT:
        return f"{REMOTE_DATA_ROOT}/wds_{short}/resolve/main"
    return f"{root.rstrip('/')}/wds_{short}"


def _remote_cache(base: str, short: str) -> Path:
    """Cache folder of a remote dataset, keyed by its URL (two roots never share files)."""
    return cache_dir("data", f"wds_{short}-{hashlib.sha256(base.encode()).hexdigest()[:12]}")


def _read_meta(base: str, rel: str, short: str, *, required: bool) -> str | None:
    """Read a small text file of a wds dataset, fetching it into the cache when `base` is a URL."""
    if is_url(base):
        try:
            path = fetch(f"{base}/{rel}", _remote_cache(base, short) / rel, progress=False)
        except DataError:
            if required:
                raise
            return None
    else:
        path = Path(base, rel)
        if not path.is_file():
            if required:
                raise DataError(f"missing {path} (is the data root right? set --data-root or QCLIP_DATA_ROOT)")
            return None
    return _read_text(Path(path))


def _read_text(path: Path) -> str:
    """A dataset's small text file (class names, templates, shard count) as UTF-8; `DataError` naming it otherwise."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None


def _lines(text: str | None) -> tuple[str, ...]:
    return tuple(ln.strip() for ln in (text or "").splitlines() if ln.strip())


def resolve_dataset(name: str, data_root: str | os.PathLike | None = None, split: str = "test") -> DatasetSpec:
    """Resolve `wds/NAME`, `imagefolder:PATH` or a folder path into a `DatasetSpec` (remote shards are fetched)."""
    if name.startswith("wds/"):
        return _resolve_wds(name, _wds_root(name, data_root), split)
    path = name[len("imagefolder:"):] if name.startswith("imagefolder:") else name
    if os.path.isdir(path):
        return _resolve_imagefolder(name, Path(path), split)
    raise DataError(f"unknown dataset '{name}': use wds/NAME (under the data root) or imagefolder:PATH")


def _wds_root(name: str, data_root: str | os.PathLike | None) -> str:
    """The data root for `wds/NAME`: `--data-root`, else `$QCLIP_DATA_ROOT`, else the user cache for a registered
    dataset (built there on first use, see `qclip.io.registry`), else the public CLIP_benchmark location."""
    if data_root or os.environ.get("QCLIP_DATA_ROOT"):
        return resolve_data_root(data_root)
    from . import registry

    short = name[len("wds/"):]
    if short and registry.canonical_name(short) == short:
        return str(registry.ensure_dataset(short).parent)
    return REMOTE_DATA_ROOT


def _not_found_hint(short: str, root: str) -> str:
    from . import registry

    if registry.canonical_name(short) == short:
        return f"build it with: {registry.fetch_command(short, root)}"
    return "set --data-root or QCLIP_DATA_ROOT"


def _resolve_wds(name: str, root: str, split: str) -> DatasetSpec:
    short = name[len("wds/"):]
    if not short or "/" in short:
        raise DataError(f"bad dataset name '{name}': expected wds/NAME")
    base = _wds_base(root, short)
    if not is_url(base) and not os.path.isdir(base):
        raise DataError(f"dataset '{name}' not found: no folder {base} ({_not_found_hint(short, root)})")
    nshards_text = _read_meta(base, f"{split}/nshards.txt", short, required=True)
    try:
        nshards = int(nshards_text.strip())
    except ValueError:
        raise DataError(f"bad {base}/{split}/nshards.txt: {nshards_text[:40]!r} is not a shard count") from None
    if nshards <= 0:
        raise DataError(f"bad {base}/{split}/nshards.txt: the shard count must be >= 1, got {nshards}")
    if nshards > MAX_SHARDS:
        raise DataError(f"bad {base}/{split}/nshards.txt: {nshards} shards, more than the {MAX_SHARDS} qclip reads")
    classnames = _lines(_read_meta(base, "classnames.txt", short, required=True))
    if not classnames:
        raise DataError(f"bad {base}/classnames.txt: it lists no class names")
    templates = _lines(_read_meta(base, "zeroshot_classification_templates.txt", short, required=False))
    if is_url(base):
        shard_dir = _remote_cache(base, short) / split
        shards = tuple(str(fetch(f"{base}/{split}/{i}.tar", shard_dir / f"{i}.tar")) for i in range(nshards))
    else:
        shards = tuple(os.path.join(base, split, f"{i}.tar") for i in range(nshards))
        for shard in shards:
            if not os.path.isfile(shard):
                raise DataError(f"missing shard {shard} (nshards.txt says {nshards})")
    return DatasetSpec(name, "wds", split, shards, classnames, templates or DEFAULT_TEMPLATES)


def _resolve_imagefolder(name: str, folder: Path, split: str) -> DatasetSpec:
    if (folder / split).is_dir():
        folder = folder / split
    classes, samples = scan_image_folder(folder)  # a loop, a dangling link: refused here, before any work
    if not classes:
        raise DataError(f"image folder {folder} has no class sub-folders")
    if not samples:
        raise DataError(f"image folder {folder} holds no image files")
    names_file = next((p for p in (folder / "classnames.txt", folder.parent / "classnames.txt") if p.is_file()), None)
    classnames = _lines(_read_text(names_file)) if names_file else tuple(c.replace("_", " ") for c in classes)
    if len(classnames) != len(classes):
        raise DataError(f"{names_file} lists {len(classnames)} names but {folder} has {len(classes)} class folders")
    tfile = next((p for p in (folder / "zeroshot_classification_templates.txt",
                              folder.parent / "zeroshot_classification_templates.txt") if p.is_file()), None)
    templates = _lines(_read_text(tfile)) if tfile else DEFAULT_TEMPLATES
    return DatasetSpec(name, "imagefolder", split, (str(folder),), classnames, templates)


_MAGIC = ((b"\x1f\x8b", lambda f: gzip.GzipFile(fileobj=f, mode="rb")), (b"BZh", bz2.BZ2File),
          (b"\xfd7zXZ\x00", lzma.LZMAFile))


@contextlib.contextmanager
def _open_shard(shard: str):
    """Open a shard as a decompressed byte stream (a context manager that closes the file too).

    Compression is detected from the magic bytes, and Python's decompressors raise `EOFError` on a truncated
    stream (tarfile's own stream reader stops silently there). A plain tar must end with a zero block.
    """
    with open(shard, "rb") as raw:
        head = raw.read(6)
        raw.seek(0)
        for magic, opener in _MAGIC:
            if head.startswith(magic):
                with opener(raw) as stream:
                    yield stream
                return
        size = raw.seek(0, os.SEEK_END)
        tail = b""
        if size >= tarfile.BLOCKSIZE:
            raw.seek(size - tarfile.BLOCKSIZE)
            tail = raw.read(tarfile.BLOCKSIZE)
        raw.seek(0)
        if tail.count(0) != tarfile.BLOCKSIZE:
            raise DataError(f"corrupt shard {shard}: truncated (no end-of-archive block)")
        yield raw


class _StrictTarInfo(tarfile.TarInfo):
    """TarInfo whose reader raises on a bad, short or missing header (tarfile's iterator would stop silently)."""

    @classmethod
    def fromtarfile(cls, tf):
        try:
            return super().fromtarfile(tf)
        except (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError, tarfile.InvalidHeaderError) as exc:
            raise tarfile.ReadError(f"bad tar header at byte {tf.offset}: {exc}") from None


def iter_wds_samples(shard: str) -> Iterator[WdsSample]:
    """Stream the samples of one shard front to back (plain, gzip, bz2 or xz tar); errors name the shard."""
    current: WdsSample | None = None
    try:
        with _open_shard(shard) as stream, tarfile.open(fileobj=stream, mode="r|*", tarinfo=_StrictTarInfo) as tf:
            for member in tf:
                if not member.isfile():
                    continue
                head, _, base = member.name.rpartition("/")
                stem, dot, ext = base.partition(".")
                if not dot:
                    continue
                key = f"{head}/{stem}" if head else stem
                if current is None or key != current.key:
                    if current is not None:
                        yield current
                    current = WdsSample(key)
                data = tf.extractfile(member).read()
                ext = ext.lower()
                if ext in IMAGE_EXTS:
                    current.image, current.image_ext = data, ext
                elif ext == "cls":
                    current.label = _parse_label(data, member.name, shard)
                elif ext == "txt":
                    current.text = data.decode("utf-8").strip()
    except FileNotFoundError:
        raise DataError(f"missing shard {shard}") from None
    except DataError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, OSError, ValueError) as exc:
        raise DataError(f"corrupt shard {shard}: {exc}") from exc
    if current is not None:
        yield current


def _parse_label(data: bytes, member: str, shard: str) -> int:
    """A `.cls` member's class index; a non-integer or negative one is a `DataError` naming member and shard."""
    try:
        label = int(data.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise DataError(f"bad label in member {member} of {shard}: {data[:20]!r} is not a class index") from None
    if label < 0:
        raise DataError(f"bad label in member {member} of {shard}: {label} is negative")
    return label


def decode_image(sample: WdsSample, shard: str) -> Image.Image:
    """Decode a sample's image bytes to RGB; errors (also a decompression bomb) name the member and shard."""
    member = f"{sample.key}.{sample.image_ext}"
    if sample.image is None:
        raise DataError(f"sample {sample.key} in {shard} has no image member")
    return open_rgb(io.BytesIO(sample.image), f"image member {member} in {shard}")


def _distributed_rank() -> tuple[int, int]:
    """(rank, world size) of an initialised torch.distributed group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class WdsImageDataset(IterableDataset):
    """Stream (image, label) pairs from wds shards with any number of DataLoader workers.

    With `block` = the DataLoader's batch size (as `make_loader` sets it), every worker reads the stream and
    decodes only the blocks `b` of `block` consecutive samples with `b % num_workers == worker_id`; the loader's
    round-robin over workers then yields exactly the batches of a 0-worker loader, so results (seeded splits,
    corruption noise, bootstrap) do not depend on the number of workers. Without `block`, each worker reads its
    own shards when there are at least as many shards as workers (and no limit or start), else every
    `num_workers`-th sample. `limit` keeps the first N samples of the stream. Under torch.distributed each rank
    reads every `world`-th sample (set a limit divisible by world x batch size so ranks see equal batch counts).
    `start` skips the first N samples of this rank's stream without decoding them (a resumed epoch).
    """

    def __init__(self, shards: tuple[str, ...] | list[str], transform: Callable | None = None,
                 limit: int | None = None, with_text: bool = False, block: int | None = None,
                 num_classes: int | None = None):
        self.num_classes = num_classes  # labels are checked against it when given
        self.shards = tuple(shards)
        self.transform = transform
        self.limit = limit
        self.with_text = with_text
        self.block = block
        self.start = 0

    def _emit(self, sample: WdsSample, shard: str):
        if sample.label is None:
            raise DataError(f"sample {sample.key} in {shard} has no .cls member")
        if self.num_classes is not None and sample.label >= self.num_classes:
            raise DataError(f"label {sample.label} of member {sample.key}.cls in {shard} is outside the "
                            f"{self.num_classes} classes of the dataset's classnames.txt")
        image = decode_image(sample, shard)
        if self.transform is not None:
            image = self.transform(image)
        if self.with_text:
            return image, sample.label, sample.text or ""
        return image, sample.label

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        rank, world = _distributed_rank()
        if world == 1 and self.block is None and self.limit is None and not self.start and len(self.shards) >= nw:
            for shard in self.shards[wid::nw]:
                for sample in iter_wds_samples(shard):
                    yield self._emit(sample, shard)
            return
        block = self.block or 1
        index = 0  # position in the whole stream (limit counts here)
        mine = 0  # position in this rank's stream (start counts here)
        for shard in self.shards:
            for sample in iter_wds_samples(shard):
                if self.limit is not None and index >= self.limit:
                    return
                index += 1
                if (index - 1) % world != rank:
                    continue
                pos = mine - self.start
                mine += 1
                if pos >= 0 and (pos // block) % nw == wid:
                    yield self._emit(sample, shard)


def make_dataset(spec: DatasetSpec, transform: Callable | None = None, limit: int | None = None) -> Dataset:
    """Build the torch dataset of a resolved spec (first `limit` samples when given)."""
    if limit is not None and limit <= 0:
        raise DataError(f"--limit must be positive, got {limit}")
    if spec.kind == "wds":
        return WdsImageDataset(spec.shards, transform, limit, num_classes=spec.num_classes)
    ds = ImageFolderDataset(spec.shards[0], transform=transform)
    return Subset(ds, range(min(limit, len(ds)))) if limit is not None else ds


def make_loader(spec: DatasetSpec, transform: Callable | None, *, batch_size: int = 256, num_workers: int = 2,
                limit: int | None = None) -> DataLoader:
    """Build a DataLoader over a resolved spec, yielding (images, labels) batches in stream order (the same
    batches for any number of workers)."""
    ds = make_dataset(spec, transform, limit)
    if isinstance(ds, WdsImageDataset):
        ds.block = batch_size
    return DataLoader(ds, batch_size=batch_size, num_workers=num_workers, shuffle=False,
                      persistent_workers=False, pin_memory=torch.cuda.is_available())
