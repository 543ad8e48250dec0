"""`qclip ablate` fit cells: the `fit` grid key's validation, a fit trained inside the grid and cached by its config
hash (a rerun and a resumed grid train nothing), the regularizer lowering its own target, the dose–response
section of the report, and the dry run's count of training forwards."""

from __future__ import annotations

import json

import pytest
import torch

from qclip.experiments import fits
from qclip.experiments.grid import FitEntry, GridConfig, expand_cells, fit_of
from qclip.io.errors import QclipInputError

STEPS, BATCH, K = 3, 16, 4
LAMBDAS = (0.0, 20.0)


def _fit_grid(micro_dir, **extra) -> GridConfig:
    fit = {"spec": "w8a8-lsq", "steps": STEPS, "spectral_lambda": list(LAMBDAS), "spectral_k": K,
           "batch_size": BATCH, "lr": 2e-3}
    return GridConfig(name="fit", models=[{"name": f"local-dir:{micro_dir}"}], methods=[], bits=[], fit=[fit],
                      dataset="wds/cifar10", ood=["wds/fashion_mnist"], shift=["wds/imagenet_cifar10_shift"],
                      corruptions=["gaussian_noise:3"], limit=64, ood_limit=32, bootstrap=20, bands="0-4,4-16,16-",
                      batch_size=64, calib_batches=1, **extra)


@pytest.mark.parametrize("fit, match", [
    ("w4a8-lsq", "fit must be a list"),
    ([{"spec": "w4a8-lsq", "steps": 10}], "needs spectral_lambda"),
    ([{"spec": "w4a8-lsq", "steps": 10, "spectral_lambda": [0.1, 1.0]}], "must include 0"),
    ([{"spec": "w4a8-lsq", "steps": 10, "spectral_lambda": [0, -1]}], "spectral_lambda must be >= 0"),
    ([{"spec": "w4a8-lsq", "steps": 0, "spectral_lambda": [0]}], "steps must be >= 1"),
    ([{"spec": "w4a8", "steps": 10, "spectral_lambda": [0]}], "LSQ QAT spec"),
    ([{"spec": "w4a8-lsq", "steps": 10, "spectral_lambda": [0], "spectral_k": 0}], "bad spectral_k"),
    ([{"spec": "w4a8-lsq", "steps": 10, "spectral_lambda": [0], "spectral_on": "grads"}], "spectral_on"),
    ([{"spec": "w4a8-lsq", "steps": 10, "spectral_lambda": [0], "epochs": 2}], r"unknown keys \['epochs'\]"),
    ([{"spec": "w4a8-lsq", "steps": 10, "spectral_lambda": [0, 1]}] * 2, "same cell"),
])
def test_bad_fit_entry_is_one_line_input_error(fit, match):
    with pytest.raises(QclipInputError, match=match) as info:
        GridConfig(fit=fit)
    assert "\n" not in str(info.value) and str(info.value).startswith("grid")


def test_fit_cells_expand_per_lambda_baseline_first():
    cfg = GridConfig(methods=[], bits=[], fit=[{"spec": "w4a8-lsq", "steps": 100, "spectral_lambda": [1.0, 0, 0.1],
                                                 "spectral_k": 8}])
    cells = [c for c in expand_cells(cfg) if c.kind == "fit"]
    assert [c.variant for c in cells] == ["fit:w4a8-lsq-k8-n100-lam0", "fit:w4a8-lsq-k8-n100-lam0.1",
                                          "fit:w4a8-lsq-k8-n100-lam1"]
    entry, lam = fit_of(cfg, cells[1])
    assert isinstance(entry, FitEntry) and lam == 0.1 and entry.settings(lam)["spectral_lambda"] == 0.1
    assert cells[0].method == "lsq" and cells[0].bits == "w4a8"


@pytest.fixture(scope="module")
def fit_run(micro_dir, wds_root, tmp_path_factory):
    """One fit grid run, with every training counted."""
    from qclip.experiments.ablate import run_grid

    trained = []
    real = fits.train_fit

    def counting(cell, cfg, entry, lam, **kw):
        trained.append((cell.variant, lam))
        return real(cell, cfg, entry, lam, **kw)

    mp = pytest.MonkeyPatch()
    mp.setattr(fits, "train_fit", counting)
    cfg = _fit_grid(micro_dir)
    out = tmp_path_factory.mktemp("fit-run")
    summary = run_grid(cfg, out, data_root=str(wds_root), num_workers=0, progress=False)
    yield cfg, out, summary, trained, mp
    mp.undo()


@pytest.mark.slow
def test_fit_cells_train_once_cache_and_report(fit_run, wds_root, tmp_path):
    from qclip.experiments.ablate import run_grid

    cfg, out, summary, trained, _ = fit_run
    assert summary["evaluated"] == 3 and not summary["missing"]
    assert sorted(trained) == sorted((cfg.fit[0].variant(lam), lam) for lam in LAMBDAS)  # each λ trained once
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    fitted = [r for r in records if r["cell"]["kind"] == "fit"]
    assert [r["fit"]["spectral_lambda"] for r in fitted] == list(LAMBDAS)
    for rec in fitted:
        f = rec["fit"]
        assert (f["spec"], f["steps"], f["spectral_k"]) == ("w8a8-lsq", STEPS, K) and f["train"]["steps"] == STEPS
        assert rec["metrics"]["acc1"] is not None and rec["paired"]["id"]["n"] == 64  # evaluated like any cell
        assert fits.fit_path(f["cache_key"]).is_file()
    base, dose = fitted
    assert base["fit"]["vs_base"] is None
    vs = dose["fit"]["vs_base"]
    assert set(vs["corruptions"]) == {"gaussian_noise:3"} and set(vs["ood"]) == {"wds/fashion_mnist"}
    target = dose["fit"]["feature_target"]
    # the paired test's weighted-scatter tail (its full-data row) against the centred-Gram tail of each fit: both
    # float64 eigenvalues of a 32 x 32 matrix, so they agree to ~1e-15 x 32 of the total energy; 1e-10 is generous
    assert target["vs_base"]["diff"] == pytest.approx(target["value"] - base["fit"]["feature_target"]["value"],
                                                      abs=1e-10)
    assert target["vs_base"]["p"] >= 1 / (target["vs_base"]["resamples"] + 1)

    # the report: a dose–response section with one row per λ
    report = (out / "report.md").read_text()
    section = report.split("## Regularizer dose–response", 1)[1].split("\n## ", 1)[0]
    assert "| 0 | 64 |" in section and "| 20 | 64 |" in section
    assert "gaussian_noise:3 (corruption)" in section and "wds/fashion_mnist (OOD)" in section

    # a rerun into a new folder evaluates every cell again but trains nothing: the fits come from the cache
    mtimes = {r["fit"]["cache_key"]: fits.fit_path(r["fit"]["cache_key"]).stat().st_mtime_ns for r in fitted}
    n_trained = len(trained)
    again = run_grid(cfg, tmp_path / "again", data_root=str(wds_root), num_workers=0, progress=False)
    assert again["evaluated"] == 3 and len(trained) == n_trained
    assert {k: fits.fit_path(k).stat().st_mtime_ns for k in mtimes} == mtimes
    rerun = [json.loads(line) for line in (tmp_path / "again" / "results.jsonl").read_text().splitlines()]
    assert [r["metrics"]["acc1"] for r in rerun] == [r["metrics"]["acc1"] for r in records]

    # resume: the stored cells of the first folder are skipped (nothing evaluated, nothing trained)
    resumed = run_grid(cfg, out, data_root=str(wds_root), num_workers=0, progress=False)
    assert resumed["skipped"] == 3 and resumed["evaluated"] == 0 and len(trained) == n_trained


@pytest.mark.slow
def test_resume_after_a_lost_dose_cell_reuses_both_fits(fit_run, wds_root):
    """A grid killed after its λ = 0 cell: the rerun evaluates the dose only, its baseline read from the cache."""
    from qclip.experiments.ablate import cell_hash, run_grid
    from qclip.io.store import ResultsStore

    cfg, out, _, trained, _ = fit_run
    store = next((out / "store").glob("*.jsonl"))
    dose = next(c for c in expand_cells(cfg) if c.kind == "fit" and fit_of(cfg, c)[1] > 0)
    kept = [r for r in ResultsStore(store).records() if r["hash"] != cell_hash(cfg, dose)]
    store.write_text("".join(json.dumps(r) + "\n" for r in kept))
    n_trained = len(trained)
    summary = run_grid(cfg, out, data_root=str(wds_root), num_workers=0, progress=False)
    assert summary["skipped"] == 2 and summary["evaluated"] == 1 and len(trained) == n_trained


@pytest.mark.slow
def test_regularizer_lowers_its_target_on_the_training_batch(fit_run):
    cfg, out, _, _, _ = fit_run
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    target = {r["fit"]["spectral_lambda"]: r["fit"]["train"]["train_batch_target"] for r in records
              if r["cell"]["kind"] == "fit"}
    # the target is a float32 energy share of a [BATCH, 32] feature Gram: round-off ~ eps32 * BATCH * 32 relative;
    # λ = 20 against λ = 0 must lower it by far more than that
    tol = torch.finfo(torch.float32).eps * BATCH * 32
    assert 0.0 <= target[20.0] < target[0.0] - tol, target


def test_shipped_grids_carry_fit_cells():
    from pathlib import Path

    from qclip.experiments.grid import load_grid

    configs = Path(__file__).resolve().parents[1] / "configs"
    demo = [c for c in expand_cells(load_grid(configs / "demo.yaml")) if c.kind == "fit"]
    assert [fit_of(load_grid(configs / "demo.yaml"), c)[1] for c in demo] == [0.0, 1.0]
    sweep = load_grid(configs / "demo_regularizer.yaml")
    cells = [c for c in expand_cells(sweep) if c.kind == "fit"]
    assert len(cells) == sum(len(f.spectral_lambda) for f in sweep.fit) * len(sweep.seeds)
    assert {f.spectral_on for f in sweep.fit} == {"features", "both"}


def test_dry_run_counts_fit_training(micro_dir, wds_root):
    from qclip.experiments.plan import format_plan, plan_grid

    cfg = _fit_grid(micro_dir)
    plan = plan_grid(cfg, data_root=str(wds_root))
    header = next(line.split() for line in format_plan(plan).splitlines() if line.startswith("  cell "))
    assert header[-2:] == ["train", "total"]
    rows = [r for r in plan.cells if r.kind == "fit"]
    assert len(rows) == len(LAMBDAS)
    for row in rows:
        train = [f for f in row.forwards if f.role == "training"]
        assert [f.images for f in train] == [(STEPS + 1) * BATCH + fits.calib_pairs(cfg, cfg.fit[0])]
        assert sum(f.images for f in row.forwards if f.role == "calibration") == 64  # its PTQ-style calibration
