"""`qclip ablate`: an ablation grid, resumable, shardable or on Ray, with its report."""

from __future__ import annotations

import argparse

from .flags import add_data_root, add_no_cache, add_runtime_args, add_wandb_args, given, one_line_errors
from .values import check_outputs, device_of, non_negative_float, positive_int

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
    ab.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS", help="evaluate on Ray "
                    "actors, the driver alone writing the store (needs qclip[ray]): no ADDRESS starts a local Ray "
                    "instance on this machine; 'auto' or ray://HOST:PORT joins a cluster")
    ab.add_argument("--gpus-per-worker", type=non_negative_float, default=None, help="with --ray: GPUs per actor "
                    "(default: 1 when the cluster has GPUs, else 0; fractions share a GPU)")
    ab.add_argument("--cpus-per-worker", type=non_negative_float, default=None, help="with --ray: CPUs per actor "
                    "(default: 1 with GPUs, else 2: one CPU worker per 2 cores)")
    ab.add_argument("--merge", action="store_true", help="evaluate nothing: merge the shard stores and write the "
                    "report (every cell must be stored)")
    ab.add_argument("--limit", type=positive_int, default=None, help="override the grid's ID sample limit")
    ab.add_argument("--ood-limit", type=positive_int, default=None, help="override the grid's OOD/shift limit")
    add_data_root(ab)
    add_wandb_args(ab, "log every cell to wandb (offline unless configured)")
    add_no_cache(ab)
    add_runtime_args(ab, precision=False, batch_size_help="override the grid's batch size")
    ab.add_argument("--image-cache-mb", type=non_negative_float, default=None, help="memory for decoded images "
                    "reused across cells (stored as uint8; a dataset that does not fit is decoded again "
                    "per cell; 0: off)")


def run(args: argparse.Namespace) -> int:
    """Evaluate this shard of the grid (or merge the stored shards) and write the report, or with --dry-run print
    its plan; return the exit status."""
    from qclip.experiments.campaign import dry_run, merge_shards, run_shard, shard_line
    from qclip.experiments.grid import grid_data_root, load_grid, parse_shard
    from qclip.io.errors import ConfigError

    cfg = load_grid(args.config, limit=args.limit, ood_limit=args.ood_limit)  # validated before anything heavy loads
    shard = parse_shard(args.shard)
    data_root = grid_data_root(cfg, args.data_root)
    if args.dry_run:
        if args.merge:
            raise ConfigError("ablate: --dry-run and --merge cannot be combined")
        print(dry_run(cfg, args.out, shard=shard, data_root=data_root, config=args.config,
                      use_cache=not args.no_cache, as_json=args.json))
        return 0
    if args.json:
        raise ConfigError("ablate: --json only applies to --dry-run")
    if args.out is None:
        raise ConfigError("ablate: --out is required (only --dry-run runs without it)")
    ray_opts = _ray_options(args, shard)
    check_outputs(dirs={"--out": args.out})  # before any model or data is loaded
    if args.merge:
        cells, report = merge_shards(cfg, args.out)
        print(f"merged {cells} cells -> {report}")
        return 0
    kw = dict(data_root=data_root, progress=not args.no_progress, wandb=args.wandb, wandb_project=args.wandb_project,
              batch_size=args.batch_size, use_cache=not args.no_cache,
              **given(args, num_workers="workers", image_cache_mb="image_cache_mb"))
    if ray_opts is not None:
        from qclip.experiments.campaign import ray_line, run_on_ray

        print(ray_line(run_on_ray(cfg, args.out, ray_opts, device=args.device, **kw)))
        return 0
    summary = run_shard(cfg, args.out, shard=shard, device=device_of(args.device), **kw)
    print(shard_line(shard, summary))
    return 0


def _ray_options(args: argparse.Namespace, shard: tuple[int, int]):
    """The Ray options of `--ray` (None without it), checked before anything loads; Ray is imported here only."""
    from qclip.io.errors import ConfigError

    if args.ray is None:
        if args.gpus_per_worker is not None or args.cpus_per_worker is not None:
            raise ConfigError("ablate: --gpus-per-worker / --cpus-per-worker need --ray")
        return None
    if shard != (1, 1) or args.merge:
        raise ConfigError("ablate: --ray runs the whole grid; it cannot be combined with --shard or --merge")
    from qclip.experiments.distributed import RayOptions, import_ray

    import_ray()  # a missing extra is one line, before the grid's datasets are checked
    return RayOptions(address=None if args.ray == "local" else args.ray, gpus_per_worker=args.gpus_per_worker,
                      cpus_per_worker=args.cpus_per_worker)
