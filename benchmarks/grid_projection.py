"""Project a grid's wall time from a pilot run of a few of its cells at small limits.

Usage:
    qclip ablate --config PILOT.yaml --out PILOT_OUT --limit 64 --ood-limit 64     # a few cells, small limits
    python benchmarks/grid_projection.py --grid configs/paper_vitb32.yaml --pilot-grid PILOT.yaml \
        --pilot-out PILOT_OUT --pilot-limit 64 --pilot-ood-limit 64 [--gpu-img-s 2000] [--out projection.json]

How: `qclip ablate --dry-run`'s plan gives every cell's image forward passes (evaluation sets and calibration),
for the pilot at its limits and for the target grid. Each pilot record's timings (build / eval / spectral) give,
per cell class (fp, rtn, smoothquant, rotation, rank-match, rank; the pilot must hold each class the target uses):
seconds per evaluated image (eval ÷ evaluated images; for the FP cell, whose eval also builds every dataset's text
classifier, the rank cell's rate with the rest of its eval counted as fixed), seconds per calibration image (build ÷ calibration
images, quantized classes) and the fixed seconds (spectral analysis; the build of truncation classes, i.e. their
SVDs, counted once per class because the grid reuses each FP weight's SVD). The target's cells are then costed
with their own counts. The GPU column keeps every fixed cost as measured here (conservative: SVDs and spectra
also run faster on a GPU) and replaces the forward cost by `images / --gpu-img-s × (the class's forward cost
relative to FP, as measured here)`. Assumptions, stated in the output: bit width and scope do not change a
class's per-image cost (text-tower passes are not counted), and the GPU sustains `--gpu-img-s` FP32 image
forwards with data loading keeping up.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from qclip.experiments.ablate import load_records
from qclip.experiments.grid import expand_cells, load_grid
from qclip.experiments.plan import plan_grid

EVAL_ROLES = ("id", "corruption", "ood", "shift", "spurious")


def cell_class(cell) -> str:
    """A cell's cost class: its kind, and for quantization its method."""
    if cell.kind == "quant":
        return cell.method or "rtn"
    return cell.kind


def pilot_rates(pilot_grid: str, pilot_out: str, limit: int | None, ood_limit: int | None) -> dict[str, dict]:
    """Per class: seconds per evaluated image, per calibration image, and fixed seconds, from the pilot's records."""
    cfg = load_grid(pilot_grid, limit=limit, ood_limit=ood_limit)
    plan = {row.id: row for row in plan_grid(cfg).cells}
    records = load_records(pilot_out)
    by_id = {rec["cell"]["id"]: rec for rec in records.values()}
    rates: dict[str, dict] = {}
    for cell in expand_cells(cfg):
        rec, row = by_id.get(cell.id), plan[cell.id]
        if rec is None:
            continue
        t = rec["timings"]
        evaluated, calib = row.role_images(*EVAL_ROLES), row.role_images("calibration")
        cls = cell_class(cell)
        rates[cls] = {"eval_s_per_image": t["eval"] / evaluated,
                      "calib_s_per_image": t["build"] / calib if calib else 0.0,
                      "fixed_s": t["spectral"] + (0.0 if calib else t["build"]),
                      "pilot_cell": cell.id, "pilot_seconds": rec["seconds"], "pilot_eval_s": t["eval"]}
    if "fp" not in rates or "rank" not in rates:
        raise SystemExit("the pilot needs its FP cell and a rank-truncation cell")
    # the FP cell's eval also builds every dataset's text classifier (later cells find them cached): its per-image
    # rate is a plain float model's, the rank cell's (text classifiers cached), and the rest of its eval is fixed
    fp, ref = rates["fp"], rates["rank"]["eval_s_per_image"]
    evaluated = fp["pilot_eval_s"] / fp["eval_s_per_image"]
    fp["fixed_s"] += fp["pilot_eval_s"] - evaluated * ref
    fp["eval_s_per_image"] = ref
    return rates


def project(grid: str, rates: dict[str, dict], gpu_img_s: float) -> dict:
    """The target grid's cells costed with the pilot's rates: CPU (this machine) and GPU seconds per cell."""
    cfg = load_grid(grid)
    fp_rate = rates["fp"]["eval_s_per_image"]
    rows, totals = [], defaultdict(float)
    for row, cell in zip(plan_grid(cfg).cells, expand_cells(cfg)):
        cls = cell_class(cell)
        if cls not in rates:
            raise SystemExit(f"the pilot has no {cls} cell (needed for {cell.id})")
        r = rates[cls]
        evaluated, calib = row.role_images(*EVAL_ROLES), row.role_images("calibration")
        fixed = r["fixed_s"]  # as in the pilot: an overestimate for truncations after a model's first (SVD reused)
        cpu = evaluated * r["eval_s_per_image"] + calib * r["calib_s_per_image"] + fixed
        relative = r["eval_s_per_image"] / fp_rate
        gpu = (evaluated + calib) / gpu_img_s * relative + fixed
        rows.append({"cell": cell.id, "class": cls, "evaluated_images": evaluated, "calibration_images": calib,
                     "cpu_s": round(cpu, 1), "gpu_s": round(gpu, 1)})
        totals["cpu_s"] += cpu
        totals["gpu_s"] += gpu
        totals["images"] += evaluated + calib
    return {"grid": cfg.name, "cells": len(rows), "gpu_img_s": gpu_img_s, "rates": rates, "rows": rows,
            "total": {k: round(v, 1) for k, v in totals.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", required=True, help="the grid to project (e.g. configs/paper_vitb32.yaml)")
    ap.add_argument("--pilot-grid", required=True)
    ap.add_argument("--pilot-out", required=True)
    ap.add_argument("--pilot-limit", type=int, default=None)
    ap.add_argument("--pilot-ood-limit", type=int, default=None)
    ap.add_argument("--gpu-img-s", type=float, default=2000.0,
                    help="assumed sustained FP32 image forwards per second on the GPU (default 2000)")
    ap.add_argument("--out", default=None, help="write the projection as JSON here")
    args = ap.parse_args()
    rates = pilot_rates(args.pilot_grid, args.pilot_out, args.pilot_limit, args.pilot_ood_limit)
    result = project(args.grid, rates, args.gpu_img_s)
    print("pilot rates (this machine), per class: s/evaluated image, s/calibration image, fixed s")
    for cls, r in rates.items():
        print(f"  {cls:12s} {r['eval_s_per_image']:.4f}  {r['calib_s_per_image']:.4f}  {r['fixed_s']:7.1f}"
              f"   (from {r['pilot_cell']}, {r['pilot_seconds']:.0f} s)")
    by_class: dict[str, list] = defaultdict(list)
    for row in result["rows"]:
        by_class[row["class"]].append(row)
    print(f"\n{result['grid']}: {result['cells']} cells, {result['total']['images']:,.0f} image forwards")
    print(f"  {'class':12s} {'cells':>5s} {'CPU h (here)':>13s} {'GPU h':>8s}")
    for cls, rows in by_class.items():
        print(f"  {cls:12s} {len(rows):5d} {sum(r['cpu_s'] for r in rows) / 3600:13.1f} "
              f"{sum(r['gpu_s'] for r in rows) / 3600:8.2f}")
    print(f"  {'total':12s} {result['cells']:5d} {result['total']['cpu_s'] / 3600:13.1f} "
          f"{result['total']['gpu_s'] / 3600:8.2f}   (GPU at {args.gpu_img_s:,.0f} FP32 img/s, fixed costs as here)")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
