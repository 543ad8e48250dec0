"""Differentiable spectral penalties for training: tail energy beyond rank k (weights and centred batch features),
nuclear norm, and the top singular value by power iteration, with cheap estimators and a refresh interval.

Definitions (W flattened to a matrix [out, in·kh·kw], σ sorted descending, r = min(out, in)):
- tail energy beyond rank k: T_k(W) = Σ_{i>k} σ_i² = ‖W‖²_F − Σ_{i≤k} σ_i², the squared Frobenius error of the best
  rank-k approximation (Eckart–Young); `normalized=True` divides by ‖W‖²_F, giving a value in [0, 1];
- its gradient where σ_k > σ_{k+1}: ∇T_k = 2 (W − U_k U_kᵀ W) = 2 (I − U_k U_kᵀ) W;
- projected tail at a fixed orthonormal basis B [r_side, k]: T_B(W) = ‖W‖²_F − ‖Bᵀ W‖²_F (left basis) or
  ‖W‖²_F − ‖W B‖²_F (right basis). With B held constant its gradient is exactly 2 (I − B Bᵀ) W (or
  2 W (I − B Bᵀ)); at the true top-k subspace it equals both T_k and ∇T_k (envelope theorem), and by Ky Fan's
  maximum principle T_B(W) ≥ T_k(W) for every B, so a stale or approximate basis gives an upper bound.

Bases live on the smaller side of the matrix: left singular vectors [out, k] when out ≤ in, right singular
vectors [in, k] otherwise. Computation runs in float32 (float64 inputs stay float64); the projected form
‖W‖²_F − ‖BᵀW‖²_F is accurate to about eps·‖W‖²_F in absolute terms (normalized: ~1e-7 in float32).

`SpectralTailPenalty` computes each matrix's basis (method "lowrank": `torch.svd_lowrank`; "exact": full SVD;
"gram": eigh of the smaller Gram) once every `refresh_every` calls, batched by shape, and between refreshes
evaluates T_B at the cached basis: one [k, side] × [side, other] matmul per matrix, and an upper bound on T_k.
With refresh_every=1 and method "exact" it is T_k itself with its exact gradient. svd_lowrank pays off for
k ≪ min(out, in); for k a large fraction of the rank, "gram" is usually the cheaper refresh.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from einops import rearrange

__all__ = ["rank_spec", "resolve_rank", "top_subspace", "projected_tail_energy", "tail_energy", "feature_tail_energy",
           "nuclear_norm", "PowerIterationState", "top_singular_value", "SpectralTailPenalty"]

_TAIL_METHODS = ("exact", "lowrank", "gram")


def _matrix(weight: torch.Tensor) -> torch.Tensor:
    """A weight as a matrix [out, in·kh·kw] in the compute dtype, keeping the autograd graph."""
    if weight.ndim < 2:
        raise ValueError(f"a weight matrix needs at least 2 dims, got shape {tuple(weight.shape)}")
    m = rearrange(weight, "o ... -> o (...)")
    return m if m.dtype == torch.float64 else m.float()


def _check_method(method: str) -> None:
    if method not in _TAIL_METHODS:
        raise ValueError(f"method must be one of {_TAIL_METHODS}, got {method!r}")


def _finish(tail: torch.Tensor, total: torch.Tensor, normalized: bool) -> torch.Tensor:
    tail = tail.clamp(min=0)
    return tail / total.clamp(min=torch.finfo(total.dtype).tiny) if normalized else tail


def rank_spec(k: int | float) -> int | float:
    """The one rank rule for user-given k: k >= 1 is a rank (an int), k in (0, 1) a fraction of the full rank."""
    if isinstance(k, bool) or not isinstance(k, (int, float)):
        raise TypeError(f"k must be an int rank or a float fraction in (0, 1), got {k!r}")
    return int(k) if k >= 1 else float(k)


def resolve_rank(k: int | float, full: int) -> int:
    """An int rank (capped at `full`), or a float in (0, 1) as a fraction of `full` (rounded, at least 1)."""
    if isinstance(k, bool):
        raise TypeError("k must be an int rank or a float fraction in (0, 1), not a bool")
    if isinstance(k, int):
        if k < 0:
            raise ValueError(f"rank k must be >= 0, got {k}")
        return min(k, full)
    if isinstance(k, float):
        if not 0.0 < k < 1.0:
            raise ValueError(f"a float k is a fraction of the full rank and must lie in (0, 1), got {k}")
        return min(full, max(1, round(k * full)))
    raise TypeError(f"k must be an int or a float, got {type(k).__name__}")


@torch.no_grad()
def _top_basis(stack: torch.Tensor, k: int, *, method: str, niter: int, oversample: int) -> torch.Tensor:
    """Orthonormal top-k singular bases [B, side, k] of a detached stack [B, m, n], on the smaller side."""
    _check_method(method)
    m, n = stack.shape[-2:]
    left = m <= n
    a = stack.detach()
    if method == "exact":
        u, _, vh = torch.linalg.svd(a, full_matrices=False)
        basis = u[..., :k] if left else vh[..., :k, :].mT
    elif method == "gram":
        gram = a @ a.mT if left else a.mT @ a
        basis = torch.linalg.eigh(gram).eigenvectors[..., -k:].flip(-1)
    else:
        q = min(k + oversample, m, n)
        u, _, v = torch.svd_lowrank(a, q=q, niter=niter)
        basis = u[..., :k] if left else v[..., :k]
    return basis.contiguous()


def top_subspace(weight: torch.Tensor, k: int | float, *, method: str = "lowrank", niter: int = 2,
                 oversample: int = 8) -> torch.Tensor:
    """A detached orthonormal top-k singular basis of the flattened weight, on its smaller side ([side, k])."""
    mat = _matrix(weight)
    kk = resolve_rank(k, min(mat.shape))
    return _top_basis(mat[None], kk, method=method, niter=niter, oversample=oversample)[0]


def projected_tail_energy(weight: torch.Tensor, basis: torch.Tensor, *, normalized: bool = True) -> torch.Tensor:
    """‖W‖²_F − ‖Bᵀ W‖²_F for a constant orthonormal basis B on W's smaller side; gradient 2 (I − B Bᵀ) W."""
    mat = _matrix(weight)
    rows, cols = mat.shape
    side = rows if rows <= cols else cols
    if basis.ndim != 2 or basis.shape[0] != side:
        raise ValueError(f"basis must be [{side}, k] for a {rows}x{cols} matrix, got {tuple(basis.shape)}")
    b = basis.detach().to(mat.dtype)
    head = (b.mT @ mat if rows <= cols else mat @ b).square().sum()
    total = mat.square().sum()
    return _finish(total - head, total, normalized)


def tail_energy(weight: torch.Tensor, k: int | float, *, normalized: bool = True, method: str = "exact",
                niter: int = 2, oversample: int = 8) -> torch.Tensor:
    """Differentiable Σ_{i>k} σ_i² of the flattened weight (divided by ‖W‖²_F when normalized).

    method "exact": `torch.linalg.svdvals` (the tail sum directly, no cancellation). "gram": eigenvalues of the
    smaller Gram matrix (cheaper; absolute error ~ eps·σ_max²). "lowrank": ‖W‖²_F − ‖U_kᵀ W‖²_F with U_k from
    `torch.svd_lowrank(W, q=k+oversample, niter)` held constant, so the gradient is the exact gradient of the
    tail energy at that fixed subspace, 2 (I − U_k U_kᵀ) W; its value is never below the exact tail (Ky Fan) and
    matches it closely when the spectrum has a gap at k. A k ≥ min(out, in) gives 0.
    """
    _check_method(method)
    mat = _matrix(weight)
    r = min(mat.shape)
    kk = resolve_rank(k, r)
    if kk >= r:
        return mat.new_zeros(())
    total = mat.square().sum()
    if method == "exact":
        tail = torch.linalg.svdvals(mat)[kk:].square().sum()
    elif method == "gram":
        gram = mat @ mat.mT if mat.shape[0] <= mat.shape[1] else mat.mT @ mat
        tail = torch.linalg.eigvalsh(gram)[: r - kk].sum()
    else:
        return projected_tail_energy(mat, _top_basis(mat[None], kk, method="lowrank", niter=niter,
                                                     oversample=oversample)[0], normalized=normalized)
    return _finish(tail, total, normalized)


def feature_tail_energy(features: torch.Tensor, k: int | float, *, normalized: bool = True,
                        method: str = "gram") -> torch.Tensor:
    """Differentiable energy beyond rank k of the centred batch features [N, D] (N×N or D×D Gram by default)."""
    if features.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {tuple(features.shape)}")
    feats = features if features.dtype == torch.float64 else features.float()
    return tail_energy(feats - feats.mean(dim=0, keepdim=True), k, normalized=normalized, method=method)


def nuclear_norm(weight: torch.Tensor) -> torch.Tensor:
    """Σ σ_i of the flattened weight (differentiable; gradient U Vᵀ where W has full rank)."""
    return torch.linalg.matrix_norm(_matrix(weight), ord="nuc")


@dataclass
class PowerIterationState:
    """Persistent power-iteration vectors (u [out], v [in]) and the iterations the last call ran."""

    u: torch.Tensor
    v: torch.Tensor
    iterations: int = 0


def top_singular_value(weight: torch.Tensor, *, n_iter: int = 20, state: PowerIterationState | None = None,
                       tol: float | None = None) -> tuple[torch.Tensor, PowerIterationState]:
    """σ_max by power iteration on WᵀW, warm-started from `state`; differentiable as uᵀ W v (gradient u vᵀ).

    Runs `n_iter` iterations, or stops once the estimate changes by at most `tol`·σ between two iterations
    (`tol` costs a host sync per iteration). u and v are detached, as in `torch.nn.utils.spectral_norm`.
    """
    if n_iter < 1:
        raise ValueError(f"n_iter must be >= 1, got {n_iter}")
    mat = _matrix(weight)
    with torch.no_grad():
        a = mat.detach()
        if state is None:
            u = torch.nn.functional.normalize(torch.randn(a.shape[0], dtype=a.dtype, device=a.device), dim=0)
        else:
            if state.u.shape != (a.shape[0],) or state.v.shape != (a.shape[1],):
                raise ValueError(f"state vectors {tuple(state.u.shape)}, {tuple(state.v.shape)} do not fit a "
                                 f"{a.shape[0]}x{a.shape[1]} matrix")
            u = state.u.to(device=a.device, dtype=a.dtype)
        prev, done = None, 0
        for done in range(1, n_iter + 1):
            v = torch.nn.functional.normalize(a.mT @ u, dim=0)
            mv = a @ v
            u = torch.nn.functional.normalize(mv, dim=0)
            if tol is not None:
                est = float(mv.norm())
                if prev is not None and abs(est - prev) <= tol * est:
                    break
                prev = est
    sigma = u @ mat @ v
    return sigma, PowerIterationState(u=u, v=v, iterations=done)


class SpectralTailPenalty(torch.nn.Module):
    """Mean tail energy beyond rank k over weight matrices, with top-k bases cached between refreshes."""

    def __init__(self, *, k: int | float, refresh_every: int = 10, method: str = "lowrank", normalized: bool = True,
                 niter: int = 2, oversample: int = 8) -> None:
        super().__init__()
        resolve_rank(k, 1)  # validates the type and range of k
        _check_method(method)
        if refresh_every < 1:
            raise ValueError(f"refresh_every must be >= 1, got {refresh_every}")
        self.k, self.refresh_every, self.method, self.normalized = k, refresh_every, method, normalized
        self.niter, self.oversample = niter, oversample
        self.calls = 0
        self.refresh_count = 0
        self._bases: dict[str, torch.Tensor] = {}
        self._last_names: list[str] = []
        self._last: torch.Tensor | None = None

    def extra_repr(self) -> str:
        """The settings, for printing."""
        return (f"k={self.k}, refresh_every={self.refresh_every}, method={self.method!r}, "
                f"normalized={self.normalized}")

    @property
    def last_values(self) -> dict[str, float]:
        """Per-matrix penalty values of the last forward, as floats (one host sync, on access)."""
        return {} if self._last is None else dict(zip(self._last_names, self._last.tolist()))

    def get_extra_state(self) -> dict:
        """The call counter and cached bases (in the state dict, so a resumed training refreshes on schedule)."""
        return {"calls": self.calls, "refresh_count": self.refresh_count, "bases": dict(self._bases)}

    def set_extra_state(self, state: dict) -> None:
        """Restore what `get_extra_state` saved."""
        self.calls, self.refresh_count = int(state["calls"]), int(state["refresh_count"])
        self._bases = dict(state["bases"])

    def reset(self) -> None:
        """Drop the cached bases and the call counter, so the next forward refreshes."""
        self._bases.clear()
        self.calls = 0

    def _stale(self, name: str, mat: torch.Tensor, k: int) -> bool:
        basis = self._bases.get(name)
        if basis is not None and basis.device != mat.device:  # e.g. restored from a checkpoint on the CPU
            self._bases[name] = basis = basis.to(mat.device)
        return basis is None or basis.shape != (min(mat.shape), k)

    def _refresh(self, mats: dict[str, torch.Tensor], ranks: dict[str, int]) -> None:
        groups: dict[tuple, list[str]] = defaultdict(list)
        for name, mat in mats.items():
            groups[(tuple(mat.shape), mat.dtype, mat.device, ranks[name])].append(name)
        for (_, _, _, k), names in groups.items():
            stack = torch.stack([mats[n].detach() for n in names])
            bases = _top_basis(stack, k, method=self.method, niter=self.niter, oversample=self.oversample)
            self._bases.update(zip(names, bases.unbind(0)))
        self.refresh_count += 1

    def forward(self, weights: Mapping[str, torch.Tensor] | Sequence[torch.Tensor]) -> torch.Tensor:
        """Mean (normalized) tail energy over the matrices; ones with min(out, in) ≤ k count as 0."""
        items = (list(weights.items()) if isinstance(weights, Mapping)
                 else [(str(i), w) for i, w in enumerate(weights)])
        if not items:
            raise ValueError("SpectralTailPenalty needs at least one weight")
        mats = {name: _matrix(w) for name, w in items}
        ranks = {name: resolve_rank(self.k, min(m.shape)) for name, m in mats.items()}
        due = self.calls % self.refresh_every == 0
        self.calls += 1
        stale = {n: m for n, m in mats.items() if ranks[n] < min(m.shape) and (due or self._stale(n, m, ranks[n]))}
        if stale:
            self._refresh(stale, ranks)
        values = [projected_tail_energy(m, self._bases[n], normalized=self.normalized)
                  if ranks[n] < min(m.shape) else m.new_zeros(()) for n, m in mats.items()]
        dtype = values[0].dtype
        for v in values[1:]:
            dtype = torch.promote_types(dtype, v.dtype)
        stacked = torch.stack([v.to(dtype) for v in values])
        self._last_names, self._last = list(mats), stacked.detach()
        return stacked.mean()
