"""
A fault-tolerant master/worker application: counting the primes below a bound.

Every process of it is started with C{eval} through the System Tuple Space and runs
under lipsd.  The master (L{master}) puts range-counting tasks into the application's
space, collects one result per task and checkpoints every few results; each worker
(L{worker}) takes tasks, puts results, and checkpoints every few tasks.  Kill any of
them, or the whole node it runs on, and lipsd restarts it (elsewhere, for a node) with
its process id: it recovers its checkpoint, its operations since are answered from the
space's log, and the answer comes out exact, with no result counted twice.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

# The sieve of examples/primes.py: this module runs as a top-level module (lipsd puts
# examples/ on the children's path), so it imports its neighbour by that name.
count_primes: Callable[[int, int], int] = importlib.import_module("primes").count_primes

#: Tasks a worker completes between two checkpoints.
CHECKPOINT_EVERY = 3


def worker(space: Any, wid: int) -> int:
    """
    Take ("task", id, lo, hi) until one with id -1; put ("result", id, count) for each;
    checkpoint every L{CHECKPOINT_EVERY} tasks.  Returns how many primes it counted.
    """
    state = space.recover() or {"done": 0, "counted": 0}
    done, counted = state["done"], state["counted"]
    while True:
        _, tid, lo, hi = space.in_(("task", int, int, int))
        if tid < 0:
            return int(counted)
        n = count_primes(lo, hi)
        space.out(("result", tid, n))
        done += 1
        counted += n
        if done % CHECKPOINT_EVERY == 0:
            space.checkpoint({"done": done, "counted": counted})


def master(space: Any, bound: int, count: int, workers: int) -> int:
    """
    Put C{count} tasks covering [0, bound), take one ("result", id, count) for each,
    then one stop task per worker; returns the number of primes below C{bound}.  After
    each result it puts ("progress", results so far) (for whoever watches), and it
    checkpoints every L{CHECKPOINT_EVERY} results.
    """
    state = space.recover()
    if state is None:
        for t in tasks(bound, count):
            space.out(t)
        state = {"total": 0, "seen": []}
        space.checkpoint(state)
    total, seen = state["total"], set(state["seen"])
    while len(seen) < count:
        _, tid, n = space.in_(("result", int, int))
        if tid in seen:
            raise AssertionError(f"task {tid} was counted twice")
        seen.add(tid)
        total += n
        space.out(("progress", len(seen)))
        if len(seen) % CHECKPOINT_EVERY == 0:
            space.checkpoint({"total": total, "seen": sorted(seen)})
    for _ in range(workers):
        space.out(("task", -1, 0, 0))
    return int(total)


def tasks(bound: int, count: int) -> list[tuple[str, int, int, int]]:
    """C{count} tasks covering [0, bound)."""
    step = -(-bound // count)
    return [("task", i, i * step, min(bound, (i + 1) * step)) for i in range(count)]
