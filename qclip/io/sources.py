"""The sources a registered dataset is built from: downloaded into `<cache>/sources/`, read as the recipe needs and
checked against the registry before a build uses them.

A cached source is trusted only as far as its checks go, so a bad copy must never stay: a source that fails a check
(its sha256 / md5, the `source_tree_sha256` of the files a recipe reads, the `content_sha256` of a decompressed file,
or an unreadable archive) is set aside as `<file>.bad` and fetched once more; a second failure is an error naming the
cached file and the URL. A build that fails while one of its sources had no digest to check (a registry without
them) may also be the source's fault: those sources are set aside and fetched once more, and the build retried once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .build import BuildResult, build_dataset, read_gz_source, read_tar_source, source_filter
from .download import ChecksumError, bad_copy_path, fetch, set_aside
from .errors import DataError
from .integrity import sha256_bytes, tree_digest

__all__ = ["Source", "is_verified", "load_sources", "build_from_sources"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """One source of a dataset: its registry record (`kind`, digests, `strip`), download URL and cache path."""

    spec: dict
    url: str
    path: Path


def is_verified(entry: dict, source: Source) -> bool:
    """True when the registry holds a digest that checks everything dataset `entry` reads from `source`."""
    spec = source.spec
    if spec.get("sha256") or spec.get("md5"):
        return True
    return bool(entry.get("source_tree_sha256") if spec["kind"] == "tar" else spec.get("content_sha256"))


def _read_checked(entry: dict, source: Source, classnames: list[str]) -> dict[str, bytes] | bytes:
    """What the recipe reads from a downloaded source, checked against the registry's content digests."""
    spec = source.spec
    if spec["kind"] == "tar":
        files = read_tar_source(source.path, int(spec.get("strip", 1)), source_filter(entry, classnames))
        want = entry.get("source_tree_sha256")
        if want and tree_digest(files) != want:
            raise DataError(f"the files {entry['name']} is built from differ from the registry (source tree sha256 "
                            f"{tree_digest(files)[:12]}..., expected {want[:12]}...; {len(files)} files)")
        if not files:
            raise DataError(f"it holds none of the files {entry['name']} is built from")
        return files
    if spec["kind"] == "gz":
        data = read_gz_source(source.path)
        want = spec.get("content_sha256")
        if want and sha256_bytes(data) != want:
            raise DataError(f"its decompressed content differs from the registry (sha256 {sha256_bytes(data)[:12]}..., "
                            f"expected {want[:12]}...)")
        return data
    raise DataError(f"source {source.url}: unknown kind {spec['kind']!r}")


class _BadCopy(Exception):
    """A fetched or cached copy of a source failed a check; `bad` is where it was moved."""

    def __init__(self, reason: str, bad: Path):
        super().__init__(reason)
        self.reason, self.bad = reason, bad


def _set_aside(path: Path) -> Path:
    return set_aside(path) if path.exists() else bad_copy_path(path)


def _fetch_checked(entry: dict, source: Source, classnames: list[str], progress: bool) -> dict[str, bytes] | bytes:
    """Fetch (or reuse) one source and read it; `_BadCopy` after moving a copy that fails a check aside."""
    try:
        fetch(source.url, source.path, progress=progress, sha256=source.spec.get("sha256"), md5=source.spec.get("md5"))
    except ChecksumError as exc:  # fetch moved the bad bytes aside itself
        raise _BadCopy(str(exc), bad_copy_path(source.path)) from None
    try:
        return _read_checked(entry, source, classnames)
    except DataError as exc:
        raise _BadCopy(str(exc), _set_aside(source.path)) from None


def _load_one(entry: dict, source: Source, classnames: list[str], progress: bool) -> dict[str, bytes] | bytes:
    """One source's checked content; a copy that fails a check is set aside and fetched once more."""
    try:
        return _fetch_checked(entry, source, classnames, progress)
    except _BadCopy as exc:
        _log.warning("%s (from %s) failed its check: %s; moved it to %s and fetching it once more", source.path,
                     source.url, exc.reason, exc.bad)
    try:
        return _fetch_checked(entry, source, classnames, progress)
    except _BadCopy as exc:
        raise DataError(f"{source.path} (from {source.url}) failed its check again after a fresh download: "
                        f"{exc.reason}; the bad copy is kept as {exc.bad}") from None


def load_sources(entry: dict, sources: dict[str, Source], classnames: list[str], *,
                 progress: bool = True) -> dict[str, dict[str, bytes] | bytes]:
    """Per recipe role, the checked content of each source (fetched into its cache path unless there)."""
    return {role: _load_one(entry, source, classnames, progress) for role, source in sources.items()}


def build_from_sources(entry: dict, text: dict, sources: dict[str, Source], root: Path, *, progress: bool = True,
                       log: Callable[[str], None] | None = None) -> BuildResult:
    """Load the sources and build `entry` into `root`; a failed build whose sources were not all verified by a
    digest sets those aside, fetches them once more and builds once more."""
    classnames = text["classnames"][entry["classnames"]]
    data = load_sources(entry, sources, classnames, progress=progress)
    try:
        return build_dataset(entry, text, data, root, progress=log)
    except DataError as exc:
        suspects = [s for s in sources.values() if not is_verified(entry, s)]
        if not suspects:
            raise
        for source in suspects:
            bad = _set_aside(source.path)
            _log.warning("building %s failed (%s); its source %s has no registry digest, so it was moved to %s and "
                         "is fetched once more", entry["name"], exc, source.path, bad)
    data = load_sources(entry, sources, classnames, progress=progress)
    try:
        return build_dataset(entry, text, data, root, progress=log)
    except DataError as exc:
        named = ", ".join(f"{s.path} from {s.url}" for s in suspects)
        raise DataError(f"{exc} (again after a fresh download of {named})") from None
