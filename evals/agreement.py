"""Feature-level agreement of two models on the same images: how far an integer model's image features are from
the fake-quant model it was exported from (largest absolute difference, smallest per-image cosine, zero-shot
top-1 predictions that change)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["feature_agreement"]


@torch.no_grad()
def feature_agreement(reference: torch.Tensor, other: torch.Tensor, classifier: torch.Tensor,
                      other_classifier: torch.Tensor | None = None) -> dict[str, float | int]:
    """max |Δ| over all feature entries, min cosine over images and top-1 flips between two [n, d] feature sets.

    Features are compared raw (as the image tower returns them); cosines are per image; a flip is an image whose
    zero-shot prediction (argmax of the L2-normalised feature times its model's classifier [d, classes]:
    `classifier` for the reference, `other_classifier`, default the same, for the other) differs. Computed in
    float64 so that identical features give exactly 0 / 1 / 0."""
    if reference.shape != other.shape or reference.dim() != 2:
        raise ValueError(f"feature_agreement needs two [n, d] feature sets of one shape, got "
                         f"{tuple(reference.shape)} and {tuple(other.shape)}")
    a, b = reference.double(), other.double()
    cos = F.cosine_similarity(a, b, dim=-1).clamp(-1.0, 1.0)
    cos = torch.where((a == b).all(-1), torch.ones_like(cos), cos)  # identical rows: exactly 1, not 1 − 1 ulp
    if not cos.numel():
        cos = torch.ones(1, dtype=torch.float64)
    clf_b = (classifier if other_classifier is None else other_classifier).double()
    flips = (F.normalize(a, dim=-1) @ classifier.double()).argmax(-1) != (F.normalize(b, dim=-1) @ clf_b).argmax(-1)
    return {"n": int(a.shape[0]), "max_abs_diff": float((a - b).abs().max()) if a.numel() else 0.0,
            "min_cosine": float(cos.min()), "top1_flips": int(flips.sum())}
