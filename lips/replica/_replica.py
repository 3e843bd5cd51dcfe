"""
The replicated tuple space: a MessageServer backend whose effects travel in the ring's
total order (sans-IO).

Only effects on the replicated state travel: C{OUT}, C{CLAIM}, C{CHECKPOINT}, C{FORGET},
C{WITHDRAW} and C{ATOMIC}.  A template is matched against the local replica first (as in LiPS):
C{in}/C{rd} with no match wait here, at their origin server; a match becomes a claim of
that tuple's sequence number, applied at the same point of the order on every replica,
where the first claim of a tuple wins and a losing origin matches again.  An answer
without a tuple is decided in the order too (C{WITHDRAW}: a timeout, a cancel, or "none"
for an C{inp}/C{rdp} that found nothing here), so that a claim of the same event on its
way from another server (the request's copy at a server its client left) wins over it,
and one that comes later takes nothing: no tuple is ever taken while its caller is told
that none was.

An atomic request (C{ATOMIC}: steps applied as one event, all or none) is not matched
here first: its steps go through the order as one payload, and every replica decides it
at the same point, against the same state (L{TupleSpace.atomic}), so they all commit it
or all abort it alike.  Its C{scan} and C{delete} steps read and take every match there
and then: a claim ordered after a delete that took its tuple loses, as after an C{in}.

Answers are released to the server only once the ring reports them safe (every member
holds the message that produced them), so an answered operation survives the crash of
any server but the last.

Membership: the primary component and state transfer
----------------------------------------------------

A tuple space cannot let two partitions both serve (an C{in} must remove a tuple once,
cluster-wide), so a replica serves only in a I{primary component}.  At every regular
configuration each member broadcasts a C{STATUS}: whether it holds a state, the last
primary configuration it served in, how many operations its state has applied and a
fingerprint of them (a hash chained over the ring positions of every applied
operation).  Every member delivers the same statuses in the same order, so when the
last one is in, every member takes the same decision at the same point of the order:

- The configuration is primary if every configured server is in it, or if its members
  that hold a state are a majority of the configured servers (half, when they include
  the lowest configured id).  With every server present and none holding a state, the
  space begins empty (a cold start).
- The source is the member with the most recent state: the highest last primary, then
  the most operations applied, then the lowest id.  Every member whose fingerprint
  differs (a restarted server, one that spent a while in a minority) waits for the
  source's C{SNAPSHOT}, taken at the decision point and carried through the ring; it
  restores it and applies what was delivered since.  Its digest then equals the
  others'.
- Until it is decided, operations delivered in the new configuration (sent before its
  senders knew of it) are kept aside, and client requests wait in a queue.  In a
  primary they are applied after the decision; outside one they are dropped, and every
  request of this server's clients is answered C{UNAVAILABLE} so they go elsewhere.
  Requests of this server that were in flight when the configuration changed are sent
  again once it serves: the (process id, event number) log applies each of them once.

The core contract
-----------------

L{Replica} is a sans-IO core on the contract of L{lips.kernel} (C{docs/design/core.md}).
L{lips.protocols.ReplicaNode} hosts it with a L{lips.kernel.Driver} next to the ring;
the simulators of L{lips.testing} host it with their own engines.

Inputs (each takes the current time, C{now}, last):

  - from the MessageServer: L{Replica.submit}C{(operation, now)} and
    L{Replica.withdraw}C{(pid, event, status, now)};
  - from the ring: L{Replica.delivered}C{(ring, seq, payload, origin, index, now)},
    L{Replica.safe}C{(ring, upto, now)} and
    L{Replica.configuration}C{(ring, members, transitional, now)};
  - from the host: L{Replica.refused}C{(payload, now)}, when the ring did not take a
    payload the replica sent (its queue is full, or it has left): the host feeds it
    back at once, as it carries that L{Send} out;
  - L{Replica.timer}C{(ReplicaTimer.RESTORE, now)}: the next step of a restore is due.

Queries: L{Replica.recovered} (raises L{Unavailable} unless serving), L{Replica.gauges},
and the attributes C{mode}, C{space}, C{ring}, C{members}, C{last_primary},
C{applied}, C{fingerprint}, C{has_state} and C{counters}.

Effects:

  - L{Send}C{(None, payload)}: broadcast C{payload} in the ring's total order (from
    C{submit}, C{withdraw}, C{delivered}, C{safe}, C{configuration}, C{timer}; a
    payload the ring refuses comes back through C{refused}).
  - L{Deliver}C{(completion)}: an answer for the MessageServer (a L{Completion}: a
    result once it is safe, C{PENDING}, C{BUSY}, C{UNAVAILABLE}), from any input.
  - L{StartTimer}C{(ReplicaTimer.RESTORE, now)}: restore the snapshot just delivered a
    step at a time, one step per C{timer} call, so that the host gets on with its other
    work (the ring's token) between steps; and L{CancelTimer}C{(ReplicaTimer.RESTORE)},
    when a new configuration makes the restore moot.
  - L{Log}: the replica's mode changed (info).
"""

from __future__ import annotations

import enum
import hashlib
import struct
from collections import Counter, OrderedDict
from collections.abc import Generator, Iterable
from typing import Any, ClassVar, Final

import attrs
from twisted.logger import LogLevel

from lips.kernel import CancelTimer, Deliver, Effect, Log, Outbox, Send, StartTimer, TimerKey
from lips.ring import NO_RING, RingId
from lips.server import Operation, Refusal, Refused, Unavailable
from lips.space import Completion, Kind, SnapshotError, Status, TupleSpace
from lips.tuples import (
    MAX_STEPS,
    LTuple,
    Step,
    StepOp,
    Template,
    TupleError,
    make_template,
    make_tuple,
    packb,
    unpackb,
)

__all__ = ["Mode", "Replica", "ReplicaPayloadError", "ReplicaTimer"]

_OUT: Final = 1
_CLAIM: Final = 2
_STATUS: Final = 3
_SNAPSHOT: Final = 4
_CHECKPOINT: Final = 5
_WITHDRAW: Final = 6
_FORGET: Final = 7
_ATOMIC: Final = 8

#: Requests sent into the order as they come (not matched here first).
_ORDERED_AS_IS: Final = frozenset({Kind.OUT, Kind.CHECKPOINT, Kind.FORGET, Kind.ATOMIC})

#: Most client requests kept while the replica is not yet serving.
MAX_QUEUED: Final = 10_000

_POSITION = struct.Struct("!QIQI")

#: The version of L{Replica.saved}'s encoding.
_SAVED_VERSION: Final = 1

#: The sequence number of answers held until a state transfer's snapshot is safe.
_AFTER_TRANSFER: Final = 2**63


class ReplicaPayloadError(ValueError):
    """A ring payload is not a replica operation."""


class Mode(enum.Enum):
    """What a replica does with its clients' requests."""

    SYNCING = "syncing"
    """A configuration is being decided, or the state is on its way: requests wait."""
    SERVING = "serving"
    """A member of the primary component with the current state."""
    UNAVAILABLE = "unavailable"
    """Outside the primary component: requests are answered UNAVAILABLE."""


class ReplicaTimer(enum.Enum):
    """The replica's timers."""

    RESTORE = "restore"
    """The next step of restoring a snapshot (started at C{now}: at the host's next turn)."""


@attrs.define(eq=False)
class _Restore:
    """A snapshot being restored: delivered at C{seq} of C{ring}, restored by C{steps}."""

    ring: RingId
    seq: int
    steps: Generator[None, None, TupleSpace]
    applied: int
    fingerprint: bytes


@attrs.define(eq=False)
class _Wait:
    kind: Kind
    template: Template


@attrs.frozen
class _Status:
    node: int
    has_state: bool
    last_primary: RingId
    applied: int
    fingerprint: bytes


def encode_out(pid: int, event: int, values: LTuple) -> bytes:
    return packb([_OUT, pid, event, values])


def encode_claim(pid: int, event: int, kind: Kind, seq: int, origin: int) -> bytes:
    return packb([_CLAIM, pid, event, int(kind), seq, origin])


def encode_status(ring: RingId, status: _Status) -> bytes:
    lp = status.last_primary
    return packb(
        [
            _STATUS,
            status.node,
            ring.seq,
            ring.rep,
            status.has_state,
            lp.seq,
            lp.rep,
            status.applied,
            status.fingerprint,
        ]
    )


def encode_snapshot(
    ring: RingId, source: int, applied: int, fingerprint: bytes, blob: bytes
) -> bytes:
    return packb([_SNAPSHOT, ring.seq, ring.rep, source, applied, fingerprint, blob])


def _ints(values: Iterable[Any]) -> bool:
    return all(type(v) is int for v in values)


def encode_checkpoint(pid: int, event: int, state: bytes) -> bytes:
    return packb([_CHECKPOINT, pid, event, state])


def encode_forget(pid: int, event: int, unless_after: int | None = None) -> bytes:
    if unless_after is None:
        return packb([_FORGET, pid, event])
    return packb([_FORGET, pid, event, unless_after])


def encode_atomic(pid: int, event: int, steps: Iterable[Step]) -> bytes:
    return packb([_ATOMIC, pid, event, [s.wire() for s in steps]])


_STEP_OPS: Final = {int(op): op for op in StepOp}


def _decode_steps(body: Any) -> tuple[Step, ...]:
    """The steps of an C{ATOMIC} payload, each validated as the wire decoder does."""
    if type(body) is not tuple or not 0 < len(body) <= MAX_STEPS:
        raise ReplicaPayloadError(f"an atomic request has 1 to {MAX_STEPS} steps")
    steps = []
    for pair in body:
        if type(pair) is not tuple or len(pair) != 2 or type(pair[0]) is not int:
            raise ReplicaPayloadError("a step is an array [op, argument]")
        op = _STEP_OPS.get(pair[0])
        if op is None:
            raise ReplicaPayloadError(f"unknown step op {pair[0]}")
        try:
            arg = make_tuple(pair[1]) if op is StepOp.OUT else make_template(pair[1])
        except TupleError as e:
            raise ReplicaPayloadError(str(e)) from None
        steps.append(Step(op, arg))
    return tuple(steps)


def encode_withdraw(pid: int, event: int, status: Status) -> bytes:
    return packb([_WITHDRAW, pid, event, int(status)])


_DECISIONS: Final = frozenset({int(Status.TIMED_OUT), int(Status.WITHDRAWN), int(Status.NO_MATCH)})


def decode(payload: bytes) -> tuple[Any, ...]:
    """
    A ring payload as C{("out", pid, event, tuple)},
    C{("claim", pid, event, kind, seq, origin)}, C{("checkpoint", pid, event, state)},
    C{("withdraw", pid, event, status)}, C{("forget", pid, event, unless_after)},
    C{("atomic", pid, event, steps)},
    C{("status", ring, _Status)} or
    C{("snapshot", ring, source, applied, fingerprint, blob)}.
    """
    try:
        body = unpackb(payload)
    except Exception as e:
        raise ReplicaPayloadError(f"not msgpack: {e}") from None
    if type(body) is not tuple or not body or not _ints(body[1:3]):
        raise ReplicaPayloadError("not a replica operation")
    tag = body[0]
    if tag == _OUT and len(body) == 4:
        try:
            return ("out", body[1], body[2], make_tuple(body[3]))
        except TupleError as e:
            raise ReplicaPayloadError(str(e)) from None
    if tag == _CLAIM and len(body) == 6 and _ints(body[3:]):
        try:
            kind = Kind(body[3])
        except ValueError:
            raise ReplicaPayloadError(f"unknown kind {body[3]}") from None
        if not kind.removes and kind not in (Kind.RD, Kind.RDP):
            raise ReplicaPayloadError(f"a claim cannot be an {kind.name}")
        return ("claim", body[1], body[2], kind, body[4], body[5])
    if tag == _ATOMIC and len(body) == 4:
        return ("atomic", body[1], body[2], _decode_steps(body[3]))
    if tag == _CHECKPOINT and len(body) == 4 and type(body[3]) is bytes:
        return ("checkpoint", body[1], body[2], body[3])
    if tag == _FORGET and len(body) == 3:
        return ("forget", body[1], body[2], None)
    if tag == _FORGET and len(body) == 4 and type(body[3]) is int:
        return ("forget", body[1], body[2], body[3])
    if tag == _WITHDRAW and len(body) == 4 and type(body[3]) is int and body[3] in _DECISIONS:
        return ("withdraw", body[1], body[2], Status(body[3]))
    if (
        tag == _STATUS
        and len(body) == 9
        and _ints(body[1:4])
        and type(body[4]) is bool
        and _ints(body[5:8])
        and type(body[8]) is bytes
    ):
        status = _Status(body[1], body[4], RingId(body[5], body[6]), body[7], body[8])
        return ("status", RingId(body[2], body[3]), status)
    if (
        tag == _SNAPSHOT
        and len(body) == 7
        and _ints(body[1:5])
        and type(body[5]) is bytes
        and type(body[6]) is bytes
    ):
        return ("snapshot", RingId(body[1], body[2]), body[3], body[4], body[5], body[6])
    raise ReplicaPayloadError("not a replica operation")


class Replica:
    """
    One server's replica of the tuple space (a core: see the module docstring for its
    inputs and effects).

    @param node: this server's node id in the ring.
    @param configured: the ids of every configured server of this ring (this one
        included): a primary component holds a majority of them.
    @param space: the (empty) space to start from; its limits and log limit are kept
        when a snapshot replaces it.
    """

    emits: ClassVar[frozenset[type[Effect]]] = frozenset(
        {Send, Deliver, StartTimer, CancelTimer, Log}
    )

    def __init__(
        self,
        node: int,
        configured: Iterable[int],
        space: TupleSpace | None = None,
    ) -> None:
        self.node = node
        self.configured = frozenset(configured) | {node}
        self.space = space if space is not None else TupleSpace()
        self._outbox = Outbox(Replica.emits)
        self.mode = Mode.SYNCING
        self._logged_mode = self.mode
        self.has_state = False
        self.last_primary = NO_RING
        self.applied = 0
        self.fingerprint = b""
        self.ring = NO_RING
        self.members: tuple[int, ...] = ()
        self.counters: dict[str, int] = {
            "refused": 0,
            "claims.lost": 0,
            "malformed": 0,
            "dropped": 0,
            "unavailable": 0,
            "snapshots.sent": 0,
            "snapshots.restored": 0,
            "snapshots.bad": 0,
            "configurations": 0,
            "cold_starts": 0,
        }
        # Requests of this server's clients, by (pid, event).
        self._waiting: OrderedDict[tuple[int, int], _Wait] = OrderedDict()
        # Claims in flight, with the tuple each is on (an older claim of the same
        # request, sent before a configuration change, is not the current one).
        self._claiming: dict[tuple[int, int], tuple[_Wait, int]] = {}
        # Outs and checkpoints in flight (sent again after a configuration change).
        self._outs: dict[tuple[int, int], Operation] = {}
        # Tuples this server's removing claims are on (a second claim would lose), and
        # tuples another server stored whose out is not yet safe here: that server's
        # waiters have the first go at them (see L{_offer}).
        self._inflight: Counter[int] = Counter()
        self._fresh: dict[int, tuple[RingId, int]] = {}
        self._queued: OrderedDict[tuple[int, int], Operation] = OrderedDict()
        # Answers waiting to be safe: (ring, seq, completion), and their keys.
        self._held: list[tuple[RingId, int, Completion]] = []
        self._held_keys: dict[tuple[int, int], int] = {}
        # Timeouts and cancels of this server's requests not yet decided in the order,
        # and those the ring's full queue refused (sent again at the next safe).
        self._withdrawals: dict[tuple[int, int], Status] = {}
        self._unsent: set[tuple[int, int]] = set()
        # The ring position of every answer applied and not yet known safe, oldest
        # first, and a position before which everything is unsafe (the decision of the
        # configuration this replica serves in): a retry is answered from the log only
        # once its answer is safe (see L{_answer_logged}).
        self._unsafe: OrderedDict[tuple[int, int], tuple[RingId, int]] = OrderedDict()
        self._barrier: tuple[RingId, int] | None = None
        # The configuration being decided: statuses in, operations kept aside.
        self._statuses: dict[int, _Status] = {}
        self._aside: list[tuple[RingId, int, int, bytes, int]] = []
        self._source = 0
        self._transfer = False
        self._pending_snapshot: bytes | None = None
        # The snapshot being restored, a step at each RESTORE timer.
        self._restoring: _Restore | None = None

    def drain(self) -> list[Effect]:
        """The effects emitted since the last call, in order."""
        return self._outbox.drain()

    # -- durable state ----------------------------------------------------------------------

    def saved(self) -> bytes | None:
        """
        This replica's whole state, for a snapshot of its journal
        (L{lips.replica.Journal}): its space and what it states at a configuration, its
        ring and members.  Taken only while it serves with nothing under way (C{None}
        otherwise): then nothing else it holds outlives a restart (waiting requests,
        answers not yet safe belong to connections that a restart ends).
        """
        if self.mode is not Mode.SERVING or self._restoring is not None or self._aside:
            return None
        return packb(
            [
                _SAVED_VERSION,
                self.has_state,
                self.last_primary.seq,
                self.last_primary.rep,
                self.applied,
                self.fingerprint,
                self.ring.seq,
                self.ring.rep,
                list(self.members),
                self.space.snapshot(),
            ]
        )

    def restarted(self) -> None:
        """
        The state brought back from disk (L{load}, then the journal replayed) is not
        served until a configuration decides again: the cluster may have gone on while
        this server was down.  Until then requests wait and checkpoints are not read
        (L{recovered} raises L{Unavailable}); what it states at the next configuration
        (holding a state, its last primary, what it applied) is kept.
        """
        self._undecided()
        self.drain()

    def _undecided(self) -> None:
        """Syncing, nothing decided yet: no statuses in, nothing kept aside or restored."""
        if self._restoring is not None:
            self._restoring = None
            self._outbox.cancel_timer(ReplicaTimer.RESTORE)
        self.mode = Mode.SYNCING
        self._statuses = {}
        self._aside = []
        self._source = 0
        self._transfer = False
        self._pending_snapshot = None

    def load(self, state: bytes) -> None:
        """
        Start from C{state}, as L{saved} gave it, before any input: serving in the
        ring it was saved in, which the next configuration replaces.

        @raise SnapshotError: C{state} is not a saved state.
        """
        try:
            body = unpackb(state)
            if type(body) is not tuple or len(body) != 10 or body[0] != _SAVED_VERSION:
                raise SnapshotError("not a saved replica state of this version")
            _, has_state, lp_seq, lp_rep, applied, fingerprint, r_seq, r_rep, members, blob = body
            if type(has_state) is not bool or type(fingerprint) is not bytes:
                raise SnapshotError("a saved replica state's fields are wrong")
            if type(blob) is not bytes or not all(type(m) is int for m in members):
                raise SnapshotError("a saved replica state's fields are wrong")
            last_primary, ring = RingId(lp_seq, lp_rep), RingId(r_seq, r_rep)
        except (ValueError, TypeError) as e:
            raise SnapshotError(f"malformed saved replica state: {e}") from e
        self.space = TupleSpace.restore(blob, self.space.limits, self.space.log_limit)
        self.has_state, self.last_primary = has_state, last_primary
        self.applied, self.fingerprint = applied, fingerprint
        self.ring, self.members = ring, tuple(members)
        self.mode = self._logged_mode = Mode.SERVING

    # -- from the MessageServer -------------------------------------------------------------

    def submit(self, operation: Operation, now: float) -> None:
        """
        A request of this server's clients: its answer (now or later) is a
        L{Deliver}ed L{Completion}.
        """
        self._submit(operation)

    def _submit(self, operation: Operation) -> None:
        op = operation
        key = (op.pid, op.event)
        if key in self._held_keys:
            return  # applied, not yet safe: its answer comes when it is
        if (
            key in self._claiming
            or key in self._waiting
            or key in self._outs
            or key in self._withdrawals
        ):
            return  # sent again while in flight here: its answer comes when it is decided
        done = self.space.answered(op.pid, op.event)
        if done is not None and done.status is not Status.CANCELLED:
            # A retry: its first answer again, in any mode, once that answer is safe.
            if self._answer_logged(done):
                return
            if self.mode is Mode.UNAVAILABLE:
                self._unavailable(*key)
            else:
                self._queue(op)
            return
        if self.mode is Mode.UNAVAILABLE:
            self._unavailable(*key)
            return
        if self.mode is Mode.SYNCING:
            self._queue(op)
            return
        if op.kind in _ORDERED_AS_IS:
            if op.kind is Kind.FORGET:
                assert isinstance(op.payload, bytes)
                since = unpackb(op.payload) if op.payload else None
                payload = encode_forget(op.pid, op.event, since)
            elif op.kind is Kind.ATOMIC:
                assert isinstance(op.payload, tuple)
                payload = encode_atomic(op.pid, op.event, op.payload)
            elif isinstance(op.payload, bytes):
                payload = encode_checkpoint(op.pid, op.event, op.payload)
            else:
                assert isinstance(op.payload, tuple)
                payload = encode_out(op.pid, op.event, op.payload)
            # In flight until it is applied, or refused by the ring (L{refused}).
            self._outs[key] = op
            self._send(payload)
            return
        assert isinstance(op.payload, Template)
        self._match(op.pid, op.event, _Wait(op.kind, op.payload))

    def recovered(self, pid: int) -> tuple[int, bytes] | None:
        """
        Process C{pid}'s latest checkpoint.  Every member of a primary holds it (it was
        answered once safe), so a serving replica answers at once.
        """
        if self.mode is not Mode.SERVING:
            raise Unavailable(f"this replica is {self.mode.value}")
        return self.space.recovered(pid)

    def withdraw(self, pid: int, event: int, status: Status, now: float) -> None:
        """
        A request of this server's clients timed out or was cancelled (C{status}
        C{TIMED_OUT} or C{WITHDRAWN}): whether it took effect is decided in the total
        order (a C{WITHDRAW} that every replica applies, L{TupleSpace.decide}), so a
        claim already on its way wins and its tuple is the answer, and a later one
        takes nothing.  While the replica syncs, the decision waits until it serves;
        outside the primary there is nothing left to withdraw (every request was
        answered UNAVAILABLE).  C{CANCELLED}: the connection is gone; the request stops
        waiting here and no answer is due.
        """
        key = (pid, event)
        if status is Status.CANCELLED:
            self._waiting.pop(key, None)
            self._queued.pop(key, None)
            self._withdrawals.pop(key, None)
            self._unsent.discard(key)
            return
        if self.mode is Mode.UNAVAILABLE or key in self._held_keys or key in self._withdrawals:
            return
        self._withdrawals[key] = status
        if self.mode is Mode.SERVING:
            self._order_withdrawal(key)

    def gauges(self) -> dict[str, int | float | str]:
        return {
            "mode": self.mode.value,
            "ring": str(self.ring),
            "members": len(self.members),
            "last_primary": str(self.last_primary),
            "applied": self.applied,
            "fingerprint": self.fingerprint.hex(),
            "tuples": len(self.space),
            "waiting": len(self._waiting),
            "claiming": len(self._claiming),
            "queued": len(self._queued),
            "withdrawing": len(self._withdrawals),
            "unsafe_answers": len(self._held),
            "processes": self.space.processes,
            "sequence": self.space.sequence,
        }

    # -- from the ring ----------------------------------------------------------------------

    def delivered(  # noqa: PLR0917 (the ring's delivery as it comes, then now: the contract)
        self, ring: RingId, seq: int, payload: bytes, origin: int, index: int, now: float
    ) -> None:
        """
        Apply one payload delivered in total order: the C{index}th of message C{seq} of
        C{ring}, sent by node C{origin}.
        """
        try:
            op = decode(payload)
        except ReplicaPayloadError:
            # Every replica gets the same bytes, so every replica skips it alike.
            self.counters["malformed"] += 1
            return
        if op[0] == "status":
            self._on_status(seq, op[1], op[2])
        elif op[0] == "snapshot":
            self._on_snapshot(seq, op[1:], now)
        elif self.mode is Mode.SERVING:
            self._apply(ring, seq, index, origin, op)
        elif self.mode is Mode.SYNCING and ring == self.ring:
            self._aside.append((ring, seq, index, payload, origin))
        else:
            self.counters["dropped"] += 1  # sent before its sender knew it was outside
        self._note_mode()

    def safe(self, ring: RingId, upto: int, now: float) -> None:
        """
        Every member holds the ring's messages up to C{upto}: release their answers, and
        offer this server's waiters the other servers' tuples that are now safe.
        """
        if self._pending_snapshot is not None:
            self._send_snapshot()
        unsafe = self._unsafe
        while unsafe:
            key, (r, s) = next(iter(unsafe.items()))
            if r != ring or s > upto:
                break
            del unsafe[key]
        barrier = self._barrier
        if barrier is not None and barrier[0] == ring and barrier[1] <= upto:
            self._barrier = None
        if self._unsent and self.mode is Mode.SERVING:
            for key in list(self._unsent):
                self._order_withdrawal(key)
        keep = []
        for entry in self._held:
            if entry[0] == ring and entry[1] <= upto:
                self._release(entry[2])
            else:
                keep.append(entry)
        self._held = keep
        fresh = self._fresh
        aged = []
        for t, (r, s) in fresh.items():
            if r == ring and s > upto:
                break  # in delivery order: the rest are newer still
            aged.append(t)
        for t in aged:
            del fresh[t]
            values = self.space.stored(t)
            if values is not None and self.mode is Mode.SERVING:
                self._offer(t, values)

    def configuration(
        self, ring: RingId, members: Iterable[int], transitional: bool, now: float
    ) -> None:
        """
        A configuration change.  At a regular one this member states what it holds and
        waits, with everything else, for the decision (see the module docstring).  A
        restore still under way is dropped: its configuration is gone, and the new one
        decides again.
        """
        if transitional:
            return
        self._undecided()
        self.counters["configurations"] += 1
        self.ring = ring
        self.members = tuple(members)
        status = _Status(
            self.node, self.has_state, self.last_primary, self.applied, self.fingerprint
        )
        self._send(encode_status(ring, status))
        self._note_mode()

    # -- from the host ----------------------------------------------------------------------

    def refused(self, payload: bytes, now: float) -> None:
        """
        The ring did not take C{payload}, one this replica sent (its queue is full, or
        this node has left the ring).  The host feeds this back at once, as it carries
        the L{Send} out.  What the payload was for is undone: a request it carried is
        answered C{BUSY} (never applied: the client may retry), a withdrawal or a
        snapshot is sent again at the next safe.
        """
        try:
            op = decode(payload)
        except ReplicaPayloadError:
            raise ValueError("not a payload of this replica") from None
        tag = op[0]
        if tag == "status":
            # Cannot happen on a fresh ring (its queue was emptied into the old one);
            # without a status nobody decides, and the next configuration tries again.
            self.counters["refused"] += 1
        elif tag == "snapshot":
            if op[1] == self.ring and self._pending_snapshot is None:
                self._pending_snapshot = payload
                self.counters["snapshots.sent"] -= 1  # counted as it was sent
        elif tag == "withdraw":
            key = (op[1], op[2])
            if key in self._withdrawals:
                self._unsent.add(key)
        elif tag == "claim":
            _, pid, event, kind, tuple_seq, _origin = op
            claiming = self._claiming.get((pid, event))
            if claiming is None or claiming[1] != tuple_seq:
                return  # no longer the request's current claim
            del self._claiming[(pid, event)]
            if kind.removes:
                self._inflight[tuple_seq] -= 1
                if not self._inflight[tuple_seq]:
                    del self._inflight[tuple_seq]
            self._refuse(pid, event)
        elif self._outs.pop((op[1], op[2]), None) is not None:
            # An out, a checkpoint, a forget or an atomic request, still in flight: refused.
            self._refuse(op[1], op[2])

    def timer(self, key: TimerKey, now: float) -> None:
        """
        The next step of the restore is due (C{key} is L{ReplicaTimer.RESTORE}): run
        it; then start the timer again, or serve once the last step is done.

        @raise ValueError: for a key this replica never starts.
        """
        if key is not ReplicaTimer.RESTORE:
            raise ValueError(f"not a timer of the replica: {key!r}")
        restore = self._restoring
        if restore is None:
            return  # cancelled after it fell due (a host without a timer table)
        try:
            next(restore.steps)
        except StopIteration as done:
            self._restoring = None
            self._restored(restore, done.value)
        except SnapshotError:
            # Every member got the same bytes; this one waits for the next configuration.
            self._restoring = None
            self.counters["snapshots.bad"] += 1
        else:
            self._outbox.start_timer(ReplicaTimer.RESTORE, now)
        self._note_mode()

    # -- deciding ---------------------------------------------------------------------------

    def _on_status(self, seq: int, ring: RingId, status: _Status) -> None:
        if ring != self.ring or self.mode is not Mode.SYNCING or self._source:
            return
        if status.node not in self.members:
            self.counters["malformed"] += 1
            return
        self._statuses.setdefault(status.node, status)
        if len(self._statuses) == len(self.members):
            self._decide(seq)

    def _primary(self) -> bool:
        """
        Whether this configuration may serve: every configured server is in it (then no
        state can be anywhere else), or the members holding a state are a majority of
        the configured servers (half, holding the lowest id).  Counting holders, not
        members, matters: the last primary had a majority of holders too, so the two
        majorities share a server, which never lost that primary's state (else it would
        hold none) and never saw a later one, and so is the source (see L{_decide}).  A
        majority of mere members could be a server behind the times and a restarted
        empty one, while the one with the newest state sits in a partition.
        """
        if self.configured <= set(self.members):
            return True
        holders = {s.node for s in self._statuses.values() if s.has_state} & self.configured
        half = len(self.configured) / 2
        return len(holders) > half or (len(holders) == half and min(self.configured) in holders)

    def _decide(self, seq: int) -> None:
        """Every status is in (the last at C{seq}): the same decision on every member."""
        if not self._primary():
            self._become_unavailable()
            return
        stateful = [s for s in self._statuses.values() if s.has_state]
        self.last_primary = self.ring
        if not stateful:
            # A cold start: every configured server is here and none holds a state.
            self.counters["cold_starts"] += 1
            self.space = TupleSpace(self.space.limits, self.space.log_limit)
            self.applied, self.fingerprint, self.has_state = 0, b"", True
            self._serve(seq)
            return
        source = max(stateful, key=lambda s: (s.last_primary, s.applied, -s.node))
        behind = [
            s.node
            for s in self._statuses.values()
            if not (s.has_state and s.fingerprint == source.fingerprint)
        ]
        self._transfer = bool(behind)
        if self.node in behind:
            # This state is not the primary's: wait for the source's snapshot.  Answers
            # held for it were never given, and their requests are sent again later.
            self._source = source.node
            self.has_state = False
            held, self._held = self._held, []
            self._held_keys.clear()
            for _, _, c in held:
                self._unavailable(c.pid, c.event)
            return
        if behind and self.node == source.node:
            self._pending_snapshot = encode_snapshot(
                self.ring, self.node, self.applied, self.fingerprint, self.space.snapshot()
            )
            self._send_snapshot()
        self._serve(seq)

    def _send_snapshot(self) -> None:
        snapshot = self._pending_snapshot
        if snapshot is not None:
            # Refused only when the ring's queue is full (L{refused}): tried again at
            # the next safe.
            self._pending_snapshot = None
            self.counters["snapshots.sent"] += 1
            self._send(snapshot)

    def _on_snapshot(self, seq: int, snapshot: tuple[Any, ...], now: float) -> None:
        for_ring, source, applied, fingerprint, blob = snapshot
        if for_ring != self.ring or not self._transfer:
            return
        # Everything answered since the decision waits for the snapshot to be safe: until
        # every member holds it, the members that needed it do not hold those answers.
        self._transfer = False
        self._held = [(r, seq if s == _AFTER_TRANSFER else s, c) for r, s, c in self._held]
        for key, (r, s) in list(self._unsafe.items()):
            if s == _AFTER_TRANSFER:
                self._unsafe[key] = (r, seq)
        if self._barrier is not None and self._barrier[1] == _AFTER_TRANSFER:
            self._barrier = (self._barrier[0], seq)
        if source != self._source or self.mode is not Mode.SYNCING:
            return
        # Restored a step at a time, one per timer, so that the host's other work (the
        # ring's token) goes on meanwhile: a member blocked for long is taken for dead.
        steps = TupleSpace.restoring(blob, self.space.limits, self.space.log_limit)
        self._restoring = _Restore(self.ring, seq, steps, applied, fingerprint)
        self._outbox.start_timer(ReplicaTimer.RESTORE, now)

    def _restored(self, restore: _Restore, space: TupleSpace) -> None:
        """The snapshot C{restore} restores is in C{space}: serve from it."""
        if self.ring != restore.ring or self.mode is not Mode.SYNCING:
            return  # the configuration changed meanwhile: the next one decides again
        self.counters["snapshots.restored"] += 1
        self.space = space
        self.applied, self.fingerprint, self.has_state = (
            restore.applied,
            restore.fingerprint,
            True,
        )
        self._source = 0
        self._serve(restore.seq)

    def _serve(self, seq: int) -> None:
        """
        Serving from now (decided at C{seq}): answers of earlier configurations are
        released with this ring's C{seq}; then what was kept aside is applied, and the
        requests that waited are served.
        """
        self.mode = Mode.SERVING
        self._inflight.clear()
        self._fresh.clear()
        # Answers applied before the decision (in earlier configurations, or in the
        # state restored) are safe once the decision is.
        self._unsafe.clear()
        self._barrier = (self.ring, _AFTER_TRANSFER if self._transfer else seq)
        self._held = [
            (self.ring, _AFTER_TRANSFER if self._transfer else seq, c)
            if r != self.ring
            else (r, s, c)
            for r, s, c in self._held
        ]
        # The claims and waiters from before the decision are taken out first: applying
        # what was kept aside offers tuples to waiters, and a claim it makes in this ring
        # is in flight, not one to match again.
        waits = [(k, w) for k, (w, _) in self._claiming.items()] + list(self._waiting.items())
        self._claiming.clear()
        self._waiting.clear()
        aside, self._aside = self._aside, []
        for ring, at, index, payload, origin in aside:
            self._apply(ring, at, index, origin, decode(payload))
        # Requests in flight when the configuration changed may have been lost with the
        # old ring: send them again; the log applies each once.
        outs, self._outs = self._outs, {}
        for op in outs.values():
            self._submit(op)
        withdrawals = self._withdrawals
        for (pid, event), wait in waits:
            if (pid, event) not in withdrawals:
                self._rematch(pid, event, wait)
        queued, self._queued = self._queued, OrderedDict()
        for key, op in queued.items():
            if key not in withdrawals:
                self._submit(op)
        # Timeouts and cancels that came while syncing are decided now, in the order
        # (they may find their request answered: a claim applied before the change).
        for key in list(withdrawals):
            self._order_withdrawal(key)

    def _rematch(self, pid: int, event: int, wait: _Wait) -> None:
        if (pid, event) in self._held_keys:
            return
        done = self.space.answered(pid, event)
        if done is not None and done.status is not Status.CANCELLED:
            self._answer_logged(done)
            return
        found = self._choose(wait)
        if found is None:
            self._waiting[(pid, event)] = wait  # still waiting: no new PENDING answer
        else:
            self._claim(pid, event, wait, found)

    def _become_unavailable(self) -> None:
        """Outside the primary: every request of this server's clients goes elsewhere."""
        self.mode = Mode.UNAVAILABLE
        self._aside = []
        keys = [*self._outs, *self._claiming, *self._waiting, *self._queued, *self._withdrawals]
        keys += [(c.pid, c.event) for _, _, c in self._held]
        stores = (
            self._outs,
            self._claiming,
            self._waiting,
            self._queued,
            self._held_keys,
            self._withdrawals,
        )
        for store in stores:
            store.clear()
        self._unsent.clear()
        self._held.clear()
        for pid, event in dict.fromkeys(keys):
            self._unavailable(pid, event)

    # -- applying ---------------------------------------------------------------------------

    def _apply(self, ring: RingId, seq: int, index: int, origin: int, op: tuple[Any, ...]) -> None:
        self.applied += 1
        self.fingerprint = hashlib.blake2b(
            self.fingerprint + _POSITION.pack(ring.seq, ring.rep, seq, index), digest_size=16
        ).digest()
        mine = origin == self.node
        at = (ring, _AFTER_TRANSFER if self._transfer else seq)
        unsafe = self._unsafe
        if op[0] == "out":
            _, pid, event, values = op
            if mine:
                self._outs.pop((pid, event), None)
            before = self.space.sequence
            for c in self.space.out(pid, event, values):
                unsafe.setdefault((c.pid, c.event), at)
                if mine:
                    self._hold(ring, seq, c)
            t = self.space.sequence
            if t != before:
                if not mine:
                    self._fresh[t] = (ring, seq)
                self._offer(t, values)
            return
        if op[0] == "atomic":
            # Decided here, against the state every replica has at this point: all of
            # them commit it, or all abort it, alike.
            _, pid, event, steps = op
            if mine:
                self._outs.pop((pid, event), None)
            before = self.space.sequence
            for c in self.space.atomic(pid, event, steps):
                unsafe.setdefault((c.pid, c.event), at)
                if mine:
                    self._hold(ring, seq, c)
            for t in range(before + 1, self.space.sequence + 1):
                values = self.space.stored(t)
                if values is not None:
                    if not mine:
                        self._fresh[t] = (ring, seq)
                    self._offer(t, values)
            return
        if op[0] == "checkpoint":
            _, pid, event, state = op
            done = self.space.checkpoint(pid, event, state)
            unsafe.setdefault((pid, event), at)
            if mine:
                self._outs.pop((pid, event), None)
                self._hold(ring, seq, done)
            return
        if op[0] == "forget":
            # A process that said goodbye (or vanished, and did nothing since): its log
            # and checkpoint go, on every replica at the same point.  Its answer is not
            # logged (there is no log left to hold it); a goodbye sent again forgets
            # again, which changes nothing.
            _, pid, event, unless_after = op
            self.space.forget(pid, unless_after)
            if mine:
                self._outs.pop((pid, event), None)
                self._hold(ring, seq, Completion(pid, event, Status.STORED))
            return
        if op[0] == "withdraw":
            _, pid, event, status = op
            key = (pid, event)
            done = self.space.decide(pid, event, status)
            unsafe.setdefault(key, at)
            if mine:
                self._withdrawals.pop(key, None)
                self._unsent.discard(key)
                self._waiting.pop(key, None)
                self._hold(ring, seq, done)
            return
        _, pid, event, kind, tuple_seq, _claimer = op
        won = self.space.claim(pid, event, kind, tuple_seq)
        claiming = self._claiming.get((pid, event)) if mine else None
        wait = None
        if claiming is not None and claiming[1] == tuple_seq:
            del self._claiming[(pid, event)]
            wait = claiming[0]
        if mine and kind.removes and self._inflight[tuple_seq] > 0:
            self._inflight[tuple_seq] -= 1
            if not self._inflight[tuple_seq]:
                del self._inflight[tuple_seq]
        if won is not None:
            unsafe.setdefault((pid, event), at)
            if mine:
                self._hold(ring, seq, won)
        elif wait is not None:
            self.counters["claims.lost"] += 1
            if (pid, event) not in self._withdrawals:
                self._match(pid, event, wait)  # lost the race: match again

    def _hold(self, ring: RingId, seq: int, c: Completion) -> None:
        key = (c.pid, c.event)
        if key in self._held_keys:
            return  # the same request applied twice (sent again): one answer
        self._held.append((ring, _AFTER_TRANSFER if self._transfer else seq, c))
        self._held_keys[key] = seq

    def _release(self, c: Completion) -> None:
        self._held_keys.pop((c.pid, c.event), None)
        self._outbox.deliver(c)

    def _answer_logged(self, done: Completion) -> bool:
        """
        Answer a retry with the answer the log holds, C{done}: at once if it is known
        safe (every member of a primary holds it, so no later state lacks it), else
        once it is, if this replica serves.  False if it cannot answer it now (not
        serving, and the answer not known safe): the caller queues the request or
        sends it elsewhere.
        """
        key = (done.pid, done.event)
        at = self._unsafe.get(key) or self._barrier
        if at is None or done.status is Status.STALE:
            self._outbox.deliver(done)
            return True
        if self.mode is not Mode.SERVING:
            return False
        self._held.append((at[0], at[1], done))
        self._held_keys[key] = at[1]
        return True

    def _order_withdrawal(self, key: tuple[int, int]) -> None:
        """Send the pending timeout or cancel of C{key} into the order (see L{withdraw})."""
        status = self._withdrawals[key]
        # It claims nothing more from here; a claim already sent races the withdrawal.
        self._waiting.pop(key, None)
        done = self.space.answered(*key)
        if done is not None and done.status is not Status.CANCELLED:
            del self._withdrawals[key]
            self._unsent.discard(key)
            self._answer_logged(done)
            return
        # If the ring's queue is full (L{refused}), it is sent again at the next safe.
        self._unsent.discard(key)
        self._send(encode_withdraw(key[0], key[1], status))

    def _queue(self, op: Operation) -> None:
        """Keep a request until the replica serves (or refuse it: the queue is full)."""
        key = (op.pid, op.event)
        if key not in self._queued and len(self._queued) >= MAX_QUEUED:
            self._refuse(*key)
        else:
            self._queued[key] = op

    # -- internals --------------------------------------------------------------------------

    def _send(self, payload: bytes) -> None:
        """Broadcast C{payload} in the ring's order (a refusal comes back: L{refused})."""
        self._outbox.send(None, payload)

    def _note_mode(self) -> None:
        """Log the mode, if it changed since it was last logged."""
        if self.mode is self._logged_mode:
            return
        self._logged_mode = self.mode
        self._outbox.log(
            LogLevel.info,
            "Replica {mode} in ring {ring} (last primary {primary}, {applied} applied,"
            " {tuples} tuples, {restored} snapshots restored)",
            mode=self.mode.value,
            ring=str(self.ring),
            primary=str(self.last_primary),
            applied=self.applied,
            tuples=len(self.space),
            restored=self.counters["snapshots.restored"],
        )

    def _refuse(self, pid: int, event: int) -> None:
        self.counters["refused"] += 1
        self._outbox.deliver(Refused(pid, event, Refusal.BUSY))

    def _unavailable(self, pid: int, event: int) -> None:
        self.counters["unavailable"] += 1
        self._outbox.deliver(Refused(pid, event, Refusal.UNAVAILABLE))

    def _match(self, pid: int, event: int, wait: _Wait) -> None:
        found = self._choose(wait)
        if found is None:
            if wait.kind.blocks:
                self._waiting[(pid, event)] = wait
                self._outbox.deliver(Completion(pid, event, Status.PENDING))
            else:
                # "None" is decided in the order too: a claim of this event already on
                # its way (from here, or from a server its client left) must win over
                # it, or its tuple would be taken while its caller hears "none".
                self._withdrawals[(pid, event)] = Status.NO_MATCH
                self._order_withdrawal((pid, event))
            return
        self._claim(pid, event, wait, found)

    def _choose(self, wait: _Wait) -> int | None:
        """
        The tuple a request of this server claims: the oldest match, passing over, for
        an C{in} or C{inp}, tuples this server already claims and tuples that another
        server stored and whose out is not yet safe here (that server's waiters have the
        first go).  Every claim passed over this way is one that would likely lose.  An
        C{inp} takes any match rather than answer "none" while a tuple is there; an
        C{in} waits, and is offered those tuples once they are safe.
        """
        space, template = self.space, wait.template
        if not wait.kind.removes:
            found = space.find(template)
            return None if found is None else found[0]
        inflight, fresh = self._inflight, self._fresh
        found = space.find(template, lambda t: t not in inflight and t not in fresh)
        if found is None and not wait.kind.blocks:
            found = space.find(template, lambda t: t not in inflight)
        return None if found is None else found[0]

    def _claim(self, pid: int, event: int, wait: _Wait, tuple_seq: int) -> None:
        # In flight until it is applied, or refused by the ring (L{refused}).
        self._claiming[(pid, event)] = (wait, tuple_seq)
        if wait.kind.removes:
            self._inflight[tuple_seq] += 1
        self._send(encode_claim(pid, event, wait.kind, tuple_seq, self.node))

    def _offer(self, tuple_seq: int, values: LTuple) -> None:
        """
        A tuple for this server's waiters, first come first served: every matching
        C{rd} claims it, and the first matching C{in}.  A tuple another server has just
        stored goes to the C{in} waiters here only once it is safe here (L{safe}): by
        then that server's waiters, which had the first go, have claimed it or not, and
        a claim from here does not race theirs.
        """
        removable = tuple_seq not in self._fresh and tuple_seq not in self._inflight
        for key, wait in list(self._waiting.items()):
            if not wait.template.matches(values):
                continue
            if wait.kind.removes and not removable:
                continue
            del self._waiting[key]
            self._claim(key[0], key[1], wait, tuple_seq)
            if wait.kind.removes:
                return
