"""`qclip` command line: argument parsing and dispatch only (every command is a library call)."""

from __future__ import annotations

import argparse
import logging
import sys
import traceback

__all__ = ["main", "build_parser"]

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT = 0, 1, 2


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("qclip")
    except PackageNotFoundError:
        return "unknown"



def build_parser() -> argparse.ArgumentParser:
    """The `qclip` argument parser with one sub-parser per command."""
    from .commands import COMMANDS, command

    parser = argparse.ArgumentParser(prog="qclip", description="Spectral analysis and reliability evaluation of "
                                     "quantized CLIP models.")
    parser.add_argument("--version", action="version", version=f"qclip {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("fit", help="QAT fine-tuning with the spectral regularizer (a LightningCLI: qclip fit --help)")
    for name in COMMANDS:
        command(name).add_parser(sub)
    return parser


def _run_fit(argv: list[str]) -> int:
    _configure_logging()
    from .io.errors import QclipInputError, one_line

    try:
        from .train.cli import run_fit

        run_fit(argv)
    except SystemExit as exc:  # jsonargparse exits 2 on a bad config, 0 on --help
        return int(exc.code or 0)
    except QclipInputError as exc:  # bad values the module / datamodule constructors or the loaders refused
        print(f"qclip: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("qclip: interrupted", file=sys.stderr)
        return 130
    except Exception:  # a bug, not bad input: the traceback is for a bug report
        traceback.print_exc()
        print("qclip: internal error (see the traceback above)", file=sys.stderr)
        return EXIT_INTERNAL
    return EXIT_OK


def _configure_logging() -> None:
    """Warnings of qclip's packages to stderr; Lightning's start-up banners and tips silenced."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("qclip: %(levelname)s: %(message)s"))
    for name in ("qclip",):
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(handler)
            logger.setLevel(logging.WARNING)
            logger.propagate = False
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # torchao registers an Enum with torch's pytree at import, which torch >= 2.10 reports as deprecated
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    """Run `qclip` with `argv` (default: sys.argv[1:]); return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "fit":  # a LightningCLI owns its own arguments
        return _run_fit(argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 on --help
        return int(exc.code or 0)
    _configure_logging()
    from .io.errors import QclipInputError, one_line

    try:
        from .commands import command

        return command(args.command).run(args)
    except QclipInputError as exc:
        print(f"qclip: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("qclip: interrupted", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print("qclip: internal error (see the traceback above)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
