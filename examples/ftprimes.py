"""
A fault-tolerant master/worker application: counting the primes below a bound.

The master (L{run_master}) puts range-counting tasks into the application's space and
starts workers with C{eval} through the System Tuple Space; each worker (L{worker}) takes
tasks, puts results, and checkpoints every few tasks.  Kill a worker, or the whole node
it runs on, and lipsd restarts it (elsewhere, for a node): it recovers its checkpoint,
its operations since are answered from the space's log, and the answer comes out exact,
with no result counted twice.
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


def tasks(bound: int, count: int) -> list[tuple[str, int, int, int]]:
    """C{count} tasks covering [0, bound)."""
    step = -(-bound // count)
    return [("task", i, i * step, min(bound, (i + 1) * step)) for i in range(count)]
