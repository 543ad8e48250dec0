"""`qclip fit` (LightningCLI): a short run with checkpoint, wandb offline and export; exact resume; 2-process DDP."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch

from qclip.cli import main

REPO = Path(__file__).resolve().parents[1]


def fit_args(micro_dir, root, *extra):
    """Arguments of a tiny fit: micro model, 64 CIFAR-10 pairs per epoch, batches of 16."""
    return ["fit", "--config", str(REPO / "configs" / "qat_demo.yaml"), "--model.model", f"local-dir:{micro_dir}",
            "--data.train_limit", "64", "--data.batch_size", "16", "--data.val_limit", "32", "--data.calib_pairs", "32",
            "--data.num_workers", "0", "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar",
            "false", "--trainer.log_every_n_steps", "1", *extra]


def weights(ckpt: Path) -> dict:
    """Model tensors of a Lightning checkpoint."""
    return {k: v for k, v in torch.load(ckpt, weights_only=True)["state_dict"].items() if k.startswith("model.")}


@pytest.fixture(autouse=True)
def env(wds_root, monkeypatch, tmp_path):
    monkeypatch.setenv("QCLIP_DATA_ROOT", str(wds_root))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)


def test_fit_checkpoints_logs_and_exports(micro_dir, tmp_path):
    root = tmp_path / "run"
    assert main(fit_args(micro_dir, root, "--trainer.max_epochs", "1", "--model.spectral_lambda", "0.1")) == 0
    assert (root / "checkpoints" / "last.ckpt").is_file()
    assert list((root / "wandb").glob("offline-run-*"))
    stock, _, _ = open_clip.create_model_and_transforms(f"local-dir:{root / 'export' / 'float'}")
    assert isinstance(stock, open_clip.CLIP)
    from qclip.quant.kernels import integer_maps

    from qclip.io.models import load_model

    # the integer model: export.json + int.safetensors over the float folder (see tests/test_export.py)
    loaded = load_model(str(root / "export")).model
    assert integer_maps(loaded) and (root / "export" / "export.json").is_file()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert loaded.encode_image(x).shape == (2, 32)

    # self-describing checkpoint: the path alone rebuilds the fine-tuned weights, not the base model's
    tuned = load_model(str(root / "checkpoints" / "last.ckpt")).model.state_dict()
    stored = {k.removeprefix("model."): v for k, v in weights(root / "checkpoints" / "last.ckpt").items()}
    base = load_model(f"local-dir:{micro_dir}").model.state_dict()
    common = [k for k in tuned if k in stored]
    assert len(common) == len(tuned), [k for k in tuned if k not in stored][:5]
    assert all(torch.equal(tuned[k], stored[k]) for k in common)
    assert any(not torch.equal(tuned[k], base[k]) for k in common)


def test_two_fits_in_one_process_get_their_own_wandb_runs(micro_dir, tmp_path):
    # Lightning's WandbLogger adopts a wandb run still active in the process: each fit must finish its own
    roots = [tmp_path / "a", tmp_path / "b"]
    for root in roots:
        assert main(fit_args(micro_dir, root, "--trainer.max_steps", "2")) == 0
    runs = [list((root / "wandb").glob("offline-run-*")) for root in roots]
    assert all(len(r) == 1 for r in runs), runs
    assert runs[0][0].name.split("-")[-1] != runs[1][0].name.split("-")[-1]


def test_resume_from_last_gives_identical_weights(micro_dir, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(fit_args(micro_dir, straight, "--trainer.max_epochs", "2")) == 0
    assert main(fit_args(micro_dir, resumed, "--trainer.max_epochs", "1")) == 0  # "killed" after epoch 1
    assert main(fit_args(micro_dir, resumed, "--trainer.max_epochs", "2", "--ckpt_path", "last")) == 0
    a, b = weights(straight / "checkpoints" / "last.ckpt"), weights(resumed / "checkpoints" / "last.ckpt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_bad_config_exits_2(capsys):
    assert main(["fit", "--config", str(REPO / "configs" / "qat_demo.yaml"), "--model.spectral_on", "nope"]) == 2
    assert main(["fit", "--config", str(REPO / "configs" / "qat_demo.yaml"), "--model.spectral_lambda", "-1"]) == 2
    assert "spectral_lambda" in capsys.readouterr().err


@pytest.mark.slow
def test_ddp_two_cpu_processes(micro_dir, tmp_path):
    root = tmp_path / "ddp"
    exe = str(Path(sys.executable).with_name("qclip"))
    args = fit_args(micro_dir, root, "--trainer.max_steps", "2", "--trainer.strategy", "ddp", "--trainer.devices", "2",
                    "--trainer.accelerator", "cpu", "--trainer.logger", "false")
    proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (root / "checkpoints" / "last.ckpt").is_file()


def test_eval_of_a_qat_checkpoint_uses_its_trained_steps(micro_dir, wds_root, tmp_path):
    from qclip.evals.variants import quantize_loaded

    from qclip.io.data import resolve_dataset
    from qclip.io.models import load_model

    root = tmp_path / "q"
    assert main(fit_args(micro_dir, root, "--trainer.max_steps", "2", "--model.scale_lr", "0.05")) == 0
    ckpt = root / "checkpoints" / "last.ckpt"
    spec = resolve_dataset("wds/cifar10", str(wds_root), "test")
    fp = load_model(str(ckpt))
    fresh, _ = quantize_loaded(fp, "w4a8-lsq", spec, calib_batches=1)
    trained, _ = quantize_loaded(fp, "w4a8-lsq", spec, calib_batches=1, qat_checkpoint=str(ckpt))
    key = "visual.transformer.resblocks.0.mlp.c_fc.weight_quant.step"
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    saved = state["model." + key]
    # a scale lr of 0.05 drives some steps through 0 within two updates; the module clamps them to stay positive
    assert all((v > 0).all() for k, v in state.items() if k.endswith(".step"))
    assert torch.equal(trained.model.state_dict()[key], saved)
    assert not torch.equal(fresh.model.state_dict()[key], saved)  # the steps moved during training
    out = tmp_path / "e.json"
    assert main(["eval", "--model", str(ckpt), "--quant", "w4a8-lsq", "--dataset", "wds/cifar10", "--data-root",
                 str(wds_root), "--limit", "32", "--bootstrap", "0", "--workers", "0", "--no-progress",
                 "--out", str(out)]) == 0


@pytest.mark.parametrize("freeze_bn", ["true", "false"])
def test_freeze_bn_through_a_real_fit(tmp_path, freeze_bn):
    """A micro ResNet CLIP: with freeze_bn its BatchNorm running statistics survive QAT fine-tuning unchanged."""
    from qclip.io.models import save_open_clip_dir

    torch.manual_seed(0)
    model = open_clip.create_model("qclip-micro-rn")
    src = save_open_clip_dir(model, open_clip.get_model_config("qclip-micro-rn"), tmp_path / "rn")
    before = {k: v.clone() for k, v in model.state_dict().items() if "running_mean" in k}
    root = tmp_path / "run"
    # diagnostics every step: their eval()/train() round trip must not unfreeze the BatchNorm layers
    assert main(fit_args(src, root, "--trainer.max_epochs", "1", "--model.freeze_bn", freeze_bn,
                         "--trainer.callbacks+=qclip.train.callbacks.SpectralDiagnostics",
                         "--trainer.callbacks.every_n_steps=1")) == 0
    after = {k.removeprefix("model."): v for k, v in weights(root / "checkpoints" / "last.ckpt").items()}
    assert before and all(k in after for k in before)
    unchanged = all(torch.equal(before[k], after[k]) for k in before)
    assert unchanged is (freeze_bn == "true")


def test_bf16_mixed_fit_trains_in_float32_masters(micro_dir, tmp_path):
    # the ViT-B-32 configs train with bf16-mixed: fake quantizers and validation run under autocast (here CPU
    # autocast), the weights and steps Lightning stores stay float32, and the run tracks the float32 one
    runs = {p: tmp_path / p for p in ("bf16-mixed", "32-true")}
    for precision, root in runs.items():
        assert main(fit_args(micro_dir, root, "--trainer.max_steps", "2", "--trainer.precision", precision)) == 0
    bf16, fp32 = (weights(root / "checkpoints" / "last.ckpt") for root in runs.values())
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in bf16.values() if v.is_floating_point())
    steps = [k for k in bf16 if k.endswith(".step")]
    assert steps and any(not torch.equal(bf16[k], fp32[k]) for k in steps)  # autocast did change the numerics
    # two AdamW updates move each step by at most ~2·scale_lr (1e-3): the runs can differ by no more than that twice
    assert all((bf16[k] - fp32[k]).abs().max() <= 4e-3 + 1e-6 for k in steps)
