"""`qclip bench`: image-tower latency and throughput of FP32 eager / compiled, BF16 autocast, fake-quant and the
integer model (eager / compiled) side by side, written as bench.json + bench.md."""

from __future__ import annotations

import argparse

from .flags import add_data_root, add_model_args, add_progress, given, one_line_errors
from .values import check_outputs, non_negative_float, non_negative_int, parse_quant, positive_int

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    """Register `qclip bench` and its flags."""
    b = one_line_errors(sub.add_parser("bench", help="image-tower latency/throughput of FP32, BF16, fake-quant and "
                                       "integer variants (random input images)"))
    add_model_args(b, model_help="open_clip architecture (no --pretrained: random init), demo, local-dir:PATH, a "
                   "checkpoint file, or an export folder (qclip export)", pretrained_help="pretrained tag or checkpoint "
                   "path", quant_help="quantization spec of the fake-quant and integer variants, e.g. w8a8 (calibrated "
                   "on random images unless --dataset is given)")
    b.add_argument("--compile", action="store_true", help="also time torch.compile'd FP32 and integer towers "
                   "(Inductor with freezing; compile time reported apart)")
    b.add_argument("--batch", default=None, help="batch sizes, comma-separated (default 1,64: latency at 1, "
                   "throughput at 64)")
    b.add_argument("--device", default=None, help="cpu or cuda (integer variants run on the CPU only)")
    b.add_argument("--repeats", type=positive_int, default=None, help="timed repeats per variant (medians reported)")
    b.add_argument("--warmup", type=non_negative_int, default=None, help="untimed calls per variant and batch size")
    b.add_argument("--min-time", type=non_negative_float, default=None,
                   help="seconds each timed sample lasts at least (calls averaged)")
    b.add_argument("--dataset", default=None, metavar="wds/NAME", help="calibrate the fake-quant model on this "
                   "dataset instead of random images")
    b.add_argument("--calib-batches", type=positive_int, default=None, help="calibration batches")
    add_data_root(b)
    b.add_argument("--threads", type=positive_int, default=None, help="torch intra-op threads (default: torch's)")
    add_progress(b)
    b.add_argument("--out", default=None, help="folder for bench.json and bench.md (default: print the table)")


def run(args: argparse.Namespace) -> int:
    """Benchmark and write the record; return the exit status."""
    import torch

    from qclip.experiments.bench import BenchConfig, bench_markdown, run_bench, write_bench
    from qclip.experiments.demo import ensure_demo

    qspec = parse_quant(args.quant)
    cfg = BenchConfig(model=args.model, pretrained=args.pretrained, quant=None if qspec is None else str(qspec),
                      compile=args.compile, dataset=args.dataset, calib_batches=args.calib_batches,
                      **given(args, "device", "repeats", "warmup", "min_time", batches="batch"))  # validates (exit 2)
    check_outputs(dirs={"--out": args.out})  # before any model is loaded
    if args.threads:
        torch.set_num_threads(args.threads)
    ensure_demo(args.model, args.data_root, not args.no_progress)
    record = run_bench(cfg, data_root=args.data_root, progress=not args.no_progress)
    if args.out:
        json_path, md_path = write_bench(record, args.out)
        print(f"bench of {args.model}: {len(record['variants'])} variants -> {json_path}, {md_path}")
    else:
        print(bench_markdown(record))
    return 0
