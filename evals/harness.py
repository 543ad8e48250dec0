"""The zero-shot evaluation harness: model + dataset in, accuracy out (the reliability metrics build on it)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .data import DatasetSpec, make_loader
from .models import LoadedModel
from .zeroshot import extract_image_features, topk_accuracy, zero_shot_classifier, zero_shot_logits

__all__ = ["ZeroShotResult", "evaluate_zero_shot"]


@dataclass
class ZeroShotResult:
    """Features, labels and calibration-convention logits of one (model, dataset) pass."""

    features: torch.Tensor
    labels: torch.Tensor
    logits: torch.Tensor
    classifier: torch.Tensor

    def metrics(self) -> dict:
        """acc1, acc5 and n."""
        acc = topk_accuracy(self.logits, self.labels, (1, 5))
        return {"acc1": acc[1], "acc5": acc[5], "n": int(self.labels.numel())}


@torch.no_grad()
def evaluate_zero_shot(loaded: LoadedModel, spec: DatasetSpec, *, device: str | torch.device = "cpu",
                       batch_size: int = 256, num_workers: int = 2, limit: int | None = None,
                       progress: bool = True, use_cache: bool = True) -> ZeroShotResult:
    """Classify `spec` zero-shot with `loaded`; logits = `logit_scale.exp() * cos`."""
    model = loaded.model.eval()
    classifier = zero_shot_classifier(model, loaded.tokenizer, spec.classnames, spec.templates, device=device,
                                      use_cache=use_cache, progress=progress)
    loader = make_loader(spec, loaded.preprocess, batch_size=batch_size, num_workers=num_workers, limit=limit)
    feats, labels = extract_image_features(model, loader, device=device, total=limit, progress=progress,
                                           desc=f"{spec.name}")
    logits = zero_shot_logits(feats, classifier, model.logit_scale.detach().float().cpu())
    return ZeroShotResult(feats, labels, logits, classifier.cpu())
