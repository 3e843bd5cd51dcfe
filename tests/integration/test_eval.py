# mypy: disable-error-code="untyped-decorator"
# (pytest-twisted ships no type hints, so its decorators are untyped.)
"""
eval with real processes: two C{twistd lips-fixserver} holding the System Tuple Space,
one C{twistd lips-msgserver} for the application and one C{twistd lips-node} that takes
eval requests and runs them as children (functions of C{examples/evalapp.py}).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest_twisted

import lips.client
from lips.client import TupleSpaceClient
from lips.node import FAILED_TAG, eval_request, failed_template, process_template
from lips.tuples import ANY
from tests.integration._support import (
    ServerFarm,
    eventually,
    spawn_lipsd,
    start_rings,
    within,
)


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


@pytest_twisted.ensureDeferred
async def test_eval_restart_and_fail(servers: ServerFarm, tmp_path: Path) -> None:
    """
    An eval placed through the System Tuple Space becomes the passive tuple
    ("sq", 7, 49) in the application's space; a function that crashes once is restarted
    and finishes; a child killed with SIGKILL is restarted with the same LiPS process id
    and finishes (its first out not repeated); one that always crashes is failed with a
    process-failed record; finished and failed processes leave no process record.
    """
    rings = await start_rings(servers)
    app = await servers.start()
    lipsd = spawn_lipsd(
        servers,
        rings.path,
        "n1",
        "--interval",
        "0.25",
        "--app",
        app.endpoint,
        "--restart-delay",
        "0.1",
        "--max-restarts",
        "2",
    )
    system: TupleSpaceClient = await within(
        lips.client.connect(_reactor(), rings.endpoints("fixserver"))
    )
    space = await app.connect()
    try:
        await within(system.rd(("node", "n1", int, float, float, int, int, bool), timeout=8))

        async def place(fields: tuple[Any, ...], target: str, *args: Any) -> int:
            placed = await within(eval_request(system, fields, target, *args, nodes=["n1"]))
            assert placed.node == "n1"
            return placed.pid

        await place(("sq", 7), "evalapp:square", 7)
        marker = tmp_path / "crashed"
        crash_pid = await place(("cs", 5), "evalapp:crash_once", str(marker), 5)
        slow_pid = await place(("slow", 3), "evalapp:wait_then_square", 3)
        bad_pid = await place(("bad",), "evalapp:always_crash")
        refused_pid = await place(("os",), "os:system", "touch " + str(tmp_path / "owned"))

        assert await within(space.rd(("sq", 7, int), timeout=8)) == ("sq", 7, 49)
        assert await within(space.rd(("cs", 5, int), timeout=8)) == ("cs", 5, 25)
        assert marker.exists()

        running = await within(space.rd(("running", 3, int, int), timeout=8))
        assert running[2] == slow_pid
        first = running[3]
        assert lipsd.children("evalapp:wait_then_square") == [first]
        os.kill(first, signal.SIGKILL)

        async def restarted() -> bool:
            now = lipsd.children("evalapp:wait_then_square")
            return bool(now) and first not in now

        await eventually(restarted, 8, "the killed child restarted")
        await within(space.out(("go", 3)))
        done = await within(space.rd(("slow", 3, ANY), timeout=8))
        assert done == ("slow", 3, (9, slow_pid)), done
        # The restarted run's first out was answered from the log, not applied again.
        assert await within(space.inp(("running", 3, int, int))) is not None
        assert await within(space.inp(("running", 3, int, int))) is None

        failed = await within(system.rd(failed_template(bad_pid), timeout=8))
        assert failed[:3] == (FAILED_TAG, bad_pid, "n1"), failed
        assert failed[4] == 2, failed
        # A target outside lipsd's --allow list never runs; the refusal is on record.
        refused = await within(system.rd(failed_template(refused_pid), timeout=8))
        assert refused[3] == "os:system is not allowed on node n1 (--allow)", refused
        assert not (tmp_path / "owned").exists()

        async def no_records() -> bool:
            return await within(system.rdp(process_template())) is None

        await eventually(no_records, 5, "every process record taken")
        assert crash_pid != slow_pid
    finally:
        await within(system.close())
