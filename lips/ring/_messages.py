"""
Messages of the token ring (sans-IO values; L{lips.ring._seal} protects them on the wire).
"""

from __future__ import annotations

import enum
from typing import TypeAlias

import attrs

__all__ = [
    "NO_RING",
    "Commit",
    "Join",
    "Kind",
    "Mcast",
    "MergeDetect",
    "Report",
    "RingId",
    "RingMessage",
    "Token",
]


@attrs.frozen(order=True)
class RingId:
    """
    Identifies one ring (configuration).  C{seq} grows with every new ring a server takes
    part in and is persisted, so ids never repeat; C{rep} is the representative.
    """

    seq: int
    rep: int

    def __str__(self) -> str:
        """C{SEQ.REP} (C{8.1}): how every log line, status and display names a ring."""
        return f"{self.seq}.{self.rep}"


#: The ring id of "no ring yet".
NO_RING = RingId(0, 0)


@attrs.frozen
class Token:
    """
    The regular token.  Only its holder broadcasts.

    @ivar token_seq: grows by one at every forward; a copy not newer than the last one
        seen is a duplicate.
    @ivar seq: the highest sequence number given to a message of this ring.
    @ivar aru: the ring-wide "all received up to" (lowered by any member that lacks
        messages; raised only by the member that last lowered it, C{aru_node}).
    @ivar fcc: messages broadcast during the last rotation (flow control).
    @ivar backlog: messages queued at all members, as of their last visit.
    @ivar rtr: sequence numbers some member is missing.
    """

    ring: RingId
    token_seq: int
    seq: int
    aru: int
    aru_node: int
    fcc: int
    backlog: int
    rtr: tuple[int, ...]


class Kind(enum.IntEnum):
    """What a broadcast message carries."""

    APP = 0
    """An application payload."""
    RECOVERED = 1
    """A message of an older ring, re-broadcast during recovery."""
    MARKER = 2
    """Its sender has re-broadcast everything it had to during recovery."""


@attrs.frozen
class Mcast:
    """
    A broadcast message, number C{seq} of ring C{ring}, sent by C{origin}.  A RECOVERED
    message carries an older ring's message (C{old_ring}, C{old_seq}, C{old_origin}).
    """

    ring: RingId
    seq: int
    origin: int
    kind: Kind
    payload: bytes
    old_ring: RingId | None = None
    old_seq: int = 0
    old_origin: int = 0


@attrs.frozen
class Join:
    """
    Membership consensus: the sender's view of who is there and who has failed.

    A join whose sender lists itself as failed is a leave (corosync's leave message):
    its sender is leaving for good, and the others form a ring without it at once
    instead of waiting for the token to be lost.  L{Join.leave} makes one.
    """

    sender: int
    procs: frozenset[int]
    failed: frozenset[int]
    ring_seq: int

    @property
    def leaving(self) -> bool:
        """Whether this is a leave: the sender names itself as failed."""
        return self.sender in self.failed

    @classmethod
    def leave(cls, sender: int, ring_seq: int) -> Join:
        """The leave of node C{sender}."""
        return cls(sender, frozenset({sender}), frozenset({sender}), ring_seq)


@attrs.frozen
class Report:
    """What a member of a forming ring brings from the last ring it installed."""

    old_ring: RingId
    aru: int
    high: int


@attrs.frozen
class Commit:
    """
    The commit token that forms ring C{ring} of C{members} (sorted; that is the ring's
    order).  It goes round twice: the first rotation collects every member's L{Report},
    the second tells every member all of them.
    """

    ring: RingId
    members: tuple[int, ...]
    reports: tuple[Report | None, ...]
    rotation: int
    hop: int


@attrs.frozen
class MergeDetect:
    """Sent by an idle ring's representative so that other partitions notice it."""

    ring: RingId
    sender: int


RingMessage: TypeAlias = Token | Mcast | Join | Commit | MergeDetect
