"""
Tests for client failover in L{lips.client}: a client given several MessageServers moves
to the next one when its connection is lost or its server answers UNAVAILABLE, and sends
its unanswered requests again with the same (pid, event), so each is applied once.

The servers here are replicas in miniature: real L{MessageServer} cores whose backends
apply operations to one shared L{TupleSpace} and report every answer to every server (a
server answers only what it routes).  They are reached through in-memory endpoints under
a L{Clock}; a test decides when bytes move, when a server dies and when time passes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import attrs
from twisted.internet import defer
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from lips import ConnectionLost, RequestError, Timeout
from lips.client import TupleSpaceClient, connect
from lips.client._core import (
    ATTEMPT_TIMEOUT,
    FAILOVER_TIMEOUT,
    KEEPALIVE,
    MAX_RETRY_DELAY,
    RETRY_DELAY,
    SETTLE_TIME,
    NoServerAvailable,
)
from lips.protocols import MessageServerFactory, MessageServerProtocol
from lips.server import (
    Answer,
    ISpaceBackend,
    MessageServer,
    Operation,
    Refusal,
    Refused,
    Session,
    Unavailable,
)
from lips.space import Completion, Kind, Status, TupleSpace
from lips.testing import MEMORY_BOUNDS, memory_server
from lips.tuples import DEFAULT_LIMITS, Template
from lips.wire import (
    ErrorCode,
    Frame,
    FrameDecoder,
    Message,
    Out,
    Ping,
    Take,
    decode_message,
)

T = TypeVar("T")


@implementer(ISpaceBackend)
class _SharedBackend:
    """
    One server's view of a space shared by a group of servers: operations are applied
    to the shared space, and every answer goes to every server of the group.

    @ivar refuse: while set, every operation is refused so instead.
    """

    def __init__(self, space: TupleSpace, group: list[_SharedBackend]) -> None:
        self.space = space
        self.group = group
        group.append(self)
        self.on_complete: Callable[[Answer], None] = lambda c: None
        self.refuse: Refusal | None = None

    def submit(self, operation: Operation) -> None:
        op = operation
        if self.refuse is not None:
            self.on_complete(Refused(op.pid, op.event, self.refuse))
            return
        if op.kind is Kind.OUT:
            assert isinstance(op.payload, tuple)
            self._tell(self.space.out(op.pid, op.event, op.payload))
        elif op.kind is Kind.CHECKPOINT:
            assert isinstance(op.payload, bytes)
            self._tell([self.space.checkpoint(op.pid, op.event, op.payload)])
        elif op.kind is Kind.FORGET:
            self.space.forget(op.pid)
            self._tell([Completion(op.pid, op.event, Status.STORED)])
        else:
            assert isinstance(op.payload, Template)
            self._tell([self.space.take(op.pid, op.event, op.kind, op.payload)])

    def recovered(self, pid: int) -> tuple[int, bytes] | None:
        if self.refuse is Refusal.UNAVAILABLE:
            raise Unavailable("refusing")
        return self.space.recovered(pid)

    def withdraw(self, pid: int, event: int, status: Status) -> None:
        c = self.space.withdraw(pid, event, status)
        if c is not None:
            self._tell([c])

    def _tell(self, completions: list[Completion]) -> None:
        for c in completions:
            for member in self.group:
                member.on_complete(c)

    def gauges(self) -> dict[str, int]:
        return {"tuples": len(self.space), "waiting": self.space.waiting}


class _RecordingServer(MessageServer):
    """A MessageServer that remembers every request it received, with the sender's pid."""

    def __init__(self, backend: _SharedBackend, clock: Clock, name: str) -> None:
        super().__init__(backend, clock, name=name, bounds=MEMORY_BOUNDS)
        self.shared = backend
        self.requests: list[tuple[int | None, Message]] = []

    def received(self, session: Session, message: Message, request_id: int) -> None:
        self.requests.append((session.pid, message))
        super().received(session, message, request_id)

    def operations(self) -> list[tuple[int | None, int, str]]:
        """(pid, event, kind) of every OUT and template operation received."""
        out: list[tuple[int | None, int, str]] = []
        for pid, m in self.requests:
            if isinstance(m, Out):
                out.append((pid, m.event, "OUT"))
            elif isinstance(m, Take):
                out.append((pid, m.event, m.kind.name))
        return out


@attrs.define(eq=False)
class _Link:
    """One in-memory connection between a client protocol and a server."""

    client: IProtocol
    server: MessageServerProtocol
    client_io: iosim.FakeTransport
    server_io: iosim.FakeTransport
    pump: iosim.IOPump

    @property
    def open(self) -> bool:
        return not self.client_io.disconnected

    def deliver_to_server(self) -> None:
        """Move what the client wrote to the server, keeping the server's answers back."""
        data = self.client_io.getOutBuffer()
        if data:
            self.server_io.bufferReceived(data)

    def cut(self, server_side: bool = True) -> None:
        """
        The connection breaks: bytes in flight are lost; the client (and, unless
        C{server_side} is false, the server) sees the connection lost.
        """
        self.client_io.stream = []
        self.server_io.stream = []
        if server_side and not self.server_io.disconnected:
            self.server_io.disconnected = True
            self.server.connectionLost(Failure(ConnectionDone()))
        if not self.client_io.disconnected:
            self.client_io.disconnected = True
            self.client.connectionLost(Failure(ConnectionDone("the server went away")))

    def close_server_side(self) -> None:
        """The server notices, late, that the connection is gone."""
        if not self.server_io.disconnected:
            self.server_io.disconnected = True
            self.server.connectionLost(Failure(ConnectionDone()))


@implementer(IStreamClientEndpoint)
class _MemoryEndpoint:
    """
    A client endpoint that connects in memory to C{server}.

    @ivar state: C{"up"} (connects), C{"down"} (refuses) or C{"hang"} (never answers).
    """

    def __init__(self, name: str, server: _RecordingServer, clock: Clock) -> None:
        self.name = name
        self.server = server
        self.clock = clock
        self.state = "up"
        self.links: list[_Link] = []
        self.attempts: list[float] = []

    def __repr__(self) -> str:
        return f"memory:{self.name}"

    def connect(self, factory: IProtocolFactory) -> defer.Deferred[Any]:
        self.attempts.append(self.clock.seconds())
        if self.state == "down":
            return defer.fail(ConnectionRefusedError(self.name))
        if self.state == "hang":
            return defer.Deferred()
        client = factory.buildProtocol(iosim.FakeAddress())
        assert client is not None
        server = MessageServerProtocol(self.server)
        client_io = iosim.FakeTransport(client, isServer=False)
        server_io = iosim.FakeTransport(server, isServer=True)
        pump = iosim.connect(server, server_io, client, client_io, greet=False, clock=self.clock)
        self.links.append(_Link(client, server, client_io, server_io, pump))
        return defer.succeed(client)

    def kill(self) -> None:
        """The server dies: its connections break and it accepts no more."""
        self.state = "down"
        for link in self.links:
            link.cut()

    @property
    def link(self) -> _Link:
        """The newest open connection."""
        return [link for link in self.links if link.open][-1]


class _Cluster:
    """Servers named A, B, C... over one shared space, each behind a memory endpoint."""

    def __init__(self, clock: Clock, names: str = "ABC") -> None:
        self.clock = clock
        self.space = TupleSpace()
        group: list[_SharedBackend] = []
        self.servers = {
            n: _RecordingServer(_SharedBackend(self.space, group), clock, n) for n in names
        }
        self.endpoints = {n: _MemoryEndpoint(n, s, clock) for n, s in self.servers.items()}

    def flush(self) -> None:
        """Move bytes on every open connection until nothing moves."""
        moved = True
        while moved:
            moved = False
            for ep in self.endpoints.values():
                for link in ep.links:
                    if link.open and link.pump.flush():
                        moved = True

    def connect(self, names: str, **kwargs: Any) -> TupleSpaceClient:
        d = connect(self.clock, [self.endpoints[n] for n in names], **kwargs)
        self.flush()
        return _result(d)


def _result(d: defer.Deferred[T]) -> T:
    """The result of a Deferred that has fired (raising its failure)."""
    results: list[T | Failure] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    result = results[0]
    if isinstance(result, Failure):
        result.raiseException()
    assert not isinstance(result, Failure)
    return result


class FailoverTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.cluster = _Cluster(self.clock)
        self.a, self.b, self.c = (self.cluster.endpoints[n] for n in "ABC")
        self.flush = self.cluster.flush

    def assertNoDelayedCalls(self, keepalive: float = 0.0) -> None:
        """
        Nothing is scheduled (after C{keepalive} seconds, when a keepalive timer left
        armed past the last answer is to fire first and find nothing waiting).
        """
        if keepalive:
            self.clock.advance(keepalive)
            self.flush()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_connects_to_first_reachable(self) -> None:
        """connect tries the endpoints in order and stays with the first that welcomes."""
        self.a.state = "down"
        client = self.cluster.connect("ABC")
        self.assertEqual((client.endpoint, client.server), ("memory:B", "B"))
        self.assertEqual((client.failovers, client.state), (0, "connected"))
        self.assertEqual([len(ep.attempts) for ep in (self.a, self.b, self.c)], [1, 1, 0])
        self.assertNoDelayedCalls()

    def test_start_offset(self) -> None:
        """connect(start=i) tries endpoint i first, then goes round."""
        client = self.cluster.connect("ABC", start=2)
        self.assertEqual(client.endpoint, "memory:C")

    def test_none_reachable_at_connect(self) -> None:
        """With several endpoints and none reachable, connect fails with NoServerAvailable."""
        self.a.state = self.b.state = "down"
        d = connect(self.clock, [self.a, self.b])
        f = self.failureResultOf(d, NoServerAvailable)
        self.assertIn("memory:A", str(f.value))
        self.assertIn("memory:B", str(f.value))
        self.assertNoDelayedCalls()

    def test_single_endpoint_error_unchanged(self) -> None:
        """With one endpoint, connect fails with that endpoint's own error, as before."""
        self.a.state = "down"
        self.failureResultOf(connect(self.clock, self.a), ConnectionRefusedError)

    def test_lost_answer_of_out_is_resent_and_applied_once(self) -> None:
        """
        An out that A applied, but whose answer died with A, is sent to B with the same
        (pid, event); B answers it from the log, so the space holds the tuple once.
        """
        client = self.cluster.connect("AB")
        d = client.out(("job", 1))
        self.a.link.deliver_to_server()
        self.assertEqual(len(self.cluster.space), 1)
        self.a.kill()
        self.flush()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(list(self.cluster.space.tuples()), [("job", 1)])
        sent_a = self.cluster.servers["A"].operations()
        sent_b = self.cluster.servers["B"].operations()
        self.assertEqual(sent_a, [(client.pid, 1, "OUT")])
        self.assertEqual(sent_b, sent_a)
        self.assertEqual((client.endpoint, client.server, client.failovers), ("memory:B", "B", 1))
        self.assertEqual(client.event, 1)

    def test_waiting_in_moves_with_the_client(self) -> None:
        """An in_ waiting at A when A dies waits at B and gets a tuple stored later."""
        client = self.cluster.connect("AB")
        other = self.cluster.connect("C")
        d = client.in_(("job", int))
        self.flush()
        self.a.kill()
        self.flush()
        self.assertNoResult(d)
        self.assertEqual(self.cluster.space.waiting, 1)
        other.out(("job", 7))
        self.flush()
        self.assertEqual(self.successResultOf(d), ("job", 7))
        self.assertEqual(len(self.cluster.space), 0)
        self.assertEqual(
            self.cluster.servers["B"].operations(), self.cluster.servers["A"].operations()
        )

    def test_match_lost_in_flight_is_answered_from_the_log(self) -> None:
        """
        A tuple A handed to a waiting in_ is not lost when A dies before the answer
        arrives: B answers the retried event with that same tuple, and takes no other.
        """
        client = self.cluster.connect("AB")
        other = self.cluster.connect("C")
        d = client.in_(("job", int))
        self.flush()
        other.out(("job", 1))
        other.out(("job", 2))
        self.cluster.endpoints["C"].link.pump.flush()  # A's answer is now on its way
        self.a.kill()
        self.flush()
        self.assertEqual(self.successResultOf(d), ("job", 1))
        self.assertEqual(list(self.cluster.space.tuples()), [("job", 2)])

    def test_unavailable_moves_to_the_next_server(self) -> None:
        """
        A request answered UNAVAILABLE is sent, with the same event, to the next
        server; the caller sees only the answer.
        """
        client = self.cluster.connect("AB")
        self.cluster.servers["A"].shared.refuse = Refusal.UNAVAILABLE
        d = client.out(("job", 1))
        self.flush()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual((client.endpoint, client.failovers), ("memory:B", 1))
        self.assertEqual(self.cluster.servers["B"].operations(), [(client.pid, 1, "OUT")])
        self.assertEqual(list(self.cluster.space.tuples()), [("job", 1)])
        self.assertFalse(self.a.links[0].open)
        self.assertNoDelayedCalls(keepalive=KEEPALIVE)

    def test_unavailable_everywhere(self) -> None:
        """
        Servers that all answer UNAVAILABLE are tried in rounds with pauses between
        them, and the request fails once the failover timeout has passed since the
        first refusal.
        """
        client = self.cluster.connect("ABC", failover_timeout=4.0)
        for server in self.cluster.servers.values():
            server.shared.refuse = Refusal.UNAVAILABLE
        d = client.out(("job", 1))
        for _ in range(40):
            self.flush()
            self.clock.advance(0.125)
        f = self.failureResultOf(d, NoServerAvailable)
        self.assertIn("unavailable", str(f.value))
        starts = [self.a.attempts[1:], self.b.attempts, self.c.attempts]
        self.assertEqual(starts, [[0.0, 0.5, 1.5, 3.5]] * 3)
        self.assertEqual(client.state, "failed")
        self.assertEqual(len(self.cluster.space), 0)
        self.assertNoDelayedCalls()

    def test_settled_server_restarts_the_count(self) -> None:
        """
        A server that keeps the client for SETTLE_TIME ends a failover: when it fails in
        turn, the client has a full failover timeout again.
        """
        client = self.cluster.connect("AB", failover_timeout=4.0)
        self.a.kill()
        self.flush()
        self.assertEqual(client.endpoint, "memory:B")
        self.clock.advance(SETTLE_TIME)
        d = client.rdp(("x",))
        self.b.kill()
        self.clock.advance(3.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.failureResultOf(d, NoServerAvailable)

    def test_round_robin_skips_unreachable(self) -> None:
        """Failing over goes round the endpoints from the one after the lost one."""
        client = self.cluster.connect("ABC", start=1)
        self.c.state = "down"
        self.b.kill()
        self.flush()
        self.assertEqual((client.endpoint, client.failovers), ("memory:A", 1))
        self.assertEqual([len(ep.attempts) for ep in (self.a, self.b, self.c)], [1, 1, 1])

    def test_busy_is_an_error_the_caller_sees(self) -> None:
        """BUSY is back-pressure from a working server: no failover, the caller sees it."""
        client = self.cluster.connect("AB")
        self.cluster.servers["A"].shared.refuse = Refusal.BUSY
        d = client.out(("job", 1))
        self.flush()
        f = self.failureResultOf(d, RequestError)
        self.assertIs(f.value.code, ErrorCode.BUSY)
        self.assertEqual((client.endpoint, client.failovers), ("memory:A", 0))

    def test_all_down_fails_after_the_deadline(self) -> None:
        """
        With no server reachable, requests wait until the failover timeout, then fail
        with NoServerAvailable (a ConnectionLost); later calls fail at once, and no
        timer is left behind.
        """
        client = self.cluster.connect("AB", failover_timeout=4.0)
        d = client.in_(("job", int))
        self.flush()
        self.b.state = "down"
        self.a.kill()
        later = client.out(("queued",))
        self.assertEqual((client.state, client.endpoint), ("failing over", None))
        self.clock.advance(3.9)
        self.assertNoResult(d)
        self.assertNoResult(later)
        self.clock.advance(0.1)
        f = self.failureResultOf(d, NoServerAvailable)
        self.assertIsInstance(f.value, ConnectionLost)
        self.assertIn("4 s", str(f.value))
        self.failureResultOf(later, NoServerAvailable)
        self.failureResultOf(client.rdp(("x",)), NoServerAvailable)
        self.assertEqual(client.state, "failed")
        self.assertNoDelayedCalls()
        self.successResultOf(client.close())

    def test_cancel_from_a_failure_callback(self) -> None:
        """
        A caller that cancels one request when another fails, once every request has
        failed in one go, only sees its cancel win: nothing raises, nothing is left.
        """
        client = self.cluster.connect("AB", failover_timeout=4.0)
        first, second = client.rdp(("x",)), client.rdp(("y",))

        def cancel_second(f: Failure) -> Failure:
            second.cancel()
            return f

        first.addErrback(cancel_second)
        self.b.state = "down"
        self.a.kill()
        self.clock.advance(4.0)
        self.failureResultOf(first, NoServerAvailable)
        self.failureResultOf(second, defer.CancelledError)
        self.assertNoDelayedCalls()

    def test_default_deadline(self) -> None:
        """By default a client looks for a server for FAILOVER_TIMEOUT seconds."""
        client = self.cluster.connect("AB")
        d = client.rdp(("x",))
        self.b.state = "down"
        self.a.kill()
        self.clock.advance(FAILOVER_TIMEOUT - 0.01)
        self.assertNoResult(d)
        self.clock.advance(0.01)
        self.failureResultOf(d, NoServerAvailable)

    def test_backoff_between_rounds(self) -> None:
        """
        A round that reaches no endpoint is followed by a pause that doubles up to
        MAX_RETRY_DELAY; a server that comes back is found in the next round.
        """
        client = self.cluster.connect("AB", failover_timeout=60.0)
        d = client.out(("job", 1))
        self.b.state = "down"
        self.a.kill()
        self.clock.pump([0.25] * 24)
        rounds = self.b.attempts
        expected = [0.0]
        delay = RETRY_DELAY
        while expected[-1] + delay <= 6.0:
            expected.append(expected[-1] + delay)
            delay = min(delay * 2, MAX_RETRY_DELAY)
        self.assertEqual(rounds, expected)
        self.assertEqual(self.a.attempts, [0.0, *expected])  # connect, then every round
        self.b.state = "up"
        self.clock.advance(MAX_RETRY_DELAY)
        self.flush()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(client.endpoint, "memory:B")
        self.assertNoDelayedCalls(keepalive=KEEPALIVE)

    def test_attempt_timeout(self) -> None:
        """An endpoint that never answers is given up after ATTEMPT_TIMEOUT; C is next."""
        client = self.cluster.connect("ABC")
        self.b.state = "hang"
        self.a.kill()
        self.clock.advance(ATTEMPT_TIMEOUT - 0.01)
        self.assertEqual((len(self.c.attempts), client.state), (0, "failing over"))
        self.clock.advance(0.01)
        self.flush()
        self.assertEqual((client.endpoint, client.state), ("memory:C", "connected"))
        self.assertNoDelayedCalls()

    def test_cancelled_requests_are_not_resent(self) -> None:
        """
        A rd cancelled before the failover, and an inp cancelled while it waited for a
        server, are not sent to the new server.
        """
        client = self.cluster.connect("AB")
        rd = client.rd(("job", int))
        self.flush()
        rd.cancel()  # its CANCEL dies with A
        self.b.state = "down"
        self.a.kill()
        inp = client.inp(("job", int))
        inp.cancel()
        kept = client.rdp(("job", int))
        self.b.state = "up"
        self.clock.advance(RETRY_DELAY)
        self.flush()
        self.failureResultOf(rd, defer.CancelledError)
        self.failureResultOf(inp, defer.CancelledError)
        self.assertIsNone(self.successResultOf(kept))
        self.assertEqual(self.cluster.servers["B"].operations(), [(client.pid, 3, "RDP")])
        self.assertEqual(self.cluster.space.waiting, 0)

    def test_cancelled_in_whose_tuple_was_taken_is_put_back(self) -> None:
        """
        An in_ cancelled while A's answer (a tuple it took) was in flight, then lost
        with A: the client asks B for the same event, learns of the tuple and puts it
        back, so nothing is lost.
        """
        client = self.cluster.connect("AB")
        other = self.cluster.connect("C")
        d = client.in_(("job", int))
        self.flush()
        other.out(("job", 8))
        self.c.link.pump.flush()
        self.assertEqual(len(self.cluster.space), 0)
        d.cancel()
        self.a.kill()
        self.flush()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(list(self.cluster.space.tuples()), [("job", 8)])
        self.assertEqual(self.cluster.space.waiting, 0)
        self.assertEqual(
            self.cluster.servers["B"].operations(),
            [(client.pid, 1, "INP"), (client.pid, 2, "OUT")],
        )

    def test_cancelled_in_that_took_nothing_leaves_the_space_alone(self) -> None:
        """
        A cancelled in_ whose fate died with A is asked again at B as an inp, which
        never waits: with nothing to match, no waiter is left at B.
        """
        client = self.cluster.connect("AB")
        d = client.in_(("job", int))
        self.flush()
        d.cancel()
        self.a.kill()
        self.flush()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(self.cluster.space.waiting, 0)
        self.assertEqual(len(self.cluster.space), 0)
        self.assertEqual(self.cluster.servers["B"].operations(), [(client.pid, 1, "INP")])

    def test_waiting_in_keeps_its_remaining_time(self) -> None:
        """
        An in_ with a 5 s timeout, moved after 2 s, asks B to wait 3 s more, and times
        out 5 s after the call, as if nothing had happened.
        """
        client = self.cluster.connect("AB")
        d = client.in_(("job", int), timeout=5.0)
        self.flush()
        self.clock.advance(2.0)
        self.a.kill()
        self.flush()
        [(_, retried)] = [r for r in self.cluster.servers["B"].requests if isinstance(r[1], Take)]
        assert isinstance(retried, Take)
        self.assertEqual((retried.event, retried.timeout), (1, 3.0))
        self.clock.advance(2.99)
        self.flush()
        self.assertNoResult(d)
        self.clock.advance(0.01)
        self.flush()
        self.failureResultOf(d, Timeout)
        self.assertEqual(self.cluster.space.waiting, 0)
        self.assertNoDelayedCalls(keepalive=KEEPALIVE)

    def test_events_continue_after_failover(self) -> None:
        """
        The new server's WELCOME does not touch the event counter: requests made during
        and after the failover take new numbers, sent after the re-sent ones, in order.
        """
        client = self.cluster.connect("AB", pid=77)
        first = client.out(("a",))
        self.b.state = "down"
        self.a.kill()
        during = client.out(("b",))
        self.b.state = "up"
        self.clock.advance(RETRY_DELAY)
        self.flush()
        after = client.out(("c",))
        self.flush()
        for d in (first, during, after):
            self.assertIsNone(self.successResultOf(d))
        self.assertEqual(client.pid, 77)
        self.assertEqual(client.event, 3)
        self.assertEqual(
            self.cluster.servers["B"].operations(),
            [(77, 1, "OUT"), (77, 2, "OUT"), (77, 3, "OUT")],
        )
        self.assertEqual(list(self.cluster.space.tuples()), [("a",), ("b",), ("c",)])

    def test_silent_server_is_left(self) -> None:
        """
        A server that goes silent (a cut link: no FIN, no RST) while a request waits on
        it is asked for a sign of life after the keepalive interval, and left after
        another: the request moves to the next server.
        """
        client = self.cluster.connect("AB", keepalive=2.0)
        d = client.in_(("job", int))
        self.flush()
        link = self.a.link
        link.client_io.stream = []  # from now on nothing moves on A's connection
        self.clock.advance(2.0)
        [probe] = FrameDecoder(1 << 20).feed(link.client_io.getOutBuffer())
        assert isinstance(probe, Frame)
        self.assertIsInstance(decode_message(probe, DEFAULT_LIMITS), Ping)
        self.assertEqual(client.failovers, 0)
        self.clock.advance(2.0)
        self.flush()
        self.assertEqual((client.endpoint, client.failovers), ("memory:B", 1))
        other = self.cluster.connect("C")
        other.out(("job", 3))
        self.flush()
        self.assertEqual(self.successResultOf(d), ("job", 3))

    def test_quiet_but_alive_server_is_kept(self) -> None:
        """A waiting request on a server that answers the probes stays where it is."""
        client = self.cluster.connect("AB", keepalive=2.0)
        d = client.in_(("job", int))
        for _ in range(5):
            self.flush()
            self.clock.advance(2.0)
        self.flush()
        self.assertNoResult(d)
        self.assertEqual(client.failovers, 0)
        self.assertTrue(self.a.link.open)

    def test_no_keepalive_without_requests(self) -> None:
        """
        A connection with nothing waiting keeps no timer: the keepalive of the last
        request fires once, finds nothing waiting, probes nobody and stops.
        """
        client = self.cluster.connect("AB", keepalive=2.0)
        self.assertNoDelayedCalls()
        d = client.out(("job", 1))
        self.flush()
        self.successResultOf(d)
        self.assertNoDelayedCalls(keepalive=2.0)
        self.assertEqual((client.failovers, client.endpoint), (0, "memory:A"))
        self.assertTrue(self.a.link.open)

    def test_withdrawal_by_the_old_server_is_not_seen(self) -> None:
        """
        If A notices the lost connection only after the in_ waits again at B, A's
        withdrawal of the old waiter reaches B as CANCELLED: the client, which did not
        cancel, sends the in_ again, and it still gets its tuple.
        """
        client = self.cluster.connect("AB")
        other = self.cluster.connect("C")
        d = client.in_(("job", int))
        self.flush()
        old = self.a.link
        self.a.state = "down"
        old.cut(server_side=False)
        self.flush()
        old.close_server_side()
        self.flush()
        self.assertNoResult(d)
        self.assertEqual(self.cluster.space.waiting, 1)
        self.assertEqual(
            self.cluster.servers["B"].operations(), [(client.pid, 1, "IN"), (client.pid, 1, "IN")]
        )
        other.out(("job", 3))
        self.flush()
        self.assertEqual(self.successResultOf(d), ("job", 3))

    def test_close_while_failing_over(self) -> None:
        """Closing a client that looks for a server fails its requests; no timer is left."""
        client = self.cluster.connect("AB")
        d = client.rdp(("x",))
        self.b.state = "down"
        self.a.kill()
        self.successResultOf(client.close())
        f = self.failureResultOf(d, ConnectionLost)
        self.assertNotIsInstance(f.value, NoServerAvailable)
        self.assertEqual(client.state, "closed")
        self.failureResultOf(client.rdp(("x",)), ConnectionLost)
        self.assertNoDelayedCalls()

    def test_close_does_not_fail_over(self) -> None:
        """A client closed by its caller stays closed."""
        client = self.cluster.connect("AB")
        d = client.in_(("job", int))
        self.flush()
        closed = client.close()
        self.flush()
        self.successResultOf(closed)
        self.failureResultOf(d, ConnectionLost)
        self.assertEqual((client.failovers, len(self.b.attempts)), (0, 0))
        self.assertFalse(client.connected)

    def test_single_endpoint_fails_as_before(self) -> None:
        """With one endpoint, a lost connection fails the waiting requests at once."""
        client = self.cluster.connect("A")
        d = client.in_(("job", int))
        self.flush()
        self.a.kill()
        self.failureResultOf(d, ConnectionLost)
        self.failureResultOf(client.rdp(("x",)), ConnectionLost)
        self.assertEqual((client.failovers, len(self.a.attempts)), (0, 1))
        self.assertNoDelayedCalls()

    def test_single_endpoint_reconnect(self) -> None:
        """
        With one endpoint and reconnect=True, the client reconnects to it once it is
        back, and its waiting in_ carries on.
        """
        client = self.cluster.connect("A", reconnect=True)
        d = client.in_(("job", int))
        self.flush()
        self.a.kill()
        self.clock.advance(RETRY_DELAY)
        self.assertNoResult(d)
        self.a.state = "up"
        self.clock.advance(RETRY_DELAY * 2)
        self.flush()
        self.assertEqual((client.state, client.failovers), ("connected", 1))
        self.cluster.connect("A").out(("job", 5))
        self.flush()
        self.assertEqual(self.successResultOf(d), ("job", 5))

    def test_reconnect_off(self) -> None:
        """reconnect=False with several endpoints: the first reachable, no failover."""
        client = self.cluster.connect("AB", reconnect=False)
        d = client.rdp(("x",))
        self.a.kill()
        self.failureResultOf(d, ConnectionLost)
        self.assertEqual(len(self.b.attempts), 0)


class EndpointStringTests(SynchronousTestCase):
    def test_endpoint_strings(self) -> None:
        """
        Endpoint strings are parsed with the reactor; the client tries them in order
        and reports the one it is on by its string.
        """
        reactor = MemoryReactorClock()
        reactor.listenTCP(7011, MessageServerFactory(memory_server(reactor)))
        first, second = "tcp:host=127.0.0.1:port=7010", "tcp:host=127.0.0.1:port=7011"
        d = connect(reactor, [first, second])
        completer = iosim.ConnectionCompleter(reactor)
        completer.failOnce()
        pump = completer.succeedOnce()
        assert pump is not None
        pump.flush()
        client = self.successResultOf(d)
        self.assertEqual((client.endpoint, client.server), (second, "memory"))

    def test_no_endpoints(self) -> None:
        """connect needs at least one endpoint."""
        self.assertRaises(ValueError, connect, Clock(), [])
