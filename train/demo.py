"""Pretrain the demo CLIP contrastively on CIFAR-10 train with template captions (LightningModule + recipe).

Each step embeds all unique prompts (classes x templates) once, gives every image a random template of its
class as caption, and applies open_clip's `ClipLoss`. Images are decoded once into a uint8 tensor and augmented
in batches (random crop with 4-px padding, horizontal flip). Deterministic for a seed on a given machine.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import open_clip
import torch
from filelock import FileLock
from open_clip.loss import ClipLoss
from torch.utils.data import DataLoader, TensorDataset
from torchvision.transforms import PILToTensor

from qclip.io.data import WdsImageDataset, resolve_dataset
from qclip.io.demo import (
    DEMO_MODEL_NAME,
    demo_dir,
    demo_model_config,
    is_trained,
    register_model_configs,
)
from qclip.io.models import save_open_clip_dir
from qclip.io.validate import check_seed

from .progress import progress_settings
from .schedule import warmup_cosine

__all__ = ["DemoRecipe", "DemoPretrainModule", "random_crop_flip", "load_uint8_images", "pretrain_demo",
           "ensure_demo_model"]

META_FILE = "qclip_demo.json"


@dataclass
class DemoRecipe:
    """Hyper-parameters of demo pretraining (defaults: ~7 min on 2 CPU cores, ~68% zero-shot CIFAR-10)."""

    epochs: int = 3
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_steps: int = 50
    seed: int = 0
    precision: str = "auto"  # bf16-mixed where bf16 is native (CUDA, AVX-512 BF16 / AMX CPUs), else 32-true
    limit: int | None = None  # train on the first N images only (tests)
    max_steps: int = -1  # stop early (tests)

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError(f"epochs must be >= 1 and batch_size >= 2, got {self.epochs}, {self.batch_size}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        check_seed("seed", self.seed)  # seed_everything would silently draw another seed past 2**32 - 1
        if self.precision not in ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true"):
            raise ValueError(f"precision must be auto, 32-true, bf16-mixed, 16-mixed or bf16-true, got "
                             f"{self.precision!r}")


def resolve_precision(precision: str) -> str:
    """`auto` → bf16-mixed where bfloat16 runs natively (a CUDA device, or a CPU with AVX-512 BF16 / AMX), else
    32-true: emulated bf16 autocast on an AVX2-only CPU made a pretraining step ~13x slower than float32 here."""
    if precision != "auto":
        return precision
    native = torch.cuda.is_available() or bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return "bf16-mixed" if native else "32-true"


def random_crop_flip(images: torch.Tensor, pad: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Batched random crop (zero padding `pad`) and horizontal flip of [B, C, H, W] images."""
    b, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=images.device)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=images.device)
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, :, None]  # [B, H, 1]
    cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, :]  # [B, 1, W]
    idx = torch.arange(b, device=images.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx, rows, cols].permute(0, 3, 1, 2)  # [B, C, H, W]
    flip = torch.rand(b, generator=generator, device=images.device) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


def load_uint8_images(name: str = "wds/cifar10", split: str = "train", data_root: str | None = None,
                      limit: int | None = None, num_workers: int = 2) -> tuple[torch.Tensor, torch.Tensor, object]:
    """Decode a wds split into a uint8 [N, 3, H, W] tensor and labels (all images must share one size)."""
    spec = resolve_dataset(name, data_root, split)
    ds = WdsImageDataset(spec.shards, PILToTensor(), limit)
    loader = DataLoader(ds, batch_size=1024, num_workers=num_workers)
    images, labels = zip(*loader)
    return torch.cat(images), torch.cat(labels).long(), spec


class DemoPretrainModule(L.LightningModule):
    """Contrastive CLIP pretraining on class-template captions."""

    def __init__(self, model_cfg: dict, classnames: list[str], templates: list[str], lr: float = 2e-3,
                 weight_decay: float = 0.1, warmup_steps: int = 50):
        super().__init__()
        self.save_hyperparameters()
        register_model_configs()
        self.model = open_clip.model.CLIP(**model_cfg)
        tokenizer = open_clip.get_tokenizer(DEMO_MODEL_NAME)
        prompts = [t.replace("{c}", c) for c in classnames for t in templates]
        self.register_buffer("prompt_tokens", tokenizer(prompts), persistent=False)
        self.num_templates = len(templates)
        self.loss = ClipLoss()
        mean, std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255, persistent=False)

    def training_step(self, batch, batch_idx):
        images, labels = batch
        x = (random_crop_flip(images).float() - self.mean) / self.std
        template = torch.randint(0, self.num_templates, labels.shape, device=labels.device)
        image_feats = self.model.encode_image(x, normalize=True)
        prompt_feats = self.model.encode_text(self.prompt_tokens, normalize=True)
        text_feats = prompt_feats[labels * self.num_templates + template]
        loss = self.loss(image_feats.float(), text_feats.float(), self.model.logit_scale.exp())
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/logit_scale", self.model.logit_scale.exp().detach(), prog_bar=False)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        with torch.no_grad():  # as open_clip training: keep the temperature in [1, 100]
            self.model.logit_scale.clamp_(0, math.log(100))

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            (no_decay if p.ndim < 2 or "bn" in name or "ln" in name or "embedding" in name or "logit" in name
             else decay).append(p)
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": self.hparams.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=self.hparams.lr, betas=(0.9, 0.98),
                                eps=1e-6)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = min(self.hparams.warmup_steps, max(1, total // 10))
        lr_lambda = warmup_cosine(warmup, total)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def pretrain_demo(out_dir: str | Path | None = None, recipe: DemoRecipe | None = None, *,
                  data_root: str | None = None, progress: bool = True, evaluate: bool = True) -> dict:
    """Train the demo CLIP and save it as an open_clip `local-dir` (config + safetensors); return its metadata."""
    recipe = recipe or DemoRecipe()
    out_dir = Path(out_dir) if out_dir is not None else demo_dir()
    L.seed_everything(recipe.seed, workers=True, verbose=False)
    t0 = time.perf_counter()
    images, labels, spec = load_uint8_images("wds/cifar10", "train", data_root, recipe.limit)
    decode_s = time.perf_counter() - t0
    model_cfg = demo_model_config()
    module = DemoPretrainModule(model_cfg, list(spec.classnames), list(spec.templates), recipe.lr,
                                recipe.weight_decay, recipe.warmup_steps)
    loader = DataLoader(TensorDataset(images, labels), batch_size=min(recipe.batch_size, len(labels)),
                        shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(recipe.seed))
    show_bar, progress_callbacks = progress_settings(progress)
    trainer = L.Trainer(max_epochs=recipe.epochs, max_steps=recipe.max_steps, callbacks=progress_callbacks,
                        precision=resolve_precision(recipe.precision),
                        accelerator="auto", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=show_bar, enable_model_summary=False, num_sanity_val_steps=0,
                        deterministic=True)
    t1 = time.perf_counter()
    trainer.fit(module, loader)
    train_s = time.perf_counter() - t1
    model = module.model.float().cpu().eval()
    meta = {"recipe": asdict(recipe), "precision": resolve_precision(recipe.precision),
            "steps": int(trainer.global_step), "train_seconds": round(train_s, 1),
            "decode_seconds": round(decode_s, 1), "train_images": int(len(labels)),
            "open_clip": open_clip.__version__, "torch": torch.__version__}
    save_open_clip_dir(model, model_cfg, out_dir)
    if evaluate:
        from qclip.evals.zeroshot import evaluate_zero_shot

        from qclip.io.models import load_model

        loaded = load_model(f"local-dir:{out_dir}")
        test = resolve_dataset("wds/cifar10", data_root, "test")
        meta["test_acc1"] = evaluate_zero_shot(loaded, test, progress=progress, use_cache=False).metrics()["acc1"]
    from qclip.io.paths import atomic_write_text

    atomic_write_text(out_dir / META_FILE, json.dumps(meta, indent=2))
    return meta


def ensure_demo_model(data_root: str | None = None, progress: bool = True, recipe: DemoRecipe | None = None,
                      evaluate: bool = True) -> Path:
    """Return the demo model folder, pretraining it first (once, under a file lock) when it is missing."""
    folder = demo_dir()
    if is_trained(folder):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / ".lock")):
        if not is_trained(folder):
            print(f"qclip: the demo model is not cached yet; pretraining it into {folder} (about 10 minutes "
                  "on 2 CPU cores, once)", flush=True)
            pretrain_demo(folder, recipe, data_root=data_root, progress=progress, evaluate=evaluate)
    return folder
