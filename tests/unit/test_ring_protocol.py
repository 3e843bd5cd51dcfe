"""
Tests for L{lips.protocols.RingProtocol}, the UDP adapter of the token ring, and its
transports: driven with a scripted engine to pin down what it does with each effect and
input, in each transport (unicast fan-out, multicast, broadcast); L{listen_ring} against
a fake reactor; and as three real ring members over an in-memory datagram network under
fake clocks, in each transport.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError, MulticastJoinError
from twisted.internet.interfaces import (
    IListeningPort,
    IMulticastTransport,
    IReactorMulticast,
    IReactorUDP,
    IUDPTransport,
)
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, Logger, LogLevel
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

import lips.protocols._ring
from lips.kernel import CancelTimer, Deliver, Effect, Log, Persist, Send, StartTimer, TimerKey
from lips.protocols import (
    COUNTERS,
    BroadcastTransport,
    IRingTransport,
    MulticastTransport,
    RingProtocol,
    UnicastTransport,
    listen_ring,
)
from lips.protocols._ring import RingEvent
from lips.protocols._transports import MAX_DATAGRAM
from lips.ring import (
    Configuration,
    Delivered,
    Join,
    Kind,
    Mcast,
    MergeDetect,
    Mode,
    RingConfig,
    RingEngine,
    RingId,
    RingMessage,
    RingStored,
    RingTimer,
    Safe,
    Sealer,
    State,
    Token,
)
from lips.ring._codec import JOIN, MERGE_DETECT, encode
from lips.testing.world import World

KEY = b"k" * 32
CLUSTER = 7
Address = tuple[str, int]
GROUP: Address = ("239.192.0.7", 5405)
SUBNET_BROADCAST: Address = ("10.0.0.255", 5406)
MULTICAST = MulticastTransport(GROUP)
BROADCAST = BroadcastTransport(SUBNET_BROADCAST)


def address(node: int) -> Address:
    return (f"10.0.0.{node}", 7100 + node)


def one_to_many_address(ring_transport: IRingTransport) -> Address | None:
    """Where C{ring_transport} writes broadcasts (None for unicast fan-out)."""
    if isinstance(ring_transport, MulticastTransport):
        return ring_transport.group
    if isinstance(ring_transport, BroadcastTransport):
        return ring_transport.address
    return None


#: The boot of the adapters whose datagrams the tests compare byte for byte.
BOOT = 1_000_000

#: Seals what the tests send as a peer: boot 1, earlier than any real member's (a
#: member that heard the real node drops it as stale), and a fresh counter each time,
#: so that no two datagrams it seals are replays of each other.
PEER = Sealer(KEY, CLUSTER, boot=1)


def sealed(message: RingMessage, sender: int, sealer: Sealer | None = None, to: int = 0) -> bytes:
    """
    C{message} as node C{sender} would send it to node C{to} (0: to every member),
    sealed by L{PEER} by default.
    """
    s = sealer if sealer is not None else PEER
    type_code, body = encode(message)
    return s.seal(type_code, sender, body, to)


@implementer(IUDPTransport)
class FakeDatagramTransport:
    """Records what is written; hands it to a L{Network} if it is on one."""

    def __init__(self, host: Address, network: Network | None = None) -> None:
        self.host = host
        self.network = network
        self.written: list[tuple[bytes, Address | None]] = []
        self.listening = True
        self.broadcast_allowed = False

    def write(self, packet: bytes, addr: Address | None = None) -> None:
        self.written.append((packet, addr))
        if self.network is not None and addr is not None:
            self.network.send(self.host, addr, packet)

    def connect(self, host: str, port: int) -> None:
        raise NotImplementedError("the ring never connects its UDP port")

    def getHost(self) -> IPv4Address:
        return IPv4Address("UDP", *self.host)

    def stopListening(self) -> None:
        self.listening = False

    def setBroadcastAllowed(self, enabled: bool) -> None:
        self.broadcast_allowed = enabled

    def getBroadcastAllowed(self) -> bool:
        return self.broadcast_allowed


@implementer(IUDPTransport, IMulticastTransport)
class FakeMulticastTransport(FakeDatagramTransport):
    """A datagram transport that also records its multicast settings."""

    def __init__(self, host: Address, network: Network | None = None) -> None:
        super().__init__(host, network)
        self.interface = "0.0.0.0"
        self.ttl = 1
        self.loopback = True
        self.joined: list[tuple[str, str]] = []
        self.refuse_interface: Exception | None = None
        self.refuse_join: Exception | None = None

    def getOutgoingInterface(self) -> str:
        return self.interface

    def setOutgoingInterface(self, addr: str | int) -> Deferred[int]:
        if self.refuse_interface is not None:
            return fail(self.refuse_interface)
        assert isinstance(addr, str)
        self.interface = addr
        return succeed(1)

    def getLoopbackMode(self) -> bool:
        return self.loopback

    def setLoopbackMode(self, mode: bool) -> None:
        self.loopback = mode

    def getTTL(self) -> int:
        return self.ttl

    def setTTL(self, ttl: int) -> None:
        self.ttl = ttl

    def joinGroup(self, addr: str, interface: str = "") -> Deferred[None]:
        if self.refuse_join is not None:
            return fail(self.refuse_join)
        self.joined.append((addr, interface))
        return succeed(None)

    def leaveGroup(self, addr: str, interface: str = "") -> Deferred[None]:
        self.joined.remove((addr, interface))
        return succeed(None)


class Network:
    """
    An in-memory datagram network, on the simulated world's L{Datagrams}: what is
    written in one hop arrives at the next (L{hop}: every datagram takes one hop of the
    world's clock, and a hop runs the world one hop on), in the order it was written, at
    whatever protocol listens on the destination address, or, for a multicast group or
    broadcast address, at every listener there (the sender's own included, as the
    kernel loops it back); unless either end is cut off when it arrives.
    """

    HOP = 0.001

    def __init__(self) -> None:
        self.world = World(0)
        self.datagrams = self.world.datagrams
        self.datagrams.fault = lambda source, destination, packet: [self.HOP]
        self.nodes: dict[Address, RingProtocol] = {}
        self.groups: dict[Address, list[tuple[Address, Callable[[bytes, Any], None]]]] = {}
        self.cut: set[Address] = set()

    def send(self, source: Address, destination: Address, packet: bytes) -> None:
        """Write C{packet} from C{source} to C{destination}: it arrives at the next hop."""
        if not self.datagrams.attached(destination):

            def arrive(src: object, packet: Any) -> None:
                self._arrive(src, destination, packet)

            self.datagrams.attach(destination, arrive)
        self.datagrams.send(source, destination, packet)

    def _arrive(self, source: Any, destination: Address, packet: bytes) -> None:
        if source in self.cut:
            return
        protocol = self.nodes.get(destination)
        if protocol is not None and destination not in self.cut:
            protocol.datagramReceived(packet, source)
        for member, received in self.groups.get(destination, []):
            if member not in self.cut:
                received(packet, source)

    def hop(self) -> None:
        """Hand over every datagram written since the last hop, in the order written."""
        self.world.run(until=self.world.now + self.HOP)


class Node:
    """One ring member: its engine, protocol, clock, transport and what it was given."""

    def __init__(
        self,
        node: int,
        ids: list[int],
        network: Network,
        ring_transport: IRingTransport | None = None,
    ) -> None:
        self.clock = Clock()
        self.engine = RingEngine(node, ids, RingConfig.loopback())
        self.events: list[RingEvent] = []
        self.counters: Counter[str] = Counter()
        self.protocol = RingProtocol(
            self.engine,
            Sealer(KEY, CLUSTER),
            {n: address(n) for n in ids},
            self.clock,
            self.events.append,
            counters=self.counters,
            ring_transport=ring_transport,
        )
        self.transport = FakeMulticastTransport(address(node), network)
        network.nodes[address(node)] = self.protocol
        shared = one_to_many_address(ring_transport or UnicastTransport())
        if shared is not None:
            network.groups.setdefault(shared, []).append(
                (address(node), self.protocol.one_to_many_received)
            )

    def delivered(self) -> list[bytes]:
        return [e.payload for e in self.events if isinstance(e, Delivered)]

    def configurations(self) -> list[Configuration]:
        return [e for e in self.events if isinstance(e, Configuration)]


class Ring:
    """Members on one in-memory network, their clocks advanced together."""

    STEP = 0.001

    def __init__(self, size: int = 3, ring_transport: IRingTransport | None = None) -> None:
        self.network = Network()
        ids = list(range(1, size + 1))
        self.nodes = {n: Node(n, ids, self.network, ring_transport) for n in ids}
        for node in self.nodes.values():
            node.protocol.makeConnection(node.transport)

    def run(self, seconds: float) -> None:
        """One network hop, then one step of every clock, until C{seconds} have passed."""
        for _ in range(round(seconds / self.STEP)):
            self.network.hop()
            for node in self.nodes.values():
                node.clock.advance(self.STEP)

    def formed(self) -> bool:
        engines = [n.engine for n in self.nodes.values()]
        return all(e.state is State.OPERATIONAL for e in engines) and all(
            e.members == tuple(self.nodes) and e.ring == engines[0].ring for e in engines
        )


class ScriptedEngine(RingEngine):
    """
    An engine whose effects the test sets, and which records its inputs: so what the
    adapter does with each effect is seen alone.  L{arm} and L{disarm} start and cancel
    its one timer (C{RingTimer.TOKEN_LOSS}), with the next effects it emits.
    """

    def __init__(self, node: int = 1, peers: tuple[int, ...] = (1, 2, 3)) -> None:
        super().__init__(node, peers, RingConfig.loopback())
        self.script: list[Effect] = []
        self.on_submit: list[Effect] = []
        self.inputs: list[tuple[str, object, float]] = []

    def arm(self, at: float) -> None:
        self.script.append(StartTimer(RingTimer.TOKEN_LOSS, at))

    def disarm(self) -> None:
        self.script.append(CancelTimer(RingTimer.TOKEN_LOSS))

    def start(self, now: float) -> None:
        self.inputs.append(("start", None, now))

    def received(self, message: RingMessage, now: float) -> None:
        self.inputs.append(("received", message, now))

    def submit(self, payload: bytes, now: float) -> bool:
        self.inputs.append(("submit", payload, now))
        self.script += self.on_submit
        return True

    def timer(self, key: TimerKey, now: float) -> None:
        self.inputs.append(("timer", key, now))

    def drain(self) -> list[Effect]:
        effects, self.script = self.script, []
        return effects


RING = RingId(8, 1)
TOKEN = Token(RING, 1, 0, 0, 0, 0, 0, ())


class ScriptedTests(SynchronousTestCase):
    """The adapter alone, in front of a scripted engine."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(100)
        self.engine = ScriptedEngine()
        self.events: list[RingEvent] = []
        self.counters: Counter[str] = Counter()
        self.protocol = RingProtocol(
            self.engine,
            Sealer(KEY, CLUSTER, boot=BOOT),
            {n: address(n) for n in (1, 2, 3)},
            self.clock,
            self.events.append,
            counters=self.counters,
        )
        self.transport = FakeDatagramTransport(address(1))

    def start(self, *script: Effect) -> None:
        self.engine.script += script
        self.protocol.makeConnection(self.transport)

    def test_start(self) -> None:
        """Connecting the transport starts the engine at the clock's time."""
        self.start()
        self.assertEqual(self.engine.inputs, [("start", None, 100.0)])

    def test_missing_address(self) -> None:
        """A peer of the engine without an address is a configuration error."""
        self.assertRaises(
            ValueError,
            RingProtocol,
            ScriptedEngine(1, (1, 2, 3)),
            Sealer(KEY, CLUSTER),
            {1: address(1), 2: address(2)},
            self.clock,
            self.events.append,
        )

    def test_broadcast_fan_out(self) -> None:
        """A broadcast is one sealed datagram written to every peer but this node."""
        join = Join(1, frozenset({1, 2, 3}), frozenset(), 4)
        self.start(Send(None, join))
        datagram = sealed(join, 1, Sealer(KEY, CLUSTER, boot=BOOT))
        self.assertEqual(self.transport.written, [(datagram, address(2)), (datagram, address(3))])
        self.assertEqual(self.counters["datagrams.sent"], 2)
        self.assertEqual(self.counters["bytes.sent"], 2 * len(datagram))

    def test_unicast(self) -> None:
        """A send to one peer is written to that peer's address only, sealed for it."""
        self.start(Send(3, TOKEN))
        expected = sealed(TOKEN, 1, Sealer(KEY, CLUSTER, boot=BOOT), to=3)
        self.assertEqual(self.transport.written, [(expected, address(3))])

    def test_unknown_destination(self) -> None:
        """A send to a node with no address is counted and written nowhere."""
        self.start(Send(9, TOKEN))
        self.assertEqual(self.transport.written, [])
        self.assertEqual(self.counters["send.unknown_peer"], 1)

    def test_write_failure(self) -> None:
        """A transport that refuses a write is counted; the other peers still get theirs."""

        def refuse(packet: bytes, addr: Address | None = None) -> None:
            if addr == address(2):
                raise OSError("message too long")
            self.transport.written.append((packet, addr))

        self.patch(self.transport, "write", refuse)
        self.start(Send(None, MergeDetect(RING, 1)))
        self.assertEqual([a for _, a in self.transport.written], [address(3)])
        self.assertEqual(self.counters["send.failed"], 1)
        self.assertEqual(self.counters["datagrams.sent"], 1)

    def test_send_to_self_is_looped_back_later(self) -> None:
        """
        A send to this node is not written: it is handed back to the engine on the
        next turn of the reactor, after the current effects, not by recursion.
        """
        self.start(Send(1, TOKEN), Send(1, MergeDetect(RING, 1)), Deliver(Safe(RING, 0)))
        self.assertEqual(self.transport.written, [])
        self.assertEqual(self.events, [Safe(RING, 0)])
        self.assertEqual([i[0] for i in self.engine.inputs], ["start"])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(0)
        self.assertEqual(
            self.engine.inputs[1:],
            [("received", TOKEN, 100.0), ("received", MergeDetect(RING, 1), 100.0)],
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_events_in_order(self) -> None:
        """
        What the engine delivers (the item of each Deliver) and what it persists go to
        the deliver callback, in the engine's order; sends, timers and logs do not.
        """
        events: list[RingEvent] = [
            Persist(RingStored.RING_SEQ, 8),
            Configuration(RING, (1,), transitional=True),
            Configuration(RING, (1, 2), transitional=False),
            Delivered(RING, 1, 2, b"a"),
            Safe(RING, 1),
            Delivered(RING, 2, 1, b"b"),
        ]
        effects = [e if isinstance(e, Persist) else Deliver(e) for e in events]
        self.start(
            *effects[:3],
            Send(None, TOKEN),
            StartTimer(RingTimer.HOLD, 200.0),
            Log(LogLevel.info, "hello"),
            *effects[3:],
        )
        self.assertEqual(self.events, events)

    def test_reentrant_submit_keeps_order(self) -> None:
        """
        A deliver callback that submits does not get the effects of its submit before
        the rest of the effects it is being given.
        """
        later = Delivered(RING, 3, 1, b"later")
        self.engine.on_submit = [Deliver(later)]

        def deliver(event: RingEvent) -> None:
            self.events.append(event)
            if event == Delivered(RING, 1, 2, b"a"):
                self.assertTrue(self.protocol.submit(b"reply"))

        self.protocol.deliver = deliver
        first, second = Delivered(RING, 1, 2, b"a"), Delivered(RING, 2, 2, b"b")
        self.start(Deliver(first), Deliver(second))
        self.assertEqual(self.events, [first, second, later])

    def test_deliver_failure(self) -> None:
        """A failing deliver callback is logged and counted; later effects still happen."""

        def deliver(event: RingEvent) -> None:
            if isinstance(event, Safe):
                raise RuntimeError("application bug")
            self.events.append(event)

        self.protocol.deliver = deliver
        self.start(Deliver(Safe(RING, 1)), Deliver(Delivered(RING, 1, 1, b"a")), Send(2, TOKEN))
        self.assertEqual(self.events, [Delivered(RING, 1, 1, b"a")])
        self.assertEqual(len(self.transport.written), 1)
        self.assertEqual(self.counters["errors.deliver"], 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_engine_failure_does_not_escape(self) -> None:
        """An engine that raises on a datagram is logged and counted, not raised."""
        self.start()

        def boom(message: RingMessage, now: float) -> None:
            raise AssertionError("engine bug")

        self.patch(self.engine, "received", boom)
        self.engine.arm(105.0)
        self.protocol.datagramReceived(sealed(TOKEN, 3), address(3))
        self.assertEqual(self.counters["errors.internal"], 1)
        self.assertEqual(len(self.flushLoggedErrors(AssertionError)), 1)
        # The timer is still re-armed after the failure.
        self.assertEqual([c.getTime() for c in self.clock.getDelayedCalls()], [105.0])

    def test_unexpected_input_does_not_escape(self) -> None:
        """Input that breaks the adapter itself is logged and counted, never raised."""
        self.start()
        self.protocol.datagramReceived("not bytes" * 10, address(2))  # type: ignore[arg-type]
        self.assertEqual(self.counters["errors.internal"], 1)
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)
        self.assertEqual(self.engine.inputs, [("start", None, 100.0)])

    def test_received(self) -> None:
        """An authentic datagram from a peer's address reaches the engine, counted."""
        self.start()
        datagram = sealed(TOKEN, 3)
        self.clock.advance(1)
        self.protocol.datagramReceived(datagram, address(3))
        self.assertEqual(self.engine.inputs[1:], [("received", TOKEN, 101.0)])
        self.assertEqual(self.counters["datagrams.received"], 1)
        self.assertEqual(self.counters["bytes.received"], len(datagram))

    def test_sender_mismatch(self) -> None:
        """A join or merge detect naming another sender than its datagram is dropped."""
        self.start()
        for message in (Join(3, frozenset({3}), frozenset(), 4), MergeDetect(RING, 3)):
            self.protocol.datagramReceived(sealed(message, 2), address(2))
        self.assertEqual(self.counters["dropped.sender_mismatch"], 2)
        self.assertEqual(self.engine.inputs, [("start", None, 100.0)])

    def test_one_timer(self) -> None:
        """
        There is exactly one delayed call while the engine has a timer pending, moved
        earlier when its deadline does, firing the engine's timer input, and none when
        no timer is pending.
        """
        self.engine.arm(105.0)
        self.start()
        calls = self.clock.getDelayedCalls()
        self.assertEqual([c.getTime() for c in calls], [105.0])
        self.engine.arm(102.0)
        self.protocol.datagramReceived(sealed(TOKEN, 2), address(2))
        self.assertEqual([c.getTime() for c in self.clock.getDelayedCalls()], [102.0])
        self.clock.advance(1)
        self.engine.arm(103.0)
        self.protocol.datagramReceived(sealed(TOKEN, 2), address(2))
        self.clock.advance(1)
        # It fired early, found nothing due, and was set again for the new deadline.
        self.assertNotIn("timer", [i[0] for i in self.engine.inputs])
        self.assertEqual([c.getTime() for c in self.clock.getDelayedCalls()], [103.0])
        self.clock.advance(1)
        self.assertEqual(self.engine.inputs[-1], ("timer", RingTimer.TOKEN_LOSS, 103.0))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.engine.arm(110.0)
        self.assertTrue(self.protocol.submit(b"x"))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.engine.disarm()
        self.assertTrue(self.protocol.submit(b"y"))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_past_deadline(self) -> None:
        """A deadline already past fires on the next turn of the reactor."""
        self.engine.arm(50.0)
        self.start()
        self.clock.advance(0)
        self.assertEqual(self.engine.inputs[-1], ("timer", RingTimer.TOKEN_LOSS, 100.0))

    def test_stop(self) -> None:
        """
        After stop() no delayed call is left, and the protocol ignores datagrams and
        submits, and writes nothing more.
        """
        self.engine.arm(105.0)
        self.start(Send(1, TOKEN))
        self.assertEqual(len(self.clock.getDelayedCalls()), 2)
        self.protocol.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.engine.script = [Send(2, TOKEN)]
        self.protocol.datagramReceived(sealed(TOKEN, 2), address(2))
        self.assertFalse(self.protocol.submit(b"x"))
        self.clock.advance(10)
        self.assertEqual(self.transport.written, [])
        self.assertEqual([i[0] for i in self.engine.inputs], ["start"])
        self.assertEqual(self.counters["dropped.stopped"], 1)

    def test_stop_protocol(self) -> None:
        """Losing the transport (stopListening, shutdown) stops the protocol."""
        self.engine.arm(105.0)
        self.start()
        self.protocol.doStop()
        self.assertEqual(self.clock.getDelayedCalls(), [])


@implementer(ILogObserver)
class LogRecorder:
    """Keeps the log events a protocol's logger emits."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def warnings(self) -> list[dict[str, Any]]:
        """The events logged at warning level or above."""
        return [e for e in self.events if e["log_level"] >= LogLevel.warn]


class OneToManyTests(SynchronousTestCase):
    """
    The adapter in front of a scripted engine, with multicast and with broadcast: where
    broadcasts and tokens are written, how the ring socket is set up, and what is
    dropped.
    """

    def protocol(
        self, ring_transport: IRingTransport, engine: ScriptedEngine | None = None
    ) -> tuple[RingProtocol, ScriptedEngine, FakeMulticastTransport]:
        """A member 1 with C{ring_transport}, its engine, and a multicast-capable socket."""
        engine = engine if engine is not None else ScriptedEngine()
        protocol = RingProtocol(
            engine,
            Sealer(KEY, CLUSTER, boot=BOOT),
            {n: address(n) for n in engine.peers | {engine.node}},
            self.clock,
            self.events.append,
            counters=self.counters,
            ring_transport=ring_transport,
        )
        protocol.log = Logger(namespace="ring", observer=self.logged)
        return protocol, engine, FakeMulticastTransport(address(engine.node))

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(100)
        self.events: list[RingEvent] = []
        self.counters: Counter[str] = Counter()
        self.logged = LogRecorder()

    def test_multicast_writes_broadcasts_once_to_the_group(self) -> None:
        """
        With multicast, a broadcast is one datagram written to the group; a token and
        any other send to one node still goes to that node's ring address.
        """
        protocol, engine, transport = self.protocol(MULTICAST)
        join = Join(1, frozenset({1, 2, 3}), frozenset(), 4)
        engine.script = [Send(None, join), Send(2, TOKEN), Send(None, MergeDetect(RING, 1))]
        protocol.makeConnection(transport)
        s = Sealer(KEY, CLUSTER, boot=BOOT)
        self.assertEqual(
            transport.written,
            [
                (sealed(join, 1, s), GROUP),
                (sealed(TOKEN, 1, s, to=2), address(2)),
                (sealed(MergeDetect(RING, 1), 1, s), GROUP),
            ],
        )
        self.assertEqual(self.counters["datagrams.sent"], 3)

    def test_broadcast_writes_broadcasts_once_to_the_subnet(self) -> None:
        """
        With broadcast, a broadcast is one datagram written to the broadcast address,
        from a socket allowed to broadcast; a token goes to its node's ring address.
        """
        protocol, engine, transport = self.protocol(BROADCAST)
        join = Join(1, frozenset({1, 2, 3}), frozenset(), 4)
        engine.script = [Send(None, join), Send(3, TOKEN)]
        protocol.makeConnection(transport)
        self.assertTrue(transport.broadcast_allowed)
        s = Sealer(KEY, CLUSTER, boot=BOOT)
        self.assertEqual(
            transport.written,
            [(sealed(join, 1, s), SUBNET_BROADCAST), (sealed(TOKEN, 1, s, to=3), address(3))],
        )

    def test_unicast_leaves_the_socket_alone(self) -> None:
        """Unicast fan-out neither allows broadcast nor touches multicast settings."""
        protocol, _, transport = self.protocol(UnicastTransport())
        protocol.makeConnection(transport)
        self.assertFalse(transport.broadcast_allowed)
        self.assertEqual(
            (transport.interface, transport.ttl, transport.loopback), ("0.0.0.0", 1, True)
        )

    def test_lone_member_writes_nothing(self) -> None:
        """A ring of one has nobody to broadcast to, in any transport."""
        for ring_transport in (UnicastTransport(), MULTICAST, BROADCAST):
            protocol, engine, transport = self.protocol(ring_transport, ScriptedEngine(1, (1,)))
            engine.script = [Send(None, MergeDetect(RING, 1))]
            protocol.makeConnection(transport)
            self.assertEqual(transport.written, [], ring_transport)

    def test_multicast_socket_setup(self) -> None:
        """
        Before the engine starts, the ring socket sends multicast from the interface it
        is bound to, with TTL 1 and without looping its own datagrams back: by default.
        """
        protocol, engine, transport = self.protocol(MULTICAST)
        seen: list[tuple[str, int, bool]] = []

        def start(now: float) -> None:
            seen.append((transport.interface, transport.ttl, transport.loopback))

        self.patch(engine, "start", start)
        protocol.makeConnection(transport)
        self.assertEqual(seen, [("10.0.0.1", 1, False)])

    def test_multicast_socket_setup_configured(self) -> None:
        """The interface, TTL and loopback of a multicast transport are applied as given."""
        ring_transport = MulticastTransport(GROUP, interface="10.0.1.1", ttl=4, loopback=True)
        protocol, _, transport = self.protocol(ring_transport)
        protocol.makeConnection(transport)
        self.assertEqual(
            (transport.interface, transport.ttl, transport.loopback), ("10.0.1.1", 4, True)
        )

    def test_multicast_needs_multicast_socket(self) -> None:
        """
        A multicast member on a plain UDP socket does not start: the failure is logged,
        counted as errors.transport and kept, and nothing is written or scheduled.
        """
        protocol, engine, _ = self.protocol(MULTICAST)
        engine.script = [Send(None, MergeDetect(RING, 1))]
        transport = FakeDatagramTransport(address(1))
        protocol.makeConnection(transport)
        self.assertEqual(engine.inputs, [])
        self.assertEqual(transport.written, [])
        self.assertEqual(self.counters["errors.transport"], 1)
        assert protocol.start_failure is not None
        self.assertTrue(protocol.start_failure.check(TypeError))
        self.assertEqual(len(self.logged.warnings()), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertFalse(protocol.submit(b"x"))

    def test_multicast_interface_refused(self) -> None:
        """An interface the socket refuses stops the member from starting."""
        protocol, engine, transport = self.protocol(MULTICAST)
        transport.refuse_interface = OSError(99, "Cannot assign requested address")
        protocol.makeConnection(transport)
        self.assertEqual(engine.inputs, [])
        assert protocol.start_failure is not None
        self.assertTrue(protocol.start_failure.check(OSError))

    def test_multicast_unbound_socket_needs_interface(self) -> None:
        """A ring socket bound to every interface cannot say which to multicast from."""
        protocol, engine, _ = self.protocol(MULTICAST)
        protocol.makeConnection(FakeMulticastTransport(("0.0.0.0", 7101)))
        self.assertEqual(engine.inputs, [])
        assert protocol.start_failure is not None
        self.assertTrue(protocol.start_failure.check(ValueError))

    def test_own_datagrams_dropped_quietly(self) -> None:
        """
        This member's own one-to-many datagram, looped back by the host, is counted
        as dropped.own, never reaches the engine and logs no warning: in every
        transport, on either socket.
        """
        for ring_transport in (MULTICAST, BROADCAST, UnicastTransport()):
            protocol, engine, transport = self.protocol(ring_transport)
            protocol.makeConnection(transport)
            own = MergeDetect(RING, 1)
            protocol.one_to_many_received(sealed(own, 1), address(1))
            protocol.datagramReceived(sealed(own, 1), address(1))
            self.assertEqual(engine.inputs, [("start", None, 100.0)])
        self.assertEqual(self.counters["dropped.own"], 6)
        self.assertEqual(self.counters["datagrams.received"], 6)
        self.assertEqual(self.counters["datagrams.received.group"], 3)
        self.assertEqual(self.logged.warnings(), [])

    def test_own_id_from_elsewhere(self) -> None:
        """
        A datagram claiming to be this member from another address (another node
        configured with the same id, or a replay) is dropped as from an unknown sender,
        with a warning.
        """
        protocol, _, transport = self.protocol(MULTICAST)
        protocol.makeConnection(transport)
        own = MergeDetect(RING, 1)
        protocol.one_to_many_received(sealed(own, 1), ("10.0.0.1", 5405))
        protocol.one_to_many_received(sealed(own, 1), address(2))
        self.assertEqual(self.counters["dropped.unknown_sender"], 2)
        self.assertEqual(self.counters["dropped.own"], 0)
        self.assertEqual(len(self.logged.warnings()), 2)

    def test_group_sender_check(self) -> None:
        """
        A datagram read on the group socket is accepted only from the exact ring
        address (host and port) of the node it claims to be, as on the ring socket.
        """
        for ring_transport in (MULTICAST, BROADCAST):
            protocol, engine, transport = self.protocol(ring_transport)
            protocol.makeConnection(transport)
            merge = MergeDetect(RING, 2)
            protocol.one_to_many_received(sealed(merge, 2), address(2))
            protocol.one_to_many_received(sealed(merge, 2), ("10.0.0.2", GROUP[1]))
            protocol.one_to_many_received(sealed(merge, 2), address(3))
            protocol.one_to_many_received(sealed(MergeDetect(RING, 9), 9), address(2))
            self.assertEqual(engine.inputs[1:], [("received", merge, 100.0)])
        self.assertEqual(self.counters["dropped.unknown_sender"], 6)
        self.assertEqual(self.counters["datagrams.received.group"], 8)

    def test_group_drops_like_ring_socket(self) -> None:
        """
        What arrives on the group socket goes through the same checks: tampered,
        foreign and truncated datagrams are counted under their reasons.
        """
        protocol, engine, transport = self.protocol(MULTICAST)
        protocol.makeConnection(transport)
        good = sealed(MergeDetect(RING, 2), 2)
        protocol.one_to_many_received(good[:-1] + bytes([good[-1] ^ 1]), address(2))
        protocol.one_to_many_received(sealed(MergeDetect(RING, 2), 2, Sealer(KEY, 8)), address(2))
        protocol.one_to_many_received(good[:9], address(2))
        self.assertEqual(engine.inputs, [("start", None, 100.0)])
        self.assertEqual(
            (
                self.counters["dropped.bad_auth"],
                self.counters["dropped.other_cluster"],
                self.counters["dropped.truncated"],
            ),
            (1, 1, 1),
        )

    def test_stopped_group_datagrams(self) -> None:
        """After stop(), group datagrams are counted as dropped.stopped, like any."""
        protocol, engine, transport = self.protocol(MULTICAST)
        protocol.makeConnection(transport)
        protocol.stop()
        protocol.one_to_many_received(sealed(MergeDetect(RING, 2), 2), address(2))
        self.assertEqual(self.counters["dropped.stopped"], 1)
        self.assertEqual(engine.inputs, [("start", None, 100.0)])


class CountersTests(SynchronousTestCase):
    """The counters a status command shows."""

    def test_stats_has_every_counter(self) -> None:
        """stats() names every documented counter, zero until counted, and the counts."""
        engine = ScriptedEngine()
        protocol = RingProtocol(
            engine, Sealer(KEY, CLUSTER), {n: address(n) for n in (1, 2, 3)}, Clock(), print
        )
        self.assertEqual(protocol.stats(), dict.fromkeys(COUNTERS, 0))
        protocol.makeConnection(FakeDatagramTransport(address(1)))
        protocol.datagramReceived(b"short", address(2))
        stats = protocol.stats()
        self.assertEqual(stats["datagrams.received"], 1)
        self.assertEqual(stats["dropped.truncated"], 1)
        self.assertEqual(stats["dropped.own"], 0)

    def test_counters_documented(self) -> None:
        """Every counter name is described in the module docstring."""
        doc = lips.protocols._ring.__doc__
        assert doc is not None
        self.assertEqual(len(COUNTERS), len(set(COUNTERS)))
        for name in COUNTERS:
            self.assertIn(f"C{{{name}}}", doc)


class TransportConfigTests(SynchronousTestCase):
    """Transports take IP literals and refuse what cannot work."""

    def test_provide_interface(self) -> None:
        """Every transport provides IRingTransport."""
        for ring_transport in (UnicastTransport(), MULTICAST, BROADCAST):
            self.assertTrue(verifyObject(IRingTransport, ring_transport))

    def test_multicast_defaults(self) -> None:
        """A multicast transport defaults to TTL 1, no loopback, the ring socket's interface."""
        self.assertEqual(
            (MULTICAST.ttl, MULTICAST.loopback, MULTICAST.interface), (1, False, None)
        )

    def test_refused(self) -> None:
        """Addresses that are not of the right kind, and TTLs out of range, are refused."""
        for make in [
            lambda: MulticastTransport(("10.0.0.1", 5405)),
            lambda: MulticastTransport(("239.1.1.1", 0)),
            lambda: MulticastTransport(("239.1.1.1", 70000)),
            lambda: MulticastTransport(("ff02::1", 5405)),
            lambda: MulticastTransport(("mcast.example", 5405)),
            lambda: MulticastTransport(GROUP, ttl=256),
            lambda: MulticastTransport(GROUP, ttl=-1),
            lambda: MulticastTransport(GROUP, interface="eth0"),
            lambda: MulticastTransport(GROUP, interface="239.1.1.1"),
            lambda: BroadcastTransport(("239.1.1.1", 5405)),
            lambda: BroadcastTransport(("0.0.0.0", 5405)),
            lambda: BroadcastTransport(("fe80::1", 5405)),
        ]:
            self.assertRaises(ValueError, make)
        for make in [
            lambda: MulticastTransport(("239.1.1.1", "5405")),  # type: ignore[arg-type]
            lambda: MulticastTransport(GROUP, ttl=1.5),  # type: ignore[arg-type]
            lambda: MulticastTransport(GROUP, loopback=1),  # type: ignore[arg-type]
            lambda: BroadcastTransport("10.0.0.255:5406"),  # type: ignore[arg-type]
        ]:
            self.assertRaises(TypeError, make)


@implementer(IUDPTransport, IMulticastTransport, IListeningPort)
class FakePort(FakeMulticastTransport):
    """A port a L{FakeReactor} opened: a multicast-capable socket that can be stopped."""

    def __init__(
        self,
        reactor: FakeReactor,
        host: Address,
        protocol: DatagramProtocol,
        *,
        max_packet_size: int,
        listen_multiple: bool,
        multicast: bool,
    ) -> None:
        super().__init__(host)
        self.protocol = protocol
        self.max_packet_size = max_packet_size
        self.listen_multiple = listen_multiple
        self.multicast = multicast
        self.refuse_interface = reactor.refuse_interface
        self.refuse_join = reactor.refuse_join

    def startListening(self) -> None:
        self.listening = True
        self.protocol.makeConnection(self)

    def stopListening(self) -> None:
        if self.listening:
            self.listening = False
            self.protocol.doStop()


@implementer(IReactorUDP, IReactorMulticast)
class FakeReactor:
    """Opens L{FakePort}s, in order, refusing the addresses and calls it is told to."""

    def __init__(self) -> None:
        self.ports: list[FakePort] = []
        self.taken: set[Address] = set()
        self.refuse_interface: Exception | None = None
        self.refuse_join: Exception | None = None

    def _listen(
        self,
        port: int,
        protocol: DatagramProtocol,
        interface: str,
        *,
        max_packet_size: int,
        listen_multiple: bool,
        multicast: bool,
    ) -> FakePort:
        if (interface, port) in self.taken:
            raise CannotListenError(interface, port, OSError(98, "Address already in use"))
        opened = FakePort(
            self,
            (interface, port),
            protocol,
            max_packet_size=max_packet_size,
            listen_multiple=listen_multiple,
            multicast=multicast,
        )
        self.ports.append(opened)
        opened.startListening()
        return opened

    def listenUDP(
        self, port: int, protocol: DatagramProtocol, interface: str = "", maxPacketSize: int = 8192
    ) -> FakePort:
        return self._listen(
            port,
            protocol,
            interface,
            max_packet_size=maxPacketSize,
            listen_multiple=False,
            multicast=False,
        )

    def listenMulticast(
        self,
        port: int,
        protocol: DatagramProtocol,
        interface: str = "",
        maxPacketSize: int = 8192,
        listenMultiple: bool = False,
    ) -> FakePort:
        return self._listen(
            port,
            protocol,
            interface,
            max_packet_size=maxPacketSize,
            listen_multiple=listenMultiple,
            multicast=True,
        )


@implementer(IReactorUDP)
class UnicastOnlyReactor:
    """A reactor without multicast."""

    def __init__(self) -> None:
        self.inner = FakeReactor()

    def listenUDP(
        self, port: int, protocol: DatagramProtocol, interface: str = "", maxPacketSize: int = 8192
    ) -> FakePort:
        return self.inner.listenUDP(port, protocol, interface, maxPacketSize)


class ListenRingTests(SynchronousTestCase):
    """listen_ring opens the sockets each transport needs, and nothing on failure."""

    def setUp(self) -> None:
        self.reactor = FakeReactor()
        self.counters: Counter[str] = Counter()
        self.logged = LogRecorder()

    def member(self, ring_transport: IRingTransport) -> tuple[RingProtocol, ScriptedEngine]:
        engine = ScriptedEngine()
        protocol = RingProtocol(
            engine,
            Sealer(KEY, CLUSTER),
            {n: address(n) for n in (1, 2, 3)},
            Clock(),
            lambda event: None,
            counters=self.counters,
            ring_transport=ring_transport,
        )
        protocol.log = Logger(namespace="ring", observer=self.logged)
        return protocol, engine

    def test_unicast(self) -> None:
        """Unicast fan-out: one socket, on the member's ring address; the engine starts."""
        protocol, engine = self.member(UnicastTransport())
        ports = listen_ring(self.reactor, protocol)
        self.assertEqual(ports, self.reactor.ports)
        (ring,) = self.reactor.ports
        self.assertEqual(
            (ring.host, ring.multicast, ring.listen_multiple, ring.max_packet_size),
            (address(1), False, False, MAX_DATAGRAM),
        )
        self.assertIs(protocol.transport, ring)
        self.assertEqual([i[0] for i in engine.inputs], ["start"])

    def test_multicast(self) -> None:
        """
        Multicast: first a shared socket bound to the group, which joins the group on
        the member's interface and hands what it reads to the member as group traffic;
        then the ring socket, multicast-capable, on the member's ring address.
        """
        protocol, engine = self.member(MULTICAST)
        ports = listen_ring(self.reactor, protocol)
        self.assertEqual(ports, self.reactor.ports)
        group, ring = self.reactor.ports
        self.assertEqual(
            (group.host, group.multicast, group.listen_multiple, group.max_packet_size),
            (GROUP, True, True, MAX_DATAGRAM),
        )
        self.assertEqual(group.joined, [(GROUP[0], "10.0.0.1")])
        self.assertEqual(
            (ring.host, ring.multicast, ring.listen_multiple), (address(1), True, False)
        )
        self.assertEqual((ring.interface, ring.ttl, ring.loopback), ("10.0.0.1", 1, False))
        self.assertIs(protocol.transport, ring)
        merge = MergeDetect(RING, 2)
        group.protocol.datagramReceived(sealed(merge, 2), address(2))
        self.assertEqual(engine.inputs[1:], [("received", merge, 0.0)])
        self.assertEqual(self.counters["datagrams.received.group"], 1)

    def test_multicast_interface(self) -> None:
        """A multicast transport's interface is where the group is joined."""
        protocol, _ = self.member(MulticastTransport(GROUP, interface="10.0.9.9"))
        listen_ring(self.reactor, protocol)
        self.assertEqual(self.reactor.ports[0].joined, [(GROUP[0], "10.0.9.9")])
        self.assertEqual(self.reactor.ports[1].interface, "10.0.9.9")

    def test_broadcast(self) -> None:
        """
        Broadcast: first a shared socket bound to the broadcast address, then a plain
        ring socket on the member's ring address, allowed to broadcast.
        """
        protocol, _ = self.member(BROADCAST)
        listen_ring(self.reactor, protocol)
        shared, ring = self.reactor.ports
        self.assertEqual(
            (shared.host, shared.multicast, shared.listen_multiple, shared.joined),
            (SUBNET_BROADCAST, True, True, []),
        )
        self.assertEqual((ring.host, ring.multicast), (address(1), False))
        self.assertTrue(ring.broadcast_allowed)
        shared.protocol.datagramReceived(sealed(MergeDetect(RING, 1), 1), address(1))
        self.assertEqual(self.counters["dropped.own"], 1)

    def test_join_refused(self) -> None:
        """
        A group that cannot be joined fails listen_ring: the group socket is closed,
        the ring socket never opened, the member never started.
        """
        self.reactor.refuse_join = MulticastJoinError(GROUP[0], "10.0.0.1", 19, "No such device")
        protocol, engine = self.member(MULTICAST)
        self.assertRaises(MulticastJoinError, listen_ring, self.reactor, protocol)
        (group,) = self.reactor.ports
        self.assertFalse(group.listening)
        self.assertEqual(engine.inputs, [])

    def test_ring_address_taken(self) -> None:
        """A ring address in use fails listen_ring, and closes the group socket."""
        self.reactor.taken.add(address(1))
        for ring_transport in (MULTICAST, BROADCAST):
            protocol, engine = self.member(ring_transport)
            self.assertRaises(CannotListenError, listen_ring, self.reactor, protocol)
            self.assertEqual([p.listening for p in self.reactor.ports], [False])
            self.assertEqual(engine.inputs, [])
            self.reactor.ports.clear()

    def test_setup_refused(self) -> None:
        """
        A ring socket that cannot be set up for multicast fails listen_ring with the
        reason, closing both sockets; the member never started.
        """
        self.reactor.refuse_interface = OSError(99, "Cannot assign requested address")
        protocol, engine = self.member(MULTICAST)
        self.assertRaises(OSError, listen_ring, self.reactor, protocol)
        self.assertEqual([p.listening for p in self.reactor.ports], [False, False])
        self.assertEqual(engine.inputs, [])
        self.assertEqual(self.counters["errors.transport"], 1)

    def test_needs_multicast_reactor(self) -> None:
        """Multicast and broadcast need a reactor with multicast sockets."""
        for ring_transport in (MULTICAST, BROADCAST):
            protocol, _ = self.member(ring_transport)
            self.assertRaises(TypeError, listen_ring, UnicastOnlyReactor(), protocol)

    def test_needs_own_address(self) -> None:
        """A member without a ring address of its own cannot listen."""
        protocol = RingProtocol(
            ScriptedEngine(),
            Sealer(KEY, CLUSTER),
            {2: address(2), 3: address(3)},
            Clock(),
            lambda event: None,
        )
        self.assertRaises(ValueError, listen_ring, self.reactor, protocol)
        self.assertEqual(self.reactor.ports, [])


class BadDatagramTests(SynchronousTestCase):
    """What a member does with datagrams it must not accept."""

    def setUp(self) -> None:
        self.ring = Ring(3)
        self.ring.run(0.3)
        self.assertTrue(self.ring.formed())
        self.node = self.ring.nodes[1]
        self.merge = MergeDetect(self.node.engine.ring, 2)
        self.peer = self.ring.nodes[2].protocol.sealer
        self.good = sealed(self.merge, 2, self.peer)

    def inject(self, datagram: bytes, source: Any) -> None:
        self.node.protocol.datagramReceived(datagram, source)

    def test_counted_and_dropped(self) -> None:
        """
        Tampered, unauthenticated, foreign, truncated, misaddressed, malformed,
        replayed and misdirected datagrams are each counted under their reason and never reach the
        engine.  (Each authentic datagram is sealed afresh by node 2's own sealer: once
        opened, the same datagram again would be a replay.)
        """
        flipped = bytearray(self.good)
        flipped[-1] ^= 1
        malformed_body = self.peer.seal(MERGE_DETECT, 2, b"\x93\x01\x02\x03")
        not_msgpack = self.peer.seal(JOIN, 2, b"\xc1")
        unknown_type = self.peer.seal(77, 2, encode(self.merge)[1])
        earlier = Sealer(KEY, CLUSTER, boot=self.peer.boot - 1)
        own = self.node.protocol.sealer
        cases: list[tuple[str, bytes, Any]] = [
            ("dropped.bad_auth", bytes(flipped), address(2)),
            ("dropped.bad_auth", sealed(self.merge, 2, Sealer(b"q" * 32, CLUSTER)), address(2)),
            ("dropped.other_cluster", sealed(self.merge, 2, Sealer(KEY, 8)), address(2)),
            ("dropped.wrong_mode", sealed(self.merge, 2, Sealer(KEY, 7, Mode.ENCRYPTED)), None),
            ("dropped.truncated", self.good[:5], address(2)),
            ("dropped.truncated", b"", address(2)),
            ("dropped.bad_magic", b"XX" + self.good[2:], address(2)),
            ("dropped.bad_version", self.good[:2] + b"\x09" + self.good[3:], address(2)),
            ("dropped.unknown_sender", sealed(MergeDetect(RING, 9), 9), address(2)),
            ("dropped.unknown_sender", self.good, address(3)),
            ("dropped.unknown_sender", sealed(self.merge, 2, self.peer), ("10.0.0.2", 9999)),
            ("dropped.unknown_sender", sealed(self.merge, 2, self.peer), None),
            ("dropped.unknown_sender", sealed(MergeDetect(RING, 1), 1, own), address(2)),
            ("dropped.own", sealed(MergeDetect(RING, 1), 1, own), address(1)),
            ("dropped.malformed", malformed_body, address(2)),
            ("dropped.malformed", not_msgpack, address(2)),
            ("dropped.malformed", unknown_type, address(2)),
            ("dropped.sender_mismatch", sealed(MergeDetect(RING, 3), 2, self.peer), address(2)),
            ("dropped.replayed", self.good, address(2)),
            ("dropped.stale_boot", sealed(self.merge, 2, earlier), address(2)),
            ("dropped.misdirected", sealed(TOKEN, 2, self.peer, to=3), address(2)),
        ]
        received: list[RingMessage] = []
        real = self.node.engine.received

        def spy(message: RingMessage, now: float) -> None:
            received.append(message)
            real(message, now)

        self.patch(self.node.engine, "received", spy)
        before = Counter(self.node.counters)
        for counter, datagram, source in cases:
            count = self.node.counters[counter]
            self.inject(datagram, source)
            self.assertEqual(self.node.counters[counter], count + 1, (counter, source))
        dropped = Counter(
            {k: v - before[k] for k, v in self.node.counters.items() if k.startswith("dropped.")}
        )
        self.assertEqual(+dropped, Counter(counter for counter, _, _ in cases))
        self.assertEqual(
            self.node.counters["datagrams.received"] - before["datagrams.received"], len(cases)
        )
        self.assertEqual(received, [])
        self.assertEqual(self.node.counters["errors.internal"], 0)

    def test_ring_keeps_working(self) -> None:
        """After a burst of bad datagrams at every member, the ring still delivers."""
        for n, node in self.ring.nodes.items():
            peer = 1 + n % 3
            peer_sealer = self.ring.nodes[peer].protocol.sealer
            good = sealed(MergeDetect(node.engine.ring, peer), peer, peer_sealer)
            for bad in (good[:-1] + bytes([good[-1] ^ 1]), good[:7], b"\xff" * 40):
                node.protocol.datagramReceived(bad, address(peer))
            node.protocol.datagramReceived(
                peer_sealer.seal(MERGE_DETECT, peer, b"junk"), address(peer)
            )
            node.protocol.datagramReceived(good, address(n))
        self.assertTrue(self.ring.nodes[2].protocol.submit(b"after"))
        self.ring.run(0.1)
        for node in self.ring.nodes.values():
            self.assertEqual(node.delivered(), [b"after"])
            self.assertEqual(node.counters["dropped.malformed"], 1)
            self.assertEqual(node.counters["errors.internal"], 0)
        self.assertTrue(self.ring.formed())


class RingTests(SynchronousTestCase):
    """Three real members over the in-memory network, broadcasting by unicast fan-out."""

    ring_transport: IRingTransport = UnicastTransport()

    def ring(self, size: int = 3) -> Ring:
        return Ring(size, self.ring_transport)

    def test_forms_and_orders(self) -> None:
        """
        Three adapters form one ring of all three, and deliver every submitted payload
        once, in the same order at every member, each sender's in its own order.  Every
        datagram goes to a peer's ring address or the transport's one-to-many address;
        nothing is dropped but, with multicast or broadcast, each member's own
        one-to-many datagrams.
        """
        ring = self.ring(3)
        ring.run(0.3)
        self.assertTrue(ring.formed())
        for node in ring.nodes.values():
            regular = [c for c in node.configurations() if not c.transitional]
            self.assertEqual(regular[-1].members, (1, 2, 3))
            self.assertIn(Persist(RingStored.RING_SEQ, node.engine.ring.seq), node.events)
        submitted = []
        for i in range(30):
            n = 1 + i % 3
            payload = f"{n}:{i}".encode()
            self.assertTrue(ring.nodes[n].protocol.submit(payload))
            submitted.append(payload)
            if i % 4 == 0:
                ring.run(0.002)
        ring.run(0.2)
        orders = [node.delivered() for node in ring.nodes.values()]
        self.assertEqual(sorted(orders[0]), sorted(submitted))
        self.assertEqual(orders[1], orders[0])
        self.assertEqual(orders[2], orders[0])
        for n in ring.nodes:
            mine = [p for p in orders[0] if p.startswith(b"%d:" % n)]
            self.assertEqual(mine, [p for p in submitted if p.startswith(b"%d:" % n)])
        shared = one_to_many_address(self.ring_transport)
        for n, node in ring.nodes.items():
            safe = [e.upto for e in node.events if isinstance(e, Safe)]
            self.assertEqual(safe, sorted(safe))
            bad = [
                k
                for k in node.counters
                if k.startswith(("dropped.", "errors.", "send.")) and k != "dropped.own"
            ]
            self.assertEqual(bad, [])
            self.assertGreater(node.counters["datagrams.sent"], 0)
            self.assertGreater(node.counters["bytes.received"], 0)
            destinations = {a for _, a in node.transport.written}
            peers = {address(m) for m in ring.nodes if m != n}
            if shared is None:
                self.assertEqual(destinations, peers)
                self.assertEqual(node.counters["dropped.own"], 0)
                self.assertEqual(node.counters["datagrams.received.group"], 0)
            else:
                self.assertIn(shared, destinations)
                self.assertLessEqual(destinations, peers | {shared})
                self.assertGreater(node.counters["dropped.own"], 0)
                self.assertGreater(node.counters["datagrams.received.group"], 0)

    def test_one_timer_each_then_none(self) -> None:
        """
        While the ring runs every member has exactly one pending call, due no later
        than its engine's deadline (a deadline that moved later leaves the call where it
        was), and the ring works; after stop() none is left.
        """
        ring = self.ring(3)
        for _ in range(300):
            ring.run(0.001)
            for node in ring.nodes.values():
                (call,) = node.clock.getDelayedCalls()
                deadline = node.protocol.driver.timers.next_deadline()
                assert deadline is not None
                self.assertLessEqual(call.getTime(), deadline + 1e-9)
        ring.nodes[3].protocol.submit(b"x")
        for node in ring.nodes.values():
            node.protocol.stop()
            self.assertEqual(node.clock.getDelayedCalls(), [])
        ring.run(1.0)
        for node in ring.nodes.values():
            self.assertEqual(node.clock.getDelayedCalls(), [])

    def test_lone_member(self) -> None:
        """
        A ring of one passes its token to itself without touching the network, and
        delivers what it submits.
        """
        network = Network()
        node = Node(1, [1], network, self.ring_transport)
        node.protocol.makeConnection(node.transport)
        for _ in range(100):
            node.clock.advance(0.001)
        self.assertEqual(node.engine.state, State.OPERATIONAL)
        self.assertTrue(node.protocol.submit(b"solo"))
        for _ in range(100):
            node.clock.advance(0.001)
        self.assertEqual(node.delivered(), [b"solo"])
        self.assertEqual(node.transport.written, [])
        self.assertGreater(node.engine.counters["token.received"], 1)
        node.protocol.stop()
        self.assertEqual(node.clock.getDelayedCalls(), [])

    def test_recovers_member_after_loss(self) -> None:
        """
        A member cut off from the network is dropped from the ring; once the network
        heals, traffic from the other side makes them merge, and all three deliver
        alike again.
        """
        ring = self.ring(3)
        ring.run(0.3)
        ring.network.cut.add(address(3))
        ring.run(1.0)
        self.assertEqual([ring.nodes[n].engine.members for n in (1, 2)], [(1, 2)] * 2)
        self.assertEqual(ring.nodes[3].engine.members, (3,))
        ring.network.cut.clear()
        ring.nodes[1].protocol.submit(b"while apart")
        ring.run(1.0)
        self.assertTrue(ring.formed())
        ring.nodes[3].protocol.submit(b"together")
        ring.run(0.1)
        for node in ring.nodes.values():
            self.assertEqual(node.delivered()[-1:], [b"together"])

    def test_idle_partitions_merge(self) -> None:
        """
        Healed partitions merge even when nobody submits anything: the representative
        of an idle ring broadcasts merge detects.
        """
        ring = self.ring(3)
        ring.run(0.3)
        ring.network.cut.add(address(3))
        ring.run(1.0)
        ring.network.cut.clear()
        ring.run(2.0)
        self.assertTrue(ring.formed())


class MulticastRingTests(RingTests):
    """Three real members over the in-memory network, broadcasting by multicast."""

    ring_transport = MULTICAST


class BroadcastRingTests(RingTests):
    """Three real members over the in-memory network, broadcasting to the subnet."""

    ring_transport = BROADCAST


class MessageKindsTests(SynchronousTestCase):
    def test_recovered_messages_travel(self) -> None:
        """A RECOVERED broadcast passes through seal, codec and adapter unchanged."""
        ring = Ring(2)
        ring.run(0.3)
        engine = ring.nodes[1].engine
        got: list[RingMessage] = []
        self.patch(engine, "received", lambda m, now: got.append(m))
        m = Mcast(RingId(99, 2), 1, 2, Kind.RECOVERED, b"p", RingId(50, 1), 3, 1)
        ring.nodes[1].protocol.datagramReceived(
            sealed(m, 2, ring.nodes[2].protocol.sealer), address(2)
        )
        self.assertEqual(got, [m])
