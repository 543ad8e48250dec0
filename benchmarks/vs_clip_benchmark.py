"""qclip eval vs CLIP_benchmark 1.6.2 on the same micro CLIP and wds/cifar10 test (10k), measured in one run.

Setup (benchmark-only, not a qclip dependency):
    pip install --no-deps clip-benchmark==1.6.2 pycocoevalcap webdataset braceexpand
Usage:
    python benchmarks/vs_clip_benchmark.py [--data-root DIR] [--repeats 2]

The model is a random-init 2-layer, 128-wide, 32-px ViT CLIP (patch 8) (benchmarks/bench-micro.json) saved as an open_clip
local-dir. Three commands run as fresh processes, alternating, wall time measured around each (process start,
imports and data decoding included, caches off):
  A. clip_benchmark eval --task zeroshot_classification --num_workers 1 (a 1-shard split with 2 workers fails)
  B. qclip eval, accuracy-only (no OOD/corruption sets; calibration metrics are computed anyway)
  C. qclip eval with --ood wds/imagenet_cifar10_ood --ood wds/fashion_mnist --corruptions gaussian_noise:3,
     defocus_blur:3 (no --limit on the ID set)
On numpy 2, CLIP_benchmark's `accuracy()` fails (`float()` of a 1-element array); this script patches that one
function at run time (see PATCH) and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import open_clip
import torch

HERE = Path(__file__).resolve().parent
PATCH = """
import sys, clip_benchmark.metrics.zeroshot_classification as zc
def accuracy(output, target, topk=(1,)):
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [correct[:k].reshape(-1).float().sum().item() / len(target) for k in topk]
zc.accuracy = accuracy
from clip_benchmark.cli import main
sys.argv = ["clip_benchmark"] + sys.argv[1:]
sys.exit(main())
"""


def build_model(folder: Path) -> None:
    """Save the random-init micro CLIP as an open_clip local-dir."""
    from qclip.io.models import save_open_clip_dir

    open_clip.add_model_config(HERE / "bench-micro.json")
    torch.manual_seed(0)
    model = open_clip.create_model("bench-micro")
    cfg = json.loads((HERE / "bench-micro.json").read_text())
    save_open_clip_dir(model, cfg, folder)


def timed(cmd: list[str], env: dict) -> float:
    """Wall seconds of one subprocess (fails loudly on a non-zero exit)."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-root", default=None, help="data root (default: $QCLIP_DATA_ROOT, else the cache, where "
                    "registered datasets are built on first use)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--precision", default="amp_bf16", help="qclip precision; clip_benchmark's default is AMP")
    args = ap.parse_args()
    PREC = args.precision  # noqa: N806
    from qclip.io.data import resolve_dataset

    cifar = resolve_dataset("wds/cifar10", args.data_root, "test")  # built from the registry on first use
    root = str(Path(cifar.shards[0]).resolve().parents[2])  # ROOT/wds_cifar10/test/0.tar
    work = Path(tempfile.mkdtemp(prefix="qclip-bench-"))
    model_dir = work / "model"
    build_model(model_dir)
    env = {**os.environ, "QCLIP_CACHE_DIR": str(work / "cache"), "HF_HUB_OFFLINE": "1"}
    qclip = str(Path(sys.executable).with_name("qclip"))
    cmds = {
        "clip_benchmark (acc)": [sys.executable, "-c", PATCH, "eval", "--model", f"local-dir:{model_dir}",
                                 "--pretrained", "none", "--dataset", "wds/cifar10", "--dataset_root",
                                 f"{root}/wds_{{dataset}}", "--task", "zeroshot_classification", "--num_workers", "1",
                                 "--batch_size", "256", "--output", str(work / "cb_{dataset}.json")],
        "qclip eval (acc)": [qclip, "eval", "--model", f"local-dir:{model_dir}", "--dataset", "wds/cifar10",
                             "--data-root", root, "--no-cache", "--no-progress", "--bootstrap", "0", "--precision", PREC,
                             "--out", str(work / "q_acc.json")],
        "qclip eval (full)": [qclip, "eval", "--model", f"local-dir:{model_dir}", "--dataset", "wds/cifar10",
                              "--ood", "wds/imagenet_cifar10_ood", "--ood", "wds/fashion_mnist", "--corruptions",
                              "gaussian_noise:3,defocus_blur:3", "--data-root", root, "--no-cache", "--no-progress", "--precision", PREC,
                              "--out", str(work / "q_full.json")],
    }
    imports = {"clip_benchmark (imports)": [sys.executable, "-c", "import clip_benchmark.cli, open_clip"],
               "qclip (imports)": [sys.executable, "-c", "import qclip.cli, evals.suite, evals.models, "
                                   "evals.metrics, evals.corruptions, quant.temperature"]}
    cmds = {**imports, **cmds}
    times: dict[str, list[float]] = {k: [] for k in cmds}
    for _ in range(args.repeats):
        for name, cmd in cmds.items():
            times[name].append(timed(cmd, env))
    cb = json.loads((work / "cb_cifar10.json").read_text())["metrics"]["acc1"]
    ours = json.loads((work / "q_acc.json").read_text())["metrics"]["acc1"]
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"torch threads {torch.get_num_threads()}, {args.repeats} alternating repeats, median wall seconds")
    for name, t in med.items():
        print(f"  {name:22s} {t:6.2f} s   (all: {', '.join(f'{x:.2f}' for x in times[name])})")
    base = med["clip_benchmark (acc)"]
    print(f"acc1: clip_benchmark {cb:.4f}, qclip {ours:.4f} (qclip precision {PREC})")
    print("process wall time (interpreter start and imports included):")
    print(f"  ratio qclip acc-only / clip_benchmark = {med['qclip eval (acc)'] / base:.2f}x (goal <= 0.5)")
    print(f"  ratio qclip full     / clip_benchmark = {med['qclip eval (full)'] / base:.2f}x (goal <= 1.0)")
    cb_work = base - med["clip_benchmark (imports)"]
    q_imp = med["qclip (imports)"]
    print("evaluation work (wall minus the same process's import time):")
    print(f"  clip_benchmark {cb_work:.2f} s, qclip acc-only {med['qclip eval (acc)'] - q_imp:.2f} s, "
          f"qclip full {med['qclip eval (full)'] - q_imp:.2f} s")
    print(f"  ratio acc-only {(med['qclip eval (acc)'] - q_imp) / cb_work:.2f}x, "
          f"full {(med['qclip eval (full)'] - q_imp) / cb_work:.2f}x")


if __name__ == "__main__":
    main()
