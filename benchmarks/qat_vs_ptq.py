"""Issue check for train: w4a8 LSQ QAT (contrastive + MSE) vs w4a8 RTN PTQ on the demo model, and the spectral
regularizer (λ > 0) vs its ablation (λ = 0): acc1, ECE, MCM AUROC vs wds/imagenet_cifar10_ood and per-rank SQNR
of the quantized image features against the original FP features (banded, with Spearman ρ over ranks).

Usage: python benchmarks/qat_vs_ptq.py [--data-root ../shared/data] [--train-pairs 12800] [--lam 1.0] [--k 16]
                                      [--fit-arg=--model.freeze_bn --fit-arg=false ...]
Each fit runs `qclip fit --config configs/qat_demo.yaml` with overrides; wall time per fit is printed.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from evals.features import dataset_features
from evals.suite import ReliabilitySuite, SuiteConfig
from evals.zeroshot import model_fingerprint
from qclip.cli import main as qclip
from spectral.features import band_sqnr, feature_basis, per_rank_sqnr
from train.demo import ensure_demo_model

REPO = Path(__file__).resolve().parents[1]
OOD = "wds/imagenet_cifar10_ood"


def evaluate(model: str, quant: str | None, root: str, limit: int | None):
    """Metrics and test features of one (model, quant) variant."""
    cfg = SuiteConfig(model=model, dataset="wds/cifar10", quant=quant, ood=[OOD], bootstrap=0, limit=limit)
    suite = ReliabilitySuite(cfg, data_root=root, progress=False)
    loaded = suite.load()
    if quant:
        loaded, _ = suite.quantized(loaded)
    m = suite.evaluate(loaded)
    feats, _ = dataset_features(loaded.model, loaded.preprocess, suite.id_spec, model_key=model_fingerprint(loaded.model),
                                limit=limit, progress=False)
    return m, feats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--train-pairs", type=int, default=12800)
    ap.add_argument("--lam", type=float, default=1.0)
    ap.add_argument("--k", type=float, default=16)
    ap.add_argument("--limit", type=int, default=None, help="test images (default: all 10k)")
    ap.add_argument("--out", default="runs/qat_vs_ptq")
    ap.add_argument("--fit-arg", action="append", default=[], metavar="ARG",
                    help="extra `qclip fit` argument, repeatable (e.g. --fit-arg=--model.freeze_bn --fit-arg=false)")
    args = ap.parse_args()
    root = str(Path(args.data_root).resolve())
    os.environ.setdefault("QCLIP_DATA_ROOT", root)
    os.environ.setdefault("WANDB_MODE", "offline")
    ensure_demo_model(data_root=root)
    runs = {}
    for lam in (0.0, args.lam):
        run_dir = Path(args.out) / f"lam{lam:g}"
        t0 = time.perf_counter()
        rc = qclip(["fit", "--config", str(REPO / "configs" / "qat_demo.yaml"), "--trainer.default_root_dir",
                    str(run_dir), "--data.train_limit", str(args.train_pairs), "--model.spectral_lambda", str(lam),
                    "--model.spectral_k", str(args.k), "--trainer.enable_progress_bar", "false", *args.fit_arg])
        if rc != 0:
            raise SystemExit(f"fit failed with status {rc}")
        runs[f"QAT w4a8-lsq contr+MSE, λ={lam:g}"] = (str(run_dir / "checkpoints" / "last.ckpt"), time.perf_counter() - t0)
    fp_m, fp_f = evaluate("demo", None, root, args.limit)
    basis = feature_basis(fp_f)
    rows = [("FP demo", fp_m, None, None)]
    variants = [("PTQ w4a8 RTN", "demo", "w4a8", None)] + [(name, ckpt, "w4a8-lsq", secs) for name, (ckpt, secs) in runs.items()]
    for name, model, quant, secs in variants:
        m, f = evaluate(model, quant, root, args.limit)
        rows.append((name, m, per_rank_sqnr(fp_f, f, basis), secs))
    from scipy.stats import spearmanr

    print("| model | acc1 | ECE | MCM AUROC | SQNR 0-8 / 8-64 / 64+ (dB) | Spearman ρ(SQNR, rank) | fit time |")
    print("|---|---|---|---|---|---|---|")
    for name, m, sq, secs in rows:
        auroc = m["ood"][OOD]["mcm"]["auroc"]
        if sq is None:
            bands, rho = "-", "-"
        else:
            b = band_sqnr(sq["signal"], sq["error"])
            bands = " / ".join(f"{v:.1f}" for v in b.values())
            rho = f"{spearmanr(torch.arange(sq['sqnr_db'].numel()).numpy(), sq['sqnr_db'].numpy()).statistic:.2f}"
        fit = "-" if secs is None else f"{secs:.0f} s"
        print(f"| {name} | {m['acc1']:.4f} | {m['ece']:.4f} | {auroc:.4f} | {bands} | {rho} | {fit} |", flush=True)


if __name__ == "__main__":
    main()
