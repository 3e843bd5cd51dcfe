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
  - its L{Log} effects go to this node's logger.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from lips.kernel import Deliver, Driver, Persist, Send
from lips.protocols._ring import RingEvent, RingProtocol
from lips.replica import Replica
from lips.ring import Configuration, Delivered, RingConfig, RingEngine, Safe, Sealer
from lips.server import Answer, ISpaceBackend, Operation
from lips.space import Completion, Status, TupleSpace

__all__ = ["ReplicaNode", "RingSeqStorage"]

Address = tuple[str, int]


class RingSeqStorage(Protocol):
    """Where a node keeps the highest ring sequence number it has used."""

    def load(self) -> int: ...

    def save(self, seq: int) -> object: ...


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
    @param protocol_options: passed on to L{RingProtocol} (a transport, say).

    @ivar on_complete: where every answer goes (the server sets it, as for any
        L{ISpaceBackend}).
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
        **protocol_options: Any,
    ) -> None:
        self.store = store
        self.on_complete: Callable[[Answer], None] = lambda c: None
        self.engine = RingEngine(node, peers, config, ring_seq=store.load())
        self.replica = Replica(node, peers, space)
        self.driver = Driver(
            self.replica,
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
        return values

    def _ring_event(self, event: RingEvent) -> None:
        """
        One of the ring's events for the application: the replica's input, or the
        ring sequence number to persist.  (The one place that knows the ring's effect
        classes.)
        """
        if isinstance(event, Delivered):
            self.driver.input(
                self.replica.delivered,
                event.ring,
                event.seq,
                event.payload,
                event.origin,
                event.index,
            )
        elif isinstance(event, Safe):
            self.driver.input(self.replica.safe, event.ring, event.upto)
        elif isinstance(event, Configuration):
            if not event.transitional:
                self.log.info(
                    "Ring {ring} installed with members {members}",
                    ring=str(event.ring),
                    members=list(event.members),
                )
            self.driver.input(
                self.replica.configuration, event.ring, event.members, event.transitional
            )
        elif isinstance(event, Persist):
            self.store.save(event.value)

    # -- the replica's effects --------------------------------------------------------------

    def _broadcast(self, effect: Send[bytes]) -> None:
        payload = effect.message
        if not self.protocol.submit(payload):
            # The ring's queue is full (or it has left): the replica undoes what the
            # payload was for, at once, before anything else reaches it.
            self.driver.input(self.replica.refused, payload)

    def _complete(self, effect: Deliver[Completion]) -> None:
        self.on_complete(effect.item)
