"""Simulate a grid's makespan on N workers: `--ray`'s longest-first schedule against today's `--shard I/N` modulo split.

Usage:
    python benchmarks/schedule_sim.py --grid configs/paper_vitb32.yaml --grid configs/paper_imagenet.yaml \
        [--workers 8 64] [--rates projection.json] [--gpu-img-s 2000] [--out sim.json]

Costs: every cell's image forwards from the dry run (`qclip.experiments.plan`, counted with every set forwarded:
on a cluster no cell can count on another's cached features), priced with per-class rates — seconds per evaluated
image, per calibration image, and fixed seconds — as `benchmarks/grid_projection.py` measures them from a pilot
(`--rates`: its `--out` JSON; default: the rates it measured on the 2-core Xeon, README "Paper-scale projection").
The GPU column prices forwards at `--gpu-img-s` × the class's relative cost and keeps fixed costs (as the
projection does).

Longest-first (`qclip.experiments.schedule.longest_first`, the `--ray` driver's plan): each (model, seed) group's
FP cell leads; the group's other cells evaluate their variant at once and wait for it only for their fixed part
(paired tests, spectra), when its features reach them through the object store. Modulo: shard I runs cells I-1, I-1+N, ... and re-extracts the FP reference of each group whose FP cell is
in another shard (the dry run's "shared" rows), with no waiting. Longest-first is charged a group's set-up
(`switch`, about the FP cell's fixed seconds) on every worker new to a group; modulo is not (conservative for
longest-first). "plain LPT" is longest-first without groups, leads or set-up: with at most two cells a worker
(78 cells on 64 workers) it is the optimum for indivisible cells (Graham 1969). Lower bounds: total / N, and the bound with the
indivisible cells and the FP dependency (`lower_bound`). The dry run needs no data or weights.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from grid_projection import EVAL_ROLES, cell_class  # noqa: E402

from qclip.experiments.grid import expand_cells, load_grid  # noqa: E402
from qclip.experiments.plan import plan_grid  # noqa: E402
from qclip.experiments.schedule import longest_first, lower_bound, makespan  # noqa: E402

# Measured by benchmarks/grid_projection.py on the 2-core Xeon (README "Paper-scale projection"): s / evaluated
# image, s / calibration image, fixed s per cell.
README_RATES = {
    "fp": (0.085, 0.0, 113.0), "rtn": (0.123, 0.120, 16.0), "smoothquant": (0.121, 0.083, 1.0),
    "rotation": (0.173, 0.155, 7.0), "rank-match": (0.085, 0.0, 27.0), "rank": (0.085, 0.0, 12.0),
}


def load_rates(path: str | None) -> dict[str, tuple[float, float, float]]:
    """Per class (eval s/image, calibration s/image, fixed s): from grid_projection's JSON, else README_RATES."""
    if path is None:
        return README_RATES
    rates = json.loads(Path(path).read_text())["rates"]
    return {k: (r["eval_s_per_image"], r["calib_s_per_image"], r["fixed_s"]) for k, r in rates.items()}


def cost(row, cls: str, rates: dict, gpu_img_s: float | None) -> float:
    """Seconds of one plan row (a cell or a shared FP reference) of class `cls`."""
    eval_rate, calib_rate, fixed = rates[cls]
    evaluated, calib = row.role_images(*EVAL_ROLES), row.role_images("calibration")
    if gpu_img_s is None:
        return evaluated * eval_rate + calib * calib_rate + fixed
    return (evaluated + calib) / gpu_img_s * (eval_rate / rates["fp"][0]) + fixed


def simulate_grid(grid: str, workers: list[int], rates: dict, gpu_img_s: float | None) -> dict:
    """Makespans of longest-first and modulo for each worker count."""
    cfg = load_grid(grid)
    cells = expand_cells(cfg)
    rows = plan_grid(cfg, use_cache=False).cells
    costs = [cost(row, cell_class(cell), rates, gpu_img_s) for row, cell in zip(rows, cells)]
    # what waits for the group's FP reference on a Ray worker: the cell's fixed part (paired tests, spectra)
    tails = [rates[cell_class(cell)][2] for cell in cells]
    # a group's set-up on a worker new to it, charged in the simulation too: about the FP cell's fixed part (its
    # text classifiers; the model load and the reference transfer are smaller)
    switch = rates["fp"][2]
    groups = [(c.model, c.pretrained, c.seed) for c in cells]
    leads = [i for i, c in enumerate(cells) if c.kind == "fp"]
    total = sum(costs)
    out = {"grid": cfg.name, "cells": len(cells), "total_s": round(total, 1), "workers": {}}
    for n in workers:
        lf = makespan(longest_first(costs, groups, n, leads=leads, tails=tails, switch=switch), costs, groups, leads,
                      tails, switch)
        plain = makespan(longest_first(costs, list(range(len(costs))), n), costs, list(range(len(costs))))
        shard_times = []
        for i in range(1, n + 1):
            plan = plan_grid(cfg, shard=(i, n), use_cache=False)
            own = sum(costs[k] for k in range(i - 1, len(cells), n))
            shared = sum(cost(row, "fp", rates, gpu_img_s) for row in plan.shared)
            shard_times.append(own + shared)
        mod = max(shard_times)
        ideal, bound = total / n, lower_bound(costs, groups, n, leads, tails)
        out["workers"][n] = {"longest_first_s": round(lf, 1), "modulo_s": round(mod, 1),
                             "plain_lpt_no_dependencies_s": round(plain, 1),
                             "total_over_n_s": round(ideal, 1), "lower_bound_s": round(bound, 1),
                             "longest_first_vs_total_over_n": round(lf / ideal, 4),
                             "modulo_vs_total_over_n": round(mod / ideal, 4),
                             "longest_first_vs_bound": round(lf / bound, 4), "modulo_vs_bound": round(mod / bound, 4),
                             "modulo_fp_reextractions_s": round(sum(shard_times) - total, 1)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", action="append", required=True)
    ap.add_argument("--workers", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--rates", default=None, help="benchmarks/grid_projection.py --out JSON (default: README rates)")
    ap.add_argument("--gpu-img-s", type=float, default=2000.0, help="GPU column: FP32 image forwards per second")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rates = load_rates(args.rates)
    results = []
    for grid in args.grid:
        for label, gpu in (("CPU rates (measured here)", None), (f"GPU at {args.gpu_img_s:,.0f} img/s", args.gpu_img_s)):
            res = simulate_grid(grid, args.workers, rates, gpu)
            res["costs"] = label
            results.append(res)
            print(f"{res['grid']} ({res['cells']} cells, {label}): total {res['total_s'] / 3600:.1f} h")
            print(f"  {'N':>3s} {'total/N h':>10s} {'bound h':>8s} {'longest-first h':>16s} {'modulo h':>9s}")
            for n, r in res["workers"].items():
                print(f"  {n:3d} {r['total_over_n_s'] / 3600:10.2f} {r['lower_bound_s'] / 3600:8.2f} "
                      f"{r['longest_first_s'] / 3600:9.2f} ({r['longest_first_vs_total_over_n']:.3f}x)"
                      f" {r['modulo_s'] / 3600:9.2f} ({r['modulo_vs_total_over_n']:.3f}x)"
                      f"   vs bound: LF {r['longest_first_vs_bound']:.3f}x, modulo {r['modulo_vs_bound']:.3f}x;"
                      f" plain LPT {r['plain_lpt_no_dependencies_s'] / 3600:.2f} h")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
