"""Progress that reads well on a terminal and in a log file.

`progress_bar(...)` returns a tqdm bar when stderr is a terminal. When it is not (nohup, CI, SLURM, a pipe) a bar
of carriage returns would fill the log with one unreadable line, so it returns a `LogProgress` instead: the same
small interface (`update`, `reset`, `set_postfix_str`, `write`, `close`, a context manager) printing one plain line
every `QCLIP_PROGRESS_INTERVAL` seconds (default 30) with the count, the rate and the ETA, and one line at the end.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable, TextIO

from tqdm.auto import tqdm

__all__ = ["LogProgress", "progress_bar", "progress_interval_s", "is_terminal", "format_duration"]

#: Seconds between two plain progress lines when stderr is not a terminal (`QCLIP_PROGRESS_INTERVAL` overrides).
DEFAULT_INTERVAL_S = 30.0


def progress_interval_s() -> float:
    """Seconds between plain progress lines: `$QCLIP_PROGRESS_INTERVAL` (a number ≥ 0), else 30."""
    raw = os.environ.get("QCLIP_PROGRESS_INTERVAL")
    try:
        value = float(raw) if raw is not None else DEFAULT_INTERVAL_S
    except ValueError:
        value = DEFAULT_INTERVAL_S
    return value if value >= 0 and value == value else DEFAULT_INTERVAL_S


def is_terminal(stream: TextIO | None = None) -> bool:
    """True when `stream` (stderr by default) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def format_duration(seconds: float) -> str:
    """`1h02m`, `4m05s` or `12s`."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _amount(n: float, unit: str, scale: bool) -> str:
    if not scale:
        return f"{n:g}" if isinstance(n, float) else str(n)
    for prefix in ("", "k", "M", "G", "T"):
        if abs(n) < 1000 or prefix == "T":
            return f"{n:.1f}{prefix}" if prefix else f"{n:g}"
        n /= 1000
    return str(n)  # unreachable


class LogProgress:
    """A tqdm stand-in for logs: a plain line every `interval` seconds (count/total, rate, ETA) and one at the end."""

    def __init__(self, total: float | None = None, *, desc: str = "", unit: str = "it", initial: float = 0,
                 unit_scale: bool = False, interval: float | None = None, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.desc, self.unit, self.unit_scale = total, desc, unit, unit_scale
        self.n = self._start = initial
        self.postfix = ""
        self.interval = progress_interval_s() if interval is None else interval
        self._stream, self._clock = stream, clock
        self._t0 = self._last = clock()
        self._closed = False

    # the tqdm interface the project uses
    def update(self, n: float = 1) -> None:
        """Advance by `n`; print a line when the interval has passed since the last one (the end's line is
        `close`'s)."""
        self.n += n
        now = self._clock()
        if now - self._last >= self.interval and not (self.total and self.n >= self.total):
            self._print(now)

    def reset(self, total: float | None = None) -> None:
        """Start counting again from 0 (towards `total`)."""
        self.total, self.n, self._start = total, 0, 0
        self._t0 = self._clock()

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        """Text shown after the counts (e.g. the current cell)."""
        self.postfix = s

    def write(self, s: str) -> None:
        """Print a message line."""
        print(s, file=self._out(), flush=True)

    def close(self) -> None:
        """Print the final line (once)."""
        if not self._closed:
            self._closed = True
            if self.n != self._start:
                self._print(self._clock(), final=True)

    def __enter__(self) -> "LogProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def line(self, now: float, final: bool = False) -> str:
        """The progress line at time `now`."""
        elapsed = max(now - self._t0, 0.0)
        done = self.n - self._start
        rate = done / elapsed if elapsed > 0 else 0.0
        unit = self.unit
        count = _amount(self.n, unit, self.unit_scale)
        if self.total:
            count += f"/{_amount(self.total, unit, self.unit_scale)} {unit} ({100.0 * self.n / self.total:.0f}%)"
        else:
            count += f" {unit}"
        parts = [f"{self.desc}: {count}" if self.desc else count,
                 f"{_amount(rate, unit, self.unit_scale)} {unit}/s" if rate else None,
                 f"elapsed {format_duration(elapsed)}"]
        if self.total and rate and not final:
            parts.append(f"ETA {format_duration(max(self.total - self.n, 0) / rate)}")
        if self.postfix:
            parts.append(self.postfix)
        return ", ".join(p for p in parts if p) + (" (done)" if final else "")

    def _print(self, now: float, final: bool = False) -> None:
        self._last = now
        print(self.line(now, final), file=self._out(), flush=True)

    def _out(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr


class _Disabled(LogProgress):
    """Counts silently (progress off); `write` still prints, as tqdm's does: messages are output, not progress."""

    def _print(self, now: float, final: bool = False) -> None:
        self._last = now


def progress_bar(total: float | None = None, *, desc: str = "", unit: str = "it", enabled: bool = True,
                 initial: float = 0, unit_scale: bool = False, leave: bool = True) -> tqdm | LogProgress:
    """A tqdm bar on a terminal, plain periodic lines (`LogProgress`) in a log, nothing when `enabled` is False."""
    if not enabled:
        return _Disabled(total, desc=desc, unit=unit, initial=initial)
    if is_terminal():
        return tqdm(total=total, desc=desc, unit=unit, initial=initial, unit_scale=unit_scale, leave=leave,
                    dynamic_ncols=True)
    return LogProgress(total, desc=desc, unit=unit, initial=initial, unit_scale=unit_scale)
