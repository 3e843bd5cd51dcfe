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

import math
from typing import Any

#: Tasks a worker completes between two checkpoints.
CHECKPOINT_EVERY = 3


def count_primes(lo: int, hi: int) -> int:
    """The number of primes p with lo <= p < hi (a segmented sieve)."""
    if hi <= 2:
        return 0
    lo = max(lo, 2)
    root = math.isqrt(hi - 1)
    small = bytearray([1]) * (root + 1)
    small[:2] = b"\x00\x00"
    for i in range(2, math.isqrt(root) + 1):
        if small[i]:
            small[i * i :: i] = bytearray(len(range(i * i, root + 1, i)))
    segment = bytearray([1]) * (hi - lo)
    for p in range(2, root + 1):
        if small[p]:
            start = max(p * p, (lo + p - 1) // p * p)
            segment[start - lo :: p] = bytearray(len(range(start, hi, p)))
    return sum(segment)


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
