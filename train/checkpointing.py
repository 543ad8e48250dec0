"""Checkpoints a killed `qclip fit` resumes from exactly: written every N steps and at each epoch end, atomically.

`ResumeCheckpoint` keeps one `last.ckpt` (what `--ckpt_path last` finds), refreshed every `every_n_train_steps`
optimizer steps, at every epoch end and when training ends. `AtomicCheckpointIO` writes each checkpoint to a temp
file in the same folder, fsyncs it and renames it over the old one, so a kill at any moment leaves the previous
checkpoint or the new one, never half of one (and the file gets the user's umask). `capture_rng` / `restore_rng`
carry the RNG states (torch CPU and CUDA, numpy, Python) the module saves with each checkpoint.
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from qclip.io.paths import atomic_write_bytes

__all__ = ["ResumeCheckpoint", "AtomicCheckpointIO", "capture_rng", "restore_rng"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into memory, then `atomic_write_bytes`: temp file, fsync, rename, umask-respecting mode."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        """Write `checkpoint` to `path` so that readers only ever see a whole file."""
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(path, buffer.getvalue())


class ResumeCheckpoint(ModelCheckpoint):
    """`last.ckpt` every `every_n_train_steps` optimizer steps, at each epoch end and at the end of training.

    One file is kept (no top-k); each write replaces the previous one atomically (with `AtomicCheckpointIO`).
    """

    def __init__(self, dirpath: str | None = None, every_n_train_steps: int = 50):
        if not isinstance(every_n_train_steps, int) or isinstance(every_n_train_steps, bool) or \
                every_n_train_steps < 1:
            from qclip.io.errors import ConfigError

            raise ConfigError(f"checkpoint.every_n_train_steps must be an integer >= 1, got {every_n_train_steps!r}")
        super().__init__(dirpath=dirpath, save_last=True, save_top_k=0, every_n_train_steps=every_n_train_steps)
        self.every = every_n_train_steps
        self._saved_at: int | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if trainer.is_global_zero and self.dirpath and Path(self.dirpath).is_dir():
            for stray in Path(self.dirpath).glob(f".{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}.*"):
                stray.unlink(missing_ok=True)  # the temp file of a write a kill interrupted

    def _write_last(self, trainer) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run or self._saved_at == trainer.global_step:
            return
        path = str(Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}")
        trainer.save_checkpoint(path)
        self.last_model_path, self._saved_at = path, trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every == 0:
            self._write_last(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._write_last(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        pass  # epoch-end checkpoints are written at the train epoch's end, after its validation

    def on_train_end(self, trainer, pl_module) -> None:
        self._write_last(trainer)  # a run stopped by max_steps mid-epoch


def capture_rng() -> dict[str, Any]:
    """The process's RNG states as weights-only-loadable values (tensors, ints, tuples)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Set the process's RNG states from `capture_rng`'s output."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
