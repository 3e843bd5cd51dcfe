"""
One server's member of the replicated tuple space: the ring engine, its UDP adapter and
the replica core, wired together.

L{ReplicaNode} is the L{ISpaceBackend} a L{lips.server.MessageServer} serves from, and
the adapter of the L{Replica} core, which it runs with a L{lips.kernel.Driver} on its
injected clock.  It holds no logic of its own:

  - the server's requests and withdrawals, and the ring's events (deliveries, the safe
    watermark, configurations), are the replica's inputs; the ring's request that its
    sequence number be persisted is written to the node's store before anything else
    happens, so ring ids never repeat across restarts;
  - the replica's L{Send}s go to the ring (C{RingProtocol.submit}); one the ring does
    not take is fed back at once as the replica's C{refused} input;
  - its L{Deliver}ed completions go to C{on_complete} (the server's);
  - its restore timer is the driver's: a large snapshot is restored a step at each turn
    of the reactor, between the ring's own work, so the token keeps moving meanwhile (a
    blocked member would be taken for dead);
  - its L{Log} effects go to this node's logger;
  - with a L{Journal} (a durable cluster), every input the replica's state depends on
    (a delivery, a configuration, a restore step) is appended to it before the replica
    gets it, the journal is flushed to disk when the ring asks (L{RingStored.HELD},
    before its token goes on), and a snapshot of the replica replaces the records once
    they grow past the journal's bound while it serves.  At construction the replica is
    brought back to what the journal holds (L{lips.replica.replay}).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from lips.kernel import Deliver, Driver, Effect, Send, TimerKey
from lips.protocols._ring import RingEvent, RingProtocol
from lips.replica import RESTORE_STEP, Journal, Replica, replay
from lips.ring import (
    Configuration,
    Delivered,
    RingConfig,
    RingEngine,
    RingStored,
    Safe,
    Sealer,
)
from lips.server import Answer, ISpaceBackend, Operation
from lips.space import Completion, Status, TupleSpace

__all__ = ["ReplicaNode", "RingSeqStorage"]

Address = tuple[str, int]


class RingSeqStorage(Protocol):
    """Where a node keeps the highest ring sequence number it has used."""

    def load(self) -> int: ...

    def save(self, seq: int) -> object: ...


def _exit(why: str) -> None:
    """End the process now, not zero: a server that cannot store what it holds must not go on."""
    sys.stderr.flush()
    os._exit(EXIT_JOURNAL)


#: The exit status of a server whose journal could not be written.
EXIT_JOURNAL: Final = 70


class _Journaled:
    """The replica as its driver sees it, with each restore step journaled first."""

    def __init__(self, replica: Replica, journal: Journal) -> None:
        self.replica = replica
        self.journal = journal
        self.emits = replica.emits

    def drain(self) -> list[Effect]:
        return self.replica.drain()

    def timer(self, key: TimerKey, now: float) -> None:
        self.journal.append(RESTORE_STEP)
        self.replica.timer(key, now)


@implementer(ISpaceBackend)
class ReplicaNode:
    """
    A ring member serving a replicated tuple space.

    @param node: this server's ring node id.
    @param peers: the ring address of every configured member (this one included).
    @param sealer: seals and opens the cluster's datagrams.
    @param clock: time and timers, for the ring and the replica alike.
    @param config: the ring's timings and limits.
    @param space: the empty space to start from (its limits and log limit are kept).
    @param store: the persisted ring sequence number.
    @param journal: where the replica's state is kept on disk (a durable cluster; the
        ring's C{config.durable} must say so too), or C{None}; it is loaded here.
    @param protocol_options: passed on to L{RingProtocol} (a transport, say).

    @ivar on_complete: where every answer goes (the server sets it, as for any
        L{ISpaceBackend}).
    @ivar on_fatal: called, with the reason, when the journal cannot be written: by
        default the process ends at once with status L{EXIT_JOURNAL}.
    """

    log = Logger()

    def __init__(
        self,
        *,
        node: int,
        peers: Mapping[int, Address],
        sealer: Sealer,
        clock: IReactorTime,
        config: RingConfig,
        space: TupleSpace,
        store: RingSeqStorage,
        journal: Journal | None = None,
        **protocol_options: Any,
    ) -> None:
        if (journal is not None) != config.durable:
            raise ValueError("a journal goes with a durable ring config, and only with one")
        self.store = store
        self.journal = journal
        self.on_complete: Callable[[Answer], None] = lambda c: None
        self.on_fatal: Callable[[str], object] = _exit
        self.engine = RingEngine(node, peers, config, ring_seq=store.load())
        self.replica = Replica(node, peers, space)
        self._depth = 0
        if journal is not None:
            loaded = journal.load()
            replay(self.replica, loaded, clock.seconds())
            # Not served until the next configuration decides: the others may be newer.
            self.replica.restarted()
            self.log.info(
                "Recovered {records} journal records after a snapshot of record {index}"
                " ({torn} torn bytes cut off): {tuples} tuples, {applied} operations",
                records=len(loaded.records),
                index=loaded.snapshot_index,
                torn=loaded.torn,
                tuples=len(self.replica.space),
                applied=self.replica.applied,
            )
        self.driver = Driver(
            self.replica if journal is None else _Journaled(self.replica, journal),
            clock,
            {Send: self._broadcast, Deliver: self._complete},
            log=self.log,
        )
        self.protocol = RingProtocol(
            self.engine, sealer, peers, clock, self._ring_event, **protocol_options
        )

    def stop(self) -> None:
        """Go quiet: the ring protocol and the replica's driver (its restore timer)."""
        self.protocol.stop()
        self.driver.stop()
        if self.journal is not None:
            try:
                self.journal.close()
            except OSError as e:
                self.log.error("Could not close the journal: {error}", error=str(e))

    # -- ISpaceBackend ----------------------------------------------------------------------

    def submit(self, operation: Operation) -> None:
        self.driver.input(self.replica.submit, operation)

    def withdraw(self, pid: int, event: int, status: Status) -> None:
        self.driver.input(self.replica.withdraw, pid, event, status)

    def gauges(self) -> dict[str, int | float | str]:
        return self.replica.gauges()

    def recovered(self, pid: int) -> tuple[int, bytes] | None:
        return self.replica.recovered(pid)

    # -- the ring ---------------------------------------------------------------------------

    def stats(self) -> dict[str, int | float | str]:
        """The ring's state and counters, under C{ring.}."""
        e = self.engine
        values: dict[str, int | float | str] = {
            "ring.node": e.node,
            "ring.state": e.state.value,
            "ring.id": str(e.ring),
            "ring.members": ",".join(map(str, e.members)),
            "ring.backlog": e.backlog,
            "ring.safe": e.safe,
            "ring.replica.mode": self.replica.mode.value,
        }
        for name, count in sorted(e.counters.items()):
            values[f"ring.{name}"] = count
        for name, count in sorted(self.protocol.counters.items()):
            values[f"ring.net.{name}"] = count
        for name, count in sorted(self.replica.counters.items()):
            values[f"ring.replica.{name}"] = count
        if self.journal is not None:
            for name, value in self.journal.stats().items():
                values[f"journal.{name}"] = value
        return values

    def _ring_event(self, event: RingEvent) -> None:
        """
        One of the ring's events for the application: the replica's input, or the
        ring sequence number to persist.  (The one place that knows the ring's effect
        classes.)
        """
        journal = self.journal
        if isinstance(event, Delivered):
            if journal is not None:
                journal.append(event)
            self._depth += 1
            try:
                self.driver.input(
                    self.replica.delivered,
                    event.ring,
                    event.seq,
                    event.payload,
                    event.origin,
                    event.index,
                )
            finally:
                self._depth -= 1
            if journal is not None and journal.due and not self._depth:
                self._snapshot(journal)
        elif isinstance(event, Safe):
            self.driver.input(self.replica.safe, event.ring, event.upto)
        elif isinstance(event, Configuration):
            if not event.transitional:
                self.log.info(
                    "Ring {ring} installed with members {members}",
                    ring=str(event.ring),
                    members=list(event.members),
                )
            if journal is not None:
                journal.append(event)
            self.driver.input(
                self.replica.configuration, event.ring, event.members, event.transitional
            )
        elif event.what is RingStored.HELD:
            if journal is not None:
                try:
                    journal.sync()
                except OSError as e:
                    self._fatal(f"cannot write its journal {journal.directory}: {e}")
        else:
            self.store.save(event.value)

    def _snapshot(self, journal: Journal) -> None:
        """Replace the journal's records by the replica's state, if it can be saved now."""
        state = self.replica.saved()
        if state is not None:
            try:
                journal.snapshot(state)
            except OSError as e:
                self._fatal(f"cannot write a snapshot into {journal.directory}: {e}")

    def _fatal(self, why: str) -> None:
        """
        The journal cannot be written: this member stops at once, before its token goes
        on (the ring's effects after this one are dropped), so that nothing it did not
        store is ever counted as held; then C{on_fatal} ends the process.
        """
        self.log.critical("The server stops: {why}", why=why)
        self.stop()
        self.on_fatal(why)

    # -- the replica's effects --------------------------------------------------------------

    def _broadcast(self, effect: Send[bytes]) -> None:
        payload = effect.message
        if not self.protocol.submit(payload):
            # The ring's queue is full (or it has left): the replica undoes what the
            # payload was for, at once, before anything else reaches it.
            self.driver.input(self.replica.refused, payload)

    def _complete(self, effect: Deliver[Completion]) -> None:
        self.on_complete(effect.item)
