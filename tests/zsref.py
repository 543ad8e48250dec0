"""An independent zero-shot reference for the evaluation tests: a wds split read with tarfile + Pillow only (the data
README's reader), images encoded by stock open_clip with its own transform, the classifier built by open_clip's
`build_zero_shot_classifier`. No qclip code is involved, so metrics that qclip reports can be checked against it."""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from PIL import Image


def read_wds(folder: Path, split: str = "test", limit: int | None = None) -> tuple[list[Image.Image], list[int]]:
    """The first `limit` (image, label) samples of `folder/<split>`, in stream order, as RGB PIL images."""
    n = int((folder / split / "nshards.txt").read_text())
    images, labels = [], []
    for i in range(n):
        with tarfile.open(folder / split / f"{i}.tar", mode="r|*") as tf:
            img = None
            for m in tf:
                data = tf.extractfile(m).read()
                if m.name.endswith(".cls"):
                    images.append(img)
                    labels.append(int(data))
                    if limit is not None and len(labels) == limit:
                        return images, labels
                else:
                    img = Image.open(io.BytesIO(data)).convert("RGB")
    return images, labels


@dataclass
class ZeroShot:
    """Raw cosine similarities [N, C] of the images to the class embeddings, the labels, and the logit scale."""

    cos: torch.Tensor
    labels: torch.Tensor
    scale: float

    @property
    def logits(self) -> torch.Tensor:
        return self.scale * self.cos

    def correct(self, k: int = 1) -> int:
        """Number of samples whose label is among the top-k classes."""
        top = self.cos.topk(k, dim=1).indices
        return int((top == self.labels[:, None]).any(dim=1).sum())


@torch.no_grad()
def zero_shot(model_dir: Path, dataset: Path, limit: int | None = None, classnames_of: Path | None = None) -> ZeroShot:
    """Stock open_clip zero-shot of the `local-dir:` model on `dataset` (its test split), with the class names and
    templates of `classnames_of` (default: the dataset's own)."""
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{model_dir}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{model_dir}")
    model.eval()
    names_dir = classnames_of or dataset
    classnames = (names_dir / "classnames.txt").read_text().split("\n")
    classnames = [c for c in classnames if c.strip()]
    templates = [t.strip() for t in (names_dir / "zeroshot_classification_templates.txt").read_text().splitlines()
                 if t.strip()]
    classifier = open_clip.build_zero_shot_classifier(model, tokenizer, classnames,
                                                      [lambda c, t=t: t.format(c=c) for t in templates])
    images, labels = read_wds(dataset, "test", limit)
    feats = model.encode_image(torch.stack([preprocess(im) for im in images]), normalize=True)
    return ZeroShot(feats @ classifier, torch.tensor(labels), float(model.logit_scale.exp()))
