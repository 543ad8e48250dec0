"""Bad grids are refused when the grid is read, before any model or data is touched: one line, exit 2, no output."""

from __future__ import annotations

from pathlib import Path

import pytest

from qclip.cli import main

BASE = "models: [{name: demo}]\ndataset: wds/cifar10\n"


@pytest.mark.parametrize("extra, message", [
    ("seeds: [a, b]\n", "an entry of seeds must be an integer"),
    ("limit: abc\n", "limit must be an integer"),
    ("bands: 'zz-'\n", "bad rank band"),
    ("batch_size: 0\n", "batch_size must be >= 1"),
    ("precision: float128\n", "precision must be one of"),
    ("methods: rtn\n", "methods must be a list of strings"),
    ("ood: wds/fashion_mnist\n", "ood must be a list of strings"),
    ("bootstrap: -3\n", "bootstrap must be >= 0"),
    ("seeds: 3\n", "seeds must be a list of integers"),
    ("extra_specs: [w9a8]\n", "w_bits must be an integer in 2..8"),
    ("corruptions: ['gaussian_noise:9']\n", "severity"),
    ("qat: 5\n", "qat must be a list"),
    ("integer: yes-please\n", "integer must be true or false"),
])
def test_bad_grids_exit_2_before_anything_runs(tmp_path, capsys, extra, message):
    cfg = tmp_path / "grid.yaml"
    cfg.write_text(BASE.replace("\\\n", "\n") + extra)
    out = tmp_path / "out"
    assert main(["ablate", "--config", str(cfg), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("qclip: error: grid") and message in err[0], err
    assert not out.exists()  # nothing written, no model loaded


def test_empty_grid_file_is_refused(tmp_path, capsys):
    cfg = tmp_path / "grid.yaml"
    cfg.write_text("")
    assert main(["ablate", "--config", str(cfg), "--out", str(tmp_path / "out")]) == 2
    assert "is empty" in capsys.readouterr().err


def test_the_shipped_grids_are_valid():
    from qclip.experiments.grid import expand_cells, load_grid

    repo = Path(__file__).resolve().parents[1]
    for name in ("demo.yaml", "paper_vitb32.yaml"):
        assert len(expand_cells(load_grid(repo / "configs" / name))) > 10
    cells = expand_cells(load_grid(repo / "configs" / "demo_integer.yaml"))
    assert [(c.variant, c.kind) for c in cells] == [("fp", "fp"), ("w8a8", "quant"), ("int:w8a8", "int"),
                                                    ("w8a7", "quant"), ("int:w8a7", "int")]
