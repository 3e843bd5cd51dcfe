"""
The Deferred-returning client API.

    space = await lips.client.connect(reactor, "tcp:host=127.0.0.1:port=7010")
    await space.out(("job", 1))
    job = await space.in_(("job", int), timeout=5)

Every operation carries this process's id and the next event number, so the server
applies it exactly once however often it is sent.  A template operation that waits
(C{in_}, C{rd}) can be bounded by a timeout, kept by the server, and withdrawn by
cancelling its Deferred; either way no waiter is left behind.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import attrs
from twisted.internet import defer
from twisted.internet.endpoints import clientFromString, connectProtocol
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from lips.errors import ConnectionLost, LipsError, ProtocolViolation, RequestError, Timeout
from lips.space import Kind
from lips.tuples import (
    DEFAULT_LIMITS,
    Limits,
    LTuple,
    Template,
    TupleTooLarge,
    make_template,
    make_tuple,
    packb,
)
from lips.wire import (
    HEADER,
    Cancel,
    Cancelled,
    Error,
    Frame,
    FrameDecoder,
    Hello,
    Matched,
    Message,
    MessageError,
    NoMatch,
    Out,
    Stats,
    StatsRequest,
    Stored,
    Take,
    TimedOut,
    Welcome,
    decode_message,
    encode_message,
)

__all__ = ["TupleSpaceClient", "connect"]

#: How long past a request's own timeout the client waits for the server's answer.
TIMEOUT_GRACE: Final = 5.0
_BODY_OVERHEAD: Final = 4096


@attrs.define(eq=False)
class _Pending:
    deferred: defer.Deferred[Any]
    message: Message
    guard: IDelayedCall | None = None
    abandoned: bool = False


class _ClientProtocol(Protocol):
    """Frames in, answers to the waiting Deferreds; requests out."""

    log = Logger()

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.decoder = FrameDecoder(DEFAULT_LIMITS.max_size + _BODY_OVERHEAD)
        self.pending: dict[int, _Pending] = {}
        self._next_request = 0
        self.lost: Failure | None = None
        self.on_late_match: Any = None
        self.on_lost: list[defer.Deferred[None]] = []
        self.limits = _reply_limits(DEFAULT_LIMITS.max_size)

    def request(
        self, message: Message, timeout: float | None = None, max_size: int | None = None
    ) -> defer.Deferred[Any]:
        """
        Send C{message}; the Deferred fires with the answer.

        @param max_size: for an C{Out}, the server's tuple size limit, checked here so
            that an oversize tuple fails at once instead of at the server.
        """
        if self.lost is not None:
            return defer.fail(ConnectionLost(str(self.lost.value)))
        rid = (self._next_request % 0xFFFFFFFF) + 1
        frame = encode_message(message, rid)
        if max_size is not None and len(frame) - HEADER > max_size:
            assert isinstance(message, Out)
            if len(packb(message.tuple)) > max_size:
                raise TupleTooLarge(f"tuple encodes to more than {max_size} bytes")
        self._next_request = rid
        d: defer.Deferred[Any] = defer.Deferred(lambda d: self._abandon(rid))
        pending = self.pending[rid] = _Pending(d, message)
        if timeout is not None:
            pending.guard = self.clock.callLater(timeout + TIMEOUT_GRACE, self._guard, rid)
        assert self.transport is not None
        self.transport.write(frame)
        return d

    def _abandon(self, rid: int) -> None:
        """The caller cancelled: withdraw the request at the server, stop waiting."""
        p = self.pending.get(rid)
        if p is None or p.abandoned:
            return
        p.abandoned = True
        self._stop_guard(p)
        if self.lost is None and self.transport is not None:
            self.transport.write(encode_message(Cancel(rid), 0))

    def _guard(self, rid: int) -> None:
        p = self.pending.get(rid)
        if p is None:
            return
        p.guard = None
        p.deferred.errback(Timeout("the server did not answer in time"))
        self._abandon(rid)

    def _stop_guard(self, p: _Pending) -> None:
        if p.guard is not None:
            if p.guard.active():
                p.guard.cancel()
            p.guard = None

    def dataReceived(self, data: bytes) -> None:
        for item in self.decoder.feed(data):
            if type(item) is not Frame:
                assert not isinstance(item, Frame)
                self._violation(f"bad frame from server: {item.message}")
                return
            try:
                message = decode_message(item, self.limits)
            except MessageError as e:
                self._violation(f"bad message from server: {e.message}")
                return
            p = self.pending.pop(item.request_id, None)
            if p is None:
                continue  # the answer to a CANCEL, or to a request given up on
            self._stop_guard(p)
            if p.abandoned:
                self._late(p, message)
            else:
                self._answer(p, message)

    def _answer(self, p: _Pending, message: Message) -> None:
        d = p.deferred
        if isinstance(message, Error):
            d.errback(RequestError(message.code, message.message))
        elif isinstance(message, TimedOut):
            d.errback(Timeout("no matching tuple arrived in time"))
        elif isinstance(message, Cancelled):
            d.errback(defer.CancelledError())
        else:
            d.callback(message)

    def _late(self, p: _Pending, message: Message) -> None:
        """
        An answer to a request the caller gave up on.  If it took a tuple out of the
        space, put the tuple back so that nothing is lost.
        """
        req = p.message
        if (
            isinstance(message, Matched)
            and isinstance(req, Take)
            and req.kind.removes
            and self.on_late_match is not None
        ):
            self.on_late_match(message.tuple)

    def _violation(self, why: str) -> None:
        self.log.error("Closing the connection: {why}", why=why)
        assert self.transport is not None
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = reason
        pending, self.pending = self.pending, {}
        for p in pending.values():
            self._stop_guard(p)
            if not p.abandoned:
                p.deferred.errback(ConnectionLost(str(reason.value)))
        waiting, self.on_lost = self.on_lost, []
        for d in waiting:
            d.callback(None)


class TupleSpaceClient:
    """
    A connection to a LiPS tuple space as process C{pid}.

    Tuples and templates are plain Python tuples (or lists).  In a template a field may
    be a formal type (C{int}, C{float}, C{str}, C{bytes}, C{bool}) or L{lips.ANY}.  A tuple
    or template that is not valid raises L{lips.tuples.TupleError} at once.
    """

    def __init__(self, protocol: _ClientProtocol, welcome: Welcome, first_event: int = 1) -> None:
        self._protocol = protocol
        self.pid = welcome.pid
        self.server = welcome.server
        self.max_size = welcome.max_size
        self._event = first_event - 1
        protocol.on_late_match = self._put_back
        # Answers carry tuples up to the server's limits, which may exceed the defaults.
        protocol.limits = _reply_limits(self.max_size)
        protocol.decoder.max_body = max(protocol.decoder.max_body, self.max_size + _BODY_OVERHEAD)

    @property
    def connected(self) -> bool:
        return self._protocol.lost is None

    @property
    def event(self) -> int:
        """The event number of the last operation this client made."""
        return self._event

    def _next_event(self) -> int:
        self._event += 1
        return self._event

    def out(self, values: Sequence[Any]) -> defer.Deferred[None]:
        """Store a tuple.  Fires with C{None} once the server has applied it."""
        message = Out(self._event + 1, make_tuple(values))
        d = self._protocol.request(message, max_size=self.max_size)
        self._event += 1
        return d.addCallback(_expect, Stored).addCallback(lambda _: None)

    def in_(
        self, template: Sequence[Any] | Template, timeout: float | None = None
    ) -> defer.Deferred[LTuple]:
        """Take the oldest matching tuple out of the space, waiting for one if need be."""
        return self._take(Kind.IN, template, timeout)

    def rd(
        self, template: Sequence[Any] | Template, timeout: float | None = None
    ) -> defer.Deferred[LTuple]:
        """Read the oldest matching tuple, waiting for one if need be."""
        return self._take(Kind.RD, template, timeout)

    def inp(self, template: Sequence[Any] | Template) -> defer.Deferred[LTuple | None]:
        """Take the oldest matching tuple, or fire with C{None} at once if there is none."""
        return self._take(Kind.INP, template, None)

    def rdp(self, template: Sequence[Any] | Template) -> defer.Deferred[LTuple | None]:
        """Read the oldest matching tuple, or fire with C{None} at once if there is none."""
        return self._take(Kind.RDP, template, None)

    def stats(self) -> defer.Deferred[dict[str, int | float | str]]:
        """The server's counters and gauges."""
        d = self._protocol.request(StatsRequest())
        return d.addCallback(_expect, Stats).addCallback(lambda s: s.values)

    def close(self) -> defer.Deferred[None]:
        """Close the connection; waiting operations at the server are withdrawn."""
        protocol = self._protocol
        if protocol.lost is not None or protocol.transport is None:
            return defer.succeed(None)
        done: defer.Deferred[None] = defer.Deferred()
        protocol.on_lost.append(done)
        protocol.transport.loseConnection()
        return done

    def _take(
        self, kind: Kind, template: Sequence[Any] | Template, timeout: float | None
    ) -> defer.Deferred[Any]:
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must not be negative")
        tmpl = make_template(template)
        d = self._protocol.request(Take(kind, self._next_event(), tmpl, timeout), timeout)
        return d.addCallback(_taken)

    def _put_back(self, values: LTuple) -> None:
        Logger().info("Returning a tuple taken by a cancelled in_: {t!r}", t=values)
        self.out(values).addErrback(
            lambda f: Logger().failure("Could not return a tuple to the space", f)
        )


def _reply_limits(max_size: int) -> Limits:
    """
    Limits for checking a server's answers: its size limit (from WELCOME), and arity and
    depth bounds wide enough for whatever limits the server was configured with.
    """
    return Limits(max_arity=1 << 16, max_depth=64, max_size=max(max_size, 16))


def _expect(message: Message, kind: type) -> Any:
    if not isinstance(message, kind):
        raise ProtocolViolation(f"expected {kind.__name__}, got {type(message).__name__}")
    return message


def _taken(message: Message) -> LTuple | None:
    if isinstance(message, Matched):
        return message.tuple
    if isinstance(message, NoMatch):
        return None
    raise ProtocolViolation(f"unexpected answer {type(message).__name__}")


async def _connect(
    reactor: Any,
    endpoint: IStreamClientEndpoint,
    pid: int | None,
    name: str,
) -> TupleSpaceClient:
    protocol = _ClientProtocol(reactor)
    await connectProtocol(endpoint, protocol)
    try:
        welcome = await protocol.request(Hello(pid, name))
    except LipsError:
        assert protocol.transport is not None
        protocol.transport.loseConnection()
        raise
    if not isinstance(welcome, Welcome):
        assert protocol.transport is not None
        protocol.transport.loseConnection()
        raise ProtocolViolation(f"expected Welcome, got {type(welcome).__name__}")
    return TupleSpaceClient(protocol, welcome)


def connect(
    reactor: Any,
    endpoint: str | IStreamClientEndpoint,
    *,
    pid: int | None = None,
    name: str = "",
) -> defer.Deferred[TupleSpaceClient]:
    """
    Connect to a MessageServer.

    @param endpoint: a Twisted client endpoint or its string description, such as
        C{"tcp:host=127.0.0.1:port=7010"} or, with TLS,
        C{"ssl:host=...:port=...:caCertsDir=...:hostname=..."}.
    @param pid: this process's id, to continue as a process that has connected before;
        C{None} to be given a new one.
    @return: a Deferred firing with a L{TupleSpaceClient}.
    """
    ep = clientFromString(reactor, endpoint) if isinstance(endpoint, str) else endpoint
    return defer.Deferred.fromCoroutine(_connect(reactor, ep, pid, name))
