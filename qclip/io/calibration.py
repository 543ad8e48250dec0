"""Calibration images for quantization: the first few batches of a dataset's train split. Writes nothing."""

from __future__ import annotations

import logging
from itertools import islice
from typing import Callable

import torch

from .data import DatasetSpec, make_loader, resolve_dataset
from .errors import DataError

__all__ = ["calibration_images"]

log = logging.getLogger(__name__)


def calibration_images(spec: DatasetSpec, preprocess: Callable, *, batches: int = 8, batch_size: int = 64,
                       data_root: str | None = None, num_workers: int = 0) -> list[torch.Tensor]:
    """The first `batches` batches of the dataset's train split (its eval split when it has no train split)."""
    calib = spec
    if spec.kind == "wds" and spec.split != "train":
        try:
            calib = resolve_dataset(spec.name, data_root, "train")
        except DataError:
            log.warning("%s has no train split: calibrating on the first %d images of its %s split",
                        spec.name, batches * batch_size, spec.split)
    loader = make_loader(calib, preprocess, batch_size=batch_size, num_workers=num_workers,
                         limit=batches * batch_size)
    return [images for images, _ in islice(loader, batches)]
