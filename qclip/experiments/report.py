"""The report of an ablation grid: a tidy `results.csv`, `report.md` with tables, PNG plots, the paper's claims tested.

Conventions (stated in the report too): δ(D) = (A_fp − A_q)/A_fp against the FP cell of the same (model,
pretrained, seed) group, so a positive δ means the metric went down (worse accuracy, better ECE). OOD detection
treats ID as positive; FPR95 is the share of OOD accepted at 95% ID recall (MCM convention), scored with
MCM = softmax(cos/T), T=1. A cell is a "quant cell" when its kind is `quant` or `qat`.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from matplotlib.figure import Figure

from qclip.io.paths import atomic_write_text
from qclip.io.records import CellRecord
from qclip.io.results import write_csv

from .cells import (
    QUANT_KINDS,
    ROLES,
    band_order,
    cell_of,
    damping_mean,
    dataset_names,
    delta,
    group_of,
    mean,
    num,
    ordered,
    references,
    scalars,
    sort_key,
    spectral_of,
)
from .dose import dose_response_section
from .findings import findings
from .findings import p_text as _p_text
from .plots import plot_band_accuracy, save_figure

__all__ = ["findings", "tidy_rows", "write_report"]

_CELL_COLUMNS = ["cell_id", "model", "seed", "variant", "kind", "method", "bits", "scope", "weight_rel_error"]
_METRICS = ["acc1", "acc5", "ece", "ece_ts", "nll", "brier", "auroc", "aupr", "fpr95", "rsg"]
CSV_COLUMNS = [*_CELL_COLUMNS, "role", "dataset", *_METRICS, *(f"delta_{m}" for m in _METRICS)]
CONVENTIONS = ("δ(D) = (A_fp − A_q)/A_fp against the FP cell of the same (model, pretrained, seed): a **positive δ "
               "means the metric decreased** vs FP (worse for accuracy/AUROC, better for ECE/NLL/FPR95). "
               "OOD: ID is the positive class; FPR95 = share of OOD accepted at 95% ID recall (MCM convention); "
               "scores are MCM = softmax(cos/T), T=1. ECE uses 15 equal-width bins on softmax(logit_scale·cos); "
               "ECE-TS is ECE after logit-scale tuning.")


# ------------------------------------------------------------------------------------------------ tidy CSV rows
def _record_rows(rec: CellRecord) -> list[dict]:
    c, m, ds = cell_of(rec), rec.get("metrics") or {}, rec.get("datasets") or {}
    base = {"cell_id": c.get("id"), "model": c.get("model"), "seed": c.get("seed"), "variant": c.get("variant"),
            "kind": c.get("kind"), "method": c.get("method"), "bits": c.get("bits"), "scope": c.get("scope"),
            "weight_rel_error": spectral_of(rec, "weight_rel_error")}
    rows = [{**base, "role": "id", "dataset": ds.get("id"),
             **{k: m.get(k) for k in ("acc1", "acc5", "ece", "ece_ts", "nll", "brier")}}]
    for role, (mkey, dkey, keys) in ROLES.items():
        block = m.get(mkey) or {}
        for name in ordered(block, ds.get(dkey)):
            values = block[name] or {}
            values = (values.get("mcm") or {}) if role == "ood" else values
            rows.append({**base, "role": role, "dataset": name, **{k: values.get(k) for k in keys}})
    if m.get("spurious"):
        rows.append({**base, "role": "spurious", "dataset": "|".join(ds.get("spurious") or []) or "spurious",
                     "rsg": m["spurious"].get("rsg")})
    return rows


def tidy_rows(records: list[CellRecord]) -> list[dict]:
    """One row per cell × dataset (role id/ood/corruption/shift/spurious) with the metrics and δ vs FP."""
    refs = references(records)
    ref_rows = {g: {(r["role"], r["dataset"]): r for r in _record_rows(fp)} for g, fp in refs.items()}
    out = []
    for rec in sorted(records, key=sort_key):
        refs_of = {} if cell_of(rec).get("kind") == "fp" else ref_rows.get(group_of(rec), {})
        for row in _record_rows(rec):
            fp_row = refs_of.get((row["role"], row["dataset"]), {})
            full = {col: row.get(col) for col in CSV_COLUMNS}
            full.update({f"delta_{k}": delta(num(fp_row.get(k)), num(row.get(k))) for k in _METRICS})
            out.append(full)
    return out


# ------------------------------------------------------------------------------------------------ formatting
def _pct(d: float | None) -> str:
    if d is None:
        return ""
    if round(abs(d) * 100, 1) == 0:
        return " (0.0%)"
    return f" ({'+' if d > 0 else '−'}{abs(d) * 100:.1f}%)"


def _fmt(v: float | None, fp: float | None = None, show_delta: bool = False, digits: int = 4) -> str:
    """`0.6795 (−1.2%)`: the value to 4 decimals and, for non-FP cells, δ vs FP as a signed percent."""
    return "—" if v is None else f"{v:.{digits}f}" + (_pct(delta(fp, v)) if show_delta else "")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table (`|` inside a value, as in multi-model cell ids, is escaped) and a blank line."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(x).replace("|", "\\|") for x in row) + " |" for row in rows), ""]


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


class _Ctx:
    """What every section needs: sorted records, FP references, labels, scalars, the plot folder."""

    def __init__(self, records: list[CellRecord], out_dir: Path):
        self.records = sorted(records, key=sort_key)
        self.refs = references(records)
        self.multi = len({group_of(r) for r in records}) > 1
        self.scal = {id(r): scalars(r) for r in self.records}
        self.out, self.plots = out_dir, []

    def label(self, rec: CellRecord) -> str:
        c = cell_of(rec)
        return str(c.get("id") if self.multi else c.get("variant"))

    def s(self, rec: CellRecord) -> dict:
        return self.scal[id(rec)]

    def cells(self, rec: CellRecord, keys: list[str]) -> list[str]:
        """Formatted values with δ vs the group's FP (no δ for the FP row itself or without a reference)."""
        ref = self.refs.get(group_of(rec))
        s, fp = self.s(rec), {} if ref is None else self.s(ref)
        return [_fmt(s.get(k), fp.get(k), cell_of(rec).get("kind") != "fp") for k in keys]

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
                     for c in map(cell_of, recs)})
    listed = [(r.get("datasets") or {}).get(k) for r in recs for k in ("id", "ood", "shift", "corruptions", "spurious")]
    ds = dict.fromkeys(x for v in listed for x in (v if isinstance(v, list) else [v]) if x)
    secs = [float(r["seconds"]) for r in recs if num(r.get("seconds")) is not None]
    lines = [f"# {title}", "", f"- cells: {len(recs)}", f"- models: {', '.join(models) or '—'}",
             f"- datasets: {', '.join(map(str, ds)) or '—'}",
             f"- cell time: {sum(secs):.1f} s total, {(mean(secs) or 0):.1f} s mean per cell",
             f"- conventions: {CONVENTIONS}"]
    if grid:
        lines.append(f"- grid: `{json.dumps(grid, sort_keys=True, default=str)}`")
    return [*lines, ""]


def _main_table(ctx: _Ctx) -> list[str]:
    ood = dataset_names(ctx.records, "ood")
    header = ["cell", "scope", "acc1", "ECE", "ECE-TS", "NLL", *(f"{n} AUROC / FPR95" for n in ood),
              "mean corruption acc1", "mean shift acc1"]
    rows = [[ctx.label(rec), cell_of(rec).get("scope") or "—", *ctx.cells(rec, ["acc1", "ece", "ece_ts", "nll"]),
             *(" / ".join(ctx.cells(rec, [f"auroc:{n}", f"fpr95:{n}"])) for n in ood),
             *ctx.cells(rec, ["corr_acc", "shift_acc"])] for rec in ctx.records]
    return ["## Main table", "", "Each value is followed by δ vs FP in parentheses; OOD columns use MCM.", "",
            *_table(header, rows)] if rows else ["## Main table", "", "No cells.", ""]


def _quant_vs_rank(ctx: _Ctx) -> list[str]:
    lines = ["## Quantization vs rank truncation", ""]
    first = (dataset_names(ctx.records, "ood") or [None])[0]
    keys = ["wre", "acc1", "ece", f"auroc:{first}", "corr_acc", "shift_acc"]
    by_variant = {(group_of(r), cell_of(r).get("variant")): r for r in ctx.records}
    rows = []
    for rec in ctx.records:
        if cell_of(rec).get("kind") not in QUANT_KINDS:
            continue
        wre = ctx.s(rec)["wre"]
        ranks = [r for r in ctx.records if group_of(r) == group_of(rec) and cell_of(r).get("kind") == "rank"
                 and ctx.s(r)["wre"] is not None]
        nearest = min(ranks, key=lambda r: abs(ctx.s(r)["wre"] - wre), default=None) if wre is not None else None
        partner = by_variant.get((group_of(rec), f"rank-match:{cell_of(rec).get('variant')}"))
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


def _interval(d: dict | None) -> str:
    """`+0.0012 [−0.0010, +0.0034]` of a paired difference (empty when absent)."""
    if not d or num(d.get("diff")) is None:
        return "—"
    if None in (num(d.get("low")), num(d.get("high"))):
        return f"{d['diff']:+.4f}"
    return f"{d['diff']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"


def _integer(ctx: _Ctx) -> list[str]:
    """Each integer cell (real int8 kernels) against the fake-quant cell it was exported from, paired."""
    ints = [r for r in ctx.records if cell_of(r).get("kind") == "int"]
    if not ints:
        return []
    lines = ["## Real integer kernels vs fake-quant", ""]
    by_variant = {(group_of(r), cell_of(r).get("variant")): r for r in ctx.records}
    first = (dataset_names(ctx.records, "ood") or [None])[0]
    rows, disagree = [], []
    for rec in ints:
        fq = by_variant.get((group_of(rec), str(cell_of(rec).get("variant")).split(":", 1)[-1]))
        pq = rec.get("paired_fake_quant") or {}
        ident = pq.get("id") or {}
        q = rec.get("quant_report") or {}
        acc = ident.get("acc1") or {}
        if num(acc.get("low")) is not None and not acc["low"] <= 0 <= acc["high"]:
            disagree.append(ctx.label(rec))
        s_fq = ctx.s(fq) if fq is not None else {}
        rows.append([ctx.label(rec), f"{q.get('integer_arithmetic', '—')} / {q.get('maps', '—')}",
                     f"{q.get('int16_safe', '—')}", _fmt(s_fq.get("acc1")), _fmt(ctx.s(rec).get("acc1")),
                     _interval(acc), _fmt(s_fq.get("ece")), _fmt(ctx.s(rec).get("ece")), _interval(ident.get("ece")),
                     _interval(((pq.get("ood") or {}).get(first) or {}).get("auroc")) if first else "—",
                     _agreement(rec.get("feature_agreement"))])
    vnni = next((q.get("vnni") for q in (r.get("quant_report") or {} for r in ints) if "vnni" in q), None)
    lines += [("Each integer cell rebuilds its quant cell's model from integer codes and grids (as `qclip export` "
               "does) and runs oneDNN's int8 kernels on the CPU; Δ = integer − fake-quant on the same images "
               "(McNemar for acc1, paired bootstrap for ECE, DeLong for AUROC; 95% intervals). Maps: on integer "
               "kernels / quantized; exact without VNNI: maps whose u8 × s8 pair sums cannot saturate int16 (7-bit activations or weights). "
               "Features: the ID image features of the integer model against the fake-quant model's, max |Δ| over "
               "entries / min cosine over images / top-1 flips of the zero-shot prediction."
               + ("" if vnni is not False else " **This CPU has no VNNI**: the other maps' sums saturate int16 here, "
                  "which moves the integer model away from the fake-quant model.")), "",
              *_table(["integer cell", "maps int8 / quantized", "exact without VNNI", "acc1 fake-quant",
                       "acc1 integer", "Δacc1 [95%]", "ECE fake-quant", "ECE integer", "ΔECE [95%]",
                       f"ΔAUROC {first or ''} [95%]", "features max |Δ| / min cos / flips"], rows)]
    if disagree:
        lines += [f"Integer and fake-quant acc1 differ beyond the paired interval for: {', '.join(disagree)}.", ""]
    return lines


def _agreement(agr: dict | None) -> str:
    """An integer cell's feature agreement with its fake-quant cell, as one table cell."""
    if not agr:
        return "—"
    return f"{agr['max_abs_diff']:.2g} / {agr['min_cosine']:.7f} / {agr['top1_flips']} of {agr['n']}"


def _scatter(ctx: _Ctx) -> Figure | None:
    pts = [r for r in ctx.records if cell_of(r).get("kind") != "fp" and ctx.s(r)["wre"] is not None]
    if not pts:
        return None
    fig = Figure(figsize=(13, 3.8), layout="constrained")
    markers = {"quant": "o", "rank": "s", "rank-match": "^", "qat": "D"}
    for j, (key, name) in enumerate((("acc1", "acc1"), ("ece", "ECE"), ("corr_acc", "mean corruption acc1"))):
        ax = fig.add_subplot(1, 3, j + 1)
        for kind, marker in markers.items():
            sel = [r for r in pts if cell_of(r).get("kind") == kind and ctx.s(r)[key] is not None]
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
            name = f"reliability_{_safe(str(cell_of(rec).get('id')))}.png"
            path = plot_reliability(bins, ctx.out / "plots" / name, title=ctx.label(rec))
            ctx.plots.append(str(path))
            links.append(f"![{ctx.label(rec)}](plots/{name})")
    return ["## Reliability diagrams", "", *(links or ["No reliability bins in these records."]), ""]


def _sqnr(ctx: _Ctx) -> list[str]:
    lines = ["## SQNR vs rank", ""]
    recs = [r for r in ctx.records if spectral_of(r, "sqnr_db") or spectral_of(r, "band_sqnr_db")]
    if not recs:
        return [*lines, "No per-rank SQNR in these records.", ""]
    bands = band_order(b for r in recs for b in spectral_of(r, "band_sqnr_db") or {})
    rows = [[ctx.label(r), *(_fmt(num((spectral_of(r, "band_sqnr_db") or {}).get(b)), digits=2) for b in bands),
             _fmt(num(spectral_of(r, "sqnr_spearman_rho")))] for r in recs]
    lines += ["Per-rank SQNR (dB) of each variant's ID features in the FP feature basis; band SQNR in dB.", "",
              *_table(["cell", *(f"SQNR {b} (dB)" for b in bands), "Spearman ρ"], rows)]
    series = {ctx.label(r): (list(range(len(spectral_of(r, "sqnr_db")))), spectral_of(r, "sqnr_db"))
              for r in recs if spectral_of(r, "sqnr_db")}
    if series:
        fig = _lines_plot(series, "rank i (FP feature basis)", "SQNR_i (dB)", "per-rank SQNR")
        lines += [f"![SQNR vs rank]({ctx.save(fig, 'sqnr_vs_rank.png')})", ""]
    return lines


def _band_accuracy(ctx: _Ctx) -> list[str]:
    lines = ["## Rank-band accuracy", ""]
    acc = {ctx.label(r): spectral_of(r, "band_accuracy") for r in ctx.records if spectral_of(r, "band_accuracy")}
    if not acc:
        return [*lines, "No rank-band accuracy in these records.", ""]
    bands = band_order(b for a in acc.values() for b in a)
    table = {m: {b: num(a.get(b)) for b in bands} for m, a in acc.items()}
    lines += ["Zero-shot accuracy of features restricted to rank bands of each variant's own feature basis.", "",
              *_table(["cell", *bands], [[m, *(_fmt(a[b]) for b in bands)] for m, a in table.items()])]
    path = plot_band_accuracy({m: {b: a[b] if a[b] is not None else math.nan for b in bands}
                               for m, a in table.items()}, ctx.out / "plots" / "band_accuracy.png")
    ctx.plots.append(str(path))
    return [*lines, "![rank-band accuracy](plots/band_accuracy.png)", ""]


def _damping(ctx: _Ctx) -> list[str]:
    lines = ["## Weight-spectrum damping", ""]
    recs = [r for r in ctx.records if (spectral_of(r, "damping") or {}).get("ratio")]
    if not recs:
        return [*lines, "No weight-spectrum damping in these records (FP and SmoothQuant cells have none).", ""]
    rows = [[ctx.label(r), _fmt(damping_mean(r, lambda x: x < 0.1)), _fmt(damping_mean(r, lambda x: x >= 0.5))]
            for r in recs]
    series = {ctx.label(r): (spectral_of(r, "damping")["rank_fraction"], spectral_of(r, "damping")["ratio"]) for r in recs}
    fig = _lines_plot(series, "rank fraction i/r", "mean σ_q / σ_fp", "singular-value damping of changed maps")
    return [*lines, ("Mean σ_q/σ_fp over the maps each variant changed: head = top 10% of ranks (rank fraction < 0.1, "
                     "largest σ), tail = bottom 50% (rank fraction ≥ 0.5)."), "",
            *_table(["cell", "head (top 10%)", "tail (bottom 50%)"], rows),
            f"![damping]({ctx.save(fig, 'damping.png')})", ""]


def _uncertainty(ctx: _Ctx) -> list[str]:
    """Selective prediction, split-conformal sets and the debiased calibration error on the ID set, per cell."""
    lines = ["## Selective prediction and conformal sets (ID set)", ""]
    rows = []
    for rec in ctx.records:
        m = rec.get("metrics") or {}
        sel, conf = m.get("selective") or {}, m.get("conformal") or {}
        if not sel and not conf:
            continue
        cov = [(conf.get(k) or {}) for k in ("thr", "aps")]
        rows.append([ctx.label(rec), _fmt(num(m.get("ece"))), _fmt(num(m.get("ece_debiased"))),
                     *(_fmt(num(sel.get(k))) for k in ("aurc", "augrc", "acc_at_80", "acc_at_90")),
                     *(f"{_fmt(num(c.get('coverage')))} / {_fmt(num(c.get('set_size')), digits=2)}" for c in cov)])
    if not rows:
        return [*lines, "No selective or conformal metrics in these records.", ""]
    alpha = next((num((r.get("metrics") or {}).get("conformal_alpha")) for r in ctx.records), None)
    level = f"1 − α = {1 - alpha:.2f}" if alpha is not None else "1 − α"
    return [*lines, ("AURC / AUGRC: area under the (generalized) risk–coverage curve of the top-label confidence, "
                     "lower is better; acc@80/90: accuracy on the 80% / 90% most confident images. Conformal: "
                     f"empirical coverage / mean set size of split-conformal sets at {level}, calibrated on a seeded "
                     "half of the ID set and measured on the other half. ECE-debiased: the debiased ℓ2 calibration "
                     "error (Kumar et al. 2019)."), "",
            *_table(["cell", "ECE", "ECE-debiased", "AURC", "AUGRC", "acc@80", "acc@90", "THR cov / size",
                     "APS cov / size"], rows)]


_TEST_NAMES = {"mcnemar": "McNemar", "delong": "DeLong", "bootstrap": "bootstrap", None: "no test"}


def _bits_order(bits: str) -> tuple:
    """Weight bits high → low, then activation bits high → low (`w8a8` before `w6a8` before `w4`); others last."""
    m = re.match(r"w(\d+(?:\.\d+)?)(?:a(\d+))?$", bits)
    return (0, -float(m.group(1)), -int(m.group(2) or 32), bits) if m else (1, 0.0, 0, bits)


def _matrix_lines(f: dict) -> list[str]:
    """The claim's method family × bits matrix: per entry, tests significant for / against / not resolved."""
    matrix = f.get("matrix") or {}
    bits = sorted({b for row in matrix.values() for b in row}, key=_bits_order)
    if not matrix or not bits:
        return []

    def entry(c: dict | None) -> str:
        if not c:
            return ""
        text = f"{c['for']} / {c['against']} / {c['not resolved']}"
        return text + (f" ({c['no test']} no test)" if c.get("no test") else "")

    return ["Verdicts by method family × bits (tests significant for the claim / against it / not resolved, after "
            "Holm; a test shared by identical predictions counts for each of its cells):", "",
            *_table(["method", *bits], [[m, *(entry(row.get(b)) for b in bits)] for m, row in matrix.items()])]


def _test_row(t: dict) -> list[str]:
    n_res = t.get("n_resolve")
    iv = f"[{t['low']:+.4f}, {t['high']:+.4f}]" if None not in (num(t.get("low")), num(t.get("high"))) else ""
    return [" = ".join(map(str, t.get("cells") or [t["cell"]])), str(t["set"]), str(t["n"]),
            _TEST_NAMES.get(t.get("test"), str(t.get("test"))), f"{t['diff']:+.4f}", iv, _p_text(t.get("p")),
            t.get("status") or "", _fmt(num(t.get("mde"))), f"~{n_res:,}" if n_res else "—"]


def _findings_section(found: list[dict]) -> list[str]:
    lines = ["## Findings", "", ("Paired tests against FP on the same images: McNemar's exact test for acc1, DeLong's "
             "test for MCM AUROC, a paired bootstrap (p = (k + 1)/(B + 1)) for ECE; variants with identical "
             "predictions on a set share one test; Holm per claim at family α = 0.05. MDE: the effect the test "
             "detects with 80% power at α/m (m: the claim's tests); N to resolve: images at which the observed Δ "
             "would reach it (an estimate, SE ∝ 1/√N). Spectral claims: exact sign tests over cells."), "",
             *(f"- **{f['claim']}**: {f.get('verdict') or 'not measured'} — {f['evidence']}" for f in found), ""]
    resamples = sorted({t["resamples"] for f in found for t in f.get("tests") or [] if t.get("resamples")})
    if resamples:
        lines[4:4] = [f"ECE bootstrap: B = {', '.join(f'{b:,}' for b in resamples)} resamples, so p ≥ "
                      f"{1 / (resamples[0] + 1):.2g} (raised from the grid's `bootstrap` where that could not reach "
                      "Holm's first threshold).", ""]
    for f in found:
        tests = f.get("tests") or []
        if not tests:
            continue
        lines += [f"### {f['claim']}: paired tests (quant − FP, 95% interval)", "", *_matrix_lines(f),
                  *_table(["cells", "set", "N", "test", "Δ", "95% interval", "p", "outcome",
                           f"MDE (α/m = {f.get('alpha_test', 0.05):.2g})", "N to resolve"],
                          [_test_row(t) for t in tests])]
    return lines


# ------------------------------------------------------------------------------------------------ entry point
def write_report(records: list[CellRecord], out_dir: str | os.PathLike, *, title: str = "qclip ablation",
                 grid: dict | None = None) -> dict:
    """Write results.csv, report.md and PNG plots for the ablation records; return a summary (paths, findings)."""
    out = Path(out_dir)
    ctx = _Ctx(records, out)
    write_csv(out / "results.csv", tidy_rows(records), CSV_COLUMNS)
    found = findings(records)
    lines = [*_header(ctx, title, grid), *_main_table(ctx), *_quant_vs_rank(ctx), *_integer(ctx), *_reliability(ctx),
             *_sqnr(ctx), *_band_accuracy(ctx), *_damping(ctx), *_uncertainty(ctx), *dose_response_section(records),
             *_findings_section(found)]
    atomic_write_text(out / "report.md", "\n".join(lines))
    return {"report": str(out / "report.md"), "csv": str(out / "results.csv"), "plots": ctx.plots,
            "findings": found, "cells": len(records)}
