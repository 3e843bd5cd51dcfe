"""
Tests for the daemon's Twisted side: the daemon link and the local link
(L{lips.protocols.DaemonLink}, L{lips.protocols.LocalLink}) on StringTransports, the
ARMOR process's host (L{lips.armor.process.ArmorHost}) on a MemoryReactor, lipsd's
L{lips.node.DaemonService} with a fake spawner and a fake System Tuple Space, and the
C{--armor-*} options of C{twistd lips-node}.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from lips.armor import (
    INSTALL,
    INSTALLED,
    TOKEN_SIZE,
    Armor,
    ArmorFactory,
    ArmorHello,
    ArmorRow,
    ArmorSpec,
    ArmorType,
    AttachHello,
    Block,
    BlockFactory,
    BlockType,
    Daemon,
    DaemonPolicy,
    Frame,
    FrameDecoder,
    FrameError,
    FrameKind,
    Install,
    Installed,
    Message,
    armor_id,
    armor_template,
    encode_frame,
    link_key,
)
from lips.armor import process as armor_process
from lips.armor.space import (
    SPACE_REQUEST,
    SYSTEM_SPACE,
    SpaceOp,
    SpaceReply,
    SpaceRequest,
    TableSpace,
    space_id,
)
from lips.node import (
    DAEMON_TAG,
    ArmorSpawner,
    DaemonService,
    Exit,
    IArmorChild,
    IArmorSpawner,
    ProcessService,
    daemon_template,
    prepare_runtime,
)
from lips.node._daemon import carry_out, register
from lips.protocols import (
    DaemonLink,
    DaemonLinkFactory,
    IDaemonLinkHost,
    ILocalLinkHost,
    LinkPhase,
    LocalLink,
    LocalLinkFactory,
)
from lips.space import TupleSpace
from lips.tap import node as node_tap
from lips.testing import ClusterMember, memory_client, memory_server, write_cluster
from lips.tuples import ANY, LTuple, Step, StepResult, Tuples
from tests.unit.test_node import FakeClient, matching

KEY = link_key(b"k" * 32)
SM = armor_id("sm.app")
#: The process id of what the tests write into the table themselves: outside the fake
#: clients' ids (test_node's FakeClient hands those out from 1 across the whole run).
WRITER = 1 << 30
A = armor_id("echo.app.a")


# -- a small ARMOR type: echoes what it is sent ------------------------------------------------


class EchoBlock(Block):
    """Answers an `echo` message with `echoed`, same body, to its source."""

    subscriptions = frozenset({"echo"})

    def process_message(self, message: Message, now: float) -> None:
        self.context.send("echoed", message.source, message.value())


class EchoArmor(Armor):
    type_name = "echo"
    default_blocks = {**Armor.default_blocks, "echo": "echo"}


def echo_factory() -> ArmorFactory:
    blocks = BlockFactory(
        [BlockType("echo", "tests.unit.test_armor_hosting:EchoBlock.from_config", "Echo.")]
    )
    armors = [ArmorType("echo", "tests.unit.test_armor_hosting:EchoArmor.from_config", "Echo.")]
    return ArmorFactory(armors, blocks=blocks)


def frames_of(data: bytes) -> list[Frame]:
    out = FrameDecoder().feed(data)
    assert not any(isinstance(f, FrameError) for f in out), out
    return [f for f in out if isinstance(f, Frame)]


def taken(transport: StringTransport) -> list[Frame]:
    """The frames written on C{transport} since the last call."""
    data = transport.value()
    transport.clear()
    return frames_of(data)


def connect(protocol: Protocol) -> StringTransport:
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    protocol.makeConnection(transport)
    return transport


def shuttle(a: Protocol, ta: StringTransport, b: Protocol, tb: StringTransport) -> None:
    """Carry the bytes each side wrote to the other until both are quiet."""
    while ta.value() or tb.value():
        da, db = ta.value(), tb.value()
        ta.clear()
        tb.clear()
        if da and not tb.disconnecting:
            b.dataReceived(da)
        if db and not ta.disconnecting:
            a.dataReceived(db)


@implementer(IDaemonLinkHost)
class PeerHost:
    """Records what a daemon link tells its host."""

    def __init__(self, accept: bool = True) -> None:
        self.accept = accept
        self.up: list[DaemonLink] = []
        self.messages: list[tuple[str | None, Message]] = []
        self.lost: list[str] = []

    def peer_authenticated(self, link: DaemonLink) -> bool:
        self.up.append(link)
        return self.accept

    def peer_message(self, link: DaemonLink, message: Message) -> None:
        self.messages.append((link.peer, message))

    def peer_lost(self, link: DaemonLink, reason: str) -> None:
        self.lost.append(reason)


@implementer(ILocalLinkHost)
class ArmorsHost:
    """Records what a local link tells its host."""

    def __init__(self, token: bytes = b"t" * TOKEN_SIZE) -> None:
        self.token = token
        self.events: list[tuple[str, object]] = []

    def armor_hello(self, link: LocalLink, hello: ArmorHello) -> bool:
        self.events.append(("hello", hello.armor))
        return hello.token == self.token

    def armor_attach(self, link: LocalLink, hello: AttachHello) -> bool:
        self.events.append(("attach", hello.armor))
        return False

    def armor_message(self, link: LocalLink, message: Message) -> None:
        self.events.append(("message", message))

    def armor_pong(self, link: LocalLink, seq: int) -> None:
        self.events.append(("pong", seq))

    def armor_failed(self, link: LocalLink, reason: str) -> None:
        self.events.append(("failed", reason))

    def armor_lost(self, link: LocalLink, reason: str) -> None:
        self.events.append(("lost", link.armor))


@attrs.define
class Pair:
    """Two daemon links, n1 dialing n2, on StringTransports, and their hosts."""

    dialer: DaemonLink
    ta: StringTransport
    ha: PeerHost
    acceptor: DaemonLink
    tb: StringTransport
    hb: PeerHost
    counters: Counter[str]

    def pump(self) -> None:
        shuttle(self.dialer, self.ta, self.acceptor, self.tb)


def daemon_pair(key_a: bytes = KEY, key_b: bytes = KEY, expect: str = "n2") -> Pair:
    counters: Counter[str] = Counter()
    clock = Clock()
    ha, hb = PeerHost(), PeerHost()
    dialer = DaemonLink(ha, "n1", key_a, counters, clock, dialer=True, expect=expect)
    acceptor = DaemonLink(hb, "n2", key_b, counters, clock, dialer=False)
    pair = Pair(dialer, connect(dialer), ha, acceptor, connect(acceptor), hb, counters)
    pair.pump()
    return pair


class DaemonLinkTests(SynchronousTestCase):
    """The daemon link's handshake, its frames, and its refusals."""

    def test_handshake_and_messages(self) -> None:
        """
        Two daemons holding the cluster key prove it to each other and learn each
        other's node; then messages pass both ways, each in a checked frame.
        """
        p = daemon_pair()
        self.assertEqual((p.dialer.phase, p.acceptor.phase), (LinkPhase.UP, LinkPhase.UP))
        self.assertEqual((p.ha.up, p.hb.up), ([p.dialer], [p.acceptor]))
        self.assertEqual((p.dialer.peer, p.acceptor.peer), ("n2", "n1"))
        self.assertEqual(p.counters["links.authenticated"], 2)
        m = Message.of("hello", SM, A, 1, "hi")
        self.assertTrue(p.dialer.send_message(m))
        p.pump()
        self.assertEqual(p.hb.messages, [("n1", m)])
        self.assertTrue(p.acceptor.send_message(m))
        p.pump()
        self.assertEqual(p.ha.messages, [("n2", m)])

    def test_wrong_key(self) -> None:
        """A peer without the cluster key is refused: neither side is told of it."""
        p = daemon_pair(key_b=link_key(b"j" * 32))
        self.assertEqual((p.ha.up, p.hb.up), ([], []))
        self.assertGreaterEqual(p.counters["links.refused"], 1)
        self.assertTrue(p.ta.disconnecting or p.tb.disconnecting)

    def test_wrong_node(self) -> None:
        """A dialer refuses a peer that answers as another node than the one dialed."""
        p = daemon_pair(expect="n3")
        self.assertEqual(p.ha.up, [])
        self.assertTrue(p.ta.disconnecting)
        self.assertIn("dialed node n3, but n2 answered", p.dialer.reason or "")

    def test_no_message_before_the_handshake(self) -> None:
        """A message frame before the proof is a handshake error: hung up on."""
        counters: Counter[str] = Counter()
        host = PeerHost()
        link = DaemonLink(host, "n2", KEY, counters, Clock(), dialer=False)
        transport = connect(link)
        link.dataReceived(encode_frame(Frame.of_message(Message.of("x", SM, A, 1))))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(counters["links.refused"], 1)
        self.assertEqual(host.messages, [])

    def test_garbage_is_refused_and_hung_up_on(self) -> None:
        """Bytes that are no frame (or a frame with a bad CRC) are counted; the peer is cut."""
        frame = bytearray(encode_frame(Frame.of_message(Message.of("x", SM, A, 1))))
        frame[-1] ^= 0x40
        for garbage, fault in [(b"GET / HTTP/1.0\r\n\r\n", "magic"), (bytes(frame), "crc")]:
            p = daemon_pair()
            p.acceptor.dataReceived(garbage)
            self.assertEqual(p.counters[f"frames.refused.{fault}"], 1)
            self.assertEqual(p.counters["frames.refused"], 1)
            self.assertTrue(p.tb.disconnected)  # aborted
            self.assertEqual(p.hb.messages, [])

    def test_handshake_bodies_are_small(self) -> None:
        """Before the handshake, a body over HANDSHAKE_BODY is refused from its header."""
        counters: Counter[str] = Counter()
        link = DaemonLink(PeerHost(), "n2", KEY, counters, Clock(), dialer=False)
        transport = connect(link)
        link.dataReceived(encode_frame(Frame(FrameKind.HELLO, body=b"x" * 2000))[:100])
        self.assertEqual(counters["frames.refused.too-large"], 1)
        self.assertTrue(transport.disconnected)

    def test_handshake_timeout(self) -> None:
        """A peer that does not finish the handshake in time is cut off."""
        counters: Counter[str] = Counter()
        clock = Clock()
        link = DaemonLink(
            PeerHost(), "n2", KEY, counters, clock, dialer=False, handshake_timeout=2.0
        )
        transport = connect(link)
        clock.advance(2.0)
        self.assertEqual(counters["links.timeout"], 1)
        self.assertTrue(transport.disconnected)

    def test_duplicate_refused_by_host(self) -> None:
        """A link the host does not want (one is up already) is hung up on, with a CLOSE."""
        counters: Counter[str] = Counter()
        clock = Clock()
        ha, hb = PeerHost(), PeerHost(accept=False)
        dialer = DaemonLink(ha, "n1", KEY, counters, clock, dialer=True, expect="n2")
        acceptor = DaemonLink(hb, "n2", KEY, counters, clock, dialer=False)
        ta, tb = connect(dialer), connect(acceptor)
        shuttle(dialer, ta, acceptor, tb)
        self.assertTrue(tb.disconnecting)
        self.assertEqual(acceptor.phase, LinkPhase.CLOSED)

    def test_unread(self) -> None:
        """A peer that reads nothing is hung up on once max_unsent bytes wait for it."""
        counters: Counter[str] = Counter()
        clock = Clock()
        ha, hb = PeerHost(), PeerHost()
        dialer = DaemonLink(
            ha, "n1", KEY, counters, clock, dialer=True, expect="n2", max_unsent=1000
        )
        acceptor = DaemonLink(hb, "n2", KEY, counters, clock, dialer=False)
        ta, tb = connect(dialer), connect(acceptor)
        shuttle(dialer, ta, acceptor, tb)
        dialer.pauseProducing()
        m = Message.of("x", SM, A, 1, "y" * 400)
        self.assertTrue(dialer.send_message(m))
        self.assertTrue(dialer.send_message(m))
        self.assertFalse(dialer.send_message(m))
        self.assertEqual(counters["links.unread"], 1)
        self.assertTrue(ta.disconnected)

    def test_factory_bounds_links(self) -> None:
        """The listening factory takes at most max_links links at once."""
        counters: Counter[str] = Counter()
        factory = DaemonLinkFactory(PeerHost(), "n2", KEY, counters, Clock(), max_links=1)
        addr = IPv4Address("TCP", "127.0.0.1", 1)
        first = factory.buildProtocol(addr)
        assert first is not None
        connect(first)
        self.assertIsNone(factory.buildProtocol(addr))
        self.assertEqual(counters["links.busy"], 1)
        first.connectionLost(Failure(ConnectionError("gone")))
        self.assertIsNotNone(factory.buildProtocol(addr))

    def test_close_from_the_peer(self) -> None:
        """A CLOSE frame from the peer ends the link; the host hears why."""
        p = daemon_pair()
        p.acceptor.hangup("going away")
        p.dialer.dataReceived(p.tb.value())
        self.assertTrue(p.ta.disconnecting)
        p.dialer.connectionLost(Failure(ConnectionError("closed")))
        self.assertEqual(p.ha.lost, ["the peer hung up: going away"])


class LocalLinkTests(SynchronousTestCase):
    """The daemon's end of an ARMOR process's local link."""

    def setUp(self) -> None:
        self.counters: Counter[str] = Counter()
        self.host = ArmorsHost()
        self.link = LocalLink(self.host, self.counters, Clock())
        self.transport = connect(self.link)

    def hello(self, token: bytes = b"t" * TOKEN_SIZE) -> None:
        self.link.dataReceived(encode_frame(ArmorHello(A, 1, token).frame()))

    def test_welcome(self) -> None:
        """The process started is welcomed; then messages, pings and pongs flow."""
        self.hello()
        self.assertEqual([f.kind for f in taken(self.transport)], [FrameKind.WELCOME])
        self.assertEqual((self.link.armor, self.link.incarnation), (A, 1))
        m = Message.of("hello", A, SM, 1)
        self.link.dataReceived(encode_frame(Frame.of_message(m)))
        self.link.dataReceived(encode_frame(Frame.control(FrameKind.PONG, 3)))
        self.assertEqual(self.host.events, [("hello", A), ("message", m), ("pong", 3)])
        self.assertTrue(self.link.send_ping(4))
        self.assertTrue(self.link.send_message(Message.of("hi", SM, A, 2)))
        self.assertEqual(
            [f.kind for f in taken(self.transport)], [FrameKind.PING, FrameKind.MESSAGE]
        )
        self.link.connectionLost(Failure(ConnectionError("gone")))
        self.assertEqual(self.host.events[-1], ("lost", A))

    def test_refused(self) -> None:
        """A hello the host does not know is refused with a CLOSE, and nothing more."""
        self.hello(b"x" * TOKEN_SIZE)
        (close,) = taken(self.transport)
        self.assertIs(close.kind, FrameKind.CLOSE)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.counters["links.refused"], 1)
        self.assertFalse(self.link.send_ping(1))
        self.link.connectionLost(Failure(ConnectionError("gone")))
        self.assertEqual(self.host.events, [("hello", A)])

    def test_failed(self) -> None:
        """A CLOSE after the hello: its ARMOR could not be made; the host hears why."""
        self.hello()
        self.link.dataReceived(encode_frame(Frame.control(FrameKind.CLOSE, "bad config")))
        self.assertEqual(self.host.events[-1], ("failed", "bad config"))
        self.assertTrue(self.transport.disconnecting)

    def test_factory_bounds_links(self) -> None:
        """The socket's factory takes at most max_links links."""
        factory = LocalLinkFactory(self.host, self.counters, Clock(), max_links=1)
        link = factory.buildProtocol(None)
        self.assertIsNotNone(link)
        self.assertIsNone(factory.buildProtocol(None))


# -- the ARMOR process ----------------------------------------------------------------------


def spec(incarnation: int = 1, config: dict[str, Any] | None = None) -> ArmorSpec:
    return ArmorSpec(A, "echo", SM, incarnation, config or {}, b"t" * TOKEN_SIZE)


class ArmorProcessTests(SynchronousTestCase):
    """lips.armor.process: what it is given, and its ARMOR on the local link."""

    def test_spec_round_trip(self) -> None:
        """The environment and standard input the daemon writes give back the spec."""
        s = spec(2, {"x": [1, 2]})
        env = armor_process.environment(s, "/run/d.sock")
        self.assertNotIn(s.token.decode(), "".join(env.values()))
        back, socket = armor_process.read_spec(env, armor_process.stdin_input(s))
        self.assertEqual(
            (back, socket), (ArmorSpec(A, "echo", SM, 2, {"x": (1, 2)}, s.token), "/run/d.sock")
        )
        for env_, data in [
            ({}, b""),
            (env, b"\xc1"),
            (env, armor_process.stdin_input(s)[:-1]),
            ({**env, armor_process.INCARNATION_VAR: "x"}, armor_process.stdin_input(s)),
        ]:
            self.assertRaises(ValueError, armor_process.read_spec, env_, data)

    def start(
        self, config: dict[str, Any] | None = None
    ) -> tuple[armor_process.ArmorHost, StringTransport, Any]:
        reactor = MemoryReactorClock()
        host = armor_process.ArmorHost(reactor, spec(config=config), "/run/d.sock", echo_factory())
        done = host.run()
        d = defer.ensureDeferred(done)
        (path, factory, *_) = reactor.unixClients[0]
        self.assertEqual(path, "/run/d.sock")
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.protocol = protocol
        return host, transport, d

    def test_runs_its_armor(self) -> None:
        """
        It says hello with its token; once welcomed it runs the ARMOR: messages in go
        to it, what it sends comes out, pings are answered; it ends, status 0, when the
        link is lost.
        """
        host, transport, d = self.start()
        (hello,) = taken(transport)
        self.assertEqual(ArmorHello.from_frame(hello), ArmorHello(A, 1, b"t" * TOKEN_SIZE))
        self.protocol.dataReceived(encode_frame(Frame(FrameKind.WELCOME)))
        assert host.armor is not None
        self.assertTrue(host.armor.started)
        m = Message.of("echo", SM, A, 1, "hi")
        self.protocol.dataReceived(
            encode_frame(Frame.of_message(m)) + encode_frame(Frame.control(FrameKind.PING, 9))
        )
        out = taken(transport)
        self.assertEqual([f.kind for f in out], [FrameKind.MESSAGE, FrameKind.PONG])
        reply = out[0].message()
        self.assertEqual(
            (reply.type, reply.source, reply.destination, reply.value()), ("echoed", A, SM, "hi")
        )
        self.protocol.connectionLost(Failure(ConnectionError("daemon gone")))
        self.assertEqual(self.successResultOf(d), 0)

    def test_cannot_be_made(self) -> None:
        """An ARMOR its type refuses: hello, then CLOSE with the reason; exit CANNOT_MAKE."""
        host, transport, d = self.start(config={"nonsense": 1})
        kinds = [f.kind for f in taken(transport)]
        self.assertEqual(kinds, [FrameKind.HELLO, FrameKind.CLOSE])
        self.assertIn("nonsense", host.failure or "")
        self.assertTrue(transport.disconnecting)
        self.protocol.connectionLost(Failure(ConnectionError("closed")))
        self.assertEqual(self.successResultOf(d), armor_process.CANNOT_MAKE)

    def test_not_welcomed(self) -> None:
        """A process the daemon does not welcome exits without running its ARMOR."""
        host, _, d = self.start()
        self.protocol.dataReceived(encode_frame(Frame.control(FrameKind.CLOSE, "who are you")))
        self.protocol.connectionLost(Failure(ConnectionError("closed")))
        self.assertEqual(self.successResultOf(d), armor_process.NOT_WELCOMED)
        assert host.armor is not None
        self.assertFalse(host.armor.started)


# -- lipsd's daemon service ------------------------------------------------------------------


class RecordingClient(FakeClient):
    """A client of a shared space that records its atomic requests and does nothing else."""

    def __init__(self, space: TupleSpace) -> None:
        super().__init__(space)
        self.calls: list[list[Step]] = []

    def atomic(self, steps: Sequence[Step]) -> defer.Deferred[tuple[StepResult, ...]]:
        self.calls.append(list(steps))
        return super().atomic(steps)

    def out(self, values: Sequence[Any]) -> defer.Deferred[None]:
        raise AssertionError("an out of its own")

    def inp(self, template: Sequence[Any]) -> defer.Deferred[LTuple | None]:
        raise AssertionError("an inp of its own")

    def rdp(self, template: Sequence[Any]) -> defer.Deferred[LTuple | None]:
        raise AssertionError("an rdp of its own")


@implementer(IArmorChild)
class FakeChild:
    def __init__(self, spec: ArmorSpec, socket: str, ended: Callable[[Exit], None]) -> None:
        self.spec = spec
        self.socket = socket
        self.ended = ended
        self.signals: list[str] = []
        self.os_pid = None

    def terminate(self) -> None:
        self.signals.append("TERM")

    def kill(self) -> None:
        self.signals.append("KILL")


@implementer(IArmorSpawner)
class FakeSpawner:
    def __init__(self) -> None:
        self.children: list[FakeChild] = []

    def spawn_armor(
        self, spec: ArmorSpec, socket: str, ended: Callable[[Exit], None]
    ) -> FakeChild:
        child = FakeChild(spec, socket, ended)
        self.children.append(child)
        return child


class DaemonServiceTests(SynchronousTestCase):
    """The daemon core in lipsd: its sockets, its table, its links, its children."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.space = TupleSpace()
        self.spawner = FakeSpawner()
        self.runtime = Path(self.mktemp()) / "rt"
        self.daemon = Daemon(
            "n1",
            policy=DaemonPolicy(kill_grace=1.0),
            types={"echo"},
            rng=__import__("random").Random(3),
        )

        def connect() -> Any:
            return defer.succeed(FakeClient(self.space))

        self.service = DaemonService(
            self.daemon,
            self.spawner,
            connect,
            self.reactor,
            key=b"k" * 32,
            runtime=self.runtime,
            listen="tcp:7301:interface=127.0.0.1",
            advertise="tcp:host=127.0.0.1:port=7301",
        )
        self.service.startService()
        self.addCleanup(self._stop)

    def _stop(self) -> None:
        if self.service.running:
            self.service.stopService()
            self.reactor.advance(5)

    def peer(
        self, node: str = "n2"
    ) -> tuple[DaemonLink, StringTransport, PeerHost, DaemonLink, StringTransport]:
        """A daemon of C{node} connected to the service's listener."""
        link = self.service.link_factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5))
        assert link is not None
        host = PeerHost()
        peer = DaemonLink(host, node, KEY, Counter(), self.reactor, dialer=True, expect="n1")
        tl, tp = connect(link), connect(peer)
        shuttle(link, tl, peer, tp)
        return link, tl, host, peer, tp

    def test_listens_and_advertises(self) -> None:
        """It listens on its socket (in a 0700 directory) and its endpoint, and says where."""
        ((port, _, _, interface),) = [(p, f, b, i) for p, f, b, i in self.reactor.tcpServers]
        self.assertEqual((port, interface), (7301, "127.0.0.1"))
        ((path, *_),) = self.reactor.unixServers
        self.assertEqual(path, str(self.runtime / "daemon.sock"))
        self.assertEqual(stat.S_IMODE(os.stat(self.runtime).st_mode), 0o700)
        self.assertEqual(
            matching(self.space, daemon_template("n1")),
            [(DAEMON_TAG, "n1", "tcp:host=127.0.0.1:port=7301")],
        )

    def install(self) -> tuple[DaemonLink, StringTransport, PeerHost, DaemonLink, StringTransport]:
        """Install A from n2, where its manager lives (as the table says)."""
        self.space.out(WRITER, 1, ("armor", SM, "surrogate-manager", "ftm", "n2", 1, "app"))
        link, tl, host, peer, tp = self.peer()
        install = Message.of(INSTALL, SM, "daemon.n1", 1, Install(A, "echo", SM, 1, {}))
        peer.send_message(install)
        shuttle(link, tl, peer, tp)
        return link, tl, host, peer, tp

    def local(self, child: FakeChild) -> tuple[LocalLink, StringTransport]:
        """The local link of C{child}'s process, welcomed."""
        local = self.service.local_factory.buildProtocol(None)
        assert local is not None
        tlocal = connect(local)
        local.dataReceived(encode_frame(ArmorHello(child.spec.armor, 1, child.spec.token).frame()))
        self.assertEqual([f.kind for f in taken(tlocal)], [FrameKind.WELCOME])
        return local, tlocal

    def test_install_route_and_crash(self) -> None:
        """
        An install from an authenticated peer starts a child; its process's hello (with
        its token) puts its row in the table and `installed` goes to its manager, found
        in the table on n2; a message from n2 reaches it on its local link; a lost link
        has it stopped, SIGTERM then SIGKILL; its end takes its row out and says
        `armor-dead`.
        """
        link, tl, host, peer, tp = self.install()
        self.assertEqual(self.service.linked_nodes(), ["n2"])
        (child,) = self.spawner.children
        self.assertEqual((child.spec.armor, child.socket), (A, str(self.runtime / "daemon.sock")))
        local, tlocal = self.local(child)
        self.assertEqual(
            matching(self.space, ("armor", A, str, str, str, int, str)),
            [("armor", A, "echo", SM, "n1", 1, "app")],
        )
        shuttle(link, tl, peer, tp)
        ((source, installed),) = host.messages
        self.assertEqual((source, installed.type), ("n1", INSTALLED))
        self.assertEqual(Installed.from_message(installed), Installed(A, "n1", 1))

        m = Message.of("echo", SM, A, 2, "hi")
        peer.send_message(m)
        shuttle(link, tl, peer, tp)
        (frame,) = taken(tlocal)
        self.assertEqual(frame.message(), m)

        self.reactor.advance(1.0)  # the first ping
        self.assertEqual([f.kind for f in taken(tlocal)], [FrameKind.PING])
        local.connectionLost(Failure(ConnectionError("gone")))
        self.assertEqual(child.signals, ["TERM"])
        self.reactor.advance(1.0)
        self.assertEqual(child.signals, ["TERM", "KILL"])
        child.ended(Exit(signal=9))
        self.assertEqual(matching(self.space, ("armor", A, str, str, str, int, str)), [])
        shuttle(link, tl, peer, tp)
        dead = host.messages[-1][1]
        self.assertEqual(dead.type, "armor-dead")
        reason = "it lost its link to the daemon, and ended: signal 9 (SIGKILL)"
        self.assertEqual(dead.value()["reason"], reason)

    def test_dials_through_the_advertised_endpoint(self) -> None:
        """
        A local ARMOR's message for an ARMOR on another node: the table says where it
        lives, that node's advertised endpoint is dialed, and the message goes once the
        link is authenticated.
        """
        self.install()
        (child,) = self.spawner.children
        local, _ = self.local(child)
        self.space.out(WRITER, 2, (DAEMON_TAG, "n3", "tcp:host=127.0.0.1:port=7303"))
        self.space.out(WRITER, 3, ("armor", "echo.app.c", "echo", SM, "n3", 1, "app"))
        m = Message.of("echo", A, "echo.app.c", 1, "x")
        local.dataReceived(encode_frame(Frame.of_message(m)))
        ((host, _, factory, *_),) = [c for c in self.reactor.tcpClients if c[1] == 7303]
        self.assertEqual(host, "127.0.0.1")
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 7303))
        assert isinstance(protocol, Protocol)
        tdial = connect(protocol)
        peer_host = PeerHost()
        peer = DaemonLink(peer_host, "n3", KEY, Counter(), self.reactor, dialer=False)
        tp = connect(peer)
        shuttle(protocol, tdial, peer, tp)
        self.assertEqual(peer_host.messages, [("n1", m)])
        self.assertEqual(self.service.linked_nodes(), ["n2", "n3"])

    def test_a_node_with_no_endpoint_is_unreachable(self) -> None:
        """A node that advertises nothing: the dial fails, the sender hears it bounced."""
        self.install()
        (child,) = self.spawner.children
        local, tlocal = self.local(child)
        local.dataReceived(encode_frame(Frame.of_message(Message.of("x", A, "daemon.n4", 1))))
        (bounce,) = taken(tlocal)
        self.assertEqual(bounce.message().type, "undeliverable")
        self.assertIn("advertises no daemon endpoint", bounce.message().value()["reason"])

    def test_duplicate_links(self) -> None:
        """
        Two links between n1 and n2: the one dialed by n1 (the name that sorts first)
        stays, whichever came first; another dialed by n2 is refused.
        """
        accepted, ta, _, _, _ = self.peer("n2")
        _, ta2, _, _, _ = self.peer("n2")
        self.assertTrue(ta2.disconnecting)
        self.assertFalse(ta.disconnecting)
        dialed = DaemonLink(
            self.service, "n1", self.service.key, Counter(), self.reactor, dialer=True, expect="n2"
        )
        peer = DaemonLink(PeerHost(), "n2", KEY, Counter(), self.reactor, dialer=False)
        td, tp = connect(dialed), connect(peer)
        shuttle(dialed, td, peer, tp)
        self.assertTrue(ta.disconnecting)
        self.assertFalse(td.disconnecting)
        accepted.connectionLost(Failure(ConnectionError("replaced")))
        self.assertEqual(self.service.linked_nodes(), ["n2"])
        self.assertIs(self.daemon.link_state("n2").value, "up")

    def test_spaces(self) -> None:
        """
        A local ARMOR's request for space.system is carried out on lipsd's client and
        answered on its local link; one for an application's space is answered failed
        at once and counted (no client of it here).  The core was started: it reads
        the epoch to join (none here yet).
        """
        self.assertTrue(self.daemon.started)
        self.install()
        (child,) = self.spawner.children
        local, tlocal = self.local(child)
        taken(tlocal)
        request = SpaceRequest(4, (SpaceOp.out("x", 1), SpaceOp.template("rdp", "x", ANY)))
        local.dataReceived(
            encode_frame(Frame.of_message(Message.of(SPACE_REQUEST, A, SYSTEM_SPACE, 1, request)))
        )
        (frame,) = taken(tlocal)
        reply = SpaceReply.from_message(frame.message())
        self.assertEqual(reply, SpaceReply(4, True, -1, (None, ("x", 1))))
        self.assertEqual(matching(self.space, ("x", int)), [("x", 1)])
        other = Message.of(SPACE_REQUEST, A, space_id("app"), 2, SpaceRequest(5, request.ops))
        local.dataReceived(encode_frame(Frame.of_message(other)))
        (frame,) = taken(tlocal)
        self.assertEqual(SpaceReply.from_message(frame.message()), SpaceReply(5, False, 0))
        self.assertEqual(self.service.counters["space.refused"], 1)

    def test_carry_out(self) -> None:
        """
        carry_out makes a request one atomic request of the space, each operation a
        step, and answers as the model (TableSpace) does: the values of every
        operation (a scan's tuples, how many a delete took), or, nothing applied, the
        first operation that failed.
        """
        space = TupleSpace()
        client = RecordingClient(space)
        space.out(1, 1, ("y", 1))
        space.out(1, 2, ("y", 2))
        ok = SpaceRequest(
            1,
            (
                SpaceOp.out("x", 1),
                SpaceOp.template("scan", "y", ANY),
                SpaceOp.template("absent", "z", ANY),
                SpaceOp.template("delete", "x", ANY),
                SpaceOp.template("rdp", "y", 2),
                SpaceOp.template("inp", "y", ANY),
            ),
        )
        model = TableSpace()
        for values in (("y", 1), ("y", 2)):
            model.apply(SpaceRequest(9, (SpaceOp.out(*values),)))
        reply = self.successResultOf(defer.Deferred.fromCoroutine(carry_out(client, ok)))
        self.assertEqual(reply, model.apply(ok))
        self.assertEqual(
            reply,
            SpaceReply(1, True, -1, (None, (("y", 1), ("y", 2)), None, 1, ("y", 2), ("y", 1))),
        )
        self.assertEqual(
            client.calls,
            [
                [
                    Step.out(("x", 1)),
                    Step.scan(("y", ANY)),
                    Step.absent(("z", ANY)),
                    Step.delete(("x", ANY)),
                    Step.rdp(("y", 2)),
                    Step.inp(("y", ANY)),
                ]
            ],
        )
        self.assertEqual(list(space.tuples()), [("y", 2)])
        failing = SpaceRequest(
            2,
            (
                SpaceOp.out("x", 2),
                SpaceOp.template("delete", "y", ANY),
                SpaceOp.template("rdp", "z", ANY),
            ),
        )
        before = space.snapshot()
        reply = self.successResultOf(defer.Deferred.fromCoroutine(carry_out(client, failing)))
        self.assertEqual(reply, SpaceReply(2, False, 2))
        self.assertEqual(reply, model.apply(failing))
        self.assertEqual(len(client.calls), 2)
        self.assertEqual(list(space.tuples()), [("y", 2)])
        self.assertEqual(space.sequence, TupleSpace.restore(before).sequence)

    def test_carry_out_invalid_operation(self) -> None:
        """
        An operation that is no tuple or template fails its request as in the model:
        at it, unless one before it fails first (the space says, applying nothing).
        """
        space = TupleSpace()
        client = RecordingClient(space)
        model = TableSpace()
        for ops in (
            (SpaceOp.out("x", {"not": "a field"}),),
            (SpaceOp.out("x", 1), SpaceOp.out("x", {"not": "a field"})),
            (SpaceOp.template("inp", "none"), SpaceOp.out("x", {"not": "a field"})),
        ):
            request = SpaceRequest(1, ops)
            reply = self.successResultOf(defer.Deferred.fromCoroutine(carry_out(client, request)))
            self.assertEqual(reply, model.apply(request))
            self.assertFalse(reply.ok)
        self.assertEqual(len(space), 0)
        self.assertEqual(len(client.calls), 2)

    def test_carry_out_is_one_request(self) -> None:
        """
        Two FTMs' guarded writes do not interleave: each is one atomic request, so
        the one the space applies second sees all of the first (its guard fails on
        the epoch the first took), whichever order their operations were sent in.
        """
        space = TupleSpace()
        space.out(1, 1, ("epoch", 1))
        space.out(1, 2, ("row", "old"))
        first, second = FakeClient(space, hold=True), FakeClient(space, hold=True)

        def write(me: str) -> SpaceRequest:
            return SpaceRequest(
                1,
                (
                    SpaceOp.template("inp", "epoch", 1),
                    SpaceOp.out("epoch", 2),
                    SpaceOp.template("delete", "row", ANY),
                    SpaceOp.out("row", me),
                ),
            )

        a = defer.Deferred.fromCoroutine(carry_out(first, write("a")))
        b = defer.Deferred.fromCoroutine(carry_out(second, write("b")))
        self.assertEqual((len(first.held), len(second.held)), (1, 1))
        second.release()
        first.release()
        self.assertEqual(
            self.successResultOf(b), SpaceReply(1, True, -1, (("epoch", 1), None, 1, None))
        )
        self.assertEqual(self.successResultOf(a), SpaceReply(1, False, 0))
        self.assertEqual(list(space.tuples()), [("epoch", 2), ("row", "b")])

    def test_carry_out_on_lipsd_client(self) -> None:
        """
        On lipsd's own client (lips.client, here on a memory server), a request is
        one ATOMIC message: the server applies no other operation for it.
        """
        clock = Clock()
        server = memory_server(clock)
        client, pump = memory_client(server, clock)
        request = SpaceRequest(
            1,
            (
                SpaceOp.out("t", 1),
                SpaceOp.out("t", 2),
                SpaceOp.template("scan", "t", ANY),
                SpaceOp.template("delete", "t", 1),
                SpaceOp.template("absent", "t", 1),
            ),
        )
        before = dict(server.counters)
        d = defer.Deferred.fromCoroutine(carry_out(client, request))
        pump.flush()
        self.assertEqual(
            self.successResultOf(d),
            SpaceReply(1, True, -1, (None, None, (("t", 1), ("t", 2)), 1, None)),
        )
        ops = {k: v - before.get(k, 0) for k, v in server.counters.items() if k.startswith("ops.")}
        self.assertEqual({k: v for k, v in ops.items() if v}, {"ops.atomic": 1})

    def test_stop(self) -> None:
        """Stopping kills its ARMORs and removes its socket."""
        self.service.stopService()
        self.reactor.advance(5)
        self.assertFalse(os.path.exists(self.runtime / "daemon.sock"))

    def test_cannot_listen(self) -> None:
        """A runtime directory others may enter ends lipsd with one line saying so."""
        loose = Path(self.mktemp())
        loose.mkdir(mode=0o755)
        os.chmod(loose, 0o755)
        service = DaemonService(
            self.daemon,
            self.spawner,
            lambda: defer.succeed(FakeClient(self.space)),
            MemoryReactorClock(),
            key=b"k" * 32,
            runtime=loose,
        )
        with self.assertRaises(SystemExit) as e:
            service.privilegedStartService()
        self.assertIn("daemon n1: cannot listen on", str(e.exception))
        self.assertIn("chmod 700", str(e.exception))

    def test_runtime_directory(self) -> None:
        """A runtime directory others may enter is refused."""
        loose = Path(self.mktemp())
        loose.mkdir(mode=0o755)
        os.chmod(loose, 0o755)
        self.assertRaises(ValueError, prepare_runtime, loose)
        self.assertEqual(prepare_runtime(self.runtime), self.runtime)

    def test_checks_its_collaborators(self) -> None:
        """The service refuses a spawner that is no IArmorSpawner."""
        with self.assertRaises(TypeError):
            DaemonService(
                self.daemon,
                object(),  # type: ignore[arg-type]
                lambda: defer.succeed(None),
                self.reactor,
                key=b"k" * 32,
                runtime=self.runtime,
            )


def short_directory(case: SynchronousTestCase) -> str:
    """A new directory whose path is short enough for a socket in it (removed afterwards)."""
    directory = tempfile.mkdtemp(prefix="lips-test-")
    case.addCleanup(shutil.rmtree, directory, True)
    return directory


class RegisterTests(SynchronousTestCase):
    """L{register}: a row in the place of its ARMOR's, in one atomic request."""

    def row(self, incarnation: int, node: str = "n1") -> ArmorRow:
        return ArmorRow(armor_id("echo.app.a"), "echo", armor_id("sm.app"), node, incarnation)

    def test_in_the_place_of_older_rows(self) -> None:
        space = TupleSpace()
        client = RecordingClient(space)
        self.successResultOf(client.atomic([Step.out(self.row(1).as_tuple())]))
        client.calls.clear()
        ok = self.successResultOf(defer.ensureDeferred(register(client, self.row(2, "n2"))))
        self.assertEqual(ok, (True, ""))
        self.assertEqual(len(client.calls), 1)
        rows = self.successResultOf(client.atomic([Step.scan(armor_template("echo.app.a"))]))
        self.assertEqual(rows[0], Tuples((self.row(2, "n2").as_tuple(),)))

    def test_a_newer_incarnation_stays(self) -> None:
        space = TupleSpace()
        client = RecordingClient(space)
        self.successResultOf(client.atomic([Step.out(self.row(3, "n3").as_tuple())]))
        ok = self.successResultOf(defer.ensureDeferred(register(client, self.row(2))))
        self.assertEqual(ok, (False, "incarnation 3 runs on n3"))
        rows = self.successResultOf(client.atomic([Step.scan(armor_template("echo.app.a"))]))
        self.assertEqual(rows[0], Tuples((self.row(3, "n3").as_tuple(),)))


class ArmorOptionsTests(SynchronousTestCase):
    """lips-node's --armor-* options."""

    def cluster(self) -> Path:
        return write_cluster(
            Path(self.mktemp()), [ClusterMember("f1", 1, 7201, 7021, role="fixserver")]
        )

    def parse(self, *argv: str) -> node_tap.Options:
        o = node_tap.Options()
        o.parseOptions(["--config", str(self.cluster()), "--name", "n1", *argv])
        return o

    def test_without(self) -> None:
        """Without --armor-listen there is no daemon, and lipsd is as before."""
        o = self.parse()
        self.assertIsNone(o["armor"])
        services = list(node_tap.makeService(o, reactor=Clock()))
        self.assertEqual([s for s in services if isinstance(s, DaemonService)], [])

    def test_tls_options(self) -> None:
        """The three --armor-tls-* go together, need --armor-listen, and must load."""
        listen = ("--armor-listen", "tcp:7301:interface=127.0.0.1")
        runtime = ("--armor-runtime", short_directory(self))
        for argv, words in (
            ((*listen, *runtime, "--armor-tls-cert", "c.pem"), "go together"),
            (("--armor-tls-ca", "ca.pem"), "needs --armor-listen"),
            (
                (
                    *listen,
                    *runtime,
                    "--armor-tls-cert",
                    "/nonexistent.pem",
                    "--armor-tls-key",
                    "/nonexistent.key",
                    "--armor-tls-ca",
                    "/nonexistent.ca",
                ),
                "nonexistent",
            ),
        ):
            with self.assertRaises(UsageError) as e:
                self.parse(*argv)
            self.assertIn(words, str(e.exception))
        self.assertIsNone(self.parse(*listen, *runtime)["armor-tls"])

    def test_with(self) -> None:
        """--armor-listen adds the daemon, sharing lipsd's spawner with its eval processes."""
        o = self.parse(
            "--armor-listen",
            "tcp:7301:interface=127.0.0.1",
            "--armor-ping-interval",
            "0.5",
            "--armor-runtime",
            short_directory(self),
        )
        self.assertEqual(o["armor-advertise"], "tcp:host=127.0.0.1:port=7301")
        self.assertEqual(o["armor"].ping_interval, 0.5)
        self.assertEqual(o["armor"].ping_misses, 3)
        services = list(node_tap.makeService(o, reactor=MemoryReactorClock()))
        (daemon,) = [s for s in services if isinstance(s, DaemonService)]
        (processes,) = [s for s in services if isinstance(s, ProcessService)]
        self.assertIs(daemon.spawner, processes.spawner)
        self.assertIsInstance(daemon.spawner, ArmorSpawner)
        self.assertEqual(daemon.node, "n1")

    def test_refused(self) -> None:
        """Bad ARMOR options are refused in one line, naming the option."""
        for argv, text in [
            (("--armor-ping-interval", "1"), "--armor-ping-interval needs --armor-listen"),
            (("--armor-listen", "tcp:7301"), "--armor-advertise"),
            (("--armor-listen", "bogus:1"), "bad --armor-listen endpoint"),
            (
                ("--armor-listen", "tcp:7301:interface=127.0.0.1", "--armor-advertise", "tcp:x"),
                "--armor-advertise",
            ),
            (
                (
                    "--armor-listen",
                    "tcp:7301:interface=127.0.0.1",
                    "--armor-runtime",
                    "/" + "x" * 100,
                ),
                "too long",
            ),
            (
                ("--armor-listen", "tcp:7301:interface=127.0.0.1", "--armor-ping-misses", "0"),
                "at least 1",
            ),
        ]:
            with self.assertRaises(UsageError, msg=str(argv)) as e:
                self.parse(*argv)
            self.assertIn(text, str(e.exception))
            self.assertNotIn("\n", str(e.exception))
        o = node_tap.Options()
        with self.assertRaises(UsageError) as e:
            o.parseOptions(
                [
                    "--config",
                    str(self.cluster()),
                    "--name",
                    "N_1",
                    "--armor-listen",
                    "tcp:7301:interface=127.0.0.1",
                ]
            )
        self.assertIn("ARMOR id", str(e.exception))

    def test_advertised(self) -> None:
        """The advertised endpoint comes from a specific interface only."""
        from lips.tap._armor import advertised_endpoint

        self.assertEqual(
            advertised_endpoint("tcp:port=7301:interface=10.0.0.1"), "tcp:host=10.0.0.1:port=7301"
        )
        self.assertEqual(
            advertised_endpoint("tcp:7301:interface=\\:\\:1"), "tcp:host=\\:\\:1:port=7301"
        )
        self.assertIsNone(advertised_endpoint("tcp:7301:interface=0.0.0.0"))
        self.assertIsNone(advertised_endpoint("ssl:7301"))
