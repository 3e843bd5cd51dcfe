# mypy: disable-error-code="untyped-decorator"
# (pytest-twisted ships no type hints, so its decorators are untyped.)
"""
Three servers in network namespaces on a bridge (198.18.0.0/24, the benchmarking
range), with real UDP broadcast and IP multicast: one server's link is cut (a
partition), then healed.  Root only: the test makes and removes its namespaces, veth
pairs and bridge itself.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import deferLater

import lips.client
from lips.client import TupleSpaceClient
from lips.testing import Bridge, netns_subnet
from tests.integration._support import RingCluster, ServerFarm, eventually, within

pytestmark = [
    pytest.mark.skipif(
        os.geteuid() != 0, reason="network namespaces need root (run the suite as root)"
    ),
    pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2's ip command"),
]

# One /24 of 198.18.0.0/15 per test process (see netns_subnet), and a multicast group
# to match, so that runs side by side never route into each other's bridge.
_TAG = os.getpid() % 512
SUBNET = netns_subnet()
GROUP = f"239.192.{_TAG // 256}.{_TAG % 256}"


@pytest.fixture
def bridge() -> Iterator[Bridge]:
    b = Bridge(3)
    b.destroy()  # leftovers of an interrupted run with the same tag
    try:
        b.create()
        yield b
    finally:
        b.destroy()


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


async def _partition_and_heal(cluster: RingCluster, bridge: Bridge) -> None:
    for name in cluster.names:
        await cluster.start(name)
    await cluster.serving()
    eps = [cluster.endpoint(n) for n in cluster.names]

    async def client(first: int, name: str) -> TupleSpaceClient:
        order = eps[first:] + eps[:first]
        return await within(lips.client.connect(_reactor(), order, name=name))

    # The producer starts on the server that will be cut off.  A cut link is silent
    # (no FIN, no RST): the client notices by its keepalive and moves on.
    producer = await client(2, "producer")
    consumer = await client(0, "consumer")
    produced: list[int] = []

    async def produce(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            await within(producer.out(("item", i)), 30)
            produced.append(i)

    await produce(0, 50)
    bridge.cut(3)
    # The majority forms a ring of two and serves; m3 alone is no primary.
    await cluster.serving("m1", "m2", members=2)
    await within(defer.ensureDeferred(produce(50, 100)), 60)
    assert producer.failovers >= 1
    bridge.heal(3)
    await cluster.serving(members=3)
    # A client that starts on the healed server is served there.
    late = await client(2, "late")
    await within(late.out(("item", 100)))
    produced.append(100)
    await produce(101, 150)

    taken = []
    while (t := await within(consumer.inp(("item", int)))) is not None:
        taken.append(t[1])
    assert sorted(taken) == list(range(150)), "a tuple was lost or doubled"

    async def caught_up() -> bool:
        stats = await cluster.serving()
        return len({(s["space.applied"], s["space.fingerprint"]) for s in stats}) == 1

    await eventually(caught_up, 30, "the three servers at the same point")
    m3 = {k: v for k, v in (await cluster.running["m3"].stats()).items() if isinstance(v, int)}
    # Alone, it was no primary; back, it received the majority's state.
    assert m3["ring.replica.configurations"] >= 3  # the ring of three, alone, and back
    assert m3["ring.replica.snapshots.restored"] >= 1
    assert m3["ring.net.datagrams.received.group"] > 0
    assert late.failovers == 0
    for c in (producer, consumer, late):
        await within(c.close())
    await deferLater(_reactor(), 0)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize(
    ("transport", "address"),
    [("broadcast", f"{SUBNET}.255:7200"), ("multicast", f"{GROUP}:7200")],
)
async def test_partition_and_heal(
    servers: ServerFarm, bridge: Bridge, transport: str, address: str
) -> None:
    """
    Cut one server off and heal it, over real broadcast or multicast: the majority
    serves throughout, nothing answered is lost or doubled, the healed server catches up.
    """
    cluster = RingCluster(
        servers,
        3,
        hosts=bridge.hosts,
        transport=transport,
        one_to_many=address,
        prefixes={f"m{n}": bridge.prefix(n) for n in (1, 2, 3)},
    )
    await _partition_and_heal(cluster, bridge)
