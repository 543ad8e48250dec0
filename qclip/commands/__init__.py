"""One module per `qclip` command, each with `add_parser(subparsers)` and `run(args) -> exit status`.

`qclip fit` is not here: it is a LightningCLI (`qclip.train.cli`) that parses its own arguments."""

from importlib import import_module

__all__ = ["COMMANDS", "command"]

#: command name -> module (in `qclip --help` order)
COMMANDS = {"eval": "eval", "spectrum": "spectrum", "ablate": "ablate", "export": "export", "bench": "bench",
            "pretrain-demo": "pretrain_demo", "data": "data"}


def command(name: str):
    """The module of a command."""
    return import_module(f".{COMMANDS[name]}", __name__)
