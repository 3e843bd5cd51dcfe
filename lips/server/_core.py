"""
The MessageServer core: client sessions on one side, a tuple-space backend on the other.

L{ServerCore} is a core of L{lips.kernel} (C{docs/design/core.md}): it holds no clock and
schedules nothing.  Its timers (a session's HELLO and idle deadlines, an incomplete
frame's deadline, a waiting request's timeout, the forgetting of vanished processes) are
L{StartTimer} and L{CancelTimer} effects keyed by a L{ServerTimer} member and what it
times, and the time comes in as C{now}, the last argument of every input.  Its replies
still go out through the L{Session} of each connection, whose C{send} and C{abort} the
transport adapter gives.  L{MessageServer<lips.server.MessageServer>} hosts it on a
reactor's clock.

Operations go to an L{ISpaceBackend} as L{Operation}s; the backend reports every answer
as a L{Completion}, at once (the local backend) or once the operation has been ordered
and applied (a replicated backend), and its host feeds it to L{ServerCore.completed}, so
the same core serves both without change.

Inputs (each takes the current time, C{now}, last):

  - L{ServerCore.admit}C{(host, now) -> str | None}: whether a new connection from
    C{host} may open a session (None), or why not (counted).
  - L{ServerCore.open_session}C{(send, peer, host, abort, now) -> Session}: a
    connection was accepted.
  - L{ServerCore.received}C{(session, message, request_id, now)}: a decoded request.
  - L{ServerCore.buffered}C{(session, held, fresh, now) -> bool}: the connection holds
    C{held} bytes of an incomplete frame (C{fresh}: one begun by the latest read);
    False if that passed the shared budget (the connection is told so and aborted).
  - L{ServerCore.session_closed}C{(session, now)}: the connection is gone.
  - L{ServerCore.completed}C{(completion, now)}: the backend answered an operation.
  - L{ServerCore.timer}C{(key, now)}: a timer of the list below is due.
  - L{ServerCore.stop}C{(now)}: the server stops; every timer is cancelled and no
    other started.

Effects, all timers (L{StartTimer} and L{CancelTimer}), by key:

  - C{(ServerTimer.HELLO, session id)}: started by C{open_session} (C{hello_timeout}),
    cancelled by the session's HELLO or its close.  Due: the session is told NOT_READY
    and aborted.
  - C{(ServerTimer.IDLE, session id)}: started by the HELLO (C{idle_timeout}), cancelled
    by the close.  Due: a session silent that long with nothing waiting is aborted;
    another is checked again later (started again).
  - C{(ServerTimer.PARTIAL, session id)}: started by C{buffered} when a frame is begun
    and left incomplete (C{partial_timeout}), cancelled once none is.  Due: the session
    is told MALFORMED and aborted.
  - C{(ServerTimer.REQUEST, (pid, event))}: started by C{received} for an C{in} or
    C{rd} with a timeout that is still waiting once submitted, cancelled by its answer or
    the close.  Due: the backend is asked to withdraw it as timed out.
  - C{ServerTimer.VANISHED}: started by C{session_closed} of a process the server named
    that said no goodbye (C{forget_after}), for the oldest such process.  Due: those
    whose time came are forgotten, and it is started again for the next.

All else goes through a L{Session} (replies, typed errors, C{abort}) or the backend
(C{submit}, C{withdraw}).
"""

from __future__ import annotations

import collections
import enum
import itertools
import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Final

import attrs
from zope.interface import Attribute, Interface, implementer

from lips.kernel import CancelTimer, Effect, Outbox, StartTimer, TimerKey
from lips.server._limits import ServerLimits
from lips.space import Completion, Kind, Status, TupleSpace
from lips.tuples import DEFAULT_LIMITS, Limits, LTuple, Step, Template, packb, unpackb
from lips.validate import new_pid
from lips.wire import (
    Aborted,
    Atomic,
    Cancel,
    Cancelled,
    CheckpointRequest,
    Committed,
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
    "Answer",
    "ISpaceBackend",
    "LocalBackend",
    "Operation",
    "Refusal",
    "Refused",
    "ServerCore",
    "ServerTimer",
    "Session",
    "Unavailable",
]

_OP_COUNTERS: Final = {kind: f"ops.{kind.name.lower()}" for kind in Kind}


@attrs.frozen
class Operation:
    """One tuple-space operation of process C{pid}, its event number C{event}."""

    kind: Kind
    pid: int
    event: int
    payload: LTuple | Template | bytes | tuple[Step, ...]
    """The tuple of an OUT, the template of IN, RD, INP or RDP, the state of a
    CHECKPOINT, the steps of an ATOMIC; for a FORGET, empty bytes (the process said
    goodbye) or the msgpack of the last event its server saw (forget it only if it has
    done nothing since)."""


class Refusal(enum.Enum):
    """Why a backend did not apply an operation at all (not a state of the space)."""

    BUSY = "busy"
    """Refused for now (a full queue): the client may retry it here."""
    UNAVAILABLE = "unavailable"
    """This server cannot serve now (it is outside the primary component, or still
    receiving the state): the client retries at another server."""


@attrs.frozen
class Refused:
    """
    A backend's answer that it did not apply C{(pid, event)}: never logged, so the same
    event sent again is applied afresh.
    """

    pid: int
    event: int
    reason: Refusal


#: What a backend answers: how the operation ended in the space, or that it was refused.
Answer = Completion | Refused


class ISpaceBackend(Interface):
    """Where a MessageServer's operations are applied."""

    on_complete: Any = Attribute(
        "Callable[[Completion | Refused], None], set by the server, called for every answer."
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
        self.on_complete: Callable[[Answer], None] = lambda c: None

    def submit(self, operation: Operation) -> None:
        op = operation
        if op.kind is Kind.OUT:
            assert isinstance(op.payload, tuple)
            for c in self.space.out(op.pid, op.event, op.payload):
                self.on_complete(c)
        elif op.kind is Kind.CHECKPOINT:
            assert isinstance(op.payload, bytes)
            self.on_complete(self.space.checkpoint(op.pid, op.event, op.payload))
        elif op.kind is Kind.ATOMIC:
            assert isinstance(op.payload, tuple)
            for c in self.space.atomic(op.pid, op.event, op.payload):
                self.on_complete(c)
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


class ServerTimer(enum.Enum):
    """
    The server core's timers.  A key is a member and what it times, but for
    L{VANISHED}, the one timer of its kind (see the module docstring).
    """

    HELLO = "hello"
    """C{(HELLO, session id)}: the session's deadline to say HELLO."""
    IDLE = "idle"
    """C{(IDLE, session id)}: when to see whether the session has been idle too long."""
    PARTIAL = "partial"
    """C{(PARTIAL, session id)}: the deadline of the session's incomplete frame."""
    REQUEST = "request"
    """C{(REQUEST, (pid, event))}: the timeout of a waiting C{in} or C{rd}."""
    VANISHED = "vanished"
    """When the oldest process that vanished is to be forgotten."""


@attrs.define(eq=False)
class _Route:
    """Where the answer to one operation goes."""

    session: Session
    request_id: int
    timed: bool = False
    """Its timeout's timer, C{(ServerTimer.REQUEST, key)}, is pending."""
    blocks: bool = False
    """An C{in}/C{rd}, which may wait without end: counted against the bounds."""
    goodbye: bool = False
    """A GOODBYE, answered GONE."""


class Session:
    """
    One client connection as the server core sees it: its state, and the way to the
    client.  L{ServerCore.open_session} makes it; the adapter names it in the core's
    inputs.

    @param core: the core it belongs to (its counters count what the session writes).
    @param id: its number in the core, which names its timers.
    @param send: writes bytes to the client.
    @param peer: how to name the client in logs.
    @param host: the client's address, for the per-peer connection bound.
    @param abort: closes the connection (a session that overstays a bound); the close
        comes back as L{ServerCore.session_closed}, as any other does.
    @param now: when the connection opened.
    """

    def __init__(
        self,
        core: ServerCore,
        id: int,
        send: Callable[[bytes], None],
        peer: str,
        *,
        host: str | None,
        abort: Callable[[], None],
        now: float,
    ) -> None:
        self.core = core
        self.id = id
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
        self.heard = now
        """When it last said anything."""
        self.deadline: ServerTimer | None = None
        """Which of its HELLO and IDLE timers is pending, if one is."""
        self.partial = 0
        """Bytes of an incomplete frame held for it, counted in the core's budget."""
        self.partial_timed = False
        """Its incomplete frame's deadline, C{(ServerTimer.PARTIAL, id)}, is pending."""

    def __repr__(self) -> str:
        return f"<Session {self.id} {self.peer} pid={self.pid}>"

    def reply(self, message: Message, request_id: int) -> None:
        """Write C{message} to the client, unless the connection is gone."""
        if not self.closed:
            self.core.counters["frames_out"] += 1
            self.send(encode_message(message, request_id))

    def error(self, code: ErrorCode, text: str, request_id: int) -> None:
        """Answer a request with a typed error and count it."""
        self.core.counters[f"errors.{code.name.lower()}"] += 1
        self.reply(Error(code, text), request_id)


class ServerCore:
    """
    Serves client sessions from an L{ISpaceBackend} (the MessageServer's logic, on the
    core contract: see the module docstring for its inputs and effects).

    @param backend: where operations are applied.  Its host sets its C{on_complete} to
        feed L{completed}.
    @param name: the server's name, told to clients.
    @param limits: the tuples it accepts.
    @param rng: for process ids given to clients that do not bring one.
    @param probes: more figures for L{stats}, by name (the ring's, say).
    @param bounds: what the server's clients may make it hold (L{ServerLimits}).
    """

    emits: ClassVar[frozenset[type[Effect]]] = frozenset({StartTimer, CancelTimer})

    def __init__(
        self,
        backend: ISpaceBackend,
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
        self.name = name
        self.limits = limits
        self.rng = rng if rng is not None else random.Random()
        self.counters: Counter[str] = Counter()
        self.sessions: set[Session] = set()
        self.partial_bytes = 0
        """Bytes of incomplete frames held across every session (the shared budget)."""
        self.stopped = False
        self._ids = itertools.count(1)
        self._by_id: dict[int, Session] = {}
        self._by_pid: dict[int, Session] = {}
        self._routes: dict[tuple[int, int], _Route] = {}
        self._per_peer: Counter[str] = Counter()
        self._blocking = 0
        # Processes whose last session here closed without a goodbye: (when to forget
        # them, pid, the last event seen), oldest first, under one timer.
        self._vanished: collections.deque[tuple[float, int, int]] = collections.deque()
        self._outbox = Outbox(ServerCore.emits)

    def drain(self) -> list[Effect]:
        """The effects emitted since the last call, in order."""
        return self._outbox.drain()

    # -- inputs from the transport ---------------------------------------------------------

    def admit(self, host: str | None, now: float) -> str | None:
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
        peer: str,
        host: str | None,
        abort: Callable[[], None],
        now: float,
    ) -> Session:
        """
        A session for a new connection (once L{admit}ted): it must say HELLO within the
        HELLO timeout, and is closed once idle for the idle timeout.
        """
        session = Session(self, next(self._ids), send, peer, host=host, abort=abort, now=now)
        self.sessions.add(session)
        self._by_id[session.id] = session
        if host is not None:
            self._per_peer[host] += 1
        self.counters["connections_opened"] += 1
        if self.bounds.hello_timeout:
            self._deadline(session, ServerTimer.HELLO, now + self.bounds.hello_timeout)
        return session

    def received(self, session: Session, message: Message, request_id: int, now: float) -> None:
        """Handle one decoded request of C{session}."""
        self.counters["frames_in"] += 1
        session.heard = now
        if isinstance(message, Out | Take | Atomic | CheckpointRequest | RecoverRequest | Goodbye):
            if session.pid is None:
                session.error(ErrorCode.NOT_READY, "send HELLO first", request_id)
            elif isinstance(message, RecoverRequest):
                self._recover(session, request_id)
            else:
                self._operation(session, message, request_id, now)
        elif isinstance(message, Cancel):
            self._cancel(session, message.target)
        elif isinstance(message, Hello):
            self._hello(session, message, request_id, now)
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

    def buffered(self, session: Session, held: int, fresh: bool, now: float) -> bool:
        """
        C{session}'s connection now holds C{held} bytes of an incomplete frame; with
        C{fresh}, that frame was begun by the latest read (which completed the one
        before), so its deadline starts now.  The bytes count against the budget shared
        by every connection.

        @return: False if they passed it: the connection is told BUSY and aborted.
        """
        if session.closed:
            return False
        bounds = self.bounds
        self.partial_bytes += held - session.partial
        session.partial = held
        if self.partial_bytes > bounds.max_partial_bytes:
            self.counters["closed.partial_budget"] += 1
            session.error(
                ErrorCode.BUSY,
                f"the server holds {self.partial_bytes} bytes of incomplete frames, over"
                f" its budget of {bounds.max_partial_bytes}; closing",
                0,
            )
            self._release(session)
            session.abort()
            return False
        if not held:
            self._release(session)
        elif bounds.partial_timeout and (fresh or not session.partial_timed):
            at = now + bounds.partial_timeout
            session.partial_timed = self._start((ServerTimer.PARTIAL, session.id), at)
        return True

    def session_closed(self, session: Session, now: float) -> None:
        """The connection is gone: withdraw its waiting operations, drop its timers."""
        if session.closed:
            return
        session.closed = True
        self._end_deadline(session)
        self._release(session)
        self.sessions.discard(session)
        self._by_id.pop(session.id, None)
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
                self._untime(key, route)
                self._forget(key, route)
                self.backend.withdraw(*key, Status.CANCELLED)
        session.requests.clear()
        if session.pid is not None and session.assigned and not session.gone:
            self._vanish(session.pid, session.last_event, now)

    def stop(self, now: float) -> None:
        """
        The server stops: every pending timer is cancelled and none is started from now
        on (the vanished processes not yet forgotten are kept by the space).
        """
        if self.stopped:
            return
        if self._vanished:
            self._outbox.cancel_timer(ServerTimer.VANISHED)
            self._vanished.clear()
        for session in self._by_id.values():
            self._end_deadline(session)
            self._end_partial(session)
        for key, route in self._routes.items():
            self._untime(key, route)
        self.stopped = True

    # -- inputs from the backend and the timers --------------------------------------------

    def completed(self, c: Answer, now: float) -> None:
        """An operation was answered (or is now waiting), or refused."""
        key = (c.pid, c.event)
        route = self._routes.get(key)
        if route is None:
            return  # its session is gone, or another server answers it
        if isinstance(c, Completion) and c.status is Status.PENDING:
            return
        self._forget(key, route)
        session = route.session
        session.requests.pop(route.request_id, None)
        self._untime(key, route)
        if isinstance(c, Refused):
            if c.reason is Refusal.BUSY:
                session.error(ErrorCode.BUSY, "the server is busy; retry", route.request_id)
            else:
                session.error(
                    ErrorCode.UNAVAILABLE,
                    "this server cannot serve now; use another",
                    route.request_id,
                )
            return
        status = c.status
        reply: Message
        if status is Status.MATCHED:
            assert c.value is not None
            reply = Matched(c.value)
        elif status is Status.STORED:
            reply = Gone() if route.goodbye else Stored()
        elif status is Status.NO_MATCH:
            reply = NoMatch()
        elif status is Status.COMMITTED:
            assert c.results is not None
            reply = Committed(c.results)
        elif status is Status.ABORTED:
            assert c.aborted is not None
            reply = Aborted(*c.aborted)
        elif status is Status.TIMED_OUT:
            reply = TimedOut()
        elif status is Status.CANCELLED or status is Status.WITHDRAWN:
            reply = Cancelled()
        else:
            session.error(
                ErrorCode.STALE_EVENT,
                f"event {c.event} of process {c.pid} is older than the log remembers",
                route.request_id,
            )
            return
        session.reply(reply, route.request_id)

    def timer(self, key: TimerKey, now: float) -> None:
        """
        A timer of the core is due (see L{ServerTimer}); one whose subject went away
        meanwhile does nothing.

        @raise ValueError: for a key the core never starts.
        """
        match key:
            case ServerTimer.VANISHED:
                self._vanished_due(now)
            case (ServerTimer.REQUEST, (int() as pid, int() as event)):
                self._expire((pid, event))
            case (ServerTimer.HELLO | ServerTimer.IDLE as kind, int() as number):
                session = self._by_id.get(number)
                if session is not None and session.deadline is kind:
                    session.deadline = None
                    if kind is ServerTimer.HELLO:
                        self._hello_overdue(session)
                    else:
                        self._idle_check(session, now)
            case (ServerTimer.PARTIAL, int() as number):
                session = self._by_id.get(number)
                if session is not None and session.partial_timed:
                    session.partial_timed = False
                    self._partial_overdue(session)
            case _:
                raise ValueError(f"not a timer of the server core: {key!r}")

    # -- queries ---------------------------------------------------------------------------

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

    # -- timers ----------------------------------------------------------------------------

    def _start(self, key: TimerKey, at: float) -> bool:
        """Start timer C{key}, unless the core stopped. @return: whether it did."""
        if self.stopped:
            return False
        self._outbox.start_timer(key, at)
        return True

    def _deadline(self, session: Session, kind: ServerTimer, at: float) -> None:
        """Start C{session}'s HELLO or IDLE timer (it has one of them at a time)."""
        if self._start((kind, session.id), at):
            session.deadline = kind

    def _end_deadline(self, session: Session) -> None:
        kind, session.deadline = session.deadline, None
        if kind is not None:
            self._outbox.cancel_timer((kind, session.id))

    def _untime(self, key: tuple[int, int], route: _Route) -> None:
        if route.timed:
            route.timed = False
            self._outbox.cancel_timer((ServerTimer.REQUEST, key))

    def _end_partial(self, session: Session) -> None:
        if session.partial_timed:
            session.partial_timed = False
            self._outbox.cancel_timer((ServerTimer.PARTIAL, session.id))

    def _release(self, session: Session) -> None:
        """Give C{session}'s incomplete frame back to the budget, and drop its deadline."""
        self.partial_bytes -= session.partial
        session.partial = 0
        self._end_partial(session)

    def _hello_overdue(self, session: Session) -> None:
        if session.pid is None and not session.closed:
            self.counters["closed.no_hello"] += 1
            session.error(
                ErrorCode.NOT_READY,
                f"no HELLO within {self.bounds.hello_timeout:g} s; closing",
                0,
            )
            session.abort()

    def _idle_check(self, session: Session, now: float) -> None:
        """Close a session that has had nothing waiting and said nothing for too long."""
        limit = self.bounds.idle_timeout
        due = session.heard + limit
        if session.requests or now < due:
            self._deadline(session, ServerTimer.IDLE, now + limit if session.requests else due)
            return
        self.counters["closed.idle"] += 1
        session.abort()

    def _partial_overdue(self, session: Session) -> None:
        if not session.partial:
            return
        self.counters["closed.partial_timeout"] += 1
        session.error(
            ErrorCode.MALFORMED,
            f"a frame still incomplete after {self.bounds.partial_timeout:g} s; closing",
            0,
        )
        self._release(session)
        session.abort()

    def _expire(self, key: tuple[int, int]) -> None:
        route = self._routes.get(key)
        if route is None or not route.timed:
            return
        route.timed = False
        self.counters["timeouts"] += 1
        self.backend.withdraw(*key, Status.TIMED_OUT)

    # -- vanished processes ----------------------------------------------------------------

    def _vanish(self, pid: int, last_event: int, now: float) -> None:
        """A process the server named left without a goodbye: forget it in a while."""
        after = self.bounds.forget_after
        if not after or self.stopped:
            return
        vanished = self._vanished
        head = vanished[0] if vanished else None
        vanished.append((now + after, pid, last_event))
        while len(vanished) > self.bounds.max_vanished:
            _, old, old_event = vanished.popleft()
            self._forget_vanished(old, old_event)
        if vanished[0] is not head:
            self._start(ServerTimer.VANISHED, vanished[0][0])

    def _vanished_due(self, now: float) -> None:
        vanished = self._vanished
        while vanished and vanished[0][0] <= now:
            _, pid, last_event = vanished.popleft()
            self._forget_vanished(pid, last_event)
        if vanished:
            self._start(ServerTimer.VANISHED, vanished[0][0])

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

    # -- requests --------------------------------------------------------------------------

    def _hello(self, session: Session, hello: Hello, request_id: int, now: float) -> None:
        if session.pid is not None:
            session.error(ErrorCode.UNEXPECTED, "this session already said HELLO", request_id)
            return
        pid = hello.pid
        session.assigned = pid is None
        if pid is None:
            pid = new_pid(self.rng)
            while pid in self._by_pid:
                pid = new_pid(self.rng)
        # A process that reconnects takes its id over from a session not yet seen closed.
        self._by_pid[pid] = session
        session.pid = pid
        self.counters["hellos"] += 1
        self._end_deadline(session)
        if self.bounds.idle_timeout:
            self._deadline(session, ServerTimer.IDLE, now + self.bounds.idle_timeout)
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
        self,
        session: Session,
        message: Out | Take | Atomic | CheckpointRequest | Goodbye,
        request_id: int,
        now: float,
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
        timeout: float | None = None
        if isinstance(message, Out):
            self.counters["ops.out"] += 1
            op = Operation(Kind.OUT, pid, message.event, message.tuple)
        elif isinstance(message, Atomic):
            self.counters["ops.atomic"] += 1
            op = Operation(Kind.ATOMIC, pid, message.event, message.steps)
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
            if message.kind.blocks:
                timeout = message.timeout
        self.backend.submit(op)
        # Timed only if it waits (an answer at once needs no timer); a retry keeps the
        # timer its first sending started.
        if timeout is not None and self._routes.get(key) is route and not route.timed:
            route.timed = self._start((ServerTimer.REQUEST, key), now + timeout)

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

    def _cancel(self, session: Session, target: int) -> None:
        key = session.requests.get(target)
        if key is None:
            return  # already answered: the answer is on its way
        route = self._routes.get(key)
        if route is None or route.session is not session:
            return
        self.counters["cancels"] += 1
        self.backend.withdraw(*key, Status.WITHDRAWN)
