"""Fake-quant overhead of a QAT training step: FP step vs prepared-QAT step, measured in one run.

Usage: python benchmarks/qat_overhead.py [--spec w4a8-lsq] [--batch 256] [--steps 6] [--data-root DIR]
A step = image + prompt embeddings, open_clip ClipLoss, backward, AdamW (as in demo pretraining); a third
variant adds the spectral-filtering penalty (energy beyond rank 16 of the centred batch image features). The demo
model (ModifiedResNet image tower, 23 vision maps incl. convolutions) on random 32-px images. Steps of the FP
and QAT models are interleaved so machine noise hits both; the median step time of each is reported.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from open_clip.loss import ClipLoss
from qclip.quant.qat import prepare_qat_
from qclip.train.demo import ensure_demo_model
from qclip.train.losses import feature_spectral_penalty

from qclip.io.models import load_model


def make_step(model, images, tokens, labels, spectral_lambda: float = 0.0, spectral_k: float = 16):
    """One optimizer step closure for `model` (with the feature spectral penalty when `spectral_lambda` > 0)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    loss_fn = ClipLoss()

    def step():
        raw = model.encode_image(images)
        img = torch.nn.functional.normalize(raw, dim=-1)
        txt = model.encode_text(tokens, normalize=True)[labels]
        loss = loss_fn(img, txt, model.logit_scale.exp())
        if spectral_lambda > 0:
            loss = loss + spectral_lambda * feature_spectral_penalty(raw, spectral_k)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", default="w4a8-lsq")
    ap.add_argument("--backend", default="lsq")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--data-root", default=None, help="data root (default: $QCLIP_DATA_ROOT, else the cache, where "
                    "registered datasets are built on first use)")
    args = ap.parse_args()
    torch.manual_seed(0)
    ensure_demo_model(data_root=args.data_root)
    loaded = load_model("demo")
    images = torch.randn(args.batch, 3, 32, 32)
    tokens = loaded.tokenizer([f"a photo of a thing number {i}." for i in range(180)])
    labels = torch.randint(0, 180, (args.batch,))
    fp = copy.deepcopy(loaded.model).train()
    qat = copy.deepcopy(loaded.model)
    report = prepare_qat_(qat, args.spec, lambda m: (m.encode_image(images[:64]), m.encode_text(tokens)),
                         backend=args.backend)
    qat.train()
    qat_reg = copy.deepcopy(qat)
    steps = {"fp": make_step(fp, images, tokens, labels), "qat": make_step(qat, images, tokens, labels),
             "qat+reg": make_step(qat_reg, images, tokens, labels, spectral_lambda=1.0)}
    times = {name: [] for name in steps}
    for name in steps:  # warm-up
        steps[name]()
    for _ in range(args.steps):
        for name in steps:
            t0 = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - t0)
    fp_s, q_s, r_s = (statistics.median(times[n]) for n in ("fp", "qat", "qat+reg"))
    print(f"spec {args.spec} ({args.backend}), coverage {report.coverage_line()}, batch {args.batch}, "
          f"threads {torch.get_num_threads()}")
    print(f"FP step  {fp_s * 1000:.0f} ms (median of {args.steps})")
    print(f"QAT step {q_s * 1000:.0f} ms (median of {args.steps})")
    print(f"QAT + feature spectral penalty step {r_s * 1000:.0f} ms (median of {args.steps})")
    print(f"ratio QAT/FP = {q_s / fp_s:.2f}x (goal <= 1.25)")
    print(f"ratio reg/no-reg = {r_s / q_s:.3f}x (goal <= 1.10)")


if __name__ == "__main__":
    main()
