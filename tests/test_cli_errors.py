"""The CLI's error mapping: user errors are one line and exit 2, bugs keep their traceback and exit 1."""

from __future__ import annotations

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
