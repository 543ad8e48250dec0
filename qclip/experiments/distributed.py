"""`qclip ablate --ray`: the grid on a Ray cluster — actors evaluate cells, the driver alone writes the store.

Workers are Ray actors (`GridWorker`), each sized `gpus_per_worker` / `cpus_per_worker`; each holds a
`CellEvaluator`, the same cell code the in-process run and `--shard` use, so a (model, seed) group's FP model,
decoded images and text classifiers stay in the actor across the group's cells. The grid's pending cells become
jobs (a cell, or a PTQ cell with the integer cell that reuses its model), costed from the dry run's forward counts
and scheduled longest-first with group affinity (`qclip.experiments.schedule`). Each group's FP reference is
computed once, by its *lead* job (the FP cell, or a bare reference job when the FP cell is already stored), and
reaches the group's other actors through Ray's object store: a job of that group may start once its lead is
submitted; it evaluates its variant first and waits for the reference only when it needs it (for deltas, paired
tests and spectra). Should the lead fail, the job computes the reference itself.
A worker that idles takes the longest ready job of another worker's queue.

Only the driver appends to `DIR/store/ray.jsonl` and writes the report, so workers need no shared filesystem for
outputs, and a killed driver resumes from the store on rerun. A worker that dies has its job run again (the actor
restarts, up to `MAX_RESTARTS` times, and rejoins once it answers; its queue moves to the others when it cannot). Before any cell, every actor
resolves the grid's datasets as the CLI does on its own node; one that cannot fails the run with one line.

Ray is imported only here, and only when `--ray` is given.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections import deque
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from qclip.io.errors import ConfigError, DataError, QclipInputError
from qclip.io.progress import progress_bar
from qclip.io.records import CellRecord
from qclip.io.store import ResultsStore

from .ablate import CellEvaluator, check_device, finish_grid, pending_cells, store_record
from .grid import Cell, GridConfig, expand_cells
from .schedule import longest_first

__all__ = ["RayOptions", "run_grid_ray", "import_ray", "GridWorker", "Job", "plan_jobs", "MAX_RESTARTS"]

MAX_RESTARTS = 3  # per actor; a job is tried at most MAX_RESTARTS + 1 times
STORE_NAME = "ray.jsonl"

# Relative cost of one image forward of a cell class against a float forward: fake quantization 1.45x (RTN,
# SmoothQuant), rotation's online Hadamard transform 2.0x (ViT-B-32, measured on CPU, see README "Paper-scale
# projection"). Only the order of jobs depends on it.
_FORWARD_COST = {"rtn": 1.45, "smoothquant": 1.45, "rotation": 2.0, "lsq": 1.45}


def import_ray():
    """The `ray` module, or a one-line error naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray needs Ray: pip install 'qclip[ray]'") from None
    return ray


@dataclass(frozen=True)
class RayOptions:
    """How the driver reaches the cluster and sizes its workers."""

    address: str | None = None  # None: a local Ray instance; "auto"; "ray://HOST:PORT"; "HOST:PORT"
    gpus_per_worker: float | None = None  # None: 1 when the cluster has GPUs, else 0
    cpus_per_worker: float | None = None  # None: 1 with GPUs, else 2

    def __post_init__(self):
        if self.address is not None and self.address != "auto":
            _host_port(self.address)
        for name in ("gpus_per_worker", "cpus_per_worker"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
        if self.cpus_per_worker == 0 and not self.gpus_per_worker:
            raise ConfigError("a worker needs a CPU or a GPU: --cpus-per-worker 0 needs --gpus-per-worker > 0")


def _host_port(address: str) -> tuple[str, int]:
    """HOST and PORT of `ray://HOST:PORT` or `HOST:PORT`."""
    rest = address[len("ray://"):] if address.startswith("ray://") else address
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit() or "/" in rest:
        raise ConfigError(f"--ray {address!r}: expected auto, ray://HOST:PORT or HOST:PORT")
    return host, int(port)


def _connect(ray, address: str | None) -> bool:
    """Start or join Ray; True when this call did (and so shuts it down), False when Ray was already initialised."""
    if ray.is_initialized():
        return False
    if address not in (None, "auto"):
        host, port = _host_port(address)
        try:  # fail in seconds, not after the client's minute of retries
            socket.create_connection((host, port), timeout=5).close()
        except OSError as exc:
            raise ConfigError(f"--ray {address}: cannot reach {host}:{port} ({exc.strerror or exc})") from None
    kw = dict(logging_level=logging.ERROR, log_to_driver=False)
    if address is None:
        kw["include_dashboard"] = False
    try:
        ray.init(address=address, **kw)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"--ray {address}: cannot join the Ray cluster ({first})") from None
    return True


# ------------------------------------------------------------------------------------------------- jobs
@dataclass(frozen=True)
class Job:
    """Cells one worker runs back to back; `lead`: it computes its group's FP reference (a reference-only job has
    no cells)."""

    group: tuple
    group_cell: Cell  # the group's FP cell (names the group to the worker)
    cells: tuple[Cell, ...]
    cost: float
    lead: bool

    @property
    def label(self) -> str:
        """What the job evaluates, for messages."""
        return ", ".join(c.id for c in self.cells) or f"{self.group_cell.id} (FP reference)"


def _cell_cost(cfg: GridConfig, rows: dict, cell: Cell) -> float:
    images = max(1, rows[cell.id].images) if cell.id in rows else 1
    return images * _FORWARD_COST.get(cell.method or "", 1.0) if cell.kind in ("quant", "qat", "int") else images


def plan_jobs(cfg: GridConfig, todo: list[Cell], data_root: str | None = None) -> list[Job]:
    """The pending cells as jobs: an integer cell joins its PTQ cell's job; each group with pending cells gets
    one lead (its FP cell, else a reference job); costs are the dry run's forward counts (every set forwarded:
    jobs may run in any order, so no cell counts on another's cached features) weighted per class."""
    from .plan import plan_grid

    rows = {r.id: r for r in plan_grid(cfg, data_root=data_root, use_cache=False).cells}
    fp_of = {(c.model, c.pretrained, c.seed): c for c in expand_cells(cfg) if c.kind == "fp"}
    units: list[list[Cell]] = []
    for cell in todo:
        if cell.kind == "int" and units and units[-1][-1].kind == "quant" and units[-1][-1].variant == cell.variant[4:]:
            units[-1].append(cell)
        else:
            units.append([cell])
    jobs: list[Job] = []
    for unit in units:
        group = (unit[0].model, unit[0].pretrained, unit[0].seed)
        jobs.append(Job(group, fp_of[group], tuple(unit), sum(_cell_cost(cfg, rows, c) for c in unit),
                        lead=unit[0].kind == "fp"))
    led = {j.group for j in jobs if j.lead}
    for group in dict.fromkeys(j.group for j in jobs):
        if group not in led:
            fp = fp_of[group]
            jobs.append(Job(group, fp, (), _cell_cost(cfg, rows, fp), lead=True))
    return jobs


# ------------------------------------------------------------------------------------------------- the worker
class GridWorker:
    """A Ray actor's state: a `CellEvaluator` (one (model, seed) group at a time) inside `reuse_svds`."""

    def __init__(self, cfg: GridConfig, name: str, *, threads: int, data_root: str | None, device: str | None,
                 batch_size: int | None, num_workers: int, use_cache: bool, image_cache_mb: float):
        import torch

        from qclip.quant.truncation import reuse_svds

        torch.set_num_threads(threads)  # its CPUs, whatever the process inherited (a restarted actor too)

        self.cfg, self.data_root = cfg, data_root
        self.name = f"{name}@{socket.gethostname()}"
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.evaluator = CellEvaluator(cfg, data_root=data_root, device=device, batch_size=batch_size,
                                       num_workers=num_workers, use_cache=use_cache, image_cache_mb=image_cache_mb)
        self._stack = ExitStack()
        self._stack.enter_context(reuse_svds())  # as in process: each FP weight decomposed once per worker

    def preflight(self) -> tuple[str, str | None]:
        """This worker's name and the first dataset problem it sees on its node (None: every set resolves)."""
        from .plan import check_datasets

        try:
            check_datasets(self.cfg, self.data_root)
        except QclipInputError as exc:
            return self.name, str(exc)
        return self.name, None

    def ping(self) -> str:
        """This worker's name (answers once the actor is up, e.g. after a restart)."""
        return self.name

    def run(self, group_cell: Cell, cells: tuple[Cell, ...], lead: bool, reference: list
            ) -> tuple[list[CellRecord], dict | None]:
        """Evaluate `cells`; return their records and, for a lead, the group's FP reference. Other jobs take the
        FP reference from `reference[0]` (the lead's object ref, waited for only when a cell first needs it)."""
        if reference and not lead:
            self.evaluator.reference_from(group_cell, lambda: _fetch(reference[0]))
        records = [self.evaluator.evaluate(cell) for cell in cells]
        return records, (self.evaluator.reference(group_cell) if lead else None)


def _fetch(ref) -> dict | None:
    """The FP reference behind an object ref (it waits for the lead job), or None when that job failed (its worker
    died): the group then computes its reference itself."""
    import ray
    from ray.exceptions import RayError

    try:
        return ray.get(ref)
    except RayError:
        return None


# ------------------------------------------------------------------------------------------------- the driver
def _worker_count(ray, opts: RayOptions, n_jobs: int) -> tuple[int, float, float]:
    """(workers, GPUs each, CPUs each) for this cluster."""
    res = ray.cluster_resources()
    gpus, cpus = float(res.get("GPU", 0)), float(res.get("CPU", 0))
    per_gpu = opts.gpus_per_worker if opts.gpus_per_worker is not None else (1.0 if gpus else 0.0)
    per_cpu = opts.cpus_per_worker if opts.cpus_per_worker is not None else (1.0 if per_gpu else 2.0)
    fits = []
    if per_gpu:
        fits.append(int(gpus // per_gpu))
    if per_cpu:
        fits.append(int(cpus // per_cpu))
    n = min(fits)
    if n < 1:
        raise ConfigError(f"the Ray cluster ({cpus:g} CPUs, {gpus:g} GPUs) cannot hold one worker of "
                          f"{per_cpu:g} CPUs and {per_gpu:g} GPUs (--cpus-per-worker / --gpus-per-worker)")
    return max(1, min(n, n_jobs)), per_gpu, per_cpu


class _Dispatcher:
    """Per-worker job queues; hands an idle worker its next ready job (a lead, or a job whose lead is submitted),
    or the longest ready job of another queue."""

    def __init__(self, jobs: list[Job], assignment: list[list[int]]):
        self.jobs = jobs
        self.queues = [deque(a) for a in assignment]
        self.leads_pending = {j.group for j in jobs if j.lead}

    def ready(self, i: int) -> bool:
        job = self.jobs[i]
        return job.lead or job.group not in self.leads_pending

    def next(self, w: int) -> int | None:
        for i in self.queues[w]:
            if self.ready(i):
                self.queues[w].remove(i)
                return i
        candidates = [(self.jobs[i].cost, v, i) for v, q in enumerate(self.queues) if v != w for i in q
                      if self.ready(i)]
        if not candidates:
            return None
        _, v, i = max(candidates)
        self.queues[v].remove(i)
        return i

    def give_back(self, w: int, i: int) -> None:
        self.queues[w].appendleft(i)

    def move_queue(self, dead: int, alive: list[int]) -> None:
        """Spread a dead worker's queue over the live ones."""
        for k, i in enumerate(list(self.queues[dead])):
            self.queues[alive[k % len(alive)]].append(i)
        self.queues[dead].clear()

    def pending(self) -> bool:
        return any(self.queues)


def run_grid_ray(cfg: GridConfig, out: str | os.PathLike, opts: RayOptions, *, data_root: str | None = None,
                 device: str | None = None, batch_size: int | None = None, num_workers: int = 2,
                 progress: bool = True, use_cache: bool = True, wandb_run=None, report: bool = True,
                 image_cache_mb: float = 2048.0) -> dict:
    """Evaluate the grid's cells not yet stored under `out` on Ray actors; merge and write the report."""
    ray = import_ray()
    if cfg.integer:
        check_device(cfg, device or "cpu")
        device = "cpu"
    out = Path(out)
    cells = expand_cells(cfg)
    todo = pending_cells(cfg, out, cells)
    summary = {"cells": len(cells), "skipped": len(cells) - len(todo), "evaluated": 0, "retried": 0, "workers": 0}
    jobs = plan_jobs(cfg, todo, data_root) if todo else []
    owned = _connect(ray, opts.address)
    try:
        if jobs:
            _run_jobs(ray, cfg, out, opts, jobs, summary, data_root=data_root, device=device,
                      batch_size=batch_size, num_workers=num_workers, progress=progress, use_cache=use_cache,
                      wandb_run=wandb_run, image_cache_mb=image_cache_mb, total=len(cells))
    finally:
        if owned:
            ray.shutdown()
    return finish_grid(cfg, out, summary, report=report)


def _run_jobs(ray, cfg: GridConfig, out: Path, opts: RayOptions, jobs: list[Job], summary: dict, *, total: int,
              progress: bool, wandb_run, **worker_kw) -> None:
    from ray.exceptions import RayActorError, RayTaskError

    n, per_gpu, per_cpu = _worker_count(ray, opts, len(jobs))
    actor = ray.remote(num_gpus=per_gpu, num_cpus=per_cpu, max_restarts=MAX_RESTARTS, max_task_retries=0)(GridWorker)
    names = [f"worker-{w + 1}" for w in range(n)]
    run_id = uuid.uuid4().hex[:8]  # actor names are unique in the cluster: two drivers may share one
    workers = [actor.options(name=f"qclip-{run_id}-{names[w]}").remote(cfg, names[w], threads=max(1, int(per_cpu)),
                                                                       **worker_kw)
               for w in range(n)]
    summary["workers"] = n
    try:
        checks = ray.get([w.preflight.remote() for w in workers])
    except RayTaskError as exc:
        raise _cause(exc) from None
    names = [name for name, _ in checks]
    for name, problem in checks:
        if problem:
            raise DataError(f"{name}: {problem}")
    # a job evaluates its variant before it needs its lead's FP reference: only its last bit waits (tails ~ 0)
    assignment = longest_first([j.cost for j in jobs], [j.group for j in jobs], n,
                               leads=[i for i, j in enumerate(jobs) if j.lead], tails=[0.0] * len(jobs))
    queue = _Dispatcher(jobs, assignment)
    store = ResultsStore(out / "store" / STORE_NAME)
    references: dict[tuple, object] = {}  # group -> object ref of its FP reference (its lead submitted)
    inflight: dict = {}  # records ref -> (worker, job)
    dead: set[int] = set()
    idle, tries = list(range(n)), [0] * len(jobs)
    recovering: dict = {}  # ping ref -> worker: a restarting actor rejoins when its ping answers
    bar = progress_bar(total, initial=summary["skipped"], desc=f"ablate {cfg.name} (ray, {n} workers)",
                       unit="cell", enabled=progress)
    try:
        while True:
            for w in list(idle):
                i = queue.next(w)
                if i is None:
                    continue
                job = jobs[i]
                ref = [references[job.group]] if job.group in references and not job.lead else []
                records_ref, reference_ref = workers[w].run.options(num_returns=2).remote(
                    job.group_cell, job.cells, job.lead, ref)
                if job.lead:  # the group's other jobs may start now: they wait on this ref only when they need it
                    references[job.group] = reference_ref
                    queue.leads_pending.discard(job.group)
                inflight[records_ref] = (w, i)
                idle.remove(w)
            if not inflight and not recovering:
                if queue.pending():
                    raise RuntimeError("ray scheduler: jobs are queued but no worker can run them")
                break
            (done,), _ = ray.wait([*inflight, *recovering], num_returns=1)
            if done in recovering:
                w = recovering.pop(done)
                try:
                    ray.get(done)
                    idle.append(w)
                except RayActorError:  # it will not come back: its queue goes to the others
                    alive = [v for v in range(n) if v != w and v not in dead]
                    if not alive:
                        raise RuntimeError("ray: every worker died more often than it may restart") from None
                    dead.add(w)
                    queue.move_queue(w, alive)
                continue
            w, i = inflight.pop(done)
            job = jobs[i]
            try:
                records = ray.get(done)
            except RayTaskError as exc:
                raise _cause(exc) from None
            except RayActorError:  # the worker died (or became unreachable) during the job: run it again
                tries[i] += 1
                summary["retried"] += 1
                if tries[i] > MAX_RESTARTS:
                    raise RuntimeError(f"ray: {job.label} failed {tries[i]} times (its worker died each time)")
                bar.write(f"{names[w]} died during {job.label}: running it again")
                queue.give_back(w, i)
                recovering[workers[w].ping.options(max_task_retries=-1).remote()] = w
                continue
            idle.append(w)
            for record in records:
                store_record(store, record, bar, wandb_run, where=names[w])
                summary["evaluated"] += 1
    finally:
        bar.close()
        for w in workers:
            ray.kill(w, no_restart=True)


def _cause(exc) -> BaseException:
    """A worker's user error as itself (one line at the CLI); anything else as Ray reported it."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, QclipInputError) else exc
