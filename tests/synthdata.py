"""A small synthetic data root in the real CLIP_benchmark wds layout, for tests that must not need the real datasets.

`build_synthetic_root(root)` writes the datasets the tests use, with the real sets' names, class names and templates
(from qclip's dataset registry) and the real sets' image formats, but few, generated images:

| dataset | splits (samples) | images |
|---|---|---|
| `wds_cifar10` | train 512 (2 shards of 256), test 320 (1 shard) | 32x32 JPEG q75 |
| `wds_fashion_mnist` | test 200 | 28x28 grayscale PNG |
| `wds_pacs_photo` | test 70 (10 per class) | 96x96 JPEG q90 |
| `wds_pacs_sketch` | test 70 (10 per class) | 96x96 JPEG q90, near-gray line drawings |
| `wds_imagenet_samples` | test 10 (classes 0..9, one image each; 1,000 names) | 128x128 JPEG q90 |
| `wds_imagenet_cifar10_shift` | test 45 (5 per CIFAR-10 class except deer) | 128x128 JPEG q90 |
| `wds_imagenet_cifar10_ood` | test 60 (1,000 names) | 128x128 JPEG q90 |

Every image carries its class: a class-dependent hue and a grating of class-dependent orientation and frequency, plus
a random blob, phase and noise per sample (all from `numpy.random.default_rng` seeded by dataset, split and index), so
a model can learn something from them. Samples are packed by `qclip.io.build.pack_shard` with each dataset's registry
tar settings (ustar, fixed metadata, gzip level 9, mtime 0): a rebuild gives byte-identical files. Keys are
`s` + 9 digits, increasing through a dataset's shards, test continuing after train, as in the real sets.
"""

from __future__ import annotations

import colorsys
import io
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from qclip.io.build import pack_shard
from qclip.io.registry import get_entry, load_registry

__all__ = ["SYNTHETIC", "Synthetic", "build_synthetic_root", "class_image"]


@dataclass(frozen=True)
class Synthetic:
    """One synthetic dataset: per split the shard sizes, and how its images look."""

    name: str
    splits: dict[str, tuple[int, ...]]  # split -> samples per shard
    size: int
    fmt: str  # "jpg" (RGB JPEG) or "png" (grayscale PNG)
    quality: int = 90
    sketch: bool = False  # near-gray line drawing (a PACS-sketch-like domain)
    labels: tuple[int, ...] | None = None  # the class indices used, cycled (default: all classes)

    def counts(self) -> dict[str, int]:
        """Samples per split."""
        return {split: sum(sizes) for split, sizes in self.splits.items()}


#: The synthetic datasets, by name (without the `wds_` prefix).
SYNTHETIC: dict[str, Synthetic] = {s.name: s for s in (
    Synthetic("cifar10", {"train": (256, 256), "test": (320,)}, 32, "jpg", quality=75),
    Synthetic("fashion_mnist", {"test": (200,)}, 28, "png"),
    Synthetic("pacs_photo", {"test": (70,)}, 96, "jpg"),
    Synthetic("pacs_sketch", {"test": (70,)}, 96, "jpg", sketch=True),
    Synthetic("imagenet_samples", {"test": (10,)}, 128, "jpg", labels=tuple(range(10))),
    Synthetic("imagenet_cifar10_shift", {"test": (45,)}, 128, "jpg", labels=(0, 1, 2, 3, 5, 6, 7, 8, 9)),
    # ImageNet classes that are no CIFAR-10 class (and no PACS class): a few OOD classes, cycled
    Synthetic("imagenet_cifar10_ood", {"test": (60,)}, 128, "jpg", labels=(1, 33, 88, 130, 309, 340, 417, 508, 779, 980)),
)}


def _seed(*parts) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode())


def class_image(rng: np.random.Generator, label: int, num_classes: int, size: int, *, sketch: bool = False) -> np.ndarray:
    """A uint8 [size, size, 3] image of class `label`: class hue and grating, random blob, phase and noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    angle = np.pi * label / num_classes
    freq = 2.0 + (label % 4)
    grating = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)) + rng.uniform(0, 2 * np.pi))
    cy, cx = rng.uniform(0.2, 0.8, 2)
    blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rng.uniform(0.05, 0.15) ** 2))
    if sketch:  # dark strokes where the grating crosses its midline, on white
        ink = np.clip(1.0 - 4.0 * np.abs(grating - 0.5) - 0.5 * blob, 0.0, 1.0)
        img = 255.0 * (1.0 - 0.8 * ink)[..., None].repeat(3, axis=2)
    else:
        hue = (label + 0.5) / num_classes
        colour = np.array(colorsys.hsv_to_rgb(hue, 0.7, 0.9))
        shade = 0.35 + 0.45 * grating + 0.2 * blob
        img = 255.0 * shade[..., None] * colour[None, None, :]
    img = img + rng.normal(0.0, 6.0, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _encode(pixels: np.ndarray, fmt: str, quality: int) -> bytes:
    buf = io.BytesIO()
    if fmt == "png":
        Image.fromarray(pixels.mean(axis=2).round().astype(np.uint8), "L").save(buf, "PNG")
    else:
        Image.fromarray(pixels, "RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def build_dataset(root: Path, ds: Synthetic) -> Path:
    """Write `root/wds_NAME` for one synthetic dataset; return its folder."""
    entry = get_entry(ds.name)
    text = load_registry()["text"]
    classnames = text["classnames"][entry["classnames"]]
    labels = ds.labels or tuple(range(len(classnames)))
    base = root / f"wds_{ds.name}"
    counter = 0
    for split in ("train", "test"):
        if split not in ds.splits:
            continue
        rng_order = np.random.default_rng(_seed(ds.name, split, "order"))
        order = rng_order.permutation(ds.counts()[split])  # shuffled, so every shard mixes classes
        index = 0
        for shard, n in enumerate(ds.splits[split]):
            chunk = []
            for _ in range(n):
                label = labels[int(order[index]) % len(labels)]
                rng = np.random.default_rng(_seed(ds.name, split, index))
                pixels = class_image(rng, label, len(classnames), ds.size, sketch=ds.sketch)
                chunk.append((f"s{counter:09d}", ds.fmt, _encode(pixels, ds.fmt, ds.quality), label))
                counter += 1
                index += 1
            _write(base / split / f"{shard}.tar", pack_shard(chunk, entry["tar"]))
        _write(base / split / "nshards.txt", f"{len(ds.splits[split])}\n".encode())
    _write(base / "classnames.txt", "".join(f"{c}\n" for c in classnames).encode())
    _write(base / "zeroshot_classification_templates.txt",
           "".join(f"{t}\n" for t in text["templates"][entry["templates"]]).encode())
    _write(base / "README.md", f"# wds_{ds.name} (synthetic test data)\n\nGenerated by tests/synthdata.py: "
           f"{ds.counts()} samples of {ds.size}x{ds.size} {ds.fmt.upper()}.\n".encode())
    return base


def build_synthetic_root(root: str | os.PathLike, names: list[str] | None = None) -> Path:
    """Write the synthetic datasets (default: all of `SYNTHETIC`) under `root`; return `root`."""
    root = Path(root)
    for name in names or list(SYNTHETIC):
        build_dataset(root, SYNTHETIC[name])
    return root
