# mypy: disable-error-code="untyped-decorator"
# (pytest-twisted ships no type hints, so its decorators are untyped.)
"""
lipsd with real processes: two C{twistd lips-fixserver} holding the System Tuple Space
and two C{twistd lips-node} on loopback; one lipsd is killed with SIGKILL, declared down
by the other, restarted, and taken in again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest_twisted

import lips.client
from lips.client import TupleSpaceClient
from lips.node import down_template, state_template, up_template
from tests.integration._support import (
    ServerFarm,
    TwistdServer,
    eventually,
    spawn_lipsd,
    start_rings,
    within,
)

INTERVAL = 0.25
MISSES = 3


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def _lipsd(servers: ServerFarm, path: Path, name: str, watch: str) -> TwistdServer:
    return spawn_lipsd(
        servers,
        path,
        name,
        "--interval",
        str(INTERVAL),
        "--misses",
        str(MISSES),
        "--watch",
        watch,
        processes=False,
    )


@pytest_twisted.ensureDeferred
async def test_node_down_and_back(servers: ServerFarm) -> None:
    """
    Both lipsd publish their state; a SIGKILLed lipsd is declared down (one node-down
    tuple) within the configured intervals; restarted, it is taken in again: its
    node-down tuple is gone and its node-up tuple is back.
    """
    rings = await start_rings(servers)
    path = rings.path
    endpoints = rings.endpoints("fixserver")
    n1 = _lipsd(servers, path, "n1", "n2")
    n2 = _lipsd(servers, path, "n2", "n1")
    client: TupleSpaceClient = await within(lips.client.connect(_reactor(), endpoints))
    try:
        for name in ("n1", "n2"):
            state = await within(client.rd(state_template(name), timeout=8), 10)
            assert state[1] == name
            await within(client.rd(up_template(name), timeout=5))

        n2.kill()
        killed = _reactor().seconds()
        down = await within(client.rd(down_template("n2"), timeout=5))
        took = _reactor().seconds() - killed
        assert down[3] == "n1", down
        # The last report may be up to one interval old at the kill; the watchdog polls
        # once per interval; a little slack for two processes on one machine.
        assert took < (MISSES + 2) * INTERVAL + 1.0, took
        assert await within(client.rdp(up_template("n2"))) is None
        assert n1.running

        _lipsd(servers, path, "n2", "n1")

        async def taken_in() -> bool:
            gone = await within(client.rdp(down_template("n2"))) is None
            up = await within(client.rdp(up_template("n2"))) is not None
            return gone and up

        await eventually(taken_in, 10, "n2 taken in again")
        # Exactly one node-up tuple per node, and no node-down.
        for name in ("n1", "n2"):
            assert await within(client.rdp(down_template(name))) is None
            assert await within(client.inp(up_template(name))) is not None
            assert await within(client.rdp(up_template(name))) is None
    finally:
        await within(client.close())
