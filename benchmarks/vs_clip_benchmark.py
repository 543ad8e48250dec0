"""Eval throughput: qclip eval vs CLIP_benchmark 1.6.2 vs a bare batched forward, same model, same images, one run.

Setup (benchmark-only, not a qclip dependency):
    pip install --no-deps clip-benchmark==1.6.2 pycocoevalcap webdataset braceexpand
Usage:
    python benchmarks/vs_clip_benchmark.py [--mode vit-b-32|micro|both] [--images 2000] [--micro-images 10000]
        [--data-root DIR] [--repeats 1] [--precision fp32] [--workers W] [--compile] [--out FILE.json]

Modes (random-init weights, `torch.manual_seed(0)`, saved with `qclip.io.models.save_open_clip_dir` as an open_clip
local-dir that both tools load through open_clip's `local-dir:` schema, so they run the same weights):
  vit-b-32  `open_clip.create_model("ViT-B-32")`, 224 px: the CIFAR-10 images (32 px) are upsampled by the model's
            preprocess (bicubic resize, center crop, to tensor, normalize). Here the forward dominates.
  micro     a 2-layer, 128-wide, 32-px ViT CLIP (patch 8) (benchmarks/bench-micro.json). Here decoding dominates.

Data: the first N test images of wds/cifar10 under --data-root (default $QCLIP_DATA_ROOT), written as a 1-shard copy
in a temp folder (CLIP_benchmark has no sample limit), which both tools read (qclip without --limit).

Tools, each a fresh process:
  clip_benchmark  `clip_benchmark eval --task zeroshot_classification --num_workers 1 --batch_size B` (a 1-shard split
                  with 2 workers fails); with --precision fp32 also `--no_amp`: its default AMP is bfloat16 autocast on
                  a CPU, which is ~13x slower than fp32 on CPUs without native bf16 (compare equal precisions).
  qclip eval      `qclip eval --bootstrap 0 --no-cache` accuracy-only (no OOD/corruption sets; the calibration metrics
                  are computed anyway), `--batch-size B`, qclip's default `--workers` unless --workers is given.
  bare forward    the limit: `model.encode_image` on pre-decoded, pre-transformed float tensors in batches of B under
                  `torch.inference_mode` (decoding and transforming all N images happens first and is not timed).
  with --compile: qclip eval --compile (the image tower compiled with torch.compile); the compilation lands in
                  "1st batch" (and in the last batch when its size differs and forces a second compilation: see
                  batch_s_first_round in the JSON).
  micro only: qclip eval (full) with --ood wds/imagenet_cifar10_ood --ood wds/fashion_mnist --corruptions
                  gaussian_noise:3,defocus_blur:3 on the N ID images, reported as whole-process wall time.

How steady state is measured (in-process, one run per tool): every process runs under a small wrapper (RUNNER) that
wraps open_clip's `CLIP.encode_image` to record wall-clock (`time.time()`) start/end of each image batch. Then
  start-up     = launch -> first image batch enters the forward: interpreter, imports, model build, text classifier
                 (both tools build the same 10 x 18-prompt classifier before the images), data open, first decode;
  steady state = (N - first batch) / (end of the last batch - end of the first batch): every image after the first
                 batch, with everything the tool does per batch inside that span (decode and transform in workers or
                 in the main process, collate, copies, the forward, keeping features);
  first batch  = the first forward (warm-up: oneDNN primitive creation, lazy init), reported apart;
  tail         = end of the last batch -> process exit (metrics, JSON, worker shutdown);
  fwd-only     = the same images / the time spent inside `encode_image` alone (steady minus fwd-only = waiting for
                 data and per-batch work outside the forward).
So wall = start-up + first batch + N'/steady rate + tail, which the table shows side by side. Timing inside the
process measures the same span for every tool from one run; fitting a slope over two sizes (N/2 and N) would
cancel start-up too, but costs 1.5x the images (minutes per tool for ViT-B-32 on 2 cores) and its difference of two
noisy walls is noisier than one span. The wrapper adds two clock reads per batch.

On numpy 2, CLIP_benchmark's `accuracy()` fails (`float()` of a 1-element array): the wrapper patches that one
function at run time (see RUNNER) and says so. Run heavy benchmarks one at a time (on a shared machine, wrap the
command in `flock`): a second heavy process on the same cores makes every ratio meaningless. Each run reports the
share of the machine's CPU time that other processes used meanwhile (/proc/stat minus the run's own rusage) and
is flagged DISTURBED above 5%: rerun then. qclip's DataLoader workers run niced (qclip.evals.features.WORKER_NICENESS;
QCLIP_WORKER_NICENESS=0 in the environment turns that off, to measure its effect).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

HERE = Path(__file__).resolve().parent
DISTURBED = 0.05  # share of the machine's CPU time other processes used during a run above which it is flagged

# Runs every measured process: trace the image forwards, then dispatch to the tool (argv[1]).
RUNNER = r"""
import atexit, json, os, sys, time
import open_clip.model as _ocm
TRACE = {"batches": [], "marks": {}}
def _traced(cls):
    orig = cls.encode_image
    def encode_image(self, image, *args, **kwargs):
        t0 = time.time()
        out = orig(self, image, *args, **kwargs)
        if out.is_cuda:
            import torch; torch.cuda.synchronize()
        TRACE["batches"].append((t0, time.time(), int(image.shape[0])))
        return out
    cls.encode_image = encode_image
for _cls in (_ocm.CLIP, _ocm.CustomTextCLIP):
    _traced(_cls)
def _dump():
    TRACE["exit"] = time.time()
    with open(os.environ["BENCH_TRACE"], "w") as fh:
        json.dump(TRACE, fh)
atexit.register(_dump)
tool, argv = sys.argv[1], sys.argv[2:]
if tool == "clip_benchmark":
    # PATCH: CLIP_benchmark 1.6.2's accuracy() calls float() on a 1-element array, which numpy 2 refuses
    import clip_benchmark.metrics.zeroshot_classification as zc
    def accuracy(output, target, topk=(1,)):
        pred = output.topk(max(topk), 1, True, True)[1].t()
        correct = pred.eq(target.view(1, -1).expand_as(pred))
        return [correct[:k].reshape(-1).float().sum().item() / len(target) for k in topk]
    zc.accuracy = accuracy
    from clip_benchmark.cli import main
    sys.argv = ["clip_benchmark"] + argv
    sys.exit(main())
elif tool == "qclip":
    from qclip.cli import main
    sys.exit(main(argv))
elif tool == "bare":
    import torch, open_clip
    from qclip.io.data import decode_image, iter_wds_samples
    model_dir, shard, n, bs = argv[0], argv[1], int(argv[2]), int(argv[3])
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{model_dir}", pretrained=None)
    model.eval()
    TRACE["marks"]["built"] = time.time()
    images = [preprocess(decode_image(s, shard)) for s, _ in zip(iter_wds_samples(shard), range(n))]
    batches = torch.stack(images).split(bs)
    del images
    TRACE["marks"]["decoded"] = time.time()
    with torch.inference_mode():
        for x in batches:
            model.encode_image(x)
else:
    raise SystemExit(f"unknown tool {tool}")
"""


def build_model(mode: str, folder: Path) -> None:
    """Save the mode's random-init CLIP (seed 0) as an open_clip local-dir."""
    import open_clip
    import torch
    from open_clip.factory import get_model_config

    from qclip.io.models import save_open_clip_dir

    if mode == "micro":
        open_clip.add_model_config(HERE / "bench-micro.json")
        name = "bench-micro"
    else:
        name = "ViT-B-32"
    torch.manual_seed(0)
    model = open_clip.create_model(name)
    save_open_clip_dir(model, get_model_config(name), folder)


def subset_root(src_root: str, n: int, dest: Path) -> tuple[Path, int]:
    """Write the first `n` wds/cifar10 test samples as a 1-shard copy under `dest`; return (root, samples written)."""
    from qclip.io.data import iter_wds_samples, resolve_dataset

    spec = resolve_dataset("wds/cifar10", src_root, "test")
    base = Path(spec.shards[0]).resolve().parents[1]  # ROOT/wds_cifar10
    out = dest / "wds_cifar10"
    (out / "test").mkdir(parents=True)
    for meta in ("classnames.txt", "zeroshot_classification_templates.txt"):
        (out / meta).write_bytes((base / meta).read_bytes())
    count = 0
    with tarfile.open(out / "test" / "0.tar", "w") as tf:
        for shard in spec.shards:
            for sample in iter_wds_samples(shard):
                if count == n:
                    break
                for ext, data in ((sample.image_ext, sample.image), ("cls", str(sample.label).encode())):
                    info = tarfile.TarInfo(f"{sample.key}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, BytesIO(data))
                count += 1
    (out / "test" / "nshards.txt").write_text("1\n")
    return dest, count


def _busy_cpu_s() -> float:
    """Busy CPU seconds of the whole machine so far (all processes, from /proc/stat; 0 where there is none)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0.0
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def run_traced(tool: str, args: list[str], env: dict, trace: Path) -> dict:
    """Launch one traced process; return its timings (seconds, images/s)."""
    trace.unlink(missing_ok=True)
    busy0, ru0 = _busy_cpu_s(), resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", RUNNER, tool, *args], env={**env, "BENCH_TRACE": str(trace)},
                          capture_output=True, text=True)
    wall = time.time() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)  # the tool and its worker processes
    foreign = max(0.0, _busy_cpu_s() - busy0 - own) / (wall * (os.cpu_count() or 1))
    if proc.returncode != 0:
        raise SystemExit(f"{tool} failed ({proc.returncode}): {' '.join(args)}\n{proc.stderr[-3000:]}")
    tr = json.loads(trace.read_text())
    b = tr["batches"]
    out = {"wall_s": wall, "images": sum(n for *_, n in b), "batches": len(b), "cpu_s": own, "foreign_cpu": foreign,
           "batch_s": [round(e - s, 3) for s, e, _ in b]}
    if b:
        n_after = sum(n for *_, n in b[1:])
        span = b[-1][1] - b[0][1]
        out.update(startup_s=b[0][0] - t0, first_batch_s=b[0][1] - b[0][0], steady_s=span,
                   steady_img_s=n_after / span if span > 0 else float("nan"), tail_s=tr["exit"] - b[-1][1],
                   forward_only_img_s=n_after / sum(e - s for s, e, _ in b[1:]) if len(b) > 1 else float("nan"))
    if "built" in tr["marks"]:  # bare: start-up = imports + model build; the untimed pre-decode apart
        out["startup_s"] = tr["marks"]["built"] - t0
        out["predecode_s"] = tr["marks"]["decoded"] - tr["marks"]["built"]
    return out


def run_mode(mode: str, n: int, args, work: Path, env: dict) -> dict:
    """Measure every tool of one mode (`args.repeats` alternating rounds); return the summary."""
    mdir = work / mode
    model_dir = mdir / "model"
    build_model(mode, model_dir)
    root, n = subset_root(args.data_root, n, mdir / "data")
    shard = root / "wds_cifar10" / "test" / "0.tar"
    full_root = str(Path(args.data_root).resolve()) if args.data_root else None
    bs = str(args.batch_size)
    fp32 = args.precision == "fp32"
    qclip_common = ["--model", f"local-dir:{model_dir}", "--no-cache", "--no-progress", "--precision",
                    args.precision, "--batch-size", bs, "--device", "cpu"]
    if args.workers is not None:
        qclip_common += ["--workers", str(args.workers)]
    if args.compile:
        qclip_common += ["--compile"]
    tools = {
        "clip_benchmark": ("clip_benchmark", [
            "eval", "--model", f"local-dir:{model_dir}", "--pretrained", "none", "--dataset", "wds/cifar10",
            "--dataset_root", f"{root}/wds_{{dataset}}", "--task", "zeroshot_classification", "--num_workers",
            str(args.cb_workers), "--batch_size", bs, "--output", str(mdir / "cb_{dataset}.json"),
            *(["--no_amp"] if fp32 else [])]),
        "qclip eval (acc)": ("qclip", ["eval", *qclip_common, "--dataset", "wds/cifar10", "--data-root", str(root),
                                       "--bootstrap", "0", "--out", str(mdir / "q_acc.json")]),
        "bare forward": ("bare", [str(model_dir), str(shard), str(n), bs]),
    }
    if mode == "micro" and full_root is not None:  # the OOD sets come from the real data root
        tools["qclip eval (full)"] = ("qclip", [
            "eval", *qclip_common, "--dataset", "wds/cifar10", "--data-root", full_root, "--limit", str(n), "--ood",
            "wds/imagenet_cifar10_ood", "--ood", "wds/fashion_mnist", "--corruptions",
            "gaussian_noise:3,defocus_blur:3", "--out", str(mdir / "q_full.json")])
    if args.tools:
        tools = {k: v for k, v in tools.items() if v[0] in args.tools.split(",")}
    runs: dict[str, list[dict]] = {k: [] for k in tools}
    for r in range(args.repeats):
        order = list(tools) if r % 2 == 0 else list(reversed(tools))
        for name in order:
            tool, targv = tools[name]
            runs[name].append(run_traced(tool, targv, env, mdir / "trace.json"))
            last = runs[name][-1]
            flag = "  DISTURBED: other processes used the CPUs" if last["foreign_cpu"] > DISTURBED else ""
            print(f"  [{mode} round {r + 1}] {name}: {last['wall_s']:.1f} s wall, other processes' CPU share "
                  f"{last['foreign_cpu']:.0%}{flag}", flush=True)
    med = {name: {k: statistics.median(x[k] for x in rs) for k in rs[0] if isinstance(rs[0][k], (int, float))}
           for name, rs in runs.items()}
    for name, rs in runs.items():
        med[name]["wall_all_s"] = [round(x["wall_s"], 2) for x in rs]
        med[name]["steady_img_s_all"] = [round(x.get("steady_img_s", float("nan")), 2) for x in rs]
        med[name]["batch_s_first_round"] = rs[0]["batch_s"]
    for name, file in (("clip_benchmark", "cb_cifar10.json"), ("qclip eval (acc)", "q_acc.json")):
        if name in med:
            med[name]["acc1"] = json.loads((mdir / file).read_text())["metrics"]["acc1"]
    out = {"images": n, "batch_size": args.batch_size, "tools": med, "ratios": {}, "targets": {}}
    if not {"clip_benchmark", "qclip eval (acc)", "bare forward"} <= med.keys():
        return out
    cb, q, bare = (med[k]["steady_img_s"] for k in ("clip_benchmark", "qclip eval (acc)", "bare forward"))
    ratios = {"qclip/clip_benchmark steady": q / cb, "qclip/bare steady": q / bare,
              "clip_benchmark/bare steady": cb / bare,
              "qclip/clip_benchmark wall": med["qclip eval (acc)"]["wall_s"] / med["clip_benchmark"]["wall_s"]}
    if "qclip eval (full)" in med:
        ratios["qclip full/clip_benchmark wall"] = med["qclip eval (full)"]["wall_s"] / med["clip_benchmark"]["wall_s"]
    if mode == "vit-b-32":
        targets = {"qclip >= 1.0x clip_benchmark steady": q / cb >= 1.0, "qclip >= 0.8x bare steady": q / bare >= 0.8}
    else:
        targets = {"qclip >= 1.5x clip_benchmark steady": q / cb >= 1.5}
    return {**out, "ratios": ratios, "targets": targets}


def print_mode(mode: str, res: dict) -> None:
    """The table of one mode."""
    print(f"\n== {mode}: {res['images']} images, batch {res['batch_size']} (median of rounds) ==")
    print(f"{'tool':20s} {'wall s':>8s} {'start-up s':>10s} {'1st batch s':>11s} {'steady img/s':>12s} "
          f"{'fwd-only img/s':>14s} {'tail s':>7s} {'other CPU':>9s}  acc1")
    for name, t in res["tools"].items():
        acc = f"{t['acc1']:.4f}" if "acc1" in t else ""
        if name == "qclip eval (full)":
            print(f"{name:20s} {t['wall_s']:8.2f}  (whole process, several datasets) {t['foreign_cpu']:9.0%}")
            continue
        extra = f"  (+{t['predecode_s']:.1f} s untimed pre-decode)" if "predecode_s" in t else ""
        print(f"{name:20s} {t['wall_s']:8.2f} {t['startup_s']:10.2f} {t['first_batch_s']:11.2f} "
              f"{t['steady_img_s']:12.1f} {t['forward_only_img_s']:14.1f} {t['tail_s']:7.2f} {t['foreign_cpu']:9.0%}  "
              f"{acc}{extra}")
    for k, v in res["ratios"].items():
        print(f"  {k:34s} {v:.2f}x")
    for k, ok in res["targets"].items():
        print(f"  target {k}: {'met' if ok else 'NOT met'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--mode", choices=["vit-b-32", "micro", "both"], default="both")
    ap.add_argument("--images", type=int, default=2000, help="first N CIFAR-10 test images (vit-b-32 mode)")
    ap.add_argument("--micro-images", type=int, default=10000, help="first N CIFAR-10 test images (micro mode)")
    ap.add_argument("--data-root", default=os.environ.get("QCLIP_DATA_ROOT"),
                    help="data root holding wds_cifar10/ (default: $QCLIP_DATA_ROOT)")
    ap.add_argument("--repeats", type=int, default=1, help="alternating rounds (median reported)")
    ap.add_argument("--batch-size", type=int, default=256, help="batch size of every tool")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "amp_bf16"],
                    help="fp32: qclip fp32, clip_benchmark --no_amp; amp_bf16: both under bfloat16 autocast")
    ap.add_argument("--workers", type=int, default=None, help="qclip --workers (default: qclip's default)")
    ap.add_argument("--cb-workers", type=int, default=1, help="clip_benchmark --num_workers (1: one shard)")
    ap.add_argument("--compile", action="store_true", help="pass --compile to qclip eval")
    ap.add_argument("--tools", default=None, help="comma list of the tools to run: clip_benchmark,qclip,bare "
                    "(default: all; ratios need all three)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    import torch

    work = Path(tempfile.mkdtemp(prefix="qclip-bench-"))
    env = {**os.environ, "QCLIP_CACHE_DIR": str(work / "cache"), "HF_HUB_OFFLINE": "1"}
    modes = ["vit-b-32", "micro"] if args.mode == "both" else [args.mode]
    results = {"settings": {k: v for k, v in vars(args).items() if k != "out"} | {
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "qclip_worker_niceness": os.environ.get("QCLIP_WORKER_NICENESS", "default")}, "modes": {}}
    for mode in modes:
        n = args.images if mode == "vit-b-32" else args.micro_images
        results["modes"][mode] = run_mode(mode, n, args, work, env)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, precision {args.precision}; steady = images "
          "after the first batch / their span; start-up = launch -> first forward (bare: imports + model build)")
    print("clip_benchmark's accuracy() is patched at run time for numpy 2 (see RUNNER)")
    for mode, res in results["modes"].items():
        print_mode(mode, res)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
        print(f"-> {args.out}")


if __name__ == "__main__":
    main()
