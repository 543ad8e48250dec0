"""Image–caption pairs for QAT fine-tuning: a LightningDataModule over CLIP_benchmark wds datasets.

Captions come from a sample's `txt` member when present, else from a random template filled with its class
name (seeded, so a run is reproducible). A calibration subset (the first `calib_pairs` training pairs, as the
paper's 1,000 pairs) initialises activation quantizers; a held-out split serves zero-shot validation.

Training batches follow the stream in order for any number of workers, and the data module's state (saved in
every checkpoint) is the epoch and the number of its batches the model consumed: a resumed fit skips exactly
those (reading, not decoding, their tar members) and continues with the next batch.
"""

from __future__ import annotations

import hashlib
from itertools import islice
from typing import Callable

import lightning as L
import torch
from torch.utils.data import DataLoader

from qclip.io.data import WdsImageDataset, make_loader, resolve_dataset
from qclip.io.validate import check_int, check_seed, check_str

__all__ = ["template_index", "CaptionedWds", "TokenizeCollate", "ResumableLoader", "PairDataModule"]


def template_index(seed: int, epoch: int, key: str, n_templates: int) -> int:
    """A sample's template for an epoch: a hash of (seed, epoch, key), so runs and resumed runs agree."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % n_templates


class CaptionedWds(WdsImageDataset):
    """wds (image, caption, label) samples: the `txt` member, else a class template chosen per (seed, epoch, key).

    Set `epoch` before each epoch (the module does) so template choices vary across epochs yet survive resumes.
    """

    def __init__(self, shards, transform, limit, classnames: tuple[str, ...], templates: tuple[str, ...],
                 seed: int = 0):
        super().__init__(shards, transform, limit, with_text=True)
        self.classnames, self.templates, self.seed, self.epoch = classnames, templates, seed, 0

    def caption(self, key: str, label: int, text: str) -> str:
        """The sample's own text, or its class name in the template picked for this epoch."""
        if text:
            return text
        t = self.templates[template_index(self.seed, self.epoch, key, len(self.templates))]
        return t.replace("{c}", self.classnames[label])

    def _emit(self, sample, shard):
        image, label, text = super()._emit(sample, shard)
        return image, self.caption(sample.key, label, text), label


class TokenizeCollate:
    """Stack images and tokenize captions."""

    def __init__(self, tokenizer: Callable):
        self.tokenizer = tokenizer

    def __call__(self, batch):
        images, captions, labels = zip(*batch)
        return torch.stack(images), self.tokenizer(list(captions)), torch.as_tensor(labels)


class ResumableLoader(DataLoader):
    """A DataLoader over a `CaptionedWds` that knows its place: the epoch, the batches the trainer consumed of it
    (`note_consumed`, called per training batch) and whether the stream ran out, so a checkpoint taken at any
    batch resumes at the next one. Its workers' seeds come from its own generator, never the global RNG."""

    def __init__(self, dataset: CaptionedWds, *, batch_size: int, seed: int = 0, **kwargs):
        dataset.block = batch_size  # batches in stream order for any number of workers
        super().__init__(dataset, batch_size=batch_size, drop_last=True,
                         generator=torch.Generator().manual_seed(seed), **kwargs)
        self.epoch, self.consumed, self._yielded, self._exhausted, self._skip = 0, 0, 0, False, 0

    def __iter__(self):
        ds = self.dataset
        ds.epoch, ds.start = self.epoch, self._skip * self.batch_size
        self.consumed = self._yielded = self._skip
        self._skip, self._exhausted = 0, False
        for batch in super().__iter__():
            self._yielded += 1
            yield batch
        self._exhausted = True

    def note_consumed(self) -> None:
        """Count one batch as trained on (the trainer fetches ahead, so yielded batches are not consumed ones)."""
        self.consumed += 1

    def position(self) -> dict[str, int | bool]:
        """Where the epoch stands: {"epoch", "consumed", "complete"} (complete: the stream ended and every batch
        it gave was consumed)."""
        complete = self._exhausted and self.consumed == self._yielded
        return {"epoch": self.epoch, "consumed": self.consumed, "complete": complete}

    def seek(self, position: dict) -> None:
        """Make the next iteration continue from `position` (the next epoch from its start when it was complete)."""
        if position.get("complete"):
            self.epoch, self._skip = int(position["epoch"]) + 1, 0
        else:
            self.epoch, self._skip = int(position["epoch"]), int(position["consumed"])


class PairDataModule(L.LightningDataModule):
    """Training pairs, a calibration subset and a zero-shot validation split from wds datasets."""

    def __init__(self, dataset: str = "wds/cifar10", data_root: str | None = None, train_split: str = "train",
                 val_split: str = "test", batch_size: int = 128, num_workers: int = 2, train_limit: int | None = None,
                 val_limit: int | None = 2000, calib_pairs: int = 1000, seed: int = 0):
        super().__init__()
        check_str("dataset", dataset)
        check_str("data_root", data_root, optional=True)
        check_str("train_split", train_split)
        check_str("val_split", val_split)
        check_int("batch_size", batch_size, minimum=1)
        check_int("num_workers", num_workers, minimum=0)
        check_int("train_limit", train_limit, minimum=1, optional=True)
        check_int("val_limit", val_limit, minimum=1, optional=True)
        check_int("calib_pairs", calib_pairs, minimum=0)
        check_seed("seed", seed)
        resolve_dataset(dataset, data_root, train_split)  # an unknown dataset fails before any logger or model
        self.save_hyperparameters()
        self.preprocess: Callable | None = None
        self.tokenizer: Callable | None = None
        self.epoch = 0
        self.train_loader: ResumableLoader | None = None
        self._resume_at: dict | None = None

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
        self.train_set = CaptionedWds(self.train_spec.shards, self.preprocess, hp.train_limit,
                                      self.train_spec.classnames, self.train_spec.templates, hp.seed)
        self.train_loader = ResumableLoader(self.train_set, batch_size=hp.batch_size, seed=hp.seed,
                                            num_workers=hp.num_workers, collate_fn=TokenizeCollate(self.tokenizer))
        self.train_loader.epoch = self.epoch
        if self._resume_at is not None:  # restored from a checkpoint: continue where it was taken
            self.train_loader.seek(self._resume_at)
            self.epoch, self._resume_at = self.train_loader.epoch, None
        return self.train_loader

    def set_epoch(self, epoch: int) -> None:
        """Template choices of the coming epoch (called at each epoch start, also after a resume)."""
        self.epoch = epoch
        if self.train_loader is not None:
            self.train_loader.epoch = epoch

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        """Count the training batches the model consumes (the position a checkpoint saves)."""
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.training and self.train_loader is not None:
            self.train_loader.note_consumed()
        return batch

    def state_dict(self) -> dict:
        """The training stream's position, saved in every checkpoint."""
        return {"position": self.train_loader.position()} if self.train_loader is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        """Resume the training stream at the saved position (applied when the train loader is built)."""
        self._resume_at = state_dict.get("position")

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
