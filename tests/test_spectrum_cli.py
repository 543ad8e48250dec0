"""`qclip spectrum`: CSVs, plots and summary on the micro model; wandb offline logging."""

from __future__ import annotations

import csv
import json

import pytest

from qclip.cli import main


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_spectrum_writes_csvs_plots_and_summary(micro_dir, data_root, tmp_path, capsys):
    out = tmp_path / "spec"
    rc = main(["spectrum", "--model", f"local-dir:{micro_dir}", "--quant", "w4a8", "--truncate", "rank-f0.5",
               "--features", "wds/cifar10", "--limit", "300", "--bands", "0-4,4-16,16-", "--frequency-images", "64",
               "--data-root",
               str(data_root), "--no-progress", "--out", str(out)])
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
    assert -1 <= summary["sqnr_spearman_rho"] <= 1
    assert set(summary["band_accuracy"]) == {"fp", "quantized", "truncated", "fp_top_k"}
    full = summary["band_accuracy"]["fp"]
    assert 0 <= full["0-4"] <= 1 and 0 <= full["all"] <= 1
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


def test_spectrum_wandb_with_features_logs_line_plots(micro_dir, data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "wb"
    assert main(["spectrum", "--model", f"local-dir:{micro_dir}", "--quant", "w8a8", "--features", "wds/cifar10",
                 "--limit", "100", "--frequency-images", "32", "--data-root", str(data_root), "--wandb",
                 "--no-progress", "--out", str(out)]) == 0
    run_dir = next((out / "wandb").glob("offline-run-*"))
    logged = b"".join(p.read_bytes() for p in run_dir.rglob("*.wandb"))
    assert b"line/features_sqnr" in logged and b"plot/sqnr_vs_rank" in logged


def test_spectrum_rejects_bad_spec(micro_dir, tmp_path, capsys):
    assert main(["spectrum", "--model", f"local-dir:{micro_dir}", "--quant", "w9", "--out", str(tmp_path)]) == 2
    assert "bad --quant" in capsys.readouterr().err
