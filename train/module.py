"""QAT fine-tuning of an open_clip model with an optional FP teacher and the spectral-filtering regularizer.

Losses: `contrastive_weight` × contrastive InfoNCE (open_clip's `ClipLoss`, "QAT (Contr.)"), plus `distill_weight` × feature MSE to a
frozen full-precision teacher ("Contr.+MSE"), plus `spectral_lambda` × the share of energy beyond rank k of the
centred batch image features (`spectral_on="features"`) and/or of the in-scope weights' singular spectra
(`"weights"`, a refreshed low-rank estimate). `spectral_lambda=0` is the ablation switch; the penalty is logged
either way. Weights and quantizer step sizes get separate AdamW learning rates (paper: 1e-5 / 1e-4) with a
linear warm-up and cosine decay. `freeze_bn` keeps BatchNorm layers on their pretrained running statistics
during QAT (off by default: on the demo's ResNet tower, frozen statistics left w4a8 QAT below RTN PTQ, 0.59 vs
0.66 acc1, while re-estimating them from quantized batches put it above, 0.67).

Each checkpoint also carries the RNG states and the weight penalty's cached bases, restored before the first
training batch after a resume, so a resumed fit continues the uninterrupted one bit for bit (on CPU).
"""

from __future__ import annotations

import copy
import math
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from qclip.evals.metrics import ece, softmax_probs
from qclip.evals.zeroshot import build_zero_shot_classifier, topk_accuracy
from qclip.spectral.penalties import SpectralTailPenalty, rank_spec, resolve_rank

from qclip.io.errors import ConfigError
from qclip.io.models import load_model
from qclip.io.validate import check_choice, check_float, check_int, check_spec, check_str

from .checkpointing import capture_rng, restore_rng
from .losses import contrastive_loss, distill_mse, feature_spectral_penalty
from .schedule import warmup_cosine

__all__ = ["QATCLIPModule", "is_quantizer_parameter"]

_QUANTIZER_PARTS = ("weight_quant.", "input_quant.", "fake_quantizer.")


def is_quantizer_parameter(name: str) -> bool:
    """True for learnable quantizer step sizes / scales (project LSQ or torchao range learning)."""
    return any(part in name for part in _QUANTIZER_PARTS)


def _validate(hp: dict) -> None:
    """Check the module's hyper-parameters before anything is built; a bad one is a `ConfigError` (exit 2)."""
    check_str("model", hp["model"])
    check_str("pretrained", hp["pretrained"], optional=True)
    if check_str("quant", hp["quant"], optional=True) is not None:
        if check_spec("model.quant", hp["quant"]).kind != "quant":
            raise ConfigError(f"model.quant must be a uniform quantization spec (e.g. w4a8-lsq), got {hp['quant']!r}")
    check_choice("backend", hp["backend"], ("lsq", "torchao"))
    check_choice("spectral_on", hp["spectral_on"], ("features", "weights", "both"))
    for name in ("distill_weight", "contrastive_weight", "spectral_lambda", "weight_decay"):
        check_float(name, hp[name], low=0.0)
    if hp["contrastive_weight"] == 0 and hp["distill_weight"] == 0:
        raise ConfigError("contrastive_weight and distill_weight cannot both be 0")
    for name in ("lr", "scale_lr"):
        check_float(name, hp[name], low=0.0, low_open=True)
    check_int("warmup_steps", hp["warmup_steps"], minimum=0)
    check_int("spectral_refresh", hp["spectral_refresh"], minimum=1)
    try:
        resolve_rank(rank_spec(hp["spectral_k"]), 1)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad spectral_k {hp['spectral_k']!r}: {exc}") from None


class QATCLIPModule(L.LightningModule):
    """LightningModule wrapping any `qclip.io.models.load_model` source with QAT fake quantizers from `qclip.quant`."""

    def __init__(self, model: str = "demo", pretrained: str | None = None, quant: str | None = "w4a8-lsq",
                 backend: Literal["lsq", "torchao"] = "lsq", distill_weight: float = 0.0,
                 contrastive_weight: float = 1.0, lr: float = 1e-5, scale_lr: float = 1e-4,
                 weight_decay: float = 0.1, warmup_steps: int = 0, spectral_lambda: float = 0.0,
                 spectral_k: float = 0.25, spectral_on: Literal["features", "weights", "both"] = "features",
                 spectral_refresh: int = 10, freeze_bn: bool = False):
        super().__init__()
        _validate(locals())
        self.save_hyperparameters()
        self.model: torch.nn.Module | None = None
        self.teacher: torch.nn.Module | None = None
        self.weight_penalty: SpectralTailPenalty | None = None
        self._penalised: list[str] = []
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._rng_to_restore: dict | None = None

    # --------------------------------------------------------------------------------------------- building
    def setup(self, stage: str | None = None) -> None:
        if self.model is not None:
            return
        hp = self.hparams
        loaded = load_model(hp.model, hp.pretrained)
        self.model, self.tokenizer, self.preprocess = loaded.model.train(), loaded.tokenizer, loaded.preprocess
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        calib = []
        if datamodule is not None and hasattr(datamodule, "attach"):
            datamodule.attach(self.preprocess, self.tokenizer)
            datamodule.setup(stage)
            calib = datamodule.calibration_batches() if hp.quant else []
        if hp.distill_weight > 0:
            self.teacher = copy.deepcopy(self.model).eval().requires_grad_(False)
        if hp.quant:
            from qclip.quant.qat import prepare_qat_

            def calibrate(model):
                for images in calib:
                    model.encode_image(images)

            report = prepare_qat_(self.model, hp.quant, calibrate if calib else None, backend=hp.backend)
            self._penalised = [m.name for m in report.maps if m.role != "patch_embed"]
        if hp.spectral_on in ("weights", "both"):
            if not self._penalised:
                from qclip.quant.surgery import attention_surgery_, list_linear_maps

                self._penalised = [m.name for m in list_linear_maps(attention_surgery_(self.model))
                                   if m.tower == "vision" and m.role != "patch_embed"]
            self.weight_penalty = SpectralTailPenalty(k=rank_spec(hp.spectral_k), refresh_every=hp.spectral_refresh)
        self._freeze_batchnorm()  # last: prepare_qat_ restores train mode on every submodule

    def train(self, mode: bool = True):
        """Switch modes; the frozen teacher always stays in eval mode (its BatchNorm statistics never move), and
        with `freeze_bn` so do the student's BatchNorm layers: they normalise with the pretrained running
        statistics, as at test time, instead of re-estimating them from quantized batches."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        self._freeze_batchnorm()
        return self

    def _freeze_batchnorm(self) -> None:
        # Lightning (>= 2.2) keeps each submodule's mode as set here rather than calling train() at fit start
        if self.hparams.freeze_bn and self.model is not None:
            for module in self.model.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.eval()

    # ---------------------------------------------------------------------------------------------- training
    def spectral_penalty(self, image_features: torch.Tensor) -> torch.Tensor:
        """The configured spectral-filtering penalty (features and/or weights)."""
        terms = []
        if self.hparams.spectral_on in ("features", "both"):
            terms.append(feature_spectral_penalty(image_features, self.hparams.spectral_k))
        if self.weight_penalty is not None:
            terms.append(self.weight_penalty({n: self.model.get_submodule(n).weight for n in self._penalised}))
        return sum(terms) / len(terms)

    def training_step(self, batch, batch_idx):
        images, tokens, _ = batch
        img = self.model.encode_image(images)
        txt = self.model.encode_text(tokens)
        contrastive = contrastive_loss(img, txt, self.model.logit_scale.exp())
        self.log("train/contrastive", contrastive, prog_bar=True)
        loss = self.hparams.contrastive_weight * contrastive
        if self.teacher is not None:
            with torch.no_grad():
                t_img, t_txt = self.teacher.encode_image(images), self.teacher.encode_text(tokens)
            mse = distill_mse(img, t_img) + distill_mse(txt, t_txt)
            self.log("train/mse", mse)
            loss = loss + self.hparams.distill_weight * mse
        lam = self.hparams.spectral_lambda
        if lam > 0:
            penalty = self.spectral_penalty(img)
            loss = loss + lam * penalty
        else:
            with torch.no_grad():
                penalty = self.spectral_penalty(img.detach())
        self.log("train/spectral_penalty", penalty.detach())
        self.log("train/loss", loss)
        return loss

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["qclip_rng"] = capture_rng()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # applied at the first training batch: fit start (sanity validation, data loaders, the diagnostics'
        # reference model) draws random numbers a resumed run must not let shift the training stream
        self._rng_to_restore = checkpoint.get("qclip_rng")

    def on_train_batch_start(self, batch, batch_idx) -> None:
        if self._rng_to_restore is not None:
            restore_rng(self._rng_to_restore)
            self._rng_to_restore = None

    def on_train_epoch_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "set_epoch"):
            datamodule.set_epoch(self.current_epoch)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, math.log(100))
        if self.hparams.quant and self.hparams.backend == "lsq":
            from qclip.quant.lsq import (
                clamp_steps_,  # here, so importing train.module does not load torchao
            )

            clamp_steps_(self.model)  # LSQ steps stay positive, whatever the scale learning rate

    # --------------------------------------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        spec = self.trainer.datamodule.val_spec
        with torch.no_grad():
            self._classifier = build_zero_shot_classifier(self.model, self.tokenizer, spec.classnames, spec.templates,
                                                          device=self.device)
        self._val = []

    def validation_step(self, batch, batch_idx):
        images, labels = batch
        cos = F.normalize(self.model.encode_image(images).float(), dim=-1) @ self._classifier.float()
        self._val.append((self.model.logit_scale.exp().float() * cos, labels))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        logits = torch.cat([v[0] for v in self._val]).cpu()
        labels = torch.cat([v[1] for v in self._val]).cpu()
        self.log("val/acc1", topk_accuracy(logits, labels, (1,))[1], prog_bar=True)
        # float64 softmax: under bf16 autocast a float32 softmax runs in bf16, its rows off by > 1e-3
        self.log("val/ece", ece(softmax_probs(logits), labels))
        self._val = []

    # ---------------------------------------------------------------------------------------------- optimizer
    def configure_optimizers(self):
        hp = self.hparams
        scales, decay, no_decay = [], [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            if is_quantizer_parameter(name):
                scales.append(p)
            elif p.ndim < 2 or "logit_scale" in name or "embedding" in name:
                no_decay.append(p)
            else:
                decay.append(p)
        groups = [{"params": decay, "lr": hp.lr, "weight_decay": hp.weight_decay},
                  {"params": no_decay, "lr": hp.lr, "weight_decay": 0.0}]
        if scales:
            groups.append({"params": scales, "lr": hp.scale_lr, "weight_decay": 0.0})
        opt = torch.optim.AdamW([g for g in groups if g["params"]])
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = min(hp.warmup_steps, total - 1) if total > 1 else 0
        schedule = warmup_cosine(warmup, total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, schedule),
                                                   "interval": "step"}}
