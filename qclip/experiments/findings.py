"""The paper's directional claims tested on a grid's cell records (`findings`). Writes nothing."""

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

__all__ = ["findings"]


def _verdict(key: str, claim: str, flags: list[bool], evidence: str, missing: str) -> dict:
    """A finding from per-cell yes/no flags: holds when a strict majority agrees; None when nothing to compare."""
    n, k = len(flags), sum(flags)
    if not n:
        return {"key": key, "claim": claim, "holds": None, "evidence": f"not measured: {missing}", "n": 0, "agree": 0}
    return {"key": key, "claim": claim, "holds": k * 2 > n, "evidence": evidence.format(k=k, n=n), "n": n, "agree": k}


def _scalar_pairs(records: list[CellRecord]) -> list[tuple[dict, dict]]:
    """(quant `scalars`, FP `scalars`) of every quant/qat cell whose group has an FP reference."""
    refs = references(records)
    return [(scalars(rec), scalars(refs[group_of(rec)])) for rec in sorted(records, key=sort_key)
            if cell_of(rec).get("kind") in QUANT_KINDS and group_of(rec) in refs]


def _pairs(records: list[CellRecord], metric: str) -> list[tuple[float, float]]:
    """(quant value, FP value) of a `scalars` metric for every quant/qat cell whose group has an FP reference."""
    return [(q[metric], f[metric]) for q, f in _scalar_pairs(records)
            if q[metric] is not None and f[metric] is not None]


def _compare(key: str, claim: str, metric: str, better, verb: str, what: str, missing: str):
    """A claim that compares a `scalars` metric of each quant cell with its FP reference."""
    def run(records: list[CellRecord]) -> dict:
        pairs = _pairs(records, metric)
        med = (f"; median {what}: {median(q for q, _ in pairs):.4f} (quant) vs {median(f for _, f in pairs):.4f} (FP)"
               if pairs else "")
        return _verdict(key, claim, [better(q, f) for q, f in pairs], "{k}/{n} quant cells " + verb + med, missing)
    return run


_calibration_vote = _compare("calibration", "Quantization improves calibration (lower ECE)", "ece", lambda q, f: q < f,
                             "have lower ECE than FP", "ECE", "no quant cell with an FP reference")


def _calibration_finding(records: list[CellRecord]) -> dict:
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
    """The paper's directional claims tested on these records: [{claim, holds: bool|None, evidence: str, ...}]."""
    return [*(claim(records) for claim in _CLAIMS), _sqnr_finding(records), _weight_damping_finding(records),
            _rank_match_finding(records)]
