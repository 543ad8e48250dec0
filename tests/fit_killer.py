"""A callback that SIGKILLs its own `qclip fit` process at a chosen point (tests of the exact resume).

Points: after optimizer step `step` (before that step's checkpoint is written), at the start of epoch `epoch`
(after the previous epoch's checkpoint), or inside the checkpoint write of step `during_save` (the temp file
written and fsynced, not yet renamed over last.ckpt).
"""

from __future__ import annotations

import os
import signal

import lightning as L


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class KillAt(L.Callback):
    """SIGKILL this process at `step`, at the start of `epoch`, or during the checkpoint write of `during_save`."""

    def __init__(self, step: int | None = None, epoch: int | None = None, during_save: int | None = None):
        self.step, self.epoch, self.during_save = step, epoch, during_save

    def setup(self, trainer, pl_module, stage) -> None:
        if self.during_save is None:
            return
        replace = os.replace

        def killing_replace(src, dst, *args, **kwargs):
            if str(dst).endswith("last.ckpt") and trainer.global_step == self.during_save:
                _die()
            return replace(src, dst, *args, **kwargs)

        os.replace = killing_replace

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            _die()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            _die()


class StallAt(L.Callback):
    """Block this process after optimizer step `step` until it is killed from outside, so an outside kill that
    lands anywhere after the first checkpoint always finds the fit unfinished, however fast the machine is."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            while True:
                signal.pause()
