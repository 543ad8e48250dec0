"""Image–caption pairs for QAT fine-tuning: a LightningDataModule over CLIP_benchmark wds datasets.

Captions come from a sample's `txt` member when present, else from a random template filled with its class
name (seeded, so a run is reproducible). A calibration subset (the first `calib_pairs` training pairs, as the
paper's 1,000 pairs) initialises activation quantizers; a held-out split serves zero-shot validation.
"""

from __future__ import annotations

from itertools import islice
from typing import Callable

import lightning as L
import torch
from torch.utils.data import DataLoader

from evals.data import WdsImageDataset, make_loader, resolve_dataset

__all__ = ["CaptionCollate", "PairDataModule"]


class CaptionCollate:
    """Stack images and tokenize captions (class templates where a sample has no text)."""

    def __init__(self, tokenizer: Callable, classnames: tuple[str, ...], templates: tuple[str, ...], seed: int = 0):
        self.tokenizer, self.classnames, self.templates = tokenizer, classnames, templates
        self.generator = torch.Generator().manual_seed(seed)

    def caption(self, label: int, text: str) -> str:
        """The sample's own text, or a random template of its class."""
        if text:
            return text
        t = self.templates[int(torch.randint(len(self.templates), (1,), generator=self.generator))]
        return t.replace("{c}", self.classnames[label])

    def __call__(self, batch):
        images, labels, texts = zip(*batch)
        captions = [self.caption(int(y), t) for y, t in zip(labels, texts)]
        return torch.stack(images), self.tokenizer(captions), torch.as_tensor(labels)


class PairDataModule(L.LightningDataModule):
    """Training pairs, a calibration subset and a zero-shot validation split from wds datasets."""

    def __init__(self, dataset: str = "wds/cifar10", data_root: str | None = None, train_split: str = "train",
                 val_split: str = "test", batch_size: int = 128, num_workers: int = 2, train_limit: int | None = None,
                 val_limit: int | None = 2000, calib_pairs: int = 1000, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        self.preprocess: Callable | None = None
        self.tokenizer: Callable | None = None

    def attach(self, preprocess: Callable, tokenizer: Callable) -> None:
        """Receive the model's transform and tokenizer (the module calls this in its `setup`)."""
        self.preprocess, self.tokenizer = preprocess, tokenizer

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        self.train_spec = resolve_dataset(hp.dataset, hp.data_root, hp.train_split)
        self.val_spec = resolve_dataset(hp.dataset, hp.data_root, hp.val_split)

    def _require_model(self) -> None:
        if self.preprocess is None or self.tokenizer is None:
            raise RuntimeError("PairDataModule needs the model's preprocess and tokenizer: call attach() first")

    def train_dataloader(self) -> DataLoader:
        self._require_model()
        hp = self.hparams
        ds = WdsImageDataset(self.train_spec.shards, self.preprocess, hp.train_limit, with_text=True)
        collate = CaptionCollate(self.tokenizer, self.train_spec.classnames, self.train_spec.templates, hp.seed)
        return DataLoader(ds, batch_size=hp.batch_size, num_workers=hp.num_workers, collate_fn=collate,
                          drop_last=True)

    def val_dataloader(self) -> DataLoader:
        self._require_model()
        hp = self.hparams
        return make_loader(self.val_spec, self.preprocess, batch_size=hp.batch_size, num_workers=hp.num_workers,
                           limit=hp.val_limit)

    def calibration_batches(self, batch_size: int = 64) -> list[torch.Tensor]:
        """The first `calib_pairs` training images as batches (for activation-quantizer initialisation)."""
        self._require_model()
        n = self.hparams.calib_pairs
        loader = make_loader(self.train_spec, self.preprocess, batch_size=batch_size, num_workers=0, limit=n)
        return [images for images, _ in islice(loader, (n + batch_size - 1) // batch_size)]
