"""Zero-shot classification: template-ensembled text classifiers (cached on disk), logits, accuracy, and
`evaluate_zero_shot`, the one zero-shot pass (model + dataset in, features/logits/accuracy out) that the demo
pretraining and the benchmarks use; the reliability suite builds on the same pieces.

Writes `<cache>/classifiers/<key>.pt` (one text classifier per text tower, class names and templates)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from qclip.io.progress import is_terminal
from qclip.io.tensor_cache import cached_tensors

if TYPE_CHECKING:
    from qclip.io.data import DatasetSpec
    from qclip.io.models import LoadedModel

__all__ = ["model_fingerprint", "text_tower_fingerprint", "build_zero_shot_classifier", "zero_shot_classifier",
           "zero_shot_logits", "topk_accuracy", "ZeroShotResult", "evaluate_zero_shot"]

_IMAGE_TOWER_PREFIXES = ("visual.",)
_NOT_TEXT = ("logit_scale", "logit_bias")


def model_fingerprint(model: nn.Module, *, skip_prefixes: tuple[str, ...] = (), skip_names: tuple[str, ...] = (),
                      extra: str = "") -> str:
    """Hash every state-dict tensor and module type of `model` (minus the skipped ones): a content key for caches."""
    h = hashlib.sha256(extra.encode())
    for name, tensor in sorted(model.state_dict().items()):
        if name.startswith(skip_prefixes) or name in skip_names:
            continue
        t = tensor.detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    for name, module in model.named_modules():  # surgery/quantization changes the function, not only weights
        if name and not name.startswith(skip_prefixes):
            h.update(f"{name}:{type(module).__name__}".encode())
    return h.hexdigest()


def text_tower_fingerprint(model: nn.Module, tokenizer: Callable | None = None) -> str:
    """Hash every tensor the text embedding depends on (all but the image tower and logit scale/bias)."""
    extra = "" if tokenizer is None else f"{type(tokenizer).__name__}:{getattr(tokenizer, 'context_length', '')}"
    return model_fingerprint(model, skip_prefixes=_IMAGE_TOWER_PREFIXES, skip_names=_NOT_TEXT, extra=extra)


def _fill(template: str, classname: str) -> str:
    return template.replace("{c}", classname)


@torch.no_grad()
def build_zero_shot_classifier(model: nn.Module, tokenizer: Callable, classnames: Sequence[str],
                               templates: Sequence[str], *, device: str | torch.device = "cpu",
                               batch_classes: int = 10, progress: bool = False) -> torch.Tensor:
    """Return the [embed_dim, num_classes] classifier: per class, L2-normalise each template embedding, average,
    and renormalise (CLIP's prompt ensembling). Templates use `{c}` for the class name."""
    if not classnames or not templates:
        raise ValueError("need at least one class name and one template")
    columns = []
    chunks = range(0, len(classnames), batch_classes)
    for start in tqdm(chunks, desc="text classifier", disable=not (progress and is_terminal()), leave=False):
        names = classnames[start:start + batch_classes]
        texts = [_fill(t, c) for c in names for t in templates]
        tokens = tokenizer(texts).to(device)
        emb = F.normalize(model.encode_text(tokens).float(), dim=-1)
        emb = emb.reshape(len(names), len(templates), -1).mean(dim=1)
        columns.append(F.normalize(emb, dim=-1))
    return torch.cat(columns).T.contiguous()


def embed_dim(model: nn.Module) -> int | None:
    """The width of a CLIP's joint embedding (its image tower's `output_dim`), None when the model does not say."""
    dim = getattr(getattr(model, "visual", None), "output_dim", None)
    return dim if isinstance(dim, int) else None


def _fits(weights, dim: int | None, n_classes: int) -> bool:
    """Whether a cached classifier is a finite float32 [dim, n_classes] matrix."""
    return (isinstance(weights, torch.Tensor) and weights.dtype == torch.float32 and weights.dim() == 2
            and weights.shape[1] == n_classes and (dim is None or weights.shape[0] == dim)
            and bool(torch.isfinite(weights).all()))


def zero_shot_classifier(model: nn.Module, tokenizer: Callable, classnames: Sequence[str], templates: Sequence[str],
                         *, device: str | torch.device = "cpu", use_cache: bool = True,
                         progress: bool = False) -> torch.Tensor:
    """`build_zero_shot_classifier`, cached under `<cache>/classifiers/` keyed by text tower + classes + templates."""
    description = {"model": text_tower_fingerprint(model, tokenizer), "classnames": list(classnames),
                   "templates": list(templates)}
    return cached_tensors("classifiers", description, lambda: build_zero_shot_classifier(
        model, tokenizer, classnames, templates, device=device, progress=progress), use_cache=use_cache,
        map_location=device, fits=lambda weights: _fits(weights, embed_dim(model), len(classnames)))


def zero_shot_logits(features: torch.Tensor, classifier: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Calibration-convention logits: `logit_scale.exp() * cos(image, class)`; `logit_scale` is the log-scale."""
    cos = F.normalize(features.float(), dim=-1) @ classifier.float().to(features.device)
    scale = torch.as_tensor(logit_scale, dtype=torch.float32).exp()
    return scale.to(cos.device) * cos


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Share of samples whose label is among the top-k logits, per k (k capped at the class count)."""
    maxk = min(max(ks), logits.shape[1])
    top = logits.topk(maxk, dim=1).indices
    hit = top == labels.view(-1, 1)
    n = max(1, labels.numel())
    return {k: hit[:, :min(k, maxk)].any(dim=1).sum().item() / n for k in ks}


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
    from .features import dataset_features

    model = loaded.model.eval()
    classifier = zero_shot_classifier(model, loaded.tokenizer, spec.classnames, spec.templates, device=device,
                                      use_cache=use_cache, progress=progress)
    feats, labels = dataset_features(model, loaded.preprocess, spec, model_key=model_fingerprint(model),
                                     limit=limit, batch_size=batch_size, num_workers=num_workers, device=device,
                                     progress=progress, use_cache=use_cache)
    logits = zero_shot_logits(feats, classifier, model.logit_scale.detach().float().cpu())
    return ZeroShotResult(feats, labels, logits, classifier.cpu())
