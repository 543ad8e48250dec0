"""Errors that mean "bad input": the CLI maps them to exit status 2 with a one-line reason."""

from __future__ import annotations

__all__ = ["QclipInputError", "ConfigError", "ModelLoadError", "DataError", "one_line"]


class QclipInputError(ValueError):
    """A user-supplied name, path or file is unusable; the message says which and why."""


class ConfigError(QclipInputError):
    """A configuration value (CLI flag, grid key, config field) has the wrong type or is out of range."""


class ModelLoadError(QclipInputError):
    """A model name, tag or checkpoint could not be resolved or read."""


class DataError(QclipInputError):
    """A dataset name, shard or sample could not be resolved or read."""


#: The longest error line printed: a longer one (a huge value echoed somewhere) is cut in the middle.
MAX_LINE = 1000


def one_line(exc: BaseException) -> str:
    """Return the one-line reason of an error (at most `MAX_LINE` characters), also when a DataLoader worker re-raised
    it with a traceback."""
    line = _one_line(exc)
    if len(line) <= MAX_LINE:
        return line
    return f"{line[:MAX_LINE // 2]} ...({len(line) - MAX_LINE} characters cut)... {line[-MAX_LINE // 2:]}"


def _one_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    if len(lines) > 1 and "Original Traceback" in str(exc):
        last = lines[-1]
        for prefix in (f"{type(exc).__module__}.{type(exc).__qualname__}: ", f"{type(exc).__name__}: "):
            if last.startswith(prefix):
                return last[len(prefix):]
        return last
    return " ".join(lines)
