"""The integrity rules that fetching, building and verifying a dataset share: the shard size, file and tree digests,
and the content check of a packed shard. Imports nothing of qclip but its errors, so `build`, `verify` and
`download` all rest on it without importing each other.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import zlib
from typing import BinaryIO

from PIL import Image, UnidentifiedImageError

from .errors import DataError

__all__ = ["SHARD_SIZE", "sha256_bytes", "file_digest", "tree_digest", "check_shard_content"]

#: Samples per shard (CLIP_benchmark's public sets use at most 10,000).
SHARD_SIZE = 10_000
_CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file (`sha256` or `md5`), read in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def tree_digest(files: dict[str, bytes]) -> str:
    """sha256 over `path<TAB>sha256(bytes)` lines of the files, sorted by path (the registry's source check)."""
    lines = "".join(f"{rel}\t{sha256_bytes(files[rel])}\n" for rel in sorted(files))
    return sha256_bytes(lines.encode("utf-8"))


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
