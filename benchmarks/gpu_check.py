"""One GPU check, under 8 minutes on one GPU, offline: the CUDA tests, `qclip bench` at ViT-B-32, FP16/BF16 autocast
throughput, and a 4-cell pilot of `configs/paper_vitb32.yaml` through `qclip ablate --ray` on the GPU; one JSON.

Usage (on a GPU box with the ViT-B-32 `openai` weights in a Hugging Face cache and the grid's datasets built):
    python benchmarks/gpu_check.py --hf-home ~/.cache/huggingface --data-root /data/qclip --out gpu_check.json

    --hf-home   the HF_HOME that holds `hub/models--timm--vit_base_patch32_clip_224.openai` (open_clip's source of
                ViT-B-32 `openai`; fill it once online with
                `python -c "import open_clip; open_clip.create_model('ViT-B-32', pretrained='openai')"`);
                the check sets HF_HUB_OFFLINE=1 and QCLIP_OFFLINE=1, so nothing is downloaded
    --data-root the CLIP_benchmark-layout data root with the paper grid's CIFAR-10 / PACS / ImageNet-sample / Fashion-
                MNIST sets (`qclip data fetch all --data-root DIR` fills it once online); default $QCLIP_DATA_ROOT

Steps (each under its own time limit, each recorded even when it fails, so one bad step does not lose the rest):
1. `pytest` on the tests that need CUDA (found by their `skipif(not torch.cuda.is_available())` marks);
2. `qclip bench --model ViT-B-32 --pretrained openai --quant w8a8 --compile --device cuda --batch 1,256`
   (FP32 eager and compiled, BF16 autocast, fake-quant; integer kernels are CPU-only and are skipped on CUDA);
3. the image tower's throughput under FP32, BF16 and FP16 autocast at batch 256 (`qclip bench` has no FP16 row);
4. the pilot: FP and RTN W8A8 / W6A8 / W4A8 (vision) of `paper_vitb32.yaml`, seed 0, `--limit 2048 --ood-limit
   2048`, through `qclip ablate --ray` (a local Ray instance, one worker on the GPU); its per-cell seconds and
   image forwards per second (the dry run's counts / wall time).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_step(name: str, cmd: list[str], timeout: float, env: dict) -> dict:
    """Run a command; return its status, wall seconds and output tail (a timeout is recorded, not raised)."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out = "timeout", (exc.stdout or b"").decode(errors="replace") + (exc.stderr or b"").decode(errors="replace")
    wall = time.perf_counter() - t0
    print(f"[{name}] rc={rc} in {wall:.0f}s", flush=True)
    return {"cmd": cmd, "rc": rc, "wall_s": round(wall, 1), "tail": out[-4000:]}


def cuda_tests() -> list[str]:
    """Node ids of the tests skipped without CUDA."""
    ids = []
    for path in sorted((REPO / "tests").glob("test_*.py")):
        text = path.read_text()
        for m in re.finditer(r"skipif\(not torch\.cuda\.is_available\(\)[^\n]*\n(?:@[^\n]*\n)*def (test_\w+)", text):
            ids.append(f"tests/{path.name}::{m.group(1)}")
    return ids


def autocast_throughput(batch: int = 256, seconds: float = 5.0) -> dict:
    """Image-tower images/s of ViT-B-32 openai on the GPU under FP32 and BF16/FP16 autocast (random inputs)."""
    import torch

    from qclip.io.models import load_model

    loaded = load_model("ViT-B-32", "openai", device="cuda")
    tower = loaded.model.visual.eval()
    x = torch.randn(batch, 3, 224, 224, device="cuda")
    out = {"gpu": torch.cuda.get_device_name(), "batch": batch}
    for name, dtype in (("fp32", None), ("bf16_autocast", torch.bfloat16), ("fp16_autocast", torch.float16)):
        ctx = torch.autocast("cuda", dtype=dtype) if dtype else torch.autocast("cuda", enabled=False)
        with torch.no_grad(), ctx:
            for _ in range(3):
                tower(x)
            torch.cuda.synchronize()
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                tower(x)
                n += 1
            torch.cuda.synchronize()
            out[f"{name}_img_s"] = round(n * batch / (time.perf_counter() - t0), 1)
    return out


def pilot_grid(path: Path) -> Path:
    """`paper_vitb32.yaml` cut to its first 4 cells: FP and RTN W8A8/W6A8/W4A8 on the vision tower, seed 0."""
    import yaml

    cfg = yaml.safe_load((REPO / "configs" / "paper_vitb32.yaml").read_text())
    cfg.update(name="gpu_pilot", methods=["rtn"], bits=["w8a8", "w6a8", "w4a8"], scopes=["vision"],
               match_truncation=[], truncation=[], seeds=[0])
    path.write_text(yaml.safe_dump(cfg))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hf-home", default=None, help="HF_HOME holding the cached ViT-B-32 openai weights")
    ap.add_argument("--data-root", default=os.environ.get("QCLIP_DATA_ROOT"))
    ap.add_argument("--limit", type=int, default=2048)
    ap.add_argument("--out", default=str(REPO / "gpu_check.json"))
    args = ap.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "QCLIP_OFFLINE": "1", "WANDB_MODE": "offline",
           "QCLIP_PROGRESS_INTERVAL": "10"}
    if args.hf_home:
        env["HF_HOME"] = os.environ["HF_HOME"] = args.hf_home
    os.environ.update(HF_HUB_OFFLINE="1", QCLIP_OFFLINE="1")
    if args.data_root:
        env["QCLIP_DATA_ROOT"] = args.data_root
    import torch

    report: dict = {"host": platform.node(), "python": sys.version.split()[0], "torch": torch.__version__,
                    "cuda_available": torch.cuda.is_available(),
                    "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None, "steps": {}}
    steps = report["steps"]
    t_start = time.perf_counter()
    tests = cuda_tests()
    steps["cuda_tests"] = {"tests": tests, **run_step("cuda tests", [sys.executable, "-m", "pytest", "-q", "-p",
                                                                      "no:cacheprovider", *tests], 120, env)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        qclip = [sys.executable, "-m", "qclip"]
        steps["bench"] = run_step("qclip bench", [*qclip, "bench", "--model", "ViT-B-32", "--pretrained", "openai",
                                                  "--quant", "w8a8", "--compile", "--device", "cuda", "--batch",
                                                  "1,256", "--repeats", "3", "--no-progress", "--out",
                                                  str(tmp / "bench")], 180, env)
        if (tmp / "bench" / "bench.json").is_file():
            steps["bench"]["result"] = json.loads((tmp / "bench" / "bench.json").read_text())
        try:
            steps["autocast"] = autocast_throughput()
        except Exception as exc:  # recorded: the other steps still run
            steps["autocast"] = {"error": f"{type(exc).__name__}: {exc}"}
        grid = pilot_grid(tmp / "pilot.yaml")
        out = tmp / "pilot"
        limits = ["--limit", str(args.limit), "--ood-limit", str(args.limit)]
        dry = subprocess.run([*qclip, "ablate", "--config", str(grid), "--dry-run", "--json", *limits], cwd=REPO,
                             env=env, capture_output=True, text=True)
        images = json.loads(dry.stdout)["total"]["images"] if dry.returncode == 0 else None
        steps["ray_pilot"] = run_step("ray pilot", [*qclip, "ablate", "--config", str(grid), "--out", str(out),
                                                    "--ray", "--workers", "4", *limits], 240, env)
        steps["ray_pilot"]["image_forwards"] = images
        results = out / "results.jsonl"
        if results.is_file():
            records = [json.loads(line) for line in results.read_text().splitlines()]
            steps["ray_pilot"]["cells"] = [{"id": r["cell"]["id"], "seconds": r["seconds"], "timings": r["timings"],
                                            "acc1": r["metrics"]["acc1"], "ece": r["metrics"]["ece"]}
                                           for r in records]
            if images:
                steps["ray_pilot"]["img_s_wall"] = round(images / steps["ray_pilot"]["wall_s"], 1)
    report["total_wall_s"] = round(time.perf_counter() - t_start, 1)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out} ({report['total_wall_s']:.0f}s)")


if __name__ == "__main__":
    main()
