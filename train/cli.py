"""`qclip fit`: a LightningCLI over `QATCLIPModule` and `PairDataModule` with qclip's defaults.

Defaults: a WandbLogger (offline unless `WANDB_MODE=online`), `last.ckpt` under `<default_root_dir>/checkpoints`
written atomically every `--checkpoint.every_n_train_steps` steps (50) and at each epoch end (resume with
`--ckpt_path last`: the resumed run ends with the uninterrupted run's weights), spectral diagnostics every 50
steps, and convert + export at the end.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import WandbLogger

from qclip.io.errors import ConfigError, ModelLoadError, one_line
from qclip.io.models import load_error_reason
from qclip.io.progress import is_terminal

from .callbacks import ExportQAT, SpectralDiagnostics
from .checkpointing import AtomicCheckpointIO, ResumeCheckpoint
from .data import PairDataModule
from .module import QATCLIPModule
from .progress import LogProgressCallback

__all__ = ["run_fit"]


class QclipCLI(LightningCLI):
    """LightningCLI with qclip's defaults: a wandb logger (offline unless WANDB_MODE=online) and checkpoints under
    the run's `default_root_dir`, plus the diagnostics and export callbacks unless the config has its own."""

    def add_arguments_to_parser(self, parser) -> None:
        """`--checkpoint.every_n_train_steps N`: the resumable `last.ckpt` under `<default_root_dir>/checkpoints`."""
        parser.add_lightning_class_args(ResumeCheckpoint, "checkpoint")
        parser.link_arguments("trainer.default_root_dir", "checkpoint.dirpath", compute_fn=_checkpoint_dir)

    def before_instantiate_classes(self) -> None:
        """Refuse a bad `ckpt_path` (from the command line or a config file) before anything is built."""
        check_ckpt_path(self.config.get("fit", self.config).get("ckpt_path"))

    def _instantiate_trainer(self, config: dict, callbacks: list):
        try:
            return self._qclip_trainer(config, callbacks)
        except MisconfigurationException as exc:  # e.g. an accelerator this machine does not have
            raise ConfigError(f"fit: trainer: {one_line(exc)}") from None

    def _qclip_trainer(self, config: dict, callbacks: list):
        accelerator = str(config.get("accelerator") or "auto")
        if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():  # refuse before any folder is made
            raise ConfigError(f"fit: trainer: accelerator {accelerator!r} is not available on this machine (no CUDA "
                              "device); use --trainer.accelerator cpu or auto")
        root = Path(config.get("default_root_dir") or "runs/fit")
        if config.get("logger") in (None, True):
            offline = os.environ.get("WANDB_MODE", "offline") != "online"
            root.mkdir(parents=True, exist_ok=True)
            config["logger"] = WandbLogger(project="qclip", offline=offline, save_dir=str(root))
        present = {type(c) for c in [*(config.get("callbacks") or []), *callbacks]}
        defaults = [SpectralDiagnostics(), ExportQAT()]
        if config.get("enable_progress_bar") in (None, True) and not is_terminal():
            config["enable_progress_bar"] = False  # a log gets plain lines, not carriage-return bars
            defaults.append(LogProgressCallback(desc="fit"))
        callbacks = [*callbacks, *(c for c in defaults if type(c) not in present)]
        plugins = config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(hasattr(p, "save_checkpoint") for p in plugins):  # no CheckpointIO of the user's own
            config["plugins"] = [*plugins, AtomicCheckpointIO()]
        return super()._instantiate_trainer(config, callbacks)


def _checkpoint_dir(default_root_dir: str | None) -> str:
    """Where the resumable checkpoint goes: `<default_root_dir>/checkpoints` (`runs/fit` when unset)."""
    return str(Path(default_root_dir or "runs/fit") / "checkpoints")


_CKPT_ALIASES = ("last", "best", "hpc")


def check_ckpt_path(value) -> None:
    """Refuse a `ckpt_path` that is missing, a folder or not a weights-only checkpoint (`ModelLoadError`, exit 2):
    Lightning would otherwise unpickle it, or fail with a traceback after the model was built."""
    if value is None or str(value) in _CKPT_ALIASES or str(value).startswith("registry"):
        return
    path = Path(value)
    if path.is_dir():
        raise ModelLoadError(f"--ckpt_path {path} is a folder, not a checkpoint file")
    if not path.is_file():
        raise ModelLoadError(f"--ckpt_path {path}: no such checkpoint file")
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # a pickle payload, a truncated or foreign file
        raise ModelLoadError(f"--ckpt_path {path} is not a readable weights-only checkpoint: "
                             f"{load_error_reason(exc)}") from None


def _ckpt_path_arg(argv: list[str]) -> str | None:
    """The value of `--ckpt_path` on the command line (the last one wins), if any."""
    value = None
    for i, arg in enumerate(argv):
        if arg.startswith("--ckpt_path="):
            value = arg.split("=", 1)[1]
        elif arg == "--ckpt_path" and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def run_fit(argv: list[str]) -> None:
    """Run `fit` with LightningCLI on `argv` (e.g. ["--config", "configs/qat_demo.yaml", "--trainer.max_steps=5"])."""
    check_ckpt_path(_ckpt_path_arg(argv))  # LightningCLI reads a given checkpoint while it parses
    # `qclip fit ...` passes its own arguments (sys.argv must stay intact for DDP's re-launch of the ranks)
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    # the frozen FP teacher (and, with freeze_bn, the student's BatchNorm layers) are in eval mode on purpose
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
    outer = _active_wandb_run()
    try:
        try:
            QclipCLI(QATCLIPModule, PairDataModule, args=["fit", *argv], seed_everything_default=0,
                     save_config_kwargs={"overwrite": True}, parser_kwargs={"exit_on_error": False})
        except argparse.ArgumentError as exc:  # a bad flag or config file: one line, exit 2
            raise ConfigError(f"fit: {one_line(exc)}") from None
    finally:
        # WandbLogger adopts whatever run is active in the process, so a run this fit started must end with it,
        # or the next fit in the same process would log into this one's directory
        run = _active_wandb_run()
        if run is not None and run is not outer:
            run.finish()


def _active_wandb_run():
    """The process's active wandb run, without importing wandb when nothing has."""
    wandb = sys.modules.get("wandb")
    return getattr(wandb, "run", None) if wandb is not None else None
