"""The ablation grid as data: a validated `GridConfig` read from YAML, expanded into `Cell`s and split into shards.

A cell is one model variant evaluated on every dataset of the grid: the full-precision reference, a PTQ spec
(method × bits × scope), that spec's integer model on real int8 kernels (`int:w8a8`, with `integer: true`), a rank
truncation, a rank truncation matched per layer to a quantization's weight error (`rank-match:w4a8`), a QAT
checkpoint from `qclip fit`, or a QAT variant the grid trains itself from the FP model (`fit`: one cell per
spectral-regularizer strength λ, see `qclip.experiments.fits`). Cells are enumerated in a fixed order, and shard I of
N takes every N-th cell starting at I-1, so N processes can share one store directory.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from qclip.io.errors import ConfigError
from qclip.io.records import CellInfo
from qclip.io.validate import (
    MAX_SHOWN,
    PRECISIONS,
    check_choice,
    check_float,
    check_int,
    check_seed,
    check_spec,
    check_str,
    check_str_list,
    shown,
)

__all__ = ["GridConfig", "Cell", "QatEntry", "FitEntry", "fit_of", "load_grid", "expand_cells", "parse_shard", "shard_cells", "spec_string",
           "grid_data_root", "has_integer_cell"]

_METHOD_SUFFIX = {"rtn": "", "smoothquant": "-smoothquant", "rot": "-rot", "rotation": "-rot"}
_SCOPE_SUFFIX = {"vision": "", "vision+text": "-vt"}


@dataclass(frozen=True)
class QatEntry:
    """A `qclip fit` checkpoint evaluated as a grid row: its name, the spec it was trained with, the file."""

    name: str
    spec: str
    checkpoint: str


_FIT_KEYS = ("spec", "steps", "spectral_lambda", "spectral_k", "spectral_on", "batch_size", "lr", "scale_lr",
             "contrastive_weight", "distill_weight", "warmup_steps")


@dataclass(frozen=True)
class FitEntry:
    """A QAT fine-tune the grid trains from each FP model (`qclip fit`'s module and data module), one cell per λ of
    `spectral_lambda` (which must hold 0: the baseline of the dose–response); the other keys are the module's."""

    spec: str
    steps: int
    spectral_lambda: tuple[float, ...]
    spectral_k: int | float = 8
    spectral_on: str = "features"
    batch_size: int = 64
    lr: float = 1e-4
    scale_lr: float = 1e-3
    contrastive_weight: float = 1.0
    distill_weight: float = 0.0
    warmup_steps: int = 0

    def variant(self, lam: float) -> str:
        """The cell variant of strength λ, e.g. `fit:w4a8-lsq-k8-n100-lam0.1` (`-weights` / `-both` after the
        steps when the weights are penalised)."""
        on = "" if self.spectral_on == "features" else f"-{self.spectral_on}"
        return f"fit:{self.spec}-k{self.spectral_k:g}-n{self.steps}{on}-lam{lam:g}"

    def settings(self, lam: float) -> dict:
        """Every training setting of the λ cell (part of its store hash and of its trained model's cache key)."""
        return {**{k: getattr(self, k) for k in _FIT_KEYS if k != "spectral_lambda"}, "spectral_lambda": float(lam)}


@dataclass(frozen=True)
class Cell:
    """One model variant of the grid (evaluated on all of the grid's datasets)."""

    model: str
    pretrained: str | None
    variant: str  # fp | a quant spec | int:<quant spec> | rank-... | rank-match:<quant spec> | qat:<name> | fit:...
    kind: str  # fp | quant | int | rank | rank-match | qat | fit
    seed: int
    method: str | None = None
    bits: str | None = None
    scope: str | None = None
    checkpoint: str | None = None

    @property
    def id(self) -> str:
        """Human-readable unique id, e.g. `demo|w4a8-rot|s0`."""
        model = self.model if self.pretrained is None else f"{self.model}:{self.pretrained}"
        return f"{model}|{self.variant}|s{self.seed}"

    def as_dict(self) -> CellInfo:
        """The cell as stored in a record (with its id)."""
        return CellInfo(id=self.id, **asdict(self))


@dataclass
class GridConfig:
    """What `qclip ablate` evaluates: models × variants × seeds, each on the ID/OOD/shift/corruption datasets."""

    name: str = "ablation"
    models: list[dict] = field(default_factory=lambda: [{"name": "demo"}])
    methods: list[str] = field(default_factory=lambda: ["rtn"])
    bits: list[str] = field(default_factory=lambda: ["w8a8", "w6a8", "w4a8"])
    scopes: list[str] = field(default_factory=lambda: ["vision"])
    extra_specs: list[str] = field(default_factory=list)
    truncation: list[str] = field(default_factory=list)
    match_truncation: list[str] = field(default_factory=list)
    qat: list[QatEntry] = field(default_factory=list)
    fit: list[FitEntry] = field(default_factory=list)  # QAT variants trained in the grid (the regularizer's axis)
    seeds: list[int] = field(default_factory=lambda: [0])
    dataset: str = "wds/cifar10"
    ood: list[str] = field(default_factory=list)
    shift: list[str] = field(default_factory=list)
    corruptions: list[str] = field(default_factory=list)
    spurious: list[str] | None = None
    limit: int | None = 2000
    ood_limit: int | None = 1000
    bootstrap: int = 100
    calib_batches: int | None = None
    precision: str = "fp32"
    bands: str = "0-8,8-64,64-"
    batch_size: int = 256
    data_root: str | None = None  # used when neither --data-root nor $QCLIP_DATA_ROOT is given
    integer: bool = False  # also evaluate each activation-quantizing PTQ cell's integer model (oneDNN int8, CPU)

    def __post_init__(self):
        try:
            self._check_types()
            self._check_values()
        except ConfigError as exc:
            raise ConfigError(f"grid: {exc}") from None

    def _check_values(self) -> None:
        """Models, methods, scopes, specs, corruptions, the spurious pair and seeds, once the types are right."""
        from qclip.evals.corruptions import parse_corruptions
        from qclip.quant.spec import SCOPES

        if not self.models:
            raise ConfigError("'models' is empty")
        for method in self.methods:
            if method not in _METHOD_SUFFIX:
                raise ConfigError(f"unknown method {shown(method)} (choose from {sorted(_METHOD_SUFFIX)})")
        for scope in self.scopes:
            if scope not in SCOPES:
                raise ConfigError(f"unknown scope {shown(scope)} (choose from {SCOPES})")
        self.qat = [q if isinstance(q, QatEntry) else _qat_entry(q) for q in self.qat]
        for q in self.qat:
            if check_spec(f"qat entry {q.name!r} spec", q.spec).kind != "quant":
                raise ConfigError(f"qat entry {q.name!r} needs a uniform quantization spec (e.g. w4a8-lsq), got "
                                  f"{q.spec!r}")
        for text in [*self.quant_specs(), *self.truncation, *self.match_truncation]:
            check_spec("spec", text)
        self.fit = [f if isinstance(f, FitEntry) else _fit_entry(i, f) for i, f in enumerate(self.fit, 1)]
        variants = [f.variant(lam) for f in self.fit for lam in f.spectral_lambda]
        if len(set(variants)) != len(variants):
            raise ConfigError(f"two fit entries give the same cell {next(v for v in variants if variants.count(v) > 1)!r}"
                              " (same spec, spectral_k, steps, spectral_on and λ): merge them")
        try:
            self.corruptions = [f"{n}:{s}" for n, s in parse_corruptions(",".join(self.corruptions))]
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        for text in self.truncation:
            if check_spec("truncation entry", text).kind != "rank":
                raise ConfigError(f"truncation entry {text!r} is not a rank spec (rank-e0.9, rank-f0.5, ...)")
        for text in self.match_truncation:
            spec = check_spec("match_truncation entry", text)
            if spec.kind != "quant" or spec.method == "smoothquant":
                raise ConfigError(f"match_truncation entry {text!r} must be a quantization spec without "
                                  "SmoothQuant (its weights are rescaled, so their error is not comparable)")
        if self.spurious is not None and len(self.spurious) != 2:
            raise ConfigError("'spurious' is a pair [common, counter]")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"'seeds' must be distinct integers, got {shown(self.seeds)}")

    def _check_types(self) -> None:
        """Types and ranges of every key, before anything is expanded (a string where a list belongs is refused:
        `methods: rtn` would otherwise read as the methods r, t, n)."""
        from qclip.spectral.features import parse_bands

        check_str("name", self.name)
        if not isinstance(self.models, list):
            raise ConfigError(f"models must be a list of {{name, pretrained}}, got {shown(self.models)}")
        for m in self.models:
            if not isinstance(m, dict) or "name" not in m or set(m) - {"name", "pretrained"}:
                raise ConfigError(f"each model is {{name: ..., pretrained: ...}}, got {shown(m)}")
            check_str("a model's name", m["name"])
            check_str(f"the pretrained of model {m['name']}", m.get("pretrained"), optional=True)
        for key in ("methods", "bits", "scopes", "extra_specs", "truncation", "match_truncation", "ood", "shift",
                    "corruptions"):
            setattr(self, key, check_str_list(key, getattr(self, key)))
        if not isinstance(self.qat, list):
            raise ConfigError(f"qat must be a list of {{name, spec, checkpoint}}, got {shown(self.qat)}")
        for q in self.qat:
            if isinstance(q, dict):
                for key in ("name", "spec", "checkpoint"):
                    check_str(f"the {key} of a qat entry", q.get(key), optional=key != "checkpoint")
        if not isinstance(self.fit, list):
            raise ConfigError(f"fit must be a list of {{spec, steps, spectral_lambda, ...}}, got {shown(self.fit)}")
        if not isinstance(self.seeds, list):
            raise ConfigError(f"seeds must be a list of integers, got {shown(self.seeds)}")
        for key in ("models", "methods", "bits", "scopes", "extra_specs", "truncation", "match_truncation", "qat",
                    "seeds", "ood", "shift", "corruptions"):
            if len(getattr(self, key)) > MAX_LIST:
                raise ConfigError(f"{key} has {len(getattr(self, key))} entries: a grid list holds at most {MAX_LIST}")
        for seed in self.seeds:
            check_seed("an entry of seeds", seed)
        check_str("dataset", self.dataset)
        if self.spurious is not None:
            check_str_list("spurious", self.spurious)
        check_int("limit", self.limit, minimum=1, optional=True)
        check_int("ood_limit", self.ood_limit, minimum=1, optional=True)
        check_int("bootstrap", self.bootstrap, minimum=0)
        check_int("calib_batches", self.calib_batches, minimum=1, optional=True)
        check_choice("precision", self.precision, PRECISIONS)
        check_str("bands", self.bands)
        try:
            parse_bands(self.bands)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        check_int("batch_size", self.batch_size, minimum=1)
        check_str("data_root", self.data_root, optional=True)
        if not isinstance(self.integer, bool):
            raise ConfigError(f"integer must be true or false, got {self.integer!r}")

    def quant_specs(self) -> list[str]:
        """PTQ spec strings: scopes × methods × bits, then `extra_specs` (duplicates dropped)."""
        specs = [f"{bits}{_METHOD_SUFFIX[method]}{_SCOPE_SUFFIX[scope]}"
                 for scope in self.scopes for method in self.methods for bits in self.bits]
        return list(dict.fromkeys([*specs, *self.extra_specs]))

    def key(self) -> dict:
        """The settings every cell's result depends on (part of each cell's hash)."""
        return {"dataset": self.dataset, "ood": self.ood, "shift": self.shift, "corruptions": self.corruptions,
                "spurious": self.spurious, "limit": self.limit, "ood_limit": self.ood_limit,
                "bootstrap": self.bootstrap, "calib_batches": self.calib_batches, "precision": self.precision,
                "bands": self.bands}


def _qat_entry(entry) -> QatEntry:
    if not isinstance(entry, dict) or set(entry) - {"name", "spec", "checkpoint"} or "checkpoint" not in entry:
        raise ConfigError(f"each qat entry is {{name, spec, checkpoint}}, got {shown(entry)}")
    spec = entry.get("spec")
    if not spec:
        raise ConfigError(f"qat entry {shown(entry)} needs the 'spec' it was trained with (e.g. w4a8-lsq)")
    return QatEntry(name=str(entry.get("name") or Path(entry["checkpoint"]).stem), spec=str(spec),
                    checkpoint=str(entry["checkpoint"]))


def _fit_entry(index: int, entry) -> FitEntry:
    """A validated `fit` entry; a bad value is one line naming the entry and the key."""
    from qclip.spectral.penalties import rank_spec, resolve_rank

    where = f"fit entry {index}"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a mapping {{spec, steps, spectral_lambda, ...}}, got {shown(entry)}")
    unknown = sorted(set(entry) - set(_FIT_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown} (known: {sorted(_FIT_KEYS)})")
    missing = [k for k in ("spec", "steps", "spectral_lambda") if k not in entry]
    if missing:
        raise ConfigError(f"{where} needs {', '.join(missing)} (e.g. {{spec: w4a8-lsq, steps: 100, "
                          "spectral_lambda: [0, 0.1, 1.0]}})")
    data = dict(entry)
    try:
        spec = check_spec("spec", check_str("spec", data["spec"]))
        if spec.kind != "quant" or "lsq" not in spec.method:
            raise ConfigError(f"spec must be an LSQ QAT spec (w4a8-lsq, w4a8-rot-lsq, ...), got {shown(data['spec'])}")
        data["spec"] = str(spec)
        check_int("steps", data["steps"], minimum=1)
        lams = data["spectral_lambda"]
        lams = list(lams) if isinstance(lams, (list, tuple)) else [lams]
        lams = [check_float("an entry of spectral_lambda", v, low=0.0) for v in lams]
        if 0.0 not in lams:
            raise ConfigError(f"spectral_lambda must include 0 (the λ = 0 fit every other λ is compared with), "
                              f"got {lams}")
        if len(set(lams)) != len(lams):
            raise ConfigError(f"spectral_lambda has repeated values: {lams}")
        data["spectral_lambda"] = tuple(sorted(lams))  # λ = 0 first: the baseline is trained before its doses
        k = data.get("spectral_k", FitEntry.spectral_k)
        try:
            resolve_rank(rank_spec(k), 1)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"bad spectral_k {shown(k)}: {exc}") from None
        data["spectral_k"] = rank_spec(k)
        check_choice("spectral_on", data.get("spectral_on", FitEntry.spectral_on), ("features", "weights", "both"))
        for key in ("batch_size", "warmup_steps"):
            check_int(key, data.get(key, getattr(FitEntry, key)), minimum=1 if key == "batch_size" else 0)
        for key in ("lr", "scale_lr"):
            check_float(key, data.get(key, getattr(FitEntry, key)), low=0.0, low_open=True)
        for key in ("contrastive_weight", "distill_weight"):
            check_float(key, data.get(key, getattr(FitEntry, key)), low=0.0)
        if data.get("contrastive_weight", 1.0) == 0 and data.get("distill_weight", 0.0) == 0:
            raise ConfigError("contrastive_weight and distill_weight cannot both be 0")
    except (ConfigError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    for key in ("lr", "scale_lr", "contrastive_weight", "distill_weight"):
        if key in data:
            data[key] = float(data[key])
    return FitEntry(**data)


def fit_of(cfg: GridConfig, cell: Cell) -> tuple[FitEntry, float]:
    """The fit entry and λ of a `fit` cell."""
    for entry in cfg.fit:
        for lam in entry.spectral_lambda:
            if entry.variant(lam) == cell.variant:
                return entry, lam
    raise KeyError(f"no fit entry of grid {cfg.name!r} gives the cell {cell.id}")


def grid_data_root(cfg: GridConfig, data_root: str | None) -> str | None:
    """The data root of a run: `--data-root`, else `$QCLIP_DATA_ROOT`, else the grid's `data_root` if it exists."""
    if data_root or os.environ.get("QCLIP_DATA_ROOT"):
        return data_root
    if cfg.data_root and ("://" in cfg.data_root or Path(cfg.data_root).is_dir()):
        return cfg.data_root
    return None


def spec_string(cell: Cell) -> str | None:
    """The quant/rank spec a cell applies (None for the FP reference)."""
    if cell.kind in ("quant", "rank"):
        return cell.variant
    if cell.kind in ("rank-match", "int"):
        return cell.variant.split(":", 1)[1]
    return None


#: A grid file larger than this is refused before it is parsed (the largest shipped grid is ~4 KB).
MAX_GRID_BYTES = 2**20
#: The most entries any list of a grid may hold (models, bits, seeds, ...).
MAX_LIST = 1000


def _strict_loader():
    """A yaml SafeLoader that refuses duplicate mapping keys (YAML would keep the last silently) and aliases (a
    small file of nested aliases expands into gigabytes)."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.composer.ComposerError(None, None, f"aliases (*{event.anchor[:40]}) are not allowed in a "
                                                  "grid: write the value out", event.start_mark)
            return super().compose_node(parent, index)

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, (str, int, float, bool)) or key is None:
                    if key in seen:
                        raise yaml.constructor.ConstructorError(None, None, f"duplicate key {shown(key)}",
                                                                key_node.start_mark)
                    seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return StrictLoader


def _read_yaml(path: Path):
    """The YAML document of a grid file: size-capped, UTF-8, strict (see `_strict_loader`)."""
    import yaml

    try:
        size = path.stat().st_size
        if size > MAX_GRID_BYTES:
            raise ConfigError(f"grid config {path} is {size} bytes: a grid is at most {MAX_GRID_BYTES} bytes")
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read grid config {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"grid config {path} is not UTF-8 text (byte {exc.start})") from None
    try:
        return yaml.load(text, Loader=_strict_loader())  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        reason = getattr(exc, "problem", None) or first
        raise ConfigError(f"grid config {path} is not valid YAML{where}: {reason[:MAX_SHOWN]}") from None


def load_grid(path: str | os.PathLike, **overrides) -> GridConfig:
    """Read a grid YAML file (unknown keys are an error naming them); keyword overrides win over the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"grid config {path} does not exist")
    data = _read_yaml(path)
    if data is None:
        raise ConfigError(f"grid config {path} is empty: it needs at least the models and the dataset")
    if not isinstance(data, dict):
        raise ConfigError(f"grid config {path} must be a mapping of settings")
    known = {f.name for f in fields(GridConfig)}
    unknown = sorted(map(str, set(data) - known))
    if unknown:
        raise ConfigError(f"grid config {path}: unknown keys {shown(unknown)} (known: {sorted(known)})")
    data.setdefault("name", path.stem)
    root = data.get("data_root")
    if isinstance(root, str) and root and "://" not in root and not Path(root).is_absolute():  # relative to the config file
        data["data_root"] = str((path.parent / root).resolve())
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return GridConfig(**data)
    except TypeError as exc:
        raise ConfigError(f"grid config {path}: {str(exc)[:MAX_SHOWN]}") from None


def _bits(spec) -> str:
    """`w4a8` / `w4` of a quantization spec (`w4.5a8` for a mixed-precision spec's average weight bits)."""
    w = f"{spec.avg_bits:g}" if spec.kind == "mixed" else spec.w_bits
    return f"w{w}" + (f"a{spec.a_bits}" if spec.a_bits else "")


def has_integer_cell(spec) -> bool:
    """Whether `integer: true` adds an integer cell after this PTQ spec's cell: it quantizes activations (a
    weight-only map has no integer input to multiply; its export is the fake-quant model computed in float)."""
    return spec.kind in ("quant", "mixed") and spec.a_bits is not None


def expand_cells(cfg: GridConfig) -> list[Cell]:
    """Every cell in a fixed order: per model and seed, FP, PTQ specs (each followed by its integer cell with
    `integer`), matched truncations, truncations, QAT checkpoints, trained fits (λ ascending per entry)."""
    from qclip.quant.spec import parse_spec

    cells = []
    for model in cfg.models:
        name, pretrained = model["name"], model.get("pretrained")
        for seed in cfg.seeds:
            cells.append(Cell(name, pretrained, "fp", "fp", seed))
            for text in cfg.quant_specs():
                spec = parse_spec(text)
                cells.append(Cell(name, pretrained, str(spec), "quant", seed, spec.method, _bits(spec), spec.scope))
                if cfg.integer and has_integer_cell(spec):
                    cells.append(Cell(name, pretrained, f"int:{spec}", "int", seed, spec.method, _bits(spec),
                                      spec.scope))
            for text in cfg.match_truncation:
                spec = parse_spec(text)
                cells.append(Cell(name, pretrained, f"rank-match:{spec}", "rank-match", seed, None, None, spec.scope))
            for text in cfg.truncation:
                spec = parse_spec(text)
                cells.append(Cell(name, pretrained, str(spec), "rank", seed, None, None, spec.scope))
            for q in cfg.qat:
                spec = parse_spec(q.spec)
                cells.append(Cell(name, pretrained, f"qat:{q.name}", "qat", seed, spec.method, _bits(spec), spec.scope,
                                  q.checkpoint))
            for f in cfg.fit:
                spec = parse_spec(f.spec)
                cells += [Cell(name, pretrained, f.variant(lam), "fit", seed, spec.method, _bits(spec), spec.scope)
                          for lam in f.spectral_lambda]
    return cells


def parse_shard(text: str | None) -> tuple[int, int]:
    """`I/N` (1 ≤ I ≤ N) → (I, N); None → (1, 1)."""
    if text is None:
        return 1, 1
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise ConfigError(f"bad --shard {text!r}: expected I/N, e.g. 1/4") from None
    if not 1 <= i <= n:
        raise ConfigError(f"bad --shard {text!r}: need 1 <= I <= N")
    return i, n


def shard_cells(cells: list[Cell], index: int, count: int) -> list[Cell]:
    """Shard `index` of `count` (1-based): cells index-1, index-1+count, ... (deterministic, disjoint, complete)."""
    return cells[index - 1::count]
