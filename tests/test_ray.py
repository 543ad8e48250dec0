"""`qclip ablate --ray`: the scheduler (pure, no Ray), the same records as the in-process run through a local Ray
with 2 CPUs, a worker killed mid-cell, a driver killed mid-grid, and the one-line errors (bad address, no Ray, a
worker that cannot see a dataset). Nothing of Ray is imported without `--ray`."""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_ablate import _assert_same_records, _grid_yaml, _stored

from qclip.cli import main
from qclip.experiments.schedule import longest_first, lower_bound, makespan, modulo, simulate

TESTS = Path(__file__).resolve().parent


# ------------------------------------------------------------------------------------------------ the scheduler
def test_longest_first_known_answer_and_graham_bound():
    # the textbook LPT instance: 5,4,3,3,3 on 2 workers -> LPT {5,3}, {4,3,3}: 10; the optimum {5,4}, {3,3,3}: 9
    costs = [3, 5, 3, 4, 3]
    plan = longest_first(costs, list(range(5)), 2)
    assert plan == [[1, 2], [3, 0, 4]] and makespan(plan, costs, list(range(5))) == 10
    rng = random.Random(0)
    for _ in range(40):  # Graham: LPT <= (4/3 - 1/(3m)) x the optimum, found here by brute force
        n, m = rng.randint(2, 7), rng.randint(2, 3)
        costs = [rng.randint(1, 20) for _ in range(n)]
        best = min(max(sum(c for c, a in zip(costs, assign) if a == w) for w in range(m))
                   for assign in itertools.product(range(m), repeat=n))
        got = makespan(longest_first(costs, list(range(n)), m), costs, list(range(n)))
        assert best <= got <= (4 / 3 - 1 / (3 * m)) * best + 1e-9
        assert got >= lower_bound(costs, list(range(n)), m)


def test_longest_first_runs_leads_first_and_keeps_groups_together():
    # two groups (a lead of 2, two jobs of 3 each) on 2 workers: when a new group costs 3 to set up, each group
    # stays on one worker (for the same makespan)
    costs, groups, leads = [2, 3, 3, 2, 3, 3], ["a"] * 3 + ["b"] * 3, [0, 3]
    together = longest_first(costs, groups, 2, leads=leads, switch=3.0)
    assert together == [[0, 1, 2], [3, 4, 5]]
    spread = longest_first(costs, groups, 2, leads=leads)  # free set-up: plain LPT mixes them
    assert spread == [[0, 1, 5], [3, 2, 4]]
    for plan in (together, spread):
        assert makespan(plan, costs, groups, leads) == lower_bound(costs, groups, 2, leads) == 8
    # one group on 3 workers: nothing starts before the lead is done, and the work still spreads
    costs, groups = [4, 3, 3, 3, 3, 3, 3], ["g"] * 7
    plan = longest_first(costs, groups, 3, leads=[0])
    assert simulate(plan, costs, groups, [0]) == [10, 10, 10]  # 4 + 3 + 3: two rounds of 3 after the lead
    assert [len(p) for p in plan] == [3, 2, 2] and plan[0][0] == 0


def test_simulate_waits_for_leads_and_detects_deadlock():
    costs, groups = [5, 1, 1], ["g", "g", "g"]
    assert simulate([[0], [1, 2]], costs, groups, [0]) == [5, 7]  # the second worker waits for the lead
    # ...or only the last half unit of each job does: job 1 ends at 5 + 0.5, job 2 right after it
    assert simulate([[0], [1, 2]], costs, groups, [0], tails=[0, 0.5, 0.5]) == [5, 6.5]
    with pytest.raises(ValueError, match="deadlock"):
        simulate([[1, 0]], costs, groups, [0])
    assert modulo(5, 2) == [[0, 2, 4], [1, 3]]
    with pytest.raises(ValueError):
        longest_first([1, 2], ["a"], 2)


def test_jobs_chain_integer_cells_and_lead_each_group(wds_root):
    from qclip.experiments.distributed import plan_jobs
    from qclip.experiments.grid import GridConfig, expand_cells

    cfg = GridConfig(bits=["w8a8", "w4"], integer=True, seeds=[0, 1], limit=64, ood_limit=32)
    cells = expand_cells(cfg)  # per seed: fp, w8a8, int:w8a8, w4 (weight-only: no integer cell)
    assert [c.variant for c in cells[:4]] == ["fp", "w8a8", "int:w8a8", "w4"]
    todo = cells[1:]  # seed 0's FP cell is stored (a resumed run)
    jobs = plan_jobs(cfg, todo, str(wds_root))
    labels = [[c.variant for c in j.cells] for j in jobs]
    assert labels == [["w8a8", "int:w8a8"], ["w4"], ["fp"], ["w8a8", "int:w8a8"], ["w4"], []]
    assert [j.lead for j in jobs] == [False, False, True, False, False, True]
    ref = jobs[-1]  # seed 0 gets a reference-only lead (its FP cell is not re-run)
    assert ref.group == (cells[0].model, None, 0) and ref.group_cell == cells[0]
    # costs: the dry run's forwards (64 ID images: no other set here), fake quant weighted 1.45x; the PTQ job adds
    # its calibration images and its integer cell
    fp, w4 = jobs[2].cost, jobs[1].cost
    assert fp == 64 and w4 == pytest.approx(64 * 1.45) and jobs[0].cost > 2 * w4


# ------------------------------------------------------------------------------------------------ helpers
def _tiny(path: Path, micro_dir, **extra) -> str:
    """4 cells (FP, two RTN specs, a truncation), one OOD set, small limits."""
    base = dict(match_truncation="[]", shift="[]", corruptions="[]", limit=64, ood_limit=32)
    return _grid_yaml(path, micro_dir, **{**base, **extra})


def _args(config: str, out: Path, wds_root, *extra: str) -> list[str]:
    return ["ablate", "--config", config, "--out", str(out), "--data-root", str(wds_root), "--no-progress",
            "--workers", "0", *extra]


@pytest.fixture()
def local_ray():
    """Start a local Ray (2 CPUs, no dashboard) with the given runtime env; always shut it down. (Each test that
    starts Ray takes over ~10 s here, for Ray and the workers' imports: they are marked slow.)"""
    import ray

    started = []

    def start(**runtime_env):
        ray.init(num_cpus=2, include_dashboard=False, runtime_env=runtime_env or None, namespace="qclip-tests",
                 logging_level="ERROR", log_to_driver=False)  # as the CLI's own ray.init: workers' logs stay there
        started.append(1)
        return ray

    try:
        yield start
    finally:
        if started:
            ray.shutdown()


@pytest.fixture(scope="module")
def tiny_reference(micro_dir, wds_root, tmp_path_factory):
    """The tiny grid in process: (config, out). On one thread, as each 1-CPU Ray worker runs (Ray sets
    OMP_NUM_THREADS to an actor's CPUs): float32 sums split over another thread count round differently (the
    feature SQNR of a truncation moved by ~1e-5 relative with 2 threads), and the point is the same computation."""
    import torch

    tmp = tmp_path_factory.mktemp("ray-ref")
    config = _tiny(tmp / "grid.yaml", micro_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(_args(config, tmp / "run", wds_root)) == 0
    finally:
        torch.set_num_threads(threads)
    return config, tmp / "run"


# ------------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_ray_grid_gives_the_in_process_records(tiny_reference, wds_root, tmp_path, local_ray, capsys):
    config, ref_out = tiny_reference
    local_ray()
    out = tmp_path / "ray"
    # --no-cache: the workers extract every feature themselves (the in-process run filled the cache)
    assert main(_args(config, out, wds_root, "--no-cache", "--ray", "--cpus-per-worker", "1")) == 0
    printed = capsys.readouterr().out
    assert "ray: 4 cells evaluated on 2 workers, 0 already stored" in printed
    _assert_same_records(_stored(out), _stored(ref_out))
    assert [p.name for p in (out / "store").glob("*.jsonl")] == ["ray.jsonl"] and (out / "report.md").is_file()
    assert len((out / "store" / "ray.jsonl").read_text().splitlines()) == 4


@pytest.mark.slow
def test_a_worker_killed_mid_cell_has_its_cell_run_again(tiny_reference, wds_root, tmp_path, local_ray, capsys):
    config, ref_out = tiny_reference
    stall = tmp_path / "stalled"
    ray = local_ray(worker_process_setup_hook="ray_stall.install",
                    env_vars={"PYTHONPATH": str(TESTS), "QCLIP_TEST_STALL_FILE": str(stall)})
    out = tmp_path / "ray"
    result = {}
    driver = threading.Thread(target=lambda: result.setdefault(
        "rc", main(_args(config, out, wds_root, "--no-cache", "--ray", "--cpus-per-worker", "1"))))
    driver.start()
    deadline = time.monotonic() + 600  # a hang guard only: the kill waits for a worker to stall mid-cell
    while not stall.exists() and driver.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stall.exists(), "no worker stalled"
    name, cell_id = stall.read_text().split()
    ray.kill(ray.get_actor(name, namespace="qclip-tests"), no_restart=False)  # Ray restarts it
    driver.join(timeout=600)
    assert result.get("rc") == 0
    printed = capsys.readouterr().out
    assert "ray: 4 cells evaluated on 2 workers, 0 already stored, 1 retried" in printed
    lines = (out / "store" / "ray.jsonl").read_text().splitlines()
    ids = [json.loads(line)["cell"]["id"] for line in lines]
    assert len(ids) == len(set(ids)) == 4 and cell_id in ids
    _assert_same_records(_stored(out), _stored(ref_out))


@pytest.mark.slow
def test_a_killed_driver_resumes_and_stores_only_the_missing_cells(tiny_reference, wds_root, tmp_path):
    config, ref_out = tiny_reference
    out = tmp_path / "ray"
    store = out / "store" / "ray.jsonl"
    args = _args(config, out, wds_root, "--no-cache", "--ray", "--cpus-per-worker", "1")
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    # the driver blocks after its 2nd stored record until killed: the kill always lands mid-grid
    staller = [sys.executable, str(TESTS / "grid_staller.py"), "2", *args]
    with open(tmp_path / "driver.log", "wb") as log:
        proc = subprocess.Popen(staller, env=env, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 600  # a hang guard only
        while (proc.poll() is None and time.monotonic() < deadline
               and (not store.exists() or len(store.read_text().splitlines()) < 2)):
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "driver.log").read_text()[-3000:]
    before = [json.loads(line)["hash"] for line in store.read_text().splitlines()]
    assert len(before) == 2 and not (out / "report.md").exists()
    rerun = subprocess.run([sys.executable, "-m", "qclip", *args], env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "ray: 2 cells evaluated on 2 workers, 2 already stored" in rerun.stdout
    after = [json.loads(line)["hash"] for line in store.read_text().splitlines()]
    assert after[:2] == before and len(after) == len(set(after)) == 4
    _assert_same_records(_stored(out), _stored(ref_out))


# ------------------------------------------------------------------------------------------------ errors
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("address, match", [
    (None, "cannot reach 127.0.0.1"),  # a closed port
    ("nowhere", "expected auto, ray://HOST:PORT or HOST:PORT"),
])
def test_bad_address_is_one_line_before_any_cell(micro_dir, wds_root, tmp_path, capsys, address, match):
    config = _tiny(tmp_path / "g.yaml", micro_dir)
    address = address or f"ray://127.0.0.1:{_closed_port()}"
    assert main(_args(config, tmp_path / "out", wds_root, "--ray", address)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err
    assert not (tmp_path / "out" / "store").exists()


def test_ray_without_the_extra_is_one_line(micro_dir, wds_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as without the extra
    config = _tiny(tmp_path / "g.yaml", micro_dir)
    assert main(_args(config, tmp_path / "out", wds_root, "--ray")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'qclip[ray]'" in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_worker_that_cannot_see_a_dataset_stops_the_run_at_start(micro_dir, wds_root, tmp_path, capsys,
                                                                   local_ray, monkeypatch):
    empty = tmp_path / "empty-root"
    empty.mkdir()
    # the driver sees the data through $QCLIP_DATA_ROOT; the workers' nodes point theirs at an empty folder
    monkeypatch.setenv("QCLIP_DATA_ROOT", str(wds_root))
    local_ray(env_vars={"QCLIP_DATA_ROOT": str(empty), "QCLIP_OFFLINE": "1"})
    config = _tiny(tmp_path / "g.yaml", micro_dir)
    args = ["ablate", "--config", config, "--out", str(tmp_path / "out"), "--no-progress", "--workers", "0",
            "--ray", "--cpus-per-worker", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("qclip: error: worker-") and "wds/cifar10" in err, err
    assert not (tmp_path / "out" / "store").exists()


def test_nothing_of_ray_is_imported_without_the_flag(micro_dir, wds_root, tmp_path):
    config = _tiny(tmp_path / "g.yaml", micro_dir, bits="[]", truncation="[]")  # the FP cell only
    code = ("import sys\nfrom qclip.cli import main\n"
            f"rc = main({_args(config, tmp_path / 'out', wds_root)!r})\n"
            "assert rc == 0, rc\nprint(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == "[]"
