"""The report's dose–response section: what the spectral-filtering regularizer's strength λ did to its own target
and to reliability, from the `fit` cells of a grid (see `qclip.experiments.fits`). Writes nothing.

Per fit entry, model and seed: the penalty's target against λ — the energy share beyond rank k of the centred ID
eval features (95% bootstrap interval over images) and its paired difference to the λ = 0 fit of the same seed on
the same images, plus the penalised weights' tail energy (interval over layers) when weights are penalised — then
each λ > 0 fit's paired differences to the λ = 0 fit: Δacc1 and ΔECE on the ID, corrupted and shift sets, ΔAUROC
(MCM) on the OOD sets, each with its 95% interval and the p-value of its paired test (McNemar, bootstrap, DeLong).
"""

from __future__ import annotations

from qclip.io.records import CellRecord

from .cells import cell_of, group_of, num
from .findings import p_text

__all__ = ["dose_response_section"]


def _number(x: float, signed: bool = False) -> str:
    """4 decimals, or 3 significant digits for magnitudes below 1e-3 (a feature tail of 5e-4 must not read 0.0005
    with a difference of +0.0000)."""
    sign = "+" if signed else ""
    return f"{x:{sign}.2e}" if x != 0 and abs(x) < 1e-3 else f"{x:{sign}.4f}"


def _ci(d: dict | None) -> str:
    """`+0.0012 [-0.0010, +0.0034] p 0.21` of a paired difference ('—' when absent); p as the findings write it."""
    if not d or num(d.get("diff")) is None:
        return "—"
    text = _number(d["diff"], signed=True)
    if None not in (num(d.get("low")), num(d.get("high"))):
        text += f" [{_number(d['low'], signed=True)}, {_number(d['high'], signed=True)}]"
    return text + (f" p {p_text(d['p'])}" if num(d.get("p")) is not None else "")


def _value(d: dict | None) -> str:
    """`0.1234 [0.1200, 0.1300]` of a value with its interval ('—' when absent)."""
    if not d or num(d.get("value")) is None:
        return "—"
    text = _number(d["value"])
    if None not in (num(d.get("low")), num(d.get("high"))):
        text += f" [{_number(d['low'])}, {_number(d['high'])}]"
    return text


def _resolved(d: dict | None) -> bool | None:
    """Whether a paired difference's interval excludes 0 (None without an interval)."""
    if not d or None in (num(d.get("low")), num(d.get("high"))):
        return None
    return not d["low"] <= 0 <= d["high"]


def _series(records: list[CellRecord]) -> dict[tuple, list[CellRecord]]:
    """Fit records by (model, pretrained, seed, λ = 0 variant), each series sorted by λ."""
    out: dict[tuple, list[CellRecord]] = {}
    for rec in records:
        if cell_of(rec).get("kind") == "fit" and rec.get("fit"):
            out.setdefault((*group_of(rec), rec["fit"].get("baseline")), []).append(rec)
    return {k: sorted(v, key=lambda r: num(r["fit"].get("spectral_lambda")) or 0.0) for k, v in out.items()}


def _name(key: tuple) -> str:
    model, pretrained, seed, baseline = key
    return f"{model}{':' + pretrained if pretrained else ''}|{str(baseline).rsplit('-lam', 1)[0]}|s{seed}"


def _mechanism(key: tuple, recs: list[CellRecord]) -> list[str]:
    fit0 = recs[0]["fit"]
    rows, moved = [], []
    for rec in recs:
        f = rec["fit"]
        target = f.get("feature_target") or {}
        vs = target.get("vs_base")
        rows.append([f"{f['spectral_lambda']:g}", str(target.get("n", "—")), _value(target), _ci(vs),
                     _value(f.get("weight_target")),
                     _value({"value": (f.get("train") or {}).get("train_batch_target")}),
                     f"{m:.4f}" if (m := num((rec.get("metrics") or {}).get("acc1"))) is not None else "—",
                     f"{m:.4f}" if (m := num((rec.get("metrics") or {}).get("ece"))) is not None else "—"])
        if f["spectral_lambda"] > 0:
            res = _resolved(vs)
            verdict = ("not resolved (no interval)" if res is None else
                       ("lower" if vs["diff"] < 0 else "higher") + " (interval excludes 0)" if res else
                       "not resolved (interval spans 0)")
            moved.append(f"λ = {f['spectral_lambda']:g}: {verdict}")
    k, on = fit0.get("spectral_k"), fit0.get("spectral_on")
    return [f"### {_name(key)}: the penalty's target (k = {k:g}, penalised: {on}, {fit0.get('steps')} steps)", "",
            "| λ | N | feature tail beyond k (ID) [95%] | Δ vs λ = 0 [95%] p | weight tail [95% over layers] | "
            "train-batch target | acc1 | ECE |", "|---|---|---|---|---|---|---|---|",
            *("| " + " | ".join(r) + " |" for r in rows), "",
            f"Feature tail vs the λ = 0 fit: {'; '.join(moved) or 'no λ > 0 fit stored'}.", ""]


def _set_rows(rec: CellRecord) -> list[list[str]]:
    """One row per set of a λ > 0 fit's paired differences to its λ = 0 fit."""
    vs = (rec.get("fit") or {}).get("vs_base") or {}
    lam = f"{rec['fit']['spectral_lambda']:g}"
    rows = []
    if vs.get("id"):
        rows.append([lam, "id", str(vs["id"].get("n")), _ci(vs["id"].get("acc1")), _ci(vs["id"].get("ece")), "—"])
    for role in ("corruptions", "shift"):
        for name, d in (vs.get(role) or {}).items():
            rows.append([lam, f"{name} ({'corruption' if role == 'corruptions' else 'shift'})", str(d.get("n")),
                         _ci(d.get("acc1")), _ci(d.get("ece")), "—"])
    for name, d in (vs.get("ood") or {}).items():
        rows.append([lam, f"{name} (OOD)", str(d.get("n")), "—", "—", _ci(d.get("auroc"))])
    return rows


def dose_response_section(records: list[CellRecord]) -> list[str]:
    """The report's `## Regularizer dose–response` section (empty when the grid has no fit cells)."""
    series = _series(records)
    if not series:
        return []
    lines = ["## Regularizer dose–response", "",
             ("Each fit is QAT from the FP model with the spectral-filtering penalty at strength λ (`fit` in the grid; "
              "same data, steps and seed for every λ). The penalty's target is the energy share beyond rank k of the "
              "centred image features, measured on the ID eval images (95% percentile bootstrap over images; Δ paired "
              "on the same image draws), and of the penalised weights' spectra when weights are penalised (mean over "
              "layers, 95% bootstrap over layers); the train-batch target is the same feature share on the first "
              "training batch after training. Below each: every λ > 0 fit against the λ = 0 fit of the same seed on "
              "the same images (Δ = fit − λ = 0 fit, 95% interval, p of the paired test: McNemar for acc1, a "
              "bootstrap with p = (k + 1)/(B + 1) for ECE and the feature tail, DeLong for AUROC, which is MCM's)."), ""]
    for key, recs in series.items():
        lines += _mechanism(key, recs)
        rows = [row for rec in recs if rec["fit"]["spectral_lambda"] > 0 for row in _set_rows(rec)]
        if rows:
            lines += [f"Reliability of {_name(key)} against its λ = 0 fit:", "",
                      "| λ | set | N | Δacc1 [95%] p | ΔECE [95%] p | ΔAUROC [95%] p |", "|---|---|---|---|---|---|",
                      *("| " + " | ".join(r) + " |" for r in rows), ""]
    return lines
