"""The flag groups commands share (model, data root, runtime, progress, cache, wandb), the one-line format of usage
errors, and `given`, which passes on only the flags a user set: a flag's default lives once, in the config
dataclass or library function it feeds, not in the parser."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from .values import non_negative_int, positive_int

__all__ = ["one_line_errors", "given", "add_model_args", "add_data_root", "add_progress", "add_no_cache",
           "add_runtime_args", "add_wandb_args", "DATA_ROOT_HELP"]

DATA_ROOT_HELP = ("folder (or URL) holding wds_NAME/ folders; default $QCLIP_DATA_ROOT, else the user cache "
                  "(registered datasets are built there on first use, see docs/data.md)")


def one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make `parser`'s usage errors one `qclip: error: ...` line on stderr (exit 2), like every other bad input."""
    command = parser.prog.split(" ", 1)[1] if " " in parser.prog else parser.prog

    def error(message: str) -> NoReturn:
        print(f"qclip: error: {command}: {message} (see: {parser.prog} --help)", file=sys.stderr)
        sys.exit(2)

    parser.error = error  # type: ignore[method-assign]
    return parser


def given(args: argparse.Namespace, *names: str, **renamed: str) -> dict:
    """The flags among `names` (and `renamed`: keyword <- flag attribute) that the user set, as keywords; a flag
    left unset is left out, so the callee's own default applies."""
    pairs = [*((n, n) for n in names), *renamed.items()]
    return {key: getattr(args, attr) for key, attr in pairs if getattr(args, attr) is not None}


def add_model_args(p: argparse.ArgumentParser, *, model_help: str | None = None, quant_help: str | None = None,
                   pretrained_help: str = "pretrained tag (e.g. openai) or checkpoint path") -> None:
    """--model (required), --pretrained and, with `quant_help`, --quant."""
    p.add_argument("--model", required=True, help=model_help)
    p.add_argument("--pretrained", default=None, help=pretrained_help)
    if quant_help is not None:
        p.add_argument("--quant", default=None, help=quant_help)


def add_data_root(p: argparse.ArgumentParser, help: str = DATA_ROOT_HELP) -> None:
    """--data-root."""
    p.add_argument("--data-root", default=None, help=help)


def add_progress(p: argparse.ArgumentParser, help: str = "hide progress bars") -> None:
    """--no-progress."""
    p.add_argument("--no-progress", action="store_true", help=help)


def add_no_cache(p: argparse.ArgumentParser) -> None:
    """--no-cache."""
    p.add_argument("--no-cache", action="store_true", help="recompute text classifiers and features")


def add_runtime_args(p: argparse.ArgumentParser, *, precision: bool = True, compile: bool = False,
                     batch_size_help: str | None = None) -> None:
    """--device, --precision (with `precision`), --batch-size, --workers, --no-progress, --compile (with `compile`)."""
    from qclip.io.validate import PRECISIONS

    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    if precision:
        p.add_argument("--precision", default=None, choices=list(PRECISIONS), help="weights/compute precision"
                       "; amp_bf16 = float32 weights, image tower under bfloat16 autocast")
    p.add_argument("--batch-size", type=positive_int, default=None, help=batch_size_help)
    p.add_argument("--workers", type=non_negative_int, default=None, help="DataLoader worker processes (0: read in "
                   "the main process)")
    add_progress(p)
    if compile:
        p.add_argument("--compile", action="store_true",
                       help="compile the image tower with torch.compile (int8 kernels for integer exports)")


def add_wandb_args(p: argparse.ArgumentParser, help: str) -> None:
    """--wandb and --wandb-project."""
    p.add_argument("--wandb", action="store_true", help=help)
    p.add_argument("--wandb-project", default="qclip", help="wandb project")
