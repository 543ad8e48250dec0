"""`qclip eval`: the one-pass reliability suite on one model (and its quantized variant), written as JSON."""

from __future__ import annotations

import argparse

from .flags import add_data_root, add_model_args, add_no_cache, add_runtime_args, given, one_line_errors
from .values import device_of, non_negative_int, parse_corruption_list, parse_pair, parse_quant, positive_int, seed

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    """Register `qclip eval` and its flags."""
    ev = one_line_errors(sub.add_parser("eval", help="zero-shot evaluation of a model on a dataset, written as JSON"))
    add_model_args(ev, model_help="open_clip architecture, demo, local-dir:PATH, hf-hub:ORG/NAME or a checkpoint file",
                   quant_help="quantization or truncation spec applied before evaluation, e.g. w8a8, w4a8-rot, "
                   "w6a8-smoothquant-vt, w6a8-lsq, w4, rank-e0.9 (see README: Quantization)")
    ev.add_argument("--calib-batches", type=positive_int, default=None,
                    help="calibration batches of 64 images (default: the spec's, 8)")
    ev.add_argument("--dataset", required=True, help="wds/NAME under the data root, or imagefolder:PATH")
    ev.add_argument("--split", default=None, help="dataset split")
    add_data_root(ev)
    ev.add_argument("--limit", type=positive_int, default=None, help="evaluate the first N ID samples only")
    ev.add_argument("--ood", action="append", default=[], metavar="wds/NAME", help="OOD dataset (repeatable)")
    ev.add_argument("--shift", action="append", default=[], metavar="wds/NAME",
                    help="covariate-shift dataset scored with the ID classifier, classes matched by name (repeatable)")
    ev.add_argument("--corruptions", default=None, metavar="NAME:SEV,...",
                    help="corruptions of the ID set, e.g. gaussian_noise:3,defocus_blur:3 (NAME alone = severities 1-5)")
    ev.add_argument("--spurious", default=None, metavar="COMMON,COUNTER",
                    help="two datasets (common / counter groups) for RSG, ΔRSG and Vuln_add")
    ev.add_argument("--ood-limit", type=positive_int, default=None, help="first N samples of each OOD/shift set")
    ev.add_argument("--seed", type=seed, default=None, help="seed of splits, corruptions and bootstrap")
    ev.add_argument("--bootstrap", type=non_negative_int, default=None, help="bootstrap resamples for the intervals "
                    "(0: off)")
    ev.add_argument("--store", default=None, help="also append the record to this JSONL results store (skip if "
                    "the same config is already there)")
    add_no_cache(ev)
    ev.add_argument("--out", required=True, help="JSON file to write")
    add_runtime_args(ev, compile=True)


def run(args: argparse.Namespace) -> int:
    """Evaluate, write the record to --out (and --store); return the exit status."""
    from qclip.evals.suite import SuiteConfig
    from qclip.experiments.evaluate import run_eval

    qspec = parse_quant(args.quant)
    cfg = SuiteConfig(model=args.model, dataset=args.dataset, pretrained=args.pretrained,
                      quant=None if qspec is None else str(qspec), ood=args.ood, shift=args.shift,
                      corruptions=parse_corruption_list(args.corruptions), spurious=parse_pair(args.spurious),
                      limit=args.limit, ood_limit=args.ood_limit, calib_batches=args.calib_batches,
                      **given(args, "split", "seed", "bootstrap", "precision"))
    record, from_store = run_eval(cfg, args.out, store=args.store, data_root=args.data_root,
                                  device=device_of(args.device), compile=args.compile, progress=not args.no_progress,
                                  use_cache=not args.no_cache, **given(args, "batch_size", num_workers="workers"))
    if from_store:
        print(f"already in {args.store} (hash {cfg.hash}): copied to {args.out}")
        return 0
    m = record["metrics"]
    print(f"{args.model}{'' if qspec is None else ' ' + str(qspec)} on {args.dataset} (n={record['n']}): "
          f"acc1={m['acc1']:.4f} acc5={m['acc5']:.4f} ece={m['ece']:.4f} -> {args.out}")
    return 0
