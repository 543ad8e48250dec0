"""A Ray worker-process setup hook for tests: the first cell (other than an FP cell) that any worker of the job
starts blocks until its actor is killed from outside, after writing the actor's name to `$QCLIP_TEST_STALL_FILE`
(created exclusively, so exactly one worker stalls, once, and a restarted actor does not stall again). A test waits
for that file and then kills the actor: the kill always lands mid-cell, however fast the machine is."""

from __future__ import annotations

import os
import signal


def install() -> None:
    """Patch `CellEvaluator.evaluate` in this worker process (see the module docstring)."""
    from qclip.experiments.ablate import CellEvaluator

    evaluate = CellEvaluator.evaluate

    def stalling_evaluate(self, cell):
        path = os.environ["QCLIP_TEST_STALL_FILE"]
        if cell.kind != "fp":
            try:
                os.close(os.open(path + ".lock", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:  # another worker (or this actor before its restart) stalled already
                return evaluate(self, cell)
            import ray

            with open(path + ".part", "w") as f:
                f.write(f"{ray.get_runtime_context().get_actor_name()}\n{cell.id}\n")
            os.replace(path + ".part", path)
            while True:
                signal.pause()
        return evaluate(self, cell)

    CellEvaluator.evaluate = stalling_evaluate
