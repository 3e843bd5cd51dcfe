"""
The MessageServer core: client sessions on one side, a tuple-space backend on the other.

The core is sans-IO.  A transport adapter opens a L{Session} per connection, feeds it
the messages it decodes and writes the bytes the session hands to its C{send} callable.
Operations go to an L{ISpaceBackend} as L{Operation}s; the backend reports every answer
as a L{Completion} through L{MessageServer.completed}, at once (the local backend) or
once the operation has been ordered and applied (a replicated backend), so the same
core serves both without change.
"""

from __future__ import annotations

import collections
import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from zope.interface import Attribute, Interface, implementer

from lips.server._limits import ServerLimits
from lips.space import Completion, Kind, Status, TupleSpace
from lips.tuples import DEFAULT_LIMITS, Limits, LTuple, Template, packb, unpackb
from lips.wire import (
    Cancel,
    Cancelled,
    CheckpointRequest,
    Error,
    ErrorCode,
    Gone,
    Goodbye,
    Hello,
    Matched,
    Message,
    NoMatch,
    Out,
    Ping,
    Pong,
    Recovered,
    RecoverRequest,
    Stats,
    StatsRequest,
    Stored,
    Take,
    TimedOut,
    Welcome,
    encode_message,
)

__all__ = [
    "ISpaceBackend",
    "LocalBackend",
    "MessageServer",
    "Operation",
    "Session",
    "Unavailable",
]

_PID_BITS: Final = 62
_OP_COUNTERS: Final = {kind: f"ops.{kind.name.lower()}" for kind in Kind}


@attrs.frozen
class Operation:
    """One tuple-space operation of process C{pid}, its event number C{event}."""

    kind: Kind
    pid: int
    event: int
    payload: LTuple | Template | bytes
    """The tuple of an OUT, the template of IN, RD, INP or RDP, the state of a
    CHECKPOINT; for a FORGET, empty bytes (the process said goodbye) or the msgpack of
    the last event its server saw (forget it only if it has done nothing since)."""


class ISpaceBackend(Interface):
    """Where a MessageServer's operations are applied."""

    on_complete: Any = Attribute(
        "Callable[[Completion], None], set by the server, called for every answer."
    )

    def submit(operation: Operation) -> None:
        """Apply C{operation}; its answer (now or later) goes to C{on_complete}."""

    def withdraw(pid: int, event: int, status: Status) -> None:
        """
        Withdraw a waiting operation, for one of three reasons:

        - C{Status.TIMED_OUT} (its timeout ran out) or C{Status.WITHDRAWN} (its caller
          cancelled it): the operation is decided where its order is decided, and its
          final answer follows: that status if nothing answered it first, else the
          answer it had (a tuple it took is never reported as a timeout).
        - C{Status.CANCELLED}: its connection is gone and nobody waits for an answer;
          it stops waiting here, no answer is due, and its retry is applied afresh.
        """

    def gauges() -> Mapping[str, int | float | str]:
        """Sizes and states worth reporting (stored tuples, waiters, ...)."""

    def recovered(pid: int) -> tuple[int, bytes] | None:
        """
        Process C{pid}'s latest checkpoint (its event and state), if it has one.

        @raise Unavailable: if this backend cannot answer now (it is not serving).
        """


class Unavailable(Exception):
    """A backend cannot answer now; the client should ask another server."""


@implementer(ISpaceBackend)
class LocalBackend:
    """A backend that applies operations to one local L{TupleSpace} at once."""

    def __init__(self, space: TupleSpace | None = None) -> None:
        self.space = space if space is not None else TupleSpace()
        self.on_complete: Callable[[Completion], None] = lambda c: None

    def submit(self, operation: Operation) -> None:
        op = operation
        if op.kind is Kind.OUT:
            assert isinstance(op.payload, tuple)
            for c in self.space.out(op.pid, op.event, op.payload):
                self.on_complete(c)
        elif op.kind is Kind.CHECKPOINT:
            assert isinstance(op.payload, bytes)
            self.on_complete(self.space.checkpoint(op.pid, op.event, op.payload))
        elif op.kind is Kind.FORGET:
            assert isinstance(op.payload, bytes)
            self.space.forget(op.pid, unpackb(op.payload) if op.payload else None)
            self.on_complete(Completion(op.pid, op.event, Status.STORED))
        else:
            assert isinstance(op.payload, Template)
            self.on_complete(self.space.take(op.pid, op.event, op.kind, op.payload))

    def withdraw(self, pid: int, event: int, status: Status) -> None:
        # One space applies everything at once: a waiting operation has no answer yet.
        c = self.space.withdraw(pid, event, status)
        if c is not None:
            self.on_complete(c)

    def recovered(self, pid: int) -> tuple[int, bytes] | None:
        return self.space.recovered(pid)

    def gauges(self) -> dict[str, int]:
        s = self.space
        return {
            "tuples": len(s),
            "waiting": s.waiting,
            "processes": s.processes,
            "sequence": s.sequence,
        }


@attrs.define(eq=False)
class _Route:
    """Where the answer to one operation goes."""

    session: Session
    request_id: int
    timer: IDelayedCall | None = None
    blocks: bool = False
    """An C{in}/C{rd}, which may wait without end: counted against the bounds."""
    goodbye: bool = False
    """A GOODBYE, answered GONE."""


def _nothing() -> None:
    pass


class Session:
    """
    One client connection's view of the server.

    @param send: writes bytes to the client.
    @param peer: how to name the client in logs.
    @param host: the client's address, for the per-peer connection bound.
    @param abort: closes the connection (a session that overstays a bound).
    """

    def __init__(
        self,
        server: MessageServer,
        send: Callable[[bytes], None],
        peer: str,
        host: str | None = None,
        abort: Callable[[], None] = _nothing,
    ) -> None:
        self.server = server
        self.send = send
        self.peer = peer
        self.host = host
        self.abort = abort
        self.pid: int | None = None
        # request id -> (pid, event), for CANCEL and for withdrawing on close
        self.requests: dict[int, tuple[int, int]] = {}
        self.closed = False
        self.assigned = False
        """Its process id was given by this server (the client brought none)."""
        self.gone = False
        """Its process said goodbye."""
        self.last_event = -1
        self.blocking = 0
        """How many of its requests are an C{in} or C{rd} not yet answered."""
        self.heard = server.clock.seconds()
        self.timer: IDelayedCall | None = None

    def reply(self, message: Message, request_id: int) -> None:
        if not self.closed:
            self.server.counters["frames_out"] += 1
            self.send(encode_message(message, request_id))

    def error(self, code: ErrorCode, text: str, request_id: int) -> None:
        """Answer a request with a typed error and count it."""
        self.server.counters[f"errors.{code.name.lower()}"] += 1
        self.reply(Error(code, text), request_id)

    def received(self, message: Message, request_id: int) -> None:
        """Handle one decoded request."""
        self.server.received(self, message, request_id)

    def close(self) -> None:
        """The connection is gone: withdraw its waiting operations."""
        if self.closed:
            return
        self.closed = True
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        self.server.session_closed(self)


class MessageServer:
    """
    Serves client sessions from an L{ISpaceBackend}.

    @param clock: for request timeouts.
    @param rng: for process ids given to clients that do not bring one.
    @param probes: more figures for L{stats}, by name (the ring's, say).
    @param bounds: what the server's clients may make it hold (L{ServerLimits}).
    """

    def __init__(
        self,
        backend: ISpaceBackend,
        clock: IReactorTime,
        *,
        name: str = "lips",
        limits: Limits = DEFAULT_LIMITS,
        rng: random.Random | None = None,
        probes: Sequence[Callable[[], Mapping[str, int | float | str]]] = (),
        bounds: ServerLimits | None = None,
    ) -> None:
        self.backend = backend
        self.bounds = bounds if bounds is not None else ServerLimits()
        self.probes = list(probes)
        self.clock = clock
        self.name = name
        self.limits = limits
        self.rng = rng if rng is not None else random.Random()
        self.counters: Counter[str] = Counter()
        self.sessions: set[Session] = set()
        self._by_pid: dict[int, Session] = {}
        self._routes: dict[tuple[int, int], _Route] = {}
        self._per_peer: Counter[str] = Counter()
        self._blocking = 0
        # Processes whose last session here closed without a goodbye: (when to forget
        # them, pid, the last event seen), oldest first, and the one timer.
        self._vanished: collections.deque[tuple[float, int, int]] = collections.deque()
        self._vanish_call: IDelayedCall | None = None
        backend.on_complete = self.completed

    # -- from the transport ----------------------------------------------------------

    def admit(self, host: str | None) -> str | None:
        """
        Whether a new connection from C{host} may open a session: C{None} if so, else
        why not (it is refused BUSY with that reason, and counted).
        """
        bounds = self.bounds
        if len(self.sessions) >= bounds.max_connections:
            self.counters["refused.connections"] += 1
            return f"the server has {len(self.sessions)} connections, its limit"
        if host is not None and self._per_peer[host] >= bounds.max_per_peer:
            self.counters["refused.per_peer"] += 1
            return f"{host} has {self._per_peer[host]} connections, the limit for one address"
        return None

    def open_session(
        self,
        send: Callable[[bytes], None],
        peer: str = "?",
        *,
        host: str | None = None,
        abort: Callable[[], None] = _nothing,
    ) -> Session:
        """
        A session for a new connection (once L{admit}ted): it must say HELLO within the
        HELLO timeout, and is closed once idle for the idle timeout.
        """
        session = Session(self, send, peer, host, abort)
        self.sessions.add(session)
        if host is not None:
            self._per_peer[host] += 1
        self.counters["connections_opened"] += 1
        if self.bounds.hello_timeout:
            session.timer = self.clock.callLater(
                self.bounds.hello_timeout, self._hello_overdue, session
            )
        return session

    def session_closed(self, session: Session) -> None:
        self.sessions.discard(session)
        if session.host is not None:
            self._per_peer[session.host] -= 1
            if not self._per_peer[session.host]:
                del self._per_peer[session.host]
        self.counters["connections_closed"] += 1
        if session.pid is not None and self._by_pid.get(session.pid) is session:
            del self._by_pid[session.pid]
        for key in list(session.requests.values()):
            route = self._routes.get(key)
            if route is not None and route.session is session:
                self._cancel_timer(route)
                self._forget(key, route)
                self.backend.withdraw(*key, Status.CANCELLED)
        session.requests.clear()
        if session.pid is not None and session.assigned and not session.gone:
            self._vanish(session.pid, session.last_event)

    def _vanish(self, pid: int, last_event: int) -> None:
        """A process the server named left without a goodbye: forget it in a while."""
        after = self.bounds.forget_after
        if not after:
            return
        self._vanished.append((self.clock.seconds() + after, pid, last_event))
        while len(self._vanished) > self.bounds.max_vanished:
            _, old, old_event = self._vanished.popleft()
            self._forget_vanished(old, old_event)
        if self._vanish_call is None:
            self._vanish_call = self.clock.callLater(after, self._vanish_due)

    def _vanish_due(self) -> None:
        self._vanish_call = None
        now = self.clock.seconds()
        while self._vanished and self._vanished[0][0] <= now:
            _, pid, last_event = self._vanished.popleft()
            self._forget_vanished(pid, last_event)
        if self._vanished:
            self._vanish_call = self.clock.callLater(self._vanished[0][0] - now, self._vanish_due)

    def _forget_vanished(self, pid: int, last_event: int) -> None:
        """
        Forget process C{pid} unless it is back here, or its space has applied an event
        of it after C{last_event} (it is alive at another server): decided where the
        order is, so every replica forgets it alike, or none does.
        """
        if pid in self._by_pid:
            return
        self.counters["forgotten.vanished"] += 1
        self.backend.submit(Operation(Kind.FORGET, pid, 0, packb(last_event)))

    def stop(self) -> None:
        """Cancel the server's own timers (those of its sessions go with them)."""
        if self._vanish_call is not None and self._vanish_call.active():
            self._vanish_call.cancel()
        self._vanish_call = None
        self._vanished.clear()

    def received(self, session: Session, message: Message, request_id: int) -> None:
        self.counters["frames_in"] += 1
        session.heard = self.clock.seconds()
        if isinstance(message, Out | Take | CheckpointRequest | RecoverRequest | Goodbye):
            if session.pid is None:
                session.error(ErrorCode.NOT_READY, "send HELLO first", request_id)
            elif isinstance(message, RecoverRequest):
                self._recover(session, request_id)
            else:
                self._operation(session, message, request_id)
        elif isinstance(message, Cancel):
            self._cancel(session, message.target)
        elif isinstance(message, Hello):
            self._hello(session, message, request_id)
        elif isinstance(message, Ping):
            session.reply(Pong(), request_id)
        elif isinstance(message, StatsRequest):
            session.reply(Stats(self.stats()), request_id)
        else:
            session.error(
                ErrorCode.UNEXPECTED,
                f"{type(message).__name__} is not a request a client may send",
                request_id,
            )

    # -- from the backend ------------------------------------------------------------

    def completed(self, c: Completion) -> None:
        """An operation was answered (or is now waiting)."""
        key = (c.pid, c.event)
        route = self._routes.get(key)
        if route is None:
            return  # its session is gone, or another server answers it
        status = c.status
        if status is Status.PENDING:
            return
        self._forget(key, route)
        session = route.session
        session.requests.pop(route.request_id, None)
        self._cancel_timer(route)
        reply: Message
        if status is Status.MATCHED:
            assert c.value is not None
            reply = Matched(c.value)
        elif status is Status.STORED:
            reply = Gone() if route.goodbye else Stored()
        elif status is Status.NO_MATCH:
            reply = NoMatch()
        elif status is Status.TIMED_OUT:
            reply = TimedOut()
        elif status is Status.CANCELLED or status is Status.WITHDRAWN:
            reply = Cancelled()
        elif status is Status.BUSY:
            session.error(ErrorCode.BUSY, "the server is busy; retry", route.request_id)
            return
        elif status is Status.UNAVAILABLE:
            session.error(
                ErrorCode.UNAVAILABLE,
                "this server cannot serve now; use another",
                route.request_id,
            )
            return
        else:
            session.error(
                ErrorCode.STALE_EVENT,
                f"event {c.event} of process {c.pid} is older than the log remembers",
                route.request_id,
            )
            return
        session.reply(reply, route.request_id)

    # -- internals -------------------------------------------------------------------

    def _hello(self, session: Session, hello: Hello, request_id: int) -> None:
        if session.pid is not None:
            session.error(ErrorCode.UNEXPECTED, "this session already said HELLO", request_id)
            return
        pid = hello.pid
        session.assigned = pid is None
        if pid is None:
            pid = self.rng.getrandbits(_PID_BITS) + 1
            while pid in self._by_pid:
                pid = self.rng.getrandbits(_PID_BITS) + 1
        # A process that reconnects takes its id over from a session not yet seen closed.
        self._by_pid[pid] = session
        session.pid = pid
        self.counters["hellos"] += 1
        if session.timer is not None and session.timer.active():
            session.timer.cancel()
        session.timer = None
        if self.bounds.idle_timeout:
            session.timer = self.clock.callLater(
                self.bounds.idle_timeout, self._idle_check, session
            )
        session.reply(Welcome(pid, self.name, self.limits.max_size), request_id)

    def _recover(self, session: Session, request_id: int) -> None:
        assert session.pid is not None
        self.counters["ops.recover"] += 1
        try:
            found = self.backend.recovered(session.pid)
        except Unavailable:
            session.error(
                ErrorCode.UNAVAILABLE, "this server cannot serve now; use another", request_id
            )
            return
        session.reply(Recovered(*found) if found else Recovered(None, None), request_id)

    def _operation(
        self, session: Session, message: Out | Take | CheckpointRequest | Goodbye, request_id: int
    ) -> None:
        if request_id in session.requests:
            session.error(
                ErrorCode.DUPLICATE_REQUEST,
                f"request id {request_id} is already waiting in this session",
                request_id,
            )
            return
        pid = session.pid
        assert pid is not None
        key = (pid, message.event)
        session.last_event = max(session.last_event, message.event)
        route = self._routes.get(key)
        blocks = isinstance(message, Take) and message.kind.blocks
        if route is None and blocks and self._overloaded(session, request_id):
            return
        if route is not None:
            # The same operation again (a retry): answer it here from now on.
            route.session.requests.pop(route.request_id, None)
            if route.blocks:
                route.session.blocking -= 1
                session.blocking += 1
            route.session = session
            route.request_id = request_id
        else:
            route = self._routes[key] = _Route(session, request_id, blocks=blocks)
            if blocks:
                session.blocking += 1
                self._blocking += 1
        session.requests[request_id] = key
        if isinstance(message, Out):
            self.counters["ops.out"] += 1
            op = Operation(Kind.OUT, pid, message.event, message.tuple)
        elif isinstance(message, CheckpointRequest):
            self.counters["ops.checkpoint"] += 1
            op = Operation(Kind.CHECKPOINT, pid, message.event, message.state)
        elif isinstance(message, Goodbye):
            self.counters["goodbyes"] += 1
            session.gone = True
            route.goodbye = True
            op = Operation(Kind.FORGET, pid, message.event, b"")
        else:
            self.counters[_OP_COUNTERS[message.kind]] += 1
            op = Operation(message.kind, pid, message.event, message.template)
            if message.timeout is not None and message.kind.blocks and route.timer is None:
                route.timer = self.clock.callLater(message.timeout, self._expire, key)
        self.backend.submit(op)

    def _forget(self, key: tuple[int, int], route: _Route) -> None:
        del self._routes[key]
        if route.blocks:
            route.session.blocking -= 1
            self._blocking -= 1

    def _overloaded(self, session: Session, request_id: int) -> bool:
        """
        Refuse (BUSY) a new C{in} or C{rd} past the bounds on waiting requests.  Only
        those are bounded: they may wait without end, while every other request is
        answered promptly (an C{out} must never be refused for want of room, or the
        waiters could never be served).
        """
        bounds = self.bounds
        if session.blocking >= bounds.max_waiting_per_session:
            self.counters["refused.waiting_per_session"] += 1
            why = f"this session has {session.blocking} requests waiting, its limit"
        elif self._blocking >= bounds.max_waiting:
            self.counters["refused.waiting"] += 1
            why = f"the server has {self._blocking} requests waiting, its limit"
        else:
            return False
        session.error(ErrorCode.BUSY, f"{why}; retry later", request_id)
        return True

    def _hello_overdue(self, session: Session) -> None:
        session.timer = None
        if session.pid is None and not session.closed:
            self.counters["closed.no_hello"] += 1
            session.error(
                ErrorCode.NOT_READY,
                f"no HELLO within {self.bounds.hello_timeout:g} s; closing",
                0,
            )
            session.abort()

    def _idle_check(self, session: Session) -> None:
        """Close a session that has had nothing waiting and said nothing for too long."""
        session.timer = None
        if session.closed:
            return
        limit = self.bounds.idle_timeout
        quiet = self.clock.seconds() - session.heard
        if session.requests or quiet < limit:
            again = limit if session.requests else limit - quiet
            session.timer = self.clock.callLater(again, self._idle_check, session)
            return
        self.counters["closed.idle"] += 1
        session.abort()

    def _expire(self, key: tuple[int, int]) -> None:
        route = self._routes.get(key)
        if route is None:
            return
        route.timer = None
        self.counters["timeouts"] += 1
        self.backend.withdraw(*key, Status.TIMED_OUT)

    def _cancel(self, session: Session, target: int) -> None:
        key = session.requests.get(target)
        if key is None:
            return  # already answered: the answer is on its way
        route = self._routes.get(key)
        if route is None or route.session is not session:
            return
        self.counters["cancels"] += 1
        self.backend.withdraw(*key, Status.WITHDRAWN)

    def _cancel_timer(self, route: _Route) -> None:
        if route.timer is not None:
            if route.timer.active():
                route.timer.cancel()
            route.timer = None

    def stats(self) -> dict[str, int | float | str]:
        """Counters and gauges, by name."""
        values: dict[str, int | float | str] = dict(self.counters)
        values["sessions"] = len(self.sessions)
        values["waiting"] = self._blocking
        values["server"] = self.name
        for k, v in self.backend.gauges().items():
            values[f"space.{k}"] = v
        for probe in self.probes:
            values.update(probe())
        return values
