"""
Tests for L{lips.ring._codec}: every ring message survives the round trip, and the
decoder turns anything else into L{RingCodecError}, never into a message it should not
be nor into another exception.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from lips.ring import Commit, Join, Kind, Mcast, MergeDetect, Report, RingId, RingMessage, Token
from lips.ring._codec import (
    COMMIT,
    JOIN,
    MAX_COUNT,
    MAX_NODE,
    MCAST,
    MERGE_DETECT,
    TOKEN,
    TYPE_CODES,
    RingCodecError,
    decode,
    encode,
)
from lips.ring._engine import RTR_MAX
from lips.tuples import ANY, packb, unpackb

# -- strategies -----------------------------------------------------------------------------

nodes = st.integers(1, MAX_NODE)
counts = st.integers(0, MAX_COUNT)
seqs = st.integers(1, MAX_COUNT)
ring_ids = st.builds(RingId, counts, st.integers(0, MAX_NODE))

tokens = st.builds(
    Token,
    ring_ids,
    counts,
    counts,
    counts,
    st.integers(0, MAX_NODE),
    counts,
    counts,
    st.lists(seqs, max_size=RTR_MAX).map(tuple),
)

mcasts = st.one_of(
    st.builds(Mcast, ring_ids, seqs, nodes, st.just(Kind.APP), st.binary(max_size=64)),
    st.builds(Mcast, ring_ids, seqs, nodes, st.just(Kind.MARKER), st.just(b"")),
    st.builds(
        Mcast,
        ring_ids,
        seqs,
        nodes,
        st.just(Kind.RECOVERED),
        st.binary(max_size=64),
        ring_ids,
        seqs,
        nodes,
    ),
)

joins = st.builds(
    Join, nodes, st.frozensets(nodes, max_size=8), st.frozensets(nodes, max_size=8), counts
)

reports = st.builds(Report, ring_ids, counts, counts)


@st.composite
def commits(draw: st.DrawFn) -> Commit:
    members = tuple(sorted(draw(st.sets(nodes, min_size=1, max_size=8))))
    rotation = draw(st.sampled_from([1, 2]))
    entry = reports if rotation == 2 else st.none() | reports
    entries = tuple(draw(entry) for _ in members)
    return Commit(draw(ring_ids), members, entries, rotation, draw(counts))


merge_detects = st.builds(MergeDetect, ring_ids, nodes)

messages: st.SearchStrategy[RingMessage] = st.one_of(
    tokens, mcasts, joins, commits(), merge_detects
)

#: Any value msgpack can carry (ext values included), nested a little.
msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=8)
    | st.just(ANY),
    lambda inner: st.lists(inner, max_size=9) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=20,
)

type_codes = st.sampled_from(sorted(TYPE_CODES.values())) | st.integers(0, 255)


def check_decodes_or_refuses(test: SynchronousTestCase, type_code: int, body: bytes) -> None:
    """Decoding C{body} gives a message that round-trips, or a RingCodecError."""
    try:
        message = decode(type_code, body)
    except RingCodecError:
        return
    test.assertEqual(encode(message)[0], type_code)
    test.assertEqual(decode(*encode(message)), message)


# -- tests ----------------------------------------------------------------------------------


class RoundTripTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(messages)
    def test_round_trip(self, message: RingMessage) -> None:
        """Every well-formed message of every type decodes to itself."""
        type_code, body = encode(message)
        self.assertEqual(type_code, TYPE_CODES[type(message)])
        self.assertEqual(decode(type_code, body), message)

    def test_type_codes(self) -> None:
        """Each message class has its own fixed type code."""
        self.assertEqual(
            TYPE_CODES,
            {Token: TOKEN, Mcast: MCAST, Join: JOIN, Commit: COMMIT, MergeDetect: MERGE_DETECT},
        )

    def test_layout(self) -> None:
        """Bodies are arrays of the fields: ring ids as pairs, sets sorted, kinds as ints."""
        ring = RingId(8, 1)
        cases: list[tuple[RingMessage, list[Any]]] = [
            (Token(ring, 3, 5, 4, 2, 1, 0, (5,)), [[8, 1], 3, 5, 4, 2, 1, 0, [5]]),
            (
                Mcast(ring, 1, 2, Kind.RECOVERED, b"x", RingId(4, 1), 7, 3),
                [[8, 1], 1, 2, 1, b"x", [4, 1], 7, 3],
            ),
            (Mcast(ring, 1, 2, Kind.APP, b"x"), [[8, 1], 1, 2, 0, b"x", None, 0, 0]),
            (Join(2, frozenset({3, 1, 2}), frozenset({3}), 8), [2, [1, 2, 3], [3], 8]),
            (
                Commit(ring, (1, 2), (Report(RingId(4, 1), 2, 3), None), 1, 0),
                [[8, 1], [1, 2], [[[4, 1], 2, 3], None], 1, 0],
            ),
            (MergeDetect(ring, 1), [[8, 1], 1]),
        ]
        for message, fields in cases:
            self.assertEqual(encode(message)[1], packb(fields), message)

    def test_leave(self) -> None:
        """A leave is a join that names its sender as failed, and decodes as a leave."""
        leave = Join.leave(3, 9)
        self.assertEqual(encode(leave), (JOIN, packb([3, [3], [3], 9])))
        decoded = decode(*encode(leave))
        self.assertEqual(decoded, leave)
        assert isinstance(decoded, Join)
        self.assertTrue(decoded.leaving)
        join = decode(JOIN, packb([3, [1, 3], [1], 9]))
        assert isinstance(join, Join)
        self.assertFalse(join.leaving)

    def test_not_a_message(self) -> None:
        """Encoding something that is not a ring message is a TypeError."""
        self.assertRaises(TypeError, encode, Report(RingId(1, 1), 0, 0))


class ArbitraryInputTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(type_codes, st.binary(max_size=80))
    def test_arbitrary_bytes(self, type_code: int, body: bytes) -> None:
        """Arbitrary bytes of any type code decode to a message or raise RingCodecError."""
        check_decodes_or_refuses(self, type_code, body)

    @settings(max_examples=300, deadline=None)
    @given(type_codes, msgpack_values)
    def test_arbitrary_values(self, type_code: int, value: Any) -> None:
        """Arbitrary msgpack values of any type code decode or raise RingCodecError."""
        check_decodes_or_refuses(self, type_code, packb(value))

    @settings(max_examples=400, deadline=None)
    @given(messages, st.data())
    def test_one_field_changed(self, message: RingMessage, data: st.DataObject) -> None:
        """
        A valid body with one field (or one element of a nested field) replaced by any
        value decodes to a message or raises RingCodecError.
        """
        type_code, body = encode(message)
        fields = list(unpackb(body))
        i = data.draw(st.integers(0, len(fields) - 1))
        if type(fields[i]) is tuple and fields[i] and data.draw(st.booleans()):
            inner = list(fields[i])
            inner[data.draw(st.integers(0, len(inner) - 1))] = data.draw(msgpack_values)
            fields[i] = inner
        else:
            fields[i] = data.draw(msgpack_values)
        check_decodes_or_refuses(self, type_code, packb(fields))

    @settings(max_examples=100, deadline=None)
    @given(messages, st.data())
    def test_truncated_or_extended(self, message: RingMessage, data: st.DataObject) -> None:
        """A valid body cut short, or with bytes after it, is refused."""
        type_code, body = encode(message)
        cut = data.draw(st.integers(0, len(body) - 1))
        self.assertRaises(RingCodecError, decode, type_code, body[:cut])
        extra = data.draw(st.binary(min_size=1, max_size=4))
        self.assertRaises(RingCodecError, decode, type_code, body + extra)


R = [8, 1]
GOOD: dict[int, list[Any]] = {
    TOKEN: [R, 3, 5, 4, 2, 1, 0, [5]],
    MCAST: [R, 1, 2, 0, b"x", None, 0, 0],
    JOIN: [2, [1, 2, 3], [3], 8],
    COMMIT: [R, [1, 2], [[[4, 1], 2, 3], None], 1, 0],
    MERGE_DETECT: [R, 1],
}


def with_field(type_code: int, index: int, value: Any) -> bytes:
    """The good body of C{type_code} with field C{index} set to C{value}."""
    fields = list(GOOD[type_code])
    fields[index] = value
    return packb(fields)


class RejectionTests(SynchronousTestCase):
    def assertRefused(self, type_code: int, body: bytes, fragment: str) -> None:
        """Decoding raises RingCodecError whose text contains C{fragment}."""
        e = self.assertRaises(RingCodecError, decode, type_code, body)
        self.assertIn(fragment, str(e))

    def test_good_bodies(self) -> None:
        """The bodies the other rejection tests start from are themselves accepted."""
        for type_code, fields in GOOD.items():
            self.assertIsInstance(decode(type_code, packb(fields)), RingMessage)

    def test_error_is_value_error(self) -> None:
        """RingCodecError is one ValueError callers can catch."""
        self.assertTrue(issubclass(RingCodecError, ValueError))

    def test_unknown_type(self) -> None:
        """Type codes that are not ring messages (or not integers) are refused."""
        for code in (0, 6, 255, -1):
            self.assertRefused(code, packb(GOOD[TOKEN]), "unknown ring message type")
        self.assertRefused(True, packb(GOOD[MERGE_DETECT]), "unknown ring message type")

    def test_not_msgpack(self) -> None:
        """Bytes that are not exactly one msgpack value are refused."""
        good = packb(GOOD[MERGE_DETECT])
        for body in (b"", b"\xc1", good[:-1], good + b"\x00"):
            self.assertRefused(MERGE_DETECT, body, "not valid msgpack")

    def test_wrong_arity(self) -> None:
        """A body that is not an array, or has too few or too many fields, is refused."""
        for type_code, fields in GOOD.items():
            self.assertRefused(type_code, packb(fields[:-1]), "must be an array of")
            self.assertRefused(type_code, packb([*fields, 0]), "must be an array of")
            self.assertRefused(type_code, packb({"ring": 1}), "must be an array of")
            self.assertRefused(type_code, packb(7), "must be an array of")
        self.assertRefused(MERGE_DETECT, packb([[8], 1]), "ring must be an array of 2")

    def test_bool_is_not_int(self) -> None:
        """True and False are not accepted where an integer belongs."""
        self.assertRefused(MERGE_DETECT, packb([[True, 1], 1]), "must be an integer, not bool")
        self.assertRefused(MERGE_DETECT, packb([R, True]), "must be an integer, not bool")
        self.assertRefused(TOKEN, with_field(TOKEN, 1, False), "token_seq must be an integer")
        self.assertRefused(MCAST, with_field(MCAST, 3, True), "kind")

    def test_other_types(self) -> None:
        """Floats, strings, nil and ext values are refused where an integer belongs."""
        for value in (1.0, "1", None, b"\x01", ANY, [1]):
            self.assertRefused(TOKEN, with_field(TOKEN, 2, value), "TOKEN seq must be an integer")

    def test_ranges(self) -> None:
        """Negative numbers, zero node ids and values past their width are refused."""
        cases = [
            (TOKEN, 3, -1, "TOKEN aru must be in"),
            (TOKEN, 0, [-1, 1], "TOKEN ring seq must be in"),
            (TOKEN, 0, [1, 2**32], "TOKEN ring rep must be in"),
            (TOKEN, 1, 2**63, "TOKEN token_seq must be in"),
            (TOKEN, 4, -1, "TOKEN aru_node must be in"),
            (TOKEN, 7, [0], "TOKEN rtr entry must be in"),
            (MCAST, 1, 0, "MCAST seq must be in"),
            (MCAST, 2, 0, "MCAST origin must be in"),
            (JOIN, 0, 0, "JOIN sender must be in"),
            (JOIN, 0, 2**32, "JOIN sender must be in"),
            (JOIN, 1, [0, 1], "JOIN procs entry must be in"),
            (JOIN, 3, -4, "JOIN ring_seq must be in"),
            (COMMIT, 4, -1, "COMMIT hop must be in"),
            (MERGE_DETECT, 1, 0, "MERGE_DETECT sender must be in"),
        ]
        for type_code, index, value, fragment in cases:
            self.assertRefused(type_code, with_field(type_code, index, value), fragment)

    def test_token_rtr(self) -> None:
        """A retransmission list that is not an array or is too long is refused."""
        self.assertRefused(TOKEN, with_field(TOKEN, 7, 5), "TOKEN rtr must be an array")
        long = list(range(1, RTR_MAX + 2))
        self.assertRefused(TOKEN, with_field(TOKEN, 7, long), f"at most {RTR_MAX}")

    def test_unknown_kind(self) -> None:
        """A broadcast of a kind this side does not know is refused."""
        for kind in (3, -1, 255, "APP", None):
            self.assertRefused(MCAST, with_field(MCAST, 3, kind), "MCAST kind must be one of")

    def test_payload_type(self) -> None:
        """A payload that is a string (or anything but bin) is refused."""
        for payload in ("x", None, 1, [b"x"]):
            self.assertRefused(MCAST, with_field(MCAST, 4, payload), "payload must be bytes")

    def test_old_ring_consistency(self) -> None:
        """
        Only a RECOVERED broadcast names an old ring, and it must; a MARKER is empty.
        """
        recovered: list[Any] = [R, 1, 2, 1, b"x", [4, 1], 7, 3]
        self.assertIsInstance(decode(MCAST, packb(recovered)), Mcast)
        for i, value, fragment in [
            (5, None, "must name its old ring"),
            (5, [4], "old_ring must be an array of 2"),
            (6, 0, "old_seq must be in"),
            (7, 0, "old_origin must be in"),
        ]:
            fields = list(recovered)
            fields[i] = value
            self.assertRefused(MCAST, packb(fields), fragment)
        for j, old in [(5, [4, 1]), (6, 7), (7, 3)]:
            self.assertRefused(MCAST, with_field(MCAST, j, old), "APP MCAST has no old ring")
        self.assertRefused(MCAST, with_field(MCAST, 6, 0.0), "old_seq must be an integer")
        marker = [R, 1, 2, 2, b"x", None, 0, 0]
        self.assertRefused(MCAST, packb(marker), "MARKER MCAST carries no payload")

    def test_sets(self) -> None:
        """Sets must be arrays of node ids in increasing order, without duplicates."""
        for procs in ([2, 1], [1, 1], [3, 2, 1]):
            self.assertRefused(JOIN, with_field(JOIN, 1, procs), "sorted and without duplicates")
        self.assertRefused(JOIN, with_field(JOIN, 2, [3, 3]), "JOIN failed must be sorted")
        self.assertRefused(JOIN, with_field(JOIN, 1, {"1": 1}), "JOIN procs must be an array")

    def test_commit_members(self) -> None:
        """Commit members must be a non-empty sorted set of node ids."""
        reports = [[[4, 1], 2, 3], None]
        for members in ([2, 1], [1, 1]):
            body = packb([R, members, reports, 1, 0])
            self.assertRefused(COMMIT, body, "COMMIT members must be sorted")
        self.assertRefused(COMMIT, packb([R, [], [], 1, 0]), "must not be empty")

    def test_commit_reports(self) -> None:
        """There is one report per member, each a triple or nil, all there by rotation 2."""
        for reports in ([None], [None, None, None]):
            body = with_field(COMMIT, 2, reports)
            self.assertRefused(COMMIT, body, "2 members, ")
        self.assertRefused(COMMIT, with_field(COMMIT, 2, [[[4, 1], 2], None]), "array of 3")
        self.assertRefused(COMMIT, with_field(COMMIT, 2, [[[4, 1], 2, -3], None]), "high")
        self.assertRefused(COMMIT, with_field(COMMIT, 2, 5), "COMMIT reports must be an array")
        self.assertRefused(COMMIT, with_field(COMMIT, 3, 2), "must hold every member's report")
        for rotation in (0, 3, True):
            self.assertRefused(COMMIT, with_field(COMMIT, 3, rotation), "COMMIT rotation")
