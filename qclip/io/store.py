"""Append-only JSONL results store keyed by a config hash: atomic appends, skip-done on rerun, kill-safe.

Each record is one line written with a single `write` on an `O_APPEND` descriptor and fsync'd, under a file
lock so shards can share one store. A line cut short by a crash is ignored on read, so an interrupted run
loses at most the record in flight.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import time
from pathlib import Path

from filelock import FileLock

from .errors import QclipInputError
from .paths import output_errors

__all__ = ["config_hash", "ResultsStore"]

log = logging.getLogger(__name__)


def config_hash(config: dict) -> str:
    """Stable 16-hex-digit hash of a JSON-serialisable config (key order does not matter)."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class ResultsStore:
    """One JSONL file of result records; `record["hash"]` identifies the config that produced it."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if self.path.is_dir():
            raise QclipInputError(f"results store {self.path} is a folder, expected a JSONL file")
        self._lock = FileLock(str(self.path) + ".lock")

    def records(self) -> list[dict]:
        """All complete records, in write order. A torn line (a crash mid-write) is skipped; a line that is not UTF-8
        JSON of a record is skipped with a warning naming it, so one bad line never blocks later runs."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise QclipInputError(f"cannot read results store {self.path}: {exc.strerror or exc}") from None
        out, bad = [], []
        lines = raw.split(b"\n")
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
                if number < len(lines):  # not the torn last line of a crash
                    bad.append(number)
                continue
            if isinstance(rec, dict) and isinstance(rec.get("hash"), str):
                out.append(rec)
            else:
                bad.append(number)
        if bad:
            log.warning("results store %s: skipped %d unreadable line(s) (first: line %d); their configs count as not "
                        "done", self.path, len(bad), bad[0])
        return out

    def done(self) -> set[str]:
        """Hashes of configs that already have a record."""
        return {r["hash"] for r in self.records()}

    def get(self, hash_: str) -> dict | None:
        """The record of a config hash, if any (the first one written)."""
        return next((r for r in self.records() if r["hash"] == hash_), None)

    def append(self, record: dict) -> bool:
        """Append `record` unless its hash is already stored; return True when written."""
        if "hash" not in record:
            raise ValueError("a record needs a 'hash' (see config_hash)")
        line = json.dumps({**record, "written_at": record.get("written_at", time.time())}, allow_nan=False,
                          sort_keys=True) + "\n"
        with output_errors(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)  # only now: a run that fails first leaves no folder
            with self._lock:
                if record["hash"] in self.done():
                    return False
                self._write_line(line.encode("utf-8"))
        return True

    def _write_line(self, data: bytes) -> None:
        """Append one line with a single write; on a failed or short write the file is cut back to its old size, so
        no partial line (nor a store file this write created) remains."""
        existed = self.path.exists()
        with open(self.path, "rb+" if existed else "wb") as f:  # mend a torn last line first
            f.seek(0, os.SEEK_END)
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            size = os.fstat(fd).st_size
            try:
                written = os.write(fd, data)
                if written != len(data):  # a short write: the disk filled up mid-line
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                os.fsync(fd)
            except OSError:
                try:
                    os.ftruncate(fd, size)
                    if not existed:
                        os.unlink(self.path)
                except OSError:
                    pass
                raise
        finally:
            os.close(fd)
