"""Which worker runs which job of a grid, and in what order: longest-first list scheduling with group affinity.

Pure functions of the jobs' estimated costs (no Ray, no models): `longest_first` assigns jobs to workers,
`simulate` replays an assignment with the FP-reference dependency and returns each worker's finishing time,
`modulo` is today's `--shard I/N` split for comparison, and `lower_bound` is the makespan no schedule can beat.

A job belongs to a group (a (model, seed) of the grid). One job per group may be its *lead* — the job that computes
the group's FP reference (the FP cell, or a bare reference job when the FP cell is already stored): every other job
of the group starts only once its lead has finished, on whichever worker. Leads therefore run first.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

__all__ = ["longest_first", "modulo", "simulate", "lower_bound", "makespan"]


def _check(costs: Sequence[float], groups: Sequence[Hashable], n_workers: int) -> None:
    if n_workers < 1:
        raise ValueError(f"n_workers must be >= 1, got {n_workers}")
    if len(costs) != len(groups):
        raise ValueError(f"{len(costs)} costs but {len(groups)} groups")
    if any(c < 0 for c in costs):
        raise ValueError("costs must be >= 0")


def longest_first(costs: Sequence[float], groups: Sequence[Hashable], n_workers: int, *,
                  leads: Sequence[int] = (), affinity: float = 0.5) -> list[list[int]]:
    """Per worker, the indices of the jobs it runs, in run order.

    List scheduling, longest job first: the leads are placed first (each on the worker free earliest), then every
    other job on the worker where it can start earliest — not before its group's lead is done — except that a
    worker already holding the job's group (its FP reference and decoded images) is preferred while it starts
    the job at most `affinity` × the job's cost later. Each worker runs its jobs in the order they were placed."""
    _check(costs, groups, n_workers)
    lead_set = set(leads)
    if len({groups[i] for i in lead_set}) != len(lead_set):
        raise ValueError("at most one lead per group")
    clock = [0.0] * n_workers
    holds: list[set] = [set() for _ in range(n_workers)]
    placed: list[list[int]] = [[] for _ in range(n_workers)]
    lead_end: dict[Hashable, float] = {}
    for i in sorted(range(len(costs)), key=lambda i: (i not in lead_set, -costs[i], i)):
        ready = 0.0 if i in lead_set else lead_end.get(groups[i], 0.0)

        def start(w: int) -> float:
            return max(clock[w], ready)

        target = min(range(n_workers), key=lambda w: (start(w), w))
        holding = [w for w in range(n_workers) if groups[i] in holds[w]]
        if holding and i not in lead_set:
            best = min(holding, key=lambda w: (start(w), w))
            if start(best) - start(target) <= affinity * costs[i]:
                target = best
        clock[target] = start(target) + costs[i]
        if i in lead_set:
            lead_end[groups[i]] = clock[target]
        holds[target].add(groups[i])
        placed[target].append(i)
    return placed


def modulo(n_jobs: int, n_workers: int) -> list[list[int]]:
    """`--shard I/N`: worker I-1 runs jobs I-1, I-1+N, ... in grid order."""
    if n_workers < 1:
        raise ValueError(f"n_workers must be >= 1, got {n_workers}")
    return [list(range(w, n_jobs, n_workers)) for w in range(n_workers)]


def simulate(assignment: list[list[int]], costs: Sequence[float], groups: Sequence[Hashable],
             leads: Sequence[int] = ()) -> list[float]:
    """Each worker's finishing time when it runs its jobs in order and a non-lead job waits for its group's lead.

    Raises ValueError when the order deadlocks (a worker waits for a lead that waits behind it)."""
    lead_of = {groups[i]: i for i in leads}
    done: dict[int, float] = {}
    clock = [0.0] * len(assignment)
    pos = [0] * len(assignment)
    remaining = sum(len(jobs) for jobs in assignment)
    while remaining:
        moved = False
        for w, jobs in enumerate(assignment):
            while pos[w] < len(jobs):
                i = jobs[pos[w]]
                lead = lead_of.get(groups[i])
                if lead is not None and lead != i and lead not in done:
                    break
                start = max(clock[w], done[lead] if lead is not None and lead != i else 0.0)
                clock[w] = done[i] = start + costs[i]
                pos[w] += 1
                remaining -= 1
                moved = True
        if not moved:
            raise ValueError("the assignment deadlocks: a job waits for a lead queued behind it")
    return clock


def makespan(assignment: list[list[int]], costs: Sequence[float], groups: Sequence[Hashable],
             leads: Sequence[int] = ()) -> float:
    """When the last worker finishes (see `simulate`)."""
    return max(simulate(assignment, costs, groups, leads), default=0.0)


def lower_bound(costs: Sequence[float], groups: Sequence[Hashable], n_workers: int,
                leads: Sequence[int] = ()) -> float:
    """No schedule finishes earlier: the total over the workers, the longest job, and a lead plus the longest job
    that waits for it."""
    bound = max(sum(costs) / n_workers, max(costs, default=0.0))
    for lead in leads:
        waiting = [costs[i] for i in range(len(costs)) if groups[i] == groups[lead] and i != lead]
        bound = max(bound, costs[lead] + max(waiting, default=0.0))
    return bound
