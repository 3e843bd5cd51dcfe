"""
The effect vocabulary: everything a core may ask for, as data.

A core never does I/O and never schedules anything; what it wants done it emits as one
of these frozen, slotted attrs classes, and whoever hosts it (the Twisted L{Driver
<lips.kernel.Driver>}, or a simulator) carries them out in order.  See
C{docs/design/core.md}.

Timers are data too: a L{TimerKey} is an enum member of the core's own timer enum,
optionally paired with a discriminator (C{(Timer.RESTART, pid)}), never a callable and
never a bare string, so that two timers are the same timer exactly when their keys are
equal and a simulator can print, compare and replay them.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Mapping
from typing import Any, Final, Generic, TypeAlias, TypeVar

import attrs
from twisted.logger import LogLevel

from lips.validate import finite

__all__ = [
    "EFFECT_TYPES",
    "CancelTimer",
    "Deliver",
    "Effect",
    "Kill",
    "Log",
    "Persist",
    "Send",
    "Spawn",
    "StartTimer",
    "TimerKey",
    "check_timer_key",
]

M = TypeVar("M")
T = TypeVar("T")
V = TypeVar("V")
S = TypeVar("S")

TimerKey: TypeAlias = enum.Enum | tuple[enum.Enum, Hashable]
"""A timer's name: an enum member, or an enum member and a discriminator."""


def check_timer_key(key: object) -> TimerKey:
    """
    C{key} if it is a L{TimerKey}: an enum member, or a pair of an enum member and a
    hashable discriminator.

    @raise TypeError: if it is not (a string, a callable, a bare number, ...).
    """
    if isinstance(key, enum.Enum):
        return key
    if isinstance(key, tuple) and len(key) == 2 and isinstance(key[0], enum.Enum):
        try:
            hash(key)
        except TypeError:
            pass
        else:
            return key
    raise TypeError(f"a timer key is an enum member or (enum member, hashable), not {key!r}")


def _timer_key(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    check_timer_key(value)


def _handle(instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{attribute.name} must be an integer, not {value!r}")


def _enum(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, enum.Enum):
        raise TypeError(f"{attribute.name} must be an enum member, not {value!r}")


_LEVELS: Final = frozenset(LogLevel.iterconstants())


def _level(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value not in _LEVELS:
        raise TypeError(f"{attribute.name} must be a LogLevel, not {value!r}")


def _fields(
    value: Mapping[str, object] | tuple[tuple[str, object], ...],
) -> tuple[tuple[str, object], ...]:
    items = tuple(value.items()) if isinstance(value, Mapping) else tuple(value)
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
            raise TypeError(f"log fields are (name, value) pairs, not {item!r}")
    return items


@attrs.frozen
class Send(Generic[M]):
    """
    Send C{message} to peer C{to} (the core's own name for it: a node id, a session),
    or to every peer when C{to} is None.  The adapter encodes and writes it.
    """

    to: Hashable | None
    message: M


@attrs.frozen
class Deliver(Generic[T]):
    """Hand C{item} to the application (a payload in order, a verdict, an outcome)."""

    item: T


@attrs.frozen
class StartTimer:
    """
    Call the core's C{timer(key, now)} once C{now >= at} (C{at} on the core's clock,
    absolute).  A timer already pending under C{key} is replaced.
    """

    key: TimerKey = attrs.field(validator=_timer_key)
    at: float = attrs.field(validator=finite)


@attrs.frozen
class CancelTimer:
    """Forget the timer pending under C{key}, if any."""

    key: TimerKey = attrs.field(validator=_timer_key)


@attrs.frozen
class Persist(Generic[V]):
    """
    Store C{value} as C{what} (a member of the core's enum of stored things) before
    anything the core emits after this effect is carried out.
    """

    what: enum.Enum = attrs.field(validator=_enum)
    value: V


@attrs.frozen
class Spawn(Generic[S]):
    """
    Start a process as C{spec} says; the core calls it C{handle}, and its end comes
    back to the core as an input naming that handle.  A process that cannot be started
    ends at once (the adapter feeds that end back).
    """

    spec: S
    handle: int = attrs.field(validator=_handle)


@attrs.frozen
class Kill:
    """
    Ask process C{handle} to end (SIGTERM for a real child); its end still comes back
    as an input.
    """

    handle: int = attrs.field(validator=_handle)


@attrs.frozen
class Log:
    """
    Log C{format} (a L{twisted.logger} format string) at C{level} with C{fields}, the
    names the format refers to, as C{(name, value)} pairs (a mapping is accepted).
    """

    level: LogLevel = attrs.field(validator=_level)
    format: str = attrs.field(validator=attrs.validators.instance_of(str))
    fields: tuple[tuple[str, object], ...] = attrs.field(default=(), converter=_fields)


Effect: TypeAlias = (
    Send[Any] | Deliver[Any] | StartTimer | CancelTimer | Persist[Any] | Spawn[Any] | Kill | Log
)
"""Any effect of the vocabulary."""

#: Every effect class, for checks of what a core declares it emits.
EFFECT_TYPES: Final[frozenset[type[Effect]]] = frozenset(
    {Send, Deliver, StartTimer, CancelTimer, Persist, Spawn, Kill, Log}
)
