"""The demo model made ready for a run that names it (`--model demo`, or a grid model `demo`): pretrained once
into the user cache, then reused. Writes the demo cache folder on first use only."""

from __future__ import annotations

from typing import Iterable

__all__ = ["ensure_demo"]


def ensure_demo(models: str | Iterable[str], data_root: str | None, progress: bool) -> None:
    """Pretrain the demo model first (once, cached) when `models` (a name or several) include `demo`."""
    if "demo" in ([models] if isinstance(models, str) else list(models)):
        from qclip.train.demo import ensure_demo_model

        ensure_demo_model(data_root=data_root, progress=progress)
