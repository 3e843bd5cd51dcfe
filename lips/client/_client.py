"""
The Deferred-returning client API.

    space = await lips.client.connect(reactor, "tcp:host=127.0.0.1:port=7010")
    await space.out(("job", 1))
    job = await space.in_(("job", int), timeout=5)

Every operation carries this process's id and the next event number, so the server
applies it exactly once however often it is sent.  A template operation that waits
(C{in_}, C{rd}) can be bounded by a timeout, kept by the server, and withdrawn by
cancelling its Deferred; either way no waiter is left behind.

Given several endpoints (the MessageServers of one replicated space), the client fails
over: when its connection is lost, or its server answers UNAVAILABLE, it connects to the
next endpoint, says HELLO as the same process and sends every unanswered request again
with the same event number, so each is still applied exactly once.  The caller sees a
delay, or L{NoServerAvailable} if no server can be reached within the failover timeout.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Sequence
from operator import attrgetter
from pathlib import Path
from typing import Any, Final, TypeAlias

import attrs
from twisted.internet import defer
from twisted.internet.endpoints import clientFromString, connectProtocol
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from lips.client import _checkpoint
from lips.errors import ConnectionLost, OutcomeUnknown, ProtocolViolation, RequestError, Timeout
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
    CheckpointRequest,
    Error,
    ErrorCode,
    Frame,
    FrameDecoder,
    Goodbye,
    Hello,
    Matched,
    Message,
    MessageError,
    NoMatch,
    Out,
    Ping,
    Recovered,
    RecoverRequest,
    Stats,
    StatsRequest,
    Stored,
    Take,
    TimedOut,
    Welcome,
    decode_message,
    encode_message,
)

__all__ = ["NoServerAvailable", "TupleSpaceClient", "connect"]

#: How long past a request's own timeout the client waits for the server's answer.
TIMEOUT_GRACE: Final = 5.0
#: How long a client that lost its server keeps trying to reach one, by default.
FAILOVER_TIMEOUT: Final = 10.0
#: How long one attempt at one server (connecting and the HELLO) may take, by default.
ATTEMPT_TIMEOUT: Final = 5.0
#: The pause after a round in which no endpoint could be reached; it doubles with every
#: further round, up to L{MAX_RETRY_DELAY}.
RETRY_DELAY: Final = 0.5
MAX_RETRY_DELAY: Final = 2.0
#: How long a server must keep a client that failed over to it before a later failover
#: starts its count (of the failover timeout and the rounds) afresh.
SETTLE_TIME: Final = 3.0
#: How long a server may stay silent while requests wait on it before the client asks
#: for a sign of life, and then again before it moves to another server: a hung server
#: (stopped, or cut off without a FIN or RST) loses its clients within twice this.  On
#: loopback a healthy server answers a probe within milliseconds even flat out; on a
#: LAN, keep it well above the round trip plus the server's longest pause.
KEEPALIVE: Final = 0.5
#: How long C{close} waits for the server to confirm a GOODBYE before it closes anyway.
GOODBYE_TIMEOUT: Final = 2.0
_BODY_OVERHEAD: Final = 4096

Endpoints: TypeAlias = str | IStreamClientEndpoint | Sequence[str | IStreamClientEndpoint]
"""One endpoint (or its string description), or several, in the order to try them."""


class NoServerAvailable(ConnectionLost):
    """
    No server could be reached: when connecting, at none of the endpoints; when failing
    over, at none within the failover timeout.  A client that failed over in vain fails
    its waiting requests and every later call with this error.
    """


_serials = itertools.count()


@attrs.define(eq=False)
class _Pending:
    """
    One request until it is answered, across the connections it is sent on.

    @ivar deadline: for a request with a timeout, when (on the clock) the caller's
        timeout ends; a request sent again asks the next server for what is left.
    @ivar abandoned: the caller cancelled it or gave up on it; an answer that comes all
        the same goes to L{_ClientProtocol._late}.
    @ivar connection: where it was last sent, while that connection holds it; C{None}
        while it waits for the client's next connection.
    @ivar rid: its request id on C{connection}.
    @ivar sends: how many times it was sent.
    @ivar serial: the order the caller made its requests in, kept when they are re-sent.
    """

    message: Message
    deadline: float | None = None
    guard: IDelayedCall | None = None
    abandoned: bool = False
    connection: _ClientProtocol | None = None
    rid: int = 0
    sends: int = 0
    serial: int = attrs.field(factory=lambda: next(_serials))
    deferred: defer.Deferred[Any] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.deferred = defer.Deferred(self._cancelled)

    def _cancelled(self, _: defer.Deferred[Any]) -> None:
        self.abandon()

    def start_guard(self, clock: IReactorTime, timeout: float) -> None:
        """Give up on the server if it has not answered a little after C{timeout}."""
        self.deadline = clock.seconds() + timeout
        self.guard = clock.callLater(timeout + TIMEOUT_GRACE, self._guard_fired)

    def _guard_fired(self) -> None:
        self.guard = None
        self.deferred.errback(
            OutcomeUnknown(
                f"no answer {TIMEOUT_GRACE:g} s past the operation's timeout: it may or may"
                " not have taken effect"
            )
        )
        self.abandon()

    def stop_guard(self) -> None:
        if self.guard is not None:
            if self.guard.active():
                self.guard.cancel()
            self.guard = None

    def abandon(self) -> None:
        """The caller gave up: stop waiting, and withdraw it at the server it was sent to."""
        if self.abandoned:
            return
        self.abandoned = True
        self.stop_guard()
        if self.connection is not None:
            self.connection.withdraw(self)


class _IConnectionOwner(Interface):
    """What a connection tells the client that moves requests between servers."""

    def connection_lost(protocol: _ClientProtocol, reason: Failure) -> None:
        """
        C{protocol}'s connection is gone.  Requests it still holds afterwards fail with
        L{ConnectionLost}; to send them elsewhere, take them (L{_ClientProtocol.detach}).
        """

    def unavailable(protocol: _ClientProtocol, pending: _Pending) -> None:
        """C{protocol}'s server answered C{pending} with UNAVAILABLE."""

    def withdrawn(protocol: _ClientProtocol, pending: _Pending) -> None:
        """
        C{pending}, sent again after a failover and not cancelled by the caller, was
        answered CANCELLED: a server withdrew it (the old server closing the waiters of
        the old connection).  It is still wanted.
        """


class _ClientProtocol(Protocol):
    """
    One connection: frames in, answers to the waiting Deferreds; requests out.

    With no C{owner}, a lost connection fails the requests it holds; an owner may take
    them over to send them elsewhere.
    """

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
        self.owner: _IConnectionOwner | None = None
        self._keepalive = 0.0
        self._heard = False
        self._probing = False
        self._watch_call: IDelayedCall | None = None

    def watch(self, interval: float) -> None:
        """
        Notice a server that went silent (a cut link: no FIN, no RST) while requests
        wait on it: every C{interval} seconds in which nothing was heard, ask for its
        stats; if the next C{interval} brings nothing either, drop the connection (so
        that its owner fails over).  A connection with nothing pending sends nothing.
        """
        self._keepalive = interval
        self._arm_watch()

    def _arm_watch(self) -> None:
        if self._keepalive and self.pending and self._watch_call is None and self.lost is None:
            self._heard = self._probing = False
            self._watch_call = self.clock.callLater(self._keepalive, self._check_alive)

    def _disarm_watch(self) -> None:
        _cancel(self._watch_call)
        self._watch_call = None

    def _check_alive(self) -> None:
        self._watch_call = None
        if self.lost is not None or self.transport is None or not self.pending:
            return
        if self._heard:
            self._heard = self._probing = False
        elif self._probing:
            self.log.warn(
                "No word from the server for {seconds} s with requests waiting: dropping"
                " the connection",
                seconds=2 * self._keepalive,
            )
            self.transport.abortConnection()  # type: ignore[attr-defined]
            return
        else:
            # Its answer is matched to no request; that anything arrived is what counts
            # (a server older than PING answers it with an error, which counts too).
            self._probing = True
            self.transport.write(encode_message(Ping(), 0))
        self._watch_call = self.clock.callLater(self._keepalive, self._check_alive)

    def request(
        self, message: Message, timeout: float | None = None, max_size: int | None = None
    ) -> defer.Deferred[Any]:
        """
        Send C{message}; the Deferred fires with the answer.

        @param timeout: the operation's own timeout, if it has one: the client gives up
            on the server L{TIMEOUT_GRACE} seconds after it.
        @param max_size: for an C{Out}, the server's tuple size limit, checked here so
            that an oversize tuple fails at once instead of at the server.
        """
        if self.lost is not None:
            return defer.fail(ConnectionLost(str(self.lost.value)))
        rid = (self._next_request % 0xFFFFFFFF) + 1
        frame = encode_message(message, rid)
        if max_size is not None and len(frame) - HEADER > max_size:
            _check_size(message, max_size)
        p = _Pending(message)
        if timeout is not None:
            p.start_guard(self.clock, timeout)
        self._write(p, rid, frame)
        return p.deferred

    def send(self, p: _Pending, message: Message) -> None:
        """Send the request C{p} (again), as C{message}, on this connection."""
        rid = (self._next_request % 0xFFFFFFFF) + 1
        self._write(p, rid, encode_message(message, rid))

    def _write(self, p: _Pending, rid: int, frame: bytes) -> None:
        self._next_request = rid
        self.pending[rid] = p
        p.connection = self
        p.rid = rid
        p.sends += 1
        assert self.transport is not None
        self.transport.write(frame)
        self._arm_watch()

    def withdraw(self, p: _Pending) -> None:
        """Ask the server to withdraw C{p}, if it is still waiting here."""
        if self.lost is None and self.transport is not None and self.pending.get(p.rid) is p:
            self.transport.write(encode_message(Cancel(p.rid), 0))

    def detach(self) -> list[_Pending]:
        """
        Hand every request this connection holds over to be sent elsewhere, and tell the
        owner nothing more.  Answers that still arrive here are dropped.
        """
        self.owner = None
        self._disarm_watch()
        pending, self.pending = self.pending, {}
        for p in pending.values():
            p.connection = None
        return list(pending.values())

    def dataReceived(self, data: bytes) -> None:
        self._heard = True
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
            if not self.pending:
                self._disarm_watch()
            if p is None:
                continue  # the answer to a CANCEL, or to a request given up on
            owner = self.owner
            if owner is not None:
                if type(message) is Error and message.code is ErrorCode.UNAVAILABLE:
                    owner.unavailable(self, p)
                    continue
                if type(message) is Cancelled and p.sends > 1 and not p.abandoned:
                    owner.withdrawn(self, p)
                    continue
            p.stop_guard()
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
        self._disarm_watch()
        if self.owner is not None:
            self.owner.connection_lost(self, reason)
        pending, self.pending = self.pending, {}
        for p in pending.values():
            p.stop_guard()
            if not p.abandoned:
                p.deferred.errback(ConnectionLost(str(reason.value)))
        waiting, self.on_lost = self.on_lost, []
        for d in waiting:
            d.callback(None)


@attrs.frozen
class _Endpoint:
    """A server to connect to, and how to name it."""

    description: str
    endpoint: IStreamClientEndpoint


class _State(enum.Enum):
    """Where a client stands with its servers."""

    CONNECTED = "connected"
    """Requests go to the current server (or, once closed by the server with failover
    off, fail at once)."""
    FAILING_OVER = "failing over"
    """Looking for a server; requests wait for it."""
    FAILED = "failed"
    """No server was found in time; requests fail with L{NoServerAvailable}."""
    CLOSED = "closed"
    """The caller closed the client."""


@implementer(_IConnectionOwner)
class TupleSpaceClient:
    """
    A connection to a LiPS tuple space as process C{pid}.

    Tuples and templates are plain Python tuples (or lists).  In a template a field may
    be a formal type (C{int}, C{float}, C{str}, C{bytes}, C{bool}) or L{lips.ANY}.  A tuple
    or template that is not valid raises L{lips.tuples.TupleError} at once.

    @ivar server: the name of the server it is on (from its WELCOME).
    @ivar failovers: how many times it moved to another connection.

    @param endpoints: the servers it may fail over to; C{current} is the one
        C{protocol} is connected to.
    @param reconnect: fail over when the connection is lost or the server is
        UNAVAILABLE; otherwise such requests fail, as with one server.
    @param failover_timeout: how long the client may be without a server that serves
        it before it gives up: counted from losing a server, and not counted afresh
        when the next server also refuses or loses it within L{SETTLE_TIME}.
    @param attempt_timeout: how long one attempt at one endpoint may take.
    @param keepalive: when failing over, how long a server may stay silent while
        requests wait on it before it is asked for a sign of life, and then again
        before the client moves on (None: never).
    """

    log = Logger()

    def __init__(
        self,
        protocol: _ClientProtocol,
        welcome: Welcome,
        first_event: int = 1,
        *,
        endpoints: Sequence[_Endpoint] = (),
        current: int = 0,
        name: str = "",
        reconnect: bool = False,
        failover_timeout: float = FAILOVER_TIMEOUT,
        attempt_timeout: float = ATTEMPT_TIMEOUT,
        keepalive: float | None = KEEPALIVE,
        says_goodbye: bool = False,
    ) -> None:
        if reconnect and not endpoints:
            raise ValueError("failing over needs the endpoints to fail over to")
        if failover_timeout <= 0 or attempt_timeout <= 0:
            raise ValueError("failover and attempt timeouts must be positive")
        self._clock = protocol.clock
        self._endpoints = tuple(endpoints)
        self._at: int | None = current if endpoints else None
        self._tried_index = current
        self._name = name
        self._reconnect = reconnect
        self._failover_timeout = failover_timeout
        self._attempt_timeout = attempt_timeout
        self._keepalive = keepalive
        self._says_goodbye = says_goodbye
        self._state = _State.CONNECTED
        self._queue: list[_Pending] = []
        self._failure = ""
        self._give_up_call: IDelayedCall | None = None
        self._retry_call: IDelayedCall | None = None
        self._attempt: defer.Deferred[Any] | None = None
        self._tried = 0
        self._delay = RETRY_DELAY
        self._deadline: float | None = None
        self._connected_at = self._clock.seconds()
        self._last_error = ""
        self.failovers = 0
        self.pid = welcome.pid
        self._event = first_event - 1
        self._adopt(protocol, welcome)

    def _adopt(self, protocol: _ClientProtocol, welcome: Welcome) -> None:
        """Make C{protocol}, welcomed by C{welcome}, the connection requests go to."""
        self._protocol = protocol
        self.server = welcome.server
        self.max_size = welcome.max_size
        protocol.on_late_match = self._put_back
        # Answers carry tuples up to the server's limits, which may exceed the defaults.
        protocol.limits = _reply_limits(self.max_size)
        protocol.decoder.max_body = max(protocol.decoder.max_body, self.max_size + _BODY_OVERHEAD)
        if self._reconnect:
            protocol.owner = self
            if self._keepalive is not None:
                protocol.watch(self._keepalive)

    @property
    def connected(self) -> bool:
        return self._state is _State.CONNECTED and self._protocol.lost is None

    @property
    def state(self) -> str:
        """C{"connected"}, C{"failing over"}, C{"failed"} or C{"closed"}."""
        return self._state.value

    @property
    def endpoint(self) -> str | None:
        """The endpoint of the server it is on; C{None} while it has none."""
        if self._at is None or self._state is not _State.CONNECTED:
            return None
        return self._endpoints[self._at].description

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
        d = self._request(message, max_size=self.max_size)
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

    def checkpoint(
        self, state: Any, files: Sequence[str] = (), directory: Path | None = None
    ) -> defer.Deferred[None]:
        """
        Store C{state} as this process's checkpoint, as its next event.  C{state} is
        anything msgpack encodes (numbers, strings, bytes, lists, dicts, None, bools);
        C{files} names files of the working directory (or C{directory}) kept with it.
        The whole must fit the server's tuple size (else L{CheckpointError} or
        L{TupleTooLarge} at once).  It replaces the process's last checkpoint, and the
        answers logged for its earlier events are discarded.  Fires once the checkpoint
        is stable: on a replicated space, once every server holds it.
        """
        blob = _checkpoint.pack(state, files, directory)
        d = self._request(CheckpointRequest(self._event + 1, blob), max_size=self.max_size)
        self._event += 1
        return d.addCallback(_expect, Stored).addCallback(lambda _: None)

    def recover(self, directory: Path | None = None) -> defer.Deferred[Any]:
        """
        This process's last checkpoint state, or C{None} if it has none; the files kept
        with it are written back into the working directory (or C{directory}) first.
        Call it first, before any other operation: from here the process's event
        numbers continue after its checkpoint (from 1 with none).  Its next operations
        that the space has logged are answered from the log -- an C{in_} or C{rd} gets
        the tuple it got the first time, an C{out} is not stored again -- until it
        passes the point where it stopped, and then it is active again.  The process
        must be deterministic between checkpoints for that to hold (keep random
        generators' state in the checkpoint, say).
        """
        d = self._request(RecoverRequest())

        def recovered(message: Message) -> Any:
            r: Recovered = _expect(message, Recovered)
            if r.event is None or r.state is None:
                self._event = 0
                return None
            state = _checkpoint.unpack(r.state, directory)
            self._event = r.event
            return state

        return d.addCallback(recovered)

    def stats(self) -> defer.Deferred[dict[str, int | float | str]]:
        """The server's counters and gauges."""
        d = self._request(StatsRequest())
        return d.addCallback(_expect, Stats).addCallback(lambda s: s.values)

    def close(self, goodbye: bool | None = None) -> defer.Deferred[None]:
        """
        Close the connection; waiting operations at the server are withdrawn.

        @param goodbye: first tell the space that this process is done for good
            (GOODBYE), so that it forgets the process's log and checkpoint.  By default
            only a process whose id the server gave it (connected without C{pid=}): a
            process with an id of its own may restart and recover, so it says goodbye
            only when asked (lipsd's processes do when they finish).
        """
        if goodbye is None:
            # A process the server named that made no operation (a status probe) has
            # nothing to be forgotten.
            goodbye = self._says_goodbye and self._event > 0
        if goodbye and self.connected:
            d = self._request(Goodbye(self._event + 1))
            self._event += 1
            d.addTimeout(GOODBYE_TIMEOUT, self._clock)
            d.addErrback(
                lambda f: self.log.info(
                    "No answer to GOODBYE ({why}); closing all the same", why=f.getErrorMessage()
                )
            )
            return d.addCallback(lambda _: self._close())
        return self._close()

    def _close(self) -> defer.Deferred[None]:
        if self._state is _State.FAILING_OVER:
            self._stop(_State.CLOSED, "the client was closed while failing over")
            return defer.succeed(None)
        self._state = _State.CLOSED
        protocol = self._protocol
        protocol.owner = None  # requests still waiting fail, as they do without failover
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
        d = self._request(Take(kind, self._next_event(), tmpl, timeout), timeout)
        return d.addCallback(_taken)

    def _request(
        self, message: Message, timeout: float | None = None, max_size: int | None = None
    ) -> defer.Deferred[Any]:
        state = self._state
        if state is _State.FAILING_OVER:
            if max_size is not None:
                _check_size(message, max_size)
            p = _Pending(message)
            if timeout is not None:
                p.start_guard(self._clock, timeout)
            self._queue.append(p)
            return p.deferred
        if state is _State.FAILED:
            return defer.fail(NoServerAvailable(self._failure))
        return self._protocol.request(message, timeout, max_size)

    def _put_back(self, values: LTuple) -> None:
        Logger().info("Returning a tuple taken by a cancelled in_: {t!r}", t=values)
        self.out(values).addErrback(
            lambda f: Logger().failure("Could not return a tuple to the space", f)
        )

    # -- failover (the connection's owner) ---------------------------------------------

    # Only the current connection has this client as its owner, and only while the
    # client is connected through it (see _adopt, close and _ClientProtocol.detach).

    def connection_lost(self, protocol: _ClientProtocol, reason: Failure) -> None:
        assert protocol is self._protocol and self._state is _State.CONNECTED
        self._fail_over(protocol, f"lost {self._describe()}: {reason.getErrorMessage()}")

    def unavailable(self, protocol: _ClientProtocol, pending: _Pending) -> None:
        assert protocol is self._protocol and self._state is _State.CONNECTED
        self._queue.append(pending)
        self._fail_over(protocol, f"{self._describe()} is unavailable")
        assert protocol.transport is not None
        protocol.transport.loseConnection()

    def withdrawn(self, protocol: _ClientProtocol, pending: _Pending) -> None:
        self.log.info(
            "Event {event} was withdrawn at {server!r} though the caller still waits for it"
            " (an old server closing the waiters of a lost connection); sending it again",
            server=self.server,
            event=getattr(pending.message, "event", None),
        )
        protocol.send(pending, self._retry_message(pending, self._clock.seconds()))

    def _describe(self) -> str:
        return f"server {self.server!r} at {self.endpoint}"

    def _fail_over(self, protocol: _ClientProtocol, why: str) -> None:
        """Leave C{protocol}'s server; look for another, holding every request meanwhile."""
        self.log.warn("Failing over: {why}", why=why)
        self._queue.extend(protocol.detach())
        self._state = _State.FAILING_OVER
        self._at = None
        self._last_error = why
        now = self._clock.seconds()
        if self._deadline is None or now - self._connected_at >= SETTLE_TIME:
            # A new count.  A server that kept the client for less than SETTLE_TIME (one
            # that answered UNAVAILABLE, say) is one more failed attempt of the last count,
            # so servers that all refuse are tried in rounds with pauses, not without end.
            self._deadline = now + self._failover_timeout
            self._tried = 0
            self._delay = RETRY_DELAY
        if now >= self._deadline:
            self._give_up()
            return
        self._give_up_call = self._clock.callLater(self._deadline - now, self._give_up)
        self._try_next()

    def _try_next(self) -> None:
        """Try the next endpoint in turn, or pause after a round that found none."""
        self._retry_call = None
        if self._tried == len(self._endpoints):
            self._tried = 0
            delay, self._delay = self._delay, min(self._delay * 2, MAX_RETRY_DELAY)
            self._retry_call = self._clock.callLater(delay, self._try_next)
            return
        self._tried += 1
        self._tried_index = (self._tried_index + 1) % len(self._endpoints)
        target = self._endpoints[self._tried_index]
        d = _open(self._clock, target.endpoint, self.pid, self._name, self._attempt_timeout)
        self._attempt = d
        d.addCallbacks(self._attempt_won, self._attempt_lost, errbackArgs=(target,))

    def _attempt_won(self, opened: tuple[_ClientProtocol, Welcome]) -> None:
        self._attempt = None
        protocol, welcome = opened
        if self._state is not _State.FAILING_OVER:  # pragma: no cover - cancelled first
            assert protocol.transport is not None
            protocol.transport.loseConnection()
            return
        _cancel(self._give_up_call)
        self._give_up_call = None
        self._state = _State.CONNECTED
        self._connected_at = self._clock.seconds()
        self._at = self._tried_index
        self.failovers += 1
        self._adopt(protocol, welcome)
        self.log.info(
            "Failed over to {server!r} at {endpoint}", server=self.server, endpoint=self.endpoint
        )
        self._resend()

    def _attempt_lost(self, f: Failure, target: _Endpoint) -> None:
        self._attempt = None
        if self._state is not _State.FAILING_OVER:
            return  # cancelled: the client gave up or was closed
        self._last_error = f"{target.description}: {f.getErrorMessage()}"
        self.log.info("Could not fail over to {why}", why=self._last_error)
        self._try_next()

    def _resend(self) -> None:
        """Send every request still wanted to the new server, in the caller's order."""
        queue, self._queue = sorted(self._queue, key=attrgetter("serial")), []
        protocol = self._protocol
        now = self._clock.seconds()
        for p in queue:
            message = p.message
            if not p.abandoned:
                protocol.send(p, self._retry_message(p, now))
            elif p.sends and isinstance(message, Take) and message.kind.removes:
                # A cancelled in_/inp may have taken a tuple at the old server whose answer
                # never came.  Asking for the same event again returns that answer if
                # there was one (and the tuple is put back); asked as an inp, it never
                # waits, and the CANCEL withdraws it if it waits all the same.
                protocol.send(p, Take(Kind.INP, message.event, message.template))
                protocol.withdraw(p)

    @staticmethod
    def _retry_message(p: _Pending, now: float) -> Message:
        """C{p}'s request as sent again: a waiting in_/rd asks for the time left."""
        message = p.message
        if isinstance(message, Take) and message.timeout is not None and p.deadline is not None:
            return attrs.evolve(message, timeout=max(0.0, p.deadline - now))
        return message

    def _give_up(self) -> None:
        self._give_up_call = None
        self._stop(
            _State.FAILED,
            f"no server could be reached within {self._failover_timeout:g} s ({self._last_error})",
        )

    def _stop(self, state: _State, why: str) -> None:
        """Stop failing over: fail the requests held with C{why}, now in C{state}."""
        self._state = state
        self._failure = why
        for call in (self._give_up_call, self._retry_call):
            _cancel(call)
        self._give_up_call = self._retry_call = None
        attempt, self._attempt = self._attempt, None
        if attempt is not None:
            attempt.cancel()
        queue, self._queue = sorted(self._queue, key=attrgetter("serial")), []
        error = NoServerAvailable if state is _State.FAILED else ConnectionLost
        for p in queue:
            p.stop_guard()
            if not p.abandoned:
                p.deferred.errback(error(why))
            elif p.sends and isinstance(p.message, Take) and p.message.kind.removes:
                self.log.warn(
                    "A cancelled in_ (event {event}) may have taken a tuple at a server"
                    " that is gone; it cannot be put back: {why}",
                    event=p.message.event,
                    why=why,
                )


def _cancel(call: IDelayedCall | None) -> None:
    if call is not None and call.active():
        call.cancel()


def _check_size(message: Message, max_size: int) -> None:
    if isinstance(message, Out) and len(packb(message.tuple)) > max_size:
        raise TupleTooLarge(f"tuple encodes to more than {max_size} bytes")
    if isinstance(message, CheckpointRequest) and len(message.state) > max_size:
        raise TupleTooLarge(
            f"checkpoint state encodes to {len(message.state)} bytes, over the server's {max_size}"
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


async def _hello(
    clock: IReactorTime, endpoint: IStreamClientEndpoint, pid: int | None, name: str
) -> tuple[_ClientProtocol, Welcome]:
    protocol = _ClientProtocol(clock)
    await connectProtocol(endpoint, protocol)
    try:
        welcome = await protocol.request(Hello(pid, name))
        if not isinstance(welcome, Welcome):
            raise ProtocolViolation(f"expected Welcome, got {type(welcome).__name__}")
        if pid is not None and welcome.pid != pid:
            raise ProtocolViolation(f"the server welcomed process {welcome.pid}, not {pid}")
    except BaseException:
        if protocol.transport is not None:
            protocol.transport.loseConnection()
        raise
    return protocol, welcome


def _open(
    clock: IReactorTime,
    endpoint: IStreamClientEndpoint,
    pid: int | None,
    name: str,
    timeout: float,
) -> defer.Deferred[tuple[_ClientProtocol, Welcome]]:
    """Connect to C{endpoint} and say HELLO, within C{timeout} seconds."""
    d = defer.Deferred.fromCoroutine(_hello(clock, endpoint, pid, name))
    return d.addTimeout(timeout, clock)


def _endpoints(reactor: Any, endpoints: Endpoints) -> tuple[_Endpoint, ...]:
    items: list[str | IStreamClientEndpoint]
    if isinstance(endpoints, str) or IStreamClientEndpoint.providedBy(endpoints):
        items = [endpoints]
    else:
        items = list(endpoints)
    if not items:
        raise ValueError("connect needs at least one endpoint")
    return tuple(
        _Endpoint(e, clientFromString(reactor, e)) if isinstance(e, str) else _Endpoint(repr(e), e)
        for e in items
    )


async def _connect(
    reactor: Any,
    targets: tuple[_Endpoint, ...],
    *,
    start: int,
    pid: int | None,
    name: str,
    reconnect: bool,
    failover_timeout: float,
    attempt_timeout: float,
    keepalive: float | None,
) -> TupleSpaceClient:
    errors: list[str] = []
    for i in range(len(targets)):
        index = (start + i) % len(targets)
        target = targets[index]
        try:
            protocol, welcome = await _open(reactor, target.endpoint, pid, name, attempt_timeout)
        except defer.CancelledError:
            raise
        except Exception as e:
            if len(targets) == 1:
                raise
            errors.append(f"{target.description}: {e}")
            continue
        return TupleSpaceClient(
            protocol,
            welcome,
            endpoints=targets,
            current=index,
            name=name,
            reconnect=reconnect,
            failover_timeout=failover_timeout,
            attempt_timeout=attempt_timeout,
            keepalive=keepalive,
            says_goodbye=pid is None,
        )
    raise NoServerAvailable("no server could be reached: " + "; ".join(errors))


def connect(
    reactor: Any,
    endpoints: Endpoints,
    *,
    pid: int | None = None,
    name: str = "",
    reconnect: bool | None = None,
    failover_timeout: float = FAILOVER_TIMEOUT,
    attempt_timeout: float = ATTEMPT_TIMEOUT,
    start: int = 0,
    keepalive: float | None = KEEPALIVE,
) -> defer.Deferred[TupleSpaceClient]:
    """
    Connect to a MessageServer, or to the first reachable of several.

    @param endpoints: a Twisted client endpoint or its string description, such as
        C{"tcp:host=127.0.0.1:port=7010"} or, with TLS,
        C{"ssl:host=...:port=...:caCertsDir=...:hostname=..."}; or a sequence of them,
        the MessageServers of one replicated space, tried in turn from C{start}.
    @param pid: this process's id, to continue as a process that has connected before;
        C{None} to be given a new one.
    @param reconnect: fail over to the next endpoint (round robin) when the connection
        is lost or the server is UNAVAILABLE; by default only with several endpoints.
        With one endpoint and C{reconnect=True} the client reconnects to that one.
    @param failover_timeout: how long a client that lost its server looks for another
        before it fails its requests with L{NoServerAvailable}.
    @param attempt_timeout: how long one attempt (connect and HELLO) may take.
    @param start: the index of the endpoint to try first (pass a random one to spread
        clients over the servers).
    @param keepalive: when failing over, how long a server may be silent while requests
        wait on it before the client asks it for a sign of life, and then again before
        the client drops it and moves on (a link cut without a FIN or RST); None: never.
    @return: a Deferred firing with a L{TupleSpaceClient}, or failing with the error of
        the one endpoint, or L{NoServerAvailable} if none of several could be reached.
    """
    targets = _endpoints(reactor, endpoints)
    if reconnect is None:
        reconnect = len(targets) > 1
    return defer.Deferred.fromCoroutine(
        _connect(
            reactor,
            targets,
            start=start % len(targets),
            pid=pid,
            name=name,
            reconnect=reconnect,
            failover_timeout=failover_timeout,
            attempt_timeout=attempt_timeout,
            keepalive=keepalive,
        )
    )
