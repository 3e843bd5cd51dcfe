"""
The replicated tuple space: a MessageServer backend whose effects travel in the ring's
total order (sans-IO).

Only effects on the replicated state travel: C{OUT} and C{CLAIM}.  A template is matched
against the local replica first (as in LiPS): C{inp}/C{rdp} with no match answer at
once; C{in}/C{rd} with no match wait here, at their origin server; a match becomes a
claim of that tuple's sequence number, applied at the same point of the order on every
replica, where the first claim of a tuple wins and a losing origin matches again.

Answers are released to the server only once the ring reports them safe (every member
holds the message that produced them), so an answered operation survives the crash of
any server but the last.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Final

import attrs
from zope.interface import implementer

from lips.ring import RingId
from lips.server import ISpaceBackend, Operation
from lips.space import Completion, Kind, Status, TupleSpace
from lips.tuples import LTuple, Template, TupleError, make_tuple, packb, unpackb

__all__ = ["Replica", "ReplicaPayloadError"]

_OUT: Final = 1
_CLAIM: Final = 2


class ReplicaPayloadError(ValueError):
    """A ring payload is not a replica operation."""


@attrs.define(eq=False)
class _Wait:
    kind: Kind
    template: Template


def encode_out(pid: int, event: int, values: LTuple) -> bytes:
    return packb([_OUT, pid, event, values])


def encode_claim(pid: int, event: int, kind: Kind, seq: int, origin: int) -> bytes:
    return packb([_CLAIM, pid, event, int(kind), seq, origin])


def decode(payload: bytes) -> tuple[Any, ...]:
    """
    A ring payload as C{("out", pid, event, tuple)} or
    C{("claim", pid, event, kind, seq, origin)}.
    """
    try:
        body = unpackb(payload)
    except Exception as e:
        raise ReplicaPayloadError(f"not msgpack: {e}") from None
    if type(body) is not tuple or not body or any(type(x) is not int for x in body[1:3]):
        raise ReplicaPayloadError("not a replica operation")
    if body[0] == _OUT and len(body) == 4:
        try:
            return ("out", body[1], body[2], make_tuple(body[3]))
        except TupleError as e:
            raise ReplicaPayloadError(str(e)) from None
    if body[0] == _CLAIM and len(body) == 6 and all(type(x) is int for x in body[3:]):
        try:
            kind = Kind(body[3])
        except ValueError:
            raise ReplicaPayloadError(f"unknown kind {body[3]}") from None
        if kind is Kind.OUT:
            raise ReplicaPayloadError("a claim cannot be an OUT")
        return ("claim", body[1], body[2], kind, body[4], body[5])
    raise ReplicaPayloadError("not a replica operation")


@implementer(ISpaceBackend)
class Replica:
    """
    One server's replica of the tuple space.

    @param node: this server's node id in the ring.
    @param broadcast: hands a payload to the ring; returns False when the ring's queue
        is full (the operation is then refused, for the client to retry).
    """

    def __init__(
        self, node: int, broadcast: Callable[[bytes], bool], space: TupleSpace | None = None
    ) -> None:
        self.node = node
        self.space = space if space is not None else TupleSpace()
        self._broadcast = broadcast
        self.on_complete: Callable[[Completion], None] = lambda c: None
        self._waiting: OrderedDict[tuple[int, int], _Wait] = OrderedDict()
        self._claiming: dict[tuple[int, int], _Wait] = {}
        self._held: list[tuple[RingId, int, Completion]] = []
        self.refused = 0
        self.malformed = 0

    # -- from the MessageServer -------------------------------------------------------------

    def submit(self, operation: Operation) -> None:
        op = operation
        done = self.space.answered(op.pid, op.event)
        if done is not None and done.status is not Status.CANCELLED:
            self.on_complete(done)  # a retry: the first answer again
            return
        if op.kind is Kind.OUT:
            assert isinstance(op.payload, tuple)
            if not self._broadcast(encode_out(op.pid, op.event, op.payload)):
                self._refuse(op.pid, op.event)
            return
        assert isinstance(op.payload, Template)
        self._match(op.pid, op.event, _Wait(op.kind, op.payload))

    def withdraw(self, pid: int, event: int) -> None:
        if self._waiting.pop((pid, event), None) is not None:
            self.on_complete(Completion(pid, event, Status.CANCELLED))

    def gauges(self) -> dict[str, int]:
        return {
            "tuples": len(self.space),
            "waiting": len(self._waiting),
            "claiming": len(self._claiming),
            "unsafe_answers": len(self._held),
            "processes": self.space.processes,
            "sequence": self.space.sequence,
        }

    # -- from the ring ----------------------------------------------------------------------

    def delivered(self, ring: RingId, seq: int, payload: bytes) -> None:
        """Apply one payload delivered in total order."""
        try:
            op = decode(payload)
        except ReplicaPayloadError:
            # Every replica gets the same bytes, so every replica skips it alike.
            self.malformed += 1
            return
        if op[0] == "out":
            _, pid, event, values = op
            before = self.space.sequence
            for c in self.space.out(pid, event, values):
                self._held.append((ring, seq, c))
            if self.space.sequence != before:
                self._offer(self.space.sequence, values)
            return
        _, pid, event, kind, tuple_seq, origin = op
        won = self.space.claim(pid, event, kind, tuple_seq)
        mine = origin == self.node
        wait = self._claiming.pop((pid, event), None) if mine else None
        if won is not None:
            self._held.append((ring, seq, won))
        elif wait is not None:
            self._match(pid, event, wait)  # lost the race: match again

    def safe(self, ring: RingId, upto: int) -> None:
        """Every member holds the ring's messages up to C{upto}: release their answers."""
        keep = []
        for entry in self._held:
            if entry[0] == ring and entry[1] <= upto:
                self.on_complete(entry[2])
            else:
                keep.append(entry)
        self._held = keep

    def installed(self, ring: RingId) -> None:
        """
        A new configuration is installed: the old ring's messages were recovered by every
        survivor before it, so answers held for them are safe now.
        """
        keep = []
        for entry in self._held:
            if entry[0] != ring:
                self.on_complete(entry[2])
            else:
                keep.append(entry)
        self._held = keep

    # -- internals --------------------------------------------------------------------------

    def _refuse(self, pid: int, event: int) -> None:
        self.refused += 1
        self.on_complete(Completion(pid, event, Status.BUSY))

    def _match(self, pid: int, event: int, wait: _Wait) -> None:
        found = self.space.find(wait.template)
        if found is None:
            if wait.kind.blocks:
                self._waiting[(pid, event)] = wait
                self.on_complete(Completion(pid, event, Status.PENDING))
            else:
                self.on_complete(Completion(pid, event, Status.NO_MATCH))
            return
        self._claim(pid, event, wait, found[0])

    def _claim(self, pid: int, event: int, wait: _Wait, tuple_seq: int) -> None:
        if self._broadcast(encode_claim(pid, event, wait.kind, tuple_seq, self.node)):
            self._claiming[(pid, event)] = wait
        else:
            self._refuse(pid, event)

    def _offer(self, tuple_seq: int, values: LTuple) -> None:
        """A new tuple: local waiters claim it, first come first served."""
        for key, wait in list(self._waiting.items()):
            if not wait.template.matches(values):
                continue
            del self._waiting[key]
            self._claim(key[0], key[1], wait, tuple_seq)
            if wait.kind.removes:
                return
