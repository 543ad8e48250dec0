"""`qclip` command line: argument parsing and dispatch only (every command is a library call)."""

from __future__ import annotations

import argparse
import logging
import os
import select
import sys
import traceback
from typing import Callable

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
    except Exception as exc:  # a bug, not bad input: the traceback is for a bug report
        if isinstance(exc, BrokenPipeError) and _stdout_reader_gone():
            raise  # not a bug: main() stops quietly
        traceback.print_exc()
        print("qclip: internal error (see the traceback above)", file=sys.stderr)
        return EXIT_INTERNAL
    return EXIT_OK


class _StderrHandler(logging.StreamHandler):
    """A handler writing to whatever `sys.stderr` is when a record is emitted (it may be replaced after set-up)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        """The current `sys.stderr`."""
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _configure_logging() -> None:
    """Warnings of qclip's packages to stderr; Lightning's start-up banners and tips silenced."""
    handler = _StderrHandler()
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


def _stdout_reader_gone() -> bool:
    """True when stdout is a pipe whose reader has closed it (a broken pipe elsewhere stays an internal error)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll() on this platform, or stdout is not a real file
        return True


def _quiet_on_broken_pipe(run: Callable[[], int]) -> int:
    """Run a command; when its reader went away (`qclip data list | head -1`), stop quietly with status 0.

    The output is flushed here so that a closed pipe shows up now rather than at interpreter exit, and stdout is then
    pointed at /dev/null so that the interpreter's own final flush cannot fail again (the Python docs' recipe).
    """
    try:
        code = run()
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):  # stdout is not a real file (captured, replaced): nothing left to silence
            pass
        finally:
            os.close(devnull)
        return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Run `qclip` with `argv` (default: sys.argv[1:]); return the exit status (0 also when the reader of stdout
    closed it early)."""
    return _quiet_on_broken_pipe(lambda: _main(list(sys.argv[1:] if argv is None else argv)))


def _main(argv: list[str]) -> int:
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
    except Exception as exc:
        if isinstance(exc, BrokenPipeError) and _stdout_reader_gone():
            raise  # not a bug: main() stops quietly
        traceback.print_exc()
        print("qclip: internal error (see the traceback above)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
