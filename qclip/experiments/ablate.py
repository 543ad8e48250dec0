"""`qclip ablate`: run an ablation grid through the one-pass reliability suite, resumably and in shards.

Each cell (see `qclip.experiments.grid`) is built from the model's full-precision reference, evaluated on every dataset of the
grid by one `ReliabilitySuite` per (model, seed) — so the FP features and metrics, text classifiers and decoded
images are computed once and reused — and analysed spectrally against the FP model: relative weight error and
singular-value damping of the changed linear maps, per-rank SQNR of the ID features in the FP feature basis,
rank-band accuracy in the variant's own basis. One record per cell is appended to `DIR/store/shard-I-of-N.jsonl`
as soon as the cell is done, so a killed run loses at most the cell in flight and a rerun skips what is stored.
When every cell of the grid is stored, the shards are merged into `DIR/results.jsonl` and the report is written.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import NamedTuple

import torch

from qclip.evals.paired import compare_to_fp, family_resamples
from qclip.evals.suite import (
    ReliabilitySuite,
    SuiteConfig,
    numeric_metrics,
    spurious_changes_,
)
from qclip.evals.variants import check_specs_fit
from qclip.evals.zeroshot import model_fingerprint
from qclip.io.errors import QclipInputError
from qclip.io.models import LoadedModel, load_model
from qclip.io.progress import progress_bar
from qclip.io.records import CellRecord, QuantSummary, cell_record_problem
from qclip.io.store import ResultsStore, config_hash

from .analysis import FpWeights, feature_summary, weight_summary
from .fits import ensure_fit, fit_summary, trained_model
from .grid import Cell, GridConfig, expand_cells, fit_of, has_integer_cell, shard_cells, spec_string

log = logging.getLogger(__name__)

__all__ = ["run_grid", "CellEvaluator", "pending_cells", "store_record", "finish_grid", "check_device",
           "cell_hash", "load_records", "merge_results", "write_grid_report", "matched_truncation", "ece_resamples",
           "SCHEMA"]

SCHEMA = 2  # bump when a record's meaning changes: old records then no longer count as done (2: paired tests)


def cell_hash(cfg: GridConfig, cell: Cell) -> str:
    """Store key of a cell: the cell itself, the grid's dataset/limit settings, the record schema and, for a fit
    cell, every training setting."""
    key = {"cell": cell.as_dict(), "grid": cfg.key(), "schema": SCHEMA}
    if cell.kind == "fit":
        entry, lam = fit_of(cfg, cell)
        key["fit"] = entry.settings(lam)
    return config_hash(key)


def _store_dir(out: str | os.PathLike) -> Path:
    return Path(out) / "store"


def load_records(out: str | os.PathLike) -> dict[str, CellRecord]:
    """Every complete, well-formed record of every shard store under `out`, by hash (the earliest written wins); a
    malformed record (see `cell_record_problem`) is skipped with a warning, so its cell counts as not done."""
    records: dict[str, CellRecord] = {}
    for path in sorted(_store_dir(out).glob("*.jsonl")):
        for rec in ResultsStore(path).records():
            problem = cell_record_problem(rec)
            if problem is not None:
                log.warning("results store %s: record %s skipped: %s", path, str(rec.get("hash"))[:16], problem)
                continue
            old = records.get(rec["hash"])
            if old is None or rec.get("written_at", 0) < old.get("written_at", 0):
                records[rec["hash"]] = rec
    return records


def merge_results(cfg: GridConfig, out: str | os.PathLike, *, require_all: bool = False
                  ) -> tuple[list[CellRecord], list[Cell]]:
    """Merge the shard stores into `out/results.jsonl` (grid order, one record per cell); return it and the
    cells still missing.

    With nothing stored, no file is written (an existing `results.jsonl` is left as it is). With `require_all`, a
    missing cell is a `QclipInputError` raised before anything is written."""
    import json

    from qclip.io.paths import atomic_write_text

    stored = load_records(out)
    records, missing = [], []
    for cell in expand_cells(cfg):
        rec = stored.get(cell_hash(cfg, cell))
        (records if rec is not None else missing).append(rec if rec is not None else cell)
    if require_all and not records:
        raise QclipInputError(f"nothing to merge: no cell of grid {cfg.name!r} is stored under {_store_dir(out)} "
                              f"(run qclip ablate without --merge first)")
    if require_all and missing:
        raise QclipInputError(f"{len(missing)} of {len(records) + len(missing)} cells are not stored yet "
                              f"(first: {missing[0].id}); run the remaining shards first")
    if records:
        text = "".join(json.dumps(r, sort_keys=True, allow_nan=False) + "\n" for r in records)
        atomic_write_text(Path(out) / "results.jsonl", text)
    return records, missing


def write_grid_report(cfg: GridConfig, records: list[CellRecord], out: str | os.PathLike) -> dict:
    """The report of a complete grid (see `qclip.experiments.report.write_report`)."""
    from .report import write_report

    return write_report(records, out, title=f"qclip ablation: {cfg.name}", grid=asdict(cfg))


# ------------------------------------------------------------------------------------------------- variants
def matched_truncation(fp: LoadedModel, spec_text: str) -> tuple[LoadedModel, QuantSummary]:
    """Rank truncation of `fp` matched per linear map to the weight error of the quantization `spec_text`.

    Each map in the spec's scope keeps the smallest rank whose relative Frobenius error does not exceed the
    relative error of its quantized weight (activations play no part: only the weight quantizer is applied)."""
    from qclip.quant.api import quantize_, towers_of
    from qclip.quant.modules import effective_weight
    from qclip.quant.spec import parse_spec
    from qclip.quant.surgery import attention_surgery_, list_linear_maps
    from qclip.quant.truncation import truncate_to_errors_

    spec = parse_spec(spec_text)
    if spec.method == "smoothquant":
        raise ValueError("rank-match needs weights in the original basis; SmoothQuant rescales them")
    wq = copy.deepcopy(fp.model)
    quantize_(wq, replace(spec, a_bits=None, method="rotation" if "rotation" in spec.method else "rtn"))
    model = attention_surgery_(copy.deepcopy(fp.model))
    maps = [m for m in list_linear_maps(model) if m.tower in towers_of(spec.scope)]
    modules = {m.name: model.get_submodule(m.name) for m in maps}
    errors = {}
    for name, module in modules.items():
        w = module.weight.detach().double()
        errors[name] = float((effective_weight(wq.get_submodule(name)).double() - w).norm() / w.norm().clamp_min(1e-30))
    reports = truncate_to_errors_(modules, errors)
    summary: QuantSummary = {"spec": f"rank-match:{spec}", "matched_errors": errors,
               "kept_ranks": {r.name: r.kept for r in reports},
               "energy_kept_mean": sum(r.energy_kept for r in reports) / max(1, len(reports))}
    return fp._replace(model=model), summary


def _build_variant(cell: Cell, fp: LoadedModel, suite: ReliabilitySuite, cfg: GridConfig, device: str,
                   data_root: str | None) -> tuple[LoadedModel, QuantSummary | None]:
    from qclip.evals.variants import quantize_loaded

    if cell.kind == "fp":
        return fp, None
    if cell.kind == "rank-match":
        return matched_truncation(fp, spec_string(cell))
    if cell.kind in ("qat", "fit"):
        from qclip.quant.spec import parse_spec

        if cell.kind == "fit":  # trained here (or read from the fit cache) from the FP model
            checkpoint = str(ensure_fit(cell, cfg, model_fingerprint(fp.model), data_root=data_root, device=device))
            tuned, spec = trained_model(fp, Path(checkpoint)), fit_of(cfg, cell)[0].spec
        else:
            checkpoint = cell.checkpoint
            tuned = load_model(checkpoint, device=device, precision=cfg.precision)
            spec = str(parse_spec(next(q.spec for q in cfg.qat if f"qat:{q.name}" == cell.variant)))
        return quantize_loaded(tuned, spec, suite.id_spec, device=device, data_root=data_root,
                               calib_batches=cfg.calib_batches, qat_checkpoint=checkpoint)
    return quantize_loaded(fp, spec_string(cell), suite.id_spec, device=device, data_root=data_root,
                           calib_batches=cfg.calib_batches)


# ------------------------------------------------------------------------------------------------- runner
def _suite_config(cfg: GridConfig, cell: Cell) -> SuiteConfig:
    from qclip.evals.corruptions import parse_corruptions

    return SuiteConfig(model=cell.model, pretrained=cell.pretrained, dataset=cfg.dataset, ood=list(cfg.ood),
                       corruptions=parse_corruptions(",".join(cfg.corruptions)) if cfg.corruptions else [],
                       shift=list(cfg.shift), spurious=tuple(cfg.spurious) if cfg.spurious else None,
                       limit=cfg.limit, ood_limit=cfg.ood_limit, seed=cell.seed, bootstrap=cfg.bootstrap,
                       calib_batches=cfg.calib_batches, precision=cfg.precision)


class _FakeQuant(NamedTuple):
    """A quant cell's fake-quant model with its report and feature key, kept for the integer cell that follows."""

    spec: str
    loaded: LoadedModel
    report: QuantSummary | None
    key: str


def _fake_quant_of(cell: Cell, group: _Group, cfg: GridConfig, device: str, data_root: str | None) -> _FakeQuant:
    """The fake-quant model an integer cell is rebuilt from: its quant cell's, kept from just before, else built
    again (the same model: calibration reads the first ID images), e.g. when that cell ran in another shard."""
    spec = spec_string(cell)
    if group.last_quant is not None and group.last_quant.spec == spec:
        return group.last_quant
    fq, report = _build_variant(replace(cell, kind="quant", variant=spec), group.fp, group.suite, cfg, device,
                                data_root)
    return _FakeQuant(spec, fq, report, model_fingerprint(fq.model))


def ece_resamples(cfg: GridConfig) -> int:
    """Resamples of the grid's paired ECE tests: the grid's `bootstrap`, raised to the minimum whose p floor sits
    well below Holm's first threshold for the largest ECE family the report can form (every quant cell × every
    labelled set, fit cells and their λ = 0 comparisons included); 0 with the bootstrap off."""
    quant = sum(c.kind in ("quant", "qat", "fit") for c in expand_cells(cfg))
    return family_resamples(cfg.bootstrap, max(1, quant) * (1 + len(cfg.corruptions) + len(cfg.shift)))


class _Group:
    """What the cells of one (model, seed) share: the FP model, its suite, FP metrics, FP weight spectra."""

    def __init__(self, cfg: GridConfig, cell: Cell, fp: LoadedModel, fp_weights: dict, **suite_kw):
        from qclip.spectral.features import parse_bands

        self.fp = fp
        self._weights_of_models = fp_weights  # per model, shared by its seeds' groups
        self.suite = ReliabilitySuite(_suite_config(cfg, cell), **suite_kw)
        self.bands = parse_bands(cfg.bands)
        self.fp_key = model_fingerprint(fp.model)
        self._fp_metrics: dict | None = None
        self._model_key = (cell.model, cell.pretrained)
        self.last_quant: _FakeQuant | None = None  # the quant cell just evaluated, for its integer cell
        self.fit_bases: dict[str, tuple[LoadedModel, str]] = {}  # λ = 0 fits (model, key), for their doses
        self.ece_resamples = ece_resamples(cfg)
        self._fp_inputs: dict | None = None
        self.reference_source = None  # a callable returning `reference()` of another process, or None

    @property
    def fp_inputs(self) -> dict:
        """The FP model's logits and MCM scores on every set (what each cell's paired tests compare with)."""
        if self._fp_inputs is None:
            self._fp_inputs = self.suite.paired_inputs(self.fp, self.fp_key)
        return self._fp_inputs

    def compare(self, reference: dict, variant: LoadedModel, key: str) -> dict:
        """Paired tests of `variant` against `reference` (`paired_inputs` of FP or of a fake-quant model)."""
        return compare_to_fp(reference, self.suite.paired_inputs(variant, key), n_boot=self.ece_resamples,
                             seed=self.suite.cfg.seed)

    @property
    def fp_metrics(self) -> dict:
        if self._fp_metrics is None and self.reference_source is not None:
            state = self.reference_source()  # the FP reference computed in another process, when it has one
            if state is not None:
                self.adopt_reference(state)
        if self._fp_metrics is None:
            self._fp_metrics = self.suite.evaluate(self.fp, key=self.fp_key)
        return self._fp_metrics

    @property
    def has_reference(self) -> bool:
        """Whether the FP metrics (and so the FP features) are at hand."""
        return self._fp_metrics is not None

    def reference(self) -> dict:
        """The FP metrics and the memoised FP features: what another process needs to skip the FP evaluation."""
        metrics = self.fp_metrics
        return {"metrics": copy.deepcopy(metrics), "features": self.suite.memoised(self.fp_key)}

    def adopt_reference(self, state: dict) -> None:
        """Use an FP reference computed elsewhere (`reference()` of the same group in another process)."""
        if self._fp_metrics is None:
            self._fp_metrics = copy.deepcopy(state["metrics"])
            self.suite.remember(state["features"])

    @property
    def fp_weights(self) -> FpWeights:
        if self._model_key not in self._weights_of_models:
            self._weights_of_models[self._model_key] = FpWeights(self.fp.model)
        return self._weights_of_models[self._model_key]


def _evaluate_cell(cfg: GridConfig, cell: Cell, group: _Group, device: str, data_root: str | None) -> CellRecord:
    from qclip.evals.agreement import feature_agreement
    from qclip.evals.variants import integer_loaded
    from qclip.evals.zeroshot import zero_shot_classifier
    from qclip.io.results import versions
    from qclip.quant.spec import parse_spec

    t0 = time.perf_counter()
    fq = None
    if cell.kind == "int":  # the integer model of the quant cell before it
        fq = _fake_quant_of(cell, group, cfg, device, data_root)
        variant, report = integer_loaded(fq.loaded, fq.spec, w_bits=(fq.report or {}).get("bits"))
    else:
        variant, report = _build_variant(cell, group.fp, group.suite, cfg, device, data_root)
    key = group.fp_key if cell.kind == "fp" else model_fingerprint(variant.model)
    feeds_int = cell.kind == "quant" and cfg.integer and has_integer_cell(parse_spec(cell.variant))
    group.last_quant = _FakeQuant(cell.variant, variant, report, key) if feeds_int else None
    t1 = time.perf_counter()
    # the variant first: a Ray worker whose FP reference is still being computed elsewhere waits only after it
    metrics = None if cell.kind == "fp" else group.suite.evaluate(variant, key=key)
    fp_metrics = group.fp_metrics
    metrics = fp_metrics if metrics is None else metrics
    delta = None
    if cell.kind != "fp":
        from qclip.evals.metrics import relative_changes

        spurious_changes_(fp_metrics, metrics)
        delta = relative_changes(numeric_metrics(fp_metrics), numeric_metrics(metrics))
    paired = None if cell.kind == "fp" else group.compare(group.fp_inputs, variant, key)
    vs_fake_quant = None
    if fq is not None:  # real kernels against the fake-quant model they were exported from, same images
        vs_fake_quant = group.compare(group.suite.paired_inputs(fq.loaded, fq.key), variant, key)
    t2 = time.perf_counter()
    fp_feats, _ = group.suite.id_features(group.fp, group.fp_key)
    feats, labels = group.suite.id_features(variant, key)
    spec = group.suite.id_spec
    clf = zero_shot_classifier(variant.model, variant.tokenizer, spec.classnames, spec.templates,
                               device=device, use_cache=group.suite.use_cache).float().cpu()
    spectral = feature_summary(fp_feats, feats, labels, clf, group.bands, reference=cell.kind == "fp")
    if cell.kind == "fp":
        spectral.update({"weight_rel_error": None, "weight_maps": 0, "damping": None, "tail_damping": None})
    elif cell.method == "smoothquant":  # its weights are rescaled per input channel: not comparable to FP's
        spectral.update({"weight_rel_error": None, "weight_maps": None, "damping": None, "tail_damping": None})
    else:
        spectral.update(weight_summary(group.fp_weights, variant.model))
    fit = _fit_field(cfg, cell, group, variant, key, feats, device, data_root) if cell.kind == "fit" else None
    agreement = None  # integer cells: their features against the fake-quant cell's, same images
    if fq is not None:
        fq_clf = zero_shot_classifier(fq.loaded.model, fq.loaded.tokenizer, spec.classnames, spec.templates,
                                      device=device, use_cache=group.suite.use_cache).float().cpu()
        agreement = feature_agreement(group.suite.id_features(fq.loaded, fq.key)[0], feats, fq_clf, clf)
    t3 = time.perf_counter()
    # its integer cell pairs with these features, the λ > 0 fits with their λ = 0 fit's
    group.suite.release(group.fp_key, *((key,) if feeds_int else ()), *(k for _, k in group.fit_bases.values()))
    n = metrics.get("n")
    metrics = {k: v for k, v in metrics.items() if k != "n"}
    return {"hash": cell_hash(cfg, cell), "grid": cfg.name, "cell": cell.as_dict(),
            "datasets": {"id": cfg.dataset, "ood": list(cfg.ood), "shift": list(cfg.shift),
                         "corruptions": list(cfg.corruptions), "spurious": cfg.spurious},
            "n": n, "metrics": metrics, "delta": delta, "paired": paired, "paired_fake_quant": vs_fake_quant,
            "feature_agreement": agreement,
            "spectral": spectral, "quant_report": report, **({"fit": fit} if fit is not None else {}),
            "seconds": round(t3 - t0, 3),
            "timings": {"build": round(t1 - t0, 3), "eval": round(t2 - t1, 3), "spectral": round(t3 - t2, 3)},
            "versions": versions()}


def _fit_field(cfg: GridConfig, cell: Cell, group: _Group, variant: LoadedModel, key: str, feats: torch.Tensor,
               device: str, data_root: str | None) -> dict:
    """A fit cell's `fit` field; a λ = 0 fit is kept for the doses after it, a dose is paired with its λ = 0 fit
    (kept from before, else built again from the fit cache, e.g. when it ran in another shard)."""
    entry, lam = fit_of(cfg, cell)
    path = ensure_fit(cell, cfg, group.fp_key, data_root=data_root, device=device)  # cached by the build above
    baseline = entry.variant(0.0)
    if lam == 0:
        group.fit_bases = {baseline: (variant, key)}  # one entry's doses at a time: they follow their baseline
        return fit_summary(cfg, cell, path, feats, variant, base=None, suite=group.suite, key=key,
                           n_boot=group.ece_resamples)
    if baseline not in group.fit_bases:
        base, _ = _build_variant(replace(cell, variant=baseline), group.fp, group.suite, cfg, device, data_root)
        group.fit_bases = {baseline: (base, model_fingerprint(base.model))}
    base, base_key = group.fit_bases[baseline]
    base_feats, _ = group.suite.id_features(base, base_key)
    return fit_summary(cfg, cell, path, feats, variant, base=(base, base_key, base_feats), suite=group.suite,
                       key=key, n_boot=group.ece_resamples)


def _finite(obj):
    """JSON-safe copy: non-finite floats become None (the store rejects NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


class CellEvaluator:
    """Evaluates cells one after another, keeping what the cells of a (model, seed) group share — the FP model,
    its suite (decoded images, memoised FP features, text classifiers) and the FP weight spectra — across cells.

    The one cell path of every way a grid runs: in process, as a `--shard`, and on a `--ray` worker. One group is
    held at a time (cells arrive grouped); FP models and weight spectra are kept per model for all its seeds."""

    def __init__(self, cfg: GridConfig, *, data_root: str | None = None, device: str = "cpu",
                 batch_size: int | None = None, num_workers: int = 2, use_cache: bool = True,
                 image_cache_mb: float = 2048.0):
        self.cfg, self.data_root, self.device = cfg, data_root, device
        self._suite_kw = dict(data_root=data_root, device=device, batch_size=batch_size or cfg.batch_size,
                              num_workers=num_workers, progress=False, use_cache=use_cache,
                              image_cache_mb=image_cache_mb)
        self._fps: dict[tuple, LoadedModel] = {}
        self._fp_weights: dict[tuple, FpWeights] = {}  # the FP spectra, once per model for all its seeds
        self._groups: dict[tuple, _Group] = {}

    def group(self, cell: Cell) -> _Group:
        """The cell's (model, seed) group, built on first use (the previous group is dropped)."""
        model_key = (cell.model, cell.pretrained)
        if model_key not in self._fps:
            self._fps[model_key] = load_model(cell.model, cell.pretrained, device=self.device,
                                              precision=self.cfg.precision)
            cfg = self.cfg
            check_specs_fit(self._fps[model_key], *cfg.quant_specs(), *cfg.truncation, *cfg.match_truncation)
        group_key = (*model_key, cell.seed)
        if group_key not in self._groups:
            self._groups.clear()  # one (model, seed) group in memory at a time
            self._groups[group_key] = _Group(self.cfg, cell, self._fps[model_key], self._fp_weights,
                                             **self._suite_kw)
        return self._groups[group_key]

    def evaluate(self, cell: Cell) -> CellRecord:
        """The cell's record (JSON-safe: non-finite floats are None)."""
        return _finite(_evaluate_cell(self.cfg, cell, self.group(cell), self.device, self.data_root))

    def reference(self, cell: Cell) -> dict:
        """The FP reference of the cell's group (its metrics and memoised features), computed here if needed, for
        `adopt_reference` in another process."""
        return self.group(cell).reference()

    def reference_from(self, cell: Cell, source) -> None:
        """Take the FP reference of the cell's group from `source()` (another process's `reference`, or None: compute
        it here) when a cell first needs it, unless the group holds it already."""
        group = self.group(cell)
        if not group.has_reference:
            group.reference_source = source


def run_grid(cfg: GridConfig, out: str | os.PathLike, *, shard: tuple[int, int] = (1, 1),
             data_root: str | None = None, device: str = "cpu", batch_size: int | None = None, num_workers: int = 2,
             progress: bool = True, use_cache: bool = True, wandb_run=None, report: bool = True,
             image_cache_mb: float = 2048.0) -> dict:
    """Evaluate this shard's cells not yet stored under `out`; merge and write the report once all are stored.

    Decoded images are kept in memory across the cells of a (model, seed) up to `image_cache_mb` (0: off)."""
    index, count = shard
    check_device(cfg, device)
    out = Path(out)  # created by the first write (store line, results, report): a run that fails first leaves none
    cells = shard_cells(expand_cells(cfg), index, count)
    store = ResultsStore(_store_dir(out) / f"shard-{index}-of-{count}.jsonl")
    todo = pending_cells(cfg, out, cells)
    summary = {"cells": len(cells), "skipped": len(cells) - len(todo), "evaluated": 0}
    evaluator = CellEvaluator(cfg, data_root=data_root, device=device, batch_size=batch_size,
                              num_workers=num_workers, use_cache=use_cache, image_cache_mb=image_cache_mb)
    bar = progress_bar(len(cells), initial=len(cells) - len(todo), desc=f"ablate {cfg.name}", unit="cell",
                       enabled=progress)
    from qclip.quant.truncation import reuse_svds

    # truncation cells decompose each FP weight once per grid, not once per cell (bit-identical results)
    with reuse_svds():
        try:
            for cell in todo:
                bar.set_postfix_str(cell.variant)
                record = evaluator.evaluate(cell)
                store_record(store, record, bar, wandb_run)
                summary["evaluated"] += 1
        finally:
            bar.close()
    return finish_grid(cfg, out, summary, report=report)


def check_device(cfg: GridConfig, device: str) -> None:
    """Refuse a grid the device cannot run (integer cells run oneDNN's CPU kernels)."""
    if cfg.integer and torch.device(device).type != "cpu":
        raise QclipInputError("integer: true runs oneDNN's CPU int8 kernels: run this grid with --device cpu, or "
                              "drop it")


def pending_cells(cfg: GridConfig, out: str | os.PathLike, cells: list[Cell]) -> list[Cell]:
    """The cells not yet stored under `out`, in their order."""
    done = set(load_records(out))
    return [c for c in cells if cell_hash(cfg, c) not in done]


def store_record(store: ResultsStore, record: CellRecord, bar, wandb_run=None, where: str = "") -> None:
    """Append a finished cell's record to the store, print its line (naming its worker when given), log it."""
    store.append(record)
    m = record["metrics"]
    bar.write(f"{record['cell']['id']}: acc1={m['acc1']:.4f} ece={m['ece']:.4f} ({record['seconds']:.1f}s"
              + (f" on {where})" if where else ")"))
    if wandb_run is not None:
        _log_cell(wandb_run, record)
    bar.update(1)


def finish_grid(cfg: GridConfig, out: str | os.PathLike, summary: dict, *, report: bool = True) -> dict:
    """Merge the stores; write the report when every cell of the grid is stored. Returns `summary` completed."""
    records, missing = merge_results(cfg, out)
    summary["missing"] = [c.id for c in missing]
    if not missing and report:
        summary["report"] = write_grid_report(cfg, records, out)
    return summary


def _log_cell(run, record: CellRecord) -> None:
    """One wandb log call per cell: the cell's scalar metrics, flattened with '/'."""
    flat: dict = {"cell/variant": record["cell"]["variant"], "cell/seconds": record["seconds"]}

    def walk(prefix: str, obj) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                if k not in ("reliability", "ci"):
                    walk(f"{prefix}/{k}" if prefix else str(k), v)
        elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
            flat[prefix] = obj

    walk("metrics", record["metrics"])
    walk("delta", record["delta"] or {})
    for key in ("weight_rel_error", "sqnr_spearman_rho", "feature_effective_rank"):
        if record["spectral"].get(key) is not None:
            flat[f"spectral/{key}"] = record["spectral"][key]
    run.log(flat)
