"""`python tests/grid_staller.py N ARGS...` runs `qclip ARGS...` with the results store blocking (until the process
is killed from outside) right after its Nth stored record, so a test that kills the grid on seeing fewer records
always finds it unfinished, however fast the machine is."""

from __future__ import annotations

import signal
import sys

from qclip.cli import main
from qclip.io.store import ResultsStore


def stall_after(n: int) -> None:
    """Patch `ResultsStore.append` to block forever after its `n`th successful append in this process."""
    append, stored = ResultsStore.append, [0]

    def stalling_append(self, record: dict) -> bool:
        added = append(self, record)
        stored[0] += added
        while stored[0] >= n:
            signal.pause()
        return added

    ResultsStore.append = stalling_append


if __name__ == "__main__":
    stall_after(int(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
