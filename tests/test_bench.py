"""`qclip bench`: every variant timed in one run, ratios consistent with the record's own medians, integer weights
smaller than FP32's, bench.md written beside bench.json; bad input exits 2 with one line before any model loads.
No timing is asserted (timings belong in benchmarks/)."""

from __future__ import annotations

import json

import pytest
import torch

from qclip.cli import main
from qclip.experiments.bench import VARIANTS, parse_batches


def check_record(record: dict, variants: set[str], batches: list[int]) -> None:
    assert set(record["variants"]) == variants and record["batches"] == batches
    assert "random" in record["input"]["images"] and record["input"]["shape"] == [3, 32, 32]
    base = record["variants"]["fp32_eager"]
    for name, entry in record["variants"].items():
        for b in batches:
            r = entry["batches"][str(b)]
            times = sorted(r["times_s"])
            assert len(times) == record["repeats"] and r["median_s"] == pytest.approx(
                (times[(len(times) - 1) // 2] + times[len(times) // 2]) / 2)
            ratio = r["median_s"] / base["batches"][str(b)]["median_s"]
            assert r["time_ratio_vs_fp32_eager"] == pytest.approx(ratio, rel=1e-12)
            assert r["speedup_vs_fp32_eager"] == pytest.approx(1 / ratio, rel=1e-12)
            assert r["images_per_s"] == pytest.approx(b / r["median_s"], rel=1e-12)
        assert entry["weight_bytes"] > 0
    assert base["batches"][str(batches[0])]["time_ratio_vs_fp32_eager"] == 1.0


@pytest.mark.slow
def test_bench_times_every_variant(micro_dir, tmp_path):
    out = tmp_path / "bench"
    assert main(["bench", "--model", f"local-dir:{micro_dir}", "--quant", "w8a8", "--compile", "--batch", "2",
                 "--repeats", "3", "--warmup", "1", "--min-time", "0", "--no-progress", "--out", str(out)]) == 0
    record = json.loads((out / "bench.json").read_text())
    check_record(record, set(VARIANTS), [2])
    v = record["variants"]
    assert v["int_eager"]["weight_bytes"] < v["fp32_eager"]["weight_bytes"] / 2  # int8 codes vs float32 weights
    assert v["int_compiled"]["compile_seconds"]["2"] > 0 and v["fp32_compiled"]["compile_seconds"]["2"] > 0
    assert v["fp32_eager"]["compile_seconds"] is None
    assert record["export"]["summary"]["integer_arithmetic"] == 14 and record["calibration"] == "random images"
    assert v["int_eager"]["cosine_vs_fp32_eager"] > 0.9 and record["machine"]["torch_threads"] >= 1
    for name, entry in v["int_compiled"]["batches"].items():
        fp_compiled = v["fp32_compiled"]["batches"][name]["median_s"]
        assert entry["speedup_vs_fp32_compiled"] == pytest.approx(fp_compiled / entry["median_s"], rel=1e-12)
    md = (out / "bench.md").read_text()
    assert all(label in md for label in VARIANTS.values()) and "| variant |" in md


def test_bench_of_an_export_folder(micro_dir, wds_root, tmp_path):
    folder = tmp_path / "export"
    assert main(["export", "--model", f"local-dir:{micro_dir}", "--quant", "w4a8", "--dataset", "wds/cifar10",
                 "--data-root", str(wds_root), "--calib-batches", "1", "--out", str(folder), "--no-progress"]) == 0
    out = tmp_path / "bench"
    assert main(["bench", "--model", str(folder), "--batch", "1,3", "--repeats", "2", "--warmup", "0",
                 "--min-time", "0", "--no-progress", "--out", str(out)]) == 0
    record = json.loads((out / "bench.json").read_text())
    check_record(record, {"fp32_eager", "bf16_autocast", "fakequant", "int_eager"}, [1, 3])
    assert set(record["skipped"]) == {"fp32_compiled", "int_compiled"}
    assert record["calibration"] == "export folder" and record["export"]["spec"] == "w4a8"
    v = record["variants"]
    assert v["int_eager"]["weight_bytes"] < v["fp32_eager"]["weight_bytes"] / 2
    # the integer model computes what the fake-quant reference does (4-bit codes: no int16 saturation); the int32
    # accumulators are exact and only the float32 requantization rounds differently between oneDNN's AVX2, VNNI
    # and AMX paths: a few float32 ulps per activation, far below 1e-5 in a cosine over a 64-dim output
    assert v["int_eager"]["cosine_vs_fp32_eager"] == pytest.approx(v["fakequant"]["cosine_vs_fp32_eager"], abs=1e-5)


def test_parse_batches():
    assert parse_batches("1,64") == (1, 64) and parse_batches(" 8 ") == (8,)
    for bad in ("", "1,,2", "0", "-1", "a", "1,1", "1.5"):
        with pytest.raises(ValueError):
            parse_batches(bad)


@pytest.mark.parametrize("extra, needle", [
    (["--batch", "1,x"], "--batch"),
    (["--batch", "0,64"], "--batch"),
    (["--device", "cuda"], "CUDA"),
    (["--device", "tpu"], "device"),
    (["--quant", "w9a8"], "--quant"),
    (["--repeats", "0"], "--repeats"),
])
def test_bench_bad_input_exits_2(micro_dir, tmp_path, capsys, monkeypatch, extra, needle):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # "cuda without CUDA" on any machine
    assert main(["bench", "--model", f"local-dir:{micro_dir}", "--out", str(tmp_path / "b"), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("qclip: error:") and needle in err[0]
    assert not (tmp_path / "b").exists()


def test_bench_refuses_a_file_as_out_and_unknown_models(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["bench", "--model", "ViT-B-32", "--out", str(tmp_path / "file")]) == 2
    assert main(["bench", "--model", "no-such-model", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "is a file" in err[0] and "unknown model" in err[1]


def test_bench_refuses_quant_on_an_export_folder_before_any_output(tmp_path, capsys):
    from qclip.experiments.bench import BenchConfig
    from qclip.io.errors import QclipInputError

    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "export.json").write_text("{}")
    assert main(["bench", "--model", str(folder), "--quant", "w8a8", "--out", str(tmp_path / "b")]) == 2
    assert "export folder (already quantized): drop --quant" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
    with pytest.raises(QclipInputError, match="drop --quant"):  # the config itself refuses it (API users)
        BenchConfig(model=str(folder), quant="w8a8")
