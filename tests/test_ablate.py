"""`qclip ablate`: grid expansion and sharding, matched truncation, the runner end to end on the micro model,
resume after kill -9, shards + merge equal one unsharded run, and the report against the store."""

from __future__ import annotations

import copy
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from qclip.cli import main
from qclip.experiments.grid import (
    GridConfig,
    expand_cells,
    load_grid,
    parse_shard,
    shard_cells,
)
from qclip.io.errors import QclipInputError

RUNTIME_KEYS = ("seconds", "timings", "written_at", "versions")


def _grid_yaml(path, micro_dir, **extra) -> str:
    """A grid file; `extra` keys replace the defaults (a grid refuses duplicate keys)."""
    lines = [
        "name: tiny",
        f"models: [{{name: 'local-dir:{micro_dir}'}}]",
        "methods: [rtn]",
        "bits: [w8a8, w4a8]",
        "scopes: [vision]",
        "match_truncation: [w4a8]",
        "truncation: [rank-f0.5]",
        "dataset: wds/cifar10",
        "ood: [wds/fashion_mnist]",
        "shift: [wds/imagenet_cifar10_shift]",
        "corruptions: [gaussian_noise:3]",
        "limit: 96",
        "ood_limit: 48",
        "bootstrap: 20",
        "bands: 0-4,4-16,16-",
        "batch_size: 48",
    ]
    lines = [ln for ln in lines if ln.split(":", 1)[0] not in extra] + [f"{k}: {v}" for k, v in extra.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _stored(out) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def _strip(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in RUNTIME_KEYS}


def _assert_same_records(got: list[dict], want: list[dict]) -> None:
    """Equal records (runtime fields aside); floats to 1e-6 (float32 SVD round-off; truncated σ ratios sit at ~1e-7 noise)."""
    def same(a, b, path):
        if isinstance(a, dict) and isinstance(b, dict):
            assert set(a) == set(b), path
            for k in a:
                same(a[k], b[k], f"{path}/{k}")
        elif isinstance(a, list) and isinstance(b, list):
            assert len(a) == len(b), path
            for i, (x, y) in enumerate(zip(a, b)):
                same(x, y, f"{path}[{i}]")
        elif isinstance(a, float) and isinstance(b, float):
            assert a == pytest.approx(b, rel=1e-6, abs=1e-6), path
        else:
            assert a == b, path

    assert len(got) == len(want)
    for g, w in zip(got, want):
        same(_strip(g), _strip(w), g["cell"]["id"])


# ------------------------------------------------------------------------------------------------ the grid
def test_grid_expansion_order_and_specs():
    cfg = GridConfig(methods=["rtn", "rot"], bits=["w8a8", "w4a8"], scopes=["vision", "vision+text"],
                     truncation=["rank-e0.9"], match_truncation=["w4a8"], seeds=[0, 1])
    cells = expand_cells(cfg)
    assert len(cells) == 2 * (1 + 8 + 1 + 1)
    first = [c.variant for c in cells[:11]]
    assert first == ["fp", "w8a8", "w4a8", "w8a8-rot", "w4a8-rot", "w8a8-vt", "w4a8-vt", "w8a8-rot-vt",
                     "w4a8-rot-vt", "rank-match:w4a8", "rank-e0.9"]
    assert {c.seed for c in cells[:11]} == {0} and {c.seed for c in cells[11:]} == {1}
    assert cells[4].method == "rotation" and cells[4].bits == "w4a8" and cells[5].scope == "vision+text"
    assert len({c.id for c in cells}) == len(cells)


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_shards_are_disjoint_and_complete(count):
    cells = expand_cells(GridConfig(methods=["rtn", "smoothquant"], truncation=["rank-e0.5", "rank-f0.25"]))
    parts = [shard_cells(cells, i, count) for i in range(1, count + 1)]
    ids = [c.id for part in parts for c in part]
    assert sorted(ids) == sorted(c.id for c in cells) and len(ids) == len(set(ids))
    assert parts == [shard_cells(cells, i, count) for i in range(1, count + 1)]  # deterministic


@pytest.mark.parametrize("text", ["0/2", "3/2", "1-2", "a/b"])
def test_bad_shard_is_input_error(text):
    with pytest.raises(QclipInputError, match="--shard"):
        parse_shard(text)


@pytest.mark.parametrize("content, match", [
    ("methods: [awq]", "unknown method"),
    ("bits: [w9a8]", "w_bits"),
    ("scopes: [audio]", "unknown scope"),
    ("truncation: [w4a8]", "not a rank spec"),
    ("match_truncation: [w4a8-smoothquant]", "without SmoothQuant"),
    ("qat: [{name: x, checkpoint: a.ckpt}]", "needs the 'spec'"),
    ("corruptions: [fog_of_war:3]", "fog_of_war"),
    ("colour: blue", "unknown keys"),
    ("spurious: [wds/a]", "pair"),
    ("- a\n- b", "mapping"),
])
def test_bad_grid_is_input_error(tmp_path, content, match):
    path = tmp_path / "g.yaml"
    path.write_text(content + "\n")
    with pytest.raises(QclipInputError, match=match):
        load_grid(path)


# ------------------------------------------------------------------------------------------ matched truncation
def test_matched_truncation_keeps_the_smallest_rank_within_the_quant_error(micro_model):
    from qclip.quant.modules import effective_weight
    from qclip.quant.surgery import attention_surgery_

    from qclip.experiments.ablate import matched_truncation

    variant, report = matched_truncation(micro_model, "w4a8")
    fp = attention_surgery_(micro_model.model)
    assert report["kept_ranks"] and set(report["kept_ranks"]) == set(report["matched_errors"])
    for name, eps in report["matched_errors"].items():
        w = effective_weight(fp.get_submodule(name)).double().flatten(1)
        wk = variant.model.get_submodule(name).weight.detach().double().flatten(1)
        err = float((wk - w).norm() / w.norm())
        assert err <= eps + 1e-6, name
        k = report["kept_ranks"][name]
        s = torch.linalg.svdvals(w)
        if k > 1:  # one component fewer would exceed the quantization's error (minimality)
            assert float(s[k - 1:].square().sum().sqrt() / w.norm()) > eps - 1e-6, name
    assert any(k < min(variant.model.get_submodule(n).weight.flatten(1).shape)
               for n, k in report["kept_ranks"].items())


def test_weight_summary_of_a_truncation(micro_model):
    from qclip.evals.variants import quantize_loaded
    from qclip.quant.surgery import attention_surgery_

    from qclip.experiments.analysis import FpWeights, weight_summary

    ref = FpWeights(micro_model.model)
    same = weight_summary(ref, attention_surgery_(copy.deepcopy(micro_model.model)))
    assert same["weight_maps"] == 0 and same["weight_rel_error"] == 0.0 and same["damping"] is None
    assert same["tail_damping"] is None
    truncated, _ = quantize_loaded(micro_model, "rank-f0.5", None)  # truncation needs no calibration data
    out = weight_summary(ref, truncated.model, bins=4)
    assert out["weight_maps"] == 14  # the micro ViT's vision maps
    ratio = out["damping"]["ratio"]
    assert ratio[0] == pytest.approx(1.0, abs=1e-4)  # the kept top half is untouched...
    assert ratio[-1] == pytest.approx(0.0, abs=1e-4)  # ...and the bottom half removed
    assert 0 < out["weight_rel_error"] < 1
    tail = out["tail_damping"]  # every map's bottom half removed: mean 0 over 14 maps, an interval of width ~0
    assert tail["layers"] == 14 and tail["mean"] == pytest.approx(0.0, abs=1e-4)
    assert tail["low"] <= tail["mean"] <= tail["high"] and tail["high"] - tail["low"] < 1e-3


# ------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def reference_run(micro_dir, wds_root, tmp_path_factory):
    """One uninterrupted run of the tiny grid (5 cells)."""
    tmp = tmp_path_factory.mktemp("ablate-ref")
    config = _grid_yaml(tmp / "grid.yaml", micro_dir)
    out = tmp / "run"
    rc = main(["ablate", "--config", config, "--out", str(out), "--data-root", str(wds_root), "--no-progress",
               "--workers", "0"])
    assert rc == 0
    return config, out


def test_ablate_end_to_end_report_matches_store(reference_run):
    _, out = reference_run
    records = _stored(out)
    assert [r["cell"]["variant"] for r in records] == ["fp", "w8a8", "w4a8", "rank-match:w4a8", "rank-f0.5"]
    fp, w8, w4, match, rank = records
    assert fp["delta"] is None and w4["delta"]["acc1"] == pytest.approx(
        (fp["metrics"]["acc1"] - w4["metrics"]["acc1"]) / fp["metrics"]["acc1"])
    assert set(w4["metrics"]["ood"]) == {"wds/fashion_mnist"} and "gaussian_noise:3" in w4["metrics"]["corruptions"]
    assert w4["spectral"]["weight_rel_error"] > w8["spectral"]["weight_rel_error"] > 0
    assert match["spectral"]["weight_rel_error"] <= w4["spectral"]["weight_rel_error"] + 1e-6
    sq = np.array(w4["spectral"]["sqnr_db"], dtype=float)
    assert len(sq) == 32 and np.isfinite(sq).all() and len(set(sq)) == 32
    # Spearman rho of SQNR against rank by hand: the Pearson correlation of the ranks (no ties)
    rho = np.corrcoef(np.arange(32), sq.argsort().argsort())[0, 1]
    assert w4["spectral"]["sqnr_spearman_rho"] == pytest.approx(rho, abs=1e-6)
    assert fp["spectral"]["sqnr_db"] is None and set(fp["spectral"]["band_accuracy"]) >= {"0-4", "all"}
    # paired tests against FP: McNemar / bootstrap / DeLong, the ECE bootstrap's floor below Holm's first threshold
    # for every quant cell (2) × labelled set, and a digest of the variant's logits per set
    pid = w4["paired"]["id"]
    assert (pid["acc1"]["test"], pid["ece"]["test"]) == ("mcnemar", "bootstrap") and len(pid["hash"]) == 16
    assert pid["acc1"]["diff"] == pytest.approx(w4["metrics"]["acc1"] - fp["metrics"]["acc1"], abs=1e-12)
    n_sets = 1 + len(w4["metrics"]["corruptions"]) + len(w4["metrics"]["shift"])
    assert 1 / (pid["ece"]["resamples"] + 1) <= 0.05 / (5 * 2 * n_sets) and pid["ece"]["p"] > 0
    assert w4["paired"]["ood"]["wds/fashion_mnist"]["auroc"]["test"] == "delong"
    assert pid["hash"] != w8["paired"]["id"]["hash"]
    for r in records:  # the three phases add up to the cell's time (each rounded to 1 ms)
        t = r["timings"]
        assert set(t) == {"build", "eval", "spectral"} and t["eval"] > 0
        assert sum(t.values()) == pytest.approx(r["seconds"], abs=2e-3)
    for name in ("results.csv", "report.md", "results.jsonl"):
        assert (out / name).is_file()
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    by_id = {r["cell"]["id"]: r for r in records}
    id_rows = [row for row in rows if row["role"] == "id"]
    assert len(id_rows) == 5
    for row in id_rows:
        assert float(row["acc1"]) == pytest.approx(by_id[row["cell_id"]]["metrics"]["acc1"])
        assert float(row["ece"]) == pytest.approx(by_id[row["cell_id"]]["metrics"]["ece"])
    report = (out / "report.md").read_text()
    assert f"{w4['metrics']['acc1']:.4f}" in report and f"{fp['metrics']['ece']:.4f}" in report
    for link in (part.split(")")[0] for part in report.split("](")[1:]):
        if link.endswith(".png"):
            assert (out / link).is_file(), link


def test_rerun_skips_every_stored_cell(reference_run, wds_root, capsys):
    config, out = reference_run
    before = (out / "store" / "shard-1-of-1.jsonl").read_text()
    rc = main(["ablate", "--config", config, "--out", str(out), "--data-root", str(wds_root), "--no-progress"])
    assert rc == 0 and "0 cells evaluated, 5 already stored" in capsys.readouterr().out
    assert (out / "store" / "shard-1-of-1.jsonl").read_text() == before


@pytest.mark.slow
def test_two_shards_and_merge_equal_one_run(reference_run, wds_root, tmp_path, capsys):
    config, ref_out = reference_run
    out = tmp_path / "sharded"
    common = ["--config", config, "--out", str(out), "--data-root", str(wds_root), "--no-progress", "--no-cache"]
    assert main(["ablate", *common, "--shard", "1/2"]) == 0
    assert "pending" in capsys.readouterr().out and not (out / "report.md").exists()
    assert main(["ablate", "--config", config, "--out", str(out), "--merge"]) == 2  # shard 2 not run yet
    assert main(["ablate", *common, "--shard", "2/2"]) == 0  # the last shard merges and reports
    assert (out / "report.md").is_file()
    assert main(["ablate", "--config", config, "--out", str(out), "--merge"]) == 0
    _assert_same_records(_stored(out), _stored(ref_out))


@pytest.mark.slow
def test_integer_cells_pair_real_kernels_with_their_fake_quant_cell(micro_dir, wds_root, tmp_path, capsys):
    # w8a7: 7-bit activation codes never saturate oneDNN's int16 pair sums (no VNNI needed), so the integer model
    # computes the fake-quant model's function up to int32-vs-float accumulation; w4 is weight-only: no int cell
    config = _grid_yaml(tmp_path / "int.yaml", micro_dir, bits="[w8a7, w4]", match_truncation="[]", truncation="[]",
                        shift="[]", corruptions="[]", integer="true")
    out = tmp_path / "run"
    common = ["--config", config, "--data-root", str(wds_root), "--no-progress", "--workers", "0"]
    assert main(["ablate", *common, "--out", str(out)]) == 0
    records = _stored(out)
    assert [r["cell"]["variant"] for r in records] == ["fp", "w8a7", "int:w8a7", "w4"]
    fp, fq, integer, _ = records
    assert integer["cell"]["kind"] == "int" and integer["cell"]["bits"] == "w8a7"
    q = integer["quant_report"]
    assert q["maps"] == q["integer_arithmetic"] == q["int16_safe"] == 14 and q["dequantized"] == 0
    # the paired difference is the difference of the two cells' metrics on the same images...
    pq = integer["paired_fake_quant"]["id"]
    # acc1 is a count over n in float64: exact to rounding. ECE sums float32 confidences in float64, and the two
    # paths round the same probabilities to float32 at different points (oneDNN's AVX2, VNNI and AMX kernels move
    # the last bits differently): each confidence moves by <= 1 float32 ulp, so each ECE by <= eps32 (no bin edge
    # is crossed at these margins), the difference of two ECEs by <= 2 eps32
    tol = {"acc1": 1e-12, "ece": 2 * torch.finfo(torch.float32).eps}
    for metric in ("acc1", "ece"):
        assert pq[metric]["diff"] == pytest.approx(integer["metrics"][metric] - fq["metrics"][metric],
                                                   abs=tol[metric])
    assert pq["acc1"]["low"] <= 0 <= pq["acc1"]["high"] and abs(pq["acc1"]["diff"]) <= 2 / 96
    assert set(integer["paired_fake_quant"]["ood"]) == {"wds/fashion_mnist"}
    # feature agreement with the fake-quant cell, beside the paired differences (integer cells only). Bounds that
    # hold on every int8 path: a top-1 flip changes the correctness of one image at most, so |Δacc1|·n ≤ flips;
    # at w8a7 no path saturates (AVX2 included) and AVX2/VNNI/AMX all sum in exact int32, so the features depart
    # only by float32 rounding and the activation codes it moves across a rounding edge (one grid step each):
    # far inside cos 0.999 (observed 1 - cos ~1e-5 on the demo, see docs/integer-kernels.md)
    agr = integer["feature_agreement"]
    assert fp["feature_agreement"] is None and fq["feature_agreement"] is None
    assert agr["n"] == integer["n"] and 0 <= agr["top1_flips"] <= agr["n"]
    assert abs(pq["acc1"]["diff"]) * agr["n"] <= agr["top1_flips"] + 1e-9
    assert 0 <= agr["max_abs_diff"] and 0.999 <= agr["min_cosine"] <= 1.0
    # ...against FP as for any cell; the integer weights are the fake-quant weights (codes x scales)
    assert integer["paired"]["id"]["acc1"]["diff"] == pytest.approx(
        integer["metrics"]["acc1"] - fp["metrics"]["acc1"], abs=1e-12)  # counts over n: exact to rounding
    assert integer["spectral"]["weight_rel_error"] == pytest.approx(fq["spectral"]["weight_rel_error"], rel=1e-5)
    report = (out / "report.md").read_text()
    section = report.split("## Real integer kernels vs fake-quant")[1].split("\n## ")[0]
    assert "| int:w8a7 | 14 / 14 | 14 |" in section and f"{fq['metrics']['acc1']:.4f}" in section
    assert f"/ {agr['min_cosine']:.7f} / {agr['top1_flips']} of {agr['n']} |" in section
    # an integer cell in another shard than its quant cell recalibrates the same fake-quant model
    sharded = tmp_path / "sharded"
    assert main(["ablate", *common, "--out", str(sharded), "--no-cache", "--shard", "1/2"]) == 0
    assert main(["ablate", *common, "--out", str(sharded), "--no-cache", "--shard", "2/2"]) == 0
    _assert_same_records(_stored(sharded), records)
    capsys.readouterr()
    assert main(["ablate", *common, "--out", str(tmp_path / "gpu"), "--device", "cuda"]) == 2
    assert "--device cpu" in capsys.readouterr().err


@pytest.mark.slow
def test_kill_9_loses_at_most_the_cell_in_flight(reference_run, wds_root, tmp_path):
    config, ref_out = reference_run
    out = tmp_path / "killed"
    store = out / "store" / "shard-1-of-1.jsonl"
    args = ["ablate", "--config", config, "--out", str(out), "--data-root", str(wds_root), "--no-progress",
            "--no-cache", "--workers", "0"]
    cmd = [sys.executable, "-m", "qclip", *args]
    env = {**os.environ}
    # the grid blocks after its 3rd stored cell until killed, and the kill waits for the 2nd: it lands in cell 3
    # or in the stall after it -- never after the grid ended, whatever the machine's speed
    staller = [sys.executable, str(Path(__file__).with_name("grid_staller.py")), "3", *args]
    with open(tmp_path / "killed.log", "wb") as log:
        proc = subprocess.Popen(staller, env=env, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 600  # a hang guard only: the kill waits for the 2nd record, not a clock
        while (proc.poll() is None and time.monotonic() < deadline
               and (not store.exists() or len(store.read_text().splitlines()) < 2)):
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    done_before = len(store.read_text().splitlines())
    assert 2 <= done_before <= 3
    with open(store, "a") as f:  # a torn line, as a kill during a write would leave
        f.write('{"hash": "deadbeef", "metrics": {"acc1": 0.')
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    records = _stored(out)
    assert len({r["hash"] for r in records}) == len(records) == 5
    _assert_same_records(records, _stored(ref_out))


def test_wandb_logs_every_cell_offline(micro_dir, wds_root, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    config = _grid_yaml(tmp_path / "g.yaml", micro_dir, limit=32, ood_limit=16)
    config_text = open(config).read().replace("bits: [w8a8, w4a8]", "bits: [w8a8]")
    config_text = config_text.replace("match_truncation: [w4a8]", "match_truncation: []")
    open(config, "w").write(config_text.replace("truncation: [rank-f0.5]", "truncation: []"))
    out = tmp_path / "wb"
    assert main(["ablate", "--config", config, "--out", str(out), "--data-root", str(wds_root), "--wandb",
                 "--no-progress"]) == 0
    runs = list((out / "wandb").glob("offline-run-*"))
    assert runs and list(runs[0].glob("*.wandb"))


def test_grid_data_root_is_relative_to_the_config_and_yields_to_flags_and_env(tmp_path, monkeypatch):
    from qclip.experiments.grid import grid_data_root

    (tmp_path / "data").mkdir()
    (tmp_path / "configs").mkdir()
    path = tmp_path / "configs" / "g.yaml"
    path.write_text("data_root: ../data\n")
    cfg = load_grid(path)
    assert cfg.data_root == str((tmp_path / "data").resolve())
    monkeypatch.delenv("QCLIP_DATA_ROOT", raising=False)
    assert grid_data_root(cfg, None) == cfg.data_root
    assert grid_data_root(cfg, "/elsewhere") == "/elsewhere"
    monkeypatch.setenv("QCLIP_DATA_ROOT", "/from-env")
    assert grid_data_root(cfg, None) is None  # resolve_data_root then reads the environment
    monkeypatch.delenv("QCLIP_DATA_ROOT")
    path.write_text("data_root: ../missing\n")
    assert grid_data_root(load_grid(path), None) is None  # a missing folder falls back to the public location


@pytest.mark.parametrize("corruption", [None, ("gaussian_noise", 3)])
def test_decoded_image_cache_gives_the_same_features(micro_model, wds_root, monkeypatch, corruption):
    import qclip.evals.features as features
    from qclip.evals.features import DecodedImages, dataset_features

    from qclip.io.data import resolve_dataset

    spec = resolve_dataset("wds/cifar10", str(wds_root), "test")
    kw = dict(model_key="k", corruption=corruption, limit=40, batch_size=16, num_workers=0, progress=False,
              use_cache=False)
    want = dataset_features(micro_model.model.eval(), micro_model.preprocess, spec, **kw)
    decoded = DecodedImages(max_mb=64)
    first = dataset_features(micro_model.model, micro_model.preprocess, spec, decoded=decoded, **kw)
    calls = []
    monkeypatch.setattr(features, "make_loader", lambda *a, **k: calls.append(1) or [])
    again = dataset_features(micro_model.model, micro_model.preprocess, spec, decoded=decoded, **kw)
    assert not calls  # served from memory
    for got in (first, again):
        assert torch.equal(got[1], want[1]) and torch.allclose(got[0], want[0], atol=1e-6, rtol=0)
    assert 0 < decoded.used <= 40 * 3 * 32 * 32  # stored as uint8


def test_decoded_image_cache_respects_its_budget(micro_model, wds_root):
    from qclip.evals.features import DecodedImages, split_normalize

    from qclip.io.data import resolve_dataset

    spec = resolve_dataset("wds/cifar10", str(wds_root), "test")
    raw = split_normalize(micro_model.preprocess)[0]
    tiny = DecodedImages(max_mb=0.01)  # 10 kB: not even one batch of 16 images
    assert tiny.batches(spec, raw, limit=40, batch_size=16, num_workers=0) is None and tiny.used == 0


def test_qat_checkpoint_cell(micro_dir, wds_root, tmp_path, monkeypatch):
    """A `qclip fit` checkpoint as a grid row: its trained weights and step sizes, δ against the base FP model."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    fit = tmp_path / "fit"
    qat_config = Path(__file__).resolve().parents[1] / "configs" / "qat_demo.yaml"  # w4a8-lsq, Contr.+MSE
    assert main(["fit", "--config", str(qat_config), "--model.model", f"local-dir:{micro_dir}",
                 "--data.data_root", str(wds_root), "--data.train_limit", "32", "--data.batch_size", "16", "--data.val_limit", "16",
                 "--data.calib_pairs", "16", "--data.num_workers", "0", "--trainer.max_epochs", "1",
                 "--trainer.default_root_dir", str(fit), "--trainer.enable_progress_bar", "false",
                 "--trainer.logger", "false"]) == 0  # no wandb run here (test_fit checks the logger)
    ckpt = fit / "checkpoints" / "last.ckpt"
    config = _grid_yaml(tmp_path / "g.yaml", micro_dir, limit=32, ood_limit=16)
    text = open(config).read().replace("bits: [w8a8, w4a8]", "bits: []").replace("match_truncation: [w4a8]", "")
    text = text.replace("truncation: [rank-f0.5]", f"qat: [{{name: tuned, spec: w4a8-lsq, checkpoint: '{ckpt}'}}]")
    open(config, "w").write(text)
    out = tmp_path / "out"
    assert main(["ablate", "--config", config, "--out", str(out), "--data-root", str(wds_root), "--no-progress"]) == 0
    fp, qat = _stored(out)
    assert qat["cell"]["variant"] == "qat:tuned" and qat["cell"]["bits"] == "w4a8" and qat["cell"]["method"] == "lsq"
    assert qat["quant_report"]["spec"] == "w4a8-lsq" and qat["spectral"]["weight_rel_error"] > 0
    assert qat["delta"]["acc1"] == pytest.approx((fp["metrics"]["acc1"] - qat["metrics"]["acc1"]) / fp["metrics"]["acc1"])
