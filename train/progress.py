"""Training progress for logs: when stderr is not a terminal, Lightning's carriage-return bar is replaced by plain
lines (epoch, step/total, loss, rate, ETA) every `QCLIP_PROGRESS_INTERVAL` seconds and at each epoch's end."""

from __future__ import annotations

import sys
import time
from typing import Callable

import lightning as L

from qclip.io.progress import format_duration, is_terminal, progress_interval_s

__all__ = ["LogProgressCallback", "progress_settings"]


class LogProgressCallback(L.Callback):
    """Print `train: epoch E, step S/T (P%), loss L, R steps/s, ETA ...` at intervals and at each epoch's end."""

    def __init__(self, interval: float | None = None, desc: str = "train", clock: Callable[[], float] = time.monotonic):
        self.interval = progress_interval_s() if interval is None else interval
        self.desc, self._clock = desc, clock
        self._t0 = self._last = 0.0
        self._step0 = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self._t0 = self._last = self._clock()
        self._step0 = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = self._clock()
        if now - self._last >= self.interval:
            self._print(trainer, now)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._print(trainer, self._clock(), epoch_end=True)

    def line(self, trainer, now: float, epoch_end: bool = False) -> str:
        """The progress line for `trainer`'s state at time `now`."""
        step, elapsed = trainer.global_step, max(now - self._t0, 0.0)
        total = trainer.estimated_stepping_batches
        total = int(total) if total not in (None, float("inf")) else None
        rate = (step - self._step0) / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.desc}: epoch {trainer.current_epoch}" + (" done" if epoch_end else ""),
                 f"step {step}/{total} ({100.0 * step / total:.0f}%)" if total else f"step {step}"]
        loss = trainer.callback_metrics.get("train/loss", trainer.callback_metrics.get("loss"))
        if loss is not None:
            parts.append(f"loss {float(loss):.4f}")
        if rate:
            parts.append(f"{rate:.2f} steps/s")
        parts.append(f"elapsed {format_duration(elapsed)}")
        if total and rate and step < total:
            parts.append(f"ETA {format_duration((total - step) / rate)}")
        return ", ".join(parts)

    def _print(self, trainer, now: float, epoch_end: bool = False) -> None:
        self._last = now
        if trainer.is_global_zero:
            print(self.line(trainer, now, epoch_end), file=sys.stderr, flush=True)


def progress_settings(enabled: bool) -> tuple[bool, list[L.Callback]]:
    """(`enable_progress_bar`, extra callbacks): Lightning's bar on a terminal, plain lines in a log, or nothing."""
    if not enabled:
        return False, []
    if is_terminal():
        return True, []
    return False, [LogProgressCallback()]
