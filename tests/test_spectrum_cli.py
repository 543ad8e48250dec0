"""`qclip spectrum`: CSVs, plots and summary on the micro model; wandb offline logging."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from zsref import zero_shot

from qclip.cli import main


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_spectrum_writes_csvs_plots_and_summary(micro_dir, wds_root, tmp_path, capsys):
    out = tmp_path / "spec"
    rc = main(["spectrum", "--model", f"local-dir:{micro_dir}", "--quant", "w4a8", "--truncate", "rank-f0.5",
               "--features", "wds/cifar10", "--limit", "300", "--bands", "0-4,4-16,16-", "--frequency-images", "64",
               "--data-root",
               str(wds_root), "--no-progress", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    for name in ("weights_layers.csv", "weights_sigma.csv", "features_sqnr.csv", "features_bands.csv",
                 "summary.json", "sigma_spectra.png", "sqnr_vs_rank.png", "band_accuracy.png",
                 "frequency_radial.csv", "frequency_perturbation.csv", "fft_radial.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    layers = _rows(out / "weights_layers.csv")
    assert len(layers) == 27  # every linear map of the micro ViT after surgery (vision 14 + text 13)
    assert {r["role"] for r in layers} >= {"q", "k", "v", "out", "fc1", "fc2", "proj", "patch_embed"}
    vision = [r for r in layers if r["tower"] == "vision"]
    assert all(float(r["err_error_energy"]) > 0 for r in vision)  # vision scope quantized
    assert all(float(r["err_error_energy"]) == 0 for r in layers if r["tower"] == "text")
    sqnr = _rows(out / "features_sqnr.csv")
    assert len(sqnr) == 32  # embed_dim of the micro model
    summary = json.loads((out / "summary.json").read_text())
    # Spearman rho of SQNR against rank, recomputed from the CSV: Pearson correlation of the ranks (numpy, no scipy)
    ranks = np.array([float(r["rank"]) for r in sqnr])
    values = np.array([float(r["sqnr_db"]) for r in sqnr])
    assert np.isfinite(values).all() and len(set(values)) == len(values)  # no ties: ranks are an argsort
    rho = np.corrcoef(ranks.argsort().argsort(), values.argsort().argsort())[0, 1]
    assert summary["sqnr_spearman_rho"] == pytest.approx(rho, abs=1e-6)
    assert set(summary["band_accuracy"]) == {"fp", "quantized", "truncated", "fp_top_k"}
    full = summary["band_accuracy"]["fp"]
    # "all" is plain zero-shot top-1: the same 300 images classified by stock open_clip
    ref = zero_shot(micro_dir, wds_root / "wds_cifar10", limit=300)
    assert full["all"] == pytest.approx(ref.correct(1) / 300, abs=1.5 / 300)  # float round-off may flip one tie
    # the FP model's band 0-4 in its own basis is the truncation control's top-4 (same features, same basis)
    assert full["0-4"] == summary["band_accuracy"]["fp_top_k"]["top4"]
    perturb = _rows(out / "frequency_perturbation.csv")
    assert {(r["model"], r["band"]) for r in perturb} == {(m, b) for m in ("fp", "quantized", "truncated")
                                                          for b in ("low", "mid", "high")}
    fractions = summary["frequency_band_fractions"]["fp"]
    assert sum(fractions.values()) == pytest.approx(1.0, abs=1e-5)  # ViT patch grid 4x4
    assert "Spearman rho" in capsys.readouterr().out


def test_spectrum_fp_only_and_wandb_offline(micro_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "fp"
    assert main(["spectrum", "--model", f"local-dir:{micro_dir}", "--wandb", "--no-progress", "--out", str(out)]) == 0
    assert (out / "weights_layers.csv").is_file() and not (out / "sigma_spectra.png").exists()
    assert list((out / "wandb").glob("offline-run-*")), "wandb did not write an offline run"


@pytest.mark.slow
def test_spectrum_wandb_with_features_logs_line_plots(micro_dir, wds_root, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "wb"
    assert main(["spectrum", "--model", f"local-dir:{micro_dir}", "--quant", "w8a8", "--features", "wds/cifar10",
                 "--limit", "100", "--frequency-images", "32", "--data-root", str(wds_root), "--wandb",
                 "--no-progress", "--out", str(out)]) == 0
    import wandb

    wandb.teardown()  # run.finish() hands the last records to wandb's service; its exit is when the file is whole
    run_dir = next((out / "wandb").glob("offline-run-*"))
    logged = b"".join(p.read_bytes() for p in run_dir.rglob("*.wandb"))
    assert b"line/features_sqnr" in logged and b"plot/sqnr_vs_rank" in logged


def test_spectrum_rejects_bad_spec(micro_dir, tmp_path, capsys):
    assert main(["spectrum", "--model", f"local-dir:{micro_dir}", "--quant", "w9", "--out", str(tmp_path)]) == 2
    assert "bad --quant" in capsys.readouterr().err
