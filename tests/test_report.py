"""Ablation report: tidy CSV, Markdown tables and plots against the records, the paper's claims on constructed cases."""

from __future__ import annotations

import copy
import csv
import random
import re

import pytest

from qclip.experiments.report import CSV_COLUMNS, findings, tidy_rows, write_report

OOD = ["wds/ood_a", "wds/ood_b"]
CORR = ["gaussian_noise:3", "defocus_blur:3"]
SHIFT = ["wds/shift_a", "wds/shift_b"]
SPUR = ["wds/pacs_photo", "wds/pacs_sketch"]

# variant -> (kind, method, bits, scope, acc1, ece, auroc per OOD, noise acc1, shift acc1, weight error, ρ)
# FP: acc 0.80, noise 0.40 (retained 0.50), shift mean 0.40, AUROC mean 0.85, ECE 0.10.
# quant cells: noise retained 0.5316 / 0.5429 / 0.4800 -> better in 2/3; shift ≤ FP in 2/3 (rot-vt is higher);
# ECE lower in 2/3; mean AUROC higher in 1/3 only -> the OOD claim does not hold.
# rank-match:w4a8 moves acc1 and ECE the same way as w4a8 (both down) -> 1/1. ρ < 0 in 4/6 non-FP cells.
CELLS = {
    "fp": ("fp", None, None, None, 0.80, 0.10, (0.90, 0.80), 0.40, (0.50, 0.30), None, None),
    "w8a8": ("quant", "rtn", "w8a8", "vision", 0.79, 0.08, (0.91, 0.81), 0.42, (0.49, 0.29), 0.01, -0.5),
    "w4a8": ("quant", "rtn", "w4a8", "vision", 0.70, 0.06, (0.88, 0.79), 0.38, (0.45, 0.28), 0.12, -0.3),
    "w4a8-rot-vt": ("quant", "rotation", "w4a8", "vision+text", 0.75, 0.12, (0.89, 0.80), 0.36, (0.51, 0.31),
                    0.10, 0.2),
    "rank-match:w4a8": ("rank-match", None, None, "vision", 0.72, 0.07, (0.87, 0.78), 0.39, (0.46, 0.27), 0.12, -0.1),
    "rank-e0.9": ("rank", None, None, "vision", 0.78, 0.09, (0.90, 0.80), 0.40, (0.50, 0.30), 0.05, -0.6),
    "rank-e0.5": ("rank", None, None, "vision", 0.60, 0.15, (0.80, 0.70), 0.30, (0.40, 0.20), 0.30, 0.4),
}
ORDER = ["fp", "w8a8", "w4a8", "w4a8-rot-vt", "rank-match:w4a8", "rank-e0.9", "rank-e0.5"]

# Paired differences against FP (quant − FP, p-value) of the three quant cells, per (role, set, metric). Holm at
# 0.05 over 3 tests rejects p ≤ 0.0167, then ≤ 0.025, then ≤ 0.05 (step-down):
# - noise (gaussian_noise:3 acc1): +0.02 (p .001), −0.02 (p .3), +0.01 (p .02) -> 2 for, 0 against: holds;
# - shift acc1 (6 tests): only w4a8-rot-vt on shift_a is significant, upwards -> "does not improve" does not hold;
# - ECE on the ID set (resolvable: FP ECE 0.10 ≥ 3 × floor 0.01; FP over-confident): −0.02 (p .01), −0.04
#   (p .001), +0.02 (p .2) -> holds for over-confident; shift_a (resolvable, FP under-confident): nothing
#   significant -> not resolved; defocus_blur, gaussian_noise and shift_b are not resolvable (ECE < 3 × floor);
# - MCM AUROC (6 tests): w4a8 on ood_a −0.02 (p .001) only -> does not hold.
PAIRED = {
    ("corruptions", "gaussian_noise:3", "acc1"): {"w8a8": (0.02, 0.001), "w4a8": (-0.02, 0.3),
                                                  "w4a8-rot-vt": (0.01, 0.02)},
    ("shift", "wds/shift_a", "acc1"): {"w8a8": (-0.01, 0.4), "w4a8": (-0.05, 0.06), "w4a8-rot-vt": (0.05, 0.001)},
    ("shift", "wds/shift_b", "acc1"): {"w8a8": (-0.01, 0.5), "w4a8": (-0.02, 0.2), "w4a8-rot-vt": (0.01, 0.6)},
    ("id", None, "ece"): {"w8a8": (-0.02, 0.01), "w4a8": (-0.04, 0.001), "w4a8-rot-vt": (0.02, 0.2)},
    ("shift", "wds/shift_a", "ece"): {"w8a8": (-0.01, 0.5), "w4a8": (0.01, 0.4), "w4a8-rot-vt": (0.0, 1.0)},
    ("ood", "wds/ood_a", "auroc"): {"w8a8": (0.01, 0.5), "w4a8": (-0.02, 0.001), "w4a8-rot-vt": (-0.01, 0.3)},
    ("ood", "wds/ood_b", "auroc"): {"w8a8": (0.01, 0.5), "w4a8": (-0.01, 0.3), "w4a8-rot-vt": (0.0, 1.0)},
}


TESTS = {"acc1": "mcnemar", "ece": "bootstrap", "auroc": "delong"}
SE = 0.005  # every constructed test's standard error


def _paired(variant: str, corruptions) -> dict | None:
    """The paired block of a quant cell: every set it was evaluated on, with PAIRED's values (else p = 1)."""
    if CELLS[variant][0] != "quant":
        return None

    def stats(role, name, metric):
        d, p = PAIRED.get((role, name, metric), {}).get(variant, (0.0, 1.0))
        return {"test": TESTS[metric], "diff": d, "low": d - 0.01, "high": d + 0.01, "p": p, "se": SE,
                **({"resamples": 4799} if metric == "ece" else {})}

    labelled = lambda role, name: {"n": 500, "hash": f"{variant}|{role}|{name}", "acc1": stats(role, name, "acc1"),  # noqa: E731
                                   "ece": stats(role, name, "ece")}
    return {"id": {**labelled("id", None), "n": 1000},
            "corruptions": {c: labelled("corruptions", c) for c in corruptions},
            "shift": {s: labelled("shift", s) for s in SHIFT},
            "ood": {o: {"n": 1500, "hash": f"{variant}|ood|{o}", "auroc": stats("ood", o, "auroc")} for o in OOD}}


def _bins(acc1: float) -> dict:
    lower = [i / 15 for i in range(15)]
    count = [0] * 10 + [40, 60, 80, 100, 120]
    return {"lower": lower, "upper": [x + 1 / 15 for x in lower], "count": count,
            "accuracy": [None] * 10 + [acc1 - 0.1 + 0.03 * i for i in range(5)],
            "confidence": [None] * 10 + [lower[10 + i] + 1 / 30 for i in range(5)]}


def make_record(variant: str, *, corruptions=CORR, seed: int = 0) -> dict:
    kind, method, bits, scope, acc1, ece, aurocs, noise, shift, wre, rho = CELLS[variant]
    metrics = {
        "acc1": acc1, "acc5": min(1.0, acc1 + 0.15), "ece": ece, "ece_adaptive": ece + 0.01, "mce": 2 * ece,
        "nll": 1.5 - acc1, "brier": 0.6 - acc1 / 2, "ece_ts": ece / 2, "logit_scale": 100.0, "logit_scale_ts": 50.0,
        "reliability": _bins(acc1),
        "ood": {name: {score: {"auroc": a, "aupr": a - 0.05, "fpr95": 1.3 - a}
                       for score in ("mcm", "max_logit", "energy", "entropy")} for name, a in zip(OOD, aurocs)},
        "ece_floor": 0.01, "ece_floor_sd": 0.003, "confidence": acc1 + 0.1,
        "corruptions": {c: {"acc1": noise if "noise" in c else acc1 - 0.2, "ece": ece + 0.02, "nll": 2.0,
                            "brier": 0.5, "ece_floor": 0.05, "confidence": 0.5} for c in corruptions},
        "shift": {name: {"acc1": a, "ece": ece + 0.03, "n": 500, "ece_floor": floor, "confidence": a - 0.2}
                  for name, a, floor in zip(SHIFT, shift, (0.02, 0.1))},
        "spurious": {"acc_common": acc1, "acc_counter": acc1 - 0.2, "rsg": 0.2 / acc1},
        "ci": {"acc1": [acc1 - 0.01, acc1 + 0.01], "ece": [ece - 0.01, ece + 0.01]},
    }
    ratio = None if wre is None else [1.0 - wre * i / 20 for i in range(20)]
    return {
        "hash": f"{ORDER.index(variant) * 100 + seed:016x}", "grid": "test",
        "cell": {"id": f"demo|{variant}|s{seed}", "model": "demo", "pretrained": None, "variant": variant,
                 "kind": kind, "method": method, "bits": bits, "scope": scope, "seed": seed},
        "datasets": {"id": "wds/cifar10", "ood": OOD, "shift": SHIFT, "corruptions": list(corruptions),
                     "spurious": SPUR},
        "n": 1000, "metrics": metrics, "delta": None, "paired": _paired(variant, corruptions),
        "spectral": {"weight_rel_error": wre, "weight_maps": 0 if wre is None else 12,
                     "damping": None if wre is None else {"rank_fraction": [(b + 0.5) / 20 for b in range(20)],
                                                          "ratio": ratio},
                     "sqnr_db": None if rho is None else [30.0 + 5 * rho * i for i in range(32)],
                     "band_sqnr_db": None if rho is None else {"0-8": 30.0, "8-64": 25.0, "64-": 20.0},
                     "sqnr_spearman_rho": rho,
                     "band_accuracy": {"0-8": acc1 - 0.3, "8-64": acc1 - 0.2, "64-": 0.1, "all": acc1},
                     "feature_effective_rank": 20.0},
        "quant_report": None, "seconds": 2.0, "timings": {"build": 0.5, "eval": 1.0, "spectral": 0.5},
        "versions": {}, "written_at": 1.7e9,
    }


def make_records(**kw) -> list[dict]:
    records = [make_record(v, **kw) for v in ORDER]
    random.Random(0).shuffle(records)  # the report sorts them itself
    return records


def _delta_text(fp: float, q: float) -> str:
    d = (fp - q) / fp * 100
    return f" ({'+' if d > 0 else '−'}{abs(d):.1f}%)" if round(abs(d), 1) else " (0.0%)"


def _section(md: str, name: str) -> str:
    return md.split(f"## {name}\n", 1)[1].split("\n## ", 1)[0]


def _table_rows(section: str) -> list[list[str]]:
    lines = [ln for ln in section.splitlines() if ln.startswith("| ")]
    return [[x.strip() for x in ln.strip("|").split("|")] for ln in lines[1:]]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    records = make_records()
    summary = write_report(records, out, title="test grid", grid={"name": "test"})
    return out, records, summary


def test_files_and_linked_plots_exist(report):
    out, records, summary = report
    md = (out / "report.md").read_text()
    assert summary["report"] == str(out / "report.md") and summary["csv"] == str(out / "results.csv")
    assert summary["cells"] == len(records)
    links = re.findall(r"\]\((plots/[^)]+\.png)\)", md)
    for name in ("quant_vs_rank", "sqnr_vs_rank", "band_accuracy", "damping", "reliability_demo_fp_s0"):
        assert f"plots/{name}.png" in links
    assert sum(link.startswith("plots/reliability_") for link in links) == len(records)
    for link in links:
        assert (out / link).stat().st_size > 1000
    assert sorted(summary["plots"]) == sorted(str(out / link) for link in links)
    for section in ("Main table", "Quantization vs rank truncation", "Reliability diagrams", "SQNR vs rank",
                    "Rank-band accuracy", "Weight-spectrum damping", "Findings"):
        assert f"## {section}\n" in md
    assert "positive δ" in md and "95% ID recall" in md and "T=1" in md


def test_csv_rows_equal_records(report):
    out, records, _ = report
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == CSV_COLUMNS
    assert len(rows) == len(records) * (1 + len(OOD) + len(CORR) + len(SHIFT) + 1)
    assert list(dict.fromkeys(r["variant"] for r in rows)) == ORDER
    by = {(r["variant"], r["role"], r["dataset"]): r for r in rows}
    for rec in records:
        v, m = rec["cell"]["variant"], rec["metrics"]
        fp = CELLS["fp"]
        row = by[(v, "id", "wds/cifar10")]
        for k in ("acc1", "acc5", "ece", "ece_ts", "nll", "brier"):
            assert float(row[k]) == m[k]
        assert row["auroc"] == "" and row["kind"] == rec["cell"]["kind"]
        if v == "fp":
            assert row["delta_acc1"] == "" and row["weight_rel_error"] == ""
        else:
            assert float(row["delta_acc1"]) == pytest.approx((fp[4] - m["acc1"]) / fp[4])
            assert float(row["weight_rel_error"]) == rec["spectral"]["weight_rel_error"]
        for name in OOD:
            r = by[(v, "ood", name)]
            assert [float(r[k]) for k in ("auroc", "aupr", "fpr95")] == [m["ood"][name]["mcm"][k]
                                                                          for k in ("auroc", "aupr", "fpr95")]
            assert r["acc1"] == ""
        for name in CORR:
            assert float(by[(v, "corruption", name)]["acc1"]) == m["corruptions"][name]["acc1"]
        for name in SHIFT:
            assert float(by[(v, "shift", name)]["acc1"]) == m["shift"][name]["acc1"]
        assert float(by[(v, "spurious", "|".join(SPUR))]["rsg"]) == m["spurious"]["rsg"]
    w4 = by[("w4a8", "ood", OOD[0])]
    assert float(w4["delta_auroc"]) == pytest.approx((0.90 - 0.88) / 0.90)


def test_main_table_equals_store_values(report):
    out, records, _ = report
    rows = _table_rows(_section((out / "report.md").read_text(), "Main table"))
    assert [r[0] for r in rows] == ORDER
    fp = next(r for r in records if r["cell"]["kind"] == "fp")["metrics"]
    for rec, row in zip(sorted(records, key=lambda r: ORDER.index(r["cell"]["variant"])), rows, strict=True):
        m, is_fp = rec["metrics"], rec["cell"]["kind"] == "fp"

        def cell(value, ref, is_fp=is_fp):
            return f"{value:.4f}" + ("" if is_fp else _delta_text(ref, value))

        assert row[1] == (rec["cell"]["scope"] or "—")
        assert row[2:6] == [cell(m[k], fp[k]) for k in ("acc1", "ece", "ece_ts", "nll")]
        for j, name in enumerate(OOD):
            q, f = m["ood"][name]["mcm"], fp["ood"][name]["mcm"]
            assert row[6 + j] == f"{cell(q['auroc'], f['auroc'])} / {cell(q['fpr95'], f['fpr95'])}"

        def mean(block):
            return sum(v["acc1"] for v in block.values()) / len(block)

        assert row[8] == cell(mean(m["corruptions"]), mean(fp["corruptions"]))
        assert row[9] == cell(mean(m["shift"]), mean(fp["shift"]))
    assert rows[2][2] == "0.7000 (+12.5%)" and rows[2][3] == "0.0600 (+40.0%)"  # w4a8: acc down, ECE down
    assert rows[3][3] == "0.1200 (−20.0%)"


def test_quant_vs_rank_pairs(report):
    out, _, _ = report
    rows = _table_rows(_section((out / "report.md").read_text(), "Quantization vs rank truncation"))
    pairs = [(r[0], r[1], r[2]) for r in rows]
    assert ("w4a8", "rank-match", "rank-match:w4a8") in pairs
    assert ("w4a8", "nearest rank", "rank-e0.9") in pairs  # |0.12 - 0.05| < |0.12 - 0.30|
    assert ("w8a8", "nearest rank", "rank-e0.9") in pairs
    assert not any(p[0] == "w8a8" and p[1] == "rank-match" for p in pairs)


def test_findings_on_constructed_records():
    found = {f["key"]: f for f in findings(make_records())}
    paired = {"noise": (True, "holds", 3, 2, 0), "shift": (False, "does not hold", 6, 0, 1),
              "calibration_over": (True, "holds", 3, 2, 0),
              "calibration_under": (None, "not resolved at this N", 3, 0, 0),
              "ood": (False, "does not hold", 6, 0, 1)}
    for key, (holds, verdict, n, pro, con) in paired.items():
        f = found[key]
        assert (f["holds"], f["verdict"], f["n"], f["agree"], f["against"]) == (holds, verdict, n, pro, con), key
        assert f"{n} distinct paired tests" in f["evidence"]
        assert f"{pro} significant for the claim, {con} against it" in f["evidence"]
    assert "wds/shift_a (N=500)" in found["calibration_under"]["evidence"]
    assert "shift_b" not in found["calibration_under"]["evidence"]  # FP ECE 0.13 < 3 × floor 0.1: not resolvable
    assert "id (N=1000)" in found["calibration_over"]["evidence"]
    # sign tests over cells: 4 of 6 (p = 0.6875) and 1 of 1 (p = 1) resolve nothing at α = 0.05
    expected = {"sqnr": (None, 6, 4, 0.6875), "rank_match": (None, 1, 1, 1.0)}
    for key, (holds, n, agree, p) in expected.items():
        f = found[key]
        assert (f["holds"], f["n"], f["agree"]) == (holds, n, agree) and f["p"] == pytest.approx(p), key
        assert f"{agree}/{n}" in f["evidence"] and f["verdict"] == "not resolved at this N"
        assert f["claim"]
    assert "-0.200" in found["sqnr"]["evidence"]  # median ρ of (-0.6, -0.5, -0.3, -0.1, 0.2, 0.4)
    damped = found["weight_damping"]  # ratios 1 - wre·i/20 fall below 1 in every quant cell with a weight error
    assert damped["n"] == damped["agree"] == 3 and damped["p"] == pytest.approx(0.25) and damped["holds"] is None
    assert "adds energy" not in damped["evidence"] and "3 no interval" in damped["evidence"]


def test_verdict_matrix_by_method_and_bits():
    found = {f["key"]: f for f in findings(make_records())}
    # noise: w8a8 (rtn) +0.02 p .001 and w4a8-rot-vt (rotation) +0.01 p .02 significant for; w4a8 (rtn) not
    assert found["noise"]["matrix"] == {
        "rtn": {"w8a8": {"for": 1, "against": 0, "not resolved": 0, "no test": 0},
                "w4a8": {"for": 0, "against": 0, "not resolved": 1, "no test": 0}},
        "rotation": {"w4a8": {"for": 1, "against": 0, "not resolved": 0, "no test": 0}}}
    # MDE at α/m = 0.05/3 and 80% power from SE 0.005: (z_{1 − 0.05/6} + z_0.8)·0.005; w4a8's Δ −0.02 would be
    # resolved at N′ = 500·(MDE/0.02)²
    from statistics import NormalDist

    mde = (NormalDist().inv_cdf(1 - 0.05 / 6) + NormalDist().inv_cdf(0.8)) * SE
    w4a8 = next(t for t in found["noise"]["tests"] if t["cells"] == ["demo|w4a8|s0"])
    assert w4a8["mde"] == pytest.approx(mde) and w4a8["n_resolve"] == int(-(-500 * (mde / 0.02) ** 2 // 1))
    assert all(t["n_resolve"] is None for t in found["noise"]["tests"] if t["status"] == "for")


def test_identical_predictions_share_one_test(tmp_path):
    records = make_records()
    twin = copy.deepcopy(next(r for r in records if r["cell"]["variant"] == "w8a8"))
    twin["cell"].update(id="demo|w8a8-smoothquant|s0", variant="w8a8-smoothquant", method="smoothquant")
    twin["hash"] = "twin"
    records.append(twin)  # the same logits digests as w8a8 on every set: its tests are w8a8's
    found = {f["key"]: f for f in findings(records)}
    noise = found["noise"]
    assert noise["n"] == 3 and noise["cells"] == 4 and "1 sharing identical predictions" in noise["evidence"]
    shared = next(t for t in noise["tests"] if len(t["cells"]) == 2)
    assert shared["cells"] == ["demo|w8a8|s0", "demo|w8a8-smoothquant|s0"] and shared["status"] == "for"
    assert noise["matrix"]["smoothquant"]["w8a8"]["for"] == 1 and noise["matrix"]["rtn"]["w8a8"]["for"] == 1
    write_report(records, tmp_path)
    assert "| demo\\|w8a8\\|s0 = demo\\|w8a8-smoothquant\\|s0 | gaussian_noise:3 |" in (tmp_path / "report.md").read_text()
    # a different digest on one set is a test of its own there
    twin["paired"]["corruptions"]["gaussian_noise:3"]["hash"] = "other"
    assert {f["key"]: f for f in findings(records)}["noise"]["n"] == 4


def test_records_without_tests_are_reported_as_no_test(tmp_path):
    records = make_records()
    for rec in records:  # a store written before the paired tests: {diff, low, high, p}, no "test", no digest
        for block in (rec.get("paired") or {}).values():
            for entry in ([block] if "n" in block else block.values()):
                entry.pop("hash", None)
                for stats in entry.values():
                    if isinstance(stats, dict):
                        stats.pop("test")
                        stats.pop("se")
    found = {f["key"]: f for f in write_report(records, tmp_path)["findings"]}
    assert found["noise"]["verdict"] == "no test" and found["noise"]["holds"] is None
    assert "no test" in found["noise"]["evidence"] and found["noise"]["matrix"]["rtn"]["w8a8"]["no test"] == 1
    assert "| no test |" in _section((tmp_path / "report.md").read_text(), "Findings")


def test_spectral_sign_tests_resolve_with_enough_cells():
    records = make_records()
    extra = []
    for i in range(6):  # 9 quant cells in all, each damped with an interval over layers below 1
        rec = copy.deepcopy(next(r for r in records if r["cell"]["variant"] == "w4a8"))
        rec["cell"].update(id=f"demo|w3a8-{i}|s0", variant=f"w3a8-{i}")
        extra.append(rec)
    records += extra
    for rec in records:
        if rec["cell"]["kind"] == "quant":
            rec["spectral"]["tail_damping"] = {"mean": 0.97, "low": 0.95, "high": 0.99, "layers": 12}
    damped = {f["key"]: f for f in findings(records)}["weight_damping"]
    # 9 of 9 cells below 1: two-sided sign test p = 2 / 2⁹
    assert damped["holds"] is True and damped["p"] == pytest.approx(2 / 2 ** 9) and "9 damped" in damped["evidence"]


def test_calibration_is_judged_only_where_fp_is_clearly_miscalibrated():
    records = make_records()
    fp = next(r for r in records if r["cell"]["kind"] == "fp")
    fp["metrics"]["ece_floor"] = 0.04  # FP's ID ECE 0.10 is now only 2.5 × its floor
    found = {f["key"]: f for f in findings(records)}
    assert "calibration_over" not in found and found["calibration_under"]["n"] == 3
    fp["metrics"]["shift"]["wds/shift_a"]["ece_floor"] = 0.05  # and shift_a (ECE 0.13) no longer either
    found = {f["key"]: f for f in findings(records)}
    assert found["calibration"]["holds"] is None and "3× its noise floor" in found["calibration"]["evidence"]


def test_weight_damping_finding_when_the_tail_grows():
    records = make_records()
    for rec in records:
        if rec["spectral"].get("damping"):
            rec["spectral"]["damping"]["ratio"] = [1.0 + 0.01 * i for i in range(20)]
    found = {f["key"]: f for f in findings(records)}["weight_damping"]
    # 0 of 3 below 1: the sign test (p = 0.25) does not resolve it, the evidence names the tail's growth
    assert found["holds"] is None and found["agree"] == 0 and "adds energy" in found["evidence"]


def test_findings_that_do_not_hold_or_are_not_measured():
    records = make_records(corruptions=["defocus_blur:3"])
    for rec in records:
        if rec["cell"]["variant"] == "rank-match:w4a8":  # acc1 up while w4a8's went down
            rec["metrics"]["acc1"] = 0.85
        rec["metrics"]["shift"] = {}
        if rec.get("paired"):
            rec["paired"]["shift"] = {}
    found = {f["key"]: f for f in findings(records)}
    assert found["rank_match"]["agree"] == 0 and "acc1: 0/1" in found["rank_match"]["evidence"]
    for key in ("noise", "shift"):
        assert found[key]["holds"] is None and found[key]["n"] == 0
        assert found[key]["evidence"].startswith("not measured")


def test_missing_fp_reference_gives_empty_deltas(tmp_path):
    records = [r for r in make_records() if r["cell"]["kind"] != "fp"]
    rows = tidy_rows(records)
    assert rows and all(r[f"delta_{k}"] is None for r in rows for k in ("acc1", "ece", "auroc", "rsg"))
    summary = write_report(records, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "(" not in "".join(r[2] for r in _table_rows(_section(md, "Main table")))
    found = {f["key"]: f for f in summary["findings"]}
    assert found["calibration"]["holds"] is None and found["sqnr"]["agree"] == 4
    assert "not measured" in _section(md, "Findings")


def test_minimal_and_empty_records(tmp_path):
    rec = make_record("fp")
    for key in ("ood", "corruptions", "shift", "spurious", "reliability"):
        del rec["metrics"][key]
    rec["spectral"] = {}
    rec["datasets"] = {"id": "wds/cifar10"}
    summary = write_report([copy.deepcopy(rec)], tmp_path / "one")
    md = (tmp_path / "one" / "report.md").read_text()
    assert "No reliability bins" in md and "No per-rank SQNR" in md and "No weight-spectrum damping" in md
    assert len(tidy_rows([rec])) == 1 and summary["cells"] == 1
    summary = write_report([], tmp_path / "none")
    assert summary["cells"] == 0 and (tmp_path / "none" / "results.csv").read_text().startswith("cell_id,")
    assert all(f["holds"] is None for f in summary["findings"])


def test_groups_use_their_own_fp_reference(tmp_path):
    seed1 = [make_record(v, seed=1) for v in ("fp", "w4a8")]
    seed1[0]["metrics"]["acc1"] = 0.75  # another FP reference for seed 1
    records = make_records() + seed1
    rows = [r for r in tidy_rows(records) if r["role"] == "id" and r["variant"] == "w4a8"]
    assert [r["seed"] for r in rows] == [0, 1]
    assert rows[0]["delta_acc1"] == pytest.approx((0.80 - 0.70) / 0.80)
    assert rows[1]["delta_acc1"] == pytest.approx((0.75 - 0.70) / 0.75)
    assert {f["key"]: f["n"] for f in findings(records)}["calibration_over"] == 4
    write_report(records, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "| demo\\|w4a8\\|s1 | vision | 0.7000 (+6.7%) |" in md  # multi-group tables label rows by cell id


def test_holm_step_down_against_hand_computation():
    from qclip.experiments.findings import holm

    # sorted p .001 .012 .02 .04 vs α/4, α/3, α/2, α/1 = .0125 .0167 .025 .05: all four rejected
    assert holm([0.04, 0.001, 0.02, 0.012]) == [True, True, True, True]
    # .013 > .0125 stops at the first step: nothing is rejected, although .013 < .05
    assert holm([0.013, 0.02, 0.03, 0.04]) == [False, False, False, False]
    assert holm([0.5, 0.001]) == [False, True] and holm([]) == []


def test_report_shows_paired_tests_and_uncertainty(report):
    out, records, summary = report
    md = (out / "report.md").read_text()
    assert "holds —" in _section(md, "Findings") and "not resolved at this N" in md
    assert "| demo\\|w4a8\\|s0 | id | 1000 | bootstrap | -0.0400 | [-0.0500, -0.0300] | 0.001 | for |" in md
    assert "| rtn | 1 / 0 / 0 | 1 / 0 / 0 |" in md  # calibration (over-confident): w8a8 and w4a8 both for
    assert not re.search(r"p = 0(?![.\d])", md) and "| 0.000 |" not in md  # no p of 0 anywhere
    assert "ECE bootstrap: B = 4,799 resamples, so p ≥ 0.00021" in md
