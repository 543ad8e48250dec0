"""Fetch remote files (dataset shards, metadata and source archives) into the user cache.

`fetch(url, dest)` writes `dest` atomically: it downloads into `dest.part` beside it (with a progress bar on a
terminal), resumes an interrupted download with an HTTP `Range` request, checks the sha256 / md5 when given, then
renames the part file to `dest`. A file that fails its check is set aside as `dest.bad` (`ChecksumError`).

Transient failures (connection refused, reset or dropped, a timeout, HTTP 5xx, 408 and 429) are retried with
exponential back-off (0.5 s doubling up to 15 s a wait) until the waits would exceed a budget of `RETRY_BUDGET_S`
seconds (`$QCLIP_FETCH_RETRY_BUDGET_S` overrides); a `Retry-After` header (seconds or an HTTP date) on 429/503 is
waited for when it is longer. A wait after an attempt that received bytes starts the doubling again. Other HTTP
errors (404, 403, ...) are not retried. When the budget runs out, `dest.part` is kept and the next call resumes it.
"""

from __future__ import annotations

import email.utils
import http.client
import logging
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from filelock import FileLock
from tqdm.auto import tqdm

from .errors import DataError, QclipInputError
from .integrity import file_digest
from .progress import LogProgress, progress_bar

__all__ = ["RETRY_BUDGET_S", "RETRY_BUDGET_ENV", "ChecksumError", "is_url", "fetch", "bad_copy_path", "set_aside", "retry_budget",
           "retry_after_seconds"]

_CHUNK = 1 << 20
#: Seconds to wait for a connection or for the next bytes of a response.
TIMEOUT_S = 60.0
#: Total seconds of back-off waits before a failing download gives up.
RETRY_BUDGET_S = 60.0
#: Environment variable overriding `RETRY_BUDGET_S` (seconds, >= 0).
RETRY_BUDGET_ENV = "QCLIP_FETCH_RETRY_BUDGET_S"
#: First back-off wait and the cap of one wait, in seconds.
BACKOFF_FIRST_S, BACKOFF_CAP_S = 0.5, 15.0
_RETRY_HTTP = {408, 429, 500, 502, 503, 504}

_log = logging.getLogger(__name__)
# the retry loop waits and reads the clock through these (tests record the waits instead of sleeping)
_sleep: Callable[[float], None] = time.sleep
_clock: Callable[[], float] = time.time


class ChecksumError(DataError):
    """A downloaded or cached file does not match the sha256 / md5 the caller expects (it was set aside)."""


class _Transient(Exception):
    """One attempt failed in a way worth retrying: `reason` for messages, `retry_after` seconds when the server
    said."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason, self.retry_after = reason, retry_after


def is_url(location: str) -> bool:
    """True for http(s) locations."""
    return location.startswith(("http://", "https://"))


def retry_budget() -> float:
    """Seconds of back-off a download may wait in total: `$QCLIP_FETCH_RETRY_BUDGET_S`, else `RETRY_BUDGET_S`."""
    raw = os.environ.get(RETRY_BUDGET_ENV, "").strip()
    if not raw:
        return RETRY_BUDGET_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also refuses nan
        raise QclipInputError(f"{RETRY_BUDGET_ENV}={raw!r} must be a number of seconds >= 0")
    return value


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """Seconds a `Retry-After` header asks to wait (delta-seconds or an HTTP date, relative to `now`, epoch
    seconds); None when absent or unreadable, 0 for a date in the past."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:  # RFC 9110 dates are GMT; a zone-less one is not one of them
        return None
    return max(0.0, when.timestamp() - now)


def bad_copy_path(dest: Path) -> Path:
    """Where a copy of `dest` that failed its check is kept: `<dest>.bad`."""
    return dest.with_name(dest.name + ".bad")


def set_aside(path: Path, dest: Path | None = None) -> Path:
    """Move a file that failed its check (a copy of `dest`, default `path` itself) to `bad_copy_path(dest)`, replacing
    an older one, so that it is never trusted again; return the new path."""
    bad = bad_copy_path(dest or path)
    os.replace(path, bad)
    return bad


def _check(path: Path, dest: Path, url: str, sha256: str | None, md5: str | None) -> None:
    """Check `path` (`dest` or its part file) against the digests; set it aside as `dest`'s bad copy if it fails."""
    for algorithm, want in (("sha256", sha256), ("md5", md5)):
        if want:
            got = file_digest(path, algorithm)
            if got != want.lower():
                bad = set_aside(path, dest)
                raise ChecksumError(f"checksum mismatch for {url}: {algorithm} {got[:16]}..., expected "
                                    f"{want[:16]}... (moved to {bad})")


def _attempt(url: str, part: Path, timeout: float, bar: tqdm | LogProgress) -> bool:
    """Download (the rest of) `url` into `part`; True when complete; `_Transient` when worth retrying."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        resp = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # our part file already holds everything (or more): start over
            part.unlink()
            raise _Transient("HTTP 416 for a resumed download (restarting it)", 0.0) from None
        if exc.code in _RETRY_HTTP:
            wait = retry_after_seconds(exc.headers.get("Retry-After"), _clock()) if exc.code in (429, 503) else None
            raise _Transient(f"HTTP {exc.code} {exc.reason}", wait) from None
        raise DataError(f"cannot fetch {url}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, (ConnectionError, TimeoutError, socket.timeout)):
            raise _Transient(str(reason)) from None
        raise DataError(f"cannot fetch {url}: {reason}") from None
    except (ConnectionError, TimeoutError, socket.timeout, http.client.HTTPException) as exc:
        raise _Transient(str(exc) or type(exc).__name__) from None
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
            except (http.client.IncompleteRead, ConnectionError, socket.timeout, TimeoutError) as exc:
                raise _Transient(f"the connection dropped ({type(exc).__name__})") from None
    if total is not None and got < total:
        raise _Transient(f"the connection dropped after {got} of {total} bytes")
    return True


def fetch(url: str, dest: str | os.PathLike, *, progress: bool = True, sha256: str | None = None,
          md5: str | None = None, timeout: float = TIMEOUT_S) -> Path:
    """Download `url` to `dest` unless it is already there (and matches the given checksums), retrying transient
    failures within `retry_budget()` seconds of back-off; raise `DataError` naming the URL on failure
    (`ChecksumError` when the bytes do not match)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    budget = retry_budget()
    with FileLock(str(dest) + ".lock"):  # one writer of `dest.part` at a time, across processes
        return _fetch_locked(url, dest, progress, sha256, md5, timeout, budget)


def _fetch_locked(url: str, dest: Path, progress: bool, sha256: str | None, md5: str | None, timeout: float,
                  budget: float) -> Path:
    if dest.exists():
        if not (sha256 or md5):
            return dest
        try:
            _check(dest, dest, url, sha256, md5)
            return dest
        except ChecksumError:
            pass  # a stale or damaged copy: set aside by the check, download again
    part = dest.with_name(dest.name + ".part")
    waited, step, attempts = 0.0, 0, 0
    with progress_bar(None, unit="B", unit_scale=True, desc=f"fetch {dest.name}", enabled=progress,
                      leave=False) as bar:
        while True:
            before = part.stat().st_size if part.exists() else 0
            attempts += 1
            try:
                _attempt(url, part, timeout, bar)
                break
            except _Transient as exc:
                failure = exc
            if part.exists() and part.stat().st_size > before:
                step = 0  # progress: the next wait is short again
            delay = min(BACKOFF_FIRST_S * 2 ** step, BACKOFF_CAP_S)
            if failure.retry_after is not None:
                delay = max(delay, failure.retry_after)
            if waited + delay > budget:
                size = part.stat().st_size if part.exists() else 0
                kept = (f"{size} bytes kept in {part}; the next call resumes it" if size else "nothing downloaded yet")
                raise DataError(f"cannot fetch {url}: {failure.reason} (gave up after {attempts} attempts and "
                                f"{waited:.1f} s of back-off, budget {budget:g} s; {kept})")
            _log.warning("fetch %s: %s; retrying in %.1f s (attempt %d, %.1f of %g s back-off used)", url,
                         failure.reason, delay, attempts + 1, waited, budget)
            _sleep(delay)
            waited += delay
            step += 1
    _check(part, dest, url, sha256, md5)
    os.replace(part, dest)
    return dest
