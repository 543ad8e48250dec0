"""Fetch remote files (dataset shards, metadata and source archives) into the user cache.

`fetch(url, dest)` writes `dest` atomically: it downloads into `dest.part` beside it (with a tqdm progress bar on a
terminal), resumes an interrupted download with an HTTP `Range` request (retrying a dropped connection a few times),
checks the sha256 / md5 when given, then renames the part file to `dest`. A failed check deletes the part file; a
download that keeps dropping leaves `dest.part` so the next call resumes it.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

from filelock import FileLock
from tqdm.auto import tqdm

from .errors import DataError

__all__ = ["is_url", "fetch", "file_digest"]

_CHUNK = 1 << 20
#: Seconds to wait for a connection or for the next bytes of a response.
TIMEOUT_S = 60.0
#: Extra attempts after a dropped connection (each resumes where the last one stopped).
RETRIES = 3


def is_url(location: str) -> bool:
    """True for http(s) locations."""
    return location.startswith(("http://", "https://"))


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file (`sha256` or `md5`), read in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _check(path: Path, url: str, sha256: str | None, md5: str | None) -> None:
    for algorithm, want in (("sha256", sha256), ("md5", md5)):
        if want and file_digest(path, algorithm) != want.lower():
            got = file_digest(path, algorithm)
            path.unlink(missing_ok=True)
            raise DataError(f"checksum mismatch for {url}: {algorithm} {got[:16]}..., expected {want[:16]}... "
                            "(file deleted)")


def _attempt(url: str, part: Path, timeout: float, bar: tqdm) -> bool:
    """Download (the rest of) `url` into `part`; True when complete, False when the connection dropped."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        resp = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # our part file already holds everything (or more): start over once
            part.unlink()
            return False
        raise
    with resp:
        if have and resp.status != 206:  # the server ignored the Range header: start from zero
            have = 0
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        bar.reset(total=total)
        bar.update(have)
        got = have
        with open(part, "ab" if have else "wb") as out:
            try:
                while chunk := resp.read(_CHUNK):
                    out.write(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
            except (http.client.IncompleteRead, ConnectionError, socket.timeout, TimeoutError):
                return False
    return total is None or got >= total


def fetch(url: str, dest: str | os.PathLike, *, progress: bool = True, sha256: str | None = None,
          md5: str | None = None, timeout: float = TIMEOUT_S, retries: int = RETRIES) -> Path:
    """Download `url` to `dest` unless it is already there (and matches the given checksums); resume a dropped
    download up to `retries` times; raise `DataError` naming the URL on failure."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest) + ".lock"):  # one writer of `dest.part` at a time, across processes
        return _fetch_locked(url, dest, progress, sha256, md5, timeout, retries)


def _fetch_locked(url: str, dest: Path, progress: bool, sha256: str | None, md5: str | None, timeout: float,
                  retries: int) -> Path:
    if dest.exists():
        if not (sha256 or md5):
            return dest
        try:
            _check(dest, url, sha256, md5)
            return dest
        except DataError:
            pass  # a stale or damaged copy: deleted by the check, download again
    part = dest.with_name(dest.name + ".part")
    attempts = retries + 1
    with tqdm(total=None, unit="B", unit_scale=True, desc=f"fetch {dest.name}", disable=None if progress else True,
              leave=False) as bar:
        for attempt in range(attempts):
            try:
                if _attempt(url, part, timeout, bar):
                    break
            except urllib.error.HTTPError as exc:
                if exc.code < 500 or attempt == attempts - 1:
                    raise DataError(f"cannot fetch {url}: HTTP {exc.code} {exc.reason}") from None
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
                reason = getattr(exc, "reason", exc)
                if attempt == attempts - 1:
                    raise DataError(f"cannot fetch {url}: {reason}") from None
            if attempt < attempts - 1:
                time.sleep(min(0.2 * 2 ** attempt, 5.0))
        else:
            size = part.stat().st_size if part.exists() else 0
            raise DataError(f"cannot fetch {url}: the connection dropped {attempts} times ({size} bytes so far, kept "
                            f"in {part} to resume)")
    _check(part, url, sha256, md5)
    os.replace(part, dest)
    return dest
