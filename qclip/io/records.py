"""The JSON contract as types: what `qclip eval` writes (`SuiteRecord`), what `qclip ablate` stores per grid cell
(`CellRecord`), and their parts. TypedDicts, so a record stays the plain JSON object the store appends and the
report reads, while every writer and reader names its fields through one definition. Writes nothing.

Field meanings (conventions, δ sign, units) are documented in docs/json-contract.md.
"""

from __future__ import annotations

from typing import Any, Optional, TypedDict

__all__ = ["OodScores", "CorruptionMetrics", "ShiftMetrics", "SpuriousMetrics", "Metrics", "SuiteRecord",
           "CellInfo", "CellDatasets", "DampingProfile", "SpectralSummary", "Timings", "CellRecord",
           "QuantSummary", "PairedTest", "PairedSet", "PairedBlock", "LayerInterval", "cell_record_problem"]


class OodScores(TypedDict):
    """AUROC / AUPR (ID positive) and FPR95 (share of OOD accepted at 95% ID recall) of one OOD score."""

    auroc: float
    aupr: float
    fpr95: float


class CorruptionMetrics(TypedDict):
    """Metrics of the ID set under one corruption at one severity."""

    acc1: float
    ece: float
    nll: float
    brier: float


class ShiftMetrics(TypedDict):
    """Accuracy and ECE on a covariate-shift set (its classes mapped onto the ID classes), with its N."""

    acc1: float
    ece: float
    n: int


class SpuriousMetrics(TypedDict, total=False):
    """Spurious-correlation gap: accuracies on the common and counter groups, RSG, and (vs FP) ΔRSG, Vuln_add."""

    acc_common: float
    acc_counter: float
    rsg: float
    delta_rsg: float
    vuln_add: float


class Metrics(TypedDict, total=False):
    """Every metric of one model variant on the suite's datasets (see the suite module for the definitions)."""

    n: int
    acc1: float
    acc5: float
    ece: float
    ece_adaptive: float
    mce: float
    nll: float
    brier: float
    logit_scale: float
    ece_ts: float
    logit_scale_ts: float
    ece_floor: float
    ece_floor_sd: float
    reliability: dict[str, list]
    ood: dict[str, dict[str, OodScores]]
    corruptions: dict[str, CorruptionMetrics]
    shift: dict[str, ShiftMetrics]
    spurious: SpuriousMetrics
    ci: dict[str, Any]
    delta: dict[str, Any]
    confidence: float
    ece_debiased: float
    selective: dict[str, float]
    conformal: dict[str, dict[str, float]]
    conformal_alpha: float


class QuantSummary(TypedDict, total=False):
    """What a quantization or truncation changed: its spec, per-tower coverage, kept ranks of truncated maps, the
    integer kernels of an integer cell."""

    spec: str
    coverage: dict[str, dict[str, int]]
    kept_ranks: dict[str, int]
    matched_errors: dict[str, float]
    energy_kept_mean: float
    bits: dict[str, int]
    avg_bits: float
    maps: int  # integer cells: exported maps, those on integer kernels, those exact without VNNI; the CPU's VNNI
    integer_arithmetic: int
    dequantized: int
    int16_safe: int
    vnni: bool | None
    int8_path: str | None  # integer cells: "avx2" / "vnni" / "amx" (`qclip.quant.kernels.int8_features`)


class PairedTest(TypedDict, total=False):
    """One paired test of a metric, variant − reference on the same samples (docs/conventions.md, "Paired tests").

    test: "mcnemar" (acc1), "delong" (AUROC) or "bootstrap" (ECE); low/high: its 95% interval (Bonett–Price
    adjusted Wald, DeLong normal, bootstrap percentile); se: its standard error; mde: the minimum detectable
    effect at α = 0.05 and 80% power from se; better/worse (McNemar): samples only the variant / only the
    reference gets right; resamples (bootstrap): B, so p ≥ 1/(B + 1); auroc_a/auroc_b (DeLong): the two AUROCs."""

    test: str
    diff: float
    low: float
    high: float
    p: Optional[float]
    se: float
    mde: Optional[float]
    n: int
    better: int
    worse: int
    resamples: int
    auroc_a: float
    auroc_b: float


class PairedSet(TypedDict, total=False):
    """The paired tests on one set: its N, the digest of the variant's logits (OOD: scores) there, and a test per
    metric (labelled sets: acc1, ece; OOD sets: auroc)."""

    n: int
    hash: str
    acc1: PairedTest
    ece: PairedTest
    auroc: PairedTest


class PairedBlock(TypedDict, total=False):
    """`evals.paired.compare_to_fp`: paired tests on the ID set, each corruption, each shift and each OOD set."""

    id: PairedSet
    corruptions: dict[str, PairedSet]
    shift: dict[str, PairedSet]
    ood: dict[str, PairedSet]


class SuiteRecord(TypedDict, total=False):
    """One `qclip eval` result (the file `--out` writes and the line `--store` appends)."""

    hash: str
    config: dict[str, Any]
    model: str
    pretrained: Optional[str]
    quant: Optional[str]
    dataset: str
    n: int
    metrics: Metrics
    fp_metrics: Metrics
    quant_report: QuantSummary
    paired: PairedBlock
    seconds: float
    versions: dict[str, str]
    written_at: float


class CellInfo(TypedDict):
    """A grid cell as stored (`qclip.experiments.grid.Cell.as_dict`)."""

    id: str
    model: str
    pretrained: Optional[str]
    seed: int
    kind: str
    variant: str
    method: Optional[str]
    bits: Optional[str]
    scope: Optional[str]
    checkpoint: Optional[str]


class CellDatasets(TypedDict):
    """The datasets a cell was evaluated on, by role."""

    id: str
    ood: list[str]
    shift: list[str]
    corruptions: list[str]
    spurious: Optional[list[str]]


class DampingProfile(TypedDict):
    """Mean σ_variant/σ_fp of the changed maps, binned by rank fraction."""

    rank_fraction: list[float]
    ratio: list[Optional[float]]


class LayerInterval(TypedDict):
    """Mean over the changed maps of each map's mean tail σ_variant/σ_fp (bottom 50% of ranks), with the 95%
    t-interval over maps."""

    mean: float
    low: Optional[float]
    high: Optional[float]
    layers: int


class SpectralSummary(TypedDict, total=False):
    """A cell's spectra against FP: weight error and damping, per-rank feature SQNR, own-basis band accuracy."""

    weight_rel_error: Optional[float]
    weight_maps: Optional[int]
    damping: Optional[DampingProfile]
    tail_damping: Optional[LayerInterval]
    band_accuracy: dict[str, float]
    feature_effective_rank: float
    sqnr_db: Optional[list[Optional[float]]]
    band_sqnr_db: Optional[dict[str, Optional[float]]]
    sqnr_spearman_rho: Optional[float]


class Timings(TypedDict):
    """Seconds spent building the variant, evaluating it and analysing its spectra."""

    build: float
    eval: float
    spectral: float


class CellRecord(TypedDict, total=False):
    """One evaluated grid cell, as `qclip ablate` appends it to its store and the report reads it."""

    hash: str
    grid: str
    cell: CellInfo
    datasets: CellDatasets
    n: int
    metrics: Metrics
    delta: Optional[dict[str, Any]]
    paired: Optional[PairedBlock]  # records before schema 2 hold {diff, low, high, p} without "test": "no test"
    paired_fake_quant: Optional[PairedBlock]  # integer cells: real kernels − fake-quant, as `paired`
    feature_agreement: Optional[dict[str, Any]]  # integer cells: n, max_abs_diff, min_cosine, top1_flips vs fake-quant
    spectral: SpectralSummary
    quant_report: Optional[QuantSummary]
    seconds: float
    timings: Timings
    versions: dict[str, str]
    written_at: float


_NUMBER_METRICS = ("acc1", "acc5", "ece", "ece_adaptive", "mce", "nll", "brier", "ece_ts", "ece_floor", "ece_floor_sd",
                   "confidence", "ece_debiased")
_MAPPING_METRICS = ("reliability", "ood", "corruptions", "shift", "spurious", "ci", "selective", "conformal")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def cell_record_problem(record: Any) -> str | None:
    """What makes a stored record unusable as a `CellRecord` (None when its hash, cell and metrics are well formed):
    the report and the merge read these fields, so a record failing here is set aside, never written on."""
    if not isinstance(record, dict) or not isinstance(record.get("hash"), str):
        return "no 'hash' string"
    cell = record.get("cell")
    if not isinstance(cell, dict) or not all(isinstance(cell.get(k), str) for k in ("id", "kind", "variant", "model")):
        return "its 'cell' lacks the id, kind, variant or model string"
    if not isinstance(cell.get("seed"), int) or isinstance(cell.get("seed"), bool):
        return "its cell's seed is not an integer"
    if "written_at" in record and not _is_number(record["written_at"]):
        return "its 'written_at' is not a number"
    metrics = record.get("metrics")
    if not isinstance(metrics, dict):
        return "its 'metrics' is not a mapping"
    for key in _NUMBER_METRICS:
        if key in metrics and metrics[key] is not None and not _is_number(metrics[key]):
            return f"metrics.{key} is not a number"
    for key in _MAPPING_METRICS:
        if key in metrics and metrics[key] is not None and not isinstance(metrics[key], dict):
            return f"metrics.{key} is not a mapping"
    for key in ("ood", "corruptions", "shift"):
        for name, value in (metrics.get(key) or {}).items():
            if not isinstance(value, dict):
                return f"metrics.{key}.{name} is not a mapping"
    return None
