"""Which worker runs which job of a grid, and in what order: longest-first list scheduling with group affinity.

Pure functions of the jobs' estimated costs (no Ray, no models): `longest_first` assigns jobs to workers,
`simulate` replays an assignment with the FP-reference dependency and returns each worker's finishing time,
`modulo` is today's `--shard I/N` split for comparison, and `lower_bound` is the makespan no schedule can beat.

A job belongs to a group (a (model, seed) of the grid). One job per group may be its *lead* — the job that computes
the group's FP reference (the FP cell, or a bare reference job when the FP cell is already stored): every other job
of the group needs the lead's result for its last part (`tails`: on a Ray worker, the paired statistics and
spectra after the variant's own evaluation), on whichever worker. Leads therefore run first.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

__all__ = ["longest_first", "modulo", "simulate", "lower_bound", "makespan", "finish"]


def _check(costs: Sequence[float], groups: Sequence[Hashable], n_workers: int) -> None:
    if n_workers < 1:
        raise ValueError(f"n_workers must be >= 1, got {n_workers}")
    if len(costs) != len(groups):
        raise ValueError(f"{len(costs)} costs but {len(groups)} groups")
    if any(c < 0 for c in costs):
        raise ValueError("costs must be >= 0")


def longest_first(costs: Sequence[float], groups: Sequence[Hashable], n_workers: int, *,
                  leads: Sequence[int] = (), tails: Sequence[float] | None = None,
                  switch: float = 0.0) -> list[list[int]]:
    """Per worker, the indices of the jobs it runs, in run order.

    List scheduling, longest job first: the leads are placed first (each on the worker free earliest), then every
    other job on the worker where it finishes earliest, counting `switch` more for a worker that does not hold the
    job's group yet (the set-up a group costs: its FP model, text classifiers, reference, decoded images); ties go
    to a holder. A job's last `tails[i]` need its group's lead to be done (None: the whole job waits for it; see
    `finish`). Each worker runs its jobs in the order they were placed."""
    _check(costs, groups, n_workers)
    lead_set = set(leads)
    if len({groups[i] for i in lead_set}) != len(lead_set):
        raise ValueError("at most one lead per group")
    tails = costs if tails is None else tails
    clock = [0.0] * n_workers
    holds: list[set] = [set() for _ in range(n_workers)]
    placed: list[list[int]] = [[] for _ in range(n_workers)]
    lead_end: dict[Hashable, float] = {}
    for i in sorted(range(len(costs)), key=lambda i: (i not in lead_set, -costs[i], i)):
        ready = None if i in lead_set else lead_end.get(groups[i])

        def end(w: int) -> float:
            setup = 0.0 if groups[i] in holds[w] else switch
            return finish(clock[w] + setup, costs[i], tails[i], ready)

        target = min(range(n_workers), key=lambda w: (end(w), groups[i] not in holds[w], w))
        clock[target] = end(target)
        if i in lead_set:
            lead_end[groups[i]] = clock[target]
        holds[target].add(groups[i])
        placed[target].append(i)
    return placed


def finish(start: float, cost: float, tail: float, lead_done: float | None) -> float:
    """When a job started at `start` ends: after its cost, and its last `tail` seconds not before its lead is
    done (`lead_done`; None: no lead to wait for)."""
    end = start + cost
    return end if lead_done is None else max(end, lead_done + min(tail, cost))


def modulo(n_jobs: int, n_workers: int) -> list[list[int]]:
    """`--shard I/N`: worker I-1 runs jobs I-1, I-1+N, ... in grid order."""
    if n_workers < 1:
        raise ValueError(f"n_workers must be >= 1, got {n_workers}")
    return [list(range(w, n_jobs, n_workers)) for w in range(n_workers)]


def simulate(assignment: list[list[int]], costs: Sequence[float], groups: Sequence[Hashable],
             leads: Sequence[int] = (), tails: Sequence[float] | None = None, switch: float = 0.0) -> list[float]:
    """Each worker's finishing time when it runs its jobs in order, the last `tails[i]` of a non-lead job wait
    for its group's lead (None: the whole job waits), and a worker's first job of a group costs `switch` more.

    Raises ValueError when the order deadlocks (a worker waits for a lead that waits behind it)."""
    tails = costs if tails is None else tails
    lead_of = {groups[i]: i for i in leads}
    done: dict[int, float] = {}
    clock = [0.0] * len(assignment)
    seen: list[set] = [set() for _ in assignment]
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
                waits = lead is not None and lead != i
                setup = 0.0 if groups[i] in seen[w] else switch
                seen[w].add(groups[i])
                clock[w] = done[i] = finish(clock[w] + setup, costs[i], tails[i], done[lead] if waits else None)
                pos[w] += 1
                remaining -= 1
                moved = True
        if not moved:
            raise ValueError("the assignment deadlocks: a job waits for a lead queued behind it")
    return clock


def makespan(assignment: list[list[int]], costs: Sequence[float], groups: Sequence[Hashable],
             leads: Sequence[int] = (), tails: Sequence[float] | None = None, switch: float = 0.0) -> float:
    """When the last worker finishes (see `simulate`)."""
    return max(simulate(assignment, costs, groups, leads, tails, switch), default=0.0)


def lower_bound(costs: Sequence[float], groups: Sequence[Hashable], n_workers: int,
                leads: Sequence[int] = (), tails: Sequence[float] | None = None) -> float:
    """No schedule finishes earlier: the total over the workers, the longest job, the two shortest of the n + 1
    longest jobs (two of them share a worker), and a lead plus the longest tail that waits for it."""
    tails = costs if tails is None else tails
    bound = max(sum(costs) / n_workers, max(costs, default=0.0))
    if len(costs) > n_workers:  # two of the n + 1 longest jobs share a worker
        ranked = sorted(costs, reverse=True)
        bound = max(bound, ranked[n_workers - 1] + ranked[n_workers])
    for lead in leads:
        waiting = [tails[i] for i in range(len(costs)) if groups[i] == groups[lead] and i != lead]
        bound = max(bound, costs[lead] + max(waiting, default=0.0))
    return bound
