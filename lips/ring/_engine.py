"""
The token-ring engine: total order, reliability, flow control and membership (sans-IO).

A Totem-style single ring (see C{docs/design/ring.md} and the Totem reference), written
to the core contract of L{lips.kernel} (C{docs/design/core.md}): a plain object whose
inputs take the current time last, whose decisions come out as effects, taken with
L{RingEngine.drain}, and whose timers are effects too.  It never touches a socket, a
clock or a reactor.

Inputs (each takes C{now} last):

  - L{RingEngine.start}C{(now)}: persist a fresh ring sequence number, gather a ring.
  - L{RingEngine.received}C{(message, now)}: one authentic ring message.
  - L{RingEngine.submit}C{(payload, now) -> bool}: queue a payload for broadcast (False:
    the queue is full, or this node has left).
  - L{RingEngine.leave}C{(now)}: say goodbye and fall silent.
  - L{RingEngine.timer}C{(key, now)}: the timer C{key} (a L{RingTimer}) is due.

Effects:

  - L{Send}C{(to, message)}: a ring message to node C{to}, or to every peer when C{to}
    is None (joins, merge detects, broadcast messages).
  - L{Deliver}C{(item)}: for the application, in order: a L{Delivered} payload in total
    order, a L{Safe} watermark, and at each membership change the transitional then the
    regular L{Configuration}.
  - L{Persist}C{(RingStored.RING_SEQ, seq)}: store the highest ring sequence number
    used, before anything emitted after it is carried out (ring ids never repeat across
    restarts); with L{RingConfig.durable}, L{Persist}C{(RingStored.HELD, aru)} before
    every token this member passes on: what it delivered must be stored first.
  - L{StartTimer}C{(key, at)} / L{CancelTimer}C{(key)}: the L{RingTimer}s (token loss
    and retransmission, commit token retransmission, join and consensus, token hold and
    merge detection, the flush after a pause).  The engine remembers the deadline of
    each timer it started, to tell a pause from how overdue they are.  The only timer it
    starts already due is the flush after a pause; a host that fires due timers with
    L{TimerTable.due<lips.kernel.TimerTable.due>} leaves it for its next round, which is
    what the flush is for (the backlog read meanwhile is stale).
  - L{Log}: a pause noticed (warn).

Queries: L{RingEngine.state}, C{ring}, C{members}, C{installed}, C{installed_members},
L{RingEngine.safe}, L{RingEngine.backlog}, C{counters} and C{last_pause}.

States: GATHER (agree on who is there), COMMIT (the commit token collects what every
member brings from its last ring), RECOVERY (old-ring messages are re-broadcast through
the new ring, then every member delivers the same old-ring set and installs the new
configuration) and OPERATIONAL; and LEFT, once L{RingEngine.leave} has announced that
this node is leaving (it then sends, delivers and fires nothing more).  What the engine
needs only in one phase is held in that phase's object (L{_Gather}, L{_Commit},
L{_Recovery}, L{_Operational}, L{_Left}), made fresh when the phase is entered; the
token's bookkeeping (L{_TokenState}) is made fresh with each new ring.

Two ways a member is dropped before the token-loss timeout: it leaves (its leave, a
L{Join} naming itself as failed, sends the others to GATHER with it failed), or it fails
to receive (the token shows it lacking the same messages, which others hold, for
L{RingConfig.fail_recv_rotations} rotations: a member that holds them gathers with it
failed, as the Totem paper has it; corosync's node fails itself instead).

A member that comes back is taken back in one round, so that the members that served
without it install one new configuration, not a string of them.  After a pause (its
process stopped, then continued) its timers are overdue and its socket holds a backlog
of stale datagrams: the engine sees the pause from its overdue timers, does not count it
against them, drops the joins and commit tokens of the backlog (corosync's
C{pause_flush}) and, if the others must have given up on it, gathers at once with its
last ring's members (L{RingEngine._resumed}).  A join that names a restarted or resumed
node as failed, sent before its sender heard from it again, does not make it fail the
sender in return; and a member that lags behind the news of a departed node's restart
does not fail it as gone once another member's join vouches for it.
"""

from __future__ import annotations

import enum
from collections import Counter, deque
from collections.abc import Iterable
from typing import ClassVar, Final, TypeAlias

import attrs
from twisted.logger import LogLevel

from lips.kernel import (
    CancelTimer,
    Deliver,
    Effect,
    Log,
    Outbox,
    Persist,
    Send,
    StartTimer,
    TimerKey,
)
from lips.ring._messages import (
    NO_RING,
    Commit,
    Join,
    Kind,
    Mcast,
    MergeDetect,
    Report,
    RingId,
    RingMessage,
    Token,
)
from lips.tuples import packb, unpackb

__all__ = [
    "Configuration",
    "Delivered",
    "Delivery",
    "RingConfig",
    "RingEngine",
    "RingStored",
    "RingTimer",
    "Safe",
    "State",
]

#: Most retransmission requests a token carries.
RTR_MAX: Final = 64

#: Bytes of msgpack framing per packed piece, at most: [index, total, data].
_PIECE_OVERHEAD: Final = 24


class State(enum.Enum):
    GATHER = "gather"
    COMMIT = "commit"
    RECOVERY = "recovery"
    OPERATIONAL = "operational"
    LEFT = "left"


class RingTimer(enum.Enum):
    """The engine's timers (its L{StartTimer} and L{CancelTimer} keys)."""

    TOKEN_LOSS = "token_loss"
    """No token for L{RingConfig.token_timeout} (nor commit token while forming): gather."""
    TOKEN_RETRANSMIT = "token_retransmit"
    """Send the token last passed on again: it may have been lost."""
    COMMIT_RETRANSMIT = "commit_retransmit"
    """Send the commit token last forwarded again."""
    HOLD = "hold"
    """The representative of an idle ring has held the token long enough: pass it on."""
    MERGE = "merge"
    """An idle ring's representative broadcasts a merge detect."""
    JOIN = "join"
    """Broadcast the join of the gather again."""
    CONSENSUS = "consensus"
    """No consensus in L{RingConfig.consensus_timeout}: fail the nodes that disagree."""
    FLUSH = "flush"
    """The backlog read after a pause is over: membership messages count again."""


class RingStored(enum.Enum):
    """What the engine asks its host to store (the C{what} of its L{Persist} effects)."""

    RING_SEQ = "ring_seq"
    """The highest ring sequence number used (an C{int}): after a restart, ring ids
    must start above it."""

    HELD = "held"
    """With L{RingConfig.durable}: everything delivered so far must be on disk before
    the token goes on (the value is the aru the token carries, an C{int}).  The token
    is what tells the other members that this one holds its messages, so an operation
    counts as held, for safe delivery, only once it is stored: one write covers a whole
    token visit."""


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be positive, not {value!r}")


#: The fewest rotations L{RingConfig.fail_recv_rotations} may be: a member that lacks a
#: message for a few rotations is ordinary loss (a request and its retransmission can
#: each be lost), not a failure to receive.
FAIL_RECV_MIN: Final = 10


def _rotations(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if type(value) is not int or value < FAIL_RECV_MIN:
        raise ValueError(
            f"{attribute.name} must be an integer of at least {FAIL_RECV_MIN}, not {value!r}"
        )


@attrs.frozen
class RingConfig:
    """
    Timings (seconds) and limits of the ring.  The defaults suit a LAN; L{loopback} is
    faster.
    """

    token_timeout: float = attrs.field(default=1.0, validator=_positive)
    token_retransmit: float = attrs.field(default=0.2, validator=_positive)
    join_interval: float = attrs.field(default=0.05, validator=_positive)
    consensus_timeout: float = attrs.field(default=1.2, validator=_positive)
    merge_interval: float = attrs.field(default=0.2, validator=_positive)
    hold: float = attrs.field(default=0.1, validator=_positive)
    idle_rotations: int = attrs.field(default=8, validator=attrs.validators.ge(1))
    max_messages: int = attrs.field(default=17, validator=attrs.validators.ge(1))
    window: int = attrs.field(default=50, validator=attrs.validators.ge(1))
    max_queue: int = attrs.field(default=10_000, validator=attrs.validators.ge(1))
    """Most payload pieces waiting to be broadcast: beyond it L{RingEngine.submit}
    refuses (back-pressure), except one oversized payload into an empty queue."""
    max_payload: int = attrs.field(default=1200, validator=attrs.validators.ge(64))
    """Bytes of payload one broadcast message may carry: small payloads are packed
    together up to it, larger ones are cut into fragments of it.  Size it to the network
    MTU less the ring's headers."""
    durable: bool = False
    """Members store what they deliver: before passing the token on, a member delivers
    what it holds and asks its host to store it (L{RingStored.HELD}), so that the
    token's aru, and with it L{Safe}, never counts a message a member has only in
    memory."""
    fail_recv_rotations: int = attrs.field(default=800, validator=_rotations)
    """Token rotations a member may go on lacking the same messages, which the others
    hold, before it is declared failed to receive and a ring is formed without it.
    corosync's C{fail_recv_const} is 2500 rotations for its 3 s token; this is the same
    allowance for the 1 s token here."""

    @property
    def pause_after(self) -> float:
        """
        How late a timer may fire before the engine takes it that it was paused (its
        process stopped or starved) rather than merely busy: half the token-loss timeout,
        as corosync's C{pause_flush} has it.
        """
        return self.token_timeout / 2

    def __attrs_post_init__(self) -> None:
        if self.token_retransmit >= self.token_timeout:
            raise ValueError("token_retransmit must be shorter than token_timeout")
        if self.hold * 2 >= self.token_timeout:
            raise ValueError("hold must be under half of token_timeout")
        if self.join_interval >= self.consensus_timeout:
            raise ValueError("join_interval must be shorter than consensus_timeout")

    @classmethod
    def loopback(cls) -> RingConfig:
        """Timings for servers on one machine."""
        return cls(
            token_timeout=0.25,
            token_retransmit=0.05,
            join_interval=0.02,
            consensus_timeout=0.3,
            merge_interval=0.1,
            hold=0.02,
            fail_recv_rotations=200,
        )


# -- what the engine delivers ---------------------------------------------------------------


@attrs.frozen
class Delivered:
    """
    An application payload, in total order: in message C{seq} of ring C{ring} (the one
    carrying its last fragment), the C{index}-th payload packed there.
    """

    ring: RingId
    seq: int
    origin: int
    payload: bytes
    index: int = 0


@attrs.frozen
class Safe:
    """Every member of ring C{ring} holds its messages up to C{upto}."""

    ring: RingId
    upto: int


@attrs.frozen
class Configuration:
    """
    A configuration change: the transitional one (the members that came from this
    node's last ring) then the regular one (all members of the new ring).
    """

    ring: RingId
    members: tuple[int, ...]
    transitional: bool


Delivery: TypeAlias = Delivered | Safe | Configuration
"""The items of the engine's L{Deliver} effects."""


# -- per-ring message log -----------------------------------------------------------------


@attrs.define(eq=False)
class _RingLog:
    ring: RingId
    msgs: dict[int, Mcast] = attrs.Factory(dict)
    aru: int = 0
    high: int = 0
    processed: int = 0

    def add(self, m: Mcast) -> bool:
        if m.seq <= self.aru or m.seq in self.msgs:
            return False
        self.msgs[m.seq] = m
        self.high = max(self.high, m.seq)
        while self.aru + 1 in self.msgs:
            self.aru += 1
        return True


# -- the phases -----------------------------------------------------------------------------
#
# What the engine needs only in one phase lives in that phase's object, made fresh on
# entering the phase: leaving a phase forgets its data, and nothing is reset by hand.

_View: TypeAlias = tuple[frozenset[int], frozenset[int]]


@attrs.define(eq=False)
class _Gather:
    """GATHER: agreeing on who is there."""

    state: ClassVar[State] = State.GATHER
    procs: frozenset[int]
    """The nodes this node counts on."""
    failed: frozenset[int]
    """Those of them it has given up on."""
    consensus: dict[int, _View]
    """The view C{(procs, failed)} of each node's latest join that matched this node's
    (its own included): consensus is every live node's."""

    @property
    def view(self) -> _View:
        return (self.procs, self.failed)

    @property
    def live(self) -> frozenset[int]:
        return self.procs - self.failed


@attrs.define(eq=False)
class _Commit:
    """COMMIT: the commit token goes round, collecting each member's report."""

    state: ClassVar[State] = State.COMMIT
    ring: RingId
    """The ring being formed."""
    commit: tuple[int, Commit] | None = None
    """The commit token last forwarded, and to whom: retransmitted until it is
    answered."""


@attrs.define(eq=False)
class _Recovery:
    """RECOVERY: the old ring's messages are broadcast again through the new ring."""

    state: ClassVar[State] = State.RECOVERY
    trans: tuple[int, ...]
    """The members that come from this node's installed ring: the transitional
    configuration."""
    rebroadcast: deque[tuple[Kind, bytes, Mcast | None]]
    """What is still to be broadcast before any payload: the old ring's messages the
    survivors may lack, then this node's marker."""
    markers: set[int] = attrs.Factory(set)
    """The members whose marker this node has delivered: all of them, and it
    installs the new ring."""
    commit: tuple[int, Commit] | None = None
    """As in L{_Commit}: the second rotation's commit token, retransmitted until the
    ring is installed."""


@attrs.define(eq=False)
class _Operational:
    """OPERATIONAL: the installed ring delivers payloads."""

    state: ClassVar[State] = State.OPERATIONAL
    held: Token | None = None
    """The token, held by the representative of an idle ring until a payload is
    submitted or the hold timer fires."""


@attrs.define(eq=False)
class _Left:
    """LEFT: this node said goodbye; it does nothing more."""

    state: ClassVar[State] = State.LEFT


_Phase: TypeAlias = _Gather | _Commit | _Recovery | _Operational | _Left


@attrs.define(eq=False)
class _TokenState:
    """
    What this node keeps of its ring's token between visits.  Made fresh when a new
    ring is entered (its recovery); used through recovery and operational, and still
    read (the safe watermark) while the next ring is gathered.
    """

    seen: int = -1
    """The highest token sequence number seen: a copy not above it is a duplicate."""
    last: Token | None = None
    """The token last passed on: retransmitted until the next visit."""
    idle_visits: int = 0
    aru_last_visit: int = 0
    sent_last: int = 0
    backlog_last: int = 0
    safe: int = 0
    """Every member holds this ring's messages up to here."""
    stuck: tuple[int, int] = (0, 0)
    """The failed-to-receive watch: the C{(aru, aru_node)} of the token at the last
    visits, and for how many visits in a row it has held the ring back."""
    stuck_visits: int = 0


class RingEngine:
    """
    One member of the token ring (a core: see the module docstring).

    @param node: this node's id (positive).
    @param peers: the ids of every configured node (this one included): where a
        broadcast goes, and who may be gathered into a ring.
    @param ring_seq: the highest ring sequence number this node persisted before.
    """

    emits: ClassVar[frozenset[type[Effect]]] = frozenset(
        {Send, Deliver, Persist, StartTimer, CancelTimer, Log}
    )

    def __init__(
        self,
        node: int,
        peers: Iterable[int],
        config: RingConfig | None = None,
        ring_seq: int = 0,
    ) -> None:
        if node <= 0:
            raise ValueError("node ids must be positive")
        self.node = node
        self.peers = frozenset(peers) | {node}
        self.config = config if config is not None else RingConfig()
        self.counters: Counter[str] = Counter()
        self.ring = NO_RING
        self.members: tuple[int, ...] = ()
        self.installed = NO_RING
        self.installed_members: tuple[int, ...] = ()
        self._ring_seq_max = ring_seq
        self._logs: dict[RingId, _RingLog] = {}
        # Queued payload pieces: (index, total, bytes); a payload that fits in one message
        # is the single piece (0, 1, payload).
        self._queue: deque[tuple[int, int, bytes]] = deque()
        # The pieces already broadcast of a payload whose later pieces are still queued:
        # sent again, from the first, if a new configuration comes in between.
        self._partial: list[tuple[int, int, bytes]] = []
        self._assembly: dict[int, tuple[int, list[bytes]]] = {}
        self._outbox = Outbox(RingEngine.emits)
        # The deadline of every timer started and not yet fired or cancelled, as the
        # host was asked: how overdue they are tells a pause.
        self._timers: dict[RingTimer, float] = {}
        # The current phase's data, and the token's of the current ring.
        self._phase: _Phase = _Gather(frozenset({node}), frozenset(), {})
        self._token = _TokenState()
        # membership bookkeeping
        self._commit_seen: set[tuple[RingId, int]] = set()
        self._join_seq: dict[int, int] = {}
        # Nodes that left, with the ring sequence number of their leave: failed in every
        # gather until a newer incarnation of theirs joins.
        self._gone: dict[int, int] = {}
        self._now = 0.0
        self._started = False
        #: How long this node was last paused (seconds), as an input saw from its overdue
        #: timers; C{counters["paused"]} counts the pauses.
        self.last_pause = 0.0
        # After a pause, until the flush timer fires (the host's next round of timers):
        # membership messages are the stale backlog of the socket, and are dropped.
        self._flushing = False
        # The ring sequence number this incarnation started (or resumed after a pause)
        # at: a join older than it that names this node as failed was about the node as
        # it was before, by a sender that has not heard from it since.
        self._epoch = 0

    @property
    def state(self) -> State:
        """The phase this node is in."""
        return self._phase.state

    @property
    def safe(self) -> int:
        """Every member of ring L{ring} holds its messages up to this sequence number."""
        return self._token.safe

    # -- inputs ---------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Begin: persist a fresh ring sequence number and gather a ring."""
        self._now = now
        self._started = True
        self._ring_seq_max += 4
        self._epoch = self._ring_seq_max
        self._persist_ring_seq()
        self._enter_gather(self.peers, frozenset(), fresh=True)

    def leave(self, now: float) -> None:
        """
        Leave the ring for good: broadcast a leave, so that the other members form a
        ring without this node at once (not after the token-loss and consensus
        timeouts), and stop.  From now on the engine sends, delivers and fires nothing
        and ignores every input; what it had queued is dropped.  Its messages that any
        other member holds are still recovered by them.  To come back, start a new engine
        (a new incarnation, as after a restart) from the persisted ring sequence number.
        """
        self._now = now
        if not self._started or self.state is State.LEFT:
            return
        self.counters["left"] += 1
        # Persisted so that the next incarnation's joins are newer than this leave.
        self._persist_ring_seq()
        self._send(None, Join.leave(self.node, self._ring_seq_max))
        self._phase = _Left()
        for key in list(self._timers):
            self._disarm(key)
        self._queue.clear()
        self._partial.clear()
        self._assembly.clear()

    def submit(self, payload: bytes, now: float) -> bool:
        """
        Queue C{payload} for broadcast.  Returns False (and queues nothing) when the
        queue is full: back-pressure for the caller; and always once this node has left.
        A payload of more pieces than the queue holds (a state-transfer snapshot, say) is
        taken when the queue is empty, so it is delayed, never refused for ever.
        """
        self._clock(now)
        if self.state is State.LEFT:
            self.counters["dropped.left"] += 1
            return False
        size = self.config.max_payload - _PIECE_OVERHEAD
        pieces = [payload[i : i + size] for i in range(0, len(payload), size)] or [b""]
        if self._queue and len(self._queue) + len(pieces) > self.config.max_queue:
            self.counters["queue_full"] += 1
            return False
        if len(pieces) > 1:
            self.counters["fragmented"] += 1
        self._queue.extend((i, len(pieces), p) for i, p in enumerate(pieces))
        phase = self._phase
        if isinstance(phase, _Operational) and phase.held is not None:
            held, phase.held = phase.held, None
            self._disarm(RingTimer.HOLD)
            self._forward_token(held)
        return True

    @property
    def backlog(self) -> int:
        """Payloads queued and not yet broadcast."""
        return len(self._queue)

    def received(self, message: RingMessage, now: float) -> None:
        """Handle one authentic message."""
        self._clock(now)
        if not self._started or self.state is State.LEFT:
            return
        if self._flushing and isinstance(message, Join | Commit):
            # Read from the socket's backlog after a pause: stale (see _resumed).
            self.counters["flushed"] += 1
            return
        if isinstance(message, Mcast):
            self._on_mcast(message)
        elif isinstance(message, Token):
            self._on_token(message)
        elif isinstance(message, Join):
            self._on_join(message)
        elif isinstance(message, Commit):
            self._on_commit(message)
        else:
            self._on_merge_detect(message)

    def timer(self, key: TimerKey, now: float) -> None:
        """
        The timer C{key} is due.  If it is overdue by more than
        L{RingConfig.pause_after}, this node was paused: the pause does not count
        against its timers, which are started again later (L{_resumed}), this one too.

        A host may fire a timer the engine moved or cancelled an instant before (its
        table not yet told): one cancelled is ignored, one moved later is started again
        at its deadline (C{timers.stale}), so the engine and its host never disagree for
        long.

        @raise ValueError: if C{key} is not a L{RingTimer}.
        """
        if not isinstance(key, RingTimer):
            raise ValueError(f"not a timer of the ring engine: {key!r}")
        at = self._timers.get(key)
        if at is None or at > now:
            self.counters["timers.stale"] += 1
            if at is not None:
                self._outbox.start_timer(key, at)
            return
        if self._clock(now):
            return
        del self._timers[key]
        getattr(self, f"_timer_{key.value}")()

    def drain(self) -> list[Effect]:
        """What the engine wants done since the last call, in order."""
        return self._outbox.drain()

    # -- helpers --------------------------------------------------------------------------

    def _clock(self, now: float) -> bool:
        """
        Take the time of an input.  True if a timer is overdue by more than
        L{RingConfig.pause_after}: this node was paused, and has resumed (L{_resumed}).
        """
        last, self._now = self._now, now
        if not self._started or self.state is State.LEFT or not self._timers:
            return False
        if now - min(self._timers.values()) <= self.config.pause_after:
            return False
        self._resumed(now - last)
        return True

    def _resumed(self, paused_for: float) -> None:
        """
        This node did not run for C{paused_for} seconds (its process was stopped, its
        machine starved or migrated): its timers are overdue, and what its socket buffer
        kept meanwhile is about to be read, all at once.

          - The pause does not count against the timers: the others stopped hearing from
            this node, not it from them.  Each timer is pushed back by the pause, so that
            what is read next decides (the token of its ring, if that is still alive; a
            message of a ring formed without it, which makes it gather).  Fired as they
            stand, they would give up on the others at once: a consensus timeout fails
            every member whose join has not been read yet, and each would form a ring
            of its own.
          - Joins and commit tokens read before the flush timer fires (the host's next
            round of timers) are dropped (corosync's C{pause_flush}): they are the
            backlog, from rounds that are over.  The joins of the round that formed a
            ring without this node name it as failed; acting on them it would fail
            their senders, its joins would make them fail it, and so on, ring after
            ring.  What is current is sent again: joins every
            L{RingConfig.join_interval}, commit tokens every
            L{RingConfig.token_retransmit}.
          - If the pause outlasted the token-loss timeout, the others have lost its ring
            (or the one being formed) and gathered without it: it gathers at once, with
            its last ring's members (or the nodes it was gathering), so they take it
            back in one round.  A gather in progress is started afresh as well: whom
            it had failed, and who had agreed, is out of date.
        """
        self.counters["paused"] += 1
        self.last_pause = paused_for
        self._outbox.log(
            LogLevel.warn,
            "Process pause detected: not scheduled for {ms:.0f} ms; dropping the"
            " membership messages queued meanwhile",
            ms=paused_for * 1000,
        )
        for key, at in self._timers.items():
            self._timers[key] = at + paused_for
            self._outbox.start_timer(key, at + paused_for)
        self._flushing = True
        self._arm(RingTimer.FLUSH, 0.0)
        lost = paused_for >= self.config.token_timeout and (
            self.state is State.COMMIT or len(self.members) > 1
        )
        if self.state is State.GATHER or lost:
            # Back as if restarted (though with its old ring's messages, to recover):
            # joins from before this are about the node as it was.  Which nodes have
            # left is out of date too (a node may have come back meanwhile, and its
            # joins were flushed); the others know, and their joins will say.
            self._ring_seq_max += 4
            self._epoch = self._ring_seq_max
            self._persist_ring_seq()
            self._gone.clear()
            phase = self._phase
            gathering = phase.procs if isinstance(phase, _Gather) else frozenset()
            self._enter_gather(gathering, frozenset(), fresh=True)

    def _send(self, to: int | None, message: RingMessage) -> None:
        self.counters[f"sent.{type(message).__name__.lower()}"] += 1
        self._outbox.send(to, message)

    def _deliver(self, item: Delivery) -> None:
        self._outbox.deliver(item)

    def _persist_ring_seq(self, seq: int | None = None) -> None:
        self._outbox.persist(RingStored.RING_SEQ, self._ring_seq_max if seq is None else seq)

    def _arm(self, key: RingTimer, delay: float) -> None:
        at = self._timers[key] = self._now + delay
        self._outbox.start_timer(key, at)

    def _disarm(self, key: RingTimer) -> None:
        if self._timers.pop(key, None) is not None:
            self._outbox.cancel_timer(key)

    def _next_member(self) -> int:
        i = self.members.index(self.node)
        return self.members[(i + 1) % len(self.members)]

    def _log(self, ring: RingId) -> _RingLog:
        log = self._logs.get(ring)
        if log is None:
            log = self._logs[ring] = _RingLog(ring)
        return log

    # -- regular messages -----------------------------------------------------------------

    def _on_mcast(self, m: Mcast) -> None:
        log = self._logs.get(m.ring)
        if log is not None:
            if log.add(m):
                self.counters["mcast.received"] += 1
                if m.ring == self.ring:
                    self._process()
            else:
                self.counters["mcast.duplicate"] += 1
            return
        self._foreign(m.ring, m.origin)

    def _foreign(self, ring: RingId, sender: int) -> None:
        """A message of a ring this node is not in."""
        if sender == self.node or sender not in self.peers:
            self.counters["dropped.stranger"] += 1
            return
        if sender in self._gone:
            if ring.seq <= self._gone[sender]:
                # A late message from before its leave: it is not coming back as that.
                self.counters["dropped.gone"] += 1
                return
            # A ring newer than its leave: a new incarnation of it.
            del self._gone[sender]
        if ring < self.ring and sender in self.members:
            self.counters["dropped.stale"] += 1
            return
        if self.state is State.OPERATIONAL:
            self.counters["foreign"] += 1
            self._enter_gather(frozenset({sender}), frozenset())

    def _on_merge_detect(self, m: MergeDetect) -> None:
        if m.ring != self.ring:
            self._foreign(m.ring, m.sender)

    def _on_token(self, tok: Token) -> None:
        if tok.ring != self.ring or self.state not in (State.OPERATIONAL, State.RECOVERY):
            if tok.ring != self.ring and tok.ring not in self._logs:
                self._foreign(tok.ring, tok.ring.rep)
            else:
                self.counters["dropped.token"] += 1
            return
        if tok.token_seq <= self._token.seen:
            self.counters["token.duplicate"] += 1
            return
        self._token.seen = tok.token_seq
        self.counters["token.received"] += 1
        # The token last passed on came round: no more retransmitting it.  (Left to
        # the token passed on next, or the hold, to replace or cancel; a gather cancels
        # it.)
        laggard = self._failing_to_receive(tok)
        if laggard is not None:
            self.counters["fail_to_recv"] += 1
            self._enter_gather(frozenset(), frozenset({laggard}))
            return
        self._arm(RingTimer.TOKEN_LOSS, self.config.token_timeout)
        self._forward_token(tok)

    def _failing_to_receive(self, tok: Token) -> int | None:
        """
        The member that has failed to receive, if the token shows one: for
        L{RingConfig.fail_recv_rotations} visits in a row the ring's aru has stayed
        where that member holds it, below messages this node holds.
        """
        token = self._token
        lacking = tok.aru_node
        stuck = (tok.aru, lacking)
        if (
            lacking == self.node
            or lacking not in self.members
            or self._logs[self.ring].aru <= tok.aru
        ):
            token.stuck_visits = 0
            return None
        if stuck != token.stuck:
            token.stuck, token.stuck_visits = stuck, 0
        token.stuck_visits += 1
        if token.stuck_visits < self.config.fail_recv_rotations:
            return None
        token.stuck_visits = 0
        return lacking

    def _forward_token(self, tok: Token) -> None:
        """Use the token: retransmit, broadcast, update it, forward it, deliver."""
        log = self._logs[self.ring]
        cfg = self.config
        phase = self._phase
        token = self._token
        queue_len = self._outgoing()
        allowed = min(cfg.max_messages, max(0, cfg.window - tok.fcc))
        if tok.backlog > 0 and queue_len > 0:
            share = cfg.window * queue_len // max(tok.backlog, queue_len)
            allowed = min(allowed, max(1, share))
        sent = 0
        rtr: list[int] = []
        for s in tok.rtr:
            m = log.msgs.get(s)
            if m is not None and sent < allowed:
                self._send(None, m)
                self.counters["mcast.retransmitted"] += 1
                sent += 1
            elif (s > log.aru or m is not None) and s not in rtr:
                rtr.append(s)
        seq = tok.seq
        while sent < allowed:
            m = self._next_outgoing(seq + 1)
            if m is None:
                break
            seq += 1
            log.add(m)
            self._send(None, m)
            sent += 1
        for s in range(log.aru + 1, seq + 1):
            if len(rtr) >= RTR_MAX:
                break
            if s not in log.msgs and s not in rtr:
                rtr.append(s)
        if log.aru < tok.aru or tok.aru_node in (self.node, 0):
            aru = log.aru
            aru_node = 0 if aru >= seq else self.node
        else:
            aru, aru_node = tok.aru, tok.aru_node
        queue_len = self._outgoing()
        fcc = max(0, tok.fcc - token.sent_last + sent)
        backlog = max(0, tok.backlog - token.backlog_last + queue_len)
        token.sent_last, token.backlog_last = sent, queue_len
        new = Token(self.ring, tok.token_seq + 1, seq, aru, aru_node, fcc, backlog, tuple(rtr))
        safe = min(token.aru_last_visit, aru)
        token.aru_last_visit = aru
        if safe > token.safe:
            token.safe = safe
            self._deliver(Safe(self.ring, safe))
        self._free(log)
        idle = seq == tok.seq and not rtr and backlog == 0
        token.idle_visits = token.idle_visits + 1 if idle else 0
        if (
            token.idle_visits >= cfg.idle_rotations
            and self.node == self.members[0]
            and isinstance(phase, _Operational)
        ):
            # An idle ring: hold the token (its representative) instead of spinning it;
            # a submit releases it at once.
            phase.held = new
            self._disarm(RingTimer.TOKEN_RETRANSMIT)
            self._arm(RingTimer.HOLD, cfg.hold)
            if RingTimer.MERGE not in self._timers:  # re-arming at every hold would starve it
                self._arm(RingTimer.MERGE, cfg.merge_interval)
        else:
            self._pass_token(new)
        self._process()

    def _pass_token(self, tok: Token) -> None:
        if self.config.durable:
            # Delivered (this visit's own broadcasts too), then stored, then passed on.
            self._process()
            self._outbox.persist(RingStored.HELD, tok.aru)
        self._token.last = tok
        self._send(self._next_member(), tok)
        self._arm(RingTimer.TOKEN_RETRANSMIT, self.config.token_retransmit)

    def _installed_now(self) -> bool:
        return self.installed == self.ring

    def _outgoing(self) -> int:
        """How many messages this node has waiting to be broadcast."""
        phase = self._phase
        rebroadcast = len(phase.rebroadcast) if isinstance(phase, _Recovery) else 0
        return rebroadcast + (len(self._queue) if self._installed_now() else 0)

    def _next_outgoing(self, seq: int) -> Mcast | None:
        phase = self._phase
        if isinstance(phase, _Recovery) and phase.rebroadcast:
            kind, payload, old = phase.rebroadcast.popleft()
            if old is None:
                return Mcast(self.ring, seq, self.node, kind, payload)
            return Mcast(
                self.ring, seq, self.node, kind, old.payload, old.ring, old.seq, old.origin
            )
        if self._queue and self._installed_now():
            # Pack as many queued pieces as fit in one message.
            pieces = [self._queue.popleft()]
            used = len(pieces[0][2]) + _PIECE_OVERHEAD
            while self._queue:
                nxt = len(self._queue[0][2]) + _PIECE_OVERHEAD
                if used + nxt > self.config.max_payload:
                    break
                pieces.append(self._queue.popleft())
                used += nxt
            for piece in pieces:
                index, total, _ = piece
                if index == 0:
                    self._partial.clear()
                self._partial.append(piece)
                if index == total - 1:
                    self._partial.clear()
            if len(pieces) > 1:
                self.counters["packed"] += len(pieces)
            return Mcast(self.ring, seq, self.node, Kind.APP, packb(pieces))
        return None

    def _deliver_app(self, m: Mcast) -> None:
        """Unpack an application message; deliver whole payloads and completed ones."""
        try:
            pieces = unpackb(m.payload)
            if type(pieces) is not tuple or not all(
                type(p) is tuple
                and len(p) == 3
                and type(p[0]) is int
                and type(p[1]) is int
                and 0 <= p[0] < p[1]
                and type(p[2]) is bytes
                for p in pieces
            ):
                raise ValueError("not a list of pieces")
        except ValueError:
            # The same bytes reach every member, so every member skips them alike.
            self.counters["malformed_app"] += 1
            return
        for position, (index, total, data) in enumerate(pieces):
            if total == 1:
                self._deliver(Delivered(m.ring, m.seq, m.origin, data, position))
                continue
            if index == 0:
                if m.origin in self._assembly:
                    self.counters["fragments.abandoned"] += 1
                self._assembly[m.origin] = (total, [data])
                continue
            expected = self._assembly.get(m.origin)
            if expected is None or expected[0] != total or len(expected[1]) != index:
                # A fragment whose predecessors this node did not deliver (they went to
                # another configuration, or the sender restarted): the payload is lost
                # here, never spliced.
                self._assembly.pop(m.origin, None)
                self.counters["fragments.abandoned"] += 1
                continue
            expected[1].append(data)
            if index == total - 1:
                del self._assembly[m.origin]
                payload = b"".join(expected[1])
                self._deliver(Delivered(m.ring, m.seq, m.origin, payload, position))

    def _free(self, log: _RingLog) -> None:
        """Drop messages every member holds and this node has processed."""
        upto = min(self._token.safe, log.processed)
        for s in [s for s in log.msgs if s <= upto]:
            del log.msgs[s]

    def _process(self) -> None:
        """Process the current ring's messages in order, up to the first hole."""
        log = self._logs.get(self.ring)
        if log is None:
            return
        while log.processed < log.aru:
            s = log.processed + 1
            m = log.msgs[s]
            log.processed = s
            if m.kind is Kind.APP:
                if self._installed_now():
                    self._deliver_app(m)
                else:
                    # Cannot happen: nobody sends before delivering every marker, and
                    # every marker precedes it.  Counted, not delivered, if it does.
                    self.counters["app_before_install"] += 1
            elif m.kind is Kind.RECOVERED:
                if m.old_ring == self.installed and m.old_ring is not None:
                    self._log(m.old_ring).add(
                        Mcast(m.old_ring, m.old_seq, m.old_origin, Kind.APP, m.payload)
                    )
            elif isinstance(phase := self._phase, _Recovery):
                phase.markers.add(m.origin)
                if phase.markers >= set(self.members):
                    self._install()

    # -- membership ---------------------------------------------------------------------

    def _enter_gather(
        self, procs: Iterable[int], failed: Iterable[int], fresh: bool = False
    ) -> None:
        phase = self._phase
        if isinstance(phase, _Gather) and not fresh:
            # Another round of the same gather: what it knew still holds.
            known, given_up = phase.procs, phase.failed
        else:
            self.counters["gather.entered"] += 1
            known = frozenset(set(self.installed_members) | set(self.members) | {self.node})
            given_up = frozenset()
        known = known | frozenset(procs)
        gone = frozenset(n for n in known if n in self._gone)
        given_up = (given_up | frozenset(failed) | gone) - {self.node}
        for key in (
            RingTimer.TOKEN_LOSS,
            RingTimer.TOKEN_RETRANSMIT,
            RingTimer.HOLD,
            RingTimer.MERGE,
        ):
            self._disarm(key)
        self._phase = _Gather(known, given_up, {self.node: (known, given_up)})
        self._send_join()
        self._arm(RingTimer.CONSENSUS, self.config.consensus_timeout)
        self._check_consensus()

    def _send_join(self) -> None:
        phase = self._phase
        assert isinstance(phase, _Gather)
        self._send(None, Join(self.node, phase.procs, phase.failed, self._ring_seq_max))
        self._arm(RingTimer.JOIN, self.config.join_interval)

    def _on_join(self, j: Join) -> None:
        if j.sender == self.node or j.sender not in self.peers:
            return
        # Joins overtake each other on the network: one older than the newest seen from
        # its sender belongs to a round that sender has left.
        newest = self._join_seq.get(j.sender, -1)
        if j.ring_seq < newest:
            self.counters["join.stale"] += 1
            return
        self._join_seq[j.sender] = j.ring_seq
        for n in j.procs - j.failed - {j.sender}:
            if n in self._gone and j.ring_seq >= self._gone[n] + 4:
                # Its sender counts on a node that left, and has seen a ring sequence
                # number as high as the node's next incarnation starts at (a leave
                # persists the leaver's number, a start adds 4): it has heard from that
                # incarnation, whose own join has not reached this node yet.  Failing it
                # as gone would form a ring without it, and another for it right after.
                del self._gone[n]
                self.counters["gone.vouched"] += 1
        if j.leaving:
            self._gone[j.sender] = j.ring_seq
            self._on_leave(j.sender)
            return
        if j.sender in self._gone:
            if j.ring_seq <= self._gone[j.sender]:
                # Sent before its leave, and overtaken by it.
                self.counters["join.stale"] += 1
                return
            # A new incarnation of a node that left: it may be gathered again.
            del self._gone[j.sender]
        if self.node in j.failed and j.ring_seq < self._epoch:
            # It failed this node before this node restarted or resumed, and has not
            # heard from it since; it will, and take it back.  Failing it in return would
            # make it fail this node again: two rings where one will do.
            self.counters["join.stale"] += 1
            return
        if self.state is not State.GATHER and self.node in j.failed:
            # Its sender gave up on this node; it will gather afresh (on a foreign
            # message or a merge detect) and find it again.
            self.counters["join.ignored"] += 1
            return
        if self.state is not State.GATHER:
            # A join from a member that has not yet seen the ring being formed (or this
            # one) is stale; so is one that lists this node as failed.
            forming = self._phase.ring if isinstance(self._phase, _Commit) else self.ring
            if j.sender in self._forming_members() and (
                j.ring_seq < forming.seq or self.node in j.failed
            ):
                self.counters["join.ignored"] += 1
                return
            self._ring_seq_max = max(self._ring_seq_max, j.ring_seq)
            self._enter_gather(j.procs | {j.sender}, frozenset())
        self._ring_seq_max = max(self._ring_seq_max, j.ring_seq)
        phase = self._phase
        assert isinstance(phase, _Gather)
        if j.sender in phase.failed:
            return
        view = phase.view
        if (j.procs, j.failed) == view:
            phase.consensus[j.sender] = view
            self._check_consensus()
            return
        if j.procs <= phase.procs and j.failed <= phase.failed:
            return
        procs = phase.procs | j.procs | {j.sender}
        failed = phase.failed | ({j.sender} if self.node in j.failed else j.failed)
        self._enter_gather(procs, failed)

    def _on_leave(self, node: int) -> None:
        """Node C{node} is leaving: gather without it, if it is one this node counts on."""
        phase = self._phase
        if isinstance(phase, _Gather):
            ours = node in phase.live
        else:
            ours = node in self.members or node in self._forming_members()
        if not ours:
            self.counters["leave.ignored"] += 1
            return
        self.counters["leave.received"] += 1
        self._enter_gather(frozenset(), frozenset({node}))

    def _forming_members(self) -> frozenset[int]:
        phase = self._phase
        if isinstance(phase, _Commit) and phase.commit is not None:
            return frozenset(phase.commit[1].members)
        return frozenset(self.members)

    def _check_consensus(self) -> None:
        phase = self._phase
        assert isinstance(phase, _Gather)
        live = phase.live
        view = phase.view
        if any(phase.consensus.get(n) != view for n in live):
            return
        if self.node != min(live):
            return
        self._ring_seq_max += 4
        ring = RingId(self._ring_seq_max, self.node)
        members = tuple(sorted(live))
        reports: list[Report | None] = [None] * len(members)
        reports[0] = self._report()
        commit = Commit(ring, members, tuple(reports), 1, 0)
        self._phase = _Commit(ring)
        self._disarm(RingTimer.JOIN)
        self._disarm(RingTimer.CONSENSUS)
        self._persist_ring_seq(ring.seq)
        if len(members) == 1:
            self._rep_rotation_done(commit)
        else:
            self._forward_commit(commit, 1)

    def _report(self) -> Report:
        log = self._logs.get(self.installed)
        if log is None:
            return Report(self.installed, 0, 0)
        return Report(self.installed, log.aru, log.high)

    def _forward_commit(self, c: Commit, to_index: int) -> None:
        nxt = c.members[to_index % len(c.members)]
        phase = self._phase
        assert isinstance(phase, _Commit | _Recovery)
        phase.commit = (nxt, c)
        self._send(nxt, c)
        self._arm(RingTimer.COMMIT_RETRANSMIT, self.config.token_retransmit)
        self._arm(RingTimer.TOKEN_LOSS, self.config.token_timeout)

    def _on_commit(self, c: Commit) -> None:
        if self.node not in c.members:
            return
        i = c.members.index(self.node)
        phase = self._phase
        if i == 0:
            # The representative sees its commit token come back after each rotation.
            if c.rotation == 1 and isinstance(phase, _Commit) and phase.ring == c.ring:
                if None not in c.reports:
                    self._rep_rotation_done(c)
            elif (
                c.rotation == 2
                and isinstance(phase, _Recovery)
                and self.ring == c.ring
                and self._token.seen < 0
            ):
                # Every member is in recovery: start the new ring's token.
                self._disarm(RingTimer.COMMIT_RETRANSMIT)
                phase.commit = None
                self._on_token(Token(self.ring, 0, 0, 0, 0, 0, 0, ()))
            return
        if (c.ring, c.rotation) in self._commit_seen or c.ring.seq <= self.ring.seq:
            return
        if c.rotation == 1:
            if not isinstance(phase, _Gather) or set(c.members) != phase.live:
                return
            self._commit_seen.add((c.ring, 1))
            reports = list(c.reports)
            reports[i] = self._report()
            self._ring_seq_max = max(self._ring_seq_max, c.ring.seq)
            self._persist_ring_seq()
            self._phase = _Commit(c.ring)
            self._disarm(RingTimer.JOIN)
            self._disarm(RingTimer.CONSENSUS)
            self._forward_commit(attrs.evolve(c, reports=tuple(reports)), i + 1)
        elif isinstance(phase, _Commit) and phase.ring == c.ring:
            self._commit_seen.add((c.ring, 2))
            self._enter_recovery(c)
            self._forward_commit(c, i + 1)

    def _rep_rotation_done(self, c: Commit) -> None:
        """The representative has every report: second rotation, and recovery."""
        c2 = attrs.evolve(c, rotation=2)
        self._enter_recovery(c2)
        if len(c.members) == 1:
            self._on_token(Token(self.ring, 0, 0, 0, 0, 0, 0, ()))
        else:
            self._forward_commit(c2, 1)

    def _enter_recovery(self, c: Commit) -> None:
        self.counters["recovery.entered"] += 1
        self.ring = c.ring
        self.members = c.members
        self._ring_seq_max = max(self._ring_seq_max, c.ring.seq)
        reports = [r for r in c.reports if r is not None]
        assert len(reports) == len(c.members)
        trans = [
            m for m, r in zip(c.members, reports, strict=True) if r.old_ring == self.installed
        ]
        rebroadcast: deque[tuple[Kind, bytes, Mcast | None]] = deque()
        old = self._logs.get(self.installed)
        if old is not None:
            low = min(r.aru for r in reports if r.old_ring == self.installed and r is not None)
            for s in sorted(old.msgs):
                if s > low:
                    rebroadcast.append((Kind.RECOVERED, b"", old.msgs[s]))
        rebroadcast.append((Kind.MARKER, b"", None))
        self._phase = _Recovery(tuple(trans), rebroadcast)
        self._logs[self.ring] = _RingLog(self.ring)
        self._token = _TokenState()
        self._arm(RingTimer.TOKEN_LOSS, self.config.token_timeout)

    def _install(self) -> None:
        """Every marker is in: deliver the rest of the old ring, then the new configuration."""
        phase = self._phase
        assert isinstance(phase, _Recovery)
        old = self._logs.get(self.installed)
        if old is not None:
            for s in sorted(old.msgs):
                if s > old.processed:
                    m = old.msgs[s]
                    if m.kind is Kind.APP:
                        self._deliver_app(m)
                    old.processed = s
        # A payload whose fragments straddle the change cannot be completed: members
        # that come from another ring never saw its first fragments.  Every member drops
        # it alike, and its sender (if still here) broadcasts it again, whole.
        self.counters["fragments.abandoned"] += len(self._assembly)
        self._assembly.clear()
        if self._partial:
            self.counters["fragments.resent"] += 1
            self._queue.extendleft(reversed(self._partial))
            self._partial.clear()
        self._deliver(Configuration(self.ring, phase.trans, transitional=True))
        self._deliver(Configuration(self.ring, self.members, transitional=False))
        self.counters["installed"] += 1
        self.installed = self.ring
        self.installed_members = self.members
        self._phase = _Operational()
        self._disarm(RingTimer.COMMIT_RETRANSMIT)
        for ring in [r for r in self._logs if r != self.ring]:
            del self._logs[ring]

    # -- timers -----------------------------------------------------------------------------

    def _timer_flush(self) -> None:
        self._flushing = False

    def _timer_token_loss(self) -> None:
        self.counters["token.lost"] += 1
        self._enter_gather(frozenset(), frozenset())

    def _timer_token_retransmit(self) -> None:
        last = self._token.last
        if last is not None and isinstance(self._phase, _Operational | _Recovery):
            self.counters["token.retransmitted"] += 1
            self._send(self._next_member(), last)
            self._arm(RingTimer.TOKEN_RETRANSMIT, self.config.token_retransmit)

    def _timer_commit_retransmit(self) -> None:
        phase = self._phase
        if isinstance(phase, _Commit | _Recovery) and phase.commit is not None:
            to, c = phase.commit
            self._send(to, c)
            self._arm(RingTimer.COMMIT_RETRANSMIT, self.config.token_retransmit)

    def _timer_hold(self) -> None:
        phase = self._phase
        if isinstance(phase, _Operational) and phase.held is not None:
            held, phase.held = phase.held, None
            self._token.idle_visits = 0
            self._pass_token(held)

    def _timer_merge(self) -> None:
        phase = self._phase
        if isinstance(phase, _Operational) and (phase.held is not None or self._token.idle_visits):
            self._send(None, MergeDetect(self.ring, self.node))

    def _timer_join(self) -> None:
        if self.state is State.GATHER:
            self._send_join()

    def _timer_consensus(self) -> None:
        phase = self._phase
        if not isinstance(phase, _Gather):
            return
        view = phase.view
        laggards = {n for n in phase.live - {self.node} if phase.consensus.get(n) != view}
        self.counters["consensus.timeout"] += 1
        self._enter_gather(frozenset(), frozenset(laggards))
