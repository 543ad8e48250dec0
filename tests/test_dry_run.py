"""`qclip ablate --dry-run`: the shipped grids resolve every dataset name with no data root and offline, list every
cell with the image forward passes a real run makes (recomputed here from the grid and the registry's sample counts),
create no model, and refuse bad grids and unresolvable names in one line (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest

from qclip.cli import main
from qclip.experiments.grid import expand_cells, load_grid, shard_cells
from qclip.io import registry

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
KNOWN = json.loads((REPO / "qclip" / "io" / "registry" / "clip_benchmark.json").read_text())["datasets"]


@pytest.fixture()
def empty_root(tmp_path, monkeypatch) -> Path:
    """An empty data root, offline hubs, a working directory without OOD folders, and open_clip refusing to build
    any model (a dry run must not create one)."""
    root = tmp_path / "empty-root"
    root.mkdir()
    monkeypatch.setenv("QCLIP_DATA_ROOT", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("the dry run created a model")

    monkeypatch.setattr(open_clip, "create_model", refuse)
    monkeypatch.setattr(open_clip, "create_model_and_transforms", refuse)
    return root


def _dry_run(capsys, *args: str) -> dict:
    """Run `qclip ablate --dry-run --json ARGS` in-process; its plan."""
    rc = main(["ablate", "--dry-run", "--json", *args])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    return json.loads(captured.out)


def _test_size(name: str) -> int | None:
    """The test split's size from the dataset registry or the CLIP_benchmark size table (None: an image folder)."""
    if not name.startswith("wds/"):
        return None
    short = name[len("wds/"):]
    datasets = registry.load_registry()["datasets"]
    return (datasets[short] if short in datasets else KNOWN[short])["samples"]["test"]


def _limited(name: str, limit: int | None) -> int | None:
    size = _test_size(name)
    return None if size is None else size if limit is None else min(size, limit)


def _expected_eval(cfg) -> tuple[int, int]:
    """(known image forwards, sets of unknown size) of evaluating one variant on every set of the grid."""
    n_id = _limited(cfg.dataset, cfg.limit)
    known = n_id * (1 + len(set(cfg.corruptions)))
    others = dict.fromkeys([*cfg.ood, *cfg.shift, *(cfg.spurious or [])])  # a set named twice is forwarded once
    counts = [_limited(name, cfg.ood_limit) for name in others]
    return known + sum(c for c in counts if c is not None), sum(c is None for c in counts)


def _expected_calib(cfg, spec: str, passes: int) -> int:
    """Calibration images of a quant cell: calib_batches (default 8) x 64 train images, per pass."""
    short = cfg.dataset[len("wds/"):]
    samples = registry.load_registry()["datasets"].get(short, {}).get("samples") or KNOWN[short]["samples"]
    split_size = samples.get("train", samples["test"])
    return passes * min((cfg.calib_batches or 8) * 64, split_size)


@pytest.mark.parametrize("config, checks", [
    # (cell variant, calibration passes): FP, quant cells, a SmoothQuant cell, a truncation cell
    ("paper_vitb32.yaml", [("fp", 0), ("w8a8", 1), ("w4a8-smoothquant", 2), ("rank-match:w8a8", 0),
                           ("rank-e0.9", 0)]),
    ("paper_imagenet.yaml", [("fp", 0), ("w4a8-rot", 1), ("w8a8-smoothquant-vt", 2), ("rank-e0.5", 0)]),
    # the demo's image tower is a ModifiedResNet: SmoothQuant finds nothing to smooth there (one pass), but does
    # in the text tower
    ("demo.yaml", [("fp", 0), ("w6a8", 1), ("w8a8-smoothquant", 1), ("w8a8-smoothquant-vt", 2), ("mp5", 1),
                   ("rank-e0.9", 0)]),
    # integer cells reuse the fake-quant model their quant cell just calibrated
    ("demo_integer.yaml", [("fp", 0), ("w8a8", 1), ("int:w8a8", 0), ("w8a7", 1), ("int:w8a7", 0)]),
])
def test_dry_run_of_the_shipped_grids(empty_root, capsys, config, checks):
    path = CONFIGS / config
    cfg = load_grid(path)
    plan = _dry_run(capsys, "--config", str(path))
    cells = expand_cells(cfg)
    assert [c["id"] for c in plan["cells"]] == [c.id for c in cells]
    assert plan["cells_in_shard"] == plan["grid_cells"] == len(cells) and plan["shared"] == []
    assert plan["variants"] == len({(c.model, c.pretrained, c.variant) for c in cells})
    known, unknown = _expected_eval(cfg)
    corrupted = _limited(cfg.dataset, cfg.limit) * len(set(cfg.corruptions))
    no_cache = {(c["spec"], c["seed"]): c for c in _dry_run(capsys, "--config", str(path), "--no-cache")["cells"]}
    rows = {(c["spec"], c["seed"]): c for c in plan["cells"]}
    for variant, passes in checks:
        calib = _expected_calib(cfg, variant, passes) if passes else 0
        for seed in cfg.seeds:
            # every set for the first seed (and for every seed without the cache); later seeds read the clean
            # sets' features from the cache and forward only their corrupted copies and calibration
            for table, first in ((rows, seed == cfg.seeds[0]), (no_cache, True)):
                row = table[(variant, seed)]
                assert row["images"] == (known if first else corrupted) + calib, (variant, seed, row["forwards"])
                assert row["unknown_sets"] == (unknown if first else 0)
                assert sum(f["images"] for f in row["forwards"] if f["role"] == "calibration") == calib
    assert plan["total"]["images"] == sum(c["images"] for c in plan["cells"])
    assert plan["total"]["unknown_sets"] == sum(c["unknown_sets"] for c in plan["cells"])
    for dataset in plan["datasets"]:  # every name resolved, none read
        if dataset["kind"] == "imagefolder":
            assert dataset["status"] == "missing (supply this folder)" and dataset["problem"]
        else:
            assert dataset["samples"]["test"] == _test_size(dataset["name"])
            assert dataset["location"].startswith(str(empty_root))


def test_the_table_lists_every_cell_and_the_total(empty_root, capsys):
    path = CONFIGS / "paper_vitb32.yaml"
    assert main(["ablate", "--config", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    for cell in expand_cells(load_grid(path)):
        assert f"  {cell.id} " in out
    cfg = load_grid(path)
    known, _ = _expected_eval(cfg)
    corrupted = _limited(cfg.dataset, cfg.limit) * len(cfg.corruptions)  # seeds 1 and 2: clean sets from the cache
    total = 26 * known + 2 * 26 * corrupted + 3 * (12 * 1024 + 6 * 2048)
    assert f"total: {total:,} image forward passes over 78 cells" in out
    assert "26 distinct (model, spec) variants" in out


def test_paper_imagenet_without_any_data_root_reads_the_public_location(empty_root, monkeypatch, capsys):
    monkeypatch.delenv("QCLIP_DATA_ROOT")
    plan = _dry_run(capsys, "--config", str(CONFIGS / "paper_imagenet.yaml"))
    by_name = {d["name"]: d for d in plan["datasets"]}
    for name in ("imagenet1k", "imagenetv2", "imagenet-r", "imagenet_sketch", "imagenet-a"):
        d = by_name[f"wds/{name}"]
        assert d["location"] == f"https://huggingface.co/datasets/clip-benchmark/wds_{name}/resolve/main"
        assert d["samples"] == KNOWN[name]["samples"] and d["problem"] is None
    assert sorted(n for n, d in by_name.items() if d["problem"]) == sorted(load_grid(
        CONFIGS / "paper_imagenet.yaml").ood)  # only the OOD folders the user supplies are missing


def test_shard_lists_only_its_cells_and_the_fp_reference_it_shares(empty_root, capsys):
    path = CONFIGS / "demo.yaml"
    plan = _dry_run(capsys, "--config", str(path), "--shard", "2/3")
    cells = shard_cells(expand_cells(load_grid(path)), 2, 3)
    assert [c["id"] for c in plan["cells"]] == [c.id for c in cells] and len(cells) < plan["grid_cells"]
    assert [s["id"] for s in plan["shared"]] == ["demo|fp|s0 (shared)"]  # the FP cell is in shard 1
    assert plan["total"]["images"] == sum(r["images"] for r in plan["cells"] + plan["shared"])


def test_out_gets_plan_json_and_nothing_else(empty_root, tmp_path, capsys):
    out = tmp_path / "run"
    plan = _dry_run(capsys, "--config", str(CONFIGS / "demo.yaml"), "--out", str(out))
    assert [p.name for p in out.iterdir()] == ["plan.json"]
    assert json.loads((out / "plan.json").read_text()) == plan


def test_image_folders_are_counted_from_the_listing(empty_root, tmp_path, capsys):
    for cls, files in {"a": ["1.jpg", "2.JPEG", "sub/3.png"], "b": ["4.webp", "notes.txt"]}.items():
        for f in files:
            (tmp_path / "id" / cls / f).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "id" / cls / f).write_bytes(b"not decoded")
    grid = tmp_path / "grid.yaml"
    grid.write_text("models: [{name: ViT-B-32, pretrained: openai}]\nbits: [w8a8]\ndataset: imagefolder:id\n"
                    "ood: [imagefolder:nowhere]\nlimit: null\n")
    plan = _dry_run(capsys, "--config", str(grid))
    ds = {d["name"]: d for d in plan["datasets"]}
    assert ds["imagefolder:id"]["samples"] == {"test": 4} and ds["imagefolder:id"]["problem"] is None
    assert ds["imagefolder:nowhere"]["status"] == "missing (supply this folder)"
    fp = plan["cells"][0]  # 4 ID images, the missing folder counted at the default ood_limit (an upper bound)
    assert fp["images"] == 4 + 1000 and fp["unknown_sets"] == 0 and fp["exact"] is False
    # a real run stops on the missing folder before it loads (or creates) a model
    assert main(["ablate", "--config", str(grid), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dataset 'imagefolder:nowhere' not found: no folder" in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("body, message", [
    ("dataset: wds/cifar10\nood: [no_such_set]\n", "unknown dataset 'no_such_set'"),
    ("dataset: wds/vtab/cifar10\n", "bad dataset name 'wds/vtab/cifar10'"),
    ("dataset: wds/cifar10\nlimit: many\n", "limit must be an integer"),
    ("dataset: wds/cifar10\nseeds: 3\n", "seeds must be a list of integers"),
    ("dataset: wds/cifar10\nshift: wds/pacs_sketch\n", "shift must be a list of strings"),
    ("dataset: wds/cifar10\ncolour: blue\n", "unknown keys ['colour']"),
])
def test_bad_grids_and_unresolvable_names_are_one_line_exit_2(empty_root, tmp_path, capsys, body, message):
    grid = tmp_path / "grid.yaml"
    grid.write_text("models: [{name: demo}]\n" + body)
    assert main(["ablate", "--config", str(grid), "--dry-run"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("qclip: error: ") and message in err[0], err
    assert captured.out == ""


@pytest.mark.parametrize("args, message", [
    (["--dry-run", "--merge"], "--dry-run and --merge cannot be combined"),
    (["--json"], "--json only applies to --dry-run"),
    ([], "--out is required"),
    (["--dry-run", "--shard", "4/3"], "bad --shard '4/3'"),
])
def test_flag_combinations(empty_root, capsys, args, message):
    assert main(["ablate", "--config", str(CONFIGS / "demo.yaml"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
