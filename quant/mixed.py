"""Spectrally guided mixed precision: per-map weight bit widths under an average-bit budget (`MixedSpec`, `mp4.5`).

Sensitivity. For a linear map with weight W (a convolution flattened to [out, in·kh·kw]) and a bit width b, let
E_b = Q_b(W) − W be the error of b-bit round-to-nearest, per-output-channel symmetric quantization (exactly
`fake_quantize_weight(W, b)`), and U_k the top-k left singular vectors of W with k = ⌈top_fraction · min(out, in)⌉
(top_fraction = 0.1 by default). The sensitivity is the error energy that lands in that top subspace, relative to
the weight's energy:

    s(W, b) = ‖U_kᵀ E_b‖²_F / ‖W‖²_F

(the `error_top` of `qclip.spectral.weights.error_energy_split(W, Q_b(W), k)`, divided by ‖W‖²_F; computed here in
float64 from one eigendecomposition of the smaller Gram matrix per map, several times faster than an SVD, since
`quant` may not import `spectral`). When k exceeds W's numerical rank (σ ≤ 1e-6·σ_max), the null directions are
left out of U_k rather than filled with arbitrary ones. Quantization noise in the dominant, low-rank subspace is
what moves a layer's function; noise spread over the tail is the benign "damping" of small singular values.

Allocation (`allocate_bits`). Minimise Σ_m s_m(b_m) subject to Σ_m p_m·b_m ≤ avg_bits · Σ_m p_m, b_m ∈ choices,
p_m = the weight's element count. This is a multiple-choice knapsack, solved exactly by dynamic programming over the
budget above all-minimum bits, in units of the gcd of the upgrade costs p_m·(b − min(choices)) (exact for the
ViTs and the demo ResNet: ViT-B/32 has ~10² units, ViT-L/14 ~10⁴, the demo ~10⁵). When maps × units would exceed
`MAX_DP_CELLS` (e.g. RN50 with both towers) the unit is coarsened: costs round *up* and the capacity *down*, so the
result still never exceeds the budget and is optimal for a budget at most (number of maps) coarse units smaller.
Ties go to the lower bit width; the result is deterministic.

Random baseline (`random_bits`). With `torch.Generator().manual_seed(seed)`: draw every map's width uniformly from
`choices` (maps in module order); while over the budget, move a uniformly drawn map that is above the minimum one
choice down; then, while some map's next choice still fits, move a uniformly drawn such map one choice up. The
result is within the budget and as full as single-step upgrades allow, like the spectral allocation.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from fractions import Fraction
from typing import Mapping, Sequence

import torch
from torch import nn

from .primitives import fake_quantize_weight
from .spec import MixedSpec

__all__ = ["TOP_FRACTION", "RANK_RTOL", "MAX_DP_CELLS", "top_rank", "spectral_sensitivity", "sensitivity_table",
           "allocate_bits", "random_bits", "average_bits", "total_sensitivity", "assign_bits"]

#: Share of each map's ranks that forms its "top" singular subspace.
TOP_FRACTION = 0.1
#: Singular values below this share of the largest are treated as zero (their directions are not "top").
RANK_RTOL = 1e-6
#: Largest dynamic-programming table (maps × budget units) solved exactly; larger ones use a coarser cost unit.
MAX_DP_CELLS = 1 << 25


def _check_choices(choices: Sequence[int]) -> tuple[int, ...]:
    out = tuple(sorted(choices))
    if not out or len(set(out)) != len(out) or any(not isinstance(b, int) or not 2 <= b <= 8 for b in out):
        raise ValueError(f"choices must be distinct integer bit widths in 2..8, got {tuple(choices)!r}")
    return out


@contextmanager
def _one_thread():
    """One intra-op thread for small LAPACK calls: multi-threaded SVDs of small matrices slow down by 10-100x when
    the cores are shared (the same policy as `qclip.spectral.weights.svdvals_batched`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def top_rank(shape: Sequence[int], top_fraction: float = TOP_FRACTION) -> int:
    """k = ⌈top_fraction · min(out, in·kh·kw)⌉ (at least 1): the size of a map's top singular subspace."""
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction!r}")
    rows, cols = int(shape[0]), math.prod(int(d) for d in shape[1:])
    return max(1, math.ceil(top_fraction * min(rows, cols) - 1e-9))


def _top_left_subspace(w: torch.Tensor, k: int) -> torch.Tensor:
    """U_k: the top-k left singular vectors of `w` (float64), from the eigenvectors of the smaller Gram matrix;
    directions with σ ≤ RANK_RTOL·σ_max (k beyond the numerical rank) are left out."""
    wide = w.shape[0] <= w.shape[1]
    values, vectors = torch.linalg.eigh(w @ w.T if wide else w.T @ w)
    sigma, vectors = values[-k:].clamp_min(0).sqrt(), vectors[:, -k:]
    keep = sigma > sigma[-1] * RANK_RTOL
    return vectors[:, keep] if wide else (w @ vectors[:, keep]) / sigma[keep]  # u_i = W v_i / σ_i


@torch.no_grad()
def spectral_sensitivity(weight: torch.Tensor, choices: Sequence[int] = (4, 6, 8), *,
                         top_fraction: float = TOP_FRACTION) -> dict[int, float]:
    """s(W, b) = ‖U_kᵀ(Q_b(W) − W)‖²_F / ‖W‖²_F for each b in `choices` (see the module docstring)."""
    choices = _check_choices(choices)
    w = weight.detach().reshape(weight.shape[0], -1).double()
    energy = float((w ** 2).sum())
    if not math.isfinite(energy):
        raise ValueError(f"weight of shape {tuple(weight.shape)} has non-finite entries")
    if energy == 0.0:
        return {b: 0.0 for b in choices}
    with _one_thread():
        u = _top_left_subspace(w, top_rank(weight.shape, top_fraction))
        out = {}
        for b in choices:
            err = fake_quantize_weight(weight.detach(), b).reshape(w.shape).double() - w
            out[b] = float(((u.T @ err) ** 2).sum()) / energy
    return out


def sensitivity_table(modules: Mapping[str, nn.Module], choices: Sequence[int] = (4, 6, 8), *,
                      top_fraction: float = TOP_FRACTION) -> dict[str, dict[int, float]]:
    """`spectral_sensitivity` of every module's weight, by module name."""
    return {name: spectral_sensitivity(m.weight, choices, top_fraction=top_fraction) for name, m in modules.items()}


def _budget(params: Mapping[str, int], avg_bits: float, choices: tuple[int, ...]) -> Fraction:
    """Bits·params available above all-minimum widths (exact; `avg_bits` read as its shortest decimal)."""
    if not params:
        raise ValueError("no maps to allocate bits to")
    bad = {n: p for n, p in params.items() if not isinstance(p, int) or p < 1}
    if bad:
        raise ValueError(f"parameter counts must be positive integers, got {bad}")
    if not choices[0] <= avg_bits <= choices[-1]:
        raise ValueError(f"avg_bits must lie within [{choices[0]}, {choices[-1]}], got {avg_bits!r}")
    return (Fraction(repr(float(avg_bits))) - choices[0]) * sum(params.values())


def allocate_bits(params: Mapping[str, int], sensitivity: Mapping[str, Mapping[int, float]], avg_bits: float,
                  choices: Sequence[int] = (4, 6, 8)) -> dict[str, int]:
    """Bits per map minimising Σ sensitivity with Σ params·bits ≤ avg_bits·Σ params (exact knapsack DP)."""
    choices = _check_choices(choices)
    capacity = _budget(params, avg_bits, choices)
    names = list(params)
    missing = [n for n in names if n not in sensitivity or any(b not in sensitivity[n] for b in choices)]
    if missing:
        raise ValueError(f"sensitivity lacks maps or bit widths {choices}: {missing[:5]}")
    lo, hi = choices[0], choices[-1]
    if capacity >= sum(p * (hi - lo) for p in params.values()):
        return {n: hi for n in names}
    if capacity == 0 or len(choices) == 1:
        return {n: lo for n in names}
    increments = [[params[n] * (b - lo) for b in choices] for n in names]
    unit = 0
    for row in increments:
        for inc in row:
            unit = math.gcd(unit, inc)
    max_units = max(1, MAX_DP_CELLS // len(names))
    if capacity / unit > max_units:  # coarse, conservative grid: costs round up, the capacity rounds down
        unit = math.ceil(capacity / max_units)
    units = math.floor(capacity / unit)
    costs = [[-(-inc // unit) for inc in row] for row in increments]
    sens = torch.tensor([[float(sensitivity[n][b]) for b in choices] for n in names], dtype=torch.float64)
    if not bool(torch.isfinite(sens).all()):
        raise ValueError("sensitivities must be finite")
    best = torch.zeros(units + 1, dtype=torch.float64)  # best[c]: least total sensitivity within c units
    picks = torch.empty(len(names), units + 1, dtype=torch.int8)
    inf = torch.tensor(float("inf"), dtype=torch.float64)
    for i in range(len(names)):
        options = torch.empty(len(choices), units + 1, dtype=torch.float64)
        for j, cost in enumerate(costs[i]):
            options[j] = inf
            if cost <= units:
                options[j, cost:] = best[:units + 1 - cost] + sens[i, j]
        best, picks[i] = options.min(dim=0)  # ties: the first (lowest) bit width
    out, c = {}, units
    for i in range(len(names) - 1, -1, -1):
        j = int(picks[i, c])
        out[names[i]] = choices[j]
        c -= costs[i][j]
    return {n: out[n] for n in names}


def random_bits(params: Mapping[str, int], avg_bits: float, choices: Sequence[int] = (4, 6, 8),
                seed: int = 0) -> dict[str, int]:
    """Seeded random widths repaired to the budget (draw, step down until within, step up while one fits)."""
    choices = _check_choices(choices)
    capacity = _budget(params, avg_bits, choices) + choices[0] * sum(params.values())
    names = list(params)
    gen = torch.Generator().manual_seed(seed)
    level = torch.randint(len(choices), (len(names),), generator=gen).tolist()
    used = sum(params[n] * choices[j] for n, j in zip(names, level))

    def draw(pool: list[int]) -> int:
        return pool[int(torch.randint(len(pool), (1,), generator=gen))]

    while used > capacity:
        i = draw([i for i, j in enumerate(level) if j > 0])
        used -= params[names[i]] * (choices[level[i]] - choices[level[i] - 1])
        level[i] -= 1
    while True:
        fits = [i for i, j in enumerate(level) if j < len(choices) - 1
                and used + params[names[i]] * (choices[j + 1] - choices[j]) <= capacity]
        if not fits:
            break
        i = draw(fits)
        used += params[names[i]] * (choices[level[i] + 1] - choices[level[i]])
        level[i] += 1
    return {n: choices[j] for n, j in zip(names, level)}


def average_bits(params: Mapping[str, int], bits: Mapping[str, int]) -> float:
    """Σ params·bits / Σ params: the parameter-weighted average weight width."""
    total = sum(params.values())
    if not total:
        raise ValueError("no parameters to average over")
    return sum(params[n] * bits[n] for n in params) / total


def total_sensitivity(sensitivity: Mapping[str, Mapping[int, float]], bits: Mapping[str, int]) -> float:
    """Σ_m s_m(bits_m): the objective the spectral allocation minimises."""
    return sum(float(sensitivity[n][b]) for n, b in bits.items())


def assign_bits(modules: Mapping[str, nn.Module], spec: MixedSpec, *,
                top_fraction: float = TOP_FRACTION) -> dict[str, int]:
    """The weight width of every module under `spec` (spectral: `allocate_bits`; random: `random_bits`)."""
    if not isinstance(spec, MixedSpec):
        raise TypeError(f"spec must be a MixedSpec, got {type(spec).__name__}")
    params = {name: int(m.weight.numel()) for name, m in modules.items()}
    if spec.allocation == "random":
        return random_bits(params, spec.avg_bits, spec.choices, spec.seed)
    table = sensitivity_table(modules, spec.choices, top_fraction=top_fraction)
    return allocate_bits(params, table, spec.avg_bits, spec.choices)
