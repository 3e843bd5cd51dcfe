"""
Tests for L{lips.client} and L{lips.protocols}: the client API and the server's TCP
adapter, paired through in-memory transports under a fake clock.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from lips import ANY, ConnectionLost, OutcomeUnknown, Timeout, TupleError, TupleTooLarge
from lips.client import NoServerAvailable, TupleSpaceClient, connect
from lips.client._core import TIMEOUT_GRACE
from lips.protocols import MessageServerFactory, MessageServerProtocol
from lips.server import LocalBackend
from lips.space import TupleSpace
from lips.testing import memory_client, memory_server
from lips.tuples import (
    MAX_STEPS,
    AbortReason,
    AtomicAborted,
    Limits,
    LTuple,
    Step,
    StepResult,
    Tuples,
    packb,
)
from lips.wire import (
    HEADER,
    MAGIC,
    Error,
    ErrorCode,
    Frame,
    FrameDecoder,
    Hello,
    Out,
    Stored,
    Welcome,
    decode_message,
    encode_frame,
    encode_message,
)


class ClientTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.server = memory_server(self.clock, seed=3)
        self.client, self.pump = memory_client(self.server, self.clock)
        backend = self.server.backend
        assert isinstance(backend, LocalBackend)
        self.space: TupleSpace = backend.space

    def test_round_trips(self) -> None:
        """out, rd, rdp, inp and in_ behave as Linda says, with formals and ANY."""
        c = self.client
        for t in [("job", 1), ("job", 2), ("data", b"\x00", (1.5, None), True)]:
            stored = c.out(t)
            self.pump.flush()
            self.assertIsNone(self.successResultOf(stored))
        checks: list[tuple[defer.Deferred[Any], object]] = [
            (c.rd(("job", int)), ("job", 1)),
            (c.rdp(("data", bytes, (float, ANY), bool)), ("data", b"\x00", (1.5, None), True)),
            (c.inp(("job", int)), ("job", 1)),
            (c.in_(("job", ANY)), ("job", 2)),
            (c.inp(("job", int)), None),
            (c.rdp(("data", int, ANY, ANY)), None),
        ]
        self.pump.flush()
        for d, expected in checks:
            self.assertEqual(self.successResultOf(d), expected)
        self.assertEqual(len(self.space), 1)

    def test_blocking_in_between_clients(self) -> None:
        """An in_ waits until another client's out gives it a tuple."""
        other, pump2 = memory_client(self.server, self.clock)
        d = self.client.in_(("job", int))
        self.pump.flush()
        self.assertNoResult(d)
        other.out(("job", 4))
        pump2.flush()
        self.pump.flush()
        self.assertEqual(self.successResultOf(d), ("job", 4))

    def test_timeout(self) -> None:
        """An in_ with a timeout fails with Timeout and leaves no waiter at the server."""
        d = self.client.in_(("job", int), timeout=2.0)
        self.pump.flush()
        self.clock.advance(2.0)
        self.pump.flush()
        self.failureResultOf(d, Timeout)
        self.assertEqual(self.space.waiting, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_silent_server_guard(self) -> None:
        """
        If the server never answers, the client gives up after timeout plus grace with
        OutcomeUnknown (the take may have happened), never with Timeout, which says a
        server decided that nothing was taken.
        """
        d = self.client.rd(("job", int), timeout=1.0)  # never pumped to the server
        self.clock.advance(1.0 + TIMEOUT_GRACE)
        f = self.failureResultOf(d, OutcomeUnknown)
        self.assertNotIsInstance(f.value, Timeout)

    def test_outcomes_a_caller_can_act_on(self) -> None:
        """A lost connection is an unknown outcome; Timeout is not one."""
        self.assertTrue(issubclass(ConnectionLost, OutcomeUnknown))
        self.assertTrue(issubclass(NoServerAvailable, OutcomeUnknown))
        self.assertFalse(issubclass(Timeout, OutcomeUnknown))

    def test_cancel_withdraws(self) -> None:
        """Cancelling an in_ Deferred withdraws the waiter at the server."""
        d = self.client.in_(("job", int))
        self.pump.flush()
        self.assertEqual(self.space.waiting, 1)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.pump.flush()
        self.assertEqual(self.space.waiting, 0)
        self.assertEqual(self.server.counters["cancels"], 1)

    def test_late_match_of_cancelled_in_is_put_back(self) -> None:
        """
        A tuple taken by an in_ whose caller cancelled while the answer was on its way
        is put back into the space, so nothing is lost.
        """
        other, pump2 = memory_client(self.server, self.clock)
        d = self.client.in_(("job", int))
        self.pump.flush()
        d.cancel()  # the CANCEL is not yet delivered ...
        other.out(("job", 8))  # ... when another client's out answers the in_
        pump2.flush()
        self.assertEqual(len(self.space), 0)
        self.pump.flush()  # CANCEL arrives (too late), the answer arrives, tuple goes back
        self.pump.flush()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(list(self.space.tuples()), [("job", 8)])

    def test_cancel_from_another_answer(self) -> None:
        """
        A caller that cancels its second in_ once the first has its tuple (a race of
        two takes) loses nothing: if the second had a tuple on its way, it goes back.
        """
        other, pump2 = memory_client(self.server, self.clock)
        first, second = self.client.in_(("job", int)), self.client.in_(("job", int))

        def cancel_second(t: LTuple) -> LTuple:
            second.cancel()
            return t

        first.addCallback(cancel_second)
        self.pump.flush()
        other.out(("job", 1))
        other.out(("job", 2))
        pump2.flush()
        self.pump.flush()
        self.pump.flush()
        self.assertEqual(self.successResultOf(first), ("job", 1))
        self.failureResultOf(second, defer.CancelledError)
        self.assertEqual(list(self.space.tuples()), [("job", 2)])
        self.assertEqual(self.space.waiting, 0)

    def test_connection_lost(self) -> None:
        """Requests waiting when the connection drops fail with ConnectionLost."""
        d = self.client.in_(("job", int))
        self.pump.flush()
        closed = self.client.close()
        self.pump.flush()
        self.successResultOf(closed)
        self.failureResultOf(d, ConnectionLost)
        self.assertEqual(self.space.waiting, 0)
        self.failureResultOf(self.client.rdp(("x",)), ConnectionLost)

    def test_invalid_tuple_raises_at_once(self) -> None:
        """A tuple or template that is not valid raises before anything is sent."""
        self.assertRaises(TupleError, self.client.out, ())
        self.assertRaises(TupleError, self.client.out, ("x", 2**64))
        self.assertRaises(TupleError, self.client.out, ("x", int))
        self.assertRaises(TupleError, self.client.in_, ("x", list))
        self.assertEqual(self.client.event, 0)

    def test_oversize_tuple(self) -> None:
        """A tuple over the server's size limit raises TupleTooLarge at the client."""
        server = memory_server(self.clock, limits=Limits(max_size=1024))
        client, _ = memory_client(server, self.clock)
        self.assertRaises(TupleTooLarge, client.out, ("x", b"\x00" * 2000))
        client.out(("x", b"\x00" * 1000))

    def test_larger_server_limit(self) -> None:
        """A server allowing tuples over the default size can send them back to clients."""
        server = memory_server(self.clock, limits=Limits(max_size=3 << 20))
        client, pump = memory_client(server, self.clock)
        big = ("big", b"\x01" * (2 << 20))
        client.out(big)
        pump.flush()
        d = client.in_(("big", bytes))
        pump.flush()
        self.assertEqual(self.successResultOf(d), big)

    def test_stats(self) -> None:
        """stats() returns the server's counters."""
        d = self.client.stats()
        self.pump.flush()
        self.assertEqual(self.successResultOf(d)["hellos"], 1)

    def test_pid_reuse(self) -> None:
        """A client that brings its pid continues as that process."""
        c2, _ = memory_client(self.server, self.clock, pid=self.client.pid)
        self.assertEqual(c2.pid, self.client.pid)


class ConnectTests(SynchronousTestCase):
    def test_single_endpoint_string(self) -> None:
        """
        connect() with one endpoint string reaches that server; losing it fails the
        waiting requests with ConnectionLost, with no attempt to reconnect.
        """
        reactor = MemoryReactorClock()
        reactor.listenTCP(7010, MessageServerFactory(memory_server(reactor)))
        d = connect(reactor, "tcp:host=127.0.0.1:port=7010", name="one")
        pump = iosim.ConnectionCompleter(reactor).succeedOnce()
        assert pump is not None
        pump.flush()
        client = self.successResultOf(d)
        self.assertEqual(
            (client.endpoint, client.state), ("tcp:host=127.0.0.1:port=7010", "connected")
        )
        waiting = client.in_(("job", int))
        pump.flush()
        pump.server.transport.loseConnection()
        pump.flush()
        self.failureResultOf(waiting, ConnectionLost)
        self.assertEqual((reactor.tcpClients, client.failovers), ([], 0))
        self.assertEqual(reactor.getDelayedCalls(), [])


class ServerProtocolTests(SynchronousTestCase):
    """The TCP adapter turns bad bytes into typed errors, counts them, and goes on."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.server = memory_server(self.clock)
        self.transport = StringTransport()
        self.protocol = MessageServerProtocol(self.server)
        self.protocol.makeConnection(self.transport)
        self.decoder = FrameDecoder(1 << 22)
        self.send(encode_message(Hello(None, "raw"), 1))
        [(_, welcome)] = self.replies()
        assert isinstance(welcome, Welcome)

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def replies(self) -> list[tuple[int, object]]:
        data = self.transport.value()
        self.transport.clear()
        out: list[tuple[int, object]] = []
        for frame in self.decoder.feed(data):
            assert isinstance(frame, Frame)
            out.append((frame.request_id, decode_message(frame)))
        return out

    def assertError(self, code: ErrorCode, rid: int) -> None:
        [(got_rid, err)] = self.replies()
        assert isinstance(err, Error), err
        self.assertEqual((got_rid, err.code), (rid, code))
        self.assertEqual(self.server.counters[f"errors.{code.name.lower()}"], 1)

    def assertStillServes(self) -> None:
        self.send(encode_message(Out(100, ("ok",)), 50))
        self.assertEqual(self.replies(), [(50, Stored())])
        self.assertFalse(self.transport.disconnecting)

    def test_bad_crc(self) -> None:
        """A body with a wrong CRC gets BAD_CRC; the stream goes on."""
        frame = bytearray(encode_message(Out(1, ("x",)), 5))
        frame[-1] ^= 0xFF
        self.send(bytes(frame))
        self.assertError(ErrorCode.BAD_CRC, 5)
        self.assertStillServes()

    def test_unknown_type(self) -> None:
        """An unknown message type gets UNKNOWN_TYPE."""
        self.send(encode_frame(99, 6, packb([])))
        self.assertError(ErrorCode.UNKNOWN_TYPE, 6)
        self.assertStillServes()

    def test_malformed_body(self) -> None:
        """A body that is not msgpack, or not the message's shape, gets MALFORMED."""
        self.send(encode_frame(Out.TYPE, 7, b"\xc1"))
        self.assertError(ErrorCode.MALFORMED, 7)
        self.send(encode_frame(Out.TYPE, 8, packb(["one", ("x",)])))
        [(rid, err)] = self.replies()
        assert isinstance(err, Error)
        self.assertEqual((rid, err.code), (8, ErrorCode.MALFORMED))
        self.assertStillServes()

    def test_bad_tuple_and_template(self) -> None:
        """A tuple with a map gets BAD_TUPLE; a template with a bad field BAD_TEMPLATE."""
        self.send(encode_frame(Out.TYPE, 9, packb([1, ("x", {"a": 1})])))
        self.assertError(ErrorCode.BAD_TUPLE, 9)
        self.send(encode_frame(11, 10, packb([2, (), None])))
        [(rid, err)] = self.replies()
        assert isinstance(err, Error)
        self.assertEqual((rid, err.code), (10, ErrorCode.BAD_TEMPLATE))
        self.assertStillServes()

    def test_bad_magic_closes(self) -> None:
        """Bad magic loses the framing: an error reply, then the connection closes."""
        self.send(b"XX" + encode_message(Out(1, ("x",)), 3)[2:])
        self.assertError(ErrorCode.BAD_MAGIC, 0)
        self.assertTrue(self.transport.disconnecting)

    def test_oversize_closes(self) -> None:
        """A length over the limit is refused before the body is read, then closed."""
        header = MAGIC + bytes([1, Out.TYPE]) + (4).to_bytes(4, "big")
        self.send(header + (1 << 30).to_bytes(4, "big") + b"\x00\x00\x00\x00")
        self.assertError(ErrorCode.TOO_LARGE, 4)
        self.assertTrue(self.transport.disconnecting)

    def test_byte_at_a_time(self) -> None:
        """Frames split at every byte boundary are read the same."""
        data = encode_message(Out(1, ("x", 1)), 2) + encode_message(Out(2, ("y",)), 3)
        for i in range(len(data)):
            self.send(data[i : i + 1])
        self.assertEqual(self.replies(), [(2, Stored()), (3, Stored())])
        self.assertEqual(HEADER, 16)

    def test_connection_lost_closes_session(self) -> None:
        """Losing the connection closes the session at the core."""
        self.protocol.connectionLost()
        self.assertEqual(self.server.sessions, set())
        self.assertEqual(self.server.counters["connections_closed"], 1)


class GoodbyeTests(SynchronousTestCase):
    """Who says goodbye when closing, so that servers do not keep logs of the gone."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.server = memory_server(self.clock)
        backend = self.server.backend
        assert isinstance(backend, LocalBackend)
        self.space = backend.space

    def connect(self, pid: int | None) -> tuple[TupleSpaceClient, iosim.IOPump]:
        return memory_client(self.server, self.clock, pid=pid)

    def test_short_sessions_leave_nothing(self) -> None:
        """A thousand short sessions with ids the server gave leave no process log behind."""
        for i in range(1000):
            client, pump = self.connect(None)
            d = client.out(("x", i))
            pump.flush()
            self.successResultOf(d)
            done = client.close()
            pump.flush()
            self.successResultOf(done)
        self.assertEqual((self.space.processes, len(self.space)), (0, 1000))

    def test_a_process_with_its_own_id_is_kept(self) -> None:
        """
        A process with an id of its own may restart and recover: closing keeps its log
        and checkpoint, unless it says goodbye.
        """
        client, pump = self.connect(42)
        d = client.checkpoint({"done": 3})
        pump.flush()
        self.successResultOf(d)
        closed = client.close()
        pump.flush()
        self.successResultOf(closed)
        self.assertIsNotNone(self.space.recovered(42))
        client, pump = self.connect(42)
        closed = client.close(goodbye=True)
        pump.flush()
        self.successResultOf(closed)
        self.assertEqual((self.space.processes, self.space.recovered(42)), (0, None))

    def test_no_goodbye_without_operations(self) -> None:
        """A client that made no operation (a status probe) has nothing to be forgotten."""
        client, pump = self.connect(None)
        d = client.stats()
        pump.flush()
        self.successResultOf(d)
        closed = client.close()
        pump.flush()
        self.successResultOf(closed)
        self.assertEqual(self.server.counters["goodbyes"], 0)


class AtomicClientTests(SynchronousTestCase):
    """C{TupleSpaceClient.atomic} end to end, on a memory server."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.server = memory_server(self.clock, limits=Limits(max_size=1024))
        self.client, self.pump = memory_client(self.server, self.clock)

    def apply(self, steps: list[Step]) -> defer.Deferred[tuple[StepResult, ...]]:
        d = self.client.atomic(steps)
        self.pump.flush()
        return d

    def test_guarded_update(self) -> None:
        """
        The FTM's guarded update: its outs and inps apply only while its epoch tuple
        is there, and the answer lists what each step took or read.
        """
        stored = [self.client.out(("ftm-epoch", 3, 7)), self.client.out(("table", "a", 1))]
        self.pump.flush()
        for d in stored:
            self.successResultOf(d)
        guarded = [
            Step.present(("ftm-epoch", 3, 7)),
            Step.inp(("table", "a", int)),
            Step.out(("table", "a", 2)),
        ]
        self.assertEqual(
            self.successResultOf(self.apply(guarded)), (None, ("table", "a", 1), None)
        )
        self.apply([Step.inp(("ftm-epoch", 3, 7))])
        f = self.failureResultOf(self.apply(guarded), AtomicAborted)
        self.assertEqual((f.value.step, f.value.reason), (0, AbortReason.NO_MATCH))
        read = self.client.rdp(("table", "a", int))
        self.pump.flush()
        self.assertEqual(self.successResultOf(read), ("table", "a", 2))

    def test_scan_and_delete(self) -> None:
        """
        A scan's and a delete's results reach the caller as L{Tuples}, oldest first,
        an empty one for no match, next to the other steps' results.
        """
        self.successResultOf(self.apply([Step.out(("row", 1)), Step.out(("row", 2))]))
        results = self.successResultOf(
            self.apply(
                [
                    Step.scan(("row", int)),
                    Step.rdp(("row", 2)),
                    Step.delete(("row", ANY)),
                    Step.scan(("row", int)),
                ]
            )
        )
        rows = Tuples((("row", 1), ("row", 2)))
        self.assertEqual(results, (rows, ("row", 2), rows, Tuples()))
        self.assertEqual([list(r or ()) for r in results[2:]], [[("row", 1), ("row", 2)], []])

    def test_scan_past_the_size_limit_aborts(self) -> None:
        """A scan whose tuples would not fit in the answer aborts the request, TOO_LARGE."""
        for n in range(3):
            self.successResultOf(self.apply([Step.out(("big", n, b"0" * 400))]))
        f = self.failureResultOf(
            self.apply([Step.out(("x",)), Step.scan(("big", int, bytes))]), AtomicAborted
        )
        self.assertEqual((f.value.step, f.value.reason), (1, AbortReason.TOO_LARGE))
        self.successResultOf(self.apply([Step.absent(("x",))]))

    def test_bounds_at_the_caller(self) -> None:
        """No steps, too many, or steps past the size limit raise before anything is sent."""
        self.assertRaises(ValueError, self.client.atomic, [])
        self.assertRaises(ValueError, self.client.atomic, [Step.out(("x",))] * (MAX_STEPS + 1))
        big = [Step.out(("x", b"0" * 600)), Step.out(("y", b"1" * 600))]
        self.assertRaises(TupleTooLarge, self.client.atomic, big)
        self.assertRaises(TypeError, self.client.atomic, [("x",)])
        self.assertEqual(self.client.event, 0)
