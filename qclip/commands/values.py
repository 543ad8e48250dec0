"""Flag values checked and parsed: the argparse types, and the parsing of flag text into validated objects; a bad
value is an argparse usage error or a `QclipInputError`, exit 2 with one line on stderr."""

from __future__ import annotations

import argparse
import math

__all__ = ["positive_int", "non_negative_int", "seed", "non_negative_float", "device_of", "parse_quant", "parse_pair",
           "parse_corruption_list", "check_outputs"]


def _int(text: str, maximum: int | None = None) -> int:
    """An integer flag value no larger than `maximum` (default `MAX_INT`: torch's C int arguments overflow past it)."""
    from qclip.io.validate import MAX_INT

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text[:40]!r}") from None
    limit = MAX_INT if maximum is None else maximum
    if value > limit:
        raise argparse.ArgumentTypeError(f"must be <= {limit}, got {text[:40]}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = _int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def seed(text: str) -> int:
    """argparse type: a seed, an integer in 0..2**32 - 1 (the bound every seed path accepts)."""
    from qclip.io.validate import MAX_SEED

    value = _int(text, MAX_SEED)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text[:40]}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def device_of(name: str | None) -> str:
    """The device asked for, else cuda when available, else cpu."""
    import torch

    return name or ("cuda" if torch.cuda.is_available() else "cpu")


def parse_quant(text: str | None):
    """A user's --quant spec parsed (None stays None)."""
    from qclip.io.validate import check_spec

    return None if text is None else check_spec("--quant", text)


def parse_pair(text: str | None) -> tuple[str, str] | None:
    """'COMMON,COUNTER' as a pair of dataset names (None stays None)."""
    from qclip.io.errors import QclipInputError

    if text is None:
        return None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if len(parts) != 2:
        raise QclipInputError(f"--spurious needs two datasets COMMON,COUNTER, got {text!r}")
    return parts[0], parts[1]


def parse_corruption_list(text: str | None) -> list[tuple[str, int]]:
    """--corruptions 'NAME:SEV,...' as (name, severity) pairs (None: none); naming no corruption is refused."""
    from qclip.io.errors import QclipInputError

    if text is None:
        return []
    from qclip.evals.corruptions import parse_corruptions

    try:
        corruptions = parse_corruptions(text)
    except ValueError as exc:
        raise QclipInputError(f"bad --corruptions: {exc}") from None
    if not corruptions:
        raise QclipInputError(f"bad --corruptions {text!r}: it names no corruption (e.g. gaussian_noise:3,defocus_blur)")
    return corruptions


def check_outputs(*, files: dict[str, str | None] | None = None, dirs: dict[str, str | None] | None = None) -> None:
    """Check output paths by flag (`{"--out": path}`) before any model or data is loaded: writable, not the wrong
    kind of path, enough free space (see `qclip.io.paths.check_output_file` / `check_output_dir`)."""
    from qclip.io.paths import check_output_dir, check_output_file

    for flag, path in (files or {}).items():
        if path is not None:
            check_output_file(path, flag)
    for flag, path in (dirs or {}).items():
        if path is not None:
            check_output_dir(path, flag)
