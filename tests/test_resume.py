"""A killed `qclip fit` resumes exactly: SIGKILL mid-epoch, between epochs, inside a checkpoint write and at an
arbitrary moment from outside; the fit resumed from `last.ckpt` each time ends with every tensor (weights,
BatchNorm statistics, LSQ steps, the weight penalty's bases, optimizer and scheduler state) equal to the
uninterrupted run's, bit for bit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import open_clip
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
EXE = str(Path(sys.executable).with_name("qclip"))


@pytest.fixture(scope="module")
def rn_dir(tmp_path_factory) -> Path:
    """A micro ResNet CLIP (BatchNorm layers, attention pool) as an open_clip local-dir."""
    from qclip.io.models import save_open_clip_dir

    torch.manual_seed(0)
    model = open_clip.create_model("qclip-micro-rn")
    return save_open_clip_dir(model, open_clip.get_model_config("qclip-micro-rn"),
                              tmp_path_factory.mktemp("rn") / "rn")


def fit(src: Path, root: Path, *extra: str, wait: bool = True):
    """`qclip fit` in a subprocess: w4a8 LSQ + distillation + the weight and feature spectral penalties (lowrank
    bases refreshed every 2 steps), 2 loader workers, 4 batches an epoch, 3 epochs, a checkpoint every 3 steps."""
    args = [EXE, "fit", "--config", str(REPO / "configs" / "qat_demo.yaml"), "--model.model", f"local-dir:{src}",
            "--model.spectral_lambda", "0.1", "--model.spectral_on", "both", "--model.spectral_refresh", "2",
            "--data.train_limit", "64", "--data.batch_size", "16", "--data.val_limit", "32",
            "--data.calib_pairs", "32", "--data.num_workers", "2", "--trainer.max_epochs", "3",
            "--checkpoint.every_n_train_steps", "3", "--trainer.default_root_dir", str(root),
            "--trainer.enable_progress_bar", "false", "--trainer.logger", "false", *extra]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if not wait:
        return proc
    out, err = proc.communicate(timeout=600)
    return proc.returncode, err


def killed_at(src: Path, root: Path, *kill: str, resume: bool) -> None:
    """Run the fit with a `KillAt` callback (resuming from last.ckpt when asked) and check it died by SIGKILL."""
    extra = ["--trainer.callbacks+=fit_killer.KillAt", *kill] + (["--ckpt_path", "last"] if resume else [])
    code, err = fit(src, root, *extra)
    assert code == -signal.SIGKILL, err[-3000:]


def checkpoint(root: Path) -> dict:
    return torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)


def assert_same_training_state(a: dict, b: dict) -> None:
    """Every tensor of the two checkpoints' model, optimizer and scheduler states is bitwise equal."""
    assert (a["global_step"], a["epoch"]) == (b["global_step"], b["epoch"])
    assert a["state_dict"].keys() == b["state_dict"].keys()
    differ = [k for k in a["state_dict"] if not _equal(a["state_dict"][k], b["state_dict"][k])]
    assert not differ, f"{len(differ)} of {len(a['state_dict'])} entries differ: {differ[:5]}"
    assert _equal(a["optimizer_states"], b["optimizer_states"])
    assert _equal(a["lr_schedulers"], b["lr_schedulers"])


def _equal(x, y) -> bool:
    if isinstance(x, torch.Tensor):
        return isinstance(y, torch.Tensor) and x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y)
    if isinstance(x, dict):
        return isinstance(y, dict) and x.keys() == y.keys() and all(_equal(x[k], y[k]) for k in x)
    if isinstance(x, (list, tuple)):
        return type(x) is type(y) and len(x) == len(y) and all(map(_equal, x, y))
    return x == y


@pytest.fixture(scope="module")
def straight(rn_dir, wds_root, tmp_path_factory) -> dict:
    """The uninterrupted 12-step run's final checkpoint."""
    os.environ["QCLIP_DATA_ROOT"] = str(wds_root)
    root = tmp_path_factory.mktemp("straight")
    code, err = fit(rn_dir, root)
    assert code == 0, err[-3000:]
    return checkpoint(root)


@pytest.mark.slow
def test_kills_mid_epoch_between_epochs_and_inside_a_write_resume_exactly(rn_dir, straight, tmp_path):
    root = tmp_path / "run"
    # 1. mid-epoch: killed after step 7; the last checkpoint is step 6, two batches into epoch 1
    killed_at(rn_dir, root, "--trainer.callbacks.step=7", resume=False)
    ckpt = checkpoint(root)
    assert (ckpt["global_step"], ckpt["PairDataModule"]["position"]) == (6, {"epoch": 1, "consumed": 2,
                                                                            "complete": False})
    # 2. between epochs: resumed at step 6, killed as epoch 2 starts; the last checkpoint is epoch 1's end
    killed_at(rn_dir, root, "--trainer.callbacks.epoch=2", resume=True)
    ckpt = checkpoint(root)
    assert (ckpt["global_step"], ckpt["PairDataModule"]["position"]) == (8, {"epoch": 1, "consumed": 4,
                                                                            "complete": True})
    # 3. inside the write of step 9's checkpoint (temp file written, not yet renamed): step 8's stays whole
    killed_at(rn_dir, root, "--trainer.callbacks.during_save=9", resume=True)
    assert checkpoint(root)["global_step"] == 8
    assert list((root / "checkpoints").glob(".last.ckpt.*")), "the interrupted write left no temp file"
    # 4. resumed to the end: the same state as the uninterrupted run, every tensor
    code, err = fit(rn_dir, root, "--ckpt_path", "last")
    assert code == 0, err[-3000:]
    assert not list((root / "checkpoints").glob(".last.ckpt.*"))  # the stray temp file was swept
    final = checkpoint(root)
    assert_same_training_state(final, straight)
    assert final["global_step"] == 12


@pytest.mark.slow
def test_a_kill_from_outside_at_an_arbitrary_moment_resumes_exactly(rn_dir, straight, tmp_path):
    root = tmp_path / "run"
    # the fit stalls after step 10 (until killed), so the kill below lands somewhere between the first checkpoint
    # and step 10 -- mid-step, mid-write or between steps -- and never after the fit ended, on any machine
    proc = fit(rn_dir, root, "--trainer.callbacks+=fit_killer.StallAt", "--trainer.callbacks.step=10", wait=False)
    last = root / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 600  # a hang guard only: the kill waits for the first checkpoint, not a clock
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err[-3000:]
    assert checkpoint(root)["global_step"] < 12
    code, err = fit(rn_dir, root, "--ckpt_path", "last")
    assert code == 0, err[-3000:]
    assert_same_training_state(checkpoint(root), straight)


@pytest.mark.parametrize("value", ["0", "-3"])
def test_a_bad_checkpoint_interval_is_one_line_and_exit_2(rn_dir, wds_root, tmp_path, capsys, monkeypatch, value):
    from qclip.cli import main

    monkeypatch.setenv("QCLIP_DATA_ROOT", str(wds_root))  # the data resolves, so the interval is what is refused

    root = tmp_path / "run"
    assert main(["fit", "--config", str(REPO / "configs" / "qat_demo.yaml"), "--model.model", f"local-dir:{rn_dir}",
                 "--trainer.default_root_dir", str(root), "--checkpoint.every_n_train_steps", value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("qclip: error: ") and "every_n_train_steps" in err[-1], err
    assert not (root / "checkpoints").exists()
