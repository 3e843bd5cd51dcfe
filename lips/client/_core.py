"""
The client's core, sans-IO: its requests, its connections and its failover, as an
Automat state machine on the L{lips.kernel} contract.

L{TupleSpaceClient<lips.client.TupleSpaceClient>} hosts it on a reactor's clock through
a L{Driver<lips.kernel.Driver>}, and the replicated simulator
(L{lips.testing.ringsim.ReplicatedSimulation}) hosts it under virtual time, so both run
the same failover rules.  The core never does I/O: it names each connection it opens a
L{Link} and speaks to it with L{Send}: a L{Dial} opens the link, L{Outgoing} frames go
out on it, a L{Hangup} ends it; whoever hosts the core reports back what arrives on the
link (L{ClientCore.received}, L{ClientCore.heard}) and its end (L{ClientCore.lost}),
and reports nothing more of a link once the core hung it up.

States (L{ClientState}; the public names of L{ClientCore.state} in quotes below),
and how the client moves between them::

    new          start                                   -> connecting
    connecting   a WELCOME                               -> connected
                 the last endpoint failed too            -> failed
    connected    lost, UNAVAILABLE or silent (failover)  -> dialing (or at once on to
                                                            paused or failed)
                 lost (no failover)                      -> disconnected
    dialing      a WELCOME                               -> connected
                 the attempt failed: the next endpoint   -> dialing
                 the attempt failed, the round is over   -> paused
                 the failover deadline                   -> failed
    paused       the pause is over                       -> dialing
                 the failover deadline                   -> failed
    any          close                                   -> closed

  - C{new}: made, not started ("connecting").
  - C{connecting}: the first connection: each endpoint once, in turn from C{start}
    ("connecting").
  - C{connected}: requests go to the current server ("connected").
  - C{disconnected}: the connection is gone and failover is off: every request fails
    with L{ConnectionLost} ("connected", as the client always said).
  - C{dialing}: failing over, an attempt (connect and HELLO) in progress ("failing over").
  - C{paused}: failing over, waiting after a round in which no endpoint welcomed it
    ("failing over").
  - C{failed}: no server within the failover timeout, or none at first: requests fail
    with L{NoServerAvailable} ("failed").
  - C{closed}: the caller closed it ("closed").

An input that a state does not allow raises L{automat.NoTransition} before any of the
core's code runs (a request before the client is connected, a frame from a link while
none is open, a retry timer while connected ...).

Inputs, with the effects each may emit:

  - L{ClientCore.start}: dial the first endpoint (C{Send} of L{Dial} and of the HELLO,
    C{StartTimer(ATTEMPT)}).
  - L{ClientCore.request}: a caller's request under the caller's C{handle}: C{Send} it
    (or hold it while failing over; or C{Deliver} its L{Failed} at once when failed,
    disconnected or closed); a C{GUARD} timer when it has a deadline of its own.
  - L{ClientCore.cancel}: the caller gave up on it: a C{Send} of its CANCEL (and
    whether anything was withdrawn).
  - L{ClientCore.close}: C{Send} of L{Hangup}, C{Deliver} of L{Failed} for the requests
    held, timers cancelled.
  - L{ClientCore.received}, L{ClientCore.heard}, L{ClientCore.lost}: from the link.  The
    WELCOME (C{Deliver} of L{Welcomed}, and the held requests sent again); an answer
    (C{Deliver} of L{Answered}, or of L{PutBack} for a tuple taken for a request given
    up on); UNAVAILABLE, or a lost link, fails over (C{Hangup}, C{StartTimer(GIVE_UP)},
    the next C{Dial}) or, with no failover, fails the requests held.
  - L{ClientCore.timer}: C{ATTEMPT} (the attempt took too long: C{Hangup} and the next),
    C{RETRY} (the next round), C{GIVE_UP} (the failover deadline: C{Failed} with
    L{NoServerAvailable} for every request held), C{KEEPALIVE} (a C{Send} of PING to a
    server silent while requests wait on it, then C{Hangup} and failover), and
    C{(GUARD, handle)} (C{Failed} with L{OutcomeUnknown}).

Every input may also emit C{Log}.  Queries: L{ClientCore.state}, L{ClientCore.phase},
L{ClientCore.endpoint}, L{ClientCore.server}, L{ClientCore.max_size},
L{ClientCore.failovers}, L{ClientCore.pid}, L{ClientCore.link}, L{ClientCore.waiting}.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar, Final, Protocol

import attrs
from automat import NoTransition, TypeMachineBuilder
from twisted.logger import LogLevel

from lips.errors import ConnectionLost, OutcomeUnknown, ProtocolViolation, RequestError
from lips.kernel import CancelTimer, Deliver, Effect, Log, Outbox, Send, StartTimer, TimerKey
from lips.tuples import LTuple
from lips.wire import (
    Atomic,
    Cancel,
    Cancelled,
    CheckpointRequest,
    Error,
    ErrorCode,
    Goodbye,
    Hello,
    Matched,
    Message,
    Out,
    Ping,
    RecoverRequest,
    StatsRequest,
    Take,
    Welcome,
)

__all__ = [
    "ATTEMPT_TIMEOUT",
    "FAILOVER_TIMEOUT",
    "GOODBYE_TIMEOUT",
    "KEEPALIVE",
    "MAX_RETRY_DELAY",
    "RETRY_DELAY",
    "SETTLE_TIME",
    "TIMEOUT_GRACE",
    "Answered",
    "ClientCore",
    "ClientState",
    "ClientTimer",
    "Dial",
    "Failed",
    "Hangup",
    "Link",
    "NoServerAvailable",
    "NotConnected",
    "Outgoing",
    "PutBack",
    "Welcomed",
]

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

#: The request id of the HELLO, the first frame on every link.
_HELLO_ID: Final = 1
#: What a caller may ask (the HELLO, PING and CANCEL are the core's own).
_REQUESTS: Final = (Out, Take, Atomic, CheckpointRequest, Goodbye, RecoverRequest, StatsRequest)


class NoServerAvailable(ConnectionLost):
    """
    No server could be reached: when connecting, at none of the endpoints; when failing
    over, at none within the failover timeout.  A client that failed over in vain fails
    its waiting requests and every later call with this error.
    """


# -- what the core says to its links -------------------------------------------------------


@attrs.frozen
class Link:
    """
    One connection of the client, as the core names it: to C{endpoint} (an index into
    the client's endpoints), the client's C{number}th connection (from 1).
    """

    endpoint: int
    number: int


@attrs.frozen
class Dial:
    """Open the link this is sent to: connect to its endpoint."""


@attrs.frozen
class Outgoing:
    """A frame to write on the link: C{message} with request id C{request_id}."""

    request_id: int
    message: Message


@attrs.frozen
class Hangup:
    """
    End the link (C{abort}: at once, dropping what is unsent; else after it), or give
    up connecting it.  The host reports nothing more of it.
    """

    abort: bool = False


# -- what the core delivers to its host ----------------------------------------------------


@attrs.frozen
class Welcomed:
    """A server welcomed the client on C{link}: from now on requests go there."""

    link: Link
    welcome: Welcome


@attrs.frozen
class NotConnected:
    """
    The first connection failed at every endpoint: C{error} is the one endpoint's own
    error, or a L{NoServerAvailable} naming each endpoint and its error.
    """

    error: BaseException


@attrs.frozen
class Answered:
    """The request C{handle} has its server's answer, C{message}."""

    handle: int
    message: Message


@attrs.frozen
class Failed:
    """
    The request C{handle} ends without an answer: L{ConnectionLost},
    L{NoServerAvailable} or L{OutcomeUnknown}.
    """

    handle: int
    error: Exception


@attrs.frozen
class PutBack:
    """A tuple taken for a request its caller gave up on: put it back into the space."""

    tuple: LTuple


class ClientTimer(enum.Enum):
    """The core's timers."""

    ATTEMPT = "attempt"
    """The attempt in progress (connect and HELLO) has taken too long."""
    RETRY = "retry"
    """The pause after a round that found no server is over."""
    GIVE_UP = "give up"
    """The failover timeout: no server was found in time."""
    KEEPALIVE = "keepalive"
    """The server has been silent while requests wait on it: probe it, or leave it."""
    GUARD = "guard"
    """With the request's handle: its answer is overdue (L{OutcomeUnknown})."""


class ClientState(enum.Enum):
    """Where the client stands with its servers (see the module docstring)."""

    NEW = "new"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    DIALING = "dialing"
    PAUSED = "paused"
    FAILED = "failed"
    CLOSED = "closed"

    @property
    def public(self) -> str:
        """The name L{TupleSpaceClient.state<lips.client.TupleSpaceClient.state>} says."""
        return _PUBLIC[self]


_PUBLIC: Final = {
    ClientState.NEW: "connecting",
    ClientState.CONNECTING: "connecting",
    ClientState.CONNECTED: "connected",
    ClientState.DISCONNECTED: "connected",
    ClientState.DIALING: "failing over",
    ClientState.PAUSED: "failing over",
    ClientState.FAILED: "failed",
    ClientState.CLOSED: "closed",
}


# -- the shared data -----------------------------------------------------------------------


@attrs.define(eq=False)
class _Request:
    """
    One request of the caller, from the call until its answer, across the links it is
    sent on.

    @ivar deadline: for a take with a timeout, when that timeout ends: sent again, it
        asks the next server for what is left.
    @ivar abandoned: the caller cancelled it or gave up on it; an answer that comes all
        the same is only checked for a tuple to put back.
    @ivar link: where it waits for its answer; C{None} while it waits for a server.
    @ivar rid: its request id on C{link}.
    @ivar sends: how many times it was sent.
    @ivar serial: the order the caller made its requests in, kept when they are re-sent.
    """

    handle: int
    message: Message
    serial: int
    deadline: float | None = None
    guarded: bool = False
    abandoned: bool = False
    link: Link | None = None
    rid: int = 0
    sends: int = 0

    @property
    def removes(self) -> bool:
        """Whether it may take a tuple out of the space (an in or inp)."""
        return isinstance(self.message, Take) and self.message.kind.removes


@attrs.define(eq=False)
class _Client:
    """
    What every state of the machine shares: the settings, the requests, the link, the
    failover's count.  The transitions below act through its helpers.
    """

    endpoints: tuple[str, ...]
    pid: int | None
    name: str
    reconnect: bool
    failover_timeout: float
    attempt_timeout: float
    keepalive: float | None
    start: int
    outbox: Outbox
    requests: dict[int, _Request] = attrs.Factory(dict)
    """Every request not yet answered, by handle (given-up ones until they are)."""
    queue: list[_Request] = attrs.Factory(list)
    """The requests waiting for a server (while failing over)."""
    in_flight: dict[int, _Request] = attrs.Factory(dict)
    """The requests waiting on the current link, by request id."""
    link: Link | None = None
    """The link connected, or being tried."""
    links: int = 0
    last_rid: int = 0
    at: int | None = None
    """The endpoint connected to (kept when the link is lost with failover off)."""
    index: int = 0
    """The endpoint last tried."""
    server: str = ""
    max_size: int = 0
    failovers: int = 0
    tried: int = 0
    delay: float = RETRY_DELAY
    deadline: float | None = None
    connected_at: float = 0.0
    last_error: str = ""
    errors: list[str] = attrs.Factory(list)
    """The first connection's failed attempts, one line each."""
    last_exception: BaseException | None = None
    failure: str = ""
    """Why requests fail at once (disconnected, failed or closed)."""
    watching: bool = False
    heard: bool = False
    probing: bool = False
    serials: Iterator[int] = attrs.Factory(itertools.count)

    # -- naming ----------------------------------------------------------------------------

    def description(self, index: int | None) -> str | None:
        if index is None or not self.endpoints:
            return None
        return self.endpoints[index]

    def describe(self) -> str:
        return f"server {self.server!r} at {self.description(self.at)}"

    def log(self, level: LogLevel, format: str, **fields: object) -> None:
        self.outbox.log(level, format, **fields)

    def check_link(self, link: Link) -> None:
        if link != self.link:
            raise ValueError(f"{link!r} is not the client's link ({self.link!r})")

    def current(self) -> Link:
        """The link connected or being tried (there is one in every state that asks)."""
        if self.link is None:
            raise RuntimeError("the client has no link")
        return self.link

    # -- requests --------------------------------------------------------------------------

    def check_request(self, handle: int, message: Message) -> None:
        if not isinstance(message, _REQUESTS):
            raise TypeError(f"not a request a caller makes: {message!r}")
        if handle in self.requests:
            raise ValueError(f"request {handle} is already waiting")

    def register(self, handle: int, message: Message, now: float) -> _Request:
        """Keep the request C{handle}, guarded if it has a deadline of its own."""
        self.check_request(handle, message)
        p = _Request(handle, message, next(self.serials))
        guard: float | None = None
        if isinstance(message, Take) and message.timeout is not None:
            p.deadline = now + message.timeout
            guard = message.timeout + TIMEOUT_GRACE
        elif isinstance(message, Goodbye):
            guard = GOODBYE_TIMEOUT
        if guard is not None:
            p.guarded = True
            self.outbox.start_timer((ClientTimer.GUARD, handle), now + guard)
        self.requests[handle] = p
        return p

    def send(self, p: _Request, message: Message, now: float) -> None:
        """Send C{p} (again), as C{message}, on the current link."""
        link = self.current()
        rid = self.last_rid % 0xFFFFFFFF + 1
        self.last_rid = rid
        self.in_flight[rid] = p
        p.link, p.rid = link, rid
        p.sends += 1
        self.outbox.send(link, Outgoing(rid, message))
        self.watch(now)

    def withdraw(self, p: _Request) -> None:
        """Ask the server to withdraw C{p}, if it waits on the current link."""
        if p.link is not None and p.link == self.link and self.in_flight.get(p.rid) is p:
            self.outbox.send(self.link, Outgoing(0, Cancel(p.rid)))

    def abandon(self, p: _Request) -> None:
        p.abandoned = True
        self.unguard(p)
        self.withdraw(p)

    def unguard(self, p: _Request) -> None:
        if p.guarded:
            p.guarded = False
            self.outbox.cancel_timer((ClientTimer.GUARD, p.handle))

    def settle(self, p: _Request) -> None:
        """C{p} needs nothing more: forget it."""
        self.unguard(p)
        self.requests.pop(p.handle, None)

    def answer(self, p: _Request, message: Message) -> None:
        self.settle(p)
        if not p.abandoned:
            self.outbox.deliver(Answered(p.handle, message))
        elif isinstance(message, Matched) and p.removes:
            # The caller gave up on it, but it took a tuple: put the tuple back.
            self.log(
                LogLevel.info, "Returning a tuple taken by a cancelled in_: {t!r}", t=message.tuple
            )
            self.outbox.deliver(PutBack(message.tuple))

    def retry_message(self, p: _Request, now: float) -> Message:
        """C{p}'s request as sent again: a waiting in_/rd asks for the time left."""
        message = p.message
        if isinstance(message, Take) and message.timeout is not None and p.deadline is not None:
            return attrs.evolve(message, timeout=max(0.0, p.deadline - now))
        return message

    def detach(self) -> list[_Request]:
        """Take every request off the current link, in the caller's order."""
        self.unwatch()
        held, self.in_flight = list(self.in_flight.values()), {}
        for p in held:
            p.link = None
        return sorted(held, key=_serial)

    def fail(self, held: Sequence[_Request], error: Callable[[str], Exception], why: str) -> None:
        """Fail the requests C{held} with C{error(why)}: no server is left for them."""
        for p in sorted(held, key=_serial):
            self.settle(p)
            if not p.abandoned:
                self.outbox.deliver(Failed(p.handle, error(why)))

    # -- the link --------------------------------------------------------------------------

    def dial(self, index: int, now: float) -> None:
        """Try endpoint C{index}: a new link, its HELLO, and the attempt's timer."""
        self.index = index
        self.links += 1
        self.link = link = Link(index, self.links)
        self.last_rid = _HELLO_ID
        self.outbox.send(link, Dial())
        self.outbox.send(link, Outgoing(_HELLO_ID, Hello(self.pid, self.name)))
        self.outbox.start_timer(ClientTimer.ATTEMPT, now + self.attempt_timeout)

    def hang_up(self, abort: bool = False) -> None:
        if self.link is not None:
            self.outbox.send(self.link, Hangup(abort))
            self.link = None

    def welcome(self, message: Message) -> Welcome | Exception:
        """C{message}, the answer to the HELLO, if it welcomes the client; else why not."""
        if isinstance(message, Error):
            return RequestError(message.code, message.message)
        if not isinstance(message, Welcome):
            return ProtocolViolation(f"expected Welcome, got {type(message).__name__}")
        if self.pid is not None and message.pid != self.pid:
            return ProtocolViolation(f"the server welcomed process {message.pid}, not {self.pid}")
        return message

    def adopt(self, welcome: Welcome, now: float) -> None:
        """The current link's server welcomed the client."""
        link = self.current()
        self.outbox.cancel_timer(ClientTimer.ATTEMPT)
        self.pid = welcome.pid
        self.server = welcome.server
        self.max_size = welcome.max_size
        self.at = link.endpoint
        self.connected_at = now
        self.outbox.deliver(Welcomed(link, welcome))

    def watch(self, now: float) -> None:
        """
        Notice a server that went silent while requests wait on it (a cut link: no FIN,
        no RST): with failover and a keepalive, and requests waiting, arm the timer.
        """
        if (
            self.reconnect
            and self.keepalive is not None
            and self.in_flight
            and not self.watching
            and self.link is not None
        ):
            self.watching = True
            self.heard = self.probing = False
            self.outbox.start_timer(ClientTimer.KEEPALIVE, now + self.keepalive)

    def unwatch(self) -> None:
        if self.watching:
            self.watching = False
            self.outbox.cancel_timer(ClientTimer.KEEPALIVE)

    # -- failing over ----------------------------------------------------------------------

    def try_next(self, inputs: _Inputs, now: float) -> None:
        """Dial the next endpoint in turn, or end a round in which none welcomed."""
        if self.tried == len(self.endpoints):
            inputs._round_over(now)
            return
        self.tried += 1
        self.dial((self.index + 1) % len(self.endpoints), now)

    def stop(self, error: Callable[[str], Exception], why: str) -> None:
        """Stop failing over: fail the requests held with C{error(why)}."""
        self.failure = why
        self.hang_up(abort=True)
        for key in (ClientTimer.ATTEMPT, ClientTimer.RETRY, ClientTimer.GIVE_UP):
            self.outbox.cancel_timer(key)
        held, self.queue = self.queue, []
        self.fail(held, error, why)
        for p in held:
            if p.abandoned and p.sends and p.removes:
                self.log(
                    LogLevel.warn,
                    "A cancelled in_ (event {event}) may have taken a tuple at a server"
                    " that is gone; it cannot be put back: {why}",
                    event=getattr(p.message, "event", None),
                    why=why,
                )

    def attempt_failed(self, error: BaseException, hangup: Hangup | None) -> str:
        """
        The attempt at the current link failed with C{error}: forget the link (sending
        it C{hangup} first, unless it is gone already); why, naming the endpoint.
        """
        link = self.current()
        if hangup is not None:
            self.outbox.send(link, hangup)
        self.link = None
        return f"{self.endpoints[link.endpoint]}: {error}"


def _serial(p: _Request) -> int:
    return p.serial


# -- the machine ---------------------------------------------------------------------------


class _Inputs(Protocol):
    """The machine's inputs, by who sends them (each takes C{now} last)."""

    def phase(self) -> ClientState:
        """The state (a query, allowed in every state)."""

    # -- from the caller

    def start(self, now: float) -> None:
        """Connect: try the endpoints in turn from C{start}."""

    def request(self, handle: int, message: Message, now: float) -> None:
        """The caller asks C{message}; its outcome is delivered under C{handle}."""

    def cancel(self, handle: int, now: float) -> bool:
        """The caller gave up on request C{handle}: whether it was withdrawn."""

    def close(self, now: float) -> None:
        """The caller closes the client."""

    # -- from the link (the current one, or the one being tried)

    def received(self, link: Link, rid: int, message: Message, now: float) -> None:
        """A frame arrived on C{link}."""

    def heard(self, link: Link, now: float) -> None:
        """Bytes arrived on C{link} that made no frame yet."""

    def lost(self, link: Link, reason: BaseException, now: float) -> None:
        """C{link} could not be opened, or it ended."""

    # -- from the timers

    def attempt_expired(self, now: float) -> None:
        """L{ClientTimer.ATTEMPT}."""

    def retry_due(self, now: float) -> None:
        """L{ClientTimer.RETRY}."""

    def deadline_passed(self, now: float) -> None:
        """L{ClientTimer.GIVE_UP} (or a failover that began past the deadline)."""

    def keepalive_due(self, now: float) -> None:
        """L{ClientTimer.KEEPALIVE}."""

    def guard_expired(self, handle: int, now: float) -> None:
        """C{(ClientTimer.GUARD, handle)}."""

    # -- from the machine itself: called within a transition, run once it is done

    def _welcomed(self, welcome: Welcome, now: float) -> None:
        """The link's server welcomed the client."""

    def _round_over(self, now: float) -> None:
        """Every endpoint was tried and none welcomed the client."""

    def _leave(self, why: str, now: float) -> None:
        """Leave the current server and fail over."""

    def _disconnected(self, why: str, now: float) -> None:
        """The link is gone and failover is off."""


_builder = TypeMachineBuilder(_Inputs, _Client)
_NEW = _builder.state("new")
_CONNECTING = _builder.state("connecting")
_CONNECTED = _builder.state("connected")
_DISCONNECTED = _builder.state("disconnected")
_DIALING = _builder.state("dialing")
_PAUSED = _builder.state("paused")
_FAILED = _builder.state("failed")
_CLOSED = _builder.state("closed")

for _state, _phase in [
    (_NEW, ClientState.NEW),
    (_CONNECTING, ClientState.CONNECTING),
    (_CONNECTED, ClientState.CONNECTED),
    (_DISCONNECTED, ClientState.DISCONNECTED),
    (_DIALING, ClientState.DIALING),
    (_PAUSED, ClientState.PAUSED),
    (_FAILED, ClientState.FAILED),
    (_CLOSED, ClientState.CLOSED),
]:
    _state.upon(_Inputs.phase).loop().returns(_phase)

# -- connecting ----------------------------------------------------------------------------


@_NEW.upon(_Inputs.start).to(_CONNECTING)
def _start(inputs: _Inputs, c: _Client, now: float) -> None:
    c.tried = 1
    c.dial(c.start, now)


def _first_attempt_failed(
    inputs: _Inputs, c: _Client, error: BaseException, hangup: Hangup | None, now: float
) -> None:
    c.errors.append(c.attempt_failed(error, hangup))
    c.last_exception = error
    if c.tried < len(c.endpoints):
        c.tried += 1
        c.dial((c.start + c.tried - 1) % len(c.endpoints), now)
    else:
        inputs._round_over(now)


@_CONNECTING.upon(_Inputs.received).loop()
def _first_hello_answered(  # noqa: PLR0917 (Automat's two, the input's four)
    inputs: _Inputs, c: _Client, link: Link, rid: int, message: Message, now: float
) -> None:
    c.check_link(link)
    if rid != _HELLO_ID:
        return
    welcome = c.welcome(message)
    if isinstance(welcome, Welcome):
        inputs._welcomed(welcome, now)
    else:
        _first_attempt_failed(inputs, c, welcome, Hangup(), now)


@_CONNECTING.upon(_Inputs.lost).loop()
def _first_link_lost(
    inputs: _Inputs, c: _Client, link: Link, reason: BaseException, now: float
) -> None:
    c.check_link(link)
    _first_attempt_failed(inputs, c, reason, None, now)


@_CONNECTING.upon(_Inputs.attempt_expired).loop()
def _first_attempt_expired(inputs: _Inputs, c: _Client, now: float) -> None:
    _first_attempt_failed(inputs, c, _attempt_timeout(c), Hangup(abort=True), now)


@_CONNECTING.upon(_Inputs._welcomed).to(_CONNECTED)
def _connected(inputs: _Inputs, c: _Client, welcome: Welcome, now: float) -> None:
    c.adopt(welcome, now)


@_CONNECTING.upon(_Inputs._round_over).to(_FAILED)
def _not_connected(inputs: _Inputs, c: _Client, now: float) -> None:
    c.outbox.cancel_timer(ClientTimer.ATTEMPT)
    error = c.last_exception
    if len(c.endpoints) == 1 and error is not None:
        c.failure = str(error)
    else:
        c.failure = "no server could be reached: " + "; ".join(c.errors)
        error = NoServerAvailable(c.failure)
    c.outbox.deliver(NotConnected(error))


@_CONNECTING.upon(_Inputs.close).to(_CLOSED)
def _close_connecting(inputs: _Inputs, c: _Client, now: float) -> None:
    c.failure = "the client was closed"
    c.hang_up(abort=True)
    c.outbox.cancel_timer(ClientTimer.ATTEMPT)


def _attempt_timeout(c: _Client) -> TimeoutError:
    return TimeoutError(f"no WELCOME within {c.attempt_timeout:g} s")


# -- connected -----------------------------------------------------------------------------


@_CONNECTED.upon(_Inputs.request).loop()
def _send_request(inputs: _Inputs, c: _Client, handle: int, message: Message, now: float) -> None:
    c.send(c.register(handle, message, now), message, now)


@_CONNECTED.upon(_Inputs.received).loop()
def _answer_received(  # noqa: PLR0917 (Automat's two, the input's four)
    inputs: _Inputs, c: _Client, link: Link, rid: int, message: Message, now: float
) -> None:
    c.check_link(link)
    c.heard = True
    p = c.in_flight.pop(rid, None)
    # The keepalive timer is left armed when nothing is in flight any more: it finds
    # nothing waiting when it fires and stops there, so that a request and its answer
    # do not start and cancel a timer each.
    if p is None:
        return  # the answer to a CANCEL or a PING, or to a request given up on
    p.link = None
    if c.reconnect:
        if isinstance(message, Error) and message.code is ErrorCode.UNAVAILABLE:
            c.queue.append(p)
            c.hang_up()
            inputs._leave(f"{c.describe()} is unavailable", now)
            return
        if isinstance(message, Cancelled) and p.sends > 1 and not p.abandoned:
            # Sent again after a failover, and withdrawn all the same: the old server
            # closing the waiters of the old connection.  The caller still waits.
            c.log(
                LogLevel.info,
                "Event {event} was withdrawn at {server!r} though the caller still waits for"
                " it (an old server closing the waiters of a lost connection); sending it"
                " again",
                server=c.server,
                event=getattr(p.message, "event", None),
            )
            c.send(p, c.retry_message(p, now), now)
            return
    c.answer(p, message)


@_CONNECTED.upon(_Inputs.heard).loop()
def _heard(inputs: _Inputs, c: _Client, link: Link, now: float) -> None:
    c.check_link(link)
    c.heard = True


@_CONNECTED.upon(_Inputs.lost).loop()
def _link_lost(inputs: _Inputs, c: _Client, link: Link, reason: BaseException, now: float) -> None:
    c.check_link(link)
    c.link = None
    if c.reconnect:
        inputs._leave(f"lost {c.describe()}: {reason}", now)
    else:
        inputs._disconnected(str(reason), now)


@_CONNECTED.upon(_Inputs.keepalive_due).loop()
def _keepalive(inputs: _Inputs, c: _Client, now: float) -> None:
    c.watching = False
    link, interval = c.current(), c.keepalive
    if interval is None or not c.in_flight:
        return  # not armed
    if c.heard:
        c.heard = c.probing = False
    elif c.probing:
        c.log(
            LogLevel.warn,
            "No word from the server for {seconds} s with requests waiting: dropping the"
            " connection",
            seconds=2 * interval,
        )
        c.hang_up(abort=True)
        inputs._leave(f"lost {c.describe()}: silent for {2 * interval:g} s", now)
        return
    else:
        # Its answer is matched to no request; that anything arrived is what counts (a
        # server older than PING answers it with an error, which counts too).
        c.probing = True
        c.outbox.send(link, Outgoing(0, Ping()))
    c.watching = True
    c.outbox.start_timer(ClientTimer.KEEPALIVE, now + interval)


@_CONNECTED.upon(_Inputs._leave).to(_DIALING)
def _fail_over(inputs: _Inputs, c: _Client, why: str, now: float) -> None:
    """Leave the server; look for another, holding every request meanwhile."""
    c.log(LogLevel.warn, "Failing over: {why}", why=why)
    c.queue.extend(c.detach())
    c.at = None
    c.last_error = why
    if c.deadline is None or now - c.connected_at >= SETTLE_TIME:
        # A new count.  A server that kept the client for less than SETTLE_TIME (one that
        # answered UNAVAILABLE, say) is one more failed attempt of the last count, so
        # servers that all refuse are tried in rounds with pauses, not without end.
        c.deadline = now + c.failover_timeout
        c.tried = 0
        c.delay = RETRY_DELAY
    if now >= c.deadline:
        inputs.deadline_passed(now)
        return
    c.outbox.start_timer(ClientTimer.GIVE_UP, c.deadline)
    c.try_next(inputs, now)


@_CONNECTED.upon(_Inputs._disconnected).to(_DISCONNECTED)
def _disconnect(inputs: _Inputs, c: _Client, why: str, now: float) -> None:
    c.failure = why
    c.fail(c.detach(), ConnectionLost, why)


@_CONNECTED.upon(_Inputs.close).to(_CLOSED)
def _close_connected(inputs: _Inputs, c: _Client, now: float) -> None:
    c.failure = "the client was closed"
    c.hang_up()
    c.fail(c.detach(), ConnectionLost, c.failure)


# -- failing over --------------------------------------------------------------------------


def _attempt_failed(
    inputs: _Inputs, c: _Client, error: BaseException, hangup: Hangup | None, now: float
) -> None:
    c.last_error = c.attempt_failed(error, hangup)
    c.log(LogLevel.info, "Could not fail over to {why}", why=c.last_error)
    c.try_next(inputs, now)


@_DIALING.upon(_Inputs.received).loop()
def _hello_answered(  # noqa: PLR0917 (Automat's two, the input's four)
    inputs: _Inputs, c: _Client, link: Link, rid: int, message: Message, now: float
) -> None:
    c.check_link(link)
    if rid != _HELLO_ID:
        return
    welcome = c.welcome(message)
    if isinstance(welcome, Welcome):
        inputs._welcomed(welcome, now)
    else:
        _attempt_failed(inputs, c, welcome, Hangup(), now)


@_DIALING.upon(_Inputs.lost).loop()
def _attempt_lost(
    inputs: _Inputs, c: _Client, link: Link, reason: BaseException, now: float
) -> None:
    c.check_link(link)
    _attempt_failed(inputs, c, reason, None, now)


@_DIALING.upon(_Inputs.attempt_expired).loop()
def _attempt_expired(inputs: _Inputs, c: _Client, now: float) -> None:
    _attempt_failed(inputs, c, _attempt_timeout(c), Hangup(abort=True), now)


@_CONNECTING.upon(_Inputs.heard).loop()
@_DIALING.upon(_Inputs.heard).loop()
def _heard_dialing(inputs: _Inputs, c: _Client, link: Link, now: float) -> None:
    c.check_link(link)


@_DIALING.upon(_Inputs._welcomed).to(_CONNECTED)
def _failed_over(inputs: _Inputs, c: _Client, welcome: Welcome, now: float) -> None:
    c.outbox.cancel_timer(ClientTimer.GIVE_UP)
    c.failovers += 1
    c.adopt(welcome, now)
    c.log(
        LogLevel.info,
        "Failed over to {server!r} at {endpoint}",
        server=c.server,
        endpoint=c.description(c.at),
    )
    # Every request still wanted goes to the new server, in the caller's order.
    held, c.queue = sorted(c.queue, key=_serial), []
    for p in held:
        message = p.message
        if not p.abandoned:
            c.send(p, c.retry_message(p, now), now)
        elif p.sends and isinstance(message, Take) and message.kind.removes:
            # A cancelled in_/inp may have taken a tuple at the old server whose answer
            # never came.  Asking for the same event again returns that answer if there
            # was one (and the tuple is put back); asked as an inp, it never waits, and
            # the CANCEL withdraws it if it waits all the same.
            c.send(p, Take(message.kind.INP, message.event, message.template), now)
            c.withdraw(p)
        else:
            c.settle(p)


@_DIALING.upon(_Inputs._round_over).to(_PAUSED)
def _pause(inputs: _Inputs, c: _Client, now: float) -> None:
    c.outbox.cancel_timer(ClientTimer.ATTEMPT)
    c.tried = 0
    c.outbox.start_timer(ClientTimer.RETRY, now + c.delay)
    c.delay = min(c.delay * 2, MAX_RETRY_DELAY)


@_PAUSED.upon(_Inputs.retry_due).to(_DIALING)
def _next_round(inputs: _Inputs, c: _Client, now: float) -> None:
    c.try_next(inputs, now)


@_DIALING.upon(_Inputs.request).loop()
@_PAUSED.upon(_Inputs.request).loop()
def _hold_request(inputs: _Inputs, c: _Client, handle: int, message: Message, now: float) -> None:
    c.queue.append(c.register(handle, message, now))


@_DIALING.upon(_Inputs.deadline_passed).to(_FAILED)
@_PAUSED.upon(_Inputs.deadline_passed).to(_FAILED)
def _give_up(inputs: _Inputs, c: _Client, now: float) -> None:
    c.stop(
        NoServerAvailable,
        f"no server could be reached within {c.failover_timeout:g} s ({c.last_error})",
    )


@_DIALING.upon(_Inputs.close).to(_CLOSED)
@_PAUSED.upon(_Inputs.close).to(_CLOSED)
def _close_failing_over(inputs: _Inputs, c: _Client, now: float) -> None:
    c.stop(ConnectionLost, "the client was closed while failing over")


# -- in every state with requests ----------------------------------------------------------


@_CONNECTED.upon(_Inputs.cancel).loop()
@_DIALING.upon(_Inputs.cancel).loop()
@_PAUSED.upon(_Inputs.cancel).loop()
def _cancel(inputs: _Inputs, c: _Client, handle: int, now: float) -> bool:
    p = c.requests.get(handle)
    if p is None or p.abandoned:
        return False  # its outcome is on its way to the caller (or it was given up on)
    c.abandon(p)
    return True


@_CONNECTED.upon(_Inputs.guard_expired).loop()
@_DIALING.upon(_Inputs.guard_expired).loop()
@_PAUSED.upon(_Inputs.guard_expired).loop()
def _overdue(inputs: _Inputs, c: _Client, handle: int, now: float) -> None:
    p = c.requests[handle]
    p.guarded = False
    if isinstance(p.message, Goodbye):
        why = f"no answer to GOODBYE within {GOODBYE_TIMEOUT:g} s"
    else:
        why = (
            f"no answer {TIMEOUT_GRACE:g} s past the operation's timeout: it may or may not"
            " have taken effect"
        )
    c.outbox.deliver(Failed(handle, OutcomeUnknown(why)))
    c.abandon(p)


# -- the ends ------------------------------------------------------------------------------


@_DISCONNECTED.upon(_Inputs.request).loop()
@_CLOSED.upon(_Inputs.request).loop()
def _refuse_lost(inputs: _Inputs, c: _Client, handle: int, message: Message, now: float) -> None:
    c.check_request(handle, message)
    c.outbox.deliver(Failed(handle, ConnectionLost(c.failure)))


@_FAILED.upon(_Inputs.request).loop()
def _refuse_failed(inputs: _Inputs, c: _Client, handle: int, message: Message, now: float) -> None:
    c.check_request(handle, message)
    c.outbox.deliver(Failed(handle, NoServerAvailable(c.failure)))


# A cancel that arrives once every request has failed (a caller reacting to one failure
# by cancelling another, whose failure is on its way): nothing is left to withdraw.
_DISCONNECTED.upon(_Inputs.cancel).loop().returns(False)
_FAILED.upon(_Inputs.cancel).loop().returns(False)
_CLOSED.upon(_Inputs.cancel).loop().returns(False)


@_NEW.upon(_Inputs.close).to(_CLOSED)
@_DISCONNECTED.upon(_Inputs.close).to(_CLOSED)
@_FAILED.upon(_Inputs.close).to(_CLOSED)
def _close_idle(inputs: _Inputs, c: _Client, now: float) -> None:
    c.failure = "the client was closed"


_CLOSED.upon(_Inputs.close).loop().returns(None)

_Machine = _builder.build()
del _builder, _state, _phase


def _index(automaton: Any) -> None:
    """
    Give the built machine's automaton a table of its transitions.  Automat finds a
    transition by scanning all of them and comparing dataclass states field by field,
    some 25 comparisons an input for this machine, five inputs a request and its answer:
    a third of the client's time on loopback.  The states live as long as the module, so
    the table is keyed by their identity; an input a state does not take raises
    L{NoTransition} as before, and no transition is added after L{build}.
    """
    table = {
        (id(state), symbol): (to, tuple(outputs))
        for state, symbol, to, outputs in automaton.allTransitions()
    }

    def output_for_input(state: Any, symbol: str) -> tuple[Any, list[Any]]:
        try:
            to, outputs = table[(id(state), symbol)]
        except KeyError:
            raise NoTransition(state=state, symbol=symbol) from None
        return to, list(outputs)

    automaton.outputForInput = output_for_input


_index(_Machine.__automat_automaton__)


# -- the core ------------------------------------------------------------------------------


class ClientCore:
    """
    The client's requests, connections and failover (see the module docstring).

    @param endpoints: the descriptions of the servers it may use, in the order to try
        them (empty only for a client already welcomed, without failover).
    @param pid: the process id to say HELLO with; C{None} to be given one.
    @param name: the name to say HELLO with.
    @param reconnect: fail over when the connection is lost, the server is UNAVAILABLE
        or silent; otherwise requests fail with L{ConnectionLost} once it is lost.
    @param failover_timeout: how long the client may be without a server that serves it
        before it gives up: counted from losing a server, and not counted afresh when
        the next server also refuses or loses it within L{SETTLE_TIME}.
    @param attempt_timeout: how long one attempt at one endpoint may take.
    @param keepalive: when failing over, how long a server may stay silent while
        requests wait on it before it is asked for a sign of life, and then again
        before the client moves on (None: never).
    @param start: the endpoint to try first (or, with C{welcome}, the one connected to).
    @param welcome: the WELCOME of a connection opened before, for a core that starts
        connected on it (its link is L{ClientCore.link}, whose HELLO had request id 1);
        C{now} is when it was welcomed.
    """

    emits: ClassVar[frozenset[type[Effect]]] = frozenset(
        {Send, Deliver, StartTimer, CancelTimer, Log}
    )

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        pid: int | None = None,
        name: str = "",
        reconnect: bool = False,
        failover_timeout: float = FAILOVER_TIMEOUT,
        attempt_timeout: float = ATTEMPT_TIMEOUT,
        keepalive: float | None = KEEPALIVE,
        start: int = 0,
        welcome: Welcome | None = None,
        now: float = 0.0,
    ) -> None:
        endpoints = tuple(endpoints)
        if reconnect and not endpoints:
            raise ValueError("failing over needs the endpoints to fail over to")
        if not endpoints and welcome is None:
            raise ValueError("connecting needs at least one endpoint")
        if failover_timeout <= 0 or attempt_timeout <= 0:
            raise ValueError("failover and attempt timeouts must be positive")
        if keepalive is not None and keepalive <= 0:
            raise ValueError("the keepalive interval must be positive")
        if endpoints and not 0 <= start < len(endpoints):
            raise ValueError(f"no endpoint {start} of {len(endpoints)}")
        self._client = _Client(
            endpoints,
            pid,
            name,
            reconnect,
            failover_timeout,
            attempt_timeout,
            keepalive,
            start,
            Outbox(ClientCore.emits),
            index=start,
        )
        if welcome is None:
            self._machine = _Machine(self._client)
            return
        c = self._client
        c.links = 1
        c.link = Link(start, 1)
        c.last_rid = _HELLO_ID
        c.pid, c.server, c.max_size = welcome.pid, welcome.server, welcome.max_size
        c.at = start
        c.connected_at = now
        self._machine = _Machine(c, _CONNECTED)

    def drain(self) -> list[Effect]:
        return self._client.outbox.drain()

    # -- inputs ----------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Connect: try each endpoint once, in turn from C{start}."""
        self._machine.start(now)

    def request(self, handle: int, message: Message, now: float) -> None:
        """
        The caller asks C{message} (an OUT, a take, a checkpoint or recover request,
        STATS or GOODBYE); its outcome is delivered as L{Answered} or L{Failed} under
        C{handle}, which must not be waiting already.
        """
        self._machine.request(handle, message, now)

    def cancel(self, handle: int, now: float) -> bool:
        """
        The caller gave up on request C{handle}: withdraw it.  Nothing more is delivered
        for it (but a L{PutBack} of a tuple it took), and the answer is True; False if
        its outcome was delivered already (a host that has not carried that out yet
        still will).
        """
        return self._machine.cancel(handle, now)

    def close(self, now: float) -> None:
        """Hang up, or stop connecting or failing over; the requests held fail."""
        self._machine.close(now)

    def received(self, link: Link, rid: int, message: Message, now: float) -> None:
        """A frame, C{message} with request id C{rid}, arrived on C{link}."""
        self._machine.received(link, rid, message, now)

    def heard(self, link: Link, now: float) -> None:
        """Bytes arrived on C{link} that made no whole frame yet (the server is alive)."""
        self._machine.heard(link, now)

    def lost(self, link: Link, reason: BaseException, now: float) -> None:
        """C{link} could not be opened, or it ended, because of C{reason}."""
        self._machine.lost(link, reason, now)

    def timer(self, key: TimerKey, now: float) -> None:
        machine = self._machine
        if isinstance(key, tuple) and key[0] is ClientTimer.GUARD and isinstance(key[1], int):
            machine.guard_expired(key[1], now)
        elif key is ClientTimer.ATTEMPT:
            machine.attempt_expired(now)
        elif key is ClientTimer.RETRY:
            machine.retry_due(now)
        elif key is ClientTimer.GIVE_UP:
            machine.deadline_passed(now)
        elif key is ClientTimer.KEEPALIVE:
            machine.keepalive_due(now)
        else:
            raise ValueError(f"not a timer of the client: {key!r}")

    # -- queries ---------------------------------------------------------------------------

    @property
    def phase(self) -> ClientState:
        return self._machine.phase()

    @property
    def state(self) -> str:
        """C{"connecting"}, C{"connected"}, C{"failing over"}, C{"failed"} or C{"closed"}."""
        return self.phase.public

    @property
    def endpoint(self) -> str | None:
        """The endpoint of the server it is on; C{None} while it has none."""
        if self.phase not in (ClientState.CONNECTED, ClientState.DISCONNECTED):
            return None
        return self._client.description(self._client.at)

    @property
    def link(self) -> Link | None:
        """The link connected, or being tried."""
        return self._client.link

    @property
    def server(self) -> str:
        """The name of the last server that welcomed it."""
        return self._client.server

    @property
    def max_size(self) -> int:
        """That server's tuple size limit."""
        return self._client.max_size

    @property
    def pid(self) -> int | None:
        """The process id (the welcome's; before one, the one given, if any)."""
        return self._client.pid

    @property
    def failovers(self) -> int:
        """How many times it moved to another connection."""
        return self._client.failovers

    @property
    def waiting(self) -> int:
        """How many requests wait for an answer (given-up ones included)."""
        return len(self._client.requests)
