"""
Tests for L{lips.server}: the MessageServer on a local tuple space, its core alone
(L{ServerCore}, its timers read off its effects), and its one Driver on a Clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from lips.kernel import CancelTimer, StartTimer
from lips.server import (
    Answer,
    ISpaceBackend,
    LocalBackend,
    MessageServer,
    Operation,
    Refusal,
    Refused,
    ServerCore,
    ServerLimits,
    ServerTimer,
    Session,
)
from lips.space import Completion, Kind, Status, TupleSpace
from lips.testing import MEMORY_BOUNDS, memory_server
from lips.tuples import ANY, AbortReason, Step, make_template
from lips.wire import (
    Aborted,
    Atomic,
    Cancel,
    Cancelled,
    CheckpointRequest,
    Committed,
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
        self.server.received(s, Hello(pid, "t"), 1)
        [(rid, welcome)] = wire.take()
        assert isinstance(welcome, Welcome) and rid == 1
        return s, wire

    def tearDown(self) -> None:
        # An open session holds its HELLO or idle timer; closed, nothing is left.
        for session in list(self.server.sessions):
            self.server.session_closed(session)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_hello_assigns_or_keeps_pid(self) -> None:
        """A HELLO without a pid is given a fresh one; with a pid, that pid is used."""
        a, _ = self.session()
        b, _ = self.session(pid=42)
        assert a.pid is not None
        self.assertGreater(a.pid, 0)
        self.assertEqual(b.pid, 42)

    def test_backend_checked(self) -> None:
        """A backend that is not an ISpaceBackend is refused when the server is built."""
        with self.assertRaises(TypeError):
            MessageServer(object(), self.clock)  # type: ignore[arg-type]

    def test_second_hello_refused(self) -> None:
        """A session says HELLO once; a second one is an UNEXPECTED error."""
        s, wire = self.session()
        self.server.received(s, Hello(None, "again"), 2)
        [(rid, err)] = wire.take()
        self.assertEqual((rid, code(err)), (2, ErrorCode.UNEXPECTED))

    def test_operation_before_hello(self) -> None:
        """An operation before HELLO gets NOT_READY and changes nothing."""
        wire = _Wire()
        s = self.server.open_session(wire.send)
        self.server.received(s, Out(1, ("x",)), 7)
        [(rid, err)] = wire.take()
        self.assertIsInstance(err, Error)
        self.assertEqual((rid, code(err)), (7, ErrorCode.NOT_READY))
        self.assertEqual(len(self.space), 0)
        self.assertEqual(self.server.counters["errors.not_ready"], 1)

    def test_out_then_in(self) -> None:
        """out is answered STORED; in of a matching template gets that tuple."""
        s, wire = self.session()
        self.server.received(s, Out(1, ("job", 3)), 10)
        self.server.received(s, take(Kind.IN, 2, "job", int), 11)
        self.assertEqual(wire.take(), [(10, Stored()), (11, Matched(("job", 3)))])
        self.assertEqual(len(self.space), 0)

    def test_inp_rdp_no_match(self) -> None:
        """inp and rdp answer NO_MATCH at once when nothing matches."""
        s, wire = self.session()
        self.server.received(s, take(Kind.INP, 1, "job", int), 2)
        self.server.received(s, take(Kind.RDP, 2, ANY), 3)
        self.assertEqual(wire.take(), [(2, NoMatch()), (3, NoMatch())])

    def test_blocking_in_woken_by_other_session(self) -> None:
        """A waiting in is answered when another session's out matches."""
        a, wa = self.session()
        b, wb = self.session()
        self.server.received(a, take(Kind.IN, 1, "job", int), 5)
        self.assertEqual(wa.take(), [])
        self.server.received(b, Out(1, ("job", 9)), 6)
        self.assertEqual(wa.take(), [(5, Matched(("job", 9)))])
        self.assertEqual(wb.take(), [(6, Stored())])
        self.assertEqual(len(self.space), 0)

    def test_timeout_withdraws_waiter(self) -> None:
        """An in with a timeout answers TIMED_OUT when it expires and leaves no waiter."""
        s, wire = self.session()
        self.server.received(s, take(Kind.IN, 1, "job", int, timeout=5.0), 3)
        self.clock.advance(4.9)
        self.assertEqual(wire.take(), [])
        self.clock.advance(0.1)
        self.assertEqual(wire.take(), [(3, TimedOut())])
        self.assertEqual(self.space.waiting, 0)
        self.assertEqual(self.server.counters["timeouts"], 1)

    def test_answer_cancels_timer(self) -> None:
        """An in answered before its timeout leaves no timer behind (checked in tearDown)."""
        s, wire = self.session()
        self.server.received(s, take(Kind.RD, 1, "job", int, timeout=5.0), 3)
        self.server.received(s, Out(2, ("job", 1)), 4)
        self.assertEqual(wire.take(), [(4, Stored()), (3, Matched(("job", 1)))])
        self.assertEqual(len(self.space), 1)

    def test_cancel(self) -> None:
        """CANCEL of a waiting request answers it CANCELLED and removes the waiter."""
        s, wire = self.session()
        self.server.received(s, take(Kind.IN, 1, "job", int), 3)
        self.server.received(s, Cancel(3), 4)
        self.assertEqual(wire.take(), [(3, Cancelled())])
        self.assertEqual(self.space.waiting, 0)

    def test_cancel_of_answered_request_is_ignored(self) -> None:
        """CANCEL of a request already answered (or unknown) changes nothing."""
        s, wire = self.session()
        self.server.received(s, Out(1, ("a",)), 3)
        self.server.received(s, Cancel(3), 4)
        self.server.received(s, Cancel(99), 5)
        self.assertEqual(wire.take(), [(3, Stored())])
        self.assertEqual(len(self.space), 1)

    def test_closed_session_withdraws_waiters(self) -> None:
        """When a session closes, its waiting in no longer consumes tuples."""
        a, _ = self.session()
        b, wb = self.session()
        self.server.received(a, take(Kind.IN, 1, "job", int, timeout=30.0), 3)
        self.server.session_closed(a)
        self.server.received(b, Out(1, ("job", 1)), 4)
        self.assertEqual(wb.take(), [(4, Stored())])
        self.assertEqual(len(self.space), 1)
        self.assertEqual(self.space.waiting, 0)

    def test_retry_after_reconnect_is_applied_once(self) -> None:
        """
        The same (pid, event) sent again from a new session gets the first answer and
        is not applied twice.
        """
        a, _wa = self.session(pid=7)
        self.server.received(a, Out(1, ("job", 1)), 3)
        self.server.received(a, take(Kind.IN, 2, "job", int), 4)
        self.server.session_closed(a)
        b, wb = self.session(pid=7)
        self.server.received(b, Out(1, ("job", 1)), 30)
        self.server.received(b, take(Kind.IN, 2, "job", int), 31)
        self.assertEqual(wb.take(), [(30, Stored()), (31, Matched(("job", 1)))])
        self.assertEqual(len(self.space), 0)
        self.assertEqual(self.space.sequence, 1)

    def test_retry_of_waiting_request_moves_answer(self) -> None:
        """A waiting in re-sent from another session is answered there, once."""
        a, wa = self.session(pid=7)
        self.server.received(a, take(Kind.IN, 1, "job", int), 3)
        b, wb = self.session(pid=7)
        self.server.received(b, take(Kind.IN, 1, "job", int), 9)
        c, _wc = self.session()
        self.server.received(c, Out(1, ("job", 5)), 2)
        self.assertEqual(wa.take(), [])
        self.assertEqual(wb.take(), [(9, Matched(("job", 5)))])
        self.server.session_closed(a)
        self.assertEqual(self.space.waiting, 0)

    def test_duplicate_request_id(self) -> None:
        """A request id still waiting in the session cannot be reused."""
        s, wire = self.session()
        self.server.received(s, take(Kind.IN, 1, "x", int), 3)
        self.server.received(s, Out(2, ("y",)), 3)
        [(_rid, err)] = wire.take()
        self.assertEqual(code(err), ErrorCode.DUPLICATE_REQUEST)
        self.assertEqual(len(self.space), 0)
        self.server.session_closed(s)

    def test_stale_event(self) -> None:
        """An event older than the process log remembers is refused as STALE_EVENT."""
        self.server = memory_server(self.clock, log_limit=2)
        s, wire = self.session()
        for e in range(1, 5):
            self.server.received(s, Out(e, ("x", e)), e)
        wire.take()
        self.server.received(s, Out(1, ("x", 1)), 9)
        [(rid, err)] = wire.take()
        self.assertEqual((rid, code(err)), (9, ErrorCode.STALE_EVENT))
        self.assertEqual(len(self.backend_space()), 4)

    def test_unexpected_message(self) -> None:
        """A server-to-client message sent by a client is an UNEXPECTED error."""
        s, wire = self.session()
        self.server.received(s, Stored(), 4)
        [(rid, err)] = wire.take()
        self.assertEqual((rid, code(err)), (4, ErrorCode.UNEXPECTED))

    def test_stats(self) -> None:
        """STATS reports counters and the space's gauges."""
        s, wire = self.session()
        self.server.received(s, Out(1, ("x",)), 2)
        self.server.received(s, StatsRequest(), 3)
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
        self.on_complete: Callable[[Answer], None] = lambda c: None
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
        self.server.received(self.session, Hello(7, "t"), 1)
        self.wire.take()

    def tearDown(self) -> None:
        # An open session holds its HELLO or idle timer; closed, nothing is left.
        for session in list(self.server.sessions):
            self.server.session_closed(session)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def answer(self, event: int, status: Status, value: tuple[object, ...] | None = None) -> None:
        self.backend.on_complete(Completion(7, event, status, value))

    def test_timeout_asks_the_backend_to_decide(self) -> None:
        """An expired in is withdrawn as TIMED_OUT; the core answers nothing itself."""
        self.server.received(self.session, take(Kind.IN, 1, "job", int, timeout=2.0), 3)
        self.clock.advance(2.0)
        self.assertEqual(self.backend.withdrawn, [(7, 1, Status.TIMED_OUT)])
        self.assertEqual(self.wire.take(), [])
        self.answer(1, Status.TIMED_OUT)
        self.assertEqual(self.wire.take(), [(3, TimedOut())])
        self.assertEqual(self.server.counters["timeouts"], 1)

    def test_claim_that_won_before_the_timeout_is_the_answer(self) -> None:
        """If the backend decides that a claim won, the tuple is the answer, not a timeout."""
        self.server.received(self.session, take(Kind.IN, 1, "job", int, timeout=0.0), 3)
        self.clock.advance(0)
        self.assertEqual(self.backend.withdrawn, [(7, 1, Status.TIMED_OUT)])
        self.answer(1, Status.MATCHED, ("job", 4))
        self.assertEqual(self.wire.take(), [(3, Matched(("job", 4)))])

    def test_cancel_asks_the_backend_to_decide(self) -> None:
        """A client's CANCEL is withdrawn as WITHDRAWN and answered CANCELLED once decided."""
        self.server.received(self.session, take(Kind.RD, 1, "job", int), 3)
        self.server.received(self.session, Cancel(3), 4)
        self.assertEqual(self.backend.withdrawn, [(7, 1, Status.WITHDRAWN)])
        self.answer(1, Status.WITHDRAWN)
        self.assertEqual(self.wire.take(), [(3, Cancelled())])
        self.assertEqual(self.server.counters["cancels"], 1)

    def test_closed_session_withdraws_without_an_answer(self) -> None:
        """A lost connection withdraws its waiting requests as CANCELLED, its timers too."""
        self.server.received(self.session, take(Kind.IN, 1, "job", int, timeout=9.0), 3)
        self.server.session_closed(self.session)
        self.assertEqual(self.backend.withdrawn, [(7, 1, Status.CANCELLED)])
        self.answer(1, Status.CANCELLED)
        self.assertEqual(self.wire.take(), [])

    def test_retry_keeps_one_timer_and_moves_the_answer(self) -> None:
        """A retry from a new session moves the route; the answer goes to the new one."""
        self.server.received(self.session, take(Kind.IN, 1, "job", int, timeout=5.0), 3)
        other = _Wire()
        again = self.server.open_session(other.send, "again")
        self.server.received(again, Hello(7, "t"), 1)
        other.take()
        self.server.received(again, take(Kind.IN, 1, "job", int, timeout=1.0), 9)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.answer(1, Status.MATCHED, ("job", 1))
        self.assertEqual((self.wire.take(), other.take()), ([], [(9, Matched(("job", 1)))]))

    def test_refusals_are_errors_the_client_acts_on(self) -> None:
        """UNAVAILABLE, BUSY and STALE answers become typed errors; the timer goes."""
        answers: list[tuple[int, Answer, ErrorCode]] = [
            (1, Refused(7, 1, Refusal.UNAVAILABLE), ErrorCode.UNAVAILABLE),
            (2, Refused(7, 2, Refusal.BUSY), ErrorCode.BUSY),
            (3, Completion(7, 3, Status.STALE), ErrorCode.STALE_EVENT),
        ]
        for event, answer, expected in answers:
            self.server.received(
                self.session, take(Kind.IN, event, "job", int, timeout=3.0), 10 + event
            )
            self.backend.on_complete(answer)
            [(rid, err)] = self.wire.take()
            self.assertEqual((rid, code(err)), (10 + event, expected))

    def test_pending_is_not_an_answer(self) -> None:
        """A PENDING completion leaves the request waiting, its timer armed."""
        self.server.received(self.session, take(Kind.IN, 1, "job", int, timeout=1.0), 3)
        self.answer(1, Status.PENDING)
        self.assertEqual(self.wire.take(), [])
        self.clock.advance(1.0)
        self.answer(1, Status.TIMED_OUT)
        self.assertEqual(self.wire.take(), [(3, TimedOut())])

    def test_ping_is_answered_at_once(self) -> None:
        """PING, the client's keepalive probe, gets PONG, before HELLO too."""
        self.server.received(self.session, Ping(), 0)
        wire = _Wire()
        fresh = self.server.open_session(wire.send, "fresh")
        self.server.received(fresh, Ping(), 5)
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
        server.received(s, Hello(7, "t"), 1)
        server.received(s, take(Kind.IN, 1, "job", int, timeout=1.0), 2)
        clock.advance(1.0)
        server.received(s, Out(2, ("job", 1)), 3)
        server.received(s, take(Kind.IN, 1, "job", int, timeout=1.0), 4)
        self.assertEqual(wire.take()[1:], [(2, TimedOut()), (3, Stored()), (4, TimedOut())])
        backend = server.backend
        assert isinstance(backend, LocalBackend)
        self.assertEqual(len(backend.space), 1)
        server.session_closed(s)
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
            self.server.session_closed(session)
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
            self.server.received(s, Hello(None, "t"), 1)
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
        self.server.session_closed(a2)
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
        self.server.received(waiting, take(Kind.IN, 1, "job", int), 2)
        for _ in range(5):
            self.clock.advance(30.0)
            self.server.received(talking, Ping(), 0)
        self.assertEqual(self.aborted, [idle])
        self.assertEqual(self.server.counters["closed.idle"], 1)

    def test_waiting_caps(self) -> None:
        """Requests past the per-session and server-wide bounds are refused BUSY, counted."""
        a, wa = self.open("10.0.0.1")
        b, wb = self.open("10.0.0.2")
        for event in (1, 2, 3):
            self.server.received(a, take(Kind.IN, event, "job", int), 10 + event)
        [(rid, err)] = wa.take()
        self.assertEqual((rid, code(err)), (13, ErrorCode.BUSY))
        assert isinstance(err, Error)
        self.assertIn("this session has 2 requests waiting", err.message)
        self.server.received(b, take(Kind.IN, 1, "job", int), 20)
        self.server.received(b, take(Kind.IN, 2, "job", int), 21)
        [(rid, err)] = wb.take()
        self.assertEqual((rid, code(err)), (21, ErrorCode.BUSY))
        self.assertEqual(self.server.counters["refused.waiting_per_session"], 1)
        self.assertEqual(self.server.counters["refused.waiting"], 1)
        # An answered request frees its place; nothing accepted was lost.
        self.server.received(b, Out(3, ("job", 1)), 22)
        self.assertEqual(wa.take(), [(11, Matched(("job", 1)))])
        self.server.received(a, take(Kind.IN, 3, "job", int), 13)
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
        server.received(s, Hello(7, "t"), 1)
        server.received(s, Out(1, ("x",)), 2)
        server.received(s, CheckpointRequest(2, b"state"), 3)
        self.assertEqual((backend.space.processes, backend.space.recovered(7)), (1, (2, b"state")))
        server.received(s, Goodbye(3), 4)
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
            self.server.session_closed(session)
        self.server.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def session(self, pid: int | None) -> tuple[Session, _Wire]:
        wire = _Wire()
        s = self.server.open_session(wire.send, "t")
        self.server.received(s, Hello(pid, "t"), 1)
        return s, wire

    def test_vanished_script_is_forgotten(self) -> None:
        """An unnamed client that drops its connection is forgotten after forget_after."""
        s, _ = self.session(None)
        self.server.received(s, Out(1, ("x",)), 2)
        self.server.session_closed(s)
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
        self.server.received(s, Out(1, ("x",)), 2)
        pid = s.pid
        assert pid is not None
        self.server.session_closed(s)
        self.backend.space.out(pid, 2, ("y",))  # its next event, applied elsewhere
        own, _ = self.session(42)
        self.server.received(own, Out(1, ("z",)), 2)
        self.server.session_closed(own)
        self.clock.advance(61)
        self.assertEqual(self.backend.space.processes, 2)


class ServerCoreTests(SynchronousTestCase):
    """
    The server core alone, on the core contract: inputs at explicit times, and the
    timers it asks for read off C{drain()} (no clock anywhere).
    """

    HELLO, IDLE, PARTIAL, FORGET = 5.0, 60.0, 30.0, 100.0

    def setUp(self) -> None:
        self.now = 1000.0
        self.bounds = ServerLimits(
            hello_timeout=self.HELLO,
            idle_timeout=self.IDLE,
            partial_timeout=self.PARTIAL,
            forget_after=self.FORGET,
            max_partial_bytes=100,
            max_vanished=2,
        )
        self.backend = LocalBackend()
        self.core = ServerCore(self.backend, name="core", bounds=self.bounds)
        # What a host does: the backend's answers are fed to the core, at the time.
        self.backend.on_complete = lambda c: self.core.completed(c, self.now)
        self.aborted: list[Session] = []

    def at(self, now: float) -> None:
        self.now = now

    def open(self, hello: bool = True, pid: int | None = None) -> tuple[Session, _Wire]:
        wire = _Wire()
        box: list[Session] = []
        s = self.core.open_session(
            wire.send, "t", None, lambda: self.aborted.append(box[0]), self.now
        )
        box.append(s)
        if hello:
            self.core.received(s, Hello(pid, "t"), 1, self.now)
            wire.take()
            self.core.drain()
        return s, wire

    def test_emits_timers_only(self) -> None:
        """The core declares the timer effects, and nothing else."""
        self.assertEqual(ServerCore.emits, frozenset({StartTimer, CancelTimer}))

    def test_hello_deadline_then_idle(self) -> None:
        """
        A new session gets its HELLO deadline (now + hello_timeout); the HELLO cancels
        it and starts the idle timer (now + idle_timeout).
        """
        s, _ = self.open(hello=False)
        self.assertEqual(self.core.drain(), [StartTimer((ServerTimer.HELLO, s.id), 1005.0)])
        self.at(1003.0)
        self.core.received(s, Hello(None, "t"), 1, self.now)
        self.assertEqual(
            self.core.drain(),
            [
                CancelTimer((ServerTimer.HELLO, s.id)),
                StartTimer((ServerTimer.IDLE, s.id), 1003.0 + self.IDLE),
            ],
        )

    def test_hello_overdue(self) -> None:
        """Its HELLO timer due, a silent session is told NOT_READY and aborted."""
        s, wire = self.open(hello=False)
        self.core.drain()
        self.core.timer((ServerTimer.HELLO, s.id), 1005.0)
        [(_, err)] = wire.take()
        self.assertEqual(code(err), ErrorCode.NOT_READY)
        self.assertEqual((self.aborted, self.core.counters["closed.no_hello"]), ([s], 1))
        self.core.session_closed(s, 1005.0)
        self.assertEqual(self.core.drain(), [])  # no timer was left to cancel

    def test_request_timeout_is_a_timer_its_answer_cancels(self) -> None:
        """
        An in with a timeout that waits starts (REQUEST, (pid, event)) at now +
        timeout; its answer cancels it.
        """
        s, wire = self.open(pid=7)
        other, _ = self.open()
        self.at(1010.0)
        self.core.received(s, take(Kind.IN, 1, "job", int, timeout=5.0), 3, self.now)
        key = (ServerTimer.REQUEST, (7, 1))
        [started] = self.core.drain()
        assert isinstance(started, StartTimer)
        self.assertEqual((started.key, started.at - self.now), (key, 5.0))
        self.core.received(other, Out(1, ("job", 2)), 4, self.now)
        self.assertEqual(self.core.drain(), [CancelTimer(key)])
        self.assertEqual(wire.take(), [(3, Matched(("job", 2)))])

    def test_answered_at_once_needs_no_timer(self) -> None:
        """An in with a timeout that matches at once starts no timer at all."""
        s, wire = self.open(pid=7)
        self.core.received(s, Out(1, ("job", 1)), 2, self.now)
        self.core.received(s, take(Kind.IN, 2, "job", int, timeout=5.0), 3, self.now)
        self.assertEqual(self.core.drain(), [])
        self.assertEqual(wire.take(), [(2, Stored()), (3, Matched(("job", 1)))])

    def test_request_timer_due(self) -> None:
        """The REQUEST timer due withdraws the in as timed out; it is answered so."""
        s, wire = self.open(pid=7)
        self.core.received(s, take(Kind.RD, 1, "job", int, timeout=2.0), 3, self.now)
        self.core.drain()
        self.at(1002.0)
        self.core.timer((ServerTimer.REQUEST, (7, 1)), self.now)
        self.assertEqual(wire.take(), [(3, TimedOut())])
        self.assertEqual((self.core.drain(), self.core.counters["timeouts"]), ([], 1))
        self.assertEqual(self.backend.space.waiting, 0)

    def test_retry_keeps_the_first_timer(self) -> None:
        """A retry of a waiting in from another session starts no second timer."""
        a, _ = self.open(pid=7)
        self.core.received(a, take(Kind.IN, 1, "job", int, timeout=5.0), 3, self.now)
        self.core.drain()
        b, _ = self.open(pid=7)
        self.core.received(b, take(Kind.IN, 1, "job", int, timeout=1.0), 9, self.now)
        self.assertEqual(self.core.drain(), [])

    def test_close_cancels_the_session_timers(self) -> None:
        """
        A close cancels the session's idle timer and its requests' timers; a process
        the server named that said no goodbye starts the VANISHED timer.
        """
        s, _ = self.open()
        self.core.received(s, take(Kind.IN, 1, "job", int, timeout=5.0), 3, self.now)
        self.core.drain()
        pid = s.pid
        assert pid is not None
        self.at(1001.0)
        self.core.session_closed(s, self.now)
        self.assertEqual(
            self.core.drain(),
            [
                CancelTimer((ServerTimer.IDLE, s.id)),
                CancelTimer((ServerTimer.REQUEST, (pid, 1))),
                StartTimer(ServerTimer.VANISHED, 1001.0 + self.FORGET),
            ],
        )
        self.core.session_closed(s, self.now)  # seen closed twice: nothing more
        self.assertEqual(self.core.drain(), [])

    def test_idle_timer_checks_again(self) -> None:
        """
        The idle timer due finds a session heard from since: started again for when it
        will have been silent for the limit; one with a request waiting: a whole limit
        on; one silent for the limit with nothing waiting is aborted.
        """
        s, _ = self.open()
        key = (ServerTimer.IDLE, s.id)
        self.at(1030.0)
        self.core.received(s, Ping(), 0, self.now)
        self.core.timer(key, 1060.0)
        self.assertEqual(self.core.drain(), [StartTimer(key, 1090.0)])
        self.core.received(s, take(Kind.IN, 1, "job", int), 2, 1060.0)
        self.core.timer(key, 1090.0)
        self.assertEqual(self.core.drain(), [StartTimer(key, 1150.0)])
        self.core.received(s, Cancel(2), 3, 1100.0)
        self.core.timer(key, 1150.0)
        self.assertEqual(self.core.drain(), [StartTimer(key, 1160.0)])
        self.assertEqual(self.aborted, [])
        self.core.timer(key, 1160.0)
        self.assertEqual((self.core.drain(), self.aborted), ([], [s]))
        self.assertEqual(self.core.counters["closed.idle"], 1)

    def test_one_timer_for_the_vanished(self) -> None:
        """
        Vanished processes share one timer, due for the oldest; when it is due, those
        whose time came are forgotten and it is started for the next.
        """
        a, _ = self.open()
        b, _ = self.open()
        self.core.session_closed(a, 1000.0)
        self.core.drain()
        self.core.session_closed(b, 1010.0)
        self.assertEqual(self.core.drain(), [CancelTimer((ServerTimer.IDLE, b.id))])
        self.at(1100.0)
        self.core.timer(ServerTimer.VANISHED, self.now)
        self.assertEqual(self.core.drain(), [StartTimer(ServerTimer.VANISHED, 1110.0)])
        self.assertEqual(self.core.counters["forgotten.vanished"], 1)
        self.at(1110.0)
        self.core.timer(ServerTimer.VANISHED, self.now)
        self.assertEqual(self.core.drain(), [])
        self.assertEqual(self.core.counters["forgotten.vanished"], 2)
        self.assertEqual(self.backend.space.processes, 0)

    def test_too_many_vanished_moves_the_timer(self) -> None:
        """Past max_vanished the oldest is forgotten at once and the timer moves on."""
        sessions = [self.open()[0] for _ in range(3)]
        for t, s in enumerate(sessions):
            self.core.session_closed(s, 1000.0 + t)
        self.assertEqual(
            [e for e in self.core.drain() if isinstance(e, StartTimer)],
            [StartTimer(ServerTimer.VANISHED, 1100.0), StartTimer(ServerTimer.VANISHED, 1101.0)],
        )
        self.assertEqual(self.core.counters["forgotten.vanished"], 1)

    def test_incomplete_frame_deadline(self) -> None:
        """
        The first incomplete frame starts (PARTIAL, session id) at now + the partial
        timeout; more of the same frame leaves it; a new frame left incomplete starts it
        again; no frame incomplete cancels it.
        """
        s, _ = self.open()
        key = (ServerTimer.PARTIAL, s.id)
        self.assertTrue(self.core.buffered(s, 10, False, 1000.0))
        self.assertEqual(self.core.drain(), [StartTimer(key, 1030.0)])
        self.assertTrue(self.core.buffered(s, 20, False, 1005.0))
        self.assertEqual(self.core.drain(), [])
        self.assertTrue(self.core.buffered(s, 7, True, 1008.0))
        self.assertEqual(self.core.drain(), [StartTimer(key, 1038.0)])
        self.assertEqual(self.core.partial_bytes, 7)
        self.assertTrue(self.core.buffered(s, 0, True, 1009.0))
        self.assertEqual((self.core.drain(), self.core.partial_bytes), ([CancelTimer(key)], 0))

    def test_incomplete_frame_overdue(self) -> None:
        """The PARTIAL timer due tells the session MALFORMED, releases its bytes, aborts."""
        s, wire = self.open()
        self.core.buffered(s, 10, False, 1000.0)
        self.core.drain()
        self.core.timer((ServerTimer.PARTIAL, s.id), 1030.0)
        [(_, err)] = wire.take()
        self.assertEqual(code(err), ErrorCode.MALFORMED)
        self.assertEqual((self.aborted, self.core.partial_bytes), ([s], 0))
        self.assertEqual(self.core.counters["closed.partial_timeout"], 1)

    def test_partial_budget(self) -> None:
        """
        Bytes past the shared budget refuse the session whose bytes passed it (BUSY,
        aborted, its bytes and deadline released); the others keep theirs.
        """
        a, _ = self.open()
        b, wire = self.open()
        self.core.buffered(a, 60, False, 1000.0)
        self.core.buffered(b, 30, False, 1000.0)
        self.core.drain()
        self.assertFalse(self.core.buffered(b, 50, False, 1001.0))
        self.assertEqual(self.core.drain(), [CancelTimer((ServerTimer.PARTIAL, b.id))])
        [(_, err)] = wire.take()
        self.assertEqual(code(err), ErrorCode.BUSY)
        self.assertEqual((self.aborted, self.core.partial_bytes), ([b], 60))
        self.assertEqual(self.core.counters["closed.partial_budget"], 1)
        self.core.session_closed(a, 1002.0)
        self.assertEqual(self.core.partial_bytes, 0)

    def test_stop_cancels_every_timer(self) -> None:
        """
        stop() cancels every pending timer (sessions', requests', the vanished one),
        and no timer is started after it.
        """
        fresh, _ = self.open(hello=False)
        s, _ = self.open(pid=7)
        gone, _ = self.open()
        self.core.received(s, take(Kind.IN, 1, "job", int, timeout=5.0), 3, self.now)
        self.core.buffered(s, 10, False, self.now)
        self.core.session_closed(gone, self.now)
        self.core.drain()
        self.core.stop(self.now)
        self.assertEqual(
            set(self.core.drain()),
            {
                CancelTimer(ServerTimer.VANISHED),
                CancelTimer((ServerTimer.HELLO, fresh.id)),
                CancelTimer((ServerTimer.IDLE, s.id)),
                CancelTimer((ServerTimer.PARTIAL, s.id)),
                CancelTimer((ServerTimer.REQUEST, (7, 1))),
            },
        )
        late, _ = self.open(hello=False)
        self.core.received(late, Hello(None, "t"), 1, self.now)
        self.core.received(late, take(Kind.IN, 1, "job", int, timeout=5.0), 2, self.now)
        self.core.session_closed(late, self.now)
        self.assertEqual(self.core.drain(), [])

    def test_timer_keys(self) -> None:
        """
        A key of a subject gone meanwhile does nothing; a key the core never starts is
        a programming error.
        """
        s, _ = self.open()
        self.core.session_closed(s, self.now)
        self.core.drain()
        for gone in (
            (ServerTimer.IDLE, s.id),
            (ServerTimer.HELLO, 99),
            (ServerTimer.PARTIAL, s.id),
            (ServerTimer.REQUEST, (1, 1)),
        ):
            self.core.timer(gone, self.now)
        self.assertEqual((self.core.drain(), self.aborted), ([], []))
        for bad in (
            ServerTimer.HELLO,
            (ServerTimer.VANISHED, 1),
            (ServerTimer.REQUEST, 1),
            (ServerTimer.IDLE, "one"),
            (Kind.IN, 1),
        ):
            self.assertRaises(ValueError, self.core.timer, bad, self.now)


class DriverTests(SynchronousTestCase):
    """The MessageServer: the core's timers run by one Driver on the clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        bounds = ServerLimits(
            hello_timeout=5.0, idle_timeout=60.0, partial_timeout=30.0, forget_after=100.0
        )
        self.server = MessageServer(LocalBackend(), self.clock, bounds=bounds)
        self.calls: list[int] = []

    def step(self, seconds: float = 0.0) -> None:
        self.clock.advance(seconds)
        self.calls.append(len(self.clock.getDelayedCalls()))

    def open(self, pid: int | None) -> tuple[Session, _Wire]:
        wire = _Wire()
        s = self.server.open_session(wire.send, "t")
        self.server.received(s, Hello(pid, "t"), 1)
        return s, wire

    def test_one_delayed_call_for_every_timer(self) -> None:
        """
        Sessions, incomplete frames, waiting requests and vanished processes keep at
        most one delayed call on the clock, due at the earliest deadline; once the
        server stops, none is left.
        """
        waiting, wire = self.open(7)
        named, _ = self.open(None)
        silent = self.server.open_session(lambda data: None, "silent")
        self.server.received(waiting, take(Kind.IN, 1, "job", int, timeout=2.0), 2)
        self.server.received(waiting, take(Kind.IN, 2, "job", int, timeout=3.0), 3)
        self.server.buffered(named, 10, False)
        self.server.session_closed(named)
        (call,) = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), 2.0)
        for _ in range(8):
            self.step(1.0)
        self.assertEqual(wire.take()[1:], [(2, TimedOut()), (3, TimedOut())])
        self.assertEqual(self.server.counters["closed.no_hello"], 1)
        self.assertLessEqual(max(self.calls), 1)
        self.server.session_closed(silent)
        self.server.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.server.session_closed(waiting)  # after the stop: nothing is started
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.server.driver.stats()["errors.core"], 0)

    def test_answer_leaves_no_call(self) -> None:
        """A request answered before its timeout takes its timer off the clock."""
        s, _ = self.open(7)
        self.server.received(s, take(Kind.RD, 1, "job", int, timeout=5.0), 2)
        self.assertEqual([c.getTime() for c in self.clock.getDelayedCalls()], [5.0])
        self.server.received(s, Out(2, ("job", 1)), 3)
        self.clock.advance(5.0)  # the call set for the timeout finds nothing due
        self.assertEqual(self.server.counters["timeouts"], 0)
        self.server.session_closed(s)
        self.server.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_memory_server_keeps_no_timer(self) -> None:
        """The in-memory server (MEMORY_BOUNDS) holds no timer of its own."""
        server = memory_server(self.clock)
        wire = _Wire()
        s = server.open_session(wire.send, "t")
        server.received(s, Hello(None, "t"), 1)
        server.received(s, take(Kind.IN, 1, "job", int), 2)
        server.session_closed(s)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class AtomicServerTests(SynchronousTestCase):
    """ATOMIC requests through the MessageServer and the LocalBackend."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.server = memory_server(self.clock, seed=1)
        backend = self.server.backend
        assert isinstance(backend, LocalBackend)
        self.space = backend.space

    def session(self, pid: int) -> tuple[Session, _Wire]:
        wire = _Wire()
        s = self.server.open_session(wire.send, "test")
        self.server.received(s, Hello(pid, "t"), 1)
        [(_, welcome)] = wire.take()
        assert isinstance(welcome, Welcome)
        return s, wire

    def tearDown(self) -> None:
        for session in list(self.server.sessions):
            self.server.session_closed(session)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_committed_and_aborted(self) -> None:
        """A request that holds is answered COMMITTED; one that fails, ABORTED."""
        s, wire = self.session(pid=7)
        self.server.received(s, Out(1, ("ftm-epoch", 3, 7)), 2)
        steps = (Step.present(("ftm-epoch", 3, 7)), Step.out(("row", 1)))
        self.server.received(s, Atomic(2, steps), 3)
        self.server.received(s, Atomic(3, (Step.inp(("row", 1)), Step.inp(("row", 2)))), 4)
        self.assertEqual(
            wire.take(),
            [(2, Stored()), (3, Committed((None, None))), (4, Aborted(1, AbortReason.NO_MATCH))],
        )
        self.assertEqual(list(self.space.tuples()), [("ftm-epoch", 3, 7), ("row", 1)])
        self.assertEqual(self.server.stats()["ops.atomic"], 2)

    def test_retry_is_answered_from_the_log(self) -> None:
        """The same event sent again, in another session, gets its first answer."""
        s, _ = self.session(pid=7)
        self.server.received(s, Out(1, ("token",)), 2)
        move = Atomic(2, (Step.inp(("token",)), Step.out(("moved",))))
        self.server.received(s, move, 3)
        self.server.session_closed(s)
        s2, wire2 = self.session(pid=7)
        self.server.received(s2, Out(3, ("token",)), 2)
        self.server.received(s2, move, 3)
        self.assertEqual(wire2.take(), [(2, Stored()), (3, Committed((("token",), None)))])
        self.assertEqual(list(self.space.tuples()), [("moved",), ("token",)])

    def test_atomic_outs_serve_waiters(self) -> None:
        """A waiting in_ of another session gets a tuple a committed request stored."""
        a, wire_a = self.session(pid=7)
        b, wire_b = self.session(pid=8)
        self.server.received(b, take(Kind.IN, 1, "job", int), 2)
        self.server.received(a, Atomic(1, (Step.absent(("stop",)), Step.out(("job", 5)))), 2)
        self.assertEqual(wire_a.take(), [(2, Committed((None, None)))])
        self.assertEqual(wire_b.take(), [(2, Matched(("job", 5)))])
