"""Ray's overhead on a micro grid: `qclip ablate` in process against `qclip ablate --ray` (a local Ray instance the
command starts itself), same grid, same machine, runs interleaved, wall time of the whole command.

Usage:
    python benchmarks/ray_overhead.py [--rounds 3] [--out ray_overhead.json]

The grid is the test suite's micro ViT CLIP (random init, tests/model_configs) on its synthetic data root
(tests/synthdata.py): FP, RTN W8A8 / W4A8, a rank truncation; one OOD set, one corruption, limit 256. Every run
writes to a fresh folder with `--no-cache` (every feature extracted again). `--ray` uses its default sizing: one
CPU worker per 2 cores, so on a 2-core machine one worker with the same 2 threads as the in-process run; the
difference is Ray's start-up, the actor's imports and the records' round trip -- and the environment: Ray sets
OMP_NUM_THREADS in its workers, which changes how OpenMP threads wait on a loaded machine, so a third mode runs
in process with OMP_NUM_THREADS set the same way (rounds rotate the order of the three).
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

GRID = """name: micro
models: [{{name: 'local-dir:{model}'}}]
methods: [rtn]
bits: [w8a8, w4a8]
truncation: [rank-f0.5]
dataset: wds/cifar10
ood: [wds/fashion_mnist]
corruptions: [gaussian_noise:3]
limit: 256
ood_limit: 128
bootstrap: 100
bands: 0-4,4-16,16-
batch_size: 64
"""


def build(tmp: Path) -> tuple[Path, Path]:
    """The micro model folder and the synthetic data root."""
    import open_clip
    import torch
    from synthdata import build_synthetic_root

    from qclip.io.models import load_model, save_open_clip_dir

    open_clip.add_model_config(REPO / "tests" / "model_configs")
    torch.manual_seed(0)
    model = save_open_clip_dir(load_model("qclip-micro-vit").model, open_clip.get_model_config("qclip-micro-vit"),
                               tmp / "micro")
    return model, build_synthetic_root(tmp / "data")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ray-overhead-"))
    model, data = build(tmp)
    grid = tmp / "grid.yaml"
    grid.write_text(GRID.format(model=model))
    env = {**os.environ, "QCLIP_CACHE_DIR": str(tmp / "cache"), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    modes = ["in_process", "in_process_omp", "ray"]
    times: dict[str, list[float]] = {m: [] for m in modes}
    for r in range(args.rounds):
        for mode in modes[r % 3:] + modes[:r % 3]:  # rotate who goes first
            cmd = [sys.executable, "-m", "qclip", "ablate", "--config", str(grid), "--out", str(tmp / f"{mode}{r}"),
                   "--data-root", str(data), "--no-cache", "--no-progress", "--workers", "0"]
            cmd += ["--ray"] if mode == "ray" else []
            # Ray sets OMP_NUM_THREADS to an actor's CPUs; in_process_omp sets it alike (2) to part its effect on
            # OpenMP (thread wait policy) from Ray's own cost
            run_env = {**env, "OMP_NUM_THREADS": str(os.cpu_count())} if mode == "in_process_omp" else env
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, env=run_env, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                raise SystemExit(f"{mode} failed:\n{proc.stderr[-3000:]}")
            times[mode].append(wall)
            print(f"round {r + 1} {mode:10s} {wall:6.1f} s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    cpu = next((line.split(":", 1)[1].strip() for line in subprocess.run(["lscpu"], capture_output=True,
               text=True).stdout.splitlines() if line.startswith("Model name")), "unknown")
    result = {"cpu": cpu, "cores": os.cpu_count(), "rounds": args.rounds, "wall_s": times,
              "median_s": {k: round(v, 1) for k, v in med.items()},
              "ratio_ray_vs_in_process": round(med["ray"] / med["in_process"], 3),
              "ratio_ray_vs_in_process_omp": round(med["ray"] / med["in_process_omp"], 3)}
    print(f"median: in process {med['in_process']:.1f} s, in process with OMP_NUM_THREADS set "
          f"{med['in_process_omp']:.1f} s, --ray {med['ray']:.1f} s: ratios {result['ratio_ray_vs_in_process']:.2f}x, "
          f"{result['ratio_ray_vs_in_process_omp']:.2f}x ({cpu}, {os.cpu_count()} cores)")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
