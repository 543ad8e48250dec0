"""The one-pass reliability suite and `qclip eval`'s full JSON contract, on the micro model and the synthetic data
root; the FP model's OOD metrics against stock open_clip + scikit-learn."""

from __future__ import annotations

import json
import math

import pytest
import qclip.evals.features as features_mod
import torch
from qclip.evals.suite import (
    ReliabilitySuite,
    SuiteConfig,
    calibration_metrics,
    ece_after_tuning,
    map_classes,
)
from zsref import read_wds, zero_shot

from qclip.cli import main
from qclip.io.store import ResultsStore

CONTRACT = {"acc1", "acc5", "ece", "ece_adaptive", "mce", "nll", "brier", "ece_ts", "ood", "corruptions"}


def test_map_classes_by_name():
    mapped = map_classes(("Dog", "elephant", "horse "), ("airplane", "dog", "horse"))
    assert mapped.tolist() == [1, -1, 2]


def test_calibration_metrics_known_values():
    logits = torch.log(torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]))
    labels = torch.tensor([0, 1, 1])
    m = calibration_metrics(logits, labels)
    assert m["acc1"] == pytest.approx(2 / 3)
    assert m["nll"] == pytest.approx(-(math.log(0.9) + math.log(0.8) + math.log(0.4)) / 3, rel=1e-6)
    brier = ((0.1 ** 2 + 0.1 ** 2) + (0.2 ** 2 + 0.2 ** 2) + (0.6 ** 2 + 0.6 ** 2)) / 3
    assert m["brier"] == pytest.approx(brier, rel=1e-6)


def test_ece_after_tuning_fixes_a_wrong_temperature():
    g = torch.Generator().manual_seed(0)
    cos = torch.rand(6000, 10, generator=g) * 0.5
    labels = torch.multinomial(torch.softmax(20.0 * cos, 1), 1, generator=g).squeeze(1)
    from qclip.evals.metrics import ece

    wrong = ece((100.0 * cos).softmax(-1), labels)  # over-confident temperature
    tuned = ece_after_tuning(cos, labels, seed=0)
    assert tuned["ece_ts"] < wrong / 3
    assert tuned["logit_scale_ts"] == pytest.approx(20.0, rel=0.2)
    assert ece_after_tuning(cos, labels, seed=0) == tuned


def _reference_ood(id_zs, ood_zs) -> dict[str, dict[str, float]]:
    """AUROC and AP (scikit-learn, ID positive) and FPR at 95% TPR of the four scores, from raw cosines / logits."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    def scores(zs):
        p = zs.logits.softmax(1)
        return {"mcm": zs.cos.softmax(1).amax(1), "max_logit": zs.logits.amax(1),
                "energy": torch.logsumexp(zs.logits, 1), "entropy": (p * p.log()).sum(1)}

    out = {}
    for name, s_id in scores(id_zs).items():
        s_ood = scores(ood_zs)[name]
        y = [1] * len(s_id) + [0] * len(s_ood)
        pooled = torch.cat([s_id, s_ood]).double().numpy()
        # 95% of 120 ID samples is 114: the lowest threshold still accepting exactly 114 accepts every OOD score
        # above the 115th-highest ID score (MCM's convention keeps the lowest of equally close thresholds)
        assert len(s_id) == 120
        cut = s_id.sort(descending=True).values[114]
        out[name] = {"auroc": roc_auc_score(y, pooled), "aupr": average_precision_score(y, pooled),
                     "fpr95": float((s_ood > cut).double().mean())}
    return out


@pytest.fixture()
def counted(monkeypatch):
    """Count forward passes over datasets (feature extractions that miss the cache)."""
    calls = []
    original = features_mod.extract_image_features

    def spy(*args, **kwargs):
        calls.append(kwargs.get("desc"))
        return original(*args, **kwargs)

    monkeypatch.setattr(features_mod, "extract_image_features", spy)
    return calls


def test_suite_one_pass_all_metrics(micro_dir, wds_root, counted):
    cfg = SuiteConfig(model=f"local-dir:{micro_dir}", dataset="wds/cifar10", quant="w8a8", limit=120,
                      ood=["wds/fashion_mnist", "wds/imagenet_cifar10_ood"], corruptions=[("gaussian_noise", 3)],
                      shift=["wds/pacs_photo"], spurious=("wds/pacs_photo", "wds/pacs_sketch"), ood_limit=60,
                      bootstrap=50, calib_batches=1)
    suite = ReliabilitySuite(cfg, data_root=str(wds_root), num_workers=0, progress=False, use_cache=False)
    record = suite.run()
    m = record["metrics"]
    assert record["n"] == 120 and CONTRACT <= m.keys()
    assert set(m["ood"]) == {"wds/fashion_mnist", "wds/imagenet_cifar10_ood"}
    for per_score in m["ood"].values():
        assert set(per_score) == {"mcm", "max_logit", "energy", "entropy"}
        for vals in per_score.values():
            assert set(vals) == {"auroc", "aupr", "fpr95"}
    # the FP model's OOD metrics, recomputed: stock open_clip features, scikit-learn AUROC / AP, FPR95 by hand
    cifar = wds_root / "wds_cifar10"
    ref_id = zero_shot(micro_dir, cifar, limit=120)
    for name in ("wds/fashion_mnist", "wds/imagenet_cifar10_ood"):
        ref_ood = zero_shot(micro_dir, wds_root / name.replace("wds/", "wds_"), limit=60, classnames_of=cifar)
        for score, want in _reference_ood(ref_id, ref_ood).items():
            got = record["fp_metrics"]["ood"][name][score]
            assert got == pytest.approx(want, abs=2e-3), (name, score)
    assert set(m["corruptions"]) == {"gaussian_noise:3"}
    # only dog and horse map to CIFAR-10 classes: the shift set's first 60 samples hold this many of them
    pacs_labels = read_wds(wds_root / "wds_pacs_photo", limit=60)[1]
    assert m["shift"]["wds/pacs_photo"]["n"] == sum(lab in (0, 4) for lab in pacs_labels) > 0
    assert {"rsg", "delta_rsg", "vuln_add"} <= m["spurious"].keys()
    assert m["delta"]["acc1"] == pytest.approx((record["fp_metrics"]["acc1"] - m["acc1"]) / record["fp_metrics"]["acc1"])
    lo, hi = m["ci"]["acc1"]
    assert lo <= m["acc1"] <= hi
    # the calibrated-ECE floor of 120 images: positive, well above the ~0.01 of 10k images, and no δ of its own
    assert 0.02 < m["ece_floor"] < 0.3 and 0 < m["ece_floor_sd"] < m["ece_floor"]
    assert "ece_floor" not in m["delta"] and "ece_floor_sd" not in m["delta"]
    # one pass: each (model variant, dataset, corruption) extracted exactly once
    per_variant = ["wds/cifar10", "wds/fashion_mnist", "wds/imagenet_cifar10_ood", "wds/cifar10 gaussian_noise:3",
                   "wds/pacs_photo", "wds/pacs_sketch"]  # pacs_photo serves shift and spurious from one pass
    assert sorted(counted) == sorted(per_variant * 2)


def test_cached_features_skip_the_forward_pass(micro_dir, wds_root, counted):
    cfg = SuiteConfig(model=f"local-dir:{micro_dir}", dataset="wds/cifar10", limit=64, bootstrap=0)
    first = ReliabilitySuite(cfg, data_root=str(wds_root), num_workers=0, progress=False).run()
    n_calls = len(counted)
    second = ReliabilitySuite(cfg, data_root=str(wds_root), num_workers=0, progress=False).run()
    assert len(counted) == n_calls  # nothing recomputed
    assert second["metrics"]["acc1"] == first["metrics"]["acc1"]


def test_eval_cli_full_contract_and_store_resume(micro_dir, wds_root, tmp_path, capsys):
    out, store = tmp_path / "r.json", tmp_path / "store.jsonl"
    argv = ["eval", "--model", f"local-dir:{micro_dir}", "--dataset", "wds/cifar10", "--ood", "wds/fashion_mnist",
            "--ood", "wds/imagenet_cifar10_ood", "--corruptions", "gaussian_noise:3,defocus_blur:3",
            "--data-root", str(wds_root), "--limit", "100", "--ood-limit", "50", "--bootstrap", "20",
            "--workers", "0", "--no-progress", "--store", str(store), "--out", str(out)]
    assert main(argv) == 0
    record = json.loads(out.read_text())
    assert {"model", "quant", "dataset", "n", "metrics", "versions"} <= record.keys()
    assert CONTRACT <= record["metrics"].keys()
    assert set(record["metrics"]["corruptions"]) == {"gaussian_noise:3", "defocus_blur:3"}
    # a crash leaves a torn line; the rerun skips nothing it should not and duplicates nothing
    with open(store, "a") as f:
        f.write('{"hash": "torn')
    capsys.readouterr()
    assert main(argv) == 0
    assert "already in" in capsys.readouterr().out
    records = ResultsStore(store).records()
    assert len(records) == 1 and records[0]["metrics"] == record["metrics"]


def test_eval_cli_rejects_bad_corruption_and_pair(micro_dir, wds_root, tmp_path, capsys):
    base = ["eval", "--model", f"local-dir:{micro_dir}", "--dataset", "wds/cifar10", "--data-root", str(wds_root),
            "--out", str(tmp_path / "x.json")]
    assert main(base + ["--corruptions", "fog_of_war:3"]) == 2
    assert "bad --corruptions" in capsys.readouterr().err
    assert main(base + ["--spurious", "wds/pacs_photo"]) == 2
    assert "COMMON,COUNTER" in capsys.readouterr().err
    assert main(base + ["--shift", "wds/fashion_mnist"]) == 2
    assert "shares no class name" in capsys.readouterr().err
