"""`qclip bench`: image-tower latency and throughput of FP32 eager / compiled, BF16 autocast, fake-quant and the
integer model (eager / compiled) side by side, written as bench.json + bench.md."""

from __future__ import annotations

import argparse

from .flags import check_outputs, non_negative_float, non_negative_int, one_line_errors, positive_int

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    """Register `qclip bench` and its flags."""
    b = one_line_errors(sub.add_parser("bench", help="image-tower latency/throughput of FP32, BF16, fake-quant and "
                                       "integer variants (random input images)"))
    b.add_argument("--model", required=True, help="open_clip architecture (no --pretrained: random init), demo, "
                   "local-dir:PATH, a checkpoint file, or an export folder (qclip export)")
    b.add_argument("--pretrained", default=None, help="pretrained tag or checkpoint path")
    b.add_argument("--quant", default=None, help="quantization spec of the fake-quant and integer variants, e.g. "
                   "w8a8 (calibrated on random images unless --dataset is given)")
    b.add_argument("--compile", action="store_true", help="also time torch.compile'd FP32 and integer towers "
                   "(Inductor with freezing; compile time reported apart)")
    b.add_argument("--batch", default="1,64", help="batch sizes, comma-separated (default 1,64: latency at 1, "
                   "throughput at 64)")
    b.add_argument("--device", default="cpu", help="cpu or cuda (integer variants run on the CPU only)")
    b.add_argument("--repeats", type=positive_int, default=5, help="timed repeats per variant (medians reported)")
    b.add_argument("--warmup", type=non_negative_int, default=2, help="untimed calls per variant and batch size")
    b.add_argument("--min-time", type=non_negative_float, default=0.2,
                   help="seconds each timed sample lasts at least (calls averaged)")
    b.add_argument("--dataset", default=None, metavar="wds/NAME", help="calibrate the fake-quant model on this "
                   "dataset instead of random images")
    b.add_argument("--calib-batches", type=positive_int, default=None, help="calibration batches")
    b.add_argument("--data-root", default=None)
    b.add_argument("--threads", type=positive_int, default=None, help="torch intra-op threads (default: torch's)")
    b.add_argument("--no-progress", action="store_true", help="hide progress bars")
    b.add_argument("--out", default=None, help="folder for bench.json and bench.md (default: print the table)")


def run(args: argparse.Namespace) -> int:
    """Benchmark and write the record; return the exit status."""
    import torch

    from qclip.experiments.bench import BenchConfig, bench_markdown, parse_batches, run_bench, write_bench

    from .flags import parse_quant

    qspec = parse_quant(args.quant)
    cfg = BenchConfig(model=args.model, pretrained=args.pretrained, quant=None if qspec is None else str(qspec),
                      compile=args.compile, batches=parse_batches(args.batch), device=args.device,
                      repeats=args.repeats, warmup=args.warmup, min_time=args.min_time, dataset=args.dataset,
                      calib_batches=args.calib_batches)  # validates (exit 2), an export folder with --quant too
    check_outputs(dirs={"--out": args.out})  # before any model is loaded
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model == "demo":
        from qclip.train.demo import ensure_demo_model

        ensure_demo_model(data_root=args.data_root, progress=not args.no_progress)
    record = run_bench(cfg, data_root=args.data_root, progress=not args.no_progress)
    if args.out:
        json_path, md_path = write_bench(record, args.out)
        print(f"bench of {args.model}: {len(record['variants'])} variants -> {json_path}, {md_path}")
    else:
        print(bench_markdown(record))
    return 0
