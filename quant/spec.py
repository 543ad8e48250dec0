"""`QuantSpec`: one validated description of a quantization (or rank-truncation) recipe, with a string form.

String grammar (round-trips through `str(spec)` / `parse_spec`):

    w{2..8}[a{2..8}][-rtn|-smoothquant|-rot|-lsq|-rot-lsq][-g{N}|-pt][-minmax|-ema|-pct|-mse][-asym][-vt]
    rank-e{0..1} | rank-f{0..1} | rank-k{N}  [-vt]
    mp{2..8}[a{2..8}][-rand[{seed}]][-c{digits}][-wo][-minmax|-ema|-pct|-mse][-vt]

`w4a8` = 4-bit per-channel symmetric weights, 8-bit per-tensor activations calibrated with a min-max observer,
round-to-nearest (RTN), vision tower only. `-vt` quantizes the text tower too. `-g128` = per-group weights,
`-pt` = per-tensor weights. `rank-e0.9` keeps the top singular components holding 90% of each layer's energy,
`rank-f0.5` half of them, `rank-k16` the top 16 (the ablation control for quantization).
`mp4.5` = spectrally guided mixed precision: per-map weight bits from {4, 6, 8} averaging at most 4.5 (weighted by
parameter count), chosen to minimise the weight error in each map's top singular subspace (`qclip.quant.mixed`),
8-bit activations, vision tower. `mp4.5a6` sets the activation bits, `-wo` quantizes weights only, `-rand` /
`-rand3` draws the widths at random (seed 0 / 3) under the same budget (the control), `-c48` changes the choices.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

__all__ = ["QuantSpec", "RankSpec", "MixedSpec", "parse_spec", "METHODS", "OBSERVERS", "GRANULARITIES", "SCOPES",
           "ALLOCATIONS"]

METHODS = ("rtn", "smoothquant", "rotation", "lsq", "rotation+lsq")
OBSERVERS = ("minmax", "ema", "percentile", "mse")
GRANULARITIES = ("per_channel", "per_group", "per_tensor")
SCOPES = ("vision", "vision+text")
ALLOCATIONS = ("spectral", "random")
#: The largest seed qclip accepts anywhere: Lightning's `seed_everything` (the demo pretraining, `qclip fit`) and
#: numpy take seeds below 2**32 (torch generators take any below 2**64), so one bound serves every seed path.
MAX_SEED = 2**32 - 1
_METHOD_TOKENS = {"rtn": "rtn", "smoothquant": "smoothquant", "sq": "smoothquant", "rot": "rotation",
                  "rotation": "rotation", "lsq": "lsq"}
_METHOD_SUFFIX = {"rtn": "", "smoothquant": "-smoothquant", "rotation": "-rot", "lsq": "-lsq",
                  "rotation+lsq": "-rot-lsq"}
_OBSERVER_TOKENS = {"minmax": "minmax", "ema": "ema", "pct": "percentile", "percentile": "percentile",
                    "mse": "mse"}
_OBSERVER_SUFFIX = {"minmax": "", "ema": "-ema", "percentile": "-pct", "mse": "-mse"}


@dataclass(frozen=True)
class QuantSpec:
    """A validated fake-quantization recipe (weights per-channel/group/tensor, activations per-tensor)."""

    w_bits: int = 8
    a_bits: int | None = 8
    granularity: str = "per_channel"
    group_size: int | None = None
    symmetric: bool = True
    observer: str = "minmax"
    method: str = "rtn"
    scope: str = "vision"
    calib_batches: int = 8
    smoothquant_alpha: float = 0.5
    percentile: float = 99.99
    ema_decay: float = 0.9

    def __post_init__(self):
        if not isinstance(self.w_bits, int) or not 2 <= self.w_bits <= 8:
            raise ValueError(f"w_bits must be an integer in 2..8, got {self.w_bits!r}")
        if self.a_bits is not None and (not isinstance(self.a_bits, int) or not 2 <= self.a_bits <= 8):
            raise ValueError(f"a_bits must be None (weight-only) or an integer in 2..8, got {self.a_bits!r}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        if self.granularity == "per_group":
            if not isinstance(self.group_size, int) or self.group_size < 2:
                raise ValueError(f"group_size must be an integer >= 2 for per_group, got {self.group_size!r}")
        elif self.group_size is not None:
            raise ValueError(f"group_size is only valid with granularity='per_group', got {self.group_size!r}")
        if self.observer not in OBSERVERS:
            raise ValueError(f"observer must be one of {OBSERVERS}, got {self.observer!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {self.scope!r}")
        if self.method == "smoothquant" and self.a_bits is None:
            raise ValueError("method='smoothquant' migrates activation outliers and needs a_bits")
        if self.method in ("lsq", "rotation+lsq") and self.granularity == "per_group":
            raise ValueError("granularity='per_group' is not supported with LSQ (use per_channel or per_tensor)")
        if not isinstance(self.calib_batches, int) or self.calib_batches < 1:
            raise ValueError(f"calib_batches must be a positive integer, got {self.calib_batches!r}")
        if not 0.0 <= self.smoothquant_alpha <= 1.0:
            raise ValueError(f"smoothquant_alpha must be in [0, 1], got {self.smoothquant_alpha!r}")
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {self.percentile!r}")
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay!r}")

    @property
    def kind(self) -> str:
        """'quant' (vs 'rank' for `RankSpec`)."""
        return "quant"

    @property
    def rotates(self) -> bool:
        """True when the recipe applies a Hadamard rotation."""
        return self.method in ("rotation", "rotation+lsq")

    @property
    def learns_scales(self) -> bool:
        """True for LSQ (quantization-aware training) recipes."""
        return self.method in ("lsq", "rotation+lsq")

    def with_(self, **changes) -> "QuantSpec":
        """A validated copy with some fields changed."""
        return replace(self, **changes)

    def __str__(self) -> str:
        s = f"w{self.w_bits}" + (f"a{self.a_bits}" if self.a_bits is not None else "")
        s += _METHOD_SUFFIX[self.method]
        if self.granularity == "per_group":
            s += f"-g{self.group_size}"
        elif self.granularity == "per_tensor":
            s += "-pt"
        s += _OBSERVER_SUFFIX[self.observer]
        if not self.symmetric:
            s += "-asym"
        if self.scope == "vision+text":
            s += "-vt"
        return s


@dataclass(frozen=True)
class RankSpec:
    """Rank truncation of every linear map: keep an energy share, a fraction of components, or the top k."""

    mode: str = "energy"  # energy | fraction | topk
    value: float = 0.9
    scope: str = "vision"

    def __post_init__(self):
        if self.mode not in ("energy", "fraction", "topk"):
            raise ValueError(f"mode must be 'energy', 'fraction' or 'topk', got {self.mode!r}")
        if self.mode == "topk":
            if not float(self.value).is_integer() or self.value < 1:
                raise ValueError(f"value must be a positive integer rank for mode='topk', got {self.value!r}")
        elif not 0.0 < self.value <= 1.0:
            raise ValueError(f"value must be in (0, 1] for mode={self.mode!r}, got {self.value!r}")
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {self.scope!r}")

    @property
    def kind(self) -> str:
        """'rank' (vs 'quant' for `QuantSpec`)."""
        return "rank"

    def __str__(self) -> str:
        tag = {"energy": "e", "fraction": "f", "topk": "k"}[self.mode]
        value = str(int(self.value)) if self.mode == "topk" else f"{self.value:g}"
        return f"rank-{tag}{value}" + ("-vt" if self.scope == "vision+text" else "")


def _budget_text(value: float) -> str:
    """Shortest decimal form of a bit budget: 4.5 → '4.5', 6.0 → '6'."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


@dataclass(frozen=True)
class MixedSpec:
    """Mixed-precision weights: per-map bits from `choices` averaging at most `avg_bits` (parameter-weighted),
    allocated from spectral sensitivities or at random (seeded); per-channel symmetric RTN weights, per-tensor
    activations at `a_bits` (None = weight-only). See `qclip.quant.mixed` for the allocation."""

    avg_bits: float
    choices: tuple[int, ...] = (4, 6, 8)
    a_bits: int | None = 8
    allocation: str = "spectral"
    seed: int = 0
    scope: str = "vision"
    observer: str = "minmax"
    calib_batches: int = 8

    def __post_init__(self):
        choices = self.choices
        if isinstance(choices, (str, bytes)) or not hasattr(choices, "__iter__"):
            raise ValueError(f"choices must be a collection of bit widths, got {choices!r}")
        choices = tuple(choices)
        if not choices or any(not isinstance(b, int) or isinstance(b, bool) or not 2 <= b <= 8 for b in choices):
            raise ValueError(f"choices must be one or more integer bit widths in 2..8, got {self.choices!r}")
        if len(set(choices)) != len(choices):
            raise ValueError(f"choices must be distinct, got {self.choices!r}")
        object.__setattr__(self, "choices", tuple(sorted(choices)))
        v = self.avg_bits
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v in (float("inf"), float("-inf")):
            raise ValueError(f"avg_bits must be a finite number, got {v!r}")
        lo, hi = self.choices[0], self.choices[-1]
        if not lo <= v <= hi:
            raise ValueError(f"avg_bits must lie within [{lo}, {hi}] (the range of choices {self.choices}), got {v!r}")
        object.__setattr__(self, "avg_bits", float(v))
        if self.a_bits is not None and (not isinstance(self.a_bits, int) or isinstance(self.a_bits, bool)
                                        or not 2 <= self.a_bits <= 8):
            raise ValueError(f"a_bits must be None (weight-only) or an integer in 2..8, got {self.a_bits!r}")
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {self.allocation!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be an integer in 0..{MAX_SEED} (2**32 - 1), got {str(self.seed)[:40]}")
        if self.seed and self.allocation != "random":
            raise ValueError(f"seed only applies to allocation='random' (the spectral allocation is deterministic), "
                             f"got seed={self.seed!r}")
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {self.scope!r}")
        if self.observer not in OBSERVERS:
            raise ValueError(f"observer must be one of {OBSERVERS}, got {self.observer!r}")
        if not isinstance(self.calib_batches, int) or self.calib_batches < 1:
            raise ValueError(f"calib_batches must be a positive integer, got {self.calib_batches!r}")

    @property
    def kind(self) -> str:
        """'mixed' (vs 'quant' for `QuantSpec`, 'rank' for `RankSpec`)."""
        return "mixed"

    @property
    def method(self) -> str:
        """'mixed-spectral' or 'mixed-random': the recipe's name in reports and grid cells."""
        return f"mixed-{self.allocation}"

    @property
    def rotates(self) -> bool:
        """Always False: mixed precision is plain round-to-nearest."""
        return False

    @property
    def learns_scales(self) -> bool:
        """Always False: mixed precision is post-training quantization (no LSQ)."""
        return False

    def with_(self, **changes) -> "MixedSpec":
        """A validated copy with some fields changed."""
        return replace(self, **changes)

    def at_bits(self, w_bits: int) -> QuantSpec:
        """The uniform `QuantSpec` of one bit-width group (per-channel symmetric RTN weights, these activations)."""
        return QuantSpec(w_bits=w_bits, a_bits=self.a_bits, observer=self.observer, scope=self.scope,
                         calib_batches=self.calib_batches)

    def __str__(self) -> str:
        s = f"mp{_budget_text(self.avg_bits)}" + (f"a{self.a_bits}" if self.a_bits not in (None, 8) else "")
        if self.allocation == "random":
            s += "-rand" + (str(self.seed) if self.seed else "")
        if self.choices != (4, 6, 8):
            s += "-c" + "".join(str(b) for b in self.choices)
        if self.a_bits is None:
            s += "-wo"
        s += _OBSERVER_SUFFIX[self.observer]
        if self.scope == "vision+text":
            s += "-vt"
        return s


_HEAD = re.compile(r"^w(\d+)(?:a(\d+))?$")
_RANK = re.compile(r"^rank-([efk])(\d+(?:\.\d+)?)$")
_MIXED = re.compile(r"^mp(\d+(?:\.\d+)?)(?:a(\d+))?$")


def _parse_mixed(text: str, s: str, scope: str) -> MixedSpec:
    head, *tokens = s.split("-")
    m = _MIXED.match(head)
    if not m:
        raise ValueError(f"bad mixed-precision spec {text!r}: expected it to start with mp<avg bits>[a<bits>], "
                         "e.g. mp4.5 or mp6a8")
    kw: dict = {"avg_bits": float(m.group(1)), "a_bits": int(m.group(2)) if m.group(2) else 8, "scope": scope}
    weight_only = False
    for tok in tokens:
        if re.fullmatch(r"rand\d*", tok) and "allocation" not in kw:
            kw["allocation"], kw["seed"] = "random", int(tok[4:] or 0)
        elif re.fullmatch(r"c\d+", tok) and "choices" not in kw:
            kw["choices"] = tuple(int(d) for d in tok[1:])
        elif tok == "wo":
            weight_only = True
        elif tok in _OBSERVER_TOKENS:
            kw["observer"] = _OBSERVER_TOKENS[tok]
        else:
            raise ValueError(f"bad mixed-precision spec {text!r}: unknown or repeated part {tok!r} (expected -rand[seed], "
                             "-c<digits>, -wo, an observer or -vt)")
    if weight_only:
        if m.group(2):
            raise ValueError(f"bad mixed-precision spec {text!r}: -wo (weight-only) contradicts a{m.group(2)}")
        kw["a_bits"] = None
    return MixedSpec(**kw)


def parse_spec(text: str) -> QuantSpec | RankSpec | MixedSpec:
    """Parse `w8a8`, `w4a8-rot-vt`, `w6a8-lsq`, `w4`, `rank-e0.9`, `mp4.5`, ... into a validated spec (ValueError
    if bad)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"empty quantization spec {text!r}")
    s = text.strip().lower()
    scope = "vision"
    if s.endswith("-vt"):
        s, scope = s[:-3], "vision+text"
    if s.startswith("rank-"):
        m = _RANK.match(s)
        if not m:
            raise ValueError(f"bad rank spec {text!r}: expected rank-e0.9, rank-f0.5 or rank-k16")
        mode = {"e": "energy", "f": "fraction", "k": "topk"}[m.group(1)]
        return RankSpec(mode=mode, value=float(m.group(2)), scope=scope)
    if s.startswith("mp"):
        return _parse_mixed(text, s, scope)
    head, *tokens = s.split("-")
    m = _HEAD.match(head)
    if not m:
        raise ValueError(f"bad quantization spec {text!r}: expected it to start with w<bits>[a<bits>], e.g. w8a8")
    kw: dict = {"w_bits": int(m.group(1)), "a_bits": int(m.group(2)) if m.group(2) else None, "scope": scope}
    methods = []
    for tok in tokens:
        if tok in _METHOD_TOKENS:
            methods.append(_METHOD_TOKENS[tok])
        elif tok in _OBSERVER_TOKENS:
            kw["observer"] = _OBSERVER_TOKENS[tok]
        elif re.fullmatch(r"g\d+", tok):
            kw["granularity"], kw["group_size"] = "per_group", int(tok[1:])
        elif tok == "pt":
            kw["granularity"] = "per_tensor"
        elif tok == "asym":
            kw["symmetric"] = False
        else:
            raise ValueError(f"bad quantization spec {text!r}: unknown part {tok!r}")
    if methods:
        if sorted(methods) == ["lsq", "rotation"]:
            kw["method"] = "rotation+lsq"
        elif len(methods) == 1:
            kw["method"] = methods[0]
        else:
            raise ValueError(f"bad quantization spec {text!r}: methods {methods} cannot be combined")
    return QuantSpec(**kw)
