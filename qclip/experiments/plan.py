"""The plan of an ablation grid (`qclip ablate --dry-run`): every dataset name resolved without reading data or
loading a model, and the image forward passes a real run makes per cell, counted the way `qclip.experiments.ablate`
spends them.

How a real run forwards images (with an empty feature cache): one `ReliabilitySuite` per (model, seed) extracts the
features of each (model variant, dataset, limit, corruption) once; the FP reference's features are extracted for the
seed's FP cell and reused by every other cell of that seed. The seed keys only corrupted features (it seeds the
corruption noise): with the feature cache on, a variant's later seeds read its clean-set features from the cache and
forward their corrupted copies (and calibration) only; with `--no-cache` every seed forwards every set again (the
variants are the same for every seed: calibration takes the first ID images). A variant forwards the ID test set (`limit`), one
corrupted copy of it per corruption, each OOD / shift / spurious set (`ood_limit`; a set named twice with the same
limit is forwarded once), and, when its spec calibrates, `calib_batches` x 64 images of the ID set's train split
(its test split when it has none) per calibration pass: one for activation quantization and one more for
SmoothQuant's statistics when its scope holds LayerNorm->linear blocks. Weight-only specs, rank truncation and
matched truncation calibrate nothing. A fit cell (QAT trained in the grid) also forwards its training: `steps` x
`batch_size` training images (twice with a distillation teacher) and the training images that initialise its
quantizers; a fit is trained once and cached, so a rerun forwards none of that, and each seed trains its own (its
clean sets are not shared across seeds). Text-tower passes are not counted.

Dataset names resolve as `qclip.io.data.resolve_dataset` does, without touching shards: a registered `wds/NAME`
(sizes from the registry), another `wds/NAME` under the data root or at the public CLIP_benchmark location (sizes
from `qclip/io/registry/clip_benchmark.json` for the well-known sets, else unknown), `imagefolder:PATH` (image files
counted from the listing). A dry run reports what a real run would stop on (`DatasetPlan.problem`) instead of
failing; `check_datasets` turns the first such problem into the error a real run raises before loading a model.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, replace
from functools import lru_cache

from qclip.io.errors import DataError
from qclip.io.locate import DatasetPlan, plan_dataset, root_description

from .grid import Cell, GridConfig, expand_cells, fit_of, shard_cells, spec_string

__all__ = ["Forwards", "CellPlan", "GridPlan", "plan_datasets", "check_datasets", "eval_forwards", "calibration_forwards",
           "training_forwards", "plan_grid", "format_plan", "plan_json"]

ROLES = ("id", "ood", "shift", "spurious")


@dataclass(frozen=True)
class Forwards:
    """Image forward passes over one set for one cell; `images` None when the set's size is unknown and unbounded."""

    role: str  # id | corruption | ood | shift | spurious | calibration | training
    dataset: str
    images: int | None
    exact: bool  # False: an upper bound (a limit on a set of unknown size) or unknown
    detail: str = ""


@dataclass(frozen=True)
class CellPlan:
    """The forward passes of one cell (or of an FP reference a shard re-extracts for its cells)."""

    id: str
    model: str
    spec: str
    seed: int
    kind: str
    forwards: tuple[Forwards, ...]
    note: str = ""

    @property
    def images(self) -> int:
        """Sum of the known counts."""
        return sum(f.images or 0 for f in self.forwards)

    @property
    def exact(self) -> bool:
        """True when every count is exact."""
        return all(f.exact for f in self.forwards)

    @property
    def unknown(self) -> int:
        """Number of sets whose size is unknown and not bounded by a limit."""
        return sum(f.images is None for f in self.forwards)

    def role_images(self, *roles: str) -> int:
        """Sum of the known counts of some roles."""
        return sum(f.images or 0 for f in self.forwards if f.role in roles)


@dataclass(frozen=True)
class GridPlan:
    """A grid's dry run: its datasets, this shard's cells with their forward passes, and the FP references the
    shard re-extracts because their cells belong to other shards."""

    name: str
    config: str | None
    shard: tuple[int, int]
    data_root: str
    datasets: tuple[DatasetPlan, ...]
    cells: tuple[CellPlan, ...]
    shared: tuple[CellPlan, ...]
    grid_cells: int
    variants: int

    @property
    def rows(self) -> tuple[CellPlan, ...]:
        """Every row that forwards images: the cells, then the shared FP references."""
        return self.cells + self.shared

    @property
    def total(self) -> int:
        """Sum of the known counts of every row."""
        return sum(r.images for r in self.rows)

    @property
    def exact(self) -> bool:
        """True when every count is exact."""
        return all(r.exact for r in self.rows)

    @property
    def unknown(self) -> int:
        """Number of (row, set) counts that are unknown."""
        return sum(r.unknown for r in self.rows)


# ------------------------------------------------------------------------------------------------- datasets
def _roles(cfg: GridConfig) -> dict[str, list[str]]:
    """Every dataset name of the grid with its roles, in grid order."""
    named = {"id": [cfg.dataset], "ood": cfg.ood, "shift": cfg.shift, "spurious": list(cfg.spurious or [])}
    roles: dict[str, list[str]] = {}
    for role in ROLES:
        for name in named[role]:
            if role not in roles.setdefault(name, []):
                roles[name].append(role)
    return roles


def plan_datasets(cfg: GridConfig, data_root: str | None = None) -> tuple[DatasetPlan, ...]:
    """Every dataset of the grid resolved (see `plan_dataset`), with its roles."""
    return tuple(replace(plan_dataset(name, data_root), roles=tuple(roles))
                 for name, roles in _roles(cfg).items())


def check_datasets(cfg: GridConfig, data_root: str | None = None) -> None:
    """Raise the first problem a real run would stop on (a missing folder, a set offline mode cannot build) as a
    `DataError`, before any model is loaded."""
    for plan in plan_datasets(cfg, data_root):
        if plan.problem:
            raise DataError(plan.problem)


# ------------------------------------------------------------------------------------------------- forwards
def _limited(dataset: DatasetPlan, limit: int | None, split: str = "test") -> tuple[int | None, bool]:
    """Images a loader yields from a set with a sample limit: (count, exact)."""
    size = dataset.size(split)
    if size is None:
        return limit, False
    return (size if limit is None else min(size, limit)), True


def eval_forwards(cfg: GridConfig, datasets: dict[str, DatasetPlan]) -> tuple[Forwards, ...]:
    """The forward passes of evaluating one model variant on every set of the grid (one per suite memo key)."""
    out: list[Forwards] = []
    seen: set[tuple] = set()

    def add(role: str, name: str, limit: int | None, corruption: str | None = None) -> None:
        key = (name, limit, corruption)
        if key in seen:  # the suite's memo: a set named twice with the same limit is forwarded once
            return
        seen.add(key)
        images, exact = _limited(datasets[name], limit)
        out.append(Forwards(role, name, images, exact, corruption or ""))

    add("id", cfg.dataset, cfg.limit)
    for corruption in dict.fromkeys(cfg.corruptions):
        add("corruption", cfg.dataset, cfg.limit, corruption)
    for role, names in (("ood", cfg.ood), ("shift", cfg.shift), ("spurious", cfg.spurious or [])):
        for name in names:
            add(role, name, cfg.ood_limit)
    return tuple(out)


@lru_cache(maxsize=None)
def _calib_batch_size() -> int:
    """The batch size `quantize_loaded` calibrates with (`make_calibrator`'s default)."""
    from qclip.evals.variants import make_calibrator

    return int(inspect.signature(make_calibrator).parameters["batch_size"].default)


@lru_cache(maxsize=None)
def _smooths_image_tower(model: str) -> bool:
    """Whether SmoothQuant finds LayerNorm->linear blocks in the image tower (open_clip's own ViT), read from the
    architecture's JSON config; True when the config cannot be read without loading the model."""
    import open_clip

    from qclip.io.demo import demo_model_config, register_model_configs

    register_model_configs()
    cfg = demo_model_config() if model == "demo" else open_clip.get_model_config(model)
    if not cfg:
        return True
    vision = cfg.get("vision_cfg", {})
    return isinstance(vision.get("layers"), int) and not vision.get("timm_model_name")


def _calibration_passes(spec_text: str, model: str) -> int:
    """Calibration passes `quantize_` runs for a spec: activation observers, plus SmoothQuant's statistics."""
    from qclip.quant.spec import parse_spec

    spec = parse_spec(spec_text)
    if spec.kind not in ("quant", "mixed"):
        return 0
    passes = int(spec.a_bits is not None)
    if spec.method == "smoothquant" and (spec.scope == "vision+text" or _smooths_image_tower(model)):
        passes += 1
    return passes


def calibration_forwards(cfg: GridConfig, cell: Cell, id_set: DatasetPlan) -> Forwards | None:
    """The calibration images a cell's variant forwards (None for FP, rank truncation, matched truncation and
    weight-only specs)."""
    if cell.kind not in ("quant", "qat", "fit"):
        return None
    from qclip.quant.spec import parse_spec

    if cell.kind == "fit":
        text = fit_of(cfg, cell)[0].spec
    else:
        text = spec_string(cell) if cell.kind == "quant" else next(q.spec for q in cfg.qat
                                                                   if f"qat:{q.name}" == cell.variant)
    passes = _calibration_passes(text, cell.model)
    if not passes:
        return None
    per_pass = (cfg.calib_batches or parse_spec(text).calib_batches) * _calib_batch_size()
    split = "train" if id_set.size("train") is not None else "test"
    images, exact = _limited(id_set, per_pass, split)
    detail = f"{passes} pass{'es' if passes > 1 else ''} x {images:,} ({split})"
    return Forwards("calibration", id_set.name, images * passes, exact, detail)


def training_forwards(cfg: GridConfig, cell: Cell, id_set: DatasetPlan) -> Forwards | None:
    """The training images a fit cell forwards when its fit is not cached: `steps` x `batch_size` pairs (the
    frozen teacher forwards them again with distillation), the images that initialise its quantizers, and one
    batch after training (the penalty's target on the training batch)."""
    if cell.kind != "fit":
        return None
    from .fits import calib_pairs

    entry, _ = fit_of(cfg, cell)
    passes = 2 if entry.distill_weight > 0 else 1
    steps = (entry.steps * passes + 1) * entry.batch_size
    split = "train" if id_set.size("train") is not None else "test"
    init, exact = _limited(id_set, calib_pairs(cfg, entry), split)
    detail = (f"{entry.steps} steps x {entry.batch_size}" + (" x 2 (teacher)" if passes > 1 else "")
              + f" + {init:,} quantizer init ({split}) + 1 batch target")
    return Forwards("training", id_set.name, steps + init, exact, detail)


def _model_name(cell: Cell) -> str:
    return cell.model if cell.pretrained is None else f"{cell.model}:{cell.pretrained}"


def _cell_plan(cfg: GridConfig, cell: Cell, evals: tuple[Forwards, ...], id_set: DatasetPlan) -> CellPlan:
    extra = (calibration_forwards(cfg, cell, id_set), training_forwards(cfg, cell, id_set))
    forwards = evals + tuple(f for f in extra if f is not None)
    note = {"fp": "FP reference: its features serve every cell of this seed",
            "int": "integer kernels on the CPU; reuses its quant cell's calibrated model when that cell ran just "
                   "before it in the same process (else calibrates again)",
            "fit": "trained once and cached; a λ > 0 fit pairs with its λ = 0 fit of the same seed (kept from "
                   "the cell before it, else read from the fit cache and calibrated again)"}.get(cell.kind, "")
    return CellPlan(cell.id, _model_name(cell), cell.variant, cell.seed, cell.kind, forwards, note)


def _shared_fp(cells: list[Cell], all_cells: list[Cell], evals: tuple[Forwards, ...],
               shard: tuple[int, int]) -> tuple[CellPlan, ...]:
    """FP references a shard's process extracts for its cells although their FP cell is in another shard."""
    here = {c.id for c in cells}
    groups = dict.fromkeys((c.model, c.pretrained, c.seed) for c in cells)
    out = []
    for position, cell in enumerate(all_cells):
        if cell.kind == "fp" and (cell.model, cell.pretrained, cell.seed) in groups and cell.id not in here:
            owner = position % shard[1] + 1
            out.append(CellPlan(f"{cell.id} (shared)", _model_name(cell), "fp", cell.seed, "fp-reference", evals,
                                f"FP cell is in shard {owner}/{shard[1]}: re-extracted here unless the feature "
                                "cache already holds it"))
    return tuple(out)


def _reuse_clean_features(rows, first: dict[tuple, int]) -> list[CellPlan]:
    """Later seeds of a variant read its clean-set features from the cache an earlier seed filled (the seed only
    draws corruption noise): they forward their corrupted copies and calibration only. `first` maps (model,
    variant) to the first seed that forwards it, and is filled as rows are seen."""
    out = []
    for row in rows:
        variant = (row.model, row.spec)
        if row.kind != "fit" and first.setdefault(variant, row.seed) < row.seed:  # each seed trains its own fit
            kept = tuple(f for f in row.forwards if f.role in ("corruption", "calibration"))
            note = f"clean sets: the cached features of seed {first[variant]}"
            row = replace(row, forwards=kept, note=f"{row.note}; {note}" if row.note else note)
        out.append(row)
    return out


def plan_grid(cfg: GridConfig, *, shard: tuple[int, int] = (1, 1), data_root: str | None = None,
              config: str | None = None, use_cache: bool = True) -> GridPlan:
    """The dry run of a grid shard: datasets resolved, cells expanded with their forward passes (`use_cache`: the
    run keeps the feature cache, so later seeds reuse clean-set features). Reads no data and loads no model."""
    datasets = plan_datasets(cfg, data_root)
    by_name = {d.name: d for d in datasets}
    all_cells = expand_cells(cfg)
    cells = shard_cells(all_cells, *shard)
    evals = eval_forwards(cfg, by_name)
    rows = [_cell_plan(cfg, c, evals, by_name[cfg.dataset]) for c in cells]
    shared = _shared_fp(cells, all_cells, evals, shard)
    if use_cache:
        first: dict[tuple, int] = {}
        rows, shared = _reuse_clean_features(rows, first), _reuse_clean_features(shared, first)
    return GridPlan(cfg.name, config, shard, root_description(data_root), datasets, tuple(rows), tuple(shared),
                    len(all_cells), len({(c.model, c.pretrained, c.variant) for c in cells}))


# ------------------------------------------------------------------------------------------------- output
def _count(images: int, exact: bool, unknown: int = 0) -> str:
    """`12,345`, `<=12,345` (an upper bound) or `12,345+?` (sets of unknown size)."""
    text = f"{images:,}"
    if unknown:
        return text + "+?"
    return text if exact else f"<={text}"


def _sum(forwards: list[Forwards]) -> str:
    return _count(sum(f.images or 0 for f in forwards), all(f.exact for f in forwards),
                  sum(f.images is None for f in forwards))


def _dataset_lines(plan: GridPlan) -> list[str]:
    lines = [f"datasets (data root: {plan.data_root}):"]
    width = max(len(d.name) for d in plan.datasets)
    roles = max(len("/".join(d.roles)) for d in plan.datasets)
    for d in plan.datasets:
        sizes = ", ".join(f"{split} {n:,}" for split, n in sorted(d.samples.items(), reverse=True)) or "size unknown"
        source = f" [{d.size_source}]" if d.size_source else ""
        lines.append(f"  {d.name:<{width}}  {'/'.join(d.roles):<{roles}}  {sizes}{source}")
        lines.append(f"  {'':<{width}}  {'':<{roles}}  {d.location}: {d.status}")
    return lines


_NOTES = ("counted for an empty feature cache; image-tower passes only (text prompts are not counted)",
          "FP features serve every variant of their seed; later seeds forward corrupted copies (the seed draws their "
          "noise) and calibration only, reading clean-set features from the cache (--no-cache: every set again)",
          "calib: calib_batches x 64 ID images per calibration pass (activation observers; SmoothQuant adds one)",
          "train: a fit cell's training (steps x batch_size, plus its quantizer init), none once the fit is cached",
          "'<=': a limit on a set of unknown size; '+?': a set of unknown size and no limit")


def format_plan(plan: GridPlan) -> str:
    """The dry run as a table: datasets, one row per cell with its forward passes, the total."""
    i, n = plan.shard
    head = (f"qclip ablate --dry-run: grid {plan.name!r}" + (f" ({plan.config})" if plan.config else "")
            + (f", shard {i}/{n}: {len(plan.cells)} of {plan.grid_cells} cells" if n > 1
               else f": {len(plan.cells)} cells"))
    lines = [head, "", *_dataset_lines(plan), ""]
    header = ("cell", "model", "spec", "seed", "ID", "corrupted", "OOD/shift", "calib", "train", "total")
    table = [header]
    for row in plan.rows:
        parts = [[f for f in row.forwards if f.role == r] for r in ("id", "corruption")]
        parts.append([f for f in row.forwards if f.role in ("ood", "shift", "spurious")])
        parts.append([f for f in row.forwards if f.role == "calibration"])
        parts.append([f for f in row.forwards if f.role == "training"])
        table.append((row.id, row.model, row.spec, str(row.seed), *(_sum(p) if p else "-" for p in parts),
                      _count(row.images, row.exact, row.unknown)))
    widths = [max(len(r[k]) for r in table) for k in range(len(header))]
    for r in table:
        lines.append("  " + "  ".join(v.ljust(w) if k < 3 else v.rjust(w) for k, (v, w) in enumerate(zip(r, widths))))
    lines.append("")
    lines.append(f"total: {_count(plan.total, plan.exact, plan.unknown)} image forward passes over "
                 f"{len(plan.cells)} cells" + (f" and {len(plan.shared)} shared FP reference(s)" if plan.shared else "")
                 + f"; {plan.variants} distinct (model, spec) variants")
    lines += [f"  {row.id}: {row.note}" for row in plan.shared]
    lines += [f"note: {note}" for note in _NOTES]
    problems = [d.name for d in plan.datasets if d.problem]
    if problems:
        lines.append(f"a real run would stop on {len(problems)} dataset(s) (status above): {', '.join(problems)}")
    return "\n".join(lines)


def _forwards_json(f: Forwards) -> dict:
    return {"role": f.role, "dataset": f.dataset, "images": f.images, "exact": f.exact, "detail": f.detail}


def _row_json(row: CellPlan) -> dict:
    return {"id": row.id, "model": row.model, "spec": row.spec, "seed": row.seed, "kind": row.kind,
            "images": row.images, "exact": row.exact, "unknown_sets": row.unknown, "note": row.note,
            "forwards": [_forwards_json(f) for f in row.forwards]}


def plan_json(plan: GridPlan) -> dict:
    """The dry run as JSON-ready data (`plan.json`)."""
    return {"grid": plan.name, "config": plan.config, "shard": list(plan.shard), "data_root": plan.data_root,
            "grid_cells": plan.grid_cells, "cells_in_shard": len(plan.cells), "variants": plan.variants,
            "datasets": [{"name": d.name, "roles": list(d.roles), "kind": d.kind, "location": d.location,
                          "status": d.status, "samples": d.samples, "size_source": d.size_source,
                          "problem": d.problem} for d in plan.datasets],
            "cells": [_row_json(r) for r in plan.cells], "shared": [_row_json(r) for r in plan.shared],
            "total": {"images": plan.total, "exact": plan.exact, "unknown_sets": plan.unknown}}
