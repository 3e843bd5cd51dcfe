"""
The watchdog core: from the node-state tuples it reads, it knows when each watched
node last reported, and says which nodes have been silent for too long.  Sans-IO, on
the core contract of L{lips.kernel} (C{docs/design/core.md}).

Inputs (each takes the current time, C{now}, last):

  - L{Watchdog.observe}C{(name, seq, now)}: node C{name}'s state tuple was just read:
    report C{seq}, or None if there was none.
  - L{Watchdog.check}C{(now)}: a round's verdict is wanted.
  - L{Watchdog.tried}C{(suspect, now)}: a suspect was acted on.

Effects:

  - L{Deliver}C{(Suspect(name, seq, silent_for))}, from L{Watchdog.check}: one for
    each watched node whose report has stayed unchanged for the limit and was not
    tried yet, in C{nodes} order.

It starts no timer: lipsd's round (L{lips.node.NodeService}) reads the tuples, feeds
the observations, asks for the verdict and writes it, every interval.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

import attrs

from lips.kernel import Deliver, Effect, Outbox, TimerKey
from lips.validate import at_least, positive

__all__ = ["Suspect", "Watchdog"]


@attrs.frozen
class Suspect:
    """
    Node C{name} has shown the same report, C{seq}, for the watchdog's whole limit:
    it may be declared down by taking exactly that report.
    """

    name: str
    seq: int
    silent_for: float


@attrs.define(eq=False)
class _Seen:
    seq: int | None = None
    since: float = 0.0
    tried: int | None = None


def _names(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


@attrs.define
class Watchdog:
    """
    Watches C{nodes}: a node whose report (its sequence number) has not changed for
    C{misses} intervals of C{interval} seconds is a L{Suspect}.

    A node never seen is never suspected: there is no report of it to take.  Each
    unchanged report is suspected until it is tried, then not again; a node that
    reports again is watched afresh.
    """

    emits: ClassVar[frozenset[type[Effect]]] = frozenset({Deliver})

    nodes: tuple[str, ...] = attrs.field(converter=_names)
    interval: float = attrs.field(default=1.0, converter=float, validator=positive)
    misses: int = attrs.field(default=3, validator=at_least(1))
    _seen: dict[str, _Seen] = attrs.field(init=False, factory=dict)
    _outbox: Outbox = attrs.field(init=False, factory=lambda: Outbox(Watchdog.emits))

    def __attrs_post_init__(self) -> None:
        if len(set(self.nodes)) != len(self.nodes):
            raise ValueError(f"a node is watched twice: {self.nodes}")
        self._seen = {name: _Seen() for name in self.nodes}

    @property
    def limit(self) -> float:
        """How long a report may stay unchanged before its node is suspected."""
        return self.interval * self.misses

    def silent(self) -> list[str]:
        """The nodes whose current report has been tried: those believed down."""
        return [n for n in self.nodes if self._seen[n].tried is not None]

    def drain(self) -> list[Effect]:
        """The effects emitted since the last call, in order."""
        return self._outbox.drain()

    # -- inputs ---------------------------------------------------------------------------

    def observe(self, name: str, seq: int | None, now: float) -> None:
        """
        The watchdog read node C{name}'s state tuple at C{now}: report C{seq}, or
        C{None} if there was none (the node has not reported yet, or its last report
        was taken when it was declared down).
        """
        seen = self._seen[name]
        if seq is not None and seq != seen.seq:
            seen.seq, seen.since, seen.tried = seq, now, None

    def check(self, now: float) -> None:
        """Deliver a L{Suspect} for each node silent for the limit and not yet tried."""
        for name in self.nodes:
            seen = self._seen[name]
            if seen.seq is None or seen.tried == seen.seq:
                continue
            silent = now - seen.since
            # Rounds come every interval, give or take the reactor's jitter: a round due
            # exactly at the limit must not miss it by a hair and wait a whole interval.
            if silent >= self.limit - self.interval / 4:
                self._outbox.deliver(Suspect(name, seen.seq, silent))

    def tried(self, suspect: Suspect, now: float) -> None:
        """C{suspect} was acted on (declared down here, or by another watchdog)."""
        seen = self._seen[suspect.name]
        if seen.seq == suspect.seq:
            seen.tried = suspect.seq

    def timer(self, key: TimerKey, now: float) -> None:
        """The watchdog starts no timer: any key is a programming error."""
        raise ValueError(f"the watchdog starts no timers: {key!r}")
