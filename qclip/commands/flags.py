"""Flags several commands share (device, precision, batch size, workers, progress) and the parsing of flag values
into validated objects; a bad value is a `QclipInputError` (exit 2)."""

from __future__ import annotations

import argparse

from qclip.io.validate import PRECISIONS

__all__ = ["positive_int", "add_runtime_args", "device_of", "parse_quant", "parse_pair"]


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def add_runtime_args(p: argparse.ArgumentParser) -> None:
    """--device, --precision, --batch-size, --workers, --no-progress."""
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--precision", default="fp32", choices=list(PRECISIONS),
                   help="weights/compute precision; amp_bf16 = float32 weights, image tower under bfloat16 autocast")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def device_of(name: str | None) -> str:
    """The device asked for, else cuda when available, else cpu."""
    import torch

    return name or ("cuda" if torch.cuda.is_available() else "cpu")


def parse_quant(text: str | None):
    """A user's --quant spec parsed (None stays None)."""
    from qclip.evals.variants import parse_quant_arg

    return None if text is None else parse_quant_arg(text)


def parse_pair(text: str | None) -> tuple[str, str] | None:
    """'COMMON,COUNTER' as a pair of dataset names (None stays None)."""
    from qclip.io.errors import QclipInputError

    if text is None:
        return None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if len(parts) != 2:
        raise QclipInputError(f"--spurious needs two datasets COMMON,COUNTER, got {text!r}")
    return parts[0], parts[1]
