"""
Sealing and opening ring datagrams: version, cluster, sender, freshness and
authentication.

Every datagram of the ring is::

    magic    2 bytes   b"LR"
    version  1 byte    2
    type     1 byte    message type
    mode     1 byte    0 = authenticated (HMAC-SHA256), 1 = encrypted (ChaCha20-Poly1305)
    cluster  4 bytes   cluster id: datagrams of another cluster on the same network are dropped
    sender   4 bytes   node id of the sender
    to       4 bytes   node id of the one member it is for, 0 for every member
    boot     8 bytes   the sender's boot: when its sealer was made, in microseconds
    counter  8 bytes   the sender's datagram counter in that boot, from 1, +1 per datagram
    then, authenticated:  body, then 16 bytes of HMAC-SHA256 over header and body
    or, encrypted:        12-byte random nonce, then the AEAD ciphertext of the body with
                          the header as associated data (16-byte tag included)

Integers are big-endian.  The key is the cluster's shared secret; each mode derives its
own key from it, so the same secret never keys two algorithms.  L{Sealer.open} trusts
nothing: whatever is truncated, of another version (version 1 had no boot and counter),
cluster or mode, fails authentication, or is not fresh comes back as a L{Dropped} with
the reason, for the caller to count.

Freshness (anti-replay, as IPsec's, RFC 4303 section 3.4.3).  The boot and the counter
are under the seal: the HMAC covers them, or they are associated data of the AEAD.  For
each sender node id the opening sealer keeps the highest boot it has accepted and, for
that boot, the highest counter and which of the L{WINDOW} counters up to it it has
accepted.  A datagram is dropped as C{STALE_BOOT} if its boot is below that sender's
highest (an earlier incarnation of the sender: a member that died or restarted, or a
ring before it); as C{REPLAYED} if it has that boot and a counter already accepted; as
C{TOO_OLD} if it has that boot and a counter below the window (or counter 0, which is
never sealed).  A higher boot is the sender restarted: its window starts again.
Counters within the window that were not seen yet are accepted in any order, so
reordering by the network loses nothing.  The window moves only for a datagram that
passed authentication: a forged or damaged datagram never does.  (The checks run before
authentication too, so a forged datagram with a stale boot or a seen counter is counted
under the freshness reason, not C{BAD_AUTH}.) At most L{MAX_SENDERS} senders are
tracked; an authentic datagram of a further one is dropped as C{TOO_MANY_SENDERS} (only
a holder of the key can make one: the node ids of a cluster are far fewer).  A sealer
never reuses a counter: after counter 2**64-1 L{Sealer.seal} raises instead of wrapping.

The guarantee: while a receiving sealer lives, it accepts each datagram sealed by a
holder of the key at most once, and none of a sender boot older than the newest it has
accepted from that sender.  Its limits:

  - The windows live in memory.  A receiver that restarts has forgotten them: each
    captured datagram of a sender boot it has never seen can be accepted by it once per
    receiver lifetime (for the newest boot it then sees of a sender, once, and older
    boots are dropped from then on).
  - The window is per sender, not per sender and receiver; what a sender wrote to one
    member only (a token, a commit token) names that member (C{to}), under the seal, and
    any other member drops it (the adapter counts C{dropped.misdirected}), so it cannot
    be replayed to a member whose window has not seen its counter.
  - A sender's boot comes from its wall clock.  A member restarted with its clock set
    back before its previous boot is dropped as C{STALE_BOOT} by every receiver that
    remembers the previous boot, until those receivers restart.
  - A replay from another address than the sender's still moves the window, before
    the adapter checks the address (L{lips.protocols._ring}): the real datagram, if it
    comes later, is then dropped as C{REPLAYED}, as if lost.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import struct
import time
from collections.abc import Callable
from typing import Final

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

__all__ = ["Dropped", "DropReason", "Mode", "Opened", "Sealer"]

MAGIC: Final = b"LR"
VERSION: Final = 2
_PREFIX = struct.Struct("!2sB")
_HEADER = struct.Struct("!2sBBBIIIQQ")
HEADER: Final = _HEADER.size
TAG: Final = 16
NONCE: Final = 12
MIN_KEY: Final = 16
#: How many counters below a sender's highest the anti-replay window remembers.
WINDOW: Final = 1024
#: How many senders a sealer keeps a window for.
MAX_SENDERS: Final = 4096
#: The last counter a sealer uses; C{seal} raises rather than wrap past it.
MAX_COUNTER: Final = 2**64 - 1
_MASK: Final = (1 << WINDOW) - 1


class Mode(enum.IntEnum):
    """How datagrams are protected."""

    AUTHENTICATED = 0
    ENCRYPTED = 1


class DropReason(enum.Enum):
    """Why a datagram was dropped; each has its own counter."""

    TRUNCATED = "truncated"
    BAD_MAGIC = "bad_magic"
    BAD_VERSION = "bad_version"
    OTHER_CLUSTER = "other_cluster"
    WRONG_MODE = "wrong_mode"
    BAD_AUTH = "bad_auth"
    STALE_BOOT = "stale_boot"
    REPLAYED = "replayed"
    TOO_OLD = "too_old"
    TOO_MANY_SENDERS = "too_many_senders"


@attrs.frozen
class Opened:
    """An authentic datagram: its type, sender, body, and whom it is for (0: every member)."""

    type: int
    sender: int
    body: bytes
    to: int = 0


@attrs.frozen
class Dropped:
    """A datagram that was not accepted, and why."""

    reason: DropReason


def _derive(secret: bytes, purpose: bytes) -> bytes:
    return hmac.new(secret, b"lips ring " + purpose, hashlib.sha256).digest()


@attrs.define
class _Window:
    """
    What one sender's datagrams have been accepted: its highest boot, the highest
    counter of that boot, and a bitmap whose bit C{i} says counter C{top - i} was
    accepted.
    """

    boot: int
    top: int = 0
    seen: int = 0

    def check(self, boot: int, counter: int) -> DropReason | None:
        """Why a datagram with C{boot} and C{counter} is not fresh, or None if it is."""
        if counter == 0:
            # Never sealed: counters start at 1, below every window.
            return DropReason.TOO_OLD
        if boot != self.boot:
            return DropReason.STALE_BOOT if boot < self.boot else None
        if counter > self.top:
            return None
        offset = self.top - counter
        if offset >= WINDOW:
            return DropReason.TOO_OLD
        if self.seen >> offset & 1:
            return DropReason.REPLAYED
        return None

    def accept(self, boot: int, counter: int) -> None:
        """Record an authentic, fresh (L{check} said so) datagram."""
        if boot > self.boot:
            self.boot, self.top, self.seen = boot, 0, 0
        if counter > self.top:
            shift = counter - self.top
            self.seen = ((self.seen << shift) | 1) & _MASK if shift < WINDOW else 1
            self.top = counter
        else:
            self.seen |= 1 << (self.top - counter)


class Sealer:
    """
    Seals outgoing and opens incoming datagrams of one cluster, for one member: it
    numbers what it seals, and remembers what it opened (one sealer per member).

    @param secret: the cluster's shared key, at least 16 bytes.
    @param cluster: the cluster id (32 bits).
    @param mode: authenticate only, or encrypt as well.
    @param nonce: source of AEAD nonces (injected for tests; random by default).
    @param boot: this member's boot, 64 bits: when it started, in microseconds since
        the epoch (injected for tests; the wall clock when the sealer is made by
        default).  It must be higher than the boot of any earlier run of the member.
    @param counter: the counter of the first datagram sealed (injected for tests).

    @ivar boot: the boot every sealed datagram carries.
    """

    def __init__(
        self,
        secret: bytes,
        cluster: int,
        mode: Mode = Mode.AUTHENTICATED,
        nonce: Callable[[int], bytes] = os.urandom,
        *,
        boot: int | None = None,
        counter: int = 1,
    ) -> None:
        if len(secret) < MIN_KEY:
            raise ValueError(f"the cluster key must be at least {MIN_KEY} bytes")
        if not 0 <= cluster < 2**32:
            raise ValueError("the cluster id must fit in 32 bits")
        if boot is None:
            boot = time.time_ns() // 1000
        if not 0 <= boot < 2**64:
            raise ValueError("the boot must fit in 64 bits")
        if not 1 <= counter <= MAX_COUNTER:
            raise ValueError("the first counter must be from 1 to 2**64-1")
        self.cluster = cluster
        self.mode = mode
        self.boot = boot
        self._counter = counter
        self._mac_key = _derive(secret, b"hmac-sha256")
        self._aead = ChaCha20Poly1305(_derive(secret, b"chacha20-poly1305"))
        self._nonce = nonce
        self._windows: dict[int, _Window] = {}

    @property
    def overhead(self) -> int:
        """Bytes a sealed datagram adds to its body."""
        return HEADER + (TAG if self.mode is Mode.AUTHENTICATED else NONCE + TAG)

    @property
    def senders(self) -> int:
        """How many senders this sealer keeps an anti-replay window for."""
        return len(self._windows)

    def seal(self, type_: int, sender: int, body: bytes, to: int = 0) -> bytes:
        """
        The datagram carrying C{body} as message type C{type_} from C{sender} to node
        C{to} (0: to every member), with this sealer's boot and its next counter.

        @raise OverflowError: every counter has been used (after 2**64-1 datagrams).
        """
        counter = self._counter
        if counter > MAX_COUNTER:
            raise OverflowError("the ring datagram counter is used up: restart the member")
        header = _HEADER.pack(
            MAGIC, VERSION, type_, self.mode, self.cluster, sender, to, self.boot, counter
        )
        self._counter = counter + 1
        if self.mode is Mode.AUTHENTICATED:
            signed = header + body
            return signed + hmac.new(self._mac_key, signed, hashlib.sha256).digest()[:TAG]
        nonce = self._nonce(NONCE)
        return header + nonce + self._aead.encrypt(nonce, body, header)

    def open(self, datagram: bytes) -> Opened | Dropped:
        """
        Check and open one datagram.  An authentic, fresh one is recorded in its
        sender's window: opening it again drops it as C{REPLAYED}.
        """
        if len(datagram) >= _PREFIX.size:
            magic, version = _PREFIX.unpack_from(datagram)
            if magic == MAGIC and version != VERSION:
                # Checked before the length: an older version's header is shorter.
                return Dropped(DropReason.BAD_VERSION)
        if len(datagram) < self.overhead:
            return Dropped(DropReason.TRUNCATED)
        magic, _, type_, mode, cluster, sender, to, boot, counter = _HEADER.unpack_from(datagram)
        if magic != MAGIC:
            return Dropped(DropReason.BAD_MAGIC)
        if cluster != self.cluster:
            return Dropped(DropReason.OTHER_CLUSTER)
        if mode != self.mode:
            return Dropped(DropReason.WRONG_MODE)
        window = self._windows.get(sender)
        stale = (window if window is not None else _Window(boot)).check(boot, counter)
        if stale is not None:
            return Dropped(stale)
        header = datagram[:HEADER]
        if self.mode is Mode.AUTHENTICATED:
            signed, tag = datagram[:-TAG], datagram[-TAG:]
            good = hmac.new(self._mac_key, signed, hashlib.sha256).digest()[:TAG]
            if not hmac.compare_digest(tag, good):
                return Dropped(DropReason.BAD_AUTH)
            body = signed[HEADER:]
        else:
            nonce = datagram[HEADER : HEADER + NONCE]
            try:
                body = self._aead.decrypt(nonce, datagram[HEADER + NONCE :], header)
            except InvalidTag:
                return Dropped(DropReason.BAD_AUTH)
        # Authentic: only now may the window move.
        if window is None:
            if len(self._windows) >= MAX_SENDERS:
                return Dropped(DropReason.TOO_MANY_SENDERS)
            window = self._windows[sender] = _Window(boot)
        window.accept(boot, counter)
        return Opened(type_, sender, body, to)
