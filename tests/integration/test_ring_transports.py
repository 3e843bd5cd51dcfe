# mypy: disable-error-code="untyped-decorator"
# (pytest-twisted ships no type hints, so its decorators are untyped.)
"""
The ring's transports over real sockets: three ring members in this process, on the
real reactor and the loopback interface, form one ring and deliver the same payloads in
the same order, with unicast fan-out, IP multicast and UDP broadcast.

Multicast and broadcast on loopback depend on the kernel: each test first probes with
plain sockets whether the kernel delivers a one-to-many datagram to several sockets on
127.0.0.1, and skips, saying what failed, if it does not.
"""

from __future__ import annotations

import random
import socket
import struct
from collections import Counter
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.interfaces import IListeningPort

from lips.protocols import (
    BroadcastTransport,
    IRingTransport,
    MulticastTransport,
    RingProtocol,
    UnicastTransport,
    listen_ring,
)
from lips.ring import Delivered, RingConfig, RingEngine, Sealer, State
from tests.integration._support import eventually

Address = tuple[str, int]
LOOPBACK = "127.0.0.1"
LOOPBACK_BROADCAST = "127.255.255.255"
KEY = b"integration test ring key 32 b.."
IDS = (1, 2, 3)
PAYLOADS = 60
#: How long the kernel probe waits for a datagram.
PROBE_WAIT = 1.0


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def free_udp_ports(n: int) -> list[int]:
    """C{n} distinct UDP ports free on loopback just now."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sockets.append(s)
            s.bind((LOOPBACK, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def random_group() -> str:
    """A group in the organisation-local scope, so parallel runs do not hear each other."""
    return f"239.255.{random.randrange(256)}.{random.randrange(1, 255)}"


def probe(destination: Address, setup: Any, bind: str) -> str | None:
    """
    Whether the kernel delivers a datagram written to C{destination} from a loopback
    socket (set up by C{setup}) to two sockets sharing C{bind}:port (set up likewise):
    None if it does, else what failed.
    """
    opened: list[socket.socket] = []
    try:
        receivers = []
        for _ in range(2):
            r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            opened.append(r)
            r.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if hasattr(socket, "SO_REUSEPORT"):
                r.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            r.bind((bind, destination[1]))
            setup(r, receiving=True)
            r.settimeout(PROBE_WAIT)
            receivers.append(r)
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        opened.append(sender)
        sender.bind((LOOPBACK, 0))
        setup(sender, receiving=False)
        sender.sendto(b"probe", destination)
        for r in receivers:
            data, _ = r.recvfrom(64)
            if data != b"probe":
                return f"a socket on {bind} read {data!r}, not the probe"
    except TimeoutError:
        return f"a datagram to {destination[0]}:{destination[1]} did not arrive"
    except OSError as e:
        return f"{e.strerror or e} (errno {e.errno})"
    finally:
        for s in opened:
            s.close()
    return None


def multicast_probe(group: Address) -> str | None:
    def setup(s: socket.socket, receiving: bool) -> None:
        if receiving:
            membership = socket.inet_aton(group[0]) + socket.inet_aton(LOOPBACK)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
        else:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(LOOPBACK))
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, struct.pack("B", 1))
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)

    return probe(group, setup, group[0])


def broadcast_probe(address: Address) -> str | None:
    def setup(s: socket.socket, receiving: bool) -> None:
        if not receiving:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)

    return probe(address, setup, address[0])


class Member:
    """One ring member on the real reactor: engine, protocol, what it delivered."""

    def __init__(
        self, node: int, peers: dict[int, Address], cluster: int, transport: IRingTransport
    ) -> None:
        reactor = _reactor()
        self.engine = RingEngine(node, IDS, RingConfig.loopback())
        self.delivered: list[bytes] = []
        self.counters: Counter[str] = Counter()
        self.protocol = RingProtocol(
            self.engine,
            Sealer(KEY, cluster),
            peers,
            reactor,
            self.deliver,
            counters=self.counters,
            ring_transport=transport,
        )
        self.ports: list[IListeningPort] = []

    def deliver(self, event: object) -> None:
        if isinstance(event, Delivered):
            self.delivered.append(event.payload)

    def listen(self) -> None:
        self.ports = listen_ring(_reactor(), self.protocol)

    async def stop(self) -> None:
        for port in self.ports:
            d = port.stopListening()
            if d is not None:
                await d
        self.ports = []


def formed(members: list[Member]) -> bool:
    engines = [m.engine for m in members]
    return all(
        e.state is State.OPERATIONAL and e.members == IDS and e.ring == engines[0].ring
        for e in engines
    )


async def run_ring(transport: IRingTransport) -> list[Member]:
    """
    Three members with C{transport} form a ring and deliver every payload submitted at
    any of them, in the same order at all three.
    """
    cluster = random.randrange(2**32)
    ports = free_udp_ports(len(IDS))
    peers = {n: (LOOPBACK, port) for n, port in zip(IDS, ports, strict=True)}
    members = [Member(n, peers, cluster, transport) for n in IDS]
    try:
        for member in members:
            member.listen()

        async def ring_formed() -> bool:
            return formed(members)

        await eventually(ring_formed, what="a ring of all three")
        submitted = []
        for i in range(PAYLOADS):
            member = members[i % len(members)]
            payload = f"{member.engine.node}:{i}".encode()
            assert member.protocol.submit(payload)
            submitted.append(payload)

        async def all_delivered() -> bool:
            return all(len(m.delivered) >= PAYLOADS for m in members)

        await eventually(all_delivered, what=f"{PAYLOADS} deliveries at every member")
        order = members[0].delivered
        assert sorted(order) == sorted(submitted)
        for member in members[1:]:
            assert member.delivered == order
        for n in IDS:
            prefix = b"%d:" % n
            assert [p for p in order if p.startswith(prefix)] == [
                p for p in submitted if p.startswith(prefix)
            ]
        for member in members:
            assert member.counters["dropped.unknown_sender"] == 0, member.counters
            assert member.counters["dropped.bad_auth"] == 0, member.counters
            assert member.counters["errors.internal"] == 0, member.counters
        return members
    finally:
        for member in members:
            await member.stop()


@pytest_twisted.ensureDeferred
async def test_unicast_fan_out() -> None:
    """
    With unicast fan-out, three members on loopback form one ring and deliver the
    same payloads in the same order; nothing comes back to its sender.
    """
    members = await run_ring(UnicastTransport())
    for member in members:
        assert member.counters["dropped.own"] == 0
        assert member.counters["datagrams.received.group"] == 0


@pytest_twisted.ensureDeferred
async def test_multicast() -> None:
    """
    With IP multicast on 127.0.0.1, three members form one ring and deliver the same
    payloads in the same order; broadcasts arrive on the group socket, and each
    member's own come back to it and are dropped as its own.
    """
    group = (random_group(), free_udp_ports(1)[0])
    reason = multicast_probe(group)
    if reason is not None:
        pytest.skip(f"this kernel does not deliver IP multicast on {LOOPBACK}: {reason}")
    members = await run_ring(MulticastTransport(group, interface=LOOPBACK, loopback=True))
    for member in members:
        assert member.counters["datagrams.received.group"] > 0
        assert member.counters["dropped.own"] > 0


@pytest_twisted.ensureDeferred
async def test_broadcast() -> None:
    """
    With UDP broadcast to 127.255.255.255, three members form one ring and deliver the
    same payloads in the same order; each member hears its own broadcasts and drops
    them as its own.
    """
    address = (LOOPBACK_BROADCAST, free_udp_ports(1)[0])
    reason = broadcast_probe(address)
    if reason is not None:
        pytest.skip(f"this kernel does not deliver UDP broadcast to {address[0]}: {reason}")
    members = await run_ring(BroadcastTransport(address))
    for member in members:
        assert member.counters["datagrams.received.group"] > 0
        assert member.counters["dropped.own"] > 0
