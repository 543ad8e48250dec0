"""Check a wds dataset folder against the registry: exact sha256 of every file, with a content check for re-encoded
shards (their bytes depend on the Pillow / libjpeg / zlib versions that built them). Reads only; writes nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError
from .integrity import SHARD_SIZE, check_shard_content, file_digest

__all__ = ["VerifyResult", "verify_dataset"]


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of verifying one dataset folder: `status` is `ok`, `re-encoded`, `absent` or `FAILED`."""

    name: str
    path: Path
    status: str
    detail: str = ""

    @property
    def passed(self) -> bool:
        """True unless the folder failed the check (an absent dataset is not a failure here)."""
        return self.status != "FAILED"

    def line(self) -> str:
        """One line for the CLI."""
        return f"{self.name:28s} {self.status:10s} {self.detail}".rstrip()


def _expected_samples(folder: Path, split: str, ext: str) -> list[tuple[str, str, int]]:
    rows = (folder / f"sources_{split}.tsv").read_text(encoding="utf-8").splitlines()
    return [(key, ext, int(label)) for key, label, _ in (row.split("\t") for row in rows)]


def verify_dataset(entry: dict, folder: str | os.PathLike, *, strict: bool = False) -> VerifyResult:
    """Verify one dataset folder against its registry entry.

    Every text file (nshards, class names, templates, sources tsv, extras, README) must match its sha256. A shard
    must match too, except in a re-encoded dataset (PACS, ImageNet, Fashion-MNIST) without `strict`: there a byte
    mismatch is checked for content instead (keys, labels and order as in `sources_<split>.tsv`, every image
    decodable at the recipe's size) and reported as `re-encoded`.
    """
    name, folder = entry["name"], Path(folder)
    if not folder.is_dir():
        return VerifyResult(name, folder, "absent", f"no folder {folder}")
    expected = entry.get("files", {})
    if not expected:
        return VerifyResult(name, folder, "FAILED", "the registry lists no files for it")
    differing: list[str] = []
    for rel, digest in sorted(expected.items()):
        path = folder / rel
        if not path.is_file():
            return VerifyResult(name, folder, "FAILED", f"missing {path}")
        if file_digest(path) != digest:
            differing.append(rel)
    bad_text = [rel for rel in differing if not rel.endswith(".tar")]
    if bad_text:
        return VerifyResult(name, folder, "FAILED", f"{folder / bad_text[0]} differs from the registry (sha256)")
    if not differing:
        return VerifyResult(name, folder, "ok", f"{len(expected)} files match sha256")
    if strict or not entry.get("reencoded"):
        return VerifyResult(name, folder, "FAILED", f"{folder / differing[0]} differs from the registry (sha256)")
    recipe = entry["recipe"]
    ext = "png" if recipe["kind"] == "idx" else recipe["image"]["ext"]
    short = None if recipe["kind"] == "idx" else recipe["image"].get("short_side")
    try:
        for rel in differing:
            split, shard = rel.split("/")
            samples = _expected_samples(folder, split, ext)
            index = int(shard.split(".")[0])
            chunk = samples[index * SHARD_SIZE:(index + 1) * SHARD_SIZE]
            with open(folder / rel, "rb") as f:
                check_shard_content(f, chunk, str(folder / rel), short)
    except DataError as exc:
        return VerifyResult(name, folder, "FAILED", str(exc))
    return VerifyResult(name, folder, "re-encoded", f"content checked ({len(differing)} of "
                        f"{sum(r.endswith('.tar') for r in expected)} shards differ in bytes; text files match)")
