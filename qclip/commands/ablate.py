"""`qclip ablate`: an ablation grid, resumable and shardable, with its report."""

from __future__ import annotations

import argparse
import os

from .flags import check_outputs, device_of, non_negative_float, non_negative_int, one_line_errors, positive_int

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    """Register `qclip ablate` and its flags."""
    ab = one_line_errors(sub.add_parser("ablate", help="the ablation grid (quant methods x bits x scopes, rank "
                                        "truncation) through the reliability suite and spectra, resumable and "
                                        "shardable, with a report"))
    ab.add_argument("--config", required=True, help="grid YAML (see configs/demo.yaml)")
    ab.add_argument("--out", default=None, help="output folder: store/ (JSONL per shard), results.jsonl, "
                    "results.csv, report.md, plots/ (with --dry-run: plan.json); required unless --dry-run")
    ab.add_argument("--dry-run", action="store_true", help="evaluate nothing: validate the grid, resolve every "
                    "dataset without reading data or loading a model, and print each cell's image forward passes")
    ab.add_argument("--json", action="store_true", help="with --dry-run: print the plan as JSON instead of the table")
    ab.add_argument("--shard", default=None, metavar="I/N", help="evaluate shard I of N (1-based) of the grid; "
                    "N processes or machines can share one --out folder")
    ab.add_argument("--merge", action="store_true", help="evaluate nothing: merge the shard stores and write the "
                    "report (every cell must be stored)")
    ab.add_argument("--limit", type=positive_int, default=None, help="override the grid's ID sample limit")
    ab.add_argument("--ood-limit", type=positive_int, default=None, help="override the grid's OOD/shift limit")
    ab.add_argument("--data-root", default=None)
    ab.add_argument("--wandb", action="store_true", help="log every cell to wandb (offline unless configured)")
    ab.add_argument("--wandb-project", default="qclip")
    ab.add_argument("--no-cache", action="store_true", help="recompute text classifiers and features")
    ab.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    ab.add_argument("--batch-size", type=positive_int, default=None, help="override the grid's batch size")
    ab.add_argument("--workers", type=non_negative_int, default=2, help="DataLoader worker processes")
    ab.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    ab.add_argument("--image-cache-mb", type=non_negative_float, default=2048.0, help="memory for decoded images reused across "
                    "cells (stored as uint8; a dataset that does not fit is decoded again per cell; 0: off)")


def run(args: argparse.Namespace) -> int:
    """Evaluate this shard of the grid (or merge the stored shards) and write the report, or with --dry-run print
    its plan; return the exit status."""
    from qclip.experiments.grid import grid_data_root, load_grid, parse_shard
    from qclip.io.errors import ConfigError

    cfg = load_grid(args.config, limit=args.limit, ood_limit=args.ood_limit)  # validated before anything heavy loads
    shard = parse_shard(args.shard)
    if args.dry_run:
        return _dry_run(args, cfg, shard)
    if args.json:
        raise ConfigError("ablate: --json only applies to --dry-run")
    if args.out is None:
        raise ConfigError("ablate: --out is required (only --dry-run runs without it)")
    check_outputs(dirs={"--out": args.out})  # before any model or data is loaded

    from qclip.experiments.ablate import merge_results, run_grid, write_grid_report

    data_root = grid_data_root(cfg, args.data_root)
    if args.merge:
        records, _ = merge_results(cfg, args.out, require_all=True)  # refuses before writing when cells are missing
        summary = write_grid_report(cfg, records, args.out)
        print(f"merged {len(records)} cells -> {summary['report']}")
        return 0
    from qclip.experiments.plan import check_datasets

    check_datasets(cfg, data_root)  # a missing folder stops the run here, before a model is loaded or trained
    if any(m["name"] == "demo" for m in cfg.models):
        from qclip.train.demo import ensure_demo_model

        ensure_demo_model(data_root=data_root, progress=not args.no_progress)
    run = None
    if args.wandb:
        import wandb

        os.makedirs(args.out, exist_ok=True)

        run = wandb.init(project=args.wandb_project, mode=os.environ.get("WANDB_MODE", "offline"), dir=args.out,
                         config={"grid": cfg.key(), "name": cfg.name, "shard": args.shard}, job_type="ablate")
    try:
        summary = run_grid(cfg, args.out, shard=shard, data_root=data_root, device=device_of(args.device),
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
    return 0


def _dry_run(args: argparse.Namespace, cfg, shard: tuple[int, int]) -> int:
    """Print the grid's plan (table, or JSON with --json) and write `plan.json` under --out when given."""
    import json

    from qclip.experiments.grid import grid_data_root
    from qclip.experiments.plan import format_plan, plan_grid, plan_json
    from qclip.io.errors import ConfigError
    from qclip.io.paths import atomic_write_text

    if args.merge:
        raise ConfigError("ablate: --dry-run and --merge cannot be combined")
    if args.out is not None:
        check_outputs(dirs={"--out": args.out})
    plan = plan_grid(cfg, shard=shard, data_root=grid_data_root(cfg, args.data_root), config=args.config,
                     use_cache=not args.no_cache)
    text = json.dumps(plan_json(plan), indent=1)
    if args.out is not None:
        atomic_write_text(os.path.join(args.out, "plan.json"), text + "\n")
    print(text if args.json else format_plan(plan))
    return 0
