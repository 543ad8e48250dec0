"""Optional wandb tracking of a run (`--wandb`): one offline-by-default run that logs into the output folder and
is finished however the work ends. Writes wandb's files under `out` only when enabled."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

__all__ = ["wandb_run"]


@contextmanager
def wandb_run(enabled: bool, *, project: str, out: str, config: dict, job_type: str) -> Iterator[object | None]:
    """A wandb run (offline unless `WANDB_MODE` says otherwise) when `enabled`, else None; finished on exit."""
    if not enabled:
        yield None
        return
    import wandb

    os.makedirs(out, exist_ok=True)
    run = wandb.init(project=project, mode=os.environ.get("WANDB_MODE", "offline"), dir=out, config=config,
                     job_type=job_type)
    try:
        yield run
    finally:
        run.finish()
