"""
Tests for L{lips.server}: the MessageServer core on a local tuple space.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from lips.server import (
    ISpaceBackend,
    LocalBackend,
    MessageServer,
    Operation,
    ServerLimits,
    Session,
)
from lips.space import Completion, Kind, Status, TupleSpace
from lips.testing import MEMORY_BOUNDS, memory_server
from lips.tuples import ANY, make_template
from lips.wire import (
    Cancel,
    Cancelled,
    CheckpointRequest,
    Error,
    ErrorCode,
    Frame,
    FrameDecoder,
    Gone,
    Goodbye,
    Hello,
    Matched,
    Message,
    NoMatch,
    Out,
    Ping,
    Pong,
    Stats,
    StatsRequest,
    Stored,
    Take,
    TimedOut,
    Welcome,
    decode_message,
)


class _Wire:
    """A session's outgoing bytes, decoded."""

    def __init__(self) -> None:
        self.decoder = FrameDecoder(1 << 22)
        self.replies: list[tuple[int, Message]] = []

    def send(self, data: bytes) -> None:
        for frame in self.decoder.feed(data):
            assert isinstance(frame, Frame), frame
            self.replies.append((frame.request_id, decode_message(frame)))

    def take(self) -> list[tuple[int, Message]]:
        out, self.replies = self.replies, []
        return out


def code(message: Message) -> ErrorCode:
    assert isinstance(message, Error), message
    return message.code


def take(kind: Kind, event: int, *fields: object, timeout: float | None = None) -> Take:
    return Take(kind, event, make_template(fields), timeout)


class MessageServerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.server = memory_server(self.clock, seed=1)
        self.space = self.backend_space()

    def backend_space(self) -> TupleSpace:
        backend = self.server.backend
        assert isinstance(backend, LocalBackend)
        return backend.space

    def session(self, pid: int | None = None) -> tuple[Session, _Wire]:
        wire = _Wire()
        s = self.server.open_session(wire.send, "test")
        s.received(Hello(pid, "t"), 1)
        [(rid, welcome)] = wire.take()
        assert isinstance(welcome, Welcome) and rid == 1
        return s, wire

    def tearDown(self) -> None:
        # An open session holds its HELLO or idle timer; closed, nothing is left.
        for session in list(self.server.sessions):
            session.close()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_hello_assigns_or_keeps_pid(self) -> None:
        """A HELLO without a pid is given a fresh one; with a pid, that pid is used."""
        a, _ = self.session()
        b, _ = self.session(pid=42)
        assert a.pid is not None
        self.assertGreater(a.pid, 0)
        self.assertEqual(b.pid, 42)

    def test_second_hello_refused(self) -> None:
        """A session says HELLO once; a second one is an UNEXPECTED error."""
        s, wire = self.session()
        s.received(Hello(None, "again"), 2)
        [(rid, err)] = wire.take()
        self.assertEqual((rid, code(err)), (2, ErrorCode.UNEXPECTED))

    def test_operation_before_hello(self) -> None:
        """An operation before HELLO gets NOT_READY and changes nothing."""
        wire = _Wire()
        s = self.server.open_session(wire.send)
        s.received(Out(1, ("x",)), 7)
        [(rid, err)] = wire.take()
        self.assertIsInstance(err, Error)
        self.assertEqual((rid, code(err)), (7, ErrorCode.NOT_READY))
        self.assertEqual(len(self.space), 0)
        self.assertEqual(self.server.counters["errors.not_ready"], 1)

    def test_out_then_in(self) -> None:
        """out is answered STORED; in of a matching template gets that tuple."""
        s, wire = self.session()
        s.received(Out(1, ("job", 3)), 10)
        s.received(take(Kind.IN, 2, "job", int), 11)
        self.assertEqual(wire.take(), [(10, Stored()), (11, Matched(("job", 3)))])
        self.assertEqual(len(self.space), 0)

    def test_inp_rdp_no_match(self) -> None:
        """inp and rdp answer NO_MATCH at once when nothing matches."""
        s, wire = self.session()
        s.received(take(Kind.INP, 1, "job", int), 2)
        s.received(take(Kind.RDP, 2, ANY), 3)
        self.assertEqual(wire.take(), [(2, NoMatch()), (3, NoMatch())])

    def test_blocking_in_woken_by_other_session(self) -> None:
        """A waiting in is answered when another session's out matches."""
        a, wa = self.session()
        b, wb = self.session()
        a.received(take(Kind.IN, 1, "job", int), 5)
        self.assertEqual(wa.take(), [])
        b.received(Out(1, ("job", 9)), 6)
        self.assertEqual(wa.take(), [(5, Matched(("job", 9)))])
        self.assertEqual(wb.take(), [(6, Stored())])
        self.assertEqual(len(self.space), 0)

    def test_timeout_withdraws_waiter(self) -> None:
        """An in with a timeout answers TIMED_OUT when it expires and leaves no waiter."""
        s, wire = self.session()
        s.received(take(Kind.IN, 1, "job", int, timeout=5.0), 3)
        self.clock.advance(4.9)
        self.assertEqual(wire.take(), [])
        self.clock.advance(0.1)
        self.assertEqual(wire.take(), [(3, TimedOut())])
        self.assertEqual(self.space.waiting, 0)
        self.assertEqual(self.server.counters["timeouts"], 1)

    def test_answer_cancels_timer(self) -> None:
        """An in answered before its timeout leaves no timer behind (checked in tearDown)."""
        s, wire = self.session()
        s.received(take(Kind.RD, 1, "job", int, timeout=5.0), 3)
        s.received(Out(2, ("job", 1)), 4)
        self.assertEqual(wire.take(), [(4, Stored()), (3, Matched(("job", 1)))])
        self.assertEqual(len(self.space), 1)

    def test_cancel(self) -> None:
        """CANCEL of a waiting request answers it CANCELLED and removes the waiter."""
        s, wire = self.session()
        s.received(take(Kind.IN, 1, "job", int), 3)
        s.received(Cancel(3), 4)
        self.assertEqual(wire.take(), [(3, Cancelled())])
        self.assertEqual(self.space.waiting, 0)

    def test_cancel_of_answered_request_is_ignored(self) -> None:
        """CANCEL of a request already answered (or unknown) changes nothing."""
        s, wire = self.session()
        s.received(Out(1, ("a",)), 3)
        s.received(Cancel(3), 4)
        s.received(Cancel(99), 5)
        self.assertEqual(wire.take(), [(3, Stored())])
        self.assertEqual(len(self.space), 1)

    def test_closed_session_withdraws_waiters(self) -> None:
        """When a session closes, its waiting in no longer consumes tuples."""
        a, _ = self.session()
        b, wb = self.session()
        a.received(take(Kind.IN, 1, "job", int, timeout=30.0), 3)
        a.close()
        b.received(Out(1, ("job", 1)), 4)
        self.assertEqual(wb.take(), [(4, Stored())])
        self.assertEqual(len(self.space), 1)
        self.assertEqual(self.space.waiting, 0)

    def test_retry_after_reconnect_is_applied_once(self) -> None:
        """
        The same (pid, event) sent again from a new session gets the first answer and
        is not applied twice.
        """
        a, _wa = self.session(pid=7)
        a.received(Out(1, ("job", 1)), 3)
        a.received(take(Kind.IN, 2, "job", int), 4)
        a.close()
        b, wb = self.session(pid=7)
        b.received(Out(1, ("job", 1)), 30)
        b.received(take(Kind.IN, 2, "job", int), 31)
        self.assertEqual(wb.take(), [(30, Stored()), (31, Matched(("job", 1)))])
        self.assertEqual(len(self.space), 0)
        self.assertEqual(self.space.sequence, 1)

    def test_retry_of_waiting_request_moves_answer(self) -> None:
        """A waiting in re-sent from another session is answered there, once."""
        a, wa = self.session(pid=7)
        a.received(take(Kind.IN, 1, "job", int), 3)
        b, wb = self.session(pid=7)
        b.received(take(Kind.IN, 1, "job", int), 9)
        c, _wc = self.session()
        c.received(Out(1, ("job", 5)), 2)
        self.assertEqual(wa.take(), [])
        self.assertEqual(wb.take(), [(9, Matched(("job", 5)))])
        a.close()
        self.assertEqual(self.space.waiting, 0)

    def test_duplicate_request_id(self) -> None:
        """A request id still waiting in the session cannot be reused."""
        s, wire = self.session()
        s.received(take(Kind.IN, 1, "x", int), 3)
        s.received(Out(2, ("y",)), 3)
        [(_rid, err)] = wire.take()
        self.assertEqual(code(err), ErrorCode.DUPLICATE_REQUEST)
        self.assertEqual(len(self.space), 0)
        s.close()

    def test_stale_event(self) -> None:
        """An event older than the process log remembers is refused as STALE_EVENT."""
        self.server = memory_server(self.clock, log_limit=2)
        s, wire = self.session()
        for e in range(1, 5):
            s.received(Out(e, ("x", e)), e)
        wire.take()
        s.received(Out(1, ("x", 1)), 9)
        [(rid, err)] = wire.take()
        self.assertEqual((rid, code(err)), (9, ErrorCode.STALE_EVENT))
        self.assertEqual(len(self.backend_space()), 4)

    def test_unexpected_message(self) -> None:
        """A server-to-client message sent by a client is an UNEXPECTED error."""
        s, wire = self.session()
        s.received(Stored(), 4)
        [(rid, err)] = wire.take()
        self.assertEqual((rid, code(err)), (4, ErrorCode.UNEXPECTED))

    def test_stats(self) -> None:
        """STATS reports counters and the space's gauges."""
        s, wire = self.session()
        s.received(Out(1, ("x",)), 2)
        s.received(StatsRequest(), 3)
        (_, _stored), (_, stats) = wire.take()
        assert isinstance(stats, Stats)
        self.assertEqual(stats.values["ops.out"], 1)
        self.assertEqual(stats.values["space.tuples"], 1)
        self.assertEqual(stats.values["sessions"], 1)
        self.assertEqual(stats.values["hellos"], 1)


@implementer(ISpaceBackend)
class _ScriptedBackend:
    """A backend that answers only when the test says so, and records what it is asked."""

    def __init__(self) -> None:
        self.on_complete: Callable[[Completion], None] = lambda c: None
        self.submitted: list[Operation] = []
        self.withdrawn: list[tuple[int, int, Status]] = []

    def submit(self, operation: Operation) -> None:
        self.submitted.append(operation)

    def withdraw(self, pid: int, event: int, status: Status) -> None:
        self.withdrawn.append((pid, event, status))

    def recovered(self, pid: int) -> tuple[int, bytes] | None:
        return None

    def gauges(self) -> dict[str, int]:
        return {}


class AnswerPathTests(SynchronousTestCase):
    """
    Every way the server core can end a request, against a backend that decides later
    (as a replica does): a timeout or a cancel asks the backend to decide, and the
    client gets what the backend decided, never a guess of the core's.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.backend = _ScriptedBackend()
        self.server = MessageServer(
            self.backend, self.clock, name="scripted", bounds=MEMORY_BOUNDS
        )
        self.wire = _Wire()
        self.session = self.server.open_session(self.wire.send, "test")
        self.session.received(Hello(7, "t"), 1)
        self.wire.take()

    def tearDown(self) -> None:
        # An open session holds its HELLO or idle timer; closed, nothing is left.
        for session in list(self.server.sessions):
            session.close()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def answer(self, event: int, status: Status, value: tuple[object, ...] | None = None) -> None:
        self.backend.on_complete(Completion(7, event, status, value))

    def test_timeout_asks_the_backend_to_decide(self) -> None:
        """An expired in is withdrawn as TIMED_OUT; the core answers nothing itself."""
        self.session.received(take(Kind.IN, 1, "job", int, timeout=2.0), 3)
        self.clock.advance(2.0)
        self.assertEqual(self.backend.withdrawn, [(7, 1, Status.TIMED_OUT)])
        self.assertEqual(self.wire.take(), [])
        self.answer(1, Status.TIMED_OUT)
        self.assertEqual(self.wire.take(), [(3, TimedOut())])
        self.assertEqual(self.server.counters["timeouts"], 1)

    def test_claim_that_won_before_the_timeout_is_the_answer(self) -> None:
        """If the backend decides that a claim won, the tuple is the answer, not a timeout."""
        self.session.received(take(Kind.IN, 1, "job", int, timeout=0.0), 3)
        self.clock.advance(0)
        self.assertEqual(self.backend.withdrawn, [(7, 1, Status.TIMED_OUT)])
        self.answer(1, Status.MATCHED, ("job", 4))
        self.assertEqual(self.wire.take(), [(3, Matched(("job", 4)))])

    def test_cancel_asks_the_backend_to_decide(self) -> None:
        """A client's CANCEL is withdrawn as WITHDRAWN and answered CANCELLED once decided."""
        self.session.received(take(Kind.RD, 1, "job", int), 3)
        self.session.received(Cancel(3), 4)
        self.assertEqual(self.backend.withdrawn, [(7, 1, Status.WITHDRAWN)])
        self.answer(1, Status.WITHDRAWN)
        self.assertEqual(self.wire.take(), [(3, Cancelled())])
        self.assertEqual(self.server.counters["cancels"], 1)

    def test_closed_session_withdraws_without_an_answer(self) -> None:
        """A lost connection withdraws its waiting requests as CANCELLED, its timers too."""
        self.session.received(take(Kind.IN, 1, "job", int, timeout=9.0), 3)
        self.session.close()
        self.assertEqual(self.backend.withdrawn, [(7, 1, Status.CANCELLED)])
        self.answer(1, Status.CANCELLED)
        self.assertEqual(self.wire.take(), [])

    def test_retry_keeps_one_timer_and_moves_the_answer(self) -> None:
        """A retry from a new session moves the route; the answer goes to the new one."""
        self.session.received(take(Kind.IN, 1, "job", int, timeout=5.0), 3)
        other = _Wire()
        again = self.server.open_session(other.send, "again")
        again.received(Hello(7, "t"), 1)
        other.take()
        again.received(take(Kind.IN, 1, "job", int, timeout=1.0), 9)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.answer(1, Status.MATCHED, ("job", 1))
        self.assertEqual((self.wire.take(), other.take()), ([], [(9, Matched(("job", 1)))]))

    def test_refusals_are_errors_the_client_acts_on(self) -> None:
        """UNAVAILABLE, BUSY and STALE answers become typed errors; the timer goes."""
        for event, status, expected in (
            (1, Status.UNAVAILABLE, ErrorCode.UNAVAILABLE),
            (2, Status.BUSY, ErrorCode.BUSY),
            (3, Status.STALE, ErrorCode.STALE_EVENT),
        ):
            self.session.received(take(Kind.IN, event, "job", int, timeout=3.0), 10 + event)
            self.answer(event, status)
            [(rid, err)] = self.wire.take()
            self.assertEqual((rid, code(err)), (10 + event, expected))

    def test_pending_is_not_an_answer(self) -> None:
        """A PENDING completion leaves the request waiting, its timer armed."""
        self.session.received(take(Kind.IN, 1, "job", int, timeout=1.0), 3)
        self.answer(1, Status.PENDING)
        self.assertEqual(self.wire.take(), [])
        self.clock.advance(1.0)
        self.answer(1, Status.TIMED_OUT)
        self.assertEqual(self.wire.take(), [(3, TimedOut())])

    def test_ping_is_answered_at_once(self) -> None:
        """PING, the client's keepalive probe, gets PONG, before HELLO too."""
        self.session.received(Ping(), 0)
        wire = _Wire()
        fresh = self.server.open_session(wire.send, "fresh")
        fresh.received(Ping(), 5)
        self.assertEqual((self.wire.take(), wire.take()), ([(0, Pong())], [(5, Pong())]))


class LocalDecisionTests(SynchronousTestCase):
    """On one local space, a timeout or cancel is final and logged like any answer."""

    def test_timed_out_event_retried_gets_the_timeout_again(self) -> None:
        """
        An in that timed out, sent again with the same event (its answer was lost), is
        answered TIMED_OUT again and does not take a tuple stored since.
        """
        clock = Clock()
        server = memory_server(clock, seed=1)
        wire = _Wire()
        s = server.open_session(wire.send, "t")
        s.received(Hello(7, "t"), 1)
        s.received(take(Kind.IN, 1, "job", int, timeout=1.0), 2)
        clock.advance(1.0)
        s.received(Out(2, ("job", 1)), 3)
        s.received(take(Kind.IN, 1, "job", int, timeout=1.0), 4)
        self.assertEqual(wire.take()[1:], [(2, TimedOut()), (3, Stored()), (4, TimedOut())])
        backend = server.backend
        assert isinstance(backend, LocalBackend)
        self.assertEqual(len(backend.space), 1)
        s.close()
        self.assertEqual(clock.getDelayedCalls(), [])


class BoundsTests(SynchronousTestCase):
    """What a client can make the server core hold, and how it is refused past a bound."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.bounds = ServerLimits(
            max_connections=3,
            max_per_peer=2,
            hello_timeout=5.0,
            idle_timeout=60.0,
            max_waiting_per_session=2,
            max_waiting=3,
            forget_after=0,
        )
        self.server = MessageServer(LocalBackend(), self.clock, bounds=self.bounds)
        self.aborted: list[Session] = []

    def tearDown(self) -> None:
        for session in list(self.server.sessions):
            session.close()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def open(self, host: str, hello: bool = True) -> tuple[Session, _Wire]:
        self.assertIsNone(self.server.admit(host))
        wire = _Wire()
        box: list[Session] = []
        s = self.server.open_session(
            wire.send, host, host=host, abort=lambda: self.aborted.append(box[0])
        )
        box.append(s)
        if hello:
            s.received(Hello(None, "t"), 1)
            wire.take()
        return s, wire

    def test_connection_caps(self) -> None:
        """Past the per-peer and the server-wide bounds a connection is refused, counted."""
        self.open("10.0.0.1")
        a2, _ = self.open("10.0.0.1")
        reason = self.server.admit("10.0.0.1")
        assert reason is not None
        self.assertIn("the limit for one address", reason)
        self.open("10.0.0.2")
        reason = self.server.admit("10.0.0.3")
        assert reason is not None
        self.assertIn("connections, its limit", reason)
        a2.close()
        self.assertIsNone(self.server.admit("10.0.0.1"))
        self.assertEqual(
            (
                self.server.counters["refused.per_peer"],
                self.server.counters["refused.connections"],
            ),
            (1, 1),
        )

    def test_hello_deadline(self) -> None:
        """A connection that never says HELLO is told why and closed at the deadline."""
        s, wire = self.open("10.0.0.1", hello=False)
        self.clock.advance(4.9)
        self.assertEqual(self.aborted, [])
        self.clock.advance(0.1)
        self.assertEqual(self.aborted, [s])
        [(_, err)] = wire.take()
        self.assertEqual(code(err), ErrorCode.NOT_READY)
        self.assertEqual(self.server.counters["closed.no_hello"], 1)

    def test_idle_connection_closed_but_not_one_that_waits(self) -> None:
        """
        A connection with nothing waiting that says nothing for the idle timeout is
        closed; one whose in_ waits is not, however long, and any word resets the count.
        """
        idle, _ = self.open("10.0.0.1")
        waiting, _ = self.open("10.0.0.2")
        talking, _ = self.open("10.0.0.2")
        waiting.received(take(Kind.IN, 1, "job", int), 2)
        for _ in range(5):
            self.clock.advance(30.0)
            talking.received(Ping(), 0)
        self.assertEqual(self.aborted, [idle])
        self.assertEqual(self.server.counters["closed.idle"], 1)

    def test_waiting_caps(self) -> None:
        """Requests past the per-session and server-wide bounds are refused BUSY, counted."""
        a, wa = self.open("10.0.0.1")
        b, wb = self.open("10.0.0.2")
        for event in (1, 2, 3):
            a.received(take(Kind.IN, event, "job", int), 10 + event)
        [(rid, err)] = wa.take()
        self.assertEqual((rid, code(err)), (13, ErrorCode.BUSY))
        assert isinstance(err, Error)
        self.assertIn("this session has 2 requests waiting", err.message)
        b.received(take(Kind.IN, 1, "job", int), 20)
        b.received(take(Kind.IN, 2, "job", int), 21)
        [(rid, err)] = wb.take()
        self.assertEqual((rid, code(err)), (21, ErrorCode.BUSY))
        self.assertEqual(self.server.counters["refused.waiting_per_session"], 1)
        self.assertEqual(self.server.counters["refused.waiting"], 1)
        # An answered request frees its place; nothing accepted was lost.
        b.received(Out(3, ("job", 1)), 22)
        self.assertEqual(wa.take(), [(11, Matched(("job", 1)))])
        a.received(take(Kind.IN, 3, "job", int), 13)
        self.assertEqual(wa.take(), [])

    def test_bounds_are_validated(self) -> None:
        """A bound that is not a positive count or a number of seconds is refused."""
        for bad in ({"max_connections": 0}, {"idle_timeout": -1}, {"hello_timeout": math.inf}):
            self.assertRaises(ValueError, ServerLimits, **bad)


class GoodbyeTests(SynchronousTestCase):
    """A process that says goodbye is forgotten: its log and its checkpoint."""

    def test_goodbye_forgets_the_process(self) -> None:
        """GOODBYE is answered GONE, and the space keeps nothing of the process."""
        clock = Clock()
        server = memory_server(clock)
        backend = server.backend
        assert isinstance(backend, LocalBackend)
        wire = _Wire()
        s = server.open_session(wire.send, "t")
        s.received(Hello(7, "t"), 1)
        s.received(Out(1, ("x",)), 2)
        s.received(CheckpointRequest(2, b"state"), 3)
        self.assertEqual((backend.space.processes, backend.space.recovered(7)), (1, (2, b"state")))
        s.received(Goodbye(3), 4)
        self.assertEqual(wire.take()[1:], [(2, Stored()), (3, Stored()), (4, Gone())])
        self.assertEqual((backend.space.processes, backend.space.recovered(7)), (0, None))
        self.assertEqual(len(backend.space), 1)  # what it stored stays
        self.assertEqual(server.counters["goodbyes"], 1)


class VanishedTests(SynchronousTestCase):
    """A process the server named that left without a goodbye is forgotten in time."""

    def setUp(self) -> None:
        self.clock = Clock()
        bounds = ServerLimits(hello_timeout=0, idle_timeout=0, forget_after=60.0)
        self.backend = LocalBackend()
        self.server = MessageServer(self.backend, self.clock, bounds=bounds)

    def tearDown(self) -> None:
        for session in list(self.server.sessions):
            session.close()
        self.server.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def session(self, pid: int | None) -> tuple[Session, _Wire]:
        wire = _Wire()
        s = self.server.open_session(wire.send, "t")
        s.received(Hello(pid, "t"), 1)
        return s, wire

    def test_vanished_script_is_forgotten(self) -> None:
        """An unnamed client that drops its connection is forgotten after forget_after."""
        s, _ = self.session(None)
        s.received(Out(1, ("x",)), 2)
        s.close()
        self.clock.advance(59)
        self.assertEqual(self.backend.space.processes, 1)
        self.clock.advance(1)
        self.assertEqual(self.backend.space.processes, 0)
        self.assertEqual(len(self.backend.space), 1)
        self.assertEqual(self.server.counters["forgotten.vanished"], 1)

    def test_a_process_that_goes_on_is_kept(self) -> None:
        """
        One that came back (here, or at another server: its space applied a later
        event) is not forgotten; nor is a process with an id of its own, ever.
        """
        s, _ = self.session(None)
        s.received(Out(1, ("x",)), 2)
        pid = s.pid
        assert pid is not None
        s.close()
        self.backend.space.out(pid, 2, ("y",))  # its next event, applied elsewhere
        own, _ = self.session(42)
        own.received(Out(1, ("z",)), 2)
        own.close()
        self.clock.advance(61)
        self.assertEqual(self.backend.space.processes, 2)
