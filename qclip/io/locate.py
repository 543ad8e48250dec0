"""Dataset names resolved without reading data: where a run would read `wds/NAME` or `imagefolder:PATH` from, its
size when known (the registry's sample counts, the CLIP_benchmark size table `registry/clip_benchmark.json`, or the
image files of a folder counted from its listing) and what, if anything, a real run would stop on.

Used by `qclip ablate --dry-run` (`qclip.experiments.plan`); it follows `qclip.io.data.resolve_dataset`'s rules
without touching a shard.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

from .errors import DataError

__all__ = ["DatasetPlan", "known_sizes", "count_images", "plan_dataset", "root_description"]


@dataclass(frozen=True)
class DatasetPlan:
    """One dataset name of a grid, resolved without reading it: where a run reads it, its size when known, and what
    (if anything) a real run would stop on."""

    name: str
    kind: str  # registered | clip_benchmark | wds | imagefolder
    location: str
    status: str
    samples: dict[str, int] = field(default_factory=dict)  # images per split, when known
    size_source: str | None = None  # registry | CLIP_benchmark sizes | file listing
    problem: str | None = None
    roles: tuple[str, ...] = ()

    def size(self, split: str = "test") -> int | None:
        """Images in `split` when known, else None."""
        return self.samples.get(split)




@lru_cache(maxsize=1)
def known_sizes() -> dict:
    """The well-known CLIP_benchmark sets qclip does not build, with their sizes (`registry/clip_benchmark.json`)."""
    from . import registry

    path = Path(registry.__file__).with_name("registry") / "clip_benchmark.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))["datasets"]
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"cannot read the CLIP_benchmark size table {path}: {exc}") from None


def root_description(data_root: str | None) -> str:
    """Where `wds/NAME` is read from, in words."""
    from .paths import REMOTE_DATA_ROOT

    if data_root:
        return data_root
    if os.environ.get("QCLIP_DATA_ROOT"):
        return f"$QCLIP_DATA_ROOT = {os.environ['QCLIP_DATA_ROOT']}"
    return f"none given: registered sets from the user cache, others from {REMOTE_DATA_ROOT}"


def _wds_sizes(name: str, short: str) -> DatasetPlan:
    """`wds/NAME` with its kind and sizes (from the registry or the CLIP_benchmark table), not yet located."""
    from . import registry

    if registry.canonical_name(short) == short:
        return DatasetPlan(name, "registered", "", "", dict(registry.get_entry(short)["samples"]), "registry")
    known = known_sizes().get(short)
    if known:
        return DatasetPlan(name, "clip_benchmark", "", "", dict(known["samples"]), "CLIP_benchmark sizes")
    return DatasetPlan(name, "wds", "", "")


def _under_root(plan: DatasetPlan, short: str, root: str) -> DatasetPlan:
    """A `wds/NAME` under an explicit data root: present, remote, or missing (a real run stops there)."""
    from qclip.io.download import is_url

    from . import registry
    from .data import _wds_base  # the resolver's own rule for `<root>/wds_NAME` (and URL roots)
    from .paths import REMOTE_DATA_ROOT

    base = _wds_base(root, short)
    if is_url(base):
        return replace(plan, location=base, status="remote: fetched into the user cache on first use")
    if os.path.isdir(base):
        return replace(plan, location=base, status="present")
    if plan.kind == "registered":
        hint = f"build it with: {registry.fetch_command(short, root)}"
    else:
        hint = (f"put CLIP_benchmark's wds_{short} there, or run without --data-root / $QCLIP_DATA_ROOT to read it "
                f"from {REMOTE_DATA_ROOT}")
    return replace(plan, location=base, status=f"missing ({hint})",
                   problem=f"dataset '{plan.name}' not found: no folder {base} ({hint})")


def _in_cache(plan: DatasetPlan, short: str) -> DatasetPlan:
    """A registered `wds/NAME` without a data root: in the user cache, built there on first use unless offline."""
    from . import registry
    from .paths import cache_dir

    path = cache_dir("data") / f"wds_{short}"
    if path.is_dir():
        return replace(plan, location=str(path), status="present (user cache)")
    command = registry.fetch_command(short)
    if registry.offline():
        return replace(plan, location=str(path), status=f"missing; offline mode is on (run: {command})",
                       problem=f"dataset wds/{short} is not in {path.parent} and offline mode is on "
                               f"(QCLIP_OFFLINE / HF_HUB_OFFLINE); run: {command}")
    mb = registry.get_entry(short).get("download_mb", "?")
    return replace(plan, location=str(path), status=f"built there on first use (about {mb} MB to download)")


def _wds_plan(name: str, data_root: str | None) -> DatasetPlan:
    """`wds/NAME` located as `qclip.io.data` locates it (registered sets are not built, remote ones not fetched)."""
    from .data import _wds_base
    from .paths import REMOTE_DATA_ROOT, resolve_data_root

    short = name[len("wds/"):]
    if not short or "/" in short:
        raise DataError(f"bad dataset name '{name}': expected wds/NAME")
    plan = _wds_sizes(name, short)
    if data_root or os.environ.get("QCLIP_DATA_ROOT"):
        return _under_root(plan, short, resolve_data_root(data_root))
    if plan.kind == "registered":
        return _in_cache(plan, short)
    status = "public CLIP_benchmark location: fetched into the user cache on first use"
    if plan.kind == "wds":
        status += "; size unknown (neither registered nor a well-known CLIP_benchmark set: check the name)"
    return replace(plan, location=_wds_base(REMOTE_DATA_ROOT, short), status=status)


def count_images(folder: Path) -> tuple[int, int]:
    """(class folders, image files) of an ImageFolder tree, from the file listing (`scan_image_folder`: a directory
    loop or a dangling link is a `DataError`); nothing is decoded."""
    from .images import scan_image_folder

    classes, samples = scan_image_folder(folder)
    return len(classes), len(samples)


def _imagefolder_plan(name: str, path: str, split: str = "test") -> DatasetPlan:
    """`imagefolder:PATH` (relative paths from the working directory): present with its image count, or missing."""
    folder = Path(path)
    shown = str(folder) if folder.is_absolute() else f"{folder} (in {Path.cwd()})"
    if not folder.is_dir():
        return DatasetPlan(name, "imagefolder", shown, "missing (supply this folder)",
                           problem=f"dataset '{name}' not found: no folder {shown}")
    if (folder / split).is_dir():
        folder = folder / split
    classes, images = count_images(folder)
    if not classes:
        return DatasetPlan(name, "imagefolder", shown, "no class sub-folders",
                           problem=f"image folder {folder} has no class sub-folders")
    return DatasetPlan(name, "imagefolder", shown, f"present ({classes} class folders)", {split: images},
                       "file listing", problem=None if images else f"image folder {folder} holds no image files")


def plan_dataset(name: str, data_root: str | None = None) -> DatasetPlan:
    """Resolve one dataset name without reading data; `DataError` when no run could resolve it."""
    if name.startswith("wds/"):
        return _wds_plan(name, data_root)
    if name.startswith("imagefolder:"):
        return _imagefolder_plan(name, name[len("imagefolder:"):])
    if os.path.isdir(name):
        return _imagefolder_plan(name, name)
    raise DataError(f"unknown dataset '{name}': use wds/NAME (under the data root) or imagefolder:PATH")
