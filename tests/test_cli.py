"""`qclip` CLI: eval writes the JSON contract on the synthetic data root; bad input exits 2 with one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from zsref import zero_shot

from qclip.cli import main


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """Run `qclip` in-process; return (exit status, stdout, stderr)."""
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_eval_writes_valid_json(micro_dir, wds_root, tmp_path, capsys):
    out = tmp_path / "r.json"
    rc, stdout, _ = run_cli(["eval", "--model", f"local-dir:{micro_dir}", "--dataset", "wds/cifar10",
                             "--data-root", str(wds_root), "--limit", "200", "--no-progress", "--out", str(out)],
                            capsys)
    assert rc == 0
    record = json.loads(out.read_text())
    assert record["model"] == f"local-dir:{micro_dir}" and record["dataset"] == "wds/cifar10"
    assert record["n"] == 200 and record["quant"] is None
    m = record["metrics"]
    # the same 200 images classified by stock open_clip (tarfile + Pillow reader, build_zero_shot_classifier)
    ref = zero_shot(micro_dir, wds_root / "wds_cifar10", limit=200)
    assert m["acc1"] == pytest.approx(ref.correct(1) / 200, abs=1.5 / 200)  # float round-off may flip one tie
    assert m["acc5"] == pytest.approx(ref.correct(5) / 200, abs=1.5 / 200)
    assert m["acc1"] < m["acc5"]
    assert {"torch", "open_clip_torch", "python"} <= record["versions"].keys()
    assert "acc1=" in stdout


def test_eval_demo_uses_cached_model(wds_root, tmp_path, monkeypatch, capsys, session_tmp):
    from qclip.train.demo import DemoRecipe, pretrain_demo

    demo = session_tmp / "cli-demo"
    if not (demo / "open_clip_model.safetensors").exists():
        pretrain_demo(demo, DemoRecipe(max_steps=1, limit=32, batch_size=16, precision="32-true"), data_root=str(wds_root),
                      progress=False, evaluate=False)
    monkeypatch.setenv("QCLIP_DEMO_DIR", str(demo))
    out = tmp_path / "demo.json"
    rc, _, err = run_cli(["eval", "--model", "demo", "--dataset", "wds/fashion_mnist", "--data-root", str(wds_root),
                          "--limit", "64", "--workers", "0", "--no-progress", "--out", str(out)], capsys)
    assert rc == 0, err
    assert json.loads(out.read_text())["n"] == 64


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "ViT-Nope"], "unknown model 'ViT-Nope'"),
        (["--model", "qclip-micro-vit", "--pretrained", "/no/such.pt"], "checkpoint file not found: /no/such.pt"),
        (["--dataset", "wds/no_such_set"], "dataset 'wds/no_such_set' not found"),
        (["--dataset", "cifar10"], "unknown dataset 'cifar10'"),
    ],
)
def test_eval_bad_input_exits_2(args, message, micro_dir, wds_root, tmp_path, capsys):
    base = {"--model": f"local-dir:{micro_dir}", "--dataset": "wds/cifar10"}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    argv = ["eval", "--data-root", str(wds_root), "--out", str(tmp_path / "x.json"), "--no-progress"]
    argv += [x for kv in base.items() for x in kv]
    if "--pretrained" in args:
        argv[argv.index("--model") + 1] = "qclip-micro-vit"
    rc, _, err = run_cli(argv, capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qclip: error:") and message in lines[0], err
    assert not (tmp_path / "x.json").exists()


def test_corrupt_shard_exits_2_naming_it(micro_dir, wds_root, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(wds_root / "wds_fashion_mnist", root / "wds_fashion_mnist")
    shard = root / "wds_fashion_mnist" / "test" / "0.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[:len(data) // 2])
    rc, _, err = run_cli(["eval", "--model", f"local-dir:{micro_dir}", "--dataset", "wds/fashion_mnist",
                          "--data-root", str(root), "--workers", "2", "--no-progress", "--out",
                          str(tmp_path / "x.json")], capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"corrupt shard {shard}" in lines[0], err


def test_usage_errors_exit_2(capsys):
    assert main(["eval", "--model", "demo"]) == 2  # --dataset and --out missing
    assert main(["no-such-command"]) == 2
    assert main(["--help"]) == 0


def test_console_script_exit_status(wds_root, tmp_path):
    exe = shutil.which("qclip", path=os.path.dirname(sys.executable))
    assert exe, "the qclip console script is not installed"
    proc = subprocess.run([exe, "eval", "--model", "ViT-Nope", "--dataset", "wds/cifar10", "--data-root",
                           str(wds_root), "--out", str(tmp_path / "x.json")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("qclip: error: ")
