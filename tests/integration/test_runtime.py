# mypy: disable-error-code="untyped-decorator"
# (pytest-twisted ships no type hints, so its decorators are untyped.)
"""
The LiPS runtime end to end: two FixServers and two MessageServers (each pair a ring),
two lipsd, and the fault-tolerant primes application of C{examples/ftprimes.py} with many
workers, some of them killed with SIGKILL while it runs.  The answer must be exact.
"""

from __future__ import annotations

import importlib
import signal
import sys
from typing import Any

import psutil
import pytest_twisted
from twisted.internet.task import deferLater

import lips.client
from lips.client import TupleSpaceClient
from lips.node import eval_request
from tests.integration._support import (
    EXAMPLES,
    ServerFarm,
    spawn_lipsd,
    start_rings,
    within,
)

sys.path.insert(0, str(EXAMPLES))
ftprimes: Any = importlib.import_module("ftprimes")

BOUND = 1_500_000
TASKS = 60
WORKERS = 6


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


@pytest_twisted.ensureDeferred
async def test_workers_killed_answer_exact(servers: ServerFarm) -> None:
    """
    Six workers on two nodes count the primes below 1,500,000 in 60 tasks,
    checkpointing every three; two workers, and then one whole lipsd, are killed with
    SIGKILL mid-run.  lipsd restarts a killed worker with its process id; the node that
    is left declares the other down and restarts its workers, with their ids.  Each
    recovers its checkpoint and replays from the log, and the master's total is exact
    with every task counted once.
    """
    rings = await start_rings(servers, fixservers=2, msgservers=2)
    app_endpoints = rings.endpoints("msgserver")
    nodes = {
        name: spawn_lipsd(
            servers,
            rings.path,
            name,
            # Half a second: a lipsd fences itself when its reports are 1.25 s apart,
            # which a loaded two-core machine running eight processes can reach at 0.25.
            "--interval",
            "0.5",
            "--watch",
            "n2" if name == "n1" else "n1",
            *(arg for ep in app_endpoints for arg in ("--app", ep)),
            "--restart-delay",
            "0.1",
        )
        for name in ("n1", "n2")
    }
    system: TupleSpaceClient = await within(
        lips.client.connect(_reactor(), rings.endpoints("fixserver"))
    )
    space: TupleSpaceClient = await within(lips.client.connect(_reactor(), app_endpoints))
    try:
        for name in nodes:
            await within(system.rd(("node", name, int, float, float, int, int, bool), timeout=10))
        for t in ftprimes.tasks(BOUND, TASKS):
            await within(space.out(t))
        for w in range(WORKERS):
            node = ("n1", "n2")[w % 2]
            await within(eval_request(system, ("worker", w), "ftprimes:worker", w, nodes=[node]))

        total = 0
        seen: set[int] = set()
        killed = 0
        while len(seen) < TASKS:
            _, tid, n = await within(space.in_(("result", int, int)), 60)
            assert tid not in seen, f"task {tid} counted twice"
            seen.add(tid)
            total += n
            if killed < 2 and len(seen) >= TASKS * (killed + 1) // 4:
                # Kill a worker on each node in turn, mid-run.
                victims = nodes[("n1", "n2")[killed]].children("ftprimes:worker")
                if victims:
                    psutil.Process(victims[0]).send_signal(signal.SIGKILL)
                    killed += 1
            elif killed == 2 and len(seen) >= TASKS * 3 // 4:
                # Then a whole node: lipsd n2 (its workers end with it); n1 declares it
                # down and restarts n2's workers with their process ids.
                nodes["n2"].kill()
                killed += 1
        assert killed == 3
        down = await within(system.rd(("node-down", "n2", int, str), timeout=10))
        assert down[3] == "n1"
        assert total == ftprimes.count_primes(0, BOUND)
        for _ in range(WORKERS):
            await within(space.out(("task", -1, 0, 0)))
        counted = 0
        for w in range(WORKERS):
            done = await within(space.in_(("worker", w, int), timeout=30))
            counted += done[2]
        assert counted == total  # each worker's own tally, across its restarts
        assert await within(space.inp(("result", int, int))) is None
        assert await within(space.inp(("task", int, int, int))) is None
    finally:
        await within(system.close())
        await within(space.close())
        # The nodes go first, while the servers they report to are still there.
        for lipsd in nodes.values():
            await lipsd.stop_async()
        await deferLater(_reactor(), 0)
