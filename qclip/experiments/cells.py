"""Reading stored grid-cell records (`qclip.io.records.CellRecord`): field access that tolerates missing parts,
the FP reference of each (model, pretrained, seed) group, the report's cell order, and the flat per-cell scalars
that tables, plots and findings share. Writes nothing.
"""

from __future__ import annotations

import math
import re

from qclip.io.records import CellInfo, CellRecord

__all__ = ["cell_of", "spectral_of", "num", "mean", "delta", "group_of", "references", "ordered", "band_order",
           "dataset_names", "sort_key", "scalars", "damping_mean", "ROLES", "QUANT_KINDS"]

# role -> (metrics key, datasets key, metric names); OOD rows read the MCM score's entry
ROLES = {"ood": ("ood", "ood", ("auroc", "aupr", "fpr95")), "corruption": ("corruptions", "corruptions",
         ("acc1", "ece", "nll", "brier")), "shift": ("shift", "shift", ("acc1", "ece"))}
_KIND_ORDER = {"fp": 0, "quant": 1, "int": 1, "rank-match": 2, "rank": 3, "qat": 4}  # int: right after its quant
_METHOD_ORDER = {None: 0, "rtn": 0, "smoothquant": 1, "rotation": 2, "lsq": 3, "rotation+lsq": 4}
_NOISE = ("gaussian_noise", "shot_noise", "impulse_noise")
QUANT_KINDS = ("quant", "qat")


def cell_of(rec: CellRecord) -> CellInfo | dict:
    """The record's cell (an empty dict when absent)."""
    return rec.get("cell") or {}


def spectral_of(rec: CellRecord, key: str):
    """One field of the record's spectral summary (None when absent)."""
    return (rec.get("spectral") or {}).get(key)


def num(x) -> float | None:
    """A finite number as float, else None (bools, None, NaN, strings)."""
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def mean(values) -> float | None:
    """Mean of the values that are not None (None when there are none)."""
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def delta(fp: float | None, q: float | None) -> float | None:
    """δ = (fp − q)/fp, None when either side is missing or fp == 0."""
    return None if fp is None or q is None or fp == 0 else (fp - q) / fp


def group_of(rec: CellRecord) -> tuple:
    """(model, pretrained, seed): the cells that share one FP reference."""
    c = cell_of(rec)
    return c.get("model"), c.get("pretrained"), c.get("seed")


def references(records: list[CellRecord]) -> dict[tuple, dict]:
    """The FP record of each (model, pretrained, seed) group (the first one, if several)."""
    refs: dict[tuple, dict] = {}
    for rec in records:
        if cell_of(rec).get("kind") == "fp":
            refs.setdefault(group_of(rec), rec)
    return refs


def ordered(keys, preferred) -> list[str]:
    """`keys` in the order of `preferred` (the grid's dataset lists), then the rest in their own order."""
    keys = list(keys)
    return [k for k in (preferred or []) if k in keys] + [k for k in keys if k not in (preferred or [])]


def band_order(keys) -> list[str]:
    """Rank bands by their first rank ("0-8", "8-64", "64+"), anything else ("all") after them."""
    def key(b: str) -> tuple:
        m = re.match(r"(\d+)", b)
        return (0, int(m.group(1))) if m else (1, 0)

    return sorted(dict.fromkeys(keys), key=key)


def dataset_names(records: list[CellRecord], role: str) -> list[str]:
    """Dataset names of a role (`ood`, `corruption`, `shift`) across all records, grid order first."""
    mkey, dkey, _ = ROLES[role]
    names: dict[str, None] = {}
    for rec in records:
        names.update(dict.fromkeys(ordered((rec.get("metrics") or {}).get(mkey) or {},
                                            (rec.get("datasets") or {}).get(dkey))))
    return list(names)


def sort_key(rec: CellRecord) -> tuple:
    """FP, quant (scope, method, bits high→low; each followed by its integer cell), rank-match (as its quant), rank
    (scope, kept high→low), qat."""
    c = cell_of(rec)
    kind, variant = c.get("kind"), str(c.get("variant", ""))
    if kind == "rank-match":
        variant = variant.split(":", 1)[-1]
    key: tuple = ()
    if kind in ("quant", "rank-match", "int"):
        m = re.match(r"w(\d+(?:\.\d+)?)(?:a(\d+))?", c.get("bits") or variant)
        w, a = (float(m.group(1)), int(m.group(2) or 32)) if m else (0.0, 0)
        key = (_METHOD_ORDER.get(c.get("method"), 9), str(c.get("method")), -w, -a, variant.split(":")[-1],
               kind == "int")
    elif kind == "rank":
        m = re.match(r"rank-([a-z])([\d.]+)", variant)
        key = (m.group(1), -float(m.group(2))) if m else ("", 0.0)
    g = group_of(rec)
    return (str(g[0]), str(g[1]), g[2] if isinstance(g[2], int) else 0, _KIND_ORDER.get(kind, 9),
            str(c.get("scope") or ""), key, variant)


def scalars(rec: CellRecord) -> dict[str, float | None]:
    """Flat per-cell numbers used by the tables, plots and findings (MCM AUROC/FPR95, dataset means)."""
    m = rec.get("metrics") or {}
    out = {k: num(m.get(k)) for k in ("acc1", "ece", "ece_ts", "nll", "ece_floor", "ece_floor_sd")}
    for name, scores in (m.get("ood") or {}).items():
        for k in ("auroc", "fpr95"):
            out[f"{k}:{name}"] = num(((scores or {}).get("mcm") or {}).get(k))
    out["auroc"] = mean(v for k, v in out.items() if k.startswith("auroc:"))
    corr = m.get("corruptions") or {}
    out["corr_acc"] = mean(num(v.get("acc1")) for v in corr.values())
    out["shift_acc"] = mean(num(v.get("acc1")) for v in (m.get("shift") or {}).values())
    clean = out["acc1"]
    out["noise_retained"] = mean(num(v.get("acc1")) / clean for k, v in corr.items()
                                  if k.split(":")[0] in _NOISE and clean and num(v.get("acc1")) is not None)
    out["wre"] = num(spectral_of(rec, "weight_rel_error"))
    return out


def damping_mean(rec: CellRecord, inside) -> float | None:
    """Mean binned σ_variant/σ_fp over the rank fractions `inside(x)` selects (None without damping data)."""
    d = spectral_of(rec, "damping") or {}
    return mean(num(v) for x, v in zip(d.get("rank_fraction") or [], d.get("ratio") or []) if inside(x))
