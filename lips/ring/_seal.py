"""
Sealing and opening ring datagrams: version, cluster, sender and authentication.

Every datagram of the ring is::

    magic    2 bytes   b"LR"
    version  1 byte    1
    type     1 byte    message type
    mode     1 byte    0 = authenticated (HMAC-SHA256), 1 = encrypted (ChaCha20-Poly1305)
    cluster  4 bytes   cluster id: datagrams of another cluster on the same network are dropped
    sender   4 bytes   node id of the sender
    then, authenticated:  body, then 16 bytes of HMAC-SHA256 over header and body
    or, encrypted:        12-byte random nonce, then the AEAD ciphertext of the body with
                          the header as associated data (16-byte tag included)

Integers are big-endian.  The key is the cluster's shared secret; each mode derives its
own key from it, so the same secret never keys two algorithms.  L{Sealer.open} trusts
nothing: whatever is truncated, of another version, cluster or mode, or fails
authentication comes back as a L{Dropped} with the reason, for the caller to count.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import struct
from collections.abc import Callable
from typing import Final

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

__all__ = ["Dropped", "DropReason", "Mode", "Opened", "Sealer"]

MAGIC: Final = b"LR"
VERSION: Final = 1
_HEADER = struct.Struct("!2sBBBII")
HEADER: Final = _HEADER.size
TAG: Final = 16
NONCE: Final = 12
MIN_KEY: Final = 16


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


@attrs.frozen
class Opened:
    """An authentic datagram: its type, sender and body."""

    type: int
    sender: int
    body: bytes


@attrs.frozen
class Dropped:
    """A datagram that was not accepted, and why."""

    reason: DropReason


def _derive(secret: bytes, purpose: bytes) -> bytes:
    return hmac.new(secret, b"lips ring " + purpose, hashlib.sha256).digest()


class Sealer:
    """
    Seals outgoing and opens incoming datagrams of one cluster.

    @param secret: the cluster's shared key, at least 16 bytes.
    @param cluster: the cluster id (32 bits).
    @param mode: authenticate only, or encrypt as well.
    @param nonce: source of AEAD nonces (injected for tests; random by default).
    """

    def __init__(
        self,
        secret: bytes,
        cluster: int,
        mode: Mode = Mode.AUTHENTICATED,
        nonce: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if len(secret) < MIN_KEY:
            raise ValueError(f"the cluster key must be at least {MIN_KEY} bytes")
        if not 0 <= cluster < 2**32:
            raise ValueError("the cluster id must fit in 32 bits")
        self.cluster = cluster
        self.mode = mode
        self._mac_key = _derive(secret, b"hmac-sha256")
        self._aead = ChaCha20Poly1305(_derive(secret, b"chacha20-poly1305"))
        self._nonce = nonce

    @property
    def overhead(self) -> int:
        """Bytes a sealed datagram adds to its body."""
        return HEADER + (TAG if self.mode is Mode.AUTHENTICATED else NONCE + TAG)

    def seal(self, type_: int, sender: int, body: bytes) -> bytes:
        """The datagram carrying C{body} as message type C{type_} from C{sender}."""
        header = _HEADER.pack(MAGIC, VERSION, type_, self.mode, self.cluster, sender)
        if self.mode is Mode.AUTHENTICATED:
            signed = header + body
            return signed + hmac.new(self._mac_key, signed, hashlib.sha256).digest()[:TAG]
        nonce = self._nonce(NONCE)
        return header + nonce + self._aead.encrypt(nonce, body, header)

    def open(self, datagram: bytes) -> Opened | Dropped:
        """Check and open one datagram."""
        if len(datagram) < self.overhead:
            return Dropped(DropReason.TRUNCATED)
        magic, version, type_, mode, cluster, sender = _HEADER.unpack_from(datagram)
        if magic != MAGIC:
            return Dropped(DropReason.BAD_MAGIC)
        if version != VERSION:
            return Dropped(DropReason.BAD_VERSION)
        if cluster != self.cluster:
            return Dropped(DropReason.OTHER_CLUSTER)
        if mode != self.mode:
            return Dropped(DropReason.WRONG_MODE)
        header = datagram[:HEADER]
        if self.mode is Mode.AUTHENTICATED:
            signed, tag = datagram[:-TAG], datagram[-TAG:]
            good = hmac.new(self._mac_key, signed, hashlib.sha256).digest()[:TAG]
            if not hmac.compare_digest(tag, good):
                return Dropped(DropReason.BAD_AUTH)
            return Opened(type_, sender, signed[HEADER:])
        nonce = datagram[HEADER : HEADER + NONCE]
        try:
            body = self._aead.decrypt(nonce, datagram[HEADER + NONCE :], header)
        except InvalidTag:
            return Dropped(DropReason.BAD_AUTH)
        return Opened(type_, sender, body)
