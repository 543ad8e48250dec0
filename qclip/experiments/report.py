"""The report of an ablation grid: a tidy `results.csv`, `report.md` with tables, PNG plots, the paper's claims tested.

Conventions (stated in the report too): δ(D) = (A_fp − A_q)/A_fp against the FP cell of the same (model,
pretrained, seed) group, so a positive δ means the metric went down (worse accuracy, better ECE). OOD detection
treats ID as positive; FPR95 is the share of OOD accepted at 95% ID recall (MCM convention), scored with
MCM = softmax(cos/T), T=1. A cell is a "quant cell" when its kind is `quant` or `qat`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from pathlib import Path
from statistics import median

from matplotlib.figure import Figure

from qclip.io.paths import atomic_write_text

from .plots import plot_band_accuracy, save_figure

__all__ = ["findings", "tidy_rows", "write_report"]

_CELL_COLUMNS = ["cell_id", "model", "seed", "variant", "kind", "method", "bits", "scope", "weight_rel_error"]
_METRICS = ["acc1", "acc5", "ece", "ece_ts", "nll", "brier", "auroc", "aupr", "fpr95", "rsg"]
CSV_COLUMNS = [*_CELL_COLUMNS, "role", "dataset", *_METRICS, *(f"delta_{m}" for m in _METRICS)]
# role -> (metrics key, datasets key, metric names); OOD rows read the MCM score's entry
_ROLES = {"ood": ("ood", "ood", ("auroc", "aupr", "fpr95")), "corruption": ("corruptions", "corruptions",
          ("acc1", "ece", "nll", "brier")), "shift": ("shift", "shift", ("acc1", "ece"))}
_KIND_ORDER = {"fp": 0, "quant": 1, "rank-match": 2, "rank": 3, "qat": 4}
_METHOD_ORDER = {None: 0, "rtn": 0, "smoothquant": 1, "rotation": 2, "lsq": 3, "rotation+lsq": 4}
_NOISE = ("gaussian_noise", "shot_noise", "impulse_noise")
_QUANT = ("quant", "qat")
CONVENTIONS = ("δ(D) = (A_fp − A_q)/A_fp against the FP cell of the same (model, pretrained, seed): a **positive δ "
               "means the metric decreased** vs FP (worse for accuracy/AUROC, better for ECE/NLL/FPR95). "
               "OOD: ID is the positive class; FPR95 = share of OOD accepted at 95% ID recall (MCM convention); "
               "scores are MCM = softmax(cos/T), T=1. ECE uses 15 equal-width bins on softmax(logit_scale·cos); "
               "ECE-TS is ECE after logit-scale tuning.")


# ------------------------------------------------------------------------------------------------ record access
def _cell(rec: dict) -> dict:
    return rec.get("cell") or {}


def _spectral(rec: dict, key: str):
    return (rec.get("spectral") or {}).get(key)


def _num(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _delta(fp: float | None, q: float | None) -> float | None:
    """δ = (fp − q)/fp, None when either side is missing or fp == 0."""
    return None if fp is None or q is None or fp == 0 else (fp - q) / fp


def _group(rec: dict) -> tuple:
    c = _cell(rec)
    return c.get("model"), c.get("pretrained"), c.get("seed")


def _references(records: list[dict]) -> dict[tuple, dict]:
    """The FP record of each (model, pretrained, seed) group (the first one, if several)."""
    refs: dict[tuple, dict] = {}
    for rec in records:
        if _cell(rec).get("kind") == "fp":
            refs.setdefault(_group(rec), rec)
    return refs


def _ordered(keys, preferred) -> list[str]:
    """`keys` in the order of `preferred` (the grid's dataset lists), then the rest in their own order."""
    keys = list(keys)
    return [k for k in (preferred or []) if k in keys] + [k for k in keys if k not in (preferred or [])]


def _band_order(keys) -> list[str]:
    """Rank bands by their first rank ("0-8", "8-64", "64+"), anything else ("all") after them."""
    def key(b: str) -> tuple:
        m = re.match(r"(\d+)", b)
        return (0, int(m.group(1))) if m else (1, 0)

    return sorted(dict.fromkeys(keys), key=key)


def _names(records: list[dict], role: str) -> list[str]:
    """Dataset names of a role (`ood`, `corruption`, `shift`) across all records, grid order first."""
    mkey, dkey, _ = _ROLES[role]
    names: dict[str, None] = {}
    for rec in records:
        names.update(dict.fromkeys(_ordered((rec.get("metrics") or {}).get(mkey) or {},
                                            (rec.get("datasets") or {}).get(dkey))))
    return list(names)


def _sort_key(rec: dict) -> tuple:
    """FP, quant (scope, method, bits high→low), rank-match (as its quant), rank (scope, kept high→low), qat."""
    c = _cell(rec)
    kind, variant = c.get("kind"), str(c.get("variant", ""))
    if kind == "rank-match":
        variant = variant.split(":", 1)[-1]
    key: tuple = ()
    if kind in ("quant", "rank-match"):
        m = re.match(r"w(\d+)(?:a(\d+))?", c.get("bits") or variant)
        w, a = (int(m.group(1)), int(m.group(2) or 32)) if m else (0, 0)
        key = (_METHOD_ORDER.get(c.get("method"), 9), str(c.get("method")), -w, -a)
    elif kind == "rank":
        m = re.match(r"rank-([a-z])([\d.]+)", variant)
        key = (m.group(1), -float(m.group(2))) if m else ("", 0.0)
    g = _group(rec)
    return (str(g[0]), str(g[1]), g[2] if isinstance(g[2], int) else 0, _KIND_ORDER.get(kind, 9),
            str(c.get("scope") or ""), key, variant)


def _scalars(rec: dict) -> dict[str, float | None]:
    """Flat per-cell numbers used by the tables, plots and findings (MCM AUROC/FPR95, dataset means)."""
    m = rec.get("metrics") or {}
    out = {k: _num(m.get(k)) for k in ("acc1", "ece", "ece_ts", "nll", "ece_floor", "ece_floor_sd")}
    for name, scores in (m.get("ood") or {}).items():
        for k in ("auroc", "fpr95"):
            out[f"{k}:{name}"] = _num(((scores or {}).get("mcm") or {}).get(k))
    out["auroc"] = _mean(v for k, v in out.items() if k.startswith("auroc:"))
    corr = m.get("corruptions") or {}
    out["corr_acc"] = _mean(_num(v.get("acc1")) for v in corr.values())
    out["shift_acc"] = _mean(_num(v.get("acc1")) for v in (m.get("shift") or {}).values())
    clean = out["acc1"]
    out["noise_retained"] = _mean(_num(v.get("acc1")) / clean for k, v in corr.items()
                                  if k.split(":")[0] in _NOISE and clean and _num(v.get("acc1")) is not None)
    out["wre"] = _num(_spectral(rec, "weight_rel_error"))
    return out


# ------------------------------------------------------------------------------------------------ tidy CSV rows
def _record_rows(rec: dict) -> list[dict]:
    c, m, ds = _cell(rec), rec.get("metrics") or {}, rec.get("datasets") or {}
    base = {"cell_id": c.get("id"), "model": c.get("model"), "seed": c.get("seed"), "variant": c.get("variant"),
            "kind": c.get("kind"), "method": c.get("method"), "bits": c.get("bits"), "scope": c.get("scope"),
            "weight_rel_error": _spectral(rec, "weight_rel_error")}
    rows = [{**base, "role": "id", "dataset": ds.get("id"),
             **{k: m.get(k) for k in ("acc1", "acc5", "ece", "ece_ts", "nll", "brier")}}]
    for role, (mkey, dkey, keys) in _ROLES.items():
        block = m.get(mkey) or {}
        for name in _ordered(block, ds.get(dkey)):
            values = block[name] or {}
            values = (values.get("mcm") or {}) if role == "ood" else values
            rows.append({**base, "role": role, "dataset": name, **{k: values.get(k) for k in keys}})
    if m.get("spurious"):
        rows.append({**base, "role": "spurious", "dataset": "|".join(ds.get("spurious") or []) or "spurious",
                     "rsg": m["spurious"].get("rsg")})
    return rows


def tidy_rows(records: list[dict]) -> list[dict]:
    """One row per cell × dataset (role id/ood/corruption/shift/spurious) with the metrics and δ vs FP."""
    refs = _references(records)
    ref_rows = {g: {(r["role"], r["dataset"]): r for r in _record_rows(fp)} for g, fp in refs.items()}
    out = []
    for rec in sorted(records, key=_sort_key):
        refs_of = {} if _cell(rec).get("kind") == "fp" else ref_rows.get(_group(rec), {})
        for row in _record_rows(rec):
            fp_row = refs_of.get((row["role"], row["dataset"]), {})
            full = {col: row.get(col) for col in CSV_COLUMNS}
            full.update({f"delta_{k}": _delta(_num(fp_row.get(k)), _num(row.get(k))) for k in _METRICS})
            out.append(full)
    return out


# ------------------------------------------------------------------------------------------------ findings
def _verdict(key: str, claim: str, flags: list[bool], evidence: str, missing: str) -> dict:
    """A finding from per-cell yes/no flags: holds when a strict majority agrees; None when nothing to compare."""
    n, k = len(flags), sum(flags)
    if not n:
        return {"key": key, "claim": claim, "holds": None, "evidence": f"not measured: {missing}", "n": 0, "agree": 0}
    return {"key": key, "claim": claim, "holds": k * 2 > n, "evidence": evidence.format(k=k, n=n), "n": n, "agree": k}


def _scalar_pairs(records: list[dict]) -> list[tuple[dict, dict]]:
    """(quant `_scalars`, FP `_scalars`) of every quant/qat cell whose group has an FP reference."""
    refs = _references(records)
    return [(_scalars(rec), _scalars(refs[_group(rec)])) for rec in sorted(records, key=_sort_key)
            if _cell(rec).get("kind") in _QUANT and _group(rec) in refs]


def _pairs(records: list[dict], metric: str) -> list[tuple[float, float]]:
    """(quant value, FP value) of a `_scalars` metric for every quant/qat cell whose group has an FP reference."""
    return [(q[metric], f[metric]) for q, f in _scalar_pairs(records)
            if q[metric] is not None and f[metric] is not None]


def _compare(key: str, claim: str, metric: str, better, verb: str, what: str, missing: str):
    """A claim that compares a `_scalars` metric of each quant cell with its FP reference."""
    def run(records: list[dict]) -> dict:
        pairs = _pairs(records, metric)
        med = (f"; median {what}: {median(q for q, _ in pairs):.4f} (quant) vs {median(f for _, f in pairs):.4f} (FP)"
               if pairs else "")
        return _verdict(key, claim, [better(q, f) for q, f in pairs], "{k}/{n} quant cells " + verb + med, missing)
    return run


_calibration_vote = _compare("calibration", "Quantization improves calibration (lower ECE)", "ece", lambda q, f: q < f,
                             "have lower ECE than FP", "ECE", "no quant cell with an FP reference")


def _calibration_finding(records: list[dict]) -> dict:
    """The ECE vote, plus how many quant cells beat FP by more than 2 sd of the calibrated-ECE noise floor."""
    out = _calibration_vote(records)
    gaps = [(q["ece"], f["ece"], q["ece_floor"], q["ece_floor_sd"]) for q, f in _scalar_pairs(records)
            if None not in (q["ece"], f["ece"], q["ece_floor"], q["ece_floor_sd"])]
    if gaps:
        resolved = sum(q < f - 2 * sd for q, f, _, sd in gaps)
        out["evidence"] += (f"; {resolved}/{len(gaps)} by more than 2 sd of the ECE a perfectly calibrated model "
                            f"shows at this N (median {median(g[2] for g in gaps):.4f} ± "
                            f"{median(g[3] for g in gaps):.4f}); smaller gaps are within test-set noise")
    return out


_CLAIMS = [
    _compare("noise", "Quantization improves noise robustness", "noise_retained", lambda q, f: q > f,
             "retain more of their clean accuracy under noise corruptions than FP", "acc_noise/acc_clean",
             "no noise corruption (gaussian/shot/impulse noise) with an FP reference"),
    _compare("shift", "Quantization does not improve covariate-shift accuracy", "shift_acc", lambda q, f: q <= f,
             "have mean shift acc1 ≤ FP", "mean shift acc1", "no shift set with an FP reference"),
    _calibration_finding,
    _compare("ood", "Quantization improves OOD detection (MCM AUROC)", "auroc", lambda q, f: q > f,
             "have higher mean MCM AUROC than FP", "mean MCM AUROC", "no OOD set with an FP reference"),
]


def _sqnr_finding(records: list[dict]) -> dict:
    rhos = [x for r in records if _cell(r).get("kind") != "fp"
            if (x := _num(_spectral(r, "sqnr_spearman_rho"))) is not None]
    med = f"; median Spearman ρ(rank, SQNR) = {median(rhos):+.3f}" if rhos else ""
    return _verdict("sqnr", "SQNR decays with rank", [r < 0 for r in rhos],
                    "ρ < 0 in {k}/{n} non-FP cells" + med, "no per-rank SQNR in these records")


def _damping_mean(rec: dict, inside) -> float | None:
    """Mean binned σ_variant/σ_fp over the rank fractions `inside(x)` selects (None without damping data)."""
    d = _spectral(rec, "damping") or {}
    return _mean(_num(v) for x, v in zip(d.get("rank_fraction") or [], d.get("ratio") or []) if inside(x))


def _weight_damping_finding(records: list[dict]) -> dict:
    tails = [t for r in records if _cell(r).get("kind") in _QUANT
             if (t := _damping_mean(r, lambda x: x >= 0.5)) is not None]
    flags = [t < 1 for t in tails]
    med = f"; median tail σ_q/σ_fp = {median(tails):.4f}" if tails else ""
    if tails and sum(flags) * 2 <= len(flags):
        med += " (quantization noise adds energy to the weights' tail; the paper's damping is in the features)"
    return _verdict("weight_damping", "Quantization damps the weights' high-rank singular values", flags,
                    "σ_q/σ_fp < 1 over the bottom 50% of ranks in {k}/{n} quant cells" + med,
                    "no weight-spectrum damping for quant cells")


def _rank_match_finding(records: list[dict]) -> dict:
    refs, by_variant = _references(records), {(_group(r), _cell(r).get("variant")): r for r in records}
    same_acc = same_ece = 0
    flags = []
    for rec in sorted(records, key=_sort_key):
        fp, partner = refs.get(_group(rec)), by_variant.get((_group(rec), f"rank-match:{_cell(rec).get('variant')}"))
        if _cell(rec).get("kind") not in _QUANT or fp is None or partner is None:
            continue
        s_q, s_r, s_f = _scalars(rec), _scalars(partner), _scalars(fp)
        if any(s[k] is None for s in (s_q, s_r, s_f) for k in ("acc1", "ece")):
            continue
        a = (s_q["acc1"] > s_f["acc1"]) == (s_r["acc1"] > s_f["acc1"])
        e = (s_q["ece"] > s_f["ece"]) == (s_r["ece"] > s_f["ece"])
        same_acc, same_ece = same_acc + a, same_ece + e
        flags.append(a and e)
    return _verdict("rank_match", "Rank truncation reproduces quantization's effect at matched weight error", flags,
                    "acc1 and ECE move in the same direction vs FP for {k}/{n} quant cells and their rank-match "
                    f"partner (acc1: {same_acc}/{len(flags)}, ECE: {same_ece}/{len(flags)})",
                    "no quant cell with a rank-match partner and an FP reference")


def findings(records: list[dict]) -> list[dict]:
    """The paper's directional claims tested on these records: [{claim, holds: bool|None, evidence: str, ...}]."""
    return [*(claim(records) for claim in _CLAIMS), _sqnr_finding(records), _weight_damping_finding(records),
            _rank_match_finding(records)]


# ------------------------------------------------------------------------------------------------ formatting
def _pct(d: float | None) -> str:
    if d is None:
        return ""
    if round(abs(d) * 100, 1) == 0:
        return " (0.0%)"
    return f" ({'+' if d > 0 else '−'}{abs(d) * 100:.1f}%)"


def _fmt(v: float | None, fp: float | None = None, show_delta: bool = False, digits: int = 4) -> str:
    """`0.6795 (−1.2%)`: the value to 4 decimals and, for non-FP cells, δ vs FP as a signed percent."""
    return "—" if v is None else f"{v:.{digits}f}" + (_pct(_delta(fp, v)) if show_delta else "")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table (`|` inside a value, as in multi-model cell ids, is escaped) and a blank line."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(x).replace("|", "\\|") for x in row) + " |" for row in rows), ""]


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


class _Ctx:
    """What every section needs: sorted records, FP references, labels, scalars, the plot folder."""

    def __init__(self, records: list[dict], out_dir: Path):
        self.records = sorted(records, key=_sort_key)
        self.refs = _references(records)
        self.multi = len({_group(r) for r in records}) > 1
        self.scal = {id(r): _scalars(r) for r in self.records}
        self.out, self.plots = out_dir, []

    def label(self, rec: dict) -> str:
        c = _cell(rec)
        return str(c.get("id") if self.multi else c.get("variant"))

    def s(self, rec: dict) -> dict:
        return self.scal[id(rec)]

    def cells(self, rec: dict, keys: list[str]) -> list[str]:
        """Formatted values with δ vs the group's FP (no δ for the FP row itself or without a reference)."""
        ref = self.refs.get(_group(rec))
        s, fp = self.s(rec), {} if ref is None else self.s(ref)
        return [_fmt(s.get(k), fp.get(k), _cell(rec).get("kind") != "fp") for k in keys]

    def save(self, fig: Figure, name: str) -> str:
        path = save_figure(fig, self.out / "plots" / name)
        self.plots.append(str(path))
        return f"plots/{name}"


def _lines_plot(series: dict[str, tuple[list, list]], xlabel: str, ylabel: str, title: str) -> Figure:
    fig = Figure(figsize=(8, 4.2), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    for i, (name, (x, y)) in enumerate(series.items()):  # 10 colours, then the next line style
        ax.plot(x, [math.nan if v is None else v for v in y], lw=1, ls=("-", "--", ":", "-.")[i // 10 % 4], label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=6, ncol=2, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


# ------------------------------------------------------------------------------------------------ sections
def _header(ctx: _Ctx, title: str, grid: dict | None) -> list[str]:
    recs = ctx.records
    models = sorted({str(c.get("model")) + (f":{c['pretrained']}" if c.get("pretrained") else "")
                     for c in map(_cell, recs)})
    listed = [(r.get("datasets") or {}).get(k) for r in recs for k in ("id", "ood", "shift", "corruptions", "spurious")]
    ds = dict.fromkeys(x for v in listed for x in (v if isinstance(v, list) else [v]) if x)
    secs = [float(r["seconds"]) for r in recs if _num(r.get("seconds")) is not None]
    lines = [f"# {title}", "", f"- cells: {len(recs)}", f"- models: {', '.join(models) or '—'}",
             f"- datasets: {', '.join(map(str, ds)) or '—'}",
             f"- cell time: {sum(secs):.1f} s total, {(_mean(secs) or 0):.1f} s mean per cell",
             f"- conventions: {CONVENTIONS}"]
    if grid:
        lines.append(f"- grid: `{json.dumps(grid, sort_keys=True, default=str)}`")
    return [*lines, ""]


def _main_table(ctx: _Ctx) -> list[str]:
    ood = _names(ctx.records, "ood")
    header = ["cell", "scope", "acc1", "ECE", "ECE-TS", "NLL", *(f"{n} AUROC / FPR95" for n in ood),
              "mean corruption acc1", "mean shift acc1"]
    rows = [[ctx.label(rec), _cell(rec).get("scope") or "—", *ctx.cells(rec, ["acc1", "ece", "ece_ts", "nll"]),
             *(" / ".join(ctx.cells(rec, [f"auroc:{n}", f"fpr95:{n}"])) for n in ood),
             *ctx.cells(rec, ["corr_acc", "shift_acc"])] for rec in ctx.records]
    return ["## Main table", "", "Each value is followed by δ vs FP in parentheses; OOD columns use MCM.", "",
            *_table(header, rows)] if rows else ["## Main table", "", "No cells.", ""]


def _quant_vs_rank(ctx: _Ctx) -> list[str]:
    lines = ["## Quantization vs rank truncation", ""]
    first = (_names(ctx.records, "ood") or [None])[0]
    keys = ["wre", "acc1", "ece", f"auroc:{first}", "corr_acc", "shift_acc"]
    by_variant = {(_group(r), _cell(r).get("variant")): r for r in ctx.records}
    rows = []
    for rec in ctx.records:
        if _cell(rec).get("kind") not in _QUANT:
            continue
        wre = ctx.s(rec)["wre"]
        ranks = [r for r in ctx.records if _group(r) == _group(rec) and _cell(r).get("kind") == "rank"
                 and ctx.s(r)["wre"] is not None]
        nearest = min(ranks, key=lambda r: abs(ctx.s(r)["wre"] - wre), default=None) if wre is not None else None
        partner = by_variant.get((_group(rec), f"rank-match:{_cell(rec).get('variant')}"))
        for role, r in (("quant", rec), ("rank-match", partner), ("nearest rank", nearest)):
            if r is not None:
                rows.append([ctx.label(rec), role, ctx.label(r), *ctx.cells(r, keys)])
    if not rows:
        return [*lines, "No quantized cells.", ""]
    lines += [("δ vs FP in parentheses; the rank-match cell truncates each layer to the quantization's weight error, "
               "the nearest rank cell has the closest mean relative weight error."), "",
              *_table(["quant cell", "pairing", "variant", "weight_rel_error", "acc1", "ECE",
                       f"AUROC ({first or 'no OOD'}, MCM)", "mean corruption acc1", "mean shift acc1"], rows)]
    fig = _scatter(ctx)
    if fig is not None:
        lines += [f"![quantization vs rank truncation]({ctx.save(fig, 'quant_vs_rank.png')})", ""]
    return lines


def _scatter(ctx: _Ctx) -> Figure | None:
    pts = [r for r in ctx.records if _cell(r).get("kind") != "fp" and ctx.s(r)["wre"] is not None]
    if not pts:
        return None
    fig = Figure(figsize=(13, 3.8), layout="constrained")
    markers = {"quant": "o", "rank": "s", "rank-match": "^", "qat": "D"}
    for j, (key, name) in enumerate((("acc1", "acc1"), ("ece", "ECE"), ("corr_acc", "mean corruption acc1"))):
        ax = fig.add_subplot(1, 3, j + 1)
        for kind, marker in markers.items():
            sel = [r for r in pts if _cell(r).get("kind") == kind and ctx.s(r)[key] is not None]
            if sel:
                ax.scatter([ctx.s(r)["wre"] for r in sel], [ctx.s(r)[key] for r in sel], marker=marker, label=kind)
        for i, ref in enumerate(ctx.refs.values()):
            if ctx.s(ref)[key] is not None:
                ax.axhline(ctx.s(ref)[key], color="k", ls="--", lw=0.8, label="FP" if i == 0 else None)
        ax.set_xlabel("relative weight error ‖W_q − W‖/‖W‖")
        ax.set_ylabel(name)
        ax.legend(fontsize=7)
    return fig


def _reliability(ctx: _Ctx) -> list[str]:
    from .plots import plot_reliability

    links = []
    for rec in ctx.records:
        bins = (rec.get("metrics") or {}).get("reliability")
        if bins and sum(bins.get("count") or []):
            name = f"reliability_{_safe(str(_cell(rec).get('id')))}.png"
            path = plot_reliability(bins, ctx.out / "plots" / name, title=ctx.label(rec))
            ctx.plots.append(str(path))
            links.append(f"![{ctx.label(rec)}](plots/{name})")
    return ["## Reliability diagrams", "", *(links or ["No reliability bins in these records."]), ""]


def _sqnr(ctx: _Ctx) -> list[str]:
    lines = ["## SQNR vs rank", ""]
    recs = [r for r in ctx.records if _spectral(r, "sqnr_db") or _spectral(r, "band_sqnr_db")]
    if not recs:
        return [*lines, "No per-rank SQNR in these records.", ""]
    bands = _band_order(b for r in recs for b in _spectral(r, "band_sqnr_db") or {})
    rows = [[ctx.label(r), *(_fmt(_num((_spectral(r, "band_sqnr_db") or {}).get(b)), digits=2) for b in bands),
             _fmt(_num(_spectral(r, "sqnr_spearman_rho")))] for r in recs]
    lines += ["Per-rank SQNR (dB) of each variant's ID features in the FP feature basis; band SQNR in dB.", "",
              *_table(["cell", *(f"SQNR {b} (dB)" for b in bands), "Spearman ρ"], rows)]
    series = {ctx.label(r): (list(range(len(_spectral(r, "sqnr_db")))), _spectral(r, "sqnr_db"))
              for r in recs if _spectral(r, "sqnr_db")}
    if series:
        fig = _lines_plot(series, "rank i (FP feature basis)", "SQNR_i (dB)", "per-rank SQNR")
        lines += [f"![SQNR vs rank]({ctx.save(fig, 'sqnr_vs_rank.png')})", ""]
    return lines


def _band_accuracy(ctx: _Ctx) -> list[str]:
    lines = ["## Rank-band accuracy", ""]
    acc = {ctx.label(r): _spectral(r, "band_accuracy") for r in ctx.records if _spectral(r, "band_accuracy")}
    if not acc:
        return [*lines, "No rank-band accuracy in these records.", ""]
    bands = _band_order(b for a in acc.values() for b in a)
    table = {m: {b: _num(a.get(b)) for b in bands} for m, a in acc.items()}
    lines += ["Zero-shot accuracy of features restricted to rank bands of each variant's own feature basis.", "",
              *_table(["cell", *bands], [[m, *(_fmt(a[b]) for b in bands)] for m, a in table.items()])]
    path = plot_band_accuracy({m: {b: a[b] if a[b] is not None else math.nan for b in bands}
                               for m, a in table.items()}, ctx.out / "plots" / "band_accuracy.png")
    ctx.plots.append(str(path))
    return [*lines, "![rank-band accuracy](plots/band_accuracy.png)", ""]


def _damping(ctx: _Ctx) -> list[str]:
    lines = ["## Weight-spectrum damping", ""]
    recs = [r for r in ctx.records if (_spectral(r, "damping") or {}).get("ratio")]
    if not recs:
        return [*lines, "No weight-spectrum damping in these records (FP and SmoothQuant cells have none).", ""]
    rows = [[ctx.label(r), _fmt(_damping_mean(r, lambda x: x < 0.1)), _fmt(_damping_mean(r, lambda x: x >= 0.5))]
            for r in recs]
    series = {ctx.label(r): (_spectral(r, "damping")["rank_fraction"], _spectral(r, "damping")["ratio"]) for r in recs}
    fig = _lines_plot(series, "rank fraction i/r", "mean σ_q / σ_fp", "singular-value damping of changed maps")
    return [*lines, ("Mean σ_q/σ_fp over the maps each variant changed: head = top 10% of ranks (rank fraction < 0.1, "
                     "largest σ), tail = bottom 50% (rank fraction ≥ 0.5)."), "",
            *_table(["cell", "head (top 10%)", "tail (bottom 50%)"], rows),
            f"![damping]({ctx.save(fig, 'damping.png')})", ""]


def _findings_section(found: list[dict]) -> list[str]:
    word = {True: "holds", False: "does not hold", None: "not measured"}
    return ["## Findings", "", *(f"- **{f['claim']}**: {word[f['holds']]} — {f['evidence']}" for f in found), ""]


# ------------------------------------------------------------------------------------------------ entry point
def _write_csv(rows: list[dict], path: Path) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def write_report(records: list[dict], out_dir: str | os.PathLike, *, title: str = "qclip ablation",
                 grid: dict | None = None) -> dict:
    """Write results.csv, report.md and PNG plots for the ablation records; return a summary (paths, findings)."""
    out = Path(out_dir)
    ctx = _Ctx(records, out)
    _write_csv(tidy_rows(records), out / "results.csv")
    found = findings(records)
    lines = [*_header(ctx, title, grid), *_main_table(ctx), *_quant_vs_rank(ctx), *_reliability(ctx), *_sqnr(ctx),
             *_band_accuracy(ctx), *_damping(ctx), *_findings_section(found)]
    atomic_write_text(out / "report.md", "\n".join(lines))
    return {"report": str(out / "report.md"), "csv": str(out / "results.csv"), "plots": ctx.plots,
            "findings": found, "cells": len(records)}
