"""The paper's claims tested on a grid's cell records (`findings`). Metric claims: one paired test per (variant,
set) against FP (McNemar for acc1, DeLong for AUROC, a paired bootstrap for ECE; `qclip.evals.paired`), variants
with identical predictions on a set sharing one test, Holm-corrected per claim, with a verdict per method family ×
bits and the N that would resolve the median effect. Spectral claims: a sign test over cells. Writes nothing."""

from __future__ import annotations

import math
from statistics import median

from qclip.evals.metrics import mde, n_to_resolve, sign_test
from qclip.io.records import CellRecord

from .cells import (
    QUANT_KINDS,
    cell_of,
    damping_mean,
    group_of,
    num,
    references,
    scalars,
    sort_key,
    spectral_of,
)

__all__ = ["findings", "holm", "p_text", "FAMILY_ALPHA", "RESOLVABLE_ECE", "STATUSES"]

_NOISE = ("gaussian_noise", "shot_noise", "impulse_noise")
FAMILY_ALPHA = 0.05  # family-wise error rate of each claim's tests (Holm-Bonferroni), and the sign tests' level
RESOLVABLE_ECE = 3.0  # an ECE claim is tested only on sets where FP's ECE is at least this many times its floor
STATUSES = ("for", "against", "not resolved", "no test")  # a test's outcome for its claim


def _sign_verdict(key: str, claim: str, k: int, n: int, evidence: str, missing: str) -> dict:
    """A spectral finding from a sign test over cells: `k` of `n` cells agree with the claim; holds (does not hold)
    when the two-sided exact sign test rejects 'half agree' at FAMILY_ALPHA with a majority for (against) it, else
    not resolved; None when nothing was measured (these are properties of each cell's spectra)."""
    if not n:
        return {"key": key, "claim": claim, "holds": None, "verdict": "not measured",
                "evidence": f"not measured: {missing}", "n": 0, "agree": 0, "p": None}
    p = sign_test(k, n)
    if p <= FAMILY_ALPHA and 2 * k != n:
        holds, verdict = 2 * k > n, "holds" if 2 * k > n else "does not hold"
    else:
        holds, verdict = None, "not resolved at this N"
    return {"key": key, "claim": claim, "holds": holds, "verdict": verdict, "n": n, "agree": k, "p": p,
            "evidence": evidence.format(k=k, n=n) + f"; sign test over cells p = {p_text(p)}"}


def p_text(p: float | None) -> str:
    """A p-value as text: 3 significant digits, '< 0.0001' below that (never '0'), 'no test' without one."""
    if p is None:
        return "no test"
    return "< 0.0001" if p < 1e-4 else f"{p:.3g}"


# ------------------------------------------------------------------------------------- paired, multiplicity-aware
def holm(pvalues: list[float], alpha: float = FAMILY_ALPHA) -> list[bool]:
    """Holm-Bonferroni step-down: which of the hypotheses are rejected at family-wise level `alpha`."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    rejected = [False] * len(pvalues)
    for rank, i in enumerate(order):
        if pvalues[i] > alpha / (len(pvalues) - rank):
            break
        rejected[i] = True
    return rejected


def _tests(records: list[CellRecord], role: str, metric: str, select=None) -> list[dict]:
    """One entry per (quant cell, set of `role`) from the cells' paired tests against FP: {cell, method, bits,
    group, set, n, hash, test, diff, low, high, p, se, fp_direction}; `test` and `p` are None for records written
    before the paired tests (schema < 2: "no test"). `select(fp_record, role, set_name)` may drop sets."""
    refs = references(records)
    out = []
    for rec in sorted(records, key=sort_key):
        fp, cell = refs.get(group_of(rec)), cell_of(rec)
        if cell.get("kind") not in QUANT_KINDS or fp is None:
            continue
        paired = (rec.get("paired") or {})
        block = {"": paired.get("id")} if role == "id" else (paired.get(role) or {})
        for name, entry in block.items():
            stats = (entry or {}).get(metric) or {}
            if num(stats.get("diff")) is None:
                continue
            if select is not None and not select(fp, role, name):
                continue
            test = stats.get("test")
            out.append({"cell": cell.get("id"), "method": cell.get("method") or cell.get("kind"),
                        "bits": cell.get("bits") or cell.get("variant"), "group": group_of(rec),
                        "set": name or "id", "n": entry.get("n"), "hash": entry.get("hash") if test else None,
                        "test": test, "diff": stats["diff"], "low": stats.get("low"), "high": stats.get("high"),
                        "p": num(stats.get("p")) if test else None, "se": num(stats.get("se")) if test else None,
                        "resamples": stats.get("resamples"),
                        "fp_direction": _direction(fp, role, name)})
    return out


def _distinct(tests: list[dict]) -> list[dict]:
    """Tests of cells with identical predictions (same FP group, set and logits digest) merged into one, which lists
    every cell; tests without a digest stay on their own."""
    merged: dict[tuple, dict] = {}
    out = []
    for t in tests:
        key = (t["group"], t["set"], t["hash"]) if t["hash"] else None
        if key is not None and key in merged:
            merged[key]["cells"].append(t["cell"])
            merged[key]["members"].append((t["method"], t["bits"]))
            continue
        d = {**t, "cells": [t["cell"]], "members": [(t["method"], t["bits"])]}
        out.append(d)
        if key is not None:
            merged[key] = d
    return out


def _power_(tests: list[dict]) -> float:
    """Judge each distinct test's power at α' = α/m (m: the family's tests; Holm's strictest threshold, so the MDE
    and the N to resolve are conservative): its MDE at 80% power and, unless significant, the N at which its Δ would
    be resolved (SE ∝ 1/√N, an estimate). Returns α'."""
    level = FAMILY_ALPHA / max(1, sum(t["p"] is not None for t in tests))
    for t in tests:
        t["mde"] = mde(t["se"], level)
        resolved = t["status"] in ("for", "against")
        t["n_resolve"] = None if resolved or t["n"] is None else n_to_resolve(t["n"], t["se"], t["diff"], level)
    return level


def _matrix(tests: list[dict]) -> dict[str, dict[str, dict[str, int]]]:
    """{method family: {bits: {status: count}}}: every cell of a shared test counts under its own method and bits."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for t in tests:
        for method, bits in t["members"]:
            row = out.setdefault(str(method), {}).setdefault(str(bits), dict.fromkeys(STATUSES, 0))
            row[t["status"]] += 1
    return out


def _median_resolve(tests: list[dict], level: float) -> tuple[float, int | None] | None:
    """(median Δ, images that would resolve it at α' and 80% power from the median per-image SD SE·√N) over the
    tests that have an SE, or None."""
    usable = [t for t in tests if t["se"] is not None and t["n"]]
    if not usable:
        return None
    diff = median(t["diff"] for t in usable)
    sd = median(t["se"] * math.sqrt(t["n"]) for t in usable)
    return diff, n_to_resolve(1, sd, diff, level)


def _set_metrics(fp: CellRecord, role: str, name: str) -> dict:
    m = fp.get("metrics") or {}
    return m if role == "id" else ((m.get(role) or {}).get(name) or {})


def _paired_claim(key: str, claim: str, tests: list[dict], sign: int, what: str, missing: str,
                  null_claim: bool = False) -> dict:
    """Verdict of a directional claim from Holm-corrected paired tests, one per distinct prediction: `sign` +1
    means the claim predicts variant − FP > 0. holds / does not hold / mixed / not resolved at this N (`null_claim`:
    the claim is that the metric does NOT move in direction `sign`: a significant move that way is against it, one
    the other way for it, and no significant move against it supports it);
    "no test" when every record predates the paired tests. Each test gets a status (STATUSES), an MDE and, unless
    resolved, the N that would resolve it; the claim gets a method family × bits matrix of the statuses."""
    empty = {"key": key, "claim": claim, "holds": None, "n": 0, "agree": 0, "against": 0, "tests": [], "matrix": {},
             "cells": 0}
    if not tests:
        return {**empty, "verdict": "not measured", "evidence": f"not measured: {missing}"}
    distinct = _distinct(tests)
    tested = [t for t in distinct if t["p"] is not None]
    rejected = dict(zip(map(id, tested), holm([t["p"] for t in tested])))
    for t in distinct:
        if t["p"] is None:
            t["status"] = "no test"
        elif rejected[id(t)] and t["diff"] * sign != 0:  # a null claim is refuted by a move in direction `sign`
            t["status"] = "for" if (t["diff"] * sign > 0) != null_claim else "against"
        else:
            t["status"] = "not resolved"
    level = _power_(distinct)
    pro = sum(t["status"] == "for" for t in distinct)
    con = sum(t["status"] == "against" for t in distinct)
    if not tested:
        holds, verdict = None, "no test"
    elif null_claim:
        holds, verdict = (False, "does not hold") if con else (True, "holds")
    elif pro and con:
        holds, verdict = None, "mixed"
    elif pro or con:
        holds, verdict = bool(pro), "holds" if pro else "does not hold"
    else:
        holds, verdict = None, "not resolved at this N"
    sets = sorted({(t["set"], t["n"]) for t in tests}, key=str)
    shared = len(tests) - len(distinct)
    if tested:
        med = _median_resolve(tested, level)
        evidence = (f"{len(tested)} distinct paired tests ({len(tests)} cell × set pairs"
                    + (f", {shared} sharing identical predictions" if shared else "")
                    + f"; Holm at family α = {FAMILY_ALPHA}): {pro} significant for the claim, {con} against it")
        if med is not None:
            n_med = f"about {med[1]:,} images per set" if med[1] is not None else "no N (median Δ = 0)"
            evidence += (f"; median Δ{what} (quant − FP) = {med[0]:+.4f}, which {n_med} would resolve at "
                         f"α/m = {level:.2g} and 80% power (estimate, SE ∝ 1/√N)")
    else:
        evidence = (f"{len(tests)} cell × set pairs from records written before the paired tests: no test (rerun "
                    "the grid for McNemar / DeLong / bootstrap tests)")
    if len(tested) < len(distinct) and tested:
        evidence += f"; {len(distinct) - len(tested)} without a test"
    evidence += "; sets " + ", ".join(f"{s} (N={n})" for s, n in sets)
    return {**empty, "verdict": verdict, "holds": holds, "evidence": evidence, "n": len(tested), "agree": pro,
            "against": con, "tests": distinct, "matrix": _matrix(distinct), "cells": len(tests), "alpha_test": level}


def _noise_finding(records: list[CellRecord]) -> dict:
    tests = _tests(records, "corruptions", "acc1", lambda fp, role, name: name.split(":")[0] in _NOISE)
    return _paired_claim("noise", "Quantization improves noise robustness (acc1 under noise corruptions)", tests,
                         +1, "acc1", "no noise corruption (gaussian/shot/impulse noise) with paired differences")


def _shift_finding(records: list[CellRecord]) -> dict:
    tests = _tests(records, "shift", "acc1")
    return _paired_claim("shift", "Quantization does not improve covariate-shift accuracy", tests, +1, "acc1",
                         "no shift set with paired differences", null_claim=True)


def _resolvable(fp: CellRecord, role: str, name: str) -> bool:
    """FP's ECE on this set is at least RESOLVABLE_ECE × the ECE a perfectly calibrated model shows at its N."""
    m = _set_metrics(fp, role, name)
    ece, floor = num(m.get("ece")), num(m.get("ece_floor"))
    return ece is not None and floor is not None and floor > 0 and ece >= RESOLVABLE_ECE * floor


def _direction(fp: CellRecord, role: str, name: str) -> str | None:
    """'over-confident' when FP's mean confidence exceeds its accuracy on the set, else 'under-confident'."""
    m = _set_metrics(fp, role, name)
    conf, acc = num(m.get("confidence")), num(m.get("acc1"))
    return None if conf is None or acc is None else ("over-confident" if conf > acc else "under-confident")


def _calibration_findings(records: list[CellRecord]) -> list[dict]:
    """ECE claims on the resolvable sets, one per direction of FP's miscalibration (the paper: the direction of the
    change depends on it)."""
    found: list[dict] = []
    by_direction: dict[str, list[dict]] = {}
    for role in ("id", "corruptions", "shift"):
        for t in _tests(records, role, "ece", _resolvable):
            by_direction.setdefault(t["fp_direction"] or "unknown", []).append(t)
    missing = (f"no set where FP's ECE is at least {RESOLVABLE_ECE:g}× its noise floor (the ECE of a perfectly "
               "calibrated model at that N), or no paired differences")
    if not by_direction:
        return [_paired_claim("calibration", "Quantization improves calibration (lower ECE)", [], -1, "ECE",
                              missing)]
    for direction in sorted(by_direction):
        found.append(_paired_claim(f"calibration_{direction.split('-')[0]}",
                                   f"Quantization improves calibration (lower ECE) where FP is {direction}",
                                   by_direction[direction], -1, "ECE", missing))
    return found


def _ood_finding(records: list[CellRecord]) -> dict:
    tests = _tests(records, "ood", "auroc")
    return _paired_claim("ood", "Quantization improves OOD detection (MCM AUROC)", tests, +1, "AUROC",
                         "no OOD set with paired differences")


def _sqnr_finding(records: list[CellRecord]) -> dict:
    rhos = [x for r in records if cell_of(r).get("kind") != "fp"
            if (x := num(spectral_of(r, "sqnr_spearman_rho"))) is not None and x != 0]
    med = f"; median Spearman ρ(rank, SQNR) = {median(rhos):+.3f}" if rhos else ""
    return _sign_verdict("sqnr", "SQNR decays with rank", sum(r < 0 for r in rhos), len(rhos),
                         "ρ < 0 in {k}/{n} non-FP cells (ρ = 0 dropped)" + med, "no per-rank SQNR in these records")


def _cell_damping(rec: CellRecord) -> tuple[float, str] | None:
    """(mean tail σ_q/σ_fp, 'damped' | 'amplified' | 'not resolved' | 'no interval') of one cell: its 95% interval
    over layers below 1, above 1, around 1; records without per-layer values give the binned mean, 'no interval'."""
    iv = spectral_of(rec, "tail_damping") or {}
    m, lo, hi = num(iv.get("mean")), num(iv.get("low")), num(iv.get("high"))
    if m is None:
        t = damping_mean(rec, lambda x: x >= 0.5)
        return None if t is None else (t, "no interval")
    if lo is None or hi is None:
        return m, "no interval"
    return m, "damped" if hi < 1 else "amplified" if lo > 1 else "not resolved"


def _weight_damping_finding(records: list[CellRecord]) -> dict:
    cells = [d for r in records if cell_of(r).get("kind") in QUANT_KINDS if (d := _cell_damping(r)) is not None]
    tails = [t for t, _ in cells if t != 1]
    k = sum(t < 1 for t in tails)
    counts = {s: sum(st == s for _, st in cells) for s in ("damped", "amplified", "not resolved", "no interval")}
    med = f"; median tail σ_q/σ_fp = {median(t for t, _ in cells):.4f}" if cells else ""
    med += ("; per cell, 95% t-interval over layers: " + ", ".join(f"{v} {s}" for s, v in counts.items() if v)
            if cells else "")
    if tails and 2 * k < len(tails):
        med += " (quantization noise adds energy to the weights' tail; the paper's damping is in the features)"
    return _sign_verdict("weight_damping", "Quantization damps the weights' high-rank singular values", k, len(tails),
                         "mean σ_q/σ_fp < 1 over the bottom 50% of ranks in {k}/{n} quant cells" + med,
                         "no weight-spectrum damping for quant cells")


def _rank_match_finding(records: list[CellRecord]) -> dict:
    refs, by_variant = references(records), {(group_of(r), cell_of(r).get("variant")): r for r in records}
    same_acc = same_ece = 0
    flags = []
    for rec in sorted(records, key=sort_key):
        fp, partner = refs.get(group_of(rec)), by_variant.get((group_of(rec), f"rank-match:{cell_of(rec).get('variant')}"))
        if cell_of(rec).get("kind") not in QUANT_KINDS or fp is None or partner is None:
            continue
        s_q, s_r, s_f = scalars(rec), scalars(partner), scalars(fp)
        if any(s[k] is None for s in (s_q, s_r, s_f) for k in ("acc1", "ece")):
            continue
        a = (s_q["acc1"] > s_f["acc1"]) == (s_r["acc1"] > s_f["acc1"])
        e = (s_q["ece"] > s_f["ece"]) == (s_r["ece"] > s_f["ece"])
        same_acc, same_ece = same_acc + a, same_ece + e
        flags.append(a and e)
    return _sign_verdict("rank_match", "Rank truncation reproduces quantization's effect at matched weight error",
                         sum(flags), len(flags),
                         "acc1 and ECE move in the same direction vs FP for {k}/{n} quant cells and their rank-match "
                         f"partner (acc1: {same_acc}/{len(flags)}, ECE: {same_ece}/{len(flags)})",
                         "no quant cell with a rank-match partner and an FP reference")


def findings(records: list[CellRecord]) -> list[dict]:
    """The paper's claims tested on these records: [{key, claim, holds: bool|None, verdict, evidence, ...}].

    Claims about metrics (noise, shift, calibration, OOD) are judged from paired tests against FP on the same
    images (McNemar, bootstrap, DeLong), one per distinct prediction, Holm-corrected per claim; calibration only on
    sets where FP is clearly miscalibrated, split by the direction of FP's miscalibration. The spectral claims are
    sign tests over cells."""
    return [_noise_finding(records), _shift_finding(records), *_calibration_findings(records),
            _ood_finding(records), _sqnr_finding(records), _weight_damping_finding(records),
            _rank_match_finding(records)]
