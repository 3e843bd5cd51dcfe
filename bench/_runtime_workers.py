"""
The processes of C{bench.runtime}: functions lipsd runs with C{eval} (its
C{--pythonpath} is the checkout, so they are C{bench._runtime_workers:serve} and
C{bench._runtime_workers:job_worker}), and the same job worker as a plain process for
the benchmark's row without fault tolerance.

L{serve} answers requests one at a time and checkpoints every C{every} of them; the
benchmark kills it and times how long its restarted process takes to answer again.
L{job_worker} takes tasks of a master/worker job until it takes a stop task.

    python -m bench._runtime_workers job-worker \\
        --endpoints '["tcp:host=127.0.0.1:port=7010"]' --job j1 --index 0 --rounds 5000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from typing import Any

#: When this module was imported in this process (wall clock).
IMPORTED = time.time()


def started_at() -> float | None:
    """
    When this process was created (wall clock, to the kernel's clock tick), from
    C{/proc/self/stat}; C{None} where there is no such file.
    """
    try:
        with open("/proc/self/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # Field 22 of proc(5), the start time in clock ticks since boot; fields after the
    # command name (which may hold spaces) start at field 3.
    ticks = int(stat.rsplit(")", 1)[1].split()[19])
    age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    return time.time() - age


def serve(space: Any, key: str, every: int) -> int:
    """
    Recover, then answer each C{("req", key, i)} with C{("ans", key, i, os_pid,
    created, imported, entered, recovered)} (this process's operating-system id and
    wall-clock times of its start-up), checkpointing C{{"n": answered}} after every
    C{every} answers.  A request with C{i < 0} ends it: it returns how many it answered.

    Restarted after a crash, it replays its events since the checkpoint from the
    space's log (the requests it took, the answers it gave) and then waits for the next
    request: the first answer carrying a new C{os_pid} is a new operation.
    """
    entered = time.time()
    state = space.recover()
    recovered = time.time()
    answered = state["n"] if state else 0
    created = started_at() or IMPORTED
    while True:
        _, _, i = space.in_(("req", key, int))
        if i < 0:
            return int(answered)
        space.out(("ans", key, i, os.getpid(), created, IMPORTED, entered, recovered))
        answered += 1
        if answered % every == 0:
            space.checkpoint({"n": answered})


def work(seed: int, rounds: int) -> bytes:
    """One task's result: SHA-256 applied C{rounds} times to C{seed}'s 8 bytes."""
    digest = seed.to_bytes(8, "big")
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return digest


def job_worker(space: Any, job: str, rounds: int, every: int) -> int:
    """
    Take C{("task", job, id, seed)} tuples and put C{("result", job, id, work(seed,
    rounds))} back until a task with C{id < 0}; return how many tasks it did.  With
    C{every > 0} it recovers first and checkpoints C{{"done": n}} after every C{every}
    tasks (deterministic between checkpoints: the tasks come from the space).
    """
    state = space.recover() if every > 0 else None
    done = int(state["done"]) if state else 0
    while True:
        _, _, task, seed = space.in_(("task", job, int, int))
        if task < 0:
            return done
        space.out(("result", job, task, work(seed, rounds)))
        done += 1
        if every > 0 and done % every == 0:
            space.checkpoint({"done": done})


def main(argv: list[str] | None = None) -> int:
    """A plain job worker: L{job_worker} without checkpoints, then C{("done", ...)}."""
    p = argparse.ArgumentParser(description="A plain job worker of bench.runtime.")
    p.add_argument("role", choices=["job-worker"])
    p.add_argument("--endpoints", required=True, help="a JSON array of endpoint strings")
    p.add_argument("--job", required=True)
    p.add_argument("--index", type=int, required=True)
    p.add_argument("--rounds", type=int, required=True)
    args = p.parse_args(argv)
    from lips import blocking

    with blocking.connect(json.loads(args.endpoints), name=f"plain-{args.index}") as space:
        done = job_worker(space, args.job, args.rounds, 0)
        space.out(("done", args.job, args.index, done))
    return 0


if __name__ == "__main__":
    sys.exit(main())
