"""Progress in logs: plain lines (count, rate, ETA) at intervals instead of carriage-return bars when stderr is not
a terminal; the tqdm bar on a terminal; nothing when progress is off. Time comes from an injected clock."""

from __future__ import annotations

import io
import types

import pytest
from tqdm.auto import tqdm

from qclip.io import progress as progress_mod
from qclip.io.progress import LogProgress, format_duration, progress_bar, progress_interval_s
from qclip.train.progress import LogProgressCallback, progress_settings


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_log_progress_prints_at_intervals_with_rate_and_eta():
    clock, out = Clock(), io.StringIO()
    bar = LogProgress(100, desc="ablate demo", unit="cell", interval=30, stream=out, clock=clock)
    clock.now = 10.0
    bar.update(10)  # 10 s < 30 s: silent
    assert out.getvalue() == ""
    clock.now = 40.0
    bar.set_postfix_str("w4a8")
    bar.update(30)  # 40 cells in 40 s: 1 cell/s, 60 left
    assert out.getvalue() == "ablate demo: 40/100 cell (40%), 1 cell/s, elapsed 40s, ETA 1m00s, w4a8\n"
    clock.now = 50.0
    bar.update(10)  # 10 s after the last line: silent
    assert out.getvalue().count("\n") == 1
    bar.write("cell 3: acc1=0.5")
    clock.now = 100.0
    bar.update(50)
    bar.close()
    bar.close()  # idempotent
    lines = out.getvalue().splitlines()
    assert lines[1] == "cell 3: acc1=0.5"
    assert lines[2].startswith("ablate demo: 100/100 cell (100%)") and lines[2].endswith("(done)")
    assert len(lines) == 3 and "\r" not in out.getvalue()


def test_log_progress_resumed_counts_rate_from_its_start_and_scales_bytes():
    clock, out = Clock(), io.StringIO()
    bar = LogProgress(10, desc="grid", unit="cell", initial=6, interval=0, stream=out, clock=clock)
    clock.now = 20.0
    bar.update(2)  # 2 cells in 20 s since the resume: 0.1 cell/s, 2 left = 20 s
    assert "8/10 cell (80%)" in out.getvalue() and "ETA 20s" in out.getvalue()
    out2 = io.StringIO()
    fetch = LogProgress(None, desc="fetch x.tar", unit="B", unit_scale=True, interval=0, stream=out2, clock=clock)
    fetch.reset(total=5_000_000)
    clock.now = 22.0
    fetch.update(2_500_000)
    assert out2.getvalue().startswith("fetch x.tar: 2.5M/5.0M B (50%), 1.2M B/s")


def test_format_duration():
    assert [format_duration(s) for s in (0, 59.4, 61, 3599, 3600 * 2 + 61)] == ["0s", "59s", "1m01s", "59m59s",
                                                                                 "2h01m"]


@pytest.mark.parametrize("raw, want", [(None, 30.0), ("5", 5.0), ("0", 0.0), ("-1", 30.0), ("x", 30.0),
                                       ("nan", 30.0)])
def test_interval_from_the_environment(monkeypatch, raw, want):
    if raw is None:
        monkeypatch.delenv("QCLIP_PROGRESS_INTERVAL", raising=False)
    else:
        monkeypatch.setenv("QCLIP_PROGRESS_INTERVAL", raw)
    assert progress_interval_s() == want


def test_progress_bar_picks_tqdm_on_a_terminal_and_lines_in_a_log(monkeypatch):
    monkeypatch.setattr(progress_mod, "is_terminal", lambda stream=None: True)
    bar = progress_bar(3, desc="t", enabled=True)
    assert isinstance(bar, tqdm)
    bar.close()
    monkeypatch.setattr(progress_mod, "is_terminal", lambda stream=None: False)
    assert type(progress_bar(3, desc="t", enabled=True)) is LogProgress
    off = progress_bar(3, desc="t", enabled=False)
    assert not isinstance(off, tqdm)
    assert progress_settings(False) == (False, [])


def test_features_print_plain_lines_when_stderr_is_a_file(micro_model, capsys, monkeypatch):
    """The real call site: stderr captured (not a terminal) with a 0 s interval gives one line per batch."""
    import torch

    from qclip.evals.features import extract_image_features

    monkeypatch.setenv("QCLIP_PROGRESS_INTERVAL", "0")
    images = torch.randn(10, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    batches = [(images[:4], torch.arange(4)), (images[4:], torch.arange(6))]
    extract_image_features(micro_model.model, batches, progress=True, total=10, desc="features")
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("features:")]
    assert lines[0].startswith("features: 4/10 img (40%)") and lines[-1].endswith("(done)")


def test_training_lines_name_epoch_step_loss_and_eta(capsys):
    import torch

    clock = Clock()
    cb = LogProgressCallback(interval=30, desc="fit", clock=clock)
    trainer = types.SimpleNamespace(global_step=0, current_epoch=0, estimated_stepping_batches=100,
                                    callback_metrics={"train/loss": torch.tensor(1.25)}, is_global_zero=True)
    cb.on_train_start(trainer, None)
    clock.now, trainer.global_step = 10.0, 10
    cb.on_train_batch_end(trainer, None, None, None, 9)
    assert capsys.readouterr().err == ""
    clock.now, trainer.global_step = 40.0, 40
    cb.on_train_batch_end(trainer, None, None, None, 39)
    assert capsys.readouterr().err == ("fit: epoch 0, step 40/100 (40%), loss 1.2500, 1.00 steps/s, elapsed 40s, "
                                       "ETA 1m00s\n")
    clock.now, trainer.global_step = 50.0, 50
    cb.on_train_epoch_end(trainer, None)
    assert capsys.readouterr().err.startswith("fit: epoch 0 done, step 50/100 (50%)")
