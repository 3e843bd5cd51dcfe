"""
Messages of the client protocol and their one codec.

Each message is a frozen attrs class with a type code; its body is a msgpack array of
its fields.  L{decode_message} is the only place that turns untrusted bytes into
messages: it checks the shape of every body and validates every tuple and template
against the limits, raising L{MessageError} with a typed L{ErrorCode} otherwise.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Final, TypeAlias

import attrs

from lips.tuples import (
    DEFAULT_LIMITS,
    MAX_SCAN,
    MAX_STEPS,
    AbortReason,
    Kind,
    Limits,
    LTuple,
    Step,
    StepOp,
    StepResult,
    Template,
    TemplateError,
    TupleError,
    Tuples,
    TupleTooLarge,
    make_template,
    make_tuple,
    packb,
    steps_size,
    unpackb,
)
from lips.wire._frames import ErrorCode, Frame, encode_frame

__all__ = [
    "Aborted",
    "Atomic",
    "Cancel",
    "Cancelled",
    "Committed",
    "Error",
    "Hello",
    "Matched",
    "Message",
    "MessageError",
    "NoMatch",
    "Out",
    "Stats",
    "StatsRequest",
    "Stored",
    "Take",
    "TimedOut",
    "Welcome",
    "decode_message",
    "encode_message",
]


class MessageError(Exception):
    """A frame's body is not a valid message; C{code} says how."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# -- client to server ---------------------------------------------------------------


@attrs.frozen
class Hello:
    """Opens a session.  C{pid} is the caller's process id, or C{None} to be given one."""

    TYPE: ClassVar[int] = 1
    pid: int | None
    name: str

    def fields(self) -> list[Any]:
        return [self.pid, self.name]


@attrs.frozen
class Goodbye:
    """
    The caller is done for good, as its event C{event}: the space forgets its log and
    its checkpoint (it will never retry an event nor recover).  Answered GONE.
    """

    TYPE: ClassVar[int] = 4
    event: int

    def fields(self) -> list[Any]:
        return [self.event]


@attrs.frozen
class Out:
    """Store C{tuple} as the caller's event C{event}."""

    TYPE: ClassVar[int] = 10
    event: int
    tuple: LTuple

    def fields(self) -> list[Any]:
        return [self.event, self.tuple]


@attrs.frozen
class Take:
    """
    A template operation (C{kind} is IN, RD, INP or RDP).  C{timeout} in seconds bounds
    how long an IN or RD may wait; C{None} waits as long as the session lives.
    """

    kind: Kind
    event: int
    template: Template
    timeout: float | None = None

    @property
    def TYPE(self) -> int:
        return _TAKE_TYPES[self.kind]

    def fields(self) -> list[Any]:
        return [self.event, self.template.fields, self.timeout]


@attrs.frozen
class Atomic:
    """
    Apply C{steps} as the caller's event C{event}, all or none (answered COMMITTED or
    ABORTED).  Its body is C{[event, [[op, tuple or template], ...]]}, one pair per
    step, C{op} a L{StepOp} code; 1 to L{MAX_STEPS} steps, whose tuples and templates
    together encode to at most the size limit (L{steps_size}).
    """

    TYPE: ClassVar[int] = 6
    event: int
    steps: tuple[Step, ...]

    def fields(self) -> list[Any]:
        return [self.event, [s.wire() for s in self.steps]]


@attrs.frozen
class Cancel:
    """Withdraw the waiting request C{target} (a request id of this session)."""

    TYPE: ClassVar[int] = 15
    target: int

    def fields(self) -> list[Any]:
        return [self.target]


@attrs.frozen
class StatsRequest:
    """Ask for the server's counters."""

    TYPE: ClassVar[int] = 16

    def fields(self) -> list[Any]:
        return []


@attrs.frozen
class Ping:
    """Ask for a sign of life: answered PONG at once, whatever the server is doing."""

    TYPE: ClassVar[int] = 19

    def fields(self) -> list[Any]:
        return []


@attrs.frozen
class CheckpointRequest:
    """Store C{state} as the caller's checkpoint, its event C{event}."""

    TYPE: ClassVar[int] = 17
    event: int
    state: bytes

    def fields(self) -> list[Any]:
        return [self.event, self.state]


@attrs.frozen
class RecoverRequest:
    """Ask for the caller's latest checkpoint."""

    TYPE: ClassVar[int] = 18

    def fields(self) -> list[Any]:
        return []


# -- server to client ---------------------------------------------------------------


@attrs.frozen
class Welcome:
    """The session is open; C{pid} is the caller's process id."""

    TYPE: ClassVar[int] = 2
    pid: int
    server: str
    max_size: int

    def fields(self) -> list[Any]:
        return [self.pid, self.server, self.max_size]


@attrs.frozen
class Gone:
    """The reply to GOODBYE: the space has forgotten the caller."""

    TYPE: ClassVar[int] = 5

    def fields(self) -> list[Any]:
        return []


@attrs.frozen
class Stored:
    """An C{out} was applied."""

    TYPE: ClassVar[int] = 20

    def fields(self) -> list[Any]:
        return []


@attrs.frozen
class Matched:
    """A template operation found C{tuple}."""

    TYPE: ClassVar[int] = 21
    tuple: LTuple

    def fields(self) -> list[Any]:
        return [self.tuple]


@attrs.frozen
class NoMatch:
    """An C{inp} or C{rdp} found nothing."""

    TYPE: ClassVar[int] = 22

    def fields(self) -> list[Any]:
        return []


@attrs.frozen
class Committed:
    """
    An atomic request was applied: C{results} holds each step's result, in order (the
    tuple an C{inp} or C{rdp} step found, the L{Tuples} a C{scan} or C{delete} step
    read or took, C{None} for the other steps).

    Its body is C{[results]}, C{nil} or a tuple per step, when no result is a
    L{Tuples}: as it was before C{scan} and C{delete}.  Otherwise it is C{[results,
    lists]}: such a step's place in C{results} is C{nil}, and C{lists} holds one pair
    C{[step, [tuple, ...]]} for each of them, in step order.  A tuple of tuples could
    not be told from a list of them in one place, so the lists travel apart.
    """

    TYPE: ClassVar[int] = 28
    results: tuple[StepResult, ...]

    def fields(self) -> list[Any]:
        plain = [None if type(r) is Tuples else r for r in self.results]
        lists = [[i, list(r.tuples)] for i, r in enumerate(self.results) if type(r) is Tuples]
        return [plain, lists] if lists else [plain]


@attrs.frozen
class Aborted:
    """An atomic request was not applied at all: its step C{step} failed, for C{reason}."""

    TYPE: ClassVar[int] = 29
    step: int
    reason: AbortReason

    def fields(self) -> list[Any]:
        return [self.step, int(self.reason)]


@attrs.frozen
class Cancelled:
    """A waiting request was withdrawn at the caller's request."""

    TYPE: ClassVar[int] = 23

    def fields(self) -> list[Any]:
        return []


@attrs.frozen
class TimedOut:
    """A waiting request reached its timeout with nothing matching."""

    TYPE: ClassVar[int] = 24

    def fields(self) -> list[Any]:
        return []


@attrs.frozen
class Stats:
    """The server's counters and gauges."""

    TYPE: ClassVar[int] = 25
    values: dict[str, int | float | str]

    def fields(self) -> list[Any]:
        return [self.values]


@attrs.frozen
class Pong:
    """The reply to PING."""

    TYPE: ClassVar[int] = 27

    def fields(self) -> list[Any]:
        return []


@attrs.frozen
class Recovered:
    """The caller's latest checkpoint: its event and state, or C{None} and C{None}."""

    TYPE: ClassVar[int] = 26
    event: int | None
    state: bytes | None

    def fields(self) -> list[Any]:
        return [self.event, self.state]


@attrs.frozen
class Error:
    """A request failed; C{code} says how."""

    TYPE: ClassVar[int] = 30
    code: ErrorCode
    message: str

    def fields(self) -> list[Any]:
        return [int(self.code), self.message]


Message: TypeAlias = (
    Hello
    | Goodbye
    | Out
    | Take
    | Atomic
    | Cancel
    | StatsRequest
    | Ping
    | CheckpointRequest
    | RecoverRequest
    | Welcome
    | Gone
    | Stored
    | Matched
    | NoMatch
    | Committed
    | Aborted
    | Cancelled
    | TimedOut
    | Stats
    | Pong
    | Recovered
    | Error
)

_TAKE_TYPES: Final = {Kind.IN: 11, Kind.RD: 12, Kind.INP: 13, Kind.RDP: 14}
_KIND_OF_TYPE: Final = {v: k for k, v in _TAKE_TYPES.items()}
_EMPTY: Final = packb([])
_ERROR_CODES: Final = {int(c): c for c in ErrorCode}
_STEP_OPS: Final = {int(op): op for op in StepOp}
_ABORT_REASONS: Final = {int(r): r for r in AbortReason}
_SIMPLE_TYPES: Final = (
    Hello,
    Out,
    Cancel,
    StatsRequest,
    CheckpointRequest,
    RecoverRequest,
    Welcome,
    Stored,
    Matched,
    NoMatch,
    Recovered,
    Atomic,
    Committed,
    Aborted,
)
_KNOWN_TYPES: Final = frozenset(
    [
        *_KIND_OF_TYPE,
        *(
            m.TYPE
            for m in (*_SIMPLE_TYPES, Cancelled, TimedOut, Stats, Error, Ping, Pong, Goodbye, Gone)
        ),
    ]
)
_MAX_EVENT: Final = 2**63 - 1


def encode_message(message: Message, request_id: int) -> bytes:
    """One frame carrying C{message}."""
    fields = message.fields()
    body = packb(fields) if fields else _EMPTY
    return encode_frame(message.TYPE, request_id, body)


def _fail(code: ErrorCode, text: str) -> MessageError:
    return MessageError(code, text)


def _int(v: Any, what: str, lo: int = 0, hi: int = _MAX_EVENT) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise _fail(ErrorCode.MALFORMED, f"{what} must be an integer in [{lo}, {hi}]")
    return v


def _str(v: Any, what: str) -> str:
    if type(v) is not str:
        raise _fail(ErrorCode.MALFORMED, f"{what} must be a string")
    return v


def _tuple(v: Any, limits: Limits, body_size: int) -> LTuple:
    try:
        t = make_tuple(v, limits)
        if body_size > limits.max_size and len(packb(t)) > limits.max_size:
            raise TupleTooLarge(f"tuple encodes to more than {limits.max_size} bytes")
    except TupleTooLarge as e:
        raise _fail(ErrorCode.TOO_LARGE, str(e)) from None
    except TupleError as e:
        raise _fail(ErrorCode.BAD_TUPLE, str(e)) from None
    return t


def _template(v: Any, limits: Limits) -> Template:
    try:
        return make_template(v, limits)
    except TemplateError as e:
        raise _fail(ErrorCode.BAD_TEMPLATE, str(e)) from None


def _state(v: Any, limits: Limits) -> bytes:
    if type(v) is not bytes:
        raise _fail(ErrorCode.MALFORMED, "a checkpoint's state must be bytes")
    if len(v) > limits.max_size:
        raise _fail(ErrorCode.TOO_LARGE, f"a checkpoint's state exceeds {limits.max_size} bytes")
    return v


def _timeout(v: Any) -> float | None:
    if v is None:
        return None
    if type(v) not in (int, float) or not math.isfinite(v) or v < 0:
        raise _fail(ErrorCode.MALFORMED, "timeout must be a non-negative number of seconds")
    return float(v)


def _steps(v: Any, limits: Limits, body_size: int) -> tuple[Step, ...]:
    if type(v) is not tuple or not v:
        raise _fail(ErrorCode.MALFORMED, "an atomic request's steps must be a non-empty array")
    if len(v) > MAX_STEPS:
        raise _fail(
            ErrorCode.TOO_LARGE, f"an atomic request has {len(v)} steps, more than {MAX_STEPS}"
        )
    steps = []
    for i, pair in enumerate(v):
        if type(pair) is not tuple or len(pair) != 2 or type(pair[0]) is not int:
            raise _fail(ErrorCode.MALFORMED, f"step {i} must be an array [op, argument]")
        op = _STEP_OPS.get(pair[0])
        if op is None:
            raise _fail(ErrorCode.MALFORMED, f"step {i} has an unknown op {pair[0]}")
        if op is StepOp.OUT:
            steps.append(Step(op, _tuple(pair[1], limits, 0)))
        else:
            steps.append(Step(op, _template(pair[1], limits)))
    # The steps' tuples and templates together are bounded by the size limit (each
    # alone is, then): a body within it needs no encoding again, as the canonical
    # encoding of its parts is never longer.
    if body_size > limits.max_size and steps_size(steps) > limits.max_size:
        raise _fail(
            ErrorCode.TOO_LARGE,
            f"an atomic request's steps encode to more than {limits.max_size} bytes",
        )
    return tuple(steps)


def _result(v: Any, limits: Limits, body_size: int) -> LTuple | None:
    return None if v is None else _tuple(v, limits, body_size)


def _results(body: Any, limits: Limits, body_size: int) -> tuple[StepResult, ...]:
    """A COMMITTED body's results (see L{Committed}), every part checked."""
    if type(body) is not tuple or len(body) not in (1, 2):
        raise _fail(ErrorCode.MALFORMED, "COMMITTED body must be an array of 1 or 2 fields")
    plain = body[0]
    if type(plain) is not tuple or not 0 < len(plain) <= MAX_STEPS:
        raise _fail(ErrorCode.MALFORMED, f"COMMITTED holds 1 to {MAX_STEPS} results")
    results: list[StepResult] = [_result(r, limits, body_size) for r in plain]
    if len(body) == 1:
        return tuple(results)
    lists = body[1]
    if type(lists) is not tuple or not lists:
        raise _fail(ErrorCode.MALFORMED, "COMMITTED lists must be a non-empty array")
    last = -1
    for pair in lists:
        if type(pair) is not tuple or len(pair) != 2 or type(pair[1]) is not tuple:
            raise _fail(ErrorCode.MALFORMED, "a COMMITTED list must be an array [step, tuples]")
        step, tuples = pair
        if type(step) is not int or not last < step < len(results):
            raise _fail(
                ErrorCode.MALFORMED,
                f"COMMITTED lists name steps in order, below {len(results)}: not {step!r}",
            )
        if results[step] is not None:
            raise _fail(ErrorCode.MALFORMED, f"COMMITTED step {step} has a tuple and a list")
        if len(tuples) > MAX_SCAN:
            raise _fail(
                ErrorCode.MALFORMED, f"COMMITTED step {step} lists more than {MAX_SCAN} tuples"
            )
        results[step] = Tuples(tuple(_tuple(t, limits, body_size) for t in tuples))
        last = step
    return tuple(results)


def _fields(body: Any, n: int, name: str) -> tuple[Any, ...]:
    if type(body) is not tuple or len(body) != n:
        raise _fail(ErrorCode.MALFORMED, f"{name} body must be an array of {n} fields")
    return body


def decode_message(frame: Frame, limits: Limits = DEFAULT_LIMITS) -> Message:
    """
    The message in C{frame}.

    @raise MessageError: if the type is unknown or the body is malformed.
    """
    t = frame.type
    if t not in _KNOWN_TYPES:
        raise _fail(ErrorCode.UNKNOWN_TYPE, f"unknown message type {t}")
    try:
        body = unpackb(frame.body)
    except Exception as e:  # msgpack raises several unrelated types on bad input
        raise _fail(ErrorCode.MALFORMED, f"body is not valid msgpack: {e}") from None
    kind = _KIND_OF_TYPE.get(t)
    if kind is not None:
        event, template, timeout = _fields(body, 3, kind.name)
        return Take(kind, _int(event, "event"), _template(template, limits), _timeout(timeout))
    if t == Out.TYPE:
        event, tup = _fields(body, 2, "OUT")
        return Out(_int(event, "event"), _tuple(tup, limits, len(frame.body)))
    if t == Atomic.TYPE:
        event, steps = _fields(body, 2, "ATOMIC")
        return Atomic(_int(event, "event"), _steps(steps, limits, len(frame.body)))
    if t == Committed.TYPE:
        return Committed(_results(body, limits, len(frame.body)))
    if t == Aborted.TYPE:
        step, reason = _fields(body, 2, "ABORTED")
        code = _ABORT_REASONS.get(reason) if type(reason) is int else None
        if code is None:
            raise _fail(ErrorCode.MALFORMED, f"ABORTED has an unknown reason {reason!r}")
        return Aborted(_int(step, "step", 0, MAX_STEPS - 1), code)
    if t == Hello.TYPE:
        pid, name = _fields(body, 2, "HELLO")
        return Hello(None if pid is None else _int(pid, "pid", 1), _str(name, "name"))
    if t == Cancel.TYPE:
        (target,) = _fields(body, 1, "CANCEL")
        return Cancel(_int(target, "target", 0, 2**32 - 1))
    if t == StatsRequest.TYPE:
        _fields(body, 0, "STATS")
        return StatsRequest()
    if t == Goodbye.TYPE:
        (event,) = _fields(body, 1, "GOODBYE")
        return Goodbye(_int(event, "event"))
    if t == Gone.TYPE:
        _fields(body, 0, "GONE")
        return Gone()
    if t == Ping.TYPE:
        _fields(body, 0, "PING")
        return Ping()
    if t == Pong.TYPE:
        _fields(body, 0, "PONG")
        return Pong()
    if t == CheckpointRequest.TYPE:
        event, state = _fields(body, 2, "CHECKPOINT")
        return CheckpointRequest(_int(event, "event"), _state(state, limits))
    if t == RecoverRequest.TYPE:
        _fields(body, 0, "RECOVER")
        return RecoverRequest()
    if t == Recovered.TYPE:
        event, state = _fields(body, 2, "RECOVERED")
        if (event is None) != (state is None):
            raise _fail(ErrorCode.MALFORMED, "RECOVERED has both an event and a state, or neither")
        if event is None:
            return Recovered(None, None)
        return Recovered(_int(event, "event"), _state(state, limits))
    if t == Welcome.TYPE:
        pid, server, max_size = _fields(body, 3, "WELCOME")
        return Welcome(_int(pid, "pid", 1), _str(server, "server"), _int(max_size, "max_size"))
    if t == Stored.TYPE:
        _fields(body, 0, "STORED")
        return Stored()
    if t == Matched.TYPE:
        (tup,) = _fields(body, 1, "MATCHED")
        return Matched(_tuple(tup, limits, len(frame.body)))
    if t == NoMatch.TYPE:
        _fields(body, 0, "NO_MATCH")
        return NoMatch()
    if t == Cancelled.TYPE:
        _fields(body, 0, "CANCELLED")
        return Cancelled()
    if t == TimedOut.TYPE:
        _fields(body, 0, "TIMED_OUT")
        return TimedOut()
    if t == Stats.TYPE:
        (values,) = _fields(body, 1, "STATS")
        if type(values) is not dict or not all(
            type(k) is str and type(v) in (int, float, str) for k, v in values.items()
        ):
            raise _fail(ErrorCode.MALFORMED, "STATS values must map names to numbers")
        return Stats(values)
    if t == Error.TYPE:
        code, text = _fields(body, 2, "ERROR")
        # A code this side does not know (a newer peer's) is still an error: INTERNAL.
        ecode = _ERROR_CODES.get(code, ErrorCode.INTERNAL) if type(code) is int else None
        return Error(ecode or ErrorCode.INTERNAL, _str(text, "message"))
    raise _fail(ErrorCode.UNKNOWN_TYPE, f"unknown message type {t}")
