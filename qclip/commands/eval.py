"""`qclip eval`: the one-pass reliability suite on one model (and its quantized variant), written as JSON."""

from __future__ import annotations

import argparse

from .flags import (
    add_runtime_args,
    check_outputs,
    device_of,
    non_negative_int,
    one_line_errors,
    parse_pair,
    parse_quant,
    positive_int,
)

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    """Register `qclip eval` and its flags."""
    ev = one_line_errors(sub.add_parser("eval", help="zero-shot evaluation of a model on a dataset, written as JSON"))
    ev.add_argument("--model", required=True, help="open_clip architecture, demo, local-dir:PATH, hf-hub:ORG/NAME "
                    "or a checkpoint file")
    ev.add_argument("--pretrained", default=None, help="pretrained tag (e.g. openai) or checkpoint path")
    ev.add_argument("--quant", default=None, help="quantization or truncation spec applied before evaluation, e.g. "
                    "w8a8, w4a8-rot, w6a8-smoothquant-vt, w6a8-lsq, w4, rank-e0.9 (see README: Quantization)")
    ev.add_argument("--calib-batches", type=positive_int, default=None,
                    help="calibration batches of 64 images (default: the spec's, 8)")
    ev.add_argument("--dataset", required=True, help="wds/NAME under the data root, or imagefolder:PATH")
    ev.add_argument("--split", default="test")
    ev.add_argument("--data-root", default=None, help="folder (or URL) holding wds_NAME/ folders; default "
                    "$QCLIP_DATA_ROOT, else the user cache (registered datasets are built there on first use, see "
                    "docs/data.md)")
    ev.add_argument("--limit", type=positive_int, default=None, help="evaluate the first N ID samples only")
    ev.add_argument("--ood", action="append", default=[], metavar="wds/NAME", help="OOD dataset (repeatable)")
    ev.add_argument("--shift", action="append", default=[], metavar="wds/NAME",
                    help="covariate-shift dataset scored with the ID classifier, classes matched by name (repeatable)")
    ev.add_argument("--corruptions", default=None, metavar="NAME:SEV,...",
                    help="corruptions of the ID set, e.g. gaussian_noise:3,defocus_blur:3 (NAME alone = severities 1-5)")
    ev.add_argument("--spurious", default=None, metavar="COMMON,COUNTER",
                    help="two datasets (common / counter groups) for RSG, ΔRSG and Vuln_add")
    ev.add_argument("--ood-limit", type=positive_int, default=None, help="first N samples of each OOD/shift set")
    ev.add_argument("--seed", type=non_negative_int, default=0, help="seed of splits, corruptions and bootstrap")
    ev.add_argument("--bootstrap", type=non_negative_int, default=200, help="bootstrap resamples for the intervals (0: off)")
    ev.add_argument("--store", default=None, help="also append the record to this JSONL results store (skip if "
                    "the same config is already there)")
    ev.add_argument("--no-cache", action="store_true", help="recompute text classifiers and features")
    ev.add_argument("--out", required=True, help="JSON file to write")
    add_runtime_args(ev, compile=True)


def run(args: argparse.Namespace) -> int:
    """Evaluate, write the record to --out (and --store); return the exit status."""
    import os

    from qclip.evals.suite import ReliabilitySuite, SuiteConfig
    from qclip.io.errors import QclipInputError
    from qclip.io.results import versions, write_json
    from qclip.io.store import ResultsStore

    qspec = parse_quant(args.quant)
    corruptions = []
    if args.corruptions is not None:
        from qclip.evals.corruptions import parse_corruptions

        try:
            corruptions = parse_corruptions(args.corruptions)
        except ValueError as exc:
            raise QclipInputError(f"bad --corruptions: {exc}") from None
        if not corruptions:
            raise QclipInputError(f"bad --corruptions {args.corruptions!r}: it names no corruption (e.g. "
                                  "gaussian_noise:3,defocus_blur)")
    cfg = SuiteConfig(model=args.model, dataset=args.dataset, pretrained=args.pretrained,
                      quant=None if qspec is None else str(qspec), split=args.split, ood=args.ood,
                      corruptions=corruptions, shift=args.shift, spurious=parse_pair(args.spurious),
                      limit=args.limit, ood_limit=args.ood_limit, seed=args.seed, bootstrap=args.bootstrap,
                      calib_batches=args.calib_batches, precision=args.precision)
    if qspec is not None:
        from qclip.io.models import export_dir_of

        if export_dir_of(args.model) is not None:
            raise QclipInputError(f"--model {args.model} is an export folder (already quantized): drop --quant, or "
                                  "evaluate its source model with --quant")
    check_outputs(files={"--out": args.out, "--store": args.store})  # before any model or data is loaded
    if args.store and os.path.abspath(args.store) == os.path.abspath(args.out):
        raise QclipInputError(f"--store {args.store} and --out are the same file: give them different paths")
    store = ResultsStore(args.store) if args.store else None
    if store is not None and (done := store.get(cfg.hash)) is not None:
        write_json(args.out, done)
        print(f"already in {args.store} (hash {cfg.hash}): copied to {args.out}")
        return 0
    device = device_of(args.device)
    suite = ReliabilitySuite(cfg, data_root=args.data_root, device=device, batch_size=args.batch_size,
                             num_workers=args.workers, progress=not args.no_progress, use_cache=not args.no_cache)
    if args.compile:
        _compile_variants(suite)
    if args.model == "demo":
        from qclip.train.demo import ensure_demo_model

        ensure_demo_model(data_root=args.data_root, progress=not args.no_progress)
    record = suite.run()
    record["versions"] = versions()
    write_json(args.out, record)
    if store is not None:
        store.append(record)
    m = record["metrics"]
    print(f"{args.model}{'' if qspec is None else ' ' + str(qspec)} on {args.dataset} (n={record['n']}): "
          f"acc1={m['acc1']:.4f} acc5={m['acc5']:.4f} ece={m['ece']:.4f} -> {args.out}")
    return 0


def _compile_variants(suite) -> None:
    """Make `suite` compile the image tower of every model it evaluates (after quantizing: the quantized copy is
    made from the eager model)."""
    from qclip.evals.variants import compile_image_tower_

    load, quantized = suite.load, suite.quantized

    def compiled_load():
        fp = load()
        return fp if suite.cfg.quant else compile_image_tower_(fp)

    def compiled_quantized(fp):
        q, report = quantized(fp)
        compile_image_tower_(fp)
        return compile_image_tower_(q), report

    suite.load, suite.quantized = compiled_load, compiled_quantized
