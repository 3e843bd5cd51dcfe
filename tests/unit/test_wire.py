"""
Tests for L{lips.wire}: framing, the frame decoder and the message codec.
"""

from __future__ import annotations

import itertools
import struct
import zlib
from typing import Any

import msgpack
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from lips.space import Kind
from lips.tuples import (
    ANY,
    DEFAULT_LIMITS,
    MAX_SCAN,
    MAX_STEPS,
    AbortReason,
    Limits,
    Step,
    StepOp,
    Tuples,
    make_template,
    packb,
)
from lips.wire import (
    HEADER,
    MAGIC,
    VERSION,
    Aborted,
    Atomic,
    Cancel,
    Cancelled,
    CheckpointRequest,
    Committed,
    Error,
    ErrorCode,
    Frame,
    FrameDecoder,
    FrameError,
    Gone,
    Goodbye,
    Hello,
    Matched,
    Message,
    MessageError,
    NoMatch,
    Out,
    Ping,
    Pong,
    Recovered,
    RecoverRequest,
    Stats,
    StatsRequest,
    Stored,
    Take,
    TimedOut,
    Welcome,
    decode_message,
    encode_frame,
    encode_message,
)
from tests.unit.test_tuples import PROPERTIES, lips_templates, lips_tuples, strict_equal

MAX_BODY = 1 << 16


def feed_all(chunks: list[bytes], max_body: int = MAX_BODY) -> list[Frame | FrameError]:
    decoder = FrameDecoder(max_body)
    out: list[Frame | FrameError] = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    return out


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """C{data} cut at the given offsets (taken modulo its length, in order)."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def round_trip(message: Message, request_id: int = 7, limits: Limits = DEFAULT_LIMITS) -> Message:
    """C{message} encoded, framed, decoded."""
    [frame] = feed_all([encode_message(message, request_id)])
    assert isinstance(frame, Frame), frame
    assert frame.request_id == request_id
    assert frame.type == message.TYPE
    return decode_message(frame, limits)


def frame_of(type_: int, body: Any, request_id: int = 1) -> Frame:
    """A frame with the msgpack encoding of C{body}, as the decoder would give it."""
    return Frame(type_, request_id, packb(body))


#: Every message, with example fields.
EXAMPLES: list[Message] = [
    Hello(None, "worker"),
    Hello(42, ""),
    Out(1, ("job", 3, 1.5, b"x", None, True, (1, ("deep",)))),
    Take(Kind.IN, 2, make_template(("job", int)), None),
    Take(Kind.RD, 3, make_template((ANY, (float, str), bool, bytes)), 2.5),
    Take(Kind.INP, 4, make_template(("x",)), 0.0),
    Take(Kind.RDP, 2**63 - 1, make_template((None, ANY)), None),
    Cancel(2**32 - 1),
    StatsRequest(),
    Ping(),
    Pong(),
    Goodbye(3),
    Gone(),
    Welcome(1, "lipsd-1", 1 << 20),
    Stored(),
    Matched(("job", -(2**63))),
    NoMatch(),
    Cancelled(),
    TimedOut(),
    Stats({"tuples": 3, "load": 0.5, "server": "s1"}),
    Stats({}),
    Error(ErrorCode.BAD_TUPLE, "field 0: no"),
    CheckpointRequest(7, b"\x81\xa1k\x01"),
    CheckpointRequest(1, b""),
    RecoverRequest(),
    Recovered(7, b"state"),
    Recovered(None, None),
    Atomic(
        5,
        (
            Step.present(("ftm-epoch", 3, 7)),
            Step.absent(("lock", ANY)),
            Step.inp(("table", str, int)),
            Step.out(("table", "a", 2, (1.5, None))),
            Step.rdp((bytes,)),
        ),
    ),
    Atomic(2**63 - 1, (Step.out(("x",)),)),
    Atomic(6, (Step.scan(("table", ANY, int)), Step.delete((str,)))),
    Committed((None, ("table", "a", 1), None, (b"x", True))),
    Committed((Tuples((("a", 1), ("b", (2.5,)))), None, ("c",), Tuples())),
    Committed((Tuples(),)),
    Aborted(2, AbortReason.NO_MATCH),
    Aborted(MAX_STEPS - 1, AbortReason.TOO_LARGE),
]


def same_message(a: Message, b: Message) -> bool:
    """Equal messages, with tuples compared strictly (True is not 1, NaN is NaN)."""
    return (
        type(a) is type(b)
        and a.TYPE == b.TYPE
        and strict_equal(tuple(a.fields()), tuple(b.fields()))
    )


class FrameTests(SynchronousTestCase):
    """L{encode_frame} and L{FrameDecoder}."""

    def test_header_layout(self) -> None:
        """A frame is magic, version, type, request id, length and CRC, big-endian."""
        body = b"\x93\x01\x02\x03"
        data = encode_frame(10, 0x01020304, body)
        self.assertEqual(HEADER, 16)
        self.assertEqual(data[:2], MAGIC)
        self.assertEqual(data[2], VERSION)
        self.assertEqual(data[3], 10)
        self.assertEqual(data[4:8], b"\x01\x02\x03\x04")
        self.assertEqual(struct.unpack(">I", data[8:12])[0], len(body))
        self.assertEqual(struct.unpack(">I", data[12:16])[0], zlib.crc32(body))
        self.assertEqual(data[16:], body)

    def test_frames_in_one_chunk(self) -> None:
        """Several frames in one chunk come out in order, empty bodies included."""
        data = encode_frame(1, 1, b"a") + encode_frame(2, 2, b"") + encode_frame(3, 3, b"ccc")
        self.assertEqual(
            feed_all([data]), [Frame(1, 1, b"a"), Frame(2, 2, b""), Frame(3, 3, b"ccc")]
        )

    def test_byte_by_byte(self) -> None:
        """A frame fed one byte at a time comes out once, after its last byte."""
        data = encode_frame(5, 9, b"hello")
        decoder = FrameDecoder(MAX_BODY)
        for i, byte in enumerate(data[:-1]):
            self.assertEqual(decoder.feed(bytes([byte])), [])
            self.assertEqual(decoder.buffered, i + 1)
        self.assertEqual(decoder.feed(data[-1:]), [Frame(5, 9, b"hello")])
        self.assertEqual(decoder.buffered, 0)

    def test_empty_feed(self) -> None:
        """Feeding no bytes completes nothing and changes nothing."""
        decoder = FrameDecoder(MAX_BODY)
        self.assertEqual(decoder.feed(b""), [])
        decoder.feed(b"LP")
        self.assertEqual(decoder.feed(b""), [])
        self.assertEqual(decoder.buffered, 2)

    def test_bad_magic_is_fatal(self) -> None:
        """
        A header with the wrong magic loses the framing: a fatal BAD_MAGIC error after
        the frames before it, and nothing at all from then on.
        """
        good = encode_frame(1, 1, b"x")
        bad = b"XX" + good[2:]
        decoder = FrameDecoder(MAX_BODY)
        out = decoder.feed(good + bad + good)
        self.assertEqual(out[0], Frame(1, 1, b"x"))
        [error] = out[1:]
        assert isinstance(error, FrameError)
        self.assertEqual(
            (error.code, error.request_id, error.fatal), (ErrorCode.BAD_MAGIC, 0, True)
        )
        self.assertTrue(decoder.failed)
        self.assertEqual(decoder.buffered, 0)
        self.assertEqual(decoder.feed(good), [])

    def test_bad_version_is_fatal(self) -> None:
        """A header with another version is a fatal BAD_VERSION error for its request."""
        data = bytearray(encode_frame(1, 77, b"x"))
        data[2] = VERSION + 1
        [error] = feed_all([bytes(data), encode_frame(1, 1, b"x")])
        assert isinstance(error, FrameError)
        self.assertEqual(
            (error.code, error.request_id, error.fatal), (ErrorCode.BAD_VERSION, 77, True)
        )

    def test_oversize_refused_from_header(self) -> None:
        """
        A length over the limit is a fatal TOO_LARGE error as soon as the header is in,
        before any of the body; a length at the limit is accepted.
        """
        decoder = FrameDecoder(100)
        header = encode_frame(1, 5, b"x" * 101)[:HEADER]
        [error] = decoder.feed(header)
        assert isinstance(error, FrameError)
        self.assertEqual(
            (error.code, error.request_id, error.fatal), (ErrorCode.TOO_LARGE, 5, True)
        )
        self.assertEqual(
            feed_all([encode_frame(1, 5, b"x" * 100)], 100), [Frame(1, 5, b"x" * 100)]
        )

    def test_bad_crc_is_skipped(self) -> None:
        """A body that fails its CRC is a non-fatal BAD_CRC error; later frames are read."""
        data = bytearray(encode_frame(1, 3, b"abc"))
        data[-1] ^= 0x01
        out = feed_all([bytes(data) + encode_frame(2, 4, b"d")])
        self.assertEqual(
            out,
            [
                FrameError(ErrorCode.BAD_CRC, 3, "body CRC-32 mismatch", False),
                Frame(2, 4, b"d"),
            ],
        )

    def test_split_header_and_body(self) -> None:
        """A frame split inside its header and inside its body decodes the same."""
        data = encode_frame(1, 1, b"x" * 40) + encode_frame(2, 2, b"y")
        for cut in range(1, len(data)):
            self.assertEqual(feed_all([data[:cut], data[cut:]]), feed_all([data]), cut)

    @PROPERTIES
    @given(
        bodies=st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=40)), max_size=6),
        corrupt=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), max_size=3),
        cuts=st.lists(st.integers(0, 10**6), max_size=12),
        max_body=st.sampled_from([8, 40, MAX_BODY]),
    )
    def test_any_chunking_decodes_identically(
        self,
        bodies: list[tuple[int, bytes]],
        corrupt: list[tuple[int, int]],
        cuts: list[int],
        max_body: int,
    ) -> None:
        """
        A stream of frames (some corrupted) decodes to the same frames and errors
        however it is cut into chunks; nothing follows a fatal error.
        """
        data = bytearray(b"".join(encode_frame(t, i, body) for i, (t, body) in enumerate(bodies)))
        for where, mask in corrupt:
            if data:
                data[where % len(data)] ^= mask
        whole = feed_all([bytes(data)], max_body)
        self.assertEqual(feed_all(split(bytes(data), cuts), max_body), whole)
        self.assertEqual(feed_all([bytes([b]) for b in data], max_body), whole)
        fatal = [i for i, f in enumerate(whole) if isinstance(f, FrameError) and f.fatal]
        self.assertIn(fatal, ([], [len(whole) - 1]))
        if not corrupt and max_body == MAX_BODY:
            self.assertEqual(whole, [Frame(t, i, body) for i, (t, body) in enumerate(bodies)])


class FuzzTests(SynchronousTestCase):
    """Nothing but frames, frame errors and message errors ever comes out of the wire."""

    def assertOnlyExpectedOutcomes(self, chunks: list[bytes], max_body: int) -> None:
        decoder = FrameDecoder(max_body)
        limits = Limits(max_size=max(16, max_body // 2))
        for chunk in chunks:
            for item in decoder.feed(chunk):
                if isinstance(item, FrameError):
                    self.assertIsInstance(item.code, ErrorCode)
                    continue
                self.assertIsInstance(item, Frame)
                try:
                    message = decode_message(item, limits)
                except MessageError as e:
                    self.assertIsInstance(e.code, ErrorCode)
                    continue
                # Whatever decodes is a message that encodes again.
                encode_message(message, item.request_id)

    @PROPERTIES
    @given(
        st.lists(st.binary(max_size=64), max_size=8),
        st.sampled_from([0, 16, 1024, MAX_BODY]),
    )
    def test_arbitrary_bytes(self, chunks: list[bytes], max_body: int) -> None:
        """Arbitrary bytes in arbitrary chunks give only frames and errors."""
        self.assertOnlyExpectedOutcomes(chunks, max_body)

    @PROPERTIES
    @given(
        st.lists(
            st.tuples(st.integers(0, 40), st.integers(0, 2**32 - 1), st.binary(max_size=48)),
            max_size=6,
        ),
        st.sampled_from([16, 1024, MAX_BODY]),
    )
    def test_valid_frames_arbitrary_bodies(
        self, frames: list[tuple[int, int, bytes]], max_body: int
    ) -> None:
        """Well-framed arbitrary bodies of every type give only messages and errors."""
        data = b"".join(encode_frame(t, rid, body) for t, rid, body in frames)
        self.assertOnlyExpectedOutcomes([data], max_body)

    @PROPERTIES
    @given(
        st.lists(st.sampled_from(EXAMPLES), min_size=1, max_size=5),
        st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=4),
        st.lists(st.integers(0, 10**6), max_size=8),
        st.sampled_from([16, 1024, MAX_BODY]),
    )
    def test_corrupted_messages(
        self,
        messages: list[Message],
        corrupt: list[tuple[int, int]],
        cuts: list[int],
        max_body: int,
    ) -> None:
        """Valid messages with bytes flipped anywhere, in any chunks, fail cleanly."""
        data = bytearray(b"".join(encode_message(m, i) for i, m in enumerate(messages)))
        for where, mask in corrupt:
            data[where % len(data)] ^= mask
        self.assertOnlyExpectedOutcomes(split(bytes(data), cuts), max_body)

    @PROPERTIES
    @given(
        st.sampled_from(sorted({m.TYPE for m in EXAMPLES})),
        st.recursive(
            st.one_of(
                st.integers(-(2**63), 2**64 - 1),
                st.floats(),
                st.text(max_size=4),
                st.binary(max_size=4),
                st.booleans(),
                st.none(),
                st.sampled_from([int, float, str, bytes, bool, ANY]),
            ),
            lambda c: st.one_of(
                st.lists(c, max_size=4),
                st.dictionaries(st.text(max_size=3), c, max_size=3),
            ),
            max_leaves=12,
        ),
    )
    def test_well_formed_msgpack_of_any_shape(self, type_: int, body: Any) -> None:
        """Valid msgpack bodies of any shape, for every type, give messages or errors."""
        self.assertOnlyExpectedOutcomes([encode_frame(type_, 1, packb(body))], MAX_BODY)


class MessageTests(SynchronousTestCase):
    """L{encode_message} and L{decode_message}."""

    def assertMessageError(
        self, code: ErrorCode, frame: Frame, limits: Limits = DEFAULT_LIMITS
    ) -> None:
        e = self.assertRaises(MessageError, decode_message, frame, limits)
        self.assertEqual(e.code, code, e.message)
        self.assertEqual(str(e), e.message)

    def test_round_trip_every_type(self) -> None:
        """Every message type, encoded and decoded, comes back equal."""
        types = set()
        for message in EXAMPLES:
            decoded = round_trip(message)
            self.assertEqual(decoded, message)
            self.assertTrue(same_message(decoded, message), f"{decoded!r} != {message!r}")
            types.add(type(message))
        self.assertEqual(types, set(Message.__args__))

    def test_type_codes(self) -> None:
        """The message type codes are the wire contract."""
        codes = {type(m).__name__: m.TYPE for m in EXAMPLES if not isinstance(m, Take)}
        self.assertEqual(
            codes,
            {
                "Hello": 1,
                "Welcome": 2,
                "Goodbye": 4,
                "Gone": 5,
                "Atomic": 6,
                "Committed": 28,
                "Aborted": 29,
                "Out": 10,
                "Cancel": 15,
                "StatsRequest": 16,
                "CheckpointRequest": 17,
                "Ping": 19,
                "Pong": 27,
                "RecoverRequest": 18,
                "Stored": 20,
                "Matched": 21,
                "NoMatch": 22,
                "Cancelled": 23,
                "TimedOut": 24,
                "Stats": 25,
                "Recovered": 26,
                "Error": 30,
            },
        )
        any_template = make_template((ANY,))
        takes = {
            k: Take(k, 1, any_template).TYPE
            for k in Kind
            if k not in (Kind.OUT, Kind.CHECKPOINT, Kind.FORGET, Kind.ATOMIC)
        }
        self.assertEqual(takes, {Kind.IN: 11, Kind.RD: 12, Kind.INP: 13, Kind.RDP: 14})

    def test_error_codes(self) -> None:
        """The error codes are the wire contract."""
        self.assertEqual(
            {c.name: int(c) for c in ErrorCode},
            {
                "BAD_MAGIC": 1,
                "BAD_VERSION": 2,
                "BAD_CRC": 3,
                "TOO_LARGE": 4,
                "UNKNOWN_TYPE": 5,
                "MALFORMED": 6,
                "BAD_TUPLE": 7,
                "BAD_TEMPLATE": 8,
                "NOT_READY": 9,
                "STALE_EVENT": 10,
                "BUSY": 11,
                "INTERNAL": 12,
                "UNEXPECTED": 13,
                "DUPLICATE_REQUEST": 14,
                "UNAVAILABLE": 15,
            },
        )

    def test_request_id_kept(self) -> None:
        """The request id travels in the header, up to 32 bits."""
        for rid in (0, 1, 2**32 - 1):
            [frame] = feed_all([encode_message(Stored(), rid)])
            assert isinstance(frame, Frame)
            self.assertEqual(frame.request_id, rid)

    def test_take_timeout(self) -> None:
        """A timeout is None or a non-negative number; an integer comes back a float."""
        template = ["a", int]
        decoded = decode_message(frame_of(11, (1, template, 3)))
        assert isinstance(decoded, Take)
        self.assertEqual(repr(decoded.timeout), "3.0")
        self.assertEqual(decoded.template, make_template(template))
        for bad in (-1, -0.5, float("nan"), float("inf"), True, "3", (1,)):
            self.assertMessageError(ErrorCode.MALFORMED, frame_of(11, (1, template, bad)))

    def test_checkpoint_messages_checked(self) -> None:
        """Checkpoint states are bytes within the tuple size limit; RECOVERED is whole."""
        self.assertMessageError(ErrorCode.MALFORMED, frame_of(17, (1, "text")))
        self.assertMessageError(ErrorCode.MALFORMED, frame_of(17, (-1, b"")))
        small = Limits(max_size=16)
        self.assertMessageError(ErrorCode.TOO_LARGE, frame_of(17, (1, bytes(17))), small)
        self.assertMessageError(ErrorCode.MALFORMED, frame_of(26, (1, None)))
        self.assertMessageError(ErrorCode.MALFORMED, frame_of(26, (None, b"s")))
        self.assertMessageError(ErrorCode.MALFORMED, frame_of(18, (1,)))
        self.assertMessageError(ErrorCode.MALFORMED, frame_of(19, (1,)))
        self.assertMessageError(ErrorCode.MALFORMED, frame_of(4, ()))
        self.assertMessageError(ErrorCode.MALFORMED, frame_of(4, (-1,)))
        self.assertMessageError(ErrorCode.MALFORMED, frame_of(27, (1,)))

    def test_unknown_type(self) -> None:
        """A frame of an unknown type is UNKNOWN_TYPE."""
        for type_ in (0, 3, 7, 31, 255):
            self.assertMessageError(ErrorCode.UNKNOWN_TYPE, frame_of(type_, ()))

    def test_not_msgpack(self) -> None:
        """A body that is not exactly one msgpack value is MALFORMED."""
        for body in (b"", b"\xc1", b"\x92\x01", b"\x90\x90", msgpack.packb({1: 2})):
            self.assertMessageError(ErrorCode.MALFORMED, Frame(20, 1, body))

    def test_wrong_shape(self) -> None:
        """A body that is not an array of the message's fields is MALFORMED."""
        for type_, body in [
            (1, (None,)),
            (1, {"pid": None}),
            (10, (1,)),
            (10, (1, ("a",), 3)),
            (11, (1, ("a",))),
            (15, ()),
            (16, (1,)),
            (2, (1, "s")),
            (20, None),
            (21, ()),
            (22, (1,)),
            (23, "x"),
            (24, (None,)),
            (25, ()),
            (30, (1,)),
        ]:
            self.assertMessageError(ErrorCode.MALFORMED, frame_of(type_, body))

    def test_bad_integers(self) -> None:
        """Events, pids, targets and sizes must be integers in range, and not bool."""
        for bad in (-1, 2**63, True, 1.0, "1", None):
            self.assertMessageError(ErrorCode.MALFORMED, frame_of(10, (bad, ("a",))))
            self.assertMessageError(ErrorCode.MALFORMED, frame_of(12, (bad, ("a",), None)))
        for bad in (0, -1, 2**63, True):
            self.assertMessageError(ErrorCode.MALFORMED, frame_of(1, (bad, "n")))
            self.assertMessageError(ErrorCode.MALFORMED, frame_of(2, (bad, "s", 100)))
        for bad in (-1, 2**32, False):
            self.assertMessageError(ErrorCode.MALFORMED, frame_of(15, (bad,)))
        self.assertMessageError(ErrorCode.MALFORMED, frame_of(2, (1, "s", -1)))

    def test_bad_strings(self) -> None:
        """Names and messages must be str, not bytes or anything else."""
        self.assertMessageError(ErrorCode.MALFORMED, frame_of(1, (None, b"n")))
        self.assertMessageError(ErrorCode.MALFORMED, frame_of(2, (1, 5, 100)))
        self.assertMessageError(ErrorCode.MALFORMED, frame_of(30, (1, None)))

    def test_bad_tuples(self) -> None:
        """A tuple that is not a valid LiPS tuple is BAD_TUPLE, in OUT and MATCHED."""
        for bad in (
            (),
            "abc",
            {"a": 1},
            (ANY,),
            (int,),
            (1, (float,)),
            (2**63,),
            ({"a": 1},),
            (msgpack.Timestamp(1, 0),),
            (msgpack.ExtType(9, b""),),
            (1, (msgpack.ExtType(1, b"x"),)),
        ):
            self.assertMessageError(ErrorCode.BAD_TUPLE, frame_of(10, (1, bad)))
            self.assertMessageError(ErrorCode.BAD_TUPLE, frame_of(21, (bad,)))

    def test_bad_templates(self) -> None:
        """A template that is not a valid LiPS template is BAD_TEMPLATE."""
        for bad in (
            (),
            "abc",
            5,
            ({"a": 1},),
            (2**63,),
            (msgpack.Timestamp(1, 0),),
            (msgpack.ExtType(9, b""),),
            (ANY, (msgpack.ExtType(2, b"x"),)),
            (msgpack.ExtType(1, b"q"),),
        ):
            for type_ in (11, 12, 13, 14):
                self.assertMessageError(ErrorCode.BAD_TEMPLATE, frame_of(type_, (1, bad, None)))

    def test_limits_applied(self) -> None:
        """Tuples and templates are checked against the limits the decoder is given."""
        limits = Limits(max_arity=2, max_depth=2)
        self.assertMessageError(ErrorCode.BAD_TUPLE, frame_of(10, (1, (1, 2, 3))), limits)
        self.assertMessageError(ErrorCode.BAD_TUPLE, frame_of(10, (1, (((1,),),))), limits)
        self.assertMessageError(
            ErrorCode.BAD_TEMPLATE, frame_of(13, (1, (ANY, ANY, ANY), None)), limits
        )
        self.assertEqual(round_trip(Out(1, (1, (2,))), limits=limits), Out(1, (1, (2,))))

    def test_encoded_size_limit(self) -> None:
        """
        A tuple whose encoding is larger than max_size is TOO_LARGE; one that fits is
        accepted even when the whole body is larger.
        """
        limits = Limits(max_size=64)
        # ("x" * 60,) encodes to 1 + 2 + 60 = 63 bytes, and its OUT body to 65.
        fits, over = ("x" * 61,), ("x" * 62,)
        self.assertEqual(len(packb(fits)), 64)
        self.assertGreater(len(packb((1, fits))), 64)
        self.assertEqual(round_trip(Out(1, fits), limits=limits), Out(1, fits))
        self.assertEqual(round_trip(Matched(fits), limits=limits), Matched(fits))
        self.assertMessageError(ErrorCode.TOO_LARGE, frame_of(10, (1, over)), limits)
        self.assertMessageError(ErrorCode.TOO_LARGE, frame_of(21, (over,)), limits)

    def test_stats_values(self) -> None:
        """STATS maps str names to int, float or str values; anything else is MALFORMED."""
        for bad in ((1, 2), {"a": None}, {"a": (1,)}, {"a": True}, {b"a": 1}, {"a": b"x"}):
            self.assertMessageError(ErrorCode.MALFORMED, frame_of(25, (bad,)))

    def test_unknown_error_code(self) -> None:
        """An ERROR with a code this side does not know decodes as INTERNAL."""
        for code in (0, 99, -1, None, "BAD_CRC"):
            decoded = decode_message(frame_of(30, (code, "why")))
            self.assertEqual(decoded, Error(ErrorCode.INTERNAL, "why"))

    def test_message_error(self) -> None:
        """A MessageError carries its code and text."""
        e = MessageError(ErrorCode.MALFORMED, "no")
        self.assertEqual((e.code, e.message, str(e)), (ErrorCode.MALFORMED, "no", "no"))

    @PROPERTIES
    @given(st.integers(0, 2**63 - 1), lips_tuples, st.integers(0, 2**32 - 1))
    def test_out_and_matched_round_trip(self, event: int, values: Any, rid: int) -> None:
        """Every tuple travels in OUT and MATCHED strictly unchanged."""
        for message in (Out(event, values), Matched(values)):
            decoded = round_trip(message, rid)
            self.assertTrue(same_message(decoded, message), f"{decoded!r} != {message!r}")

    @PROPERTIES
    @given(
        st.sampled_from([Kind.IN, Kind.RD, Kind.INP, Kind.RDP]),
        st.integers(0, 2**63 - 1),
        lips_templates,
        st.one_of(st.none(), st.floats(0, 1e9)),
    )
    def test_take_round_trip(
        self, kind: Kind, event: int, fields: tuple[Any, ...], timeout: float | None
    ) -> None:
        """Every template travels in IN, RD, INP and RDP unchanged."""
        message = Take(kind, event, make_template(fields), timeout)
        decoded = round_trip(message)
        assert isinstance(decoded, Take)
        self.assertEqual(decoded, message)
        self.assertTrue(strict_equal(decoded.template.fields, message.template.fields))

    @PROPERTIES
    @given(
        st.dictionaries(
            st.text(max_size=8),
            st.one_of(st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False), st.text()),
            max_size=8,
        )
    )
    def test_stats_round_trip(self, values: dict[str, int | float | str]) -> None:
        """Every map of counters travels in STATS unchanged."""
        self.assertTrue(same_message(round_trip(Stats(values)), Stats(values)))


class AtomicMessageTests(SynchronousTestCase):
    """The ATOMIC request and its answers, COMMITTED and ABORTED, on the wire."""

    def assertMessageError(
        self, code: ErrorCode, frame: Frame, limits: Limits = DEFAULT_LIMITS
    ) -> None:
        e = self.assertRaises(MessageError, decode_message, frame, limits)
        self.assertEqual(e.code, code, e.message)

    def test_codes(self) -> None:
        """The step ops and abort reasons are the wire contract."""
        self.assertEqual(
            {op.name: int(op) for op in StepOp},
            {"OUT": 1, "INP": 2, "RDP": 3, "ABSENT": 4, "PRESENT": 5, "SCAN": 6, "DELETE": 7},
        )
        self.assertEqual(
            {r.name: int(r) for r in AbortReason}, {"NO_MATCH": 1, "MATCHED": 2, "TOO_LARGE": 3}
        )

    def test_body(self) -> None:
        """An ATOMIC body is [event, [[op, tuple or template fields], ...]]."""
        message = Atomic(3, (Step.inp(("a", int)), Step.out(("b",))))
        [frame] = feed_all([encode_message(message, 1)])
        assert isinstance(frame, Frame)
        self.assertEqual(frame.body, packb([3, [[2, ("a", int)], [1, ("b",)]]]))

    def test_malformed_steps(self) -> None:
        """Steps of the wrong shape, an unknown op or none at all are MALFORMED."""
        for steps in (
            [],
            "steps",
            [[1]],
            [[1, ("a",), 3]],
            [["out", ("a",)]],
            [[9, ("a",)]],
            [[0, ("a",)]],
            [(True, ("a",))],
        ):
            self.assertMessageError(ErrorCode.MALFORMED, frame_of(Atomic.TYPE, [1, steps]))
        self.assertMessageError(ErrorCode.MALFORMED, frame_of(Atomic.TYPE, [1]))
        self.assertMessageError(ErrorCode.MALFORMED, frame_of(Atomic.TYPE, [-1, [[1, ("a",)]]]))

    def test_bad_tuples_and_templates(self) -> None:
        """An out step's tuple and another step's template are validated as ever."""
        self.assertMessageError(ErrorCode.BAD_TUPLE, frame_of(Atomic.TYPE, [1, [[1, (int,)]]]))
        self.assertMessageError(ErrorCode.BAD_TUPLE, frame_of(Atomic.TYPE, [1, [[1, ()]]]))
        self.assertMessageError(ErrorCode.BAD_TEMPLATE, frame_of(Atomic.TYPE, [1, [[2, []]]]))
        self.assertMessageError(ErrorCode.BAD_TEMPLATE, frame_of(Atomic.TYPE, [1, [[4, 5]]]))

    def test_bounds(self) -> None:
        """More than MAX_STEPS steps, or steps together past the size limit: TOO_LARGE."""
        many = [[1, ("a",)]] * (MAX_STEPS + 1)
        self.assertMessageError(ErrorCode.TOO_LARGE, frame_of(Atomic.TYPE, [1, many]))
        limits = Limits(max_size=64)
        halves = [[1, ("x" * 40,)], [1, ("y" * 40,)]]
        self.assertMessageError(ErrorCode.TOO_LARGE, frame_of(Atomic.TYPE, [1, halves]), limits)
        [one] = halves[:1]
        self.assertIsInstance(decode_message(frame_of(Atomic.TYPE, [1, [one]]), limits), Atomic)

    def test_malformed_answers(self) -> None:
        """COMMITTED and ABORTED bodies are checked like any other."""
        bad: list[Any] = [[], "x", [1], [[]], [None] * (MAX_STEPS + 1)]
        for results in bad:
            e = self.assertRaises(
                MessageError, decode_message, frame_of(Committed.TYPE, [results])
            )
            self.assertIn(e.code, (ErrorCode.MALFORMED, ErrorCode.BAD_TUPLE))
        for body in ([0, 9], [0, "NO_MATCH"], [-1, 1], [MAX_STEPS, 1], [0]):
            self.assertMessageError(ErrorCode.MALFORMED, frame_of(Aborted.TYPE, body))

    def test_committed_body(self) -> None:
        """
        COMMITTED without scan or delete results is C{[results]}, as it always was;
        with them, C{[results, lists]}: their places in C{results} are nil, and their
        tuples are pairs C{[step, [tuple, ...]]} in step order.
        """
        plain = Committed((None, ("a", 1)))
        [frame] = feed_all([encode_message(plain, 1)])
        assert isinstance(frame, Frame)
        self.assertEqual(frame.body, packb([[None, ("a", 1)]]))
        listed = Committed((Tuples((("a", 1), ("a", 2))), ("b",), Tuples()))
        [frame] = feed_all([encode_message(listed, 1)])
        assert isinstance(frame, Frame)
        self.assertEqual(
            frame.body, packb([[None, ("b",), None], [[0, [("a", 1), ("a", 2)]], [2, []]]])
        )
        self.assertEqual(decode_message(frame), listed)

    def test_malformed_lists(self) -> None:
        """
        A COMMITTED list naming no step, a step out of range or out of order, a step
        that has a tuple, or that is not a pair of a step and an array is MALFORMED;
        its tuples are validated as any tuple.
        """
        results = [None, ("b",), None]
        for lists in (
            [],
            "lists",
            None,
            [[0]],
            [[0, [("a",)], 1]],
            [["0", []]],
            [[True, []]],
            [[-1, []]],
            [[3, []]],
            [[1, []]],
            [[2, []], [0, []]],
            [[0, []], [0, []]],
            [[0, "tuples"]],
        ):
            self.assertMessageError(
                ErrorCode.MALFORMED, frame_of(Committed.TYPE, [results, lists])
            )
        self.assertMessageError(
            ErrorCode.MALFORMED, frame_of(Committed.TYPE, [results, [[0, []]], []])
        )
        self.assertMessageError(
            ErrorCode.BAD_TUPLE, frame_of(Committed.TYPE, [results, [[0, [(int,)]]]])
        )
        self.assertMessageError(
            ErrorCode.BAD_TUPLE, frame_of(Committed.TYPE, [results, [[0, [()]]]])
        )
        self.assertMessageError(
            ErrorCode.BAD_TUPLE, frame_of(Committed.TYPE, [results, [[0, [5]]]])
        )

    def test_list_bounds(self) -> None:
        """
        A list of more than MAX_SCAN tuples is MALFORMED (no server sends one); tuples
        past the size limit are TOO_LARGE, as in any answer.
        """
        many = [[0, [(n,) for n in range(MAX_SCAN + 1)]]]
        self.assertMessageError(ErrorCode.MALFORMED, frame_of(Committed.TYPE, [[None], many]))
        most = [[0, [(n,) for n in range(MAX_SCAN)]]]
        decoded = decode_message(frame_of(Committed.TYPE, [[None], most]))
        assert isinstance(decoded, Committed)
        self.assertEqual(len(decoded.results[0] or ()), MAX_SCAN)
        limits = Limits(max_size=64)
        self.assertMessageError(
            ErrorCode.TOO_LARGE, frame_of(Committed.TYPE, [[None], [[0, [("x" * 80,)]]]]), limits
        )
