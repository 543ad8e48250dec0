"""The CLI's error mapping: user errors are one line and exit 2, bugs keep their traceback and exit 1."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from qclip.cli import main
from qclip.io.errors import ConfigError


@pytest.mark.parametrize("exc, code", [(ConfigError("lr must be > 0.0, got 0.0"), 2),
                                       (ValueError("a bug deep in a library"), 1),
                                       (RuntimeError("shape mismatch"), 1)])
def test_fit_maps_only_user_errors_to_exit_2(monkeypatch, capsys, exc, code):
    import qclip.train.cli as fit_cli

    def fail(argv):
        raise exc

    monkeypatch.setattr(fit_cli, "run_fit", fail)
    assert main(["fit", "--config", "x.yaml"]) == code
    err = capsys.readouterr().err
    if code == 2:
        assert err == f"qclip: error: {exc}\n"
    else:
        assert "Traceback" in err and "internal error" in err


@pytest.mark.parametrize("flag, message", [("--model.lr=0", "lr must be > 0.0"),
                                           ("--model.quant=w9z", "bad model.quant 'w9z'"),
                                           ("--model.spectral_k=0", "bad spectral_k"),
                                           ("--data.batch_size=0", "batch_size must be >= 1")])
def test_fit_refuses_bad_hyper_parameters_before_building(tmp_path, capsys, flag, message):
    from pathlib import Path

    config = Path(__file__).resolve().parents[1] / "configs" / "qat_demo.yaml"
    assert main(["fit", "--config", str(config), flag, f"--trainer.default_root_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not any(tmp_path.iterdir())  # no wandb run, checkpoint or config was written


def _qclip(args: list[str], tmp_path, **popen) -> subprocess.Popen:
    env = {**os.environ, "QCLIP_CACHE_DIR": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "qclip.cli", *args], env=env, stderr=subprocess.PIPE, **popen)


@pytest.mark.parametrize("reader", ["gone-before-start", "closes-after-one-line"])
def test_a_closed_stdout_pipe_ends_quietly_with_status_0(tmp_path, reader):
    """`qclip data list | head -1`: a reader that went away is not an error. With the read end closed before the
    command starts, its first write fails for sure; a reader that takes one line and closes is the real `head -1`
    (the command may or may not have written the rest by then)."""
    r, w = os.pipe()
    if reader == "gone-before-start":
        os.close(r)
        proc = _qclip(["data", "list"], tmp_path, stdout=w)
        os.close(w)
        first = None
    else:
        proc = _qclip(["data", "list"], tmp_path, stdout=w)
        os.close(w)
        with os.fdopen(r, "rb") as out:
            first = out.readline()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait() == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err and "internal error" not in err, err
    assert first is None or first.startswith(b"name ")


def test_a_broken_pipe_elsewhere_stays_an_internal_error(tmp_path):
    """Only a closed stdout is quiet: a BrokenPipeError from anything else, with stdout still open, is a bug."""
    code = ("import sys, qclip.commands.data as d\n"
            "def run(args):\n    raise BrokenPipeError(32, 'Broken pipe (a worker pipe)')\n"
            "d.run = run\nfrom qclip.cli import main\nsys.exit(main(['data', 'list']))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "QCLIP_CACHE_DIR": str(tmp_path / "cache")})
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "internal error" in proc.stderr
