"""
Tests for the bounds of a MessageServer seen through its TCP adapter: refused
connections, incomplete frames (a budget shared by every connection and a deadline per
frame, both the core's), and replies a client does not read (the adapter's own).
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from lips.protocols import MessageServerFactory
from lips.server import LocalBackend, MessageServer, ServerLimits
from lips.space import Kind
from lips.tuples import make_template
from lips.wire import (
    Error,
    ErrorCode,
    Frame,
    FrameDecoder,
    Hello,
    Matched,
    Out,
    Take,
    decode_message,
    encode_message,
)


class _Conn:
    """One connection to the factory's server, through a StringTransport."""

    def __init__(self, factory: MessageServerFactory, host: str = "10.0.0.1") -> None:
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
        self.protocol = factory.buildProtocol(None)
        self.protocol.makeConnection(self.transport)
        self.decoder = FrameDecoder(1 << 24)

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def replies(self) -> list[object]:
        data = self.transport.value()
        self.transport.clear()
        frames = self.decoder.feed(data)
        assert all(isinstance(f, Frame) for f in frames), frames
        return [decode_message(f) for f in frames if isinstance(f, Frame)]

    @property
    def closed(self) -> bool:
        t = self.transport
        return bool(t.disconnecting or getattr(t, "disconnected", False))


class AdapterBoundsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        bounds = ServerLimits(
            max_connections=4,
            max_per_peer=2,
            hello_timeout=0,
            idle_timeout=0,
            max_partial_bytes=10_000,
            partial_timeout=5.0,
            max_unsent_bytes=50_000,
            forget_after=0,
        )
        self.server = MessageServer(LocalBackend(), self.clock, bounds=bounds)
        self.factory = MessageServerFactory(self.server)

    def tearDown(self) -> None:
        for session in list(self.server.sessions):
            self.server.session_closed(session)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_connection_past_the_bound_is_refused_busy(self) -> None:
        """A third connection from one address is told BUSY, why, and closed at once."""
        _Conn(self.factory), _Conn(self.factory)
        third = _Conn(self.factory)
        [error] = third.replies()
        assert isinstance(error, Error)
        self.assertEqual(error.code, ErrorCode.BUSY)
        self.assertIn("the limit for one address", error.message)
        self.assertTrue(third.closed)
        self.assertEqual(len(self.server.sessions), 2)
        third.send(encode_message(Hello(None, "late"), 1))  # ignored, nothing raised
        self.assertEqual(self.server.counters["refused.per_peer"], 1)

    def test_partial_frames_share_one_budget(self) -> None:
        """
        Incomplete frames of every connection count against one budget: the connection
        whose bytes pass it is closed with BUSY; the others keep theirs, and a frame
        completed gives its bytes back.
        """
        a, b = _Conn(self.factory), _Conn(self.factory, "10.0.0.2")
        frame = encode_message(Out(1, ("x", b"." * 6000)), 7)
        for conn in (a, b):
            conn.send(encode_message(Hello(None, "t"), 1))
            conn.replies()
        a.send(frame[:6000])
        self.assertEqual(self.server.core.partial_bytes, 6000)
        b.send(frame[:6000])
        self.assertTrue(b.closed)
        [error] = b.replies()
        assert isinstance(error, Error)
        self.assertEqual(error.code, ErrorCode.BUSY)
        self.assertFalse(a.closed)
        self.assertEqual(self.server.core.partial_bytes, 6000)
        a.send(frame[6000:])
        self.assertEqual(self.server.core.partial_bytes, 0)
        self.assertEqual(self.server.counters["closed.partial_budget"], 1)
        b.protocol.connectionLost()  # nothing counted twice when the close comes
        self.assertEqual(self.server.core.partial_bytes, 0)

    def test_incomplete_frame_deadline(self) -> None:
        """A frame left incomplete past the deadline closes its connection, with a reason."""
        a = _Conn(self.factory)
        a.send(encode_message(Hello(None, "t"), 1))
        a.replies()
        a.send(encode_message(Out(1, ("x",)), 2)[:10])
        self.clock.advance(4.9)
        self.assertFalse(a.closed)
        self.clock.advance(0.1)
        self.assertTrue(a.closed)
        [error] = a.replies()
        assert isinstance(error, Error)
        self.assertIn("incomplete after 5 s", error.message)
        self.assertEqual(self.server.core.partial_bytes, 0)

    def test_each_frame_has_its_own_deadline(self) -> None:
        """
        The deadline is one frame's: a read that completes a frame and begins the next
        gives the new one its whole partial timeout.
        """
        a = _Conn(self.factory)
        a.send(encode_message(Hello(None, "t"), 1))
        a.replies()
        first, second = encode_message(Out(1, ("x",)), 2), encode_message(Out(2, ("y",)), 3)
        a.send(first[:10])
        self.clock.advance(4.0)
        a.send(first[10:] + second[:10])
        self.assertEqual(len(a.replies()), 1)
        self.clock.advance(4.9)
        self.assertFalse(a.closed)
        self.clock.advance(0.1)
        self.assertTrue(a.closed)
        self.assertEqual(self.server.counters["closed.partial_timeout"], 1)

    def test_the_adapter_keeps_no_timer(self) -> None:
        """
        The deadlines of every connection's incomplete frame are the core's timers:
        one delayed call on the clock for all of them, none once they are complete.
        """
        conns = [_Conn(self.factory, f"10.0.0.{n}") for n in range(1, 4)]
        frame = encode_message(Out(1, ("x",)), 2)
        for n, conn in enumerate(conns):
            conn.send(encode_message(Hello(None, "t"), 1))
            self.clock.advance(1.0)
            conn.send(frame[: 10 + n])
            self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        for n, conn in enumerate(conns):
            conn.send(frame[10 + n :])
        self.assertEqual(self.server.core.partial_bytes, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_reader_that_does_not_read(self) -> None:
        """
        When the transport cannot take more replies it pauses the protocol, which stops
        reading the client's requests; replies that pile up past the bound close it,
        and a client that reads again is resumed.
        """
        reader, giver = _Conn(self.factory), _Conn(self.factory, "10.0.0.2")
        for conn in (reader, giver):
            conn.send(encode_message(Hello(None, "t"), 1))
            conn.replies()
        big = ("big", b"." * 20_000)
        giver.send(encode_message(Out(1, big), 2))
        self.assertEqual(self.factory.server.counters["ops.out"], 1)
        reader.protocol.pauseProducing()  # what the transport says when its buffer is full
        self.assertEqual(reader.transport.producerState, "paused")
        reader.protocol.resumeProducing()
        self.assertEqual(reader.transport.producerState, "producing")
        reader.protocol.pauseProducing()
        template = make_template(("big", bytes))
        for event in range(1, 4):
            reader.protocol.server.received(
                reader.protocol.session,  # type: ignore[arg-type]
                Take(Kind.RD, event, template, None),
                10 + event,
            )
        self.assertTrue(reader.closed)
        self.assertEqual(self.server.counters["closed.unread"], 1)
        # What was written before the bound went out, in order; nothing was lost.
        replies = reader.replies()
        self.assertEqual(replies, [Matched(big), Matched(big)])
