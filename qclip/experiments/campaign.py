"""What `qclip ablate` does with a validated grid, as library calls: plan it without running it (`dry_run`), run one
shard of it (`run_shard`), run all of it on Ray (`run_on_ray`), or merge the shards' stores into the report (`merge_shards`). Writes under `out`:
`plan.json` (dry run), the store and report (see `qclip.experiments.ablate`)."""

from __future__ import annotations

import json
import os

from qclip.io.paths import atomic_write_text, check_output_dir

from .grid import GridConfig

__all__ = ["dry_run", "run_shard", "run_on_ray", "merge_shards", "shard_line", "ray_line"]


def dry_run(cfg: GridConfig, out: str | None, *, shard: tuple[int, int] = (1, 1), data_root: str | None = None,
            config: str | None = None, use_cache: bool = True, as_json: bool = False) -> str:
    """The grid's plan as text (the table, or JSON with `as_json`), also written as `out/plan.json` when `out` is
    given; every dataset is resolved, no data read and no model loaded."""
    from .plan import format_plan, plan_grid, plan_json

    if out is not None:
        check_output_dir(out, "--out")
    plan = plan_grid(cfg, shard=shard, data_root=data_root, config=config, use_cache=use_cache)
    text = json.dumps(plan_json(plan), indent=1)
    if out is not None:
        atomic_write_text(os.path.join(out, "plan.json"), text + "\n")
    return text if as_json else format_plan(plan)


def merge_shards(cfg: GridConfig, out: str) -> tuple[int, str]:
    """Merge every shard's store under `out` and write the report (refused before writing when a cell is missing);
    return (cells merged, report path)."""
    from .ablate import merge_results, write_grid_report

    records, _ = merge_results(cfg, out, require_all=True)
    return len(records), write_grid_report(cfg, records, out)["report"]


def run_shard(cfg: GridConfig, out: str, *, shard: tuple[int, int] = (1, 1), data_root: str | None = None,
              progress: bool = True, wandb: bool = False, wandb_project: str = "qclip", **run_kw) -> dict:
    """Evaluate shard `shard` of the grid into `out` (see `run_grid`; `run_kw` go to it); a missing dataset folder
    stops the run before a model is loaded or the demo model trained."""
    from .ablate import run_grid
    from .demo import ensure_demo
    from .plan import check_datasets
    from .tracking import wandb_run

    check_datasets(cfg, data_root)
    ensure_demo((m["name"] for m in cfg.models), data_root, progress)
    config = {"grid": cfg.key(), "name": cfg.name, "shard": f"{shard[0]}/{shard[1]}"}
    with wandb_run(wandb, project=wandb_project, out=out, config=config, job_type="ablate") as run:
        return run_grid(cfg, out, shard=shard, data_root=data_root, progress=progress, wandb_run=run, **run_kw)


def run_on_ray(cfg: GridConfig, out: str, opts, *, data_root: str | None = None, progress: bool = True,
               wandb: bool = False, wandb_project: str = "qclip", **run_kw) -> dict:
    """Evaluate the grid into `out` on Ray actors (`opts`: a `RayOptions`; see `run_grid_ray`, `run_kw` go to it);
    checked as `run_shard` is before anything runs, the driver logging to wandb."""
    from .demo import ensure_demo
    from .distributed import run_grid_ray
    from .plan import check_datasets
    from .tracking import wandb_run

    check_datasets(cfg, data_root)
    ensure_demo((m["name"] for m in cfg.models), data_root, progress)
    config = {"grid": cfg.key(), "name": cfg.name, "ray": opts.address or "local"}
    with wandb_run(wandb, project=wandb_project, out=out, config=config, job_type="ablate") as run:
        return run_grid_ray(cfg, out, opts, data_root=data_root, progress=progress, wandb_run=run, **run_kw)


def ray_line(summary: dict) -> str:
    """The one-line outcome of a Ray run: cells evaluated, workers, skipped, retried, and the report."""
    line = (f"ray: {summary['evaluated']} cells evaluated on {summary['workers']} workers, {summary['skipped']} "
            f"already stored" + (f", {summary['retried']} retried" if summary["retried"] else ""))
    return line + (f" -> {summary['report']['report']}" if "report" in summary else "")


def shard_line(shard: tuple[int, int], summary: dict) -> str:
    """The one-line outcome of a shard: cells evaluated and skipped, and the report or what is still pending."""
    line = (f"shard {shard[0]}/{shard[1]}: {summary['evaluated']} cells evaluated, {summary['skipped']} already "
            f"stored")
    if "report" in summary:
        line += f" -> {summary['report']['report']}"
    elif summary["missing"]:
        line += f"; {len(summary['missing'])} cells of other shards pending (then: qclip ablate ... --merge)"
    return line
