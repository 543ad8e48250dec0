"""Check a wds dataset folder against the registry: exact sha256 of every file, with a content check for re-encoded
shards (their bytes depend on the Pillow / libjpeg / zlib versions that built them). Reads only; writes nothing.
"""

from __future__ import annotations

import io
import os
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from PIL import Image, UnidentifiedImageError

from .build import SHARD_SIZE, sha256_file
from .errors import DataError

__all__ = ["VerifyResult", "check_shard_content", "verify_dataset"]


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


def check_shard_content(stream: BinaryIO, expected: list[tuple[str, str, int]], where: str,
                        short_side: int | None = None) -> None:
    """Check that a (gzip) shard holds exactly the expected `(key, ext, label)` samples in order, as
    `<key>.<ext>` then `<key>.cls` members, each image decodable (shorter side `short_side` when given)."""
    names = [(f"{k}.{e}", f"{k}.cls", lab) for k, e, lab in expected]
    i = 0
    image_name = None
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tf:
            for member in tf:
                data = tf.extractfile(member).read() if member.isfile() else None
                if i >= len(names) or data is None:
                    raise DataError(f"{where}: unexpected member {member.name!r}")
                img_name, cls_name, label = names[i]
                if image_name is None:
                    if member.name != img_name:
                        raise DataError(f"{where}: member {member.name!r} where {img_name!r} was expected")
                    try:
                        with Image.open(io.BytesIO(data)) as im:
                            im.load()
                            size = im.size
                    except (UnidentifiedImageError, OSError) as exc:
                        raise DataError(f"{where}: cannot decode {member.name}: {exc}") from None
                    if short_side is not None and min(size) != short_side:
                        raise DataError(f"{where}: {member.name} is {size[0]}x{size[1]}, expected shorter side "
                                        f"{short_side}")
                    image_name = member.name
                else:
                    if member.name != cls_name or data.decode("ascii", "replace") != str(label):
                        raise DataError(f"{where}: {member.name!r} = {data[:8]!r} where {cls_name!r} = {label} "
                                        "was expected")
                    image_name = None
                    i += 1
    except DataError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataError(f"{where}: unreadable shard: {exc}") from None
    if i != len(names) or image_name is not None:
        raise DataError(f"{where}: {i} complete samples, expected {len(names)}")


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
        if sha256_file(path) != digest:
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
