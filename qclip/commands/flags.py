"""Flags several commands share (device, precision, batch size, workers, progress), the argparse types that check
flag values, the one-line format of usage errors, and the parsing of flag values into validated objects; a bad
value is a `QclipInputError` (or an argparse usage error), exit 2 with one line on stderr."""

from __future__ import annotations

import argparse
import math
import sys
from typing import NoReturn

from qclip.io.validate import PRECISIONS

__all__ = ["positive_int", "non_negative_int", "non_negative_float", "one_line_errors", "add_runtime_args",
           "device_of", "parse_quant", "parse_pair", "check_outputs"]


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


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


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make `parser`'s usage errors one `qclip: error: ...` line on stderr (exit 2), like every other bad input."""
    command = parser.prog.split(" ", 1)[1] if " " in parser.prog else parser.prog

    def error(message: str) -> NoReturn:
        print(f"qclip: error: {command}: {message} (see: {parser.prog} --help)", file=sys.stderr)
        sys.exit(2)

    parser.error = error  # type: ignore[method-assign]
    return parser


def add_runtime_args(p: argparse.ArgumentParser, *, compile: bool = False) -> None:
    """--device, --precision, --batch-size, --workers, --no-progress (and --compile when `compile`)."""
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--precision", default="fp32", choices=list(PRECISIONS),
                   help="weights/compute precision; amp_bf16 = float32 weights, image tower under bfloat16 autocast")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--workers", type=non_negative_int, default=2, help="DataLoader worker processes (0: read in "
                   "the main process)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    if compile:
        p.add_argument("--compile", action="store_true",
                       help="compile the image tower with torch.compile (int8 kernels for integer exports)")


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
