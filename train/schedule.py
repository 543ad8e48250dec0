"""The learning-rate schedule of every qclip fit: linear warm-up, then cosine decay to 0. Writes nothing."""

from __future__ import annotations

import math
from typing import Callable

__all__ = ["warmup_cosine"]


def warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    """A LambdaLR factor: (step + 1) / warmup for the first `warmup` steps, then a cosine from 1 to 0 at `total`."""
    if warmup < 0 or total < 1:
        raise ValueError(f"need warmup >= 0 and total >= 1, got warmup={warmup}, total={total}")

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return factor
