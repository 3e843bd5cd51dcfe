"""
The one codec of the ring's messages: each message is a type code and a msgpack body.

A body is a msgpack array of the message's fields, in declaration order:

    TOKEN (1)         [ring, token_seq, seq, aru, aru_node, fcc, backlog, [rtr...]]
    MCAST (2)         [ring, seq, origin, kind, payload, old_ring, old_seq, old_origin]
    JOIN (3)          [sender, [procs...], [failed...], ring_seq]
    COMMIT (4)        [ring, [members...], [report-or-nil...], rotation, hop]
    MERGE_DETECT (5)  [ring, sender]

A ring id is C{[seq, rep]}, a report C{[old_ring, aru, high]} (or nil while a commit
token's first rotation has not reached its member), a set an array in increasing order,
a L{Kind} its integer value and a payload msgpack bin.  The type code travels in the
sealed datagram's header (L{lips.ring._seal}), not in the body.

L{decode} is the only place where the ring trusts nothing: every field is checked for
its exact type (a bool is not an integer), its range and its relation to the other
fields, and anything else raises L{RingCodecError}, for the caller to count and drop.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise
from typing import Any, Final

from lips.ring._engine import RTR_MAX
from lips.ring._messages import (
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
    "COMMIT",
    "JOIN",
    "MAX_COUNT",
    "MAX_NODE",
    "MCAST",
    "MERGE_DETECT",
    "TOKEN",
    "TYPE_CODES",
    "RingCodecError",
    "decode",
    "encode",
]

TOKEN: Final = 1
MCAST: Final = 2
JOIN: Final = 3
COMMIT: Final = 4
MERGE_DETECT: Final = 5

#: The type code of each message class.
TYPE_CODES: Final[dict[type[RingMessage], int]] = {
    Token: TOKEN,
    Mcast: MCAST,
    Join: JOIN,
    Commit: COMMIT,
    MergeDetect: MERGE_DETECT,
}

#: The largest node id: it must fit the sealed header's 32-bit sender field.
MAX_NODE: Final = 2**32 - 1
#: The largest sequence number, counter or ring sequence number accepted.
MAX_COUNT: Final = 2**63 - 1

_KINDS: Final = {int(k): k for k in Kind}


class RingCodecError(ValueError):
    """A ring message body is malformed; the text says how."""


# -- encoding -------------------------------------------------------------------------------


def _ring(r: RingId) -> list[int]:
    return [r.seq, r.rep]


def _report(r: Report | None) -> list[Any] | None:
    return None if r is None else [_ring(r.old_ring), r.aru, r.high]


def encode(message: RingMessage) -> tuple[int, bytes]:
    """
    The type code and body of C{message}.

    @raise TypeError: if C{message} is not a ring message.
    """
    fields: list[Any]
    if isinstance(message, Token):
        fields = [
            _ring(message.ring),
            message.token_seq,
            message.seq,
            message.aru,
            message.aru_node,
            message.fcc,
            message.backlog,
            list(message.rtr),
        ]
    elif isinstance(message, Mcast):
        fields = [
            _ring(message.ring),
            message.seq,
            message.origin,
            int(message.kind),
            bytes(message.payload),
            None if message.old_ring is None else _ring(message.old_ring),
            message.old_seq,
            message.old_origin,
        ]
    elif isinstance(message, Join):
        fields = [
            message.sender,
            sorted(message.procs),
            sorted(message.failed),
            message.ring_seq,
        ]
    elif isinstance(message, Commit):
        fields = [
            _ring(message.ring),
            list(message.members),
            [_report(r) for r in message.reports],
            message.rotation,
            message.hop,
        ]
    elif isinstance(message, MergeDetect):
        fields = [_ring(message.ring), message.sender]
    else:
        raise TypeError(f"not a ring message: {message!r}")
    return TYPE_CODES[type(message)], packb(fields)


# -- decoding -------------------------------------------------------------------------------


def _fields(body: Any, n: int, what: str) -> tuple[Any, ...]:
    if type(body) is not tuple or len(body) != n:
        raise RingCodecError(f"{what} must be an array of {n} fields")
    return body


def _int(v: Any, what: str, lo: int = 0, hi: int = MAX_COUNT) -> int:
    if type(v) is not int:
        raise RingCodecError(f"{what} must be an integer, not {type(v).__name__}")
    if not lo <= v <= hi:
        raise RingCodecError(f"{what} must be in [{lo}, {hi}], not {v}")
    return v


def _node(v: Any, what: str) -> int:
    return _int(v, what, 1, MAX_NODE)


def _ring_id(v: Any, what: str) -> RingId:
    seq, rep = _fields(v, 2, what)
    return RingId(_int(seq, f"{what} seq"), _int(rep, f"{what} rep", 0, MAX_NODE))


def _array(v: Any, what: str, max_len: int | None = None) -> tuple[Any, ...]:
    if type(v) is not tuple:
        raise RingCodecError(f"{what} must be an array")
    if max_len is not None and len(v) > max_len:
        raise RingCodecError(f"{what} must hold at most {max_len} entries, not {len(v)}")
    return v


def _nodes(v: Any, what: str) -> tuple[int, ...]:
    """Node ids in strictly increasing order (the encoding of a set)."""
    nodes = tuple(_node(n, f"{what} entry") for n in _array(v, what))
    if any(a >= b for a, b in pairwise(nodes)):
        raise RingCodecError(f"{what} must be sorted and without duplicates")
    return nodes


def _report_entry(v: Any, what: str) -> Report | None:
    if v is None:
        return None
    old_ring, aru, high = _fields(v, 3, what)
    return Report(
        _ring_id(old_ring, f"{what} old_ring"),
        _int(aru, f"{what} aru"),
        _int(high, f"{what} high"),
    )


def _token(body: Any) -> Token:
    ring, token_seq, seq, aru, aru_node, fcc, backlog, rtr = _fields(body, 8, "TOKEN")
    return Token(
        _ring_id(ring, "TOKEN ring"),
        _int(token_seq, "TOKEN token_seq"),
        _int(seq, "TOKEN seq"),
        _int(aru, "TOKEN aru"),
        _int(aru_node, "TOKEN aru_node", 0, MAX_NODE),
        _int(fcc, "TOKEN fcc"),
        _int(backlog, "TOKEN backlog"),
        tuple(_int(s, "TOKEN rtr entry", 1) for s in _array(rtr, "TOKEN rtr", RTR_MAX)),
    )


def _mcast(body: Any) -> Mcast:
    ring, seq, origin, kind, payload, old_ring, old_seq, old_origin = _fields(body, 8, "MCAST")
    if type(kind) is not int or kind not in _KINDS:
        raise RingCodecError(f"MCAST kind must be one of {sorted(_KINDS)}, not {kind!r}")
    k = _KINDS[kind]
    if type(payload) is not bytes:
        raise RingCodecError(f"MCAST payload must be bytes, not {type(payload).__name__}")
    if k is Kind.RECOVERED:
        if old_ring is None:
            raise RingCodecError("a RECOVERED MCAST must name its old ring")
        old: RingId | None = _ring_id(old_ring, "MCAST old_ring")
        old_s = _int(old_seq, "MCAST old_seq", 1)
        old_o = _node(old_origin, "MCAST old_origin")
    else:
        if (
            old_ring is not None
            or _int(old_seq, "MCAST old_seq")
            or _int(old_origin, "MCAST old_origin")
        ):
            raise RingCodecError(f"a {k.name} MCAST has no old ring, old_seq or old_origin")
        old, old_s, old_o = None, 0, 0
    if k is Kind.MARKER and payload:
        raise RingCodecError("a MARKER MCAST carries no payload")
    return Mcast(
        _ring_id(ring, "MCAST ring"),
        _int(seq, "MCAST seq", 1),
        _node(origin, "MCAST origin"),
        k,
        payload,
        old,
        old_s,
        old_o,
    )


def _join(body: Any) -> Join:
    sender, procs, failed, ring_seq = _fields(body, 4, "JOIN")
    return Join(
        _node(sender, "JOIN sender"),
        frozenset(_nodes(procs, "JOIN procs")),
        frozenset(_nodes(failed, "JOIN failed")),
        _int(ring_seq, "JOIN ring_seq"),
    )


def _commit(body: Any) -> Commit:
    ring, members, reports, rotation, hop = _fields(body, 5, "COMMIT")
    nodes = _nodes(members, "COMMIT members")
    if not nodes:
        raise RingCodecError("COMMIT members must not be empty")
    entries = tuple(_report_entry(r, "COMMIT report") for r in _array(reports, "COMMIT reports"))
    if len(entries) != len(nodes):
        raise RingCodecError(
            f"COMMIT must hold one report per member: {len(nodes)} members, {len(entries)} reports"
        )
    rot = _int(rotation, "COMMIT rotation", 1, 2)
    if rot == 2 and None in entries:
        raise RingCodecError("a second-rotation COMMIT must hold every member's report")
    return Commit(_ring_id(ring, "COMMIT ring"), nodes, entries, rot, _int(hop, "COMMIT hop"))


def _merge_detect(body: Any) -> MergeDetect:
    ring, sender = _fields(body, 2, "MERGE_DETECT")
    return MergeDetect(_ring_id(ring, "MERGE_DETECT ring"), _node(sender, "MERGE_DETECT sender"))


_DECODERS: Final[dict[int, Callable[[Any], RingMessage]]] = {
    TOKEN: _token,
    MCAST: _mcast,
    JOIN: _join,
    COMMIT: _commit,
    MERGE_DETECT: _merge_detect,
}


def decode(type_code: int, body: bytes) -> RingMessage:
    """
    The message of type C{type_code} whose body is C{body}.

    @raise RingCodecError: if the type is unknown or the body is anything but the exact
        encoding of a well-formed message of that type.
    """
    decoder = _DECODERS.get(type_code) if type(type_code) is int else None
    if decoder is None:
        raise RingCodecError(f"unknown ring message type {type_code!r}")
    try:
        fields = unpackb(body)
    except Exception as e:  # msgpack raises several unrelated types on bad input
        raise RingCodecError(f"body is not valid msgpack: {e}") from None
    return decoder(fields)
