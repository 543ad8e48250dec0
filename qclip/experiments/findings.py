"""The paper's claims tested on a grid's cell records (`findings`): metric claims from paired bootstrap differences
against FP with a Holm correction per claim, spectral claims by counting cells. Writes nothing."""

from __future__ import annotations

from statistics import median

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

__all__ = ["findings", "holm", "FAMILY_ALPHA", "RESOLVABLE_ECE"]

_NOISE = ("gaussian_noise", "shot_noise", "impulse_noise")


def _verdict(key: str, claim: str, flags: list[bool], evidence: str, missing: str) -> dict:
    """A spectral finding from per-cell yes/no flags: holds when a strict majority agrees; None when nothing to
    compare (these are properties of each cell's spectra, not test-set estimates)."""
    n, k = len(flags), sum(flags)
    if not n:
        return {"key": key, "claim": claim, "holds": None, "verdict": "not measured",
                "evidence": f"not measured: {missing}", "n": 0, "agree": 0}
    return {"key": key, "claim": claim, "holds": k * 2 > n, "verdict": "holds" if k * 2 > n else "does not hold",
            "evidence": evidence.format(k=k, n=n), "n": n, "agree": k}


# ------------------------------------------------------------------------------------- paired, multiplicity-aware
FAMILY_ALPHA = 0.05  # family-wise error rate of each claim's tests (Holm-Bonferroni)
RESOLVABLE_ECE = 3.0  # an ECE claim is tested only on sets where FP's ECE is at least this many times its floor


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
    """One test per (quant cell, set of `role`) from the cells' paired bootstrap differences against FP:
    {cell, set, n, diff, low, high, p, fp_direction} (FP's over-/under-confidence on that set);
    `select(fp_record, role, set_name)` may drop sets."""
    refs = references(records)
    out = []
    for rec in sorted(records, key=sort_key):
        fp = refs.get(group_of(rec))
        if cell_of(rec).get("kind") not in QUANT_KINDS or fp is None:
            continue
        paired = (rec.get("paired") or {})
        block = {"": paired.get("id")} if role == "id" else (paired.get(role) or {})
        for name, entry in block.items():
            stats = (entry or {}).get(metric) or {}
            if num(stats.get("p")) is None or num(stats.get("diff")) is None:
                continue
            if select is not None and not select(fp, role, name):
                continue
            out.append({"cell": cell_of(rec).get("id"), "set": name or "id", "n": entry.get("n"),
                        "diff": stats["diff"], "low": stats.get("low"), "high": stats.get("high"), "p": stats["p"],
                        "fp_direction": _direction(fp, role, name)})
    return out


def _set_metrics(fp: CellRecord, role: str, name: str) -> dict:
    m = fp.get("metrics") or {}
    return m if role == "id" else ((m.get(role) or {}).get(name) or {})


def _paired_claim(key: str, claim: str, tests: list[dict], sign: int, what: str, missing: str,
                  null_claim: bool = False) -> dict:
    """Verdict of a directional claim from Holm-corrected paired tests: `sign` +1 means the claim predicts
    variant − FP > 0. holds / does not hold / mixed / not resolved at this N (`null_claim`: the claim is that the
    metric does NOT move in direction `sign`, so no significant move that way is what supports it)."""
    if not tests:
        return {"key": key, "claim": claim, "holds": None, "verdict": "not measured",
                "evidence": f"not measured: {missing}", "n": 0, "agree": 0, "against": 0, "tests": []}
    rejected = holm([t["p"] for t in tests])
    pro = sum(r and t["diff"] * sign > 0 for r, t in zip(rejected, tests))
    con = sum(r and t["diff"] * sign < 0 for r, t in zip(rejected, tests))
    if null_claim:
        holds, verdict = (False, "does not hold") if pro else (True, "holds")
    elif pro and con:
        holds, verdict = None, "mixed"
    elif pro or con:
        holds, verdict = bool(pro), "holds" if pro else "does not hold"
    else:
        holds, verdict = None, "not resolved at this N"
    sets = sorted({(t["set"], t["n"]) for t in tests}, key=str)
    diffs = sorted(t["diff"] for t in tests)
    evidence = (f"{len(tests)} paired tests (cell × set, Holm at family α = {FAMILY_ALPHA}): {pro} significant in "
                f"the claimed direction, {con} against; median Δ{what} (quant − FP) = {median(diffs):+.4f}; sets "
                + ", ".join(f"{s} (N={n})" for s, n in sets))
    return {"key": key, "claim": claim, "holds": holds, "verdict": verdict, "evidence": evidence,
            "n": len(tests), "agree": pro, "against": con, "tests": tests}


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
            if (x := num(spectral_of(r, "sqnr_spearman_rho"))) is not None]
    med = f"; median Spearman ρ(rank, SQNR) = {median(rhos):+.3f}" if rhos else ""
    return _verdict("sqnr", "SQNR decays with rank", [r < 0 for r in rhos],
                    "ρ < 0 in {k}/{n} non-FP cells" + med, "no per-rank SQNR in these records")


def _weight_damping_finding(records: list[CellRecord]) -> dict:
    tails = [t for r in records if cell_of(r).get("kind") in QUANT_KINDS
             if (t := damping_mean(r, lambda x: x >= 0.5)) is not None]
    flags = [t < 1 for t in tails]
    med = f"; median tail σ_q/σ_fp = {median(tails):.4f}" if tails else ""
    if tails and sum(flags) * 2 <= len(flags):
        med += " (quantization noise adds energy to the weights' tail; the paper's damping is in the features)"
    return _verdict("weight_damping", "Quantization damps the weights' high-rank singular values", flags,
                    "σ_q/σ_fp < 1 over the bottom 50% of ranks in {k}/{n} quant cells" + med,
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
    return _verdict("rank_match", "Rank truncation reproduces quantization's effect at matched weight error", flags,
                    "acc1 and ECE move in the same direction vs FP for {k}/{n} quant cells and their rank-match "
                    f"partner (acc1: {same_acc}/{len(flags)}, ECE: {same_ece}/{len(flags)})",
                    "no quant cell with a rank-match partner and an FP reference")


def findings(records: list[CellRecord]) -> list[dict]:
    """The paper's claims tested on these records: [{key, claim, holds: bool|None, verdict, evidence, ...}].

    Claims about metrics (noise, shift, calibration, OOD) are judged from paired bootstrap differences against FP
    on the same images, Holm-corrected per claim; calibration only on sets where FP is clearly miscalibrated,
    split by the direction of FP's miscalibration. The spectral claims count cells."""
    return [_noise_finding(records), _shift_finding(records), *_calibration_findings(records),
            _ood_finding(records), _sqnr_finding(records), _weight_damping_finding(records),
            _rank_match_finding(records)]
