"""
One server's member of the replicated tuple space: the ring engine, its UDP adapter and
the replica, wired together.

L{ReplicaNode} is the L{ISpaceBackend} a L{lips.server.MessageServer} serves from.  It
holds no logic of its own: ring events go to the replica (deliveries, the safe
watermark, configurations), the replica's broadcasts go to the ring, and the ring
sequence number the engine asks to persist is written to the node's store before
anything else happens, so ring ids never repeat across restarts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import cooperate
from twisted.logger import Logger
from zope.interface import implementer

from lips.protocols import RingProtocol
from lips.replica._replica import Replica
from lips.ring import (
    Configuration,
    Deliver,
    PersistRingSeq,
    RingConfig,
    RingEngine,
    Safe,
    Sealer,
)
from lips.ring._engine import Effect
from lips.server import ISpaceBackend, Operation
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
    @param clock: time and timers.
    @param config: the ring's timings and limits.
    @param space: the empty space to start from (its limits and log limit are kept).
    @param store: the persisted ring sequence number.
    @param protocol_options: passed on to L{RingProtocol} (a transport, say).
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
        self.engine = RingEngine(node, peers, config, ring_seq=store.load())
        self.replica = Replica(node, self._broadcast, peers, space)
        # A large snapshot is restored in steps between the ring's own work, so the
        # token keeps moving while it is (a blocked member would be taken for dead).
        self.replica.background = cooperate
        self.protocol = RingProtocol(
            self.engine, sealer, peers, clock, self._ring_event, **protocol_options
        )

    # -- ISpaceBackend ----------------------------------------------------------------------

    @property
    def on_complete(self) -> Callable[[Completion], None]:
        return self.replica.on_complete

    @on_complete.setter
    def on_complete(self, callback: Callable[[Completion], None]) -> None:
        self.replica.on_complete = callback

    def submit(self, operation: Operation) -> None:
        self.replica.submit(operation)

    def withdraw(self, pid: int, event: int, status: Status) -> None:
        self.replica.withdraw(pid, event, status)

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
            "ring.id": f"{e.ring.seq}.{e.ring.rep}",
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

    def _broadcast(self, payload: bytes) -> bool:
        return self.protocol.submit(payload)

    def _ring_event(self, event: Effect) -> None:
        before = self.replica.mode
        self._dispatch(event)
        after = self.replica.mode
        if after is not before:
            r = self.replica
            self.log.info(
                "Replica {mode} in ring {ring} (last primary {primary}, {applied} applied,"
                " {tuples} tuples, {restored} snapshots restored)",
                mode=after.value,
                ring=f"{r.ring.seq}.{r.ring.rep}",
                primary=f"{r.last_primary.seq}.{r.last_primary.rep}",
                applied=r.applied,
                tuples=len(r.space),
                restored=r.counters["snapshots.restored"],
            )

    def _dispatch(self, event: Effect) -> None:
        if isinstance(event, Deliver):
            self.replica.delivered(event.ring, event.seq, event.payload, event.origin, event.index)
        elif isinstance(event, Safe):
            self.replica.safe(event.ring, event.upto)
        elif isinstance(event, Configuration):
            if not event.transitional:
                self.log.info(
                    "Ring {ring} installed with members {members}",
                    ring=f"{event.ring.seq}.{event.ring.rep}",
                    members=list(event.members),
                )
            self.replica.configuration(event.ring, event.members, event.transitional)
        elif isinstance(event, PersistRingSeq):
            self.store.save(event.seq)
