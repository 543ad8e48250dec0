"""Quantization-induced change: relative change δ, robustness-to-spurious gap (RSG), ΔRSG and additive vulnerability.

Sign convention: δ = (fp − q)/fp is positive when the quantized model q is worse than the full-precision model fp
on a higher-is-better metric. RSG compares accuracy on common (N) and counter-spurious (C) groups.
"""

from __future__ import annotations

from numbers import Real
from typing import Any, Mapping

__all__ = ["relative_change", "rsg", "delta_rsg", "vuln_add", "relative_changes"]


def relative_change(fp: float, q: float) -> float:
    """δ = (fp − q)/fp: relative degradation of q w.r.t. fp (positive = q lower); ValueError when fp == 0."""
    if fp == 0:
        raise ValueError("relative change is undefined for a full-precision value of 0")
    return (fp - q) / fp


def rsg(acc_common: float, acc_counter: float) -> float:
    """Robustness-to-spurious gap (A_N − A_C)/A_N from common (A_N) and counter-spurious (A_C) accuracies."""
    if acc_common == 0:
        raise ValueError("RSG is undefined for a common-group accuracy of 0")
    return (acc_common - acc_counter) / acc_common


def delta_rsg(fp_common: float, fp_counter: float, q_common: float, q_counter: float) -> float:
    """ΔRSG = RSG(q) − RSG(fp): positive when quantization widens the common vs counter-spurious gap."""
    return rsg(q_common, q_counter) - rsg(fp_common, fp_counter)


def vuln_add(fp_common: float, fp_counter: float, q_common: float, q_counter: float) -> float:
    """Additive vulnerability δ_C − δ_N: how much more quantization degrades the counter-spurious group."""
    return relative_change(fp_counter, q_counter) - relative_change(fp_common, q_common)


def _is_number(x: Any) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool)


def relative_changes(fp: Mapping[str, Any], q: Mapping[str, Any]) -> dict[str, Any]:
    """δ for every numeric leaf of nested metric dicts present in both; fp == 0 gives None.

    Keys missing from either side and non-numeric leaves (strings, lists, None, bools) are skipped, and so
    are sub-dicts left empty by skipping. NaN leaves propagate as NaN.
    """
    out: dict[str, Any] = {}
    for key, a in fp.items():
        if key not in q:
            continue
        b = q[key]
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            sub = relative_changes(a, b)
            if sub:
                out[key] = sub
        elif _is_number(a) and _is_number(b):
            out[key] = None if a == 0 else relative_change(float(a), float(b))
    return out
