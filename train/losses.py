"""Training losses: CLIP's contrastive InfoNCE, feature-MSE distillation, and the spectral-filtering penalty."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from qclip.spectral.penalties import feature_tail_energy, rank_spec

__all__ = ["contrastive_loss", "distill_mse", "feature_spectral_penalty"]

_CLIP_LOSS = ClipLoss()


def contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of open_clip's `ClipLoss` on L2-normalised features; `logit_scale` is already exp()'d."""
    return _CLIP_LOSS(F.normalize(image_features, dim=-1), F.normalize(text_features, dim=-1), logit_scale)


def distill_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """MSE between L2-normalised student and (detached) teacher features ("Contr.+MSE")."""
    return F.mse_loss(F.normalize(student.float(), dim=-1), F.normalize(teacher.detach().float(), dim=-1))


def feature_spectral_penalty(features: torch.Tensor, k: int | float) -> torch.Tensor:
    """Share of the centred batch features' energy beyond rank k (k ≥ 1 a rank, k in (0, 1) a fraction of it)."""
    return feature_tail_energy(features.float(), rank_spec(k), normalized=True)
