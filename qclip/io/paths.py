"""Where qclip reads data and writes caches: data root and user cache dir resolution, atomic writes that honour the
umask and turn a full disk into a one-line error, and the checks of output paths done before any work."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import ConfigError, QclipInputError

__all__ = ["REMOTE_DATA_ROOT", "MIN_FREE_BYTES", "resolve_data_root", "cache_dir", "atomic_write_bytes",
           "atomic_write_text", "file_mode", "output_error", "check_output_file", "check_output_dir",
           "staged_output_dir"]

#: The public CLIP_benchmark wds location; `{name}` is the dataset name without the `wds/` prefix.
REMOTE_DATA_ROOT = "https://huggingface.co/datasets/clip-benchmark"
#: An output folder with less free space than this is refused before the work starts.
MIN_FREE_BYTES = 50 * 2**20
#: errno values of a write that fail because of the place written to (not a bug): reported in one line, exit 2.
_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR,
                  errno.ENAMETOOLONG, errno.EFBIG}


def resolve_data_root(data_root: str | os.PathLike | None = None) -> str:
    """Return the data root: the argument, else `$QCLIP_DATA_ROOT`, else the public CLIP_benchmark HTTP location."""
    if data_root:
        return str(data_root)
    env = os.environ.get("QCLIP_DATA_ROOT")
    return env if env else REMOTE_DATA_ROOT


def cache_dir(*parts: str) -> Path:
    """Return (and create) a folder under the user cache dir: `$QCLIP_CACHE_DIR`, else `$XDG_CACHE_HOME/qclip`."""
    root = os.environ.get("QCLIP_CACHE_DIR")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(xdg, "qclip")
    path = Path(root, *parts)
    with output_errors(path):
        path.mkdir(parents=True, exist_ok=True)
    return path


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (else set and restored at once)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a plain `open(path, "w")` would give a new file: 0o666 less the umask."""
    return 0o666 & ~_umask()


def output_error(path: str | os.PathLike, exc: OSError) -> Exception:
    """A failed write as a one-line `QclipInputError` when the place is at fault (full disk, read-only, ...); else
    `exc` itself (an unexpected OSError stays a bug)."""
    if exc.errno in _OUTPUT_ERRNOS:
        what = "disk full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else (exc.strerror or str(exc))
        return QclipInputError(f"cannot write {path}: {what}")
    return exc


@contextlib.contextmanager
def output_errors(path: str | os.PathLike) -> Iterator[None]:
    """Inside the block, an OSError the place is at fault for (full disk, read-only, ...) becomes the one-line
    `QclipInputError` of `output_error` naming `path`; any other error propagates as it is."""
    try:
        yield
    except OSError as exc:
        err = output_error(path, exc)
        if err is exc:
            raise
        raise err from exc


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` via a temp file in the same folder and `os.replace`, so readers never see half a file;
    the file is fsynced before the rename and its folder after it, so a crash leaves the old or the new file.

    The file gets the mode a plain write would (0o666 less the umask); a full disk or an unwritable folder is a
    one-line `QclipInputError` and leaves neither the temp file nor a partial `path`."""
    path = Path(path)
    tmp = None
    with output_errors(path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, file_mode())
            os.replace(tmp, path)
            tmp = None
            _fsync_dir(path.parent)
        except BaseException:
            _discard(tmp)
            raise


def _fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename survives a crash only once its folder is synced); skipped where the OS
    cannot open a folder (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a folder; the file itself is synced
        pass
    finally:
        os.close(fd)


def _discard(tmp: str | None) -> None:
    if tmp is not None:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 text atomically (see `atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _existing_ancestor(path: Path) -> Path:
    """`path` or its nearest ancestor that exists."""
    path = Path(os.path.abspath(path))
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def _probe_folder(folder: Path, flag: str, target: Path, min_free: int) -> None:
    """Refuse `folder` unless a temp file can be created (and removed) in it and it has `min_free` bytes free."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".qclip-probe-", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise ConfigError(f"{flag} {target}: cannot write in {folder} ({exc.strerror or exc})") from None
    if min_free > 0:
        free = shutil.disk_usage(folder).free
        if free < min_free:
            raise ConfigError(f"{flag} {target}: only {free / 2**20:.1f} MB free in {folder} (qclip needs at least "
                              f"{min_free / 2**20:.0f} MB)")


def check_output_file(path: str | os.PathLike, flag: str, *, min_free: int = MIN_FREE_BYTES) -> Path:
    """Refuse an output file path before any work: an existing folder or non-file, a parent that is a file, an
    unwritable folder, or too little free space (`ConfigError` naming `flag`). Creates nothing."""
    target = Path(path)
    if target.is_dir():
        raise ConfigError(f"{flag} {target} is a folder, expected a file path")
    if os.path.lexists(target) and not target.is_file():
        raise ConfigError(f"{flag} {target} exists and is not a regular file")
    folder = _existing_ancestor(target.parent)
    if not folder.is_dir():
        raise ConfigError(f"{flag} {target}: {folder} is a file, not a folder")
    _probe_folder(folder, flag, target, min_free)
    return target


def check_output_dir(path: str | os.PathLike, flag: str, *, min_free: int = MIN_FREE_BYTES) -> Path:
    """Refuse an output folder before any work: a path that is a file (or under one), an unwritable folder, or too
    little free space (`ConfigError` naming `flag`). Creates nothing."""
    target = Path(path)
    if os.path.lexists(target) and not target.is_dir():
        raise ConfigError(f"{flag} {target} is a file, expected a folder")
    folder = _existing_ancestor(target)
    if not folder.is_dir():
        raise ConfigError(f"{flag} {target}: {folder} is a file, not a folder")
    _probe_folder(folder, flag, target, min_free)
    return target


@contextlib.contextmanager
def staged_output_dir(target: str | os.PathLike) -> Iterator[Path]:
    """A hidden temp folder beside `target` (in its nearest existing ancestor, so on the same file system) to write
    a command's outputs into; when the block ends without error its files are moved into `target` (created then),
    else the temp folder is removed. A run that fails half-way thus leaves `target` as it was."""
    target = Path(target)
    base = _existing_ancestor(target.parent if not target.exists() else target)
    with output_errors(target):
        stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.qclip-stage-", dir=base))
    try:
        with output_errors(target):
            yield stage
            target.mkdir(parents=True, exist_ok=True)
            for path in sorted(stage.rglob("*")):
                if path.is_file():
                    dest = target / path.relative_to(stage)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(path, dest)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
