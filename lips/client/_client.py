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

Those rules are the client's core (L{lips.client._core.ClientCore}, sans-IO, an Automat
state machine); L{TupleSpaceClient} is its Twisted adapter.  It runs the core with a
L{Driver<lips.kernel.Driver>} on its clock, turns the calls into the core's requests
and its deliveries into Deferreds, and carries its links out as connections
(L{ClientProtocol}): a L{Dial} connects to the endpoint, L{Outgoing} frames are written,
a L{Hangup} closes or gives up; frames, bytes and ends come back as the core's inputs.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, TypeAlias

import attrs
from twisted.internet import defer
from twisted.internet.endpoints import clientFromString, connectProtocol
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from lips.client import _checkpoint
from lips.client._core import (
    ATTEMPT_TIMEOUT,
    FAILOVER_TIMEOUT,
    KEEPALIVE,
    Answered,
    ClientCore,
    ClientState,
    Dial,
    Failed,
    Hangup,
    Link,
    NoServerAvailable,
    NotConnected,
    Outgoing,
    PutBack,
    Welcomed,
)
from lips.errors import ConnectionLost, ProtocolViolation, RequestError, Timeout
from lips.kernel import Deliver, Driver, Send
from lips.tuples import (
    DEFAULT_LIMITS,
    MAX_STEPS,
    AtomicAborted,
    Kind,
    Limits,
    LTuple,
    Step,
    StepResult,
    Template,
    TupleTooLarge,
    make_template,
    make_tuple,
    packb,
    steps_size,
)
from lips.wire import (
    Aborted,
    Atomic,
    Cancelled,
    CheckpointRequest,
    Committed,
    Error,
    Frame,
    FrameDecoder,
    Goodbye,
    Matched,
    Message,
    MessageError,
    NoMatch,
    Out,
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

_BODY_OVERHEAD: Final = 4096

Endpoints: TypeAlias = str | IStreamClientEndpoint | Sequence[str | IStreamClientEndpoint]
"""One endpoint (or its string description), or several, in the order to try them."""


class ClientProtocol(Protocol):
    """
    One connection: frames in, frames out.

    Adopted by a L{TupleSpaceClient} (C{owner}), it is one of the core's links: what it
    reads goes to the owner, and so does its end.  Before that (L{lips.testing}'s
    C{memory_client} says HELLO this way) L{request} sends a message and fires with its
    answer.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.decoder = FrameDecoder(DEFAULT_LIMITS.max_size + _BODY_OVERHEAD)
        self.limits = _reply_limits(DEFAULT_LIMITS.max_size)
        self.owner: TupleSpaceClient | None = None
        self.link: Link | None = None
        self.dialing: defer.Deferred[Any] | None = None
        self.hung_up = False
        self.lost: Failure | None = None
        self.on_lost: list[defer.Deferred[None]] = []
        self._unsent: list[bytes] = []
        self._answers: dict[int, defer.Deferred[Any]] = {}
        self._next_request = 0

    def request(self, message: Message) -> defer.Deferred[Any]:
        """Before a client adopts the connection: send C{message}; fire with the answer."""
        if self.lost is not None:
            return defer.fail(ConnectionLost(str(self.lost.value)))
        self._next_request = rid = self._next_request % 0xFFFFFFFF + 1
        d: defer.Deferred[Any] = defer.Deferred()
        self._answers[rid] = d
        self.write(rid, message)
        return d

    def write(self, rid: int, message: Message) -> None:
        """Write C{message} as request C{rid} (once connected, if it is not yet)."""
        frame = encode_message(message, rid)
        if self.transport is None:
            self._unsent.append(frame)
        else:
            self.transport.write(frame)

    def connectionMade(self) -> None:
        unsent, self._unsent = self._unsent, []
        assert self.transport is not None  # connectionMade: it has one
        if self.hung_up:  # the attempt was given up, but the endpoint connected anyway
            self.transport.loseConnection()
            return
        for frame in unsent:
            self.transport.write(frame)

    def hang_up(self, abort: bool) -> None:
        """End the connection (or the attempt at it); tell the owner nothing more."""
        self.owner = None
        self.hung_up = True
        dialing, self.dialing = self.dialing, None
        if dialing is not None:
            dialing.cancel()
        if self.transport is not None and self.lost is None:
            if abort:
                self.transport.abortConnection()  # type: ignore[attr-defined]
            else:
                self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        items = self.decoder.feed(data)
        for item in items:
            if type(item) is not Frame:
                assert not isinstance(item, Frame)
                self._violation(f"bad frame from server: {item.message}")
                return
            try:
                message = decode_message(item, self.limits)
            except MessageError as e:
                self._violation(f"bad message from server: {e.message}")
                return
            owner = self.owner
            if owner is not None:
                owner._received(self, item.request_id, message)
            else:
                answer = self._answers.pop(item.request_id, None)
                if answer is not None:
                    if isinstance(message, Error):
                        answer.errback(RequestError(message.code, message.message))
                    else:
                        answer.callback(message)
        if not items and self.owner is not None:
            self.owner._heard(self)

    def _violation(self, why: str) -> None:
        self.log.error("Closing the connection: {why}", why=why)
        if self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = reason
        owner, self.owner = self.owner, None
        if owner is not None:
            owner._lost(self, reason)
        answers, self._answers = self._answers, {}
        for d in answers.values():
            d.errback(ConnectionLost(str(reason.value)))
        waiting, self.on_lost = self.on_lost, []
        for d in waiting:
            d.callback(None)


@attrs.frozen
class _Endpoint:
    """A server to connect to, and how to name it."""

    description: str
    endpoint: IStreamClientEndpoint


class TupleSpaceClient:
    """
    A connection to a LiPS tuple space as process C{pid}.

    Tuples and templates are plain Python tuples (or lists).  In a template a field may
    be a formal type (C{int}, C{float}, C{str}, C{bytes}, C{bool}) or L{lips.ANY}.  A tuple
    or template that is not valid raises L{lips.tuples.TupleError} at once.

    The client adopts C{protocol}, a connection its server already welcomed with
    C{welcome}; L{connect} makes one that opens its first connection itself.

    @param endpoints: the servers it may fail over to; C{current} is the one
        C{protocol} is connected to.
    @param reconnect: fail over when the connection is lost or the server is
        UNAVAILABLE; otherwise such requests fail, as with one server.
    @param failover_timeout: how long the client may be without a server that serves
        it before it gives up: counted from losing a server, and not counted afresh
        when the next server also refuses or loses it within
        L{SETTLE_TIME<lips.client._core.SETTLE_TIME>}.
    @param attempt_timeout: how long one attempt at one endpoint may take.
    @param keepalive: when failing over, how long a server may stay silent while
        requests wait on it before it is asked for a sign of life, and then again
        before the client moves on (None: never).
    """

    log = Logger()

    def __init__(
        self,
        protocol: ClientProtocol | None,
        welcome: Welcome | None,
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
        pid: int | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        if protocol is not None:
            if welcome is None:
                raise ValueError("a connection to adopt needs its WELCOME")
            clock = protocol.clock
        if clock is None:
            raise ValueError("a client without a connection needs a clock")
        self._clock = clock
        self._endpoints = tuple(endpoints)
        self._says_goodbye = says_goodbye
        self._event = first_event - 1
        self._handles = itertools.count(1)
        # Each request's Deferred, and whether it may take a tuple out of the space.
        self._waiting: dict[int, tuple[defer.Deferred[Any], bool]] = {}
        self._links: dict[Link, ClientProtocol] = {}
        self._connecting: defer.Deferred[TupleSpaceClient] | None = None
        self._core = ClientCore(
            [e.description for e in self._endpoints],
            pid=pid,
            name=name,
            reconnect=reconnect,
            failover_timeout=failover_timeout,
            attempt_timeout=attempt_timeout,
            keepalive=keepalive,
            start=current,
            welcome=welcome,
            now=clock.seconds(),
        )
        self._driver: Driver[ClientCore] = Driver(
            self._core, clock, {Send: self._carry, Deliver: self._deliver}
        )
        if protocol is not None and welcome is not None:
            link = self._core.link
            assert link is not None  # a core made with a welcome is on its link
            self._adopt(protocol, link, welcome)

    def _start(self) -> defer.Deferred[TupleSpaceClient]:
        """Open the first connection (L{connect}): fires with the client once welcomed."""
        d: defer.Deferred[TupleSpaceClient] = defer.Deferred(
            lambda _: self._driver.input(self._core.close)
        )
        self._connecting = d
        self._driver.input(self._core.start)
        return d

    # -- what it shows ---------------------------------------------------------------------

    @property
    def pid(self) -> int:
        """This process's id."""
        pid = self._core.pid
        assert pid is not None  # the client is given out once welcomed
        return pid

    @property
    def server(self) -> str:
        """The name of the server it is on (from its WELCOME)."""
        return self._core.server

    @property
    def max_size(self) -> int:
        """That server's tuple size limit."""
        return self._core.max_size

    @property
    def failovers(self) -> int:
        """How many times it moved to another connection."""
        return self._core.failovers

    @property
    def connected(self) -> bool:
        return self._core.phase is ClientState.CONNECTED

    @property
    def state(self) -> str:
        """C{"connected"}, C{"failing over"}, C{"failed"} or C{"closed"}."""
        return self._core.state

    @property
    def endpoint(self) -> str | None:
        """The endpoint of the server it is on; C{None} while it has none."""
        return self._core.endpoint

    @property
    def event(self) -> int:
        """The event number of the last operation this client made."""
        return self._event

    def _next_event(self) -> int:
        self._event += 1
        return self._event

    # -- the operations --------------------------------------------------------------------

    def out(self, values: Sequence[Any]) -> defer.Deferred[None]:
        """Store a tuple.  Fires with C{None} once the server has applied it."""
        message = Out(self._event + 1, make_tuple(values))
        d = self._request(message, check_size=True)
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

    def atomic(self, steps: Sequence[Step]) -> defer.Deferred[tuple[StepResult, ...]]:
        """
        Apply C{steps} (L{Step.out}, L{Step.inp}, L{Step.rdp}, L{Step.absent},
        L{Step.present}, L{Step.scan}, L{Step.delete}) as one event of this process,
        all or none, at one point of the space's order.  Fires with each step's result,
        in order (the tuple an C{inp} or C{rdp} step found, the
        L{Tuples<lips.tuples.Tuples>} a C{scan} or C{delete} step read or took, oldest
        first and possibly none, C{None} for the other steps) if every step held and
        all were applied; fails with L{AtomicAborted}, naming the first step that
        failed and why, if one did not (an C{inp}, C{rdp} or C{present} step found no
        tuple, an C{absent} step found one, a C{scan} or C{delete} step matched more
        than L{MAX_SCAN<lips.tuples.MAX_SCAN>} tuples, or the tuples taken and read
        would not fit in an answer), and then nothing was applied.  No step waits.
        Cancelling the Deferred does not undo a request the space has applied.

        @raise ValueError: at once, for no steps or more than L{MAX_STEPS}.
        @raise TupleTooLarge: at once, if the steps' tuples and templates together
            exceed the server's size limit.
        """
        steps = tuple(steps)
        if not steps or len(steps) > MAX_STEPS:
            raise ValueError(f"an atomic request has 1 to {MAX_STEPS} steps, not {len(steps)}")
        if not all(isinstance(s, Step) for s in steps):
            raise TypeError("the steps of an atomic request are Steps (Step.out, Step.inp, ...)")
        d = self._request(Atomic(self._event + 1, steps), check_size=True)
        self._event += 1
        return d.addCallback(_committed)

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
        d = self._request(CheckpointRequest(self._event + 1, blob), check_size=True)
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
            d.addErrback(
                lambda f: self.log.info(
                    "No answer to GOODBYE ({why}); closing all the same", why=f.getErrorMessage()
                )
            )
            return d.addCallback(lambda _: self._close())
        return self._close()

    def _close(self) -> defer.Deferred[None]:
        link = self._core.link
        protocol = None if link is None else self._links.get(link)
        self._driver.input(self._core.close)
        if protocol is None or protocol.lost is not None or protocol.transport is None:
            return defer.succeed(None)
        done: defer.Deferred[None] = defer.Deferred()
        protocol.on_lost.append(done)
        return done

    def _take(
        self, kind: Kind, template: Sequence[Any] | Template, timeout: float | None
    ) -> defer.Deferred[Any]:
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must not be negative")
        tmpl = make_template(template)
        d = self._request(Take(kind, self._next_event(), tmpl, timeout))
        return d.addCallback(_taken)

    def _request(self, message: Message, check_size: bool = False) -> defer.Deferred[Any]:
        """Hand C{message} to the core; the Deferred fires with its outcome."""
        if check_size and self._core.phase in _SERVING:
            _check_size(message, self.max_size)
        handle = next(self._handles)
        d: defer.Deferred[Any] = defer.Deferred(lambda _: self._cancelled(handle))
        self._waiting[handle] = (d, isinstance(message, Take) and message.kind.removes)
        self._driver.input(self._core.request, handle, message)
        return d

    def _cancelled(self, handle: int) -> None:
        if self._driver.input(self._core.cancel, handle):
            del self._waiting[handle]
        # Else its outcome is on its way (delivered in the batch being carried out):
        # _deliver finds the Deferred cancelled.

    def _put_back(self, values: LTuple) -> None:
        self.out(values).addErrback(
            lambda f: self.log.failure("Could not return a tuple to the space", f)
        )

    # -- the core's effects ----------------------------------------------------------------

    def _carry(self, effect: Send[Any]) -> None:
        """Carry out what the core says to one of its links."""
        link, what = effect.to, effect.message
        if not isinstance(link, Link):
            raise TypeError(f"not a link of the client: {link!r}")
        if isinstance(what, Outgoing):
            protocol = self._links.get(link)
            if protocol is not None:  # else the link ended before the core heard of it
                protocol.write(what.request_id, what.message)
        elif isinstance(what, Dial):
            self._dial(link)
        elif isinstance(what, Hangup):
            protocol = self._links.pop(link, None)
            if protocol is not None:
                protocol.hang_up(what.abort)
        else:
            raise TypeError(f"not something to say to a link: {what!r}")

    def _dial(self, link: Link) -> None:
        protocol = ClientProtocol(self._clock)
        protocol.owner, protocol.link = self, link
        self._links[link] = protocol
        try:
            d = connectProtocol(self._endpoints[link.endpoint].endpoint, protocol)
        except Exception:
            d = defer.fail()  # an endpoint that raises instead of failing its Deferred
        protocol.dialing = d

        def connected(_: object) -> None:
            protocol.dialing = None

        def failed(f: Failure) -> None:
            protocol.dialing = None
            if self._links.get(link) is protocol:  # not hung up (a cancel) meanwhile
                del self._links[link]
                self._driver.input(self._core.lost, link, _reason(f))

        d.addCallbacks(connected, failed)

    def _deliver(self, effect: Deliver[Any]) -> None:
        """Carry out what the core delivers: outcomes to the callers."""
        item = effect.item
        if isinstance(item, Answered):
            d, removes = self._waiting.pop(item.handle)
            message = item.message
            if d.called:
                # The caller cancelled it once its answer was on its way: a tuple it
                # took goes back, as the core does for a late answer.
                if removes and isinstance(message, Matched):
                    self._put_back(message.tuple)
            elif isinstance(message, Error):
                d.errback(RequestError(message.code, message.message))
            elif isinstance(message, TimedOut):
                d.errback(Timeout("no matching tuple arrived in time"))
            elif isinstance(message, Cancelled):
                d.errback(defer.CancelledError())
            else:
                d.callback(message)
        elif isinstance(item, Failed):
            d, _ = self._waiting.pop(item.handle)
            if not d.called:
                d.errback(item.error)
        elif isinstance(item, Welcomed):
            protocol = self._links[item.link]
            self._adopt(protocol, item.link, item.welcome)
            connecting, self._connecting = self._connecting, None
            if connecting is not None:
                connecting.callback(self)
        elif isinstance(item, NotConnected):
            connecting, self._connecting = self._connecting, None
            if connecting is not None:
                connecting.errback(item.error)
        elif isinstance(item, PutBack):
            self._put_back(item.tuple)
        else:
            raise TypeError(f"not a delivery of the client core: {item!r}")

    def _adopt(self, protocol: ClientProtocol, link: Link, welcome: Welcome) -> None:
        """Make C{protocol}, welcomed by C{welcome}, the link requests go to."""
        protocol.owner, protocol.link = self, link
        self._links[link] = protocol
        # Answers carry tuples up to the server's limits, which may exceed the defaults.
        protocol.limits = _reply_limits(welcome.max_size)
        protocol.decoder.max_body = max(
            protocol.decoder.max_body, welcome.max_size + _BODY_OVERHEAD
        )

    # -- what the links say (only links the client holds: a hung-up one says nothing) ------

    def _received(self, protocol: ClientProtocol, rid: int, message: Message) -> None:
        link = protocol.link
        if link is not None and self._links.get(link) is protocol:
            self._driver.input(self._core.received, link, rid, message)

    def _heard(self, protocol: ClientProtocol) -> None:
        link = protocol.link
        if link is not None and self._links.get(link) is protocol:
            self._driver.input(self._core.heard, link)

    def _lost(self, protocol: ClientProtocol, reason: Failure) -> None:
        link = protocol.link
        if link is not None and self._links.get(link) is protocol:
            del self._links[link]
            # A connection's end is a ConnectionLost saying why (a TLS refusal, a reset).
            lost = reason.value
            why = lost if isinstance(lost, ConnectionLost) else ConnectionLost(str(lost))
            self._driver.input(self._core.lost, link, why)


#: Where requests go to a server (and so are checked against its size limit first).
_SERVING: Final = frozenset({ClientState.CONNECTED, ClientState.DIALING, ClientState.PAUSED})


def _reason(f: Failure) -> BaseException:
    """The exception a failure holds (a connection's end, an attempt's failure)."""
    value = f.value
    return value if value is not None else ConnectionLost(f.getErrorMessage())


def _check_size(message: Message, max_size: int) -> None:
    if isinstance(message, Out) and len(packb(message.tuple)) > max_size:
        raise TupleTooLarge(f"tuple encodes to more than {max_size} bytes")
    if isinstance(message, Atomic) and steps_size(message.steps) > max_size:
        raise TupleTooLarge(f"an atomic request's steps encode to more than {max_size} bytes")
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


def _committed(message: Message) -> tuple[StepResult, ...]:
    if isinstance(message, Committed):
        return message.results
    if isinstance(message, Aborted):
        raise AtomicAborted(message.step, message.reason)
    raise ProtocolViolation(f"unexpected answer {type(message).__name__}")


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
    client = TupleSpaceClient(
        None,
        None,
        endpoints=targets,
        current=start % len(targets),
        pid=pid,
        name=name,
        reconnect=reconnect,
        failover_timeout=failover_timeout,
        attempt_timeout=attempt_timeout,
        keepalive=keepalive,
        says_goodbye=pid is None,
        clock=reactor,
    )
    return client._start()
