"""
The core contract: what the driver, a simulator or a test may rely on of a core, and the
L{Outbox} every core keeps its effects in.

A core is a plain object.  Its inputs are ordinary methods that take the current time
as their last argument, C{now} (seconds on the host's clock); its decisions come out as
effects (L{lips.kernel._effects}) which the host takes with L{Core.drain} after each
input and carries out in order.  When a timer it started is due, the host calls
L{Core.timer}.  A core may also answer at once (C{start(spec, now) -> bool}) and offer
queries of its state; it never calls back, never holds a clock, never imports the
reactor.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Iterable
from typing import Protocol

from twisted.logger import LogLevel

from lips.kernel._effects import (
    EFFECT_TYPES,
    CancelTimer,
    Deliver,
    Effect,
    Kill,
    Log,
    Persist,
    Send,
    Spawn,
    StartTimer,
    TimerKey,
)

__all__ = ["Core", "Outbox"]


class Core(Protocol):
    """
    What a host needs of a core (a L{typing.Protocol}: cores are our own plain classes,
    checked by mypy where they are handed to a host; see C{docs/design/core.md}).
    """

    @property
    def emits(self) -> frozenset[type[Effect]]:
        """
        The effect classes this core may emit (a class attribute is enough).  The
        driver refuses to run a core whose effects it has no handler for.
        """
        ...

    def drain(self) -> list[Effect]:
        """The effects emitted since the last call, in the order they were emitted."""
        ...

    def timer(self, key: TimerKey, now: float) -> None:
        """
        The timer this core started under C{key} is due (C{now} is at or after its
        deadline).  A key the core never started is a programming error: raise.
        """
        ...


class Outbox:
    """
    A core's pending effects: the core emits into it, the host drains it.

    @param emits: the effect classes the core declared (its L{Core.emits}); emitting
        another is refused at once, in the core, where the bug is.
    """

    __slots__ = ("_allowed", "_effects")

    def __init__(self, emits: Iterable[type[Effect]] = EFFECT_TYPES) -> None:
        allowed = frozenset(emits)
        unknown = allowed - EFFECT_TYPES
        if unknown:
            raise TypeError(f"not effect classes: {sorted(t.__name__ for t in unknown)}")
        self._allowed = allowed
        self._effects: list[Effect] = []

    def __len__(self) -> int:
        return len(self._effects)

    def emit(self, effect: Effect) -> None:
        """
        Queue C{effect}.

        @raise TypeError: if it is not one of the declared effect classes.
        """
        if type(effect) not in self._allowed:
            raise TypeError(f"this core does not emit {type(effect).__name__}: {effect!r}")
        self._effects.append(effect)

    def drain(self) -> list[Effect]:
        """Every effect queued since the last drain, in order; the outbox is then empty."""
        effects, self._effects = self._effects, []
        return effects

    # -- shorthands, one per effect -------------------------------------------------------

    # (The two effects of every request and answer are queued without the call of
    # emit: they are on every core's hot path.)

    def send(self, to: Hashable | None, message: object) -> None:
        if Send not in self._allowed:
            raise TypeError(f"this core does not emit Send: {message!r} to {to!r}")
        self._effects.append(Send(to, message))

    def deliver(self, item: object) -> None:
        if Deliver not in self._allowed:
            raise TypeError(f"this core does not emit Deliver: {item!r}")
        self._effects.append(Deliver(item))

    def start_timer(self, key: TimerKey, at: float) -> None:
        self.emit(StartTimer(key, at))

    def cancel_timer(self, key: TimerKey) -> None:
        self.emit(CancelTimer(key))

    def persist(self, what: enum.Enum, value: object) -> None:
        self.emit(Persist(what, value))

    def spawn(self, spec: object, handle: int) -> None:
        self.emit(Spawn(spec, handle))

    def kill(self, handle: int) -> None:
        self.emit(Kill(handle))

    def log(self, level: LogLevel, format: str, **fields: object) -> None:
        self.emit(Log(level, format, fields))
