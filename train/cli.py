"""`qclip fit`: a LightningCLI over `QATCLIPModule` and `PairDataModule` with qclip's defaults.

Defaults: a WandbLogger (offline unless `WANDB_MODE=online`), a ModelCheckpoint keeping `last.ckpt` (resume
with `--ckpt_path last`), spectral diagnostics every 50 steps, and convert + export at the end.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import WandbLogger

from .callbacks import ExportQAT, SpectralDiagnostics
from .data import PairDataModule
from .module import QATCLIPModule

__all__ = ["run_fit"]


class QclipCLI(LightningCLI):
    """LightningCLI with qclip's defaults: a wandb logger (offline unless WANDB_MODE=online) and checkpoints under
    the run's `default_root_dir`, plus the diagnostics and export callbacks unless the config has its own."""

    def _instantiate_trainer(self, config: dict, callbacks: list):
        root = Path(config.get("default_root_dir") or "runs/fit")
        if config.get("logger") in (None, True):
            offline = os.environ.get("WANDB_MODE", "offline") != "online"
            root.mkdir(parents=True, exist_ok=True)
            config["logger"] = WandbLogger(project="qclip", offline=offline, save_dir=str(root))
        present = {type(c) for c in [*(config.get("callbacks") or []), *callbacks]}
        defaults = [ModelCheckpoint(dirpath=root / "checkpoints", save_last=True, save_top_k=0),
                    SpectralDiagnostics(), ExportQAT()]
        callbacks = [*callbacks, *(c for c in defaults if type(c) not in present)]
        return super()._instantiate_trainer(config, callbacks)


def run_fit(argv: list[str]) -> None:
    """Run `fit` with LightningCLI on `argv` (e.g. ["--config", "configs/qat_demo.yaml", "--trainer.max_steps=5"])."""
    # `qclip fit ...` passes its own arguments (sys.argv must stay intact for DDP's re-launch of the ranks)
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    # the frozen FP teacher (and, with freeze_bn, the student's BatchNorm layers) are in eval mode on purpose
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
    outer = _active_wandb_run()
    try:
        QclipCLI(QATCLIPModule, PairDataModule, args=["fit", *argv], seed_everything_default=0,
                 save_config_kwargs={"overwrite": True})
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
