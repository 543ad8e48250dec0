"""`qclip` command line: argument parsing and dispatch only (every command is a library call)."""

from __future__ import annotations

import argparse
import logging
import sys
import traceback

__all__ = ["main", "build_parser"]

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT = 0, 1, 2


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("qclip")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The `qclip` argument parser with one sub-parser per command."""
    parser = argparse.ArgumentParser(prog="qclip", description="Spectral analysis and reliability evaluation of "
                                     "quantized CLIP models.")
    parser.add_argument("--version", action="version", version=f"qclip {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("fit", help="QAT fine-tuning with the spectral regularizer (a LightningCLI: qclip fit --help)")

    ev = sub.add_parser("eval", help="zero-shot evaluation of a model on a dataset, written as JSON")
    ev.add_argument("--model", required=True, help="open_clip architecture, demo, local-dir:PATH, hf-hub:ORG/NAME "
                    "or a checkpoint file")
    ev.add_argument("--pretrained", default=None, help="pretrained tag (e.g. openai) or checkpoint path")
    ev.add_argument("--quant", default=None, help="quantization or truncation spec applied before evaluation, e.g. "
                    "w8a8, w4a8-rot, w6a8-smoothquant-vt, w6a8-lsq, w4, rank-e0.9 (see quant.spec)")
    ev.add_argument("--calib-batches", type=_positive_int, default=None,
                    help="calibration batches of 64 images (default: the spec's, 8)")
    ev.add_argument("--dataset", required=True, help="wds/NAME under the data root, or imagefolder:PATH")
    ev.add_argument("--split", default="test")
    ev.add_argument("--data-root", default=None, help="folder (or URL) holding wds_NAME/ folders; default "
                    "$QCLIP_DATA_ROOT, else the public CLIP_benchmark location")
    ev.add_argument("--limit", type=_positive_int, default=None, help="evaluate the first N ID samples only")
    ev.add_argument("--ood", action="append", default=[], metavar="wds/NAME", help="OOD dataset (repeatable)")
    ev.add_argument("--shift", action="append", default=[], metavar="wds/NAME",
                    help="covariate-shift dataset scored with the ID classifier, classes matched by name (repeatable)")
    ev.add_argument("--corruptions", default=None, metavar="NAME:SEV,...",
                    help="corruptions of the ID set, e.g. gaussian_noise:3,defocus_blur:3 (NAME alone = severities 1-5)")
    ev.add_argument("--spurious", default=None, metavar="COMMON,COUNTER",
                    help="two datasets (common / counter groups) for RSG, ΔRSG and Vuln_add")
    ev.add_argument("--ood-limit", type=_positive_int, default=None, help="first N samples of each OOD/shift set")
    ev.add_argument("--seed", type=int, default=0, help="seed of splits, corruptions and bootstrap")
    ev.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for the intervals (0: off)")
    ev.add_argument("--store", default=None, help="also append the record to this JSONL results store (skip if "
                    "the same config is already there)")
    ev.add_argument("--no-cache", action="store_true", help="recompute text classifiers and features")
    ev.add_argument("--out", required=True, help="JSON file to write")
    _add_runtime_args(ev)

    sp = sub.add_parser("spectrum", help="weight and feature spectra of a model and its quantized variant")
    sp.add_argument("--model", required=True)
    sp.add_argument("--pretrained", default=None)
    sp.add_argument("--quant", default=None, help="quantization spec to compare against FP (e.g. w4a8)")
    sp.add_argument("--truncate", default=None, help="rank-truncation spec as a control (e.g. rank-e0.9)")
    sp.add_argument("--features", default=None, metavar="wds/NAME",
                    help="dataset for the feature analyses (per-rank SQNR, rank-band accuracy)")
    sp.add_argument("--limit", type=_positive_int, default=2000, help="images for the feature analyses")
    sp.add_argument("--bands", default="0-8,8-64,64-", help="rank bands, e.g. 0-8,8-64,64-")
    sp.add_argument("--svd", default="svd", choices=["svd", "gram"], help="singular values by batched SVD or "
                    "Gram eigenvalues (faster, less accurate below ~3e-4·σ_max in float32)")
    sp.add_argument("--frequency-images", type=int, default=512, help="images for the 2D-FFT and band-limited "
                    "perturbation analyses (0: skip)")
    sp.add_argument("--data-root", default=None)
    sp.add_argument("--wandb", action="store_true", help="log tables and plots to wandb (offline unless configured)")
    sp.add_argument("--wandb-project", default="qclip")
    sp.add_argument("--no-cache", action="store_true")
    sp.add_argument("--out", required=True, help="output folder")
    _add_runtime_args(sp)

    ab = sub.add_parser("ablate", help="the ablation grid (quant methods x bits x scopes, rank truncation) through "
                        "the reliability suite and spectra, resumable and shardable, with a report")
    ab.add_argument("--config", required=True, help="grid YAML (see configs/demo.yaml)")
    ab.add_argument("--out", required=True, help="output folder: store/ (JSONL per shard), results.jsonl, "
                    "results.csv, report.md, plots/")
    ab.add_argument("--shard", default=None, metavar="I/N", help="evaluate shard I of N (1-based) of the grid; "
                    "N processes or machines can share one --out folder")
    ab.add_argument("--merge", action="store_true", help="evaluate nothing: merge the shard stores and write the "
                    "report (every cell must be stored)")
    ab.add_argument("--limit", type=_positive_int, default=None, help="override the grid's ID sample limit")
    ab.add_argument("--ood-limit", type=_positive_int, default=None, help="override the grid's OOD/shift limit")
    ab.add_argument("--data-root", default=None)
    ab.add_argument("--wandb", action="store_true", help="log every cell to wandb (offline unless configured)")
    ab.add_argument("--wandb-project", default="qclip")
    ab.add_argument("--no-cache", action="store_true", help="recompute text classifiers and features")
    ab.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    ab.add_argument("--batch-size", type=_positive_int, default=None, help="override the grid's batch size")
    ab.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    ab.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    ab.add_argument("--image-cache-mb", type=float, default=2048.0, help="memory for decoded images reused across "
                    "cells (stored as uint8; a dataset that does not fit is decoded again per cell; 0: off)")

    pd = sub.add_parser("pretrain-demo", help="pretrain the demo CLIP on CIFAR-10 (cached for --model demo)")
    pd.add_argument("--epochs", type=_positive_int, default=None, help="training epochs (default 3)")
    pd.add_argument("--out", default=None, help="folder to write (default: the demo cache dir)")
    pd.add_argument("--seed", type=int, default=0)
    pd.add_argument("--data-root", default=None)
    pd.add_argument("--no-progress", action="store_true")
    _add_data_parser(sub)
    return parser


def _add_data_parser(sub) -> None:
    """`qclip data list | fetch NAME... | verify [NAME...]`: the dataset registry (see docs/data.md)."""
    da = sub.add_parser("data", help="registered datasets: list them, fetch (download + build) them, verify a "
                        "data root")
    dsub = da.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    dl = dsub.add_parser("list", help="registered datasets, their sources and whether the data root holds them")
    dl.add_argument("--data-root", default=None, help="folder to look in (default $QCLIP_DATA_ROOT, else the cache)")
    df = dsub.add_parser("fetch", help="download the pinned sources of datasets and build them (wds layout)")
    df.add_argument("names", nargs="+", metavar="NAME", help="registered dataset (cifar10, wds/pacs_sketch, ...) "
                    "or 'all'")
    df.add_argument("--data-root", default=None, help="folder to build wds_NAME/ in (default $QCLIP_DATA_ROOT, "
                    "else the user cache)")
    df.add_argument("--no-progress", action="store_true", help="hide progress bars and messages")
    dv = dsub.add_parser("verify", help="re-hash datasets under a data root against the registry")
    dv.add_argument("names", nargs="*", metavar="NAME", help="datasets to check (default: every registered one "
                    "present)")
    dv.add_argument("--data-root", default=None, help="folder holding wds_NAME/ (default $QCLIP_DATA_ROOT, else "
                    "the cache)")
    dv.add_argument("--strict", action="store_true", help="fail on any byte difference, also for re-encoded shards")


def _add_runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "amp_bf16", "fp16", "bf16", "pure_fp16", "pure_bf16"],
                   help="weights/compute precision; amp_bf16 = float32 weights, image tower under bfloat16 autocast")
    p.add_argument("--batch-size", type=_positive_int, default=256)
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _device(name: str | None) -> str:
    import torch

    return name or ("cuda" if torch.cuda.is_available() else "cpu")


def _parse_quant(text: str | None):
    from .evals.variants import parse_quant_arg

    return None if text is None else parse_quant_arg(text)


def _parse_pair(text: str | None) -> tuple[str, str] | None:
    from .io.errors import QclipInputError

    if text is None:
        return None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if len(parts) != 2:
        raise QclipInputError(f"--spurious needs two datasets COMMON,COUNTER, got {text!r}")
    return parts[0], parts[1]


def _cmd_eval(args: argparse.Namespace) -> int:
    from .io.errors import QclipInputError
    from .io.results import versions, write_json
    from .io.store import ResultsStore
    from .evals.suite import ReliabilitySuite, SuiteConfig

    qspec = _parse_quant(args.quant)
    corruptions = []
    if args.corruptions:
        from .evals.corruptions import parse_corruptions

        try:
            corruptions = parse_corruptions(args.corruptions)
        except ValueError as exc:
            raise QclipInputError(f"bad --corruptions: {exc}") from None
    cfg = SuiteConfig(model=args.model, dataset=args.dataset, pretrained=args.pretrained,
                      quant=None if qspec is None else str(qspec), split=args.split, ood=args.ood,
                      corruptions=corruptions, shift=args.shift, spurious=_parse_pair(args.spurious),
                      limit=args.limit, ood_limit=args.ood_limit, seed=args.seed, bootstrap=args.bootstrap,
                      calib_batches=args.calib_batches, precision=args.precision)
    store = ResultsStore(args.store) if args.store else None
    if store is not None and (done := store.get(cfg.hash)) is not None:
        write_json(args.out, done)
        print(f"already in {args.store} (hash {cfg.hash}): copied to {args.out}")
        return EXIT_OK
    device = _device(args.device)
    suite = ReliabilitySuite(cfg, data_root=args.data_root, device=device, batch_size=args.batch_size,
                             num_workers=args.workers, progress=not args.no_progress, use_cache=not args.no_cache)
    if args.model == "demo":
        from .train.demo import ensure_demo_model

        ensure_demo_model(data_root=args.data_root, progress=not args.no_progress)
    record = suite.run()
    record["versions"] = versions()
    write_json(args.out, record)
    if store is not None:
        store.append(record)
    m = record["metrics"]
    print(f"{args.model}{'' if qspec is None else ' ' + str(qspec)} on {args.dataset} (n={record['n']}): "
          f"acc1={m['acc1']:.4f} acc5={m['acc5']:.4f} ece={m['ece']:.4f} -> {args.out}")
    return EXIT_OK


def _cmd_pretrain_demo(args: argparse.Namespace) -> int:
    from .train.demo import DemoRecipe, pretrain_demo

    recipe = DemoRecipe(seed=args.seed) if args.epochs is None else DemoRecipe(epochs=args.epochs, seed=args.seed)
    meta = pretrain_demo(args.out, recipe, data_root=args.data_root, progress=not args.no_progress)
    print(f"demo model: {meta['steps']} steps in {meta['train_seconds']:.0f}s, zero-shot CIFAR-10 test acc1="
          f"{meta.get('test_acc1', float('nan')):.4f}")
    return EXIT_OK


def _cmd_spectrum(args: argparse.Namespace) -> int:
    import os

    from .experiments.spectrum import SpectrumConfig, run_spectrum

    cfg = SpectrumConfig(model=args.model, pretrained=args.pretrained, quant=args.quant, features=args.features,
                         limit=args.limit, bands=args.bands, truncate=args.truncate, svd=args.svd,
                         precision=args.precision, frequency_images=args.frequency_images)  # validates (exit 2)
    if args.model == "demo":
        from .train.demo import ensure_demo_model

        ensure_demo_model(data_root=args.data_root, progress=not args.no_progress)
    run = None
    if args.wandb:
        import wandb

        run = wandb.init(project=args.wandb_project, mode=os.environ.get("WANDB_MODE", "offline"), dir=args.out,
                         config=vars(args), job_type="spectrum")
    try:
        summary = run_spectrum(cfg, args.out, data_root=args.data_root, device=_device(args.device),
                               progress=not args.no_progress, use_cache=not args.no_cache, wandb_run=run)
    finally:
        if run is not None:
            run.finish()
    line = f"spectrum of {args.model}: {summary['layers']} linear maps"
    if "sqnr_spearman_rho" in summary:
        line += f", per-rank SQNR Spearman rho = {summary['sqnr_spearman_rho']:.3f}"
    print(f"{line} -> {args.out}")
    return EXIT_OK


def _cmd_ablate(args: argparse.Namespace) -> int:
    import os

    from .experiments.ablate import merge_results, run_grid, write_grid_report
    from .io.errors import QclipInputError
    from .experiments.grid import grid_data_root, load_grid, parse_shard

    cfg = load_grid(args.config, limit=args.limit, ood_limit=args.ood_limit)
    shard = parse_shard(args.shard)
    data_root = grid_data_root(cfg, args.data_root)
    if args.merge:
        records, missing = merge_results(cfg, args.out)
        if missing:
            raise QclipInputError(f"{len(missing)} of {len(records) + len(missing)} cells are not stored yet "
                                  f"(first: {missing[0].id}); run the remaining shards first")
        summary = write_grid_report(cfg, records, args.out)
        print(f"merged {len(records)} cells -> {summary['report']}")
        return EXIT_OK
    if any(m["name"] == "demo" for m in cfg.models):
        from .train.demo import ensure_demo_model

        ensure_demo_model(data_root=data_root, progress=not args.no_progress)
    run = None
    if args.wandb:
        import wandb

        run = wandb.init(project=args.wandb_project, mode=os.environ.get("WANDB_MODE", "offline"), dir=args.out,
                         config={"grid": cfg.key(), "name": cfg.name, "shard": args.shard}, job_type="ablate")
    try:
        summary = run_grid(cfg, args.out, shard=shard, data_root=data_root, device=_device(args.device),
                           batch_size=args.batch_size, num_workers=args.workers, progress=not args.no_progress,
                           use_cache=not args.no_cache, wandb_run=run, image_cache_mb=args.image_cache_mb)
    finally:
        if run is not None:
            run.finish()
    line = (f"shard {shard[0]}/{shard[1]}: {summary['evaluated']} cells evaluated, {summary['skipped']} already "
            f"stored")
    if "report" in summary:
        line += f" -> {summary['report']['report']}"
    elif summary["missing"]:
        line += f"; {len(summary['missing'])} cells of other shards pending (then: qclip ablate ... --merge)"
    print(line)
    return EXIT_OK


def _cmd_data(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .io import registry
    from .io.errors import DataError

    root = Path(args.data_root) if args.data_root else registry.default_fetch_root()
    if args.data_command == "list":
        reg = registry.load_registry()
        print(f"{'name':26s} {'samples':>16s} {'MB':>6s}  {'source':48s} in {root}")
        for name in registry.dataset_names():
            entry = reg["datasets"][name]
            src = reg["sources"][next(iter(entry["sources"].values()))]
            samples = "+".join(str(n) for n in entry["samples"].values())
            print(f"{name:26s} {samples:>16s} {entry['bytes'] / 1e6:6.1f}  {src['repo'] + '@' + src['commit'][:8]:48s} "
                  f"{'yes' if (root / f'wds_{name}').is_dir() else '-'}")
        return EXIT_OK
    if args.data_command == "fetch":
        names = registry.dataset_names() if "all" in args.names else [registry.get_entry(n)["name"] for n in args.names]
        log = None if args.no_progress else (lambda msg: print(f"qclip: {msg}", file=sys.stderr))
        for name in names:
            path, result = registry.fetch_dataset(name, root, progress=not args.no_progress, log=log)
            if result is None:
                print(f"wds/{name}: already in {path} (check it with: qclip data verify --data-root {root} {name})")
                continue
            counts = ", ".join(f"{split} {n}" for split, n in result.samples.items())
            note = (f"; {len(result.reencoded)} re-encoded shard(s) differ in bytes from the registry (other Pillow/"
                    "libjpeg/zlib), content checked" if result.reencoded else "; every file matches the registry")
            print(f"wds/{name}: built {path} ({counts} samples{note})")
        return EXIT_OK
    names = None if not args.names or "all" in args.names else args.names
    results = registry.verify_root(root, names, strict=args.strict)
    for result in results:
        print(result.line())
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "re-encoded", "absent", "FAILED")}
    print(f"{root}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    failed = [r for r in results if not r.passed]
    if failed:
        raise DataError(f"verify: {len(failed)} dataset(s) failed, first: {failed[0].name}: {failed[0].detail}")
    if not any(r.status != "absent" for r in results):
        raise DataError(f"verify: no registered dataset under {root}")
    return EXIT_OK


_COMMANDS = {"ablate": _cmd_ablate, "eval": _cmd_eval, "spectrum": _cmd_spectrum, "pretrain-demo": _cmd_pretrain_demo,
             "data": _cmd_data}


def _run_fit(argv: list[str]) -> int:
    _configure_logging()
    from .io.errors import QclipInputError, one_line

    try:
        from .train.cli import run_fit

        run_fit(argv)
    except SystemExit as exc:  # jsonargparse exits 2 on a bad config, 0 on --help
        return int(exc.code or 0)
    except QclipInputError as exc:  # bad values the module / datamodule constructors or the loaders refused
        print(f"qclip: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("qclip: interrupted", file=sys.stderr)
        return 130
    except Exception:  # a bug, not bad input: the traceback is for a bug report
        traceback.print_exc()
        print("qclip: internal error (see the traceback above)", file=sys.stderr)
        return EXIT_INTERNAL
    return EXIT_OK


def _configure_logging() -> None:
    """Warnings of qclip's packages to stderr; Lightning's start-up banners and tips silenced."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("qclip: %(levelname)s: %(message)s"))
    for name in ("qclip",):
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(handler)
            logger.setLevel(logging.WARNING)
            logger.propagate = False
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    """Run `qclip` with `argv` (default: sys.argv[1:]); return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "fit":  # a LightningCLI owns its own arguments
        return _run_fit(argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 on --help
        return int(exc.code or 0)
    _configure_logging()
    from .io.errors import QclipInputError, one_line

    try:
        return _COMMANDS[args.command](args)
    except QclipInputError as exc:
        print(f"qclip: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("qclip: interrupted", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print("qclip: internal error (see the traceback above)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
