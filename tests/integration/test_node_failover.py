# mypy: disable-error-code="untyped-decorator"
# (pytest-twisted ships no type hints, so its decorators are untyped.)
"""
A down node's processes restarted elsewhere, with real processes: two
C{twistd lips-fixserver} holding the System Tuple Space, one C{twistd lips-msgserver}
for the application, and two C{twistd lips-node} watching each other.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest_twisted

import lips.client
from lips.client import TupleSpaceClient
from lips.node import down_template, eval_request, process_template, state_template
from lips.tuples import ANY
from tests.integration._support import (
    ServerFarm,
    TwistdServer,
    eventually,
    spawn_lipsd,
    start_rings,
    within,
)

INTERVAL = 0.25
TARGET = "evalapp:wait_then_square"


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def _lipsd(servers: ServerFarm, path: Path, app: str, name: str, watch: str) -> TwistdServer:
    return spawn_lipsd(
        servers,
        path,
        name,
        "--watch",
        watch,
        "--interval",
        str(INTERVAL),
        "--misses",
        "3",
        "--app",
        app,
    )


@pytest_twisted.ensureDeferred
async def test_down_node_process_restarted_elsewhere(servers: ServerFarm) -> None:
    """
    A process placed on n1 is running (waiting for a tuple) when n1's lipsd and its
    child are killed with SIGKILL: n2 declares n1 down and restarts the process with
    the same LiPS process id (its record now names n2); it finishes with the right
    passive tuple, and its first out, already applied, is not applied again.
    """
    rings = await start_rings(servers)
    app = await servers.start()
    path = rings.path
    n1 = _lipsd(servers, path, app.endpoint, "n1", "n2")
    n2 = _lipsd(servers, path, app.endpoint, "n2", "n1")
    system: TupleSpaceClient = await within(
        lips.client.connect(_reactor(), rings.endpoints("fixserver"))
    )
    space = await app.connect()
    try:
        for name in ("n1", "n2"):
            await within(system.rd(state_template(name), timeout=8))
        placed = await within(eval_request(system, ("slow", 4), TARGET, 4, nodes=["n1"]))
        assert placed.node == "n1"
        running = await within(space.rd(("running", 4, int, int), timeout=8))
        assert running[2] == placed.pid
        assert n1.children(TARGET) == [running[3]]

        n1.kill()
        os.kill(running[3], signal.SIGKILL)

        down = await within(system.rd(down_template("n1"), timeout=8))
        assert down[3] == "n2", down
        record = await within(system.rd(process_template(placed.pid, "n2"), timeout=8))
        assert record[1:3] == (placed.pid, "n2")

        async def restarted() -> bool:
            return bool(n2.children(TARGET))

        await eventually(restarted, 8, "the process restarted under n2's lipsd")
        await within(space.out(("go", 4)))
        done = await within(space.rd(("slow", 4, ANY), timeout=8))
        assert done == ("slow", 4, (16, placed.pid)), done
        # One announcement: the restarted run's out was answered from the log.
        assert await within(space.inp(("running", 4, int, int))) is not None
        assert await within(space.inp(("running", 4, int, int))) is None

        async def finished() -> bool:
            return await within(system.rdp(process_template(placed.pid))) is None

        await eventually(finished, 5, "the process record taken when it finished")
    finally:
        await within(system.close())
