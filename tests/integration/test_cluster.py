# mypy: disable-error-code="untyped-decorator"
# (pytest-twisted ships no type hints, so its decorators are untyped.)
"""
A replicated cluster of real processes: three C{twistd lips-msgserver --config} on
loopback, loaded by several clients, one of them killed with SIGKILL mid-load and
started again.
"""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import deferLater

import lips.client
from lips.client import TupleSpaceClient
from tests.integration._support import RingCluster, ServerFarm, eventually, within

ITEMS = 150
PRODUCERS = 3
CONSUMERS = 3


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


async def _client(cluster: RingCluster, first: int, name: str) -> TupleSpaceClient:
    """A client that knows every server, starting with the C{first}-th."""
    eps = [cluster.endpoint(n) for n in cluster.names]
    return await within(lips.client.connect(_reactor(), eps[first:] + eps[:first], name=name))


@pytest_twisted.ensureDeferred
async def test_sigkill_mid_load(servers: ServerFarm) -> None:
    """
    No answered tuple is lost or duplicated when a server is killed mid-load, and the
    restarted server catches up: the same applied operations, tuples and fingerprint.
    """
    cluster = RingCluster(servers, 3)
    for name in cluster.names:
        await cluster.start(name)
    await cluster.serving()

    produced: list[tuple[int, int]] = []
    consumed: list[tuple[int, int]] = []
    clients: list[TupleSpaceClient] = []

    async def producer(k: int) -> None:
        c = await _client(cluster, k % 3, f"producer{k}")
        clients.append(c)
        for i in range(ITEMS):
            await within(c.out(("item", k, i)), 30)
            produced.append((k, i))

    async def consumer(k: int) -> None:
        c = await _client(cluster, (k + 1) % 3, f"consumer{k}")
        clients.append(c)
        while True:
            t = await within(c.in_(("item", int, int)), 60)
            assert t is not None
            if t[1] < 0:
                return
            consumed.append((t[1], t[2]))

    work = [defer.ensureDeferred(producer(k)) for k in range(PRODUCERS)]
    eaters = [defer.ensureDeferred(consumer(k)) for k in range(CONSUMERS)]

    async def a_third_done() -> bool:
        return len(produced) >= ITEMS * PRODUCERS // 3

    await eventually(a_third_done, 60, "a third of the load")
    cluster.kill("m3")
    await deferLater(_reactor(), 0.5)
    await cluster.start("m3")
    await within(defer.gatherResults(work), 120)

    closer = await _client(cluster, 0, "closer")
    clients.append(closer)
    for _ in range(CONSUMERS):
        await within(closer.out(("item", -1, -1)))
    await within(defer.gatherResults(eaters), 120)

    left = []
    while (t := await within(closer.inp(("item", int, int)))) is not None:
        left.append((t[1], t[2]))

    assert len(consumed) == len(set(consumed)), "a tuple was taken twice"
    assert not set(consumed) & set(left), "a taken tuple is still stored"
    every = {(k, i) for k in range(PRODUCERS) for i in range(ITEMS)}
    assert set(produced) == every
    assert set(consumed) | set(left) == every, "an answered out was lost"

    # The clients that were on the killed server moved to another one.
    assert sum(c.failovers for c in clients) >= 2
    for c in clients:
        await within(c.close())

    # The restarted server received the state and follows the ring like the others.
    async def caught_up() -> bool:
        stats = await cluster.serving()
        marks = {(s["space.applied"], s["space.fingerprint"], s["space.tuples"]) for s in stats}
        return len(marks) == 1

    await eventually(caught_up, 30, "the three servers at the same point")
    m3 = await cluster.running["m3"].stats()
    assert m3["ring.replica.snapshots.restored"] == 1
    assert m3["space.tuples"] == 0


@pytest_twisted.ensureDeferred
async def test_graceful_stop_leaves_the_ring(servers: ServerFarm) -> None:
    """
    A server stopped with SIGTERM says goodbye: the others form a ring without it at
    once, without waiting for the token to be lost, and go on serving.
    """
    cluster = RingCluster(servers, 3)
    for name in cluster.names:
        await cluster.start(name)
    await cluster.serving()
    await cluster.running["m3"].stop_async()
    stats = await cluster.serving("m1", "m2", members=2)
    # Each heard the goodbye (one that had already started forming the new ring
    # ignores it as news); neither waited for a lost token.
    ring = [{k: v for k, v in s.items() if k.startswith("ring.")} for s in stats]
    assert all(s.get("ring.leave.received", 0) + s.get("ring.leave.ignored", 0) for s in ring)
    assert not any(s.get("ring.token.lost") for s in ring), ring
    client = await _client(cluster, 0, "after")
    await within(client.out(("after", 1)))
    assert await within(client.inp(("after", int))) == ("after", 1)
    await within(client.close())
