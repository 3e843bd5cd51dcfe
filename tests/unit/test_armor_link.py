"""
Tests for the frames of the daemon link and the local link (L{lips.armor.Frame},
L{lips.armor.FrameDecoder}) and the pieces of their handshakes.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from lips.armor import (
    HANDSHAKE_BODY,
    MAX_FRAME_BODY,
    MAX_ID_LENGTH,
    NONCE_SIZE,
    TOKEN_SIZE,
    ArmorHello,
    Auth,
    DaemonHello,
    Frame,
    FrameDecoder,
    FrameError,
    FrameFault,
    FrameKind,
    HandshakeError,
    LinkError,
    Message,
    MessageError,
    armor_id,
    check_proof,
    close_reason,
    encode,
    encode_frame,
    link_key,
    ping_seq,
    proof,
)
from lips.armor._link import HEADER

labels = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,6}[a-z0-9])?", fullmatch=True)
kinds = st.from_regex(r"[a-z](?:[a-z0-9-]{0,6}[a-z0-9])?", fullmatch=True)
ids = st.builds(lambda k, ls: ".".join((k, *ls)), kinds, st.lists(labels, max_size=3))
names = st.from_regex(r"[a-z][a-z0-9]{0,8}(?:-[a-z0-9]{1,5}){0,2}", fullmatch=True)
plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=10,
)
messages = st.builds(
    Message.of,
    names,
    ids,
    ids,
    st.integers(1, 2**63 - 1),
    plain,
)
control_kinds = st.sampled_from([k for k in FrameKind if k is not FrameKind.MESSAGE])
control_frames = st.builds(
    Frame, control_kinds, st.just("") | ids, st.just("") | ids, st.binary(max_size=200)
)
frames = st.one_of(messages.map(Frame.of_message), control_frames)


def decode_all(data: bytes, cuts: list[int] | None = None) -> list[Frame | FrameError]:
    decoder = FrameDecoder()
    out: list[Frame | FrameError] = []
    last = 0
    for cut in sorted(cuts or []):
        out += decoder.feed(data[last:cut])
        last = cut
    out += decoder.feed(data[last:])
    return out


class FrameRoundTripTests(SynchronousTestCase):
    """What encode_frame writes, the decoder reads back, however the stream is cut."""

    @settings(max_examples=200, deadline=None)
    @given(st.lists(frames, min_size=1, max_size=5), st.data())
    def test_round_trip(self, sent: list[Frame], data: st.DataObject) -> None:
        """A stream of frames, fed in arbitrary pieces, decodes to the same frames."""
        stream = b"".join(encode_frame(f) for f in sent)
        cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=8))
        self.assertEqual(decode_all(stream, cuts), sent)

    @settings(max_examples=100, deadline=None)
    @given(messages)
    def test_message_frame_carries_the_message(self, message: Message) -> None:
        """A MESSAGE frame's header names the message's ids; its body is encode(message)."""
        frame = Frame.of_message(message)
        self.assertEqual((frame.source, frame.destination), (message.source, message.destination))
        self.assertEqual(frame.body, encode(message))
        (decoded,) = decode_all(encode_frame(frame))
        assert isinstance(decoded, Frame)
        self.assertEqual(decoded.message(), message)

    def test_layout(self) -> None:
        """The header is magic, version, kind, the id lengths, the body length, the CRC."""
        frame = Frame(FrameKind.PING, "daemon.n1", "echo.a", b"\x07")
        data = encode_frame(frame)
        magic, version, kind, slen, dlen, blen = struct.unpack_from("!2sBBBBI", data)
        self.assertEqual((magic, version, kind, slen, dlen, blen), (b"LA", 1, 5, 9, 6, 1))
        crc = int.from_bytes(data[10:14], "big")
        self.assertEqual(crc, zlib.crc32(data[:10] + data[14:]))
        self.assertEqual(data[14:], b"daemon.n1echo.a\x07")
        self.assertEqual(len(data), HEADER + 9 + 6 + 1)


class FrameMutationTests(SynchronousTestCase):
    """No corrupted frame is ever taken for a frame: the CRC covers every byte."""

    @settings(max_examples=300, deadline=None)
    @given(frames, st.data())
    def test_any_byte_changed(self, frame: Frame, data: st.DataObject) -> None:
        """
        Changing any one byte of an encoded frame makes the decoder refuse it, or wait
        for bytes that never come (a length grew): it never yields a frame.
        """
        encoded = bytearray(encode_frame(frame))
        at = data.draw(st.integers(0, len(encoded) - 1))
        encoded[at] ^= data.draw(st.integers(1, 255))
        out = decode_all(bytes(encoded))
        self.assertEqual([f for f in out if isinstance(f, Frame)], [])
        if out:
            (error,) = out
            self.assertIsInstance(error, FrameError)

    @settings(max_examples=100, deadline=None)
    @given(frames, st.integers(0, 31))
    def test_bit_flip_in_a_later_frame(self, frame: Frame, bit: int) -> None:
        """A good frame before a corrupted one is delivered; the decoder stops at the bad one."""
        good = encode_frame(frame)
        bad = bytearray(encode_frame(frame))
        at = HEADER - 4 + bit // 8  # within the CRC itself
        bad[at] ^= 1 << (bit % 8)
        out = decode_all(good + bytes(bad) + good)
        self.assertEqual(out[0], frame)
        self.assertIsInstance(out[1], FrameError)
        assert isinstance(out[1], FrameError)
        self.assertIs(out[1].fault, FrameFault.CRC)
        self.assertEqual(len(out), 2)


class FrameRefusalTests(SynchronousTestCase):
    """Each kind of bad frame is refused with its own fault, and the stream stops."""

    def refused(self, data: bytes, max_body: int = MAX_FRAME_BODY) -> FrameError:
        decoder = FrameDecoder(max_body)
        out = decoder.feed(data)
        self.assertTrue(decoder.failed)
        self.assertEqual(decoder.feed(encode_frame(Frame(FrameKind.PING))), [])
        error = out[-1]
        assert isinstance(error, FrameError)
        return error

    def frame_bytes(
        self,
        *,
        magic: bytes = b"LA",
        version: int = 1,
        kind: int = 5,
        source: bytes = b"",
        destination: bytes = b"",
        body: bytes = b"",
        body_len: int | None = None,
    ) -> bytes:
        n = len(body) if body_len is None else body_len
        head = struct.pack("!2sBBBBI", magic, version, kind, len(source), len(destination), n)
        crc = zlib.crc32(head + source + destination + body)
        return head + crc.to_bytes(4, "big") + source + destination + body

    def test_faults(self) -> None:
        """Magic, version, kind, ids, size, CRC and body each have a fault of their own."""
        message = Message.of("hello", "sm.a", "echo.a", 1, "hi")
        cases = [
            (self.frame_bytes(magic=b"XX"), FrameFault.MAGIC),
            (self.frame_bytes(version=2), FrameFault.VERSION),
            (self.frame_bytes(kind=99), FrameFault.KIND),
            (self.frame_bytes(source=b"Not-An-Id"), FrameFault.ID),
            (self.frame_bytes(source=b"\xff\xfe"), FrameFault.ID),
            (self.frame_bytes(body=b"x" * 65), FrameFault.TOO_LARGE),
            (
                self.frame_bytes(body=b"garbage", kind=4, source=b"sm.a", destination=b"echo.a"),
                FrameFault.BODY,
            ),
            (
                self.frame_bytes(
                    body=encode(message), kind=4, source=b"sm.b", destination=b"echo.a"
                ),
                FrameFault.BODY,
            ),
        ]
        for data, fault in cases:
            self.assertIs(self.refused(data, max_body=64).fault, fault, data)
        crc = bytearray(self.frame_bytes(body=b"abc"))
        crc[-1] ^= 1
        self.assertIs(self.refused(bytes(crc)).fault, FrameFault.CRC)

    def test_an_id_longer_than_any_is_refused_from_the_header(self) -> None:
        """An id length over MAX_ID_LENGTH is refused before its bytes arrive."""
        head = struct.pack("!2sBBBBI", b"LA", 1, 5, MAX_ID_LENGTH + 1, 0, 0) + b"\0" * 4
        self.assertIs(self.refused(head).fault, FrameFault.ID)

    def test_size_is_refused_before_the_body_arrives(self) -> None:
        """A body over the bound is refused from the header: nothing of it is buffered."""
        decoder = FrameDecoder(HANDSHAKE_BODY)
        (error,) = decoder.feed(self.frame_bytes(body_len=HANDSHAKE_BODY + 1)[:HEADER])
        assert isinstance(error, FrameError)
        self.assertIs(error.fault, FrameFault.TOO_LARGE)
        self.assertEqual(decoder.buffered, 0)

    def test_limit(self) -> None:
        """The bound can be raised after a handshake, never above MAX_FRAME_BODY."""
        decoder = FrameDecoder(10)
        decoder.limit(100)
        frame = Frame(FrameKind.PING, body=b"x" * 50)
        self.assertEqual(decoder.feed(encode_frame(frame)), [frame])
        self.assertRaises(ValueError, decoder.limit, MAX_FRAME_BODY + 1)

    def test_encoding_refuses_a_body_too_large(self) -> None:
        """encode_frame refuses a body over MAX_FRAME_BODY."""
        with self.assertRaises(FrameError):
            encode_frame(Frame(FrameKind.PING, body=b"x" * (MAX_FRAME_BODY + 1)))

    def test_frame_ids(self) -> None:
        """A frame's ids are ARMOR ids or empty."""
        self.assertRaises(MessageError, Frame, FrameKind.PING, "Bad Id")
        with self.assertRaises(FrameError):
            Frame(FrameKind.PING).message()

    def test_errors_are_link_errors(self) -> None:
        """FrameError and HandshakeError are LinkErrors (ValueErrors)."""
        self.assertTrue(issubclass(FrameError, LinkError))
        self.assertTrue(issubclass(HandshakeError, LinkError))
        self.assertTrue(issubclass(LinkError, ValueError))


class HandshakeTests(SynchronousTestCase):
    """The hellos and the proofs of the two links."""

    def test_daemon_hello(self) -> None:
        """A daemon's hello round-trips; a bad one is a HandshakeError."""
        hello = DaemonHello("n1", b"\1" * NONCE_SIZE)
        self.assertEqual(DaemonHello.from_frame(hello.frame()), hello)
        bad = [
            DaemonHello("N 1", b"\1" * NONCE_SIZE).frame(),
            DaemonHello("n1", b"short").frame(),
            Frame.control(FrameKind.HELLO, {"role": "armor", "node": "n1", "nonce": b"x" * 32}),
            Frame.control(FrameKind.HELLO, {"role": "daemon"}),
            Frame.control(FrameKind.AUTH, {"proof": b"x" * 32}),
            Frame(FrameKind.HELLO, body=b"\xc1"),
        ]
        for frame in bad:
            self.assertRaises(HandshakeError, DaemonHello.from_frame, frame)

    def test_armor_hello(self) -> None:
        """An ARMOR process's hello round-trips; a bad one is a HandshakeError."""
        hello = ArmorHello(armor_id("echo.a"), 2, b"\2" * TOKEN_SIZE)
        self.assertEqual(ArmorHello.from_frame(hello.frame()), hello)
        for value in [
            {"role": "armor", "armor": "echo.a", "incarnation": 0, "token": b"\2" * 16},
            {"role": "armor", "armor": "echo.a", "incarnation": True, "token": b"\2" * 16},
            {"role": "armor", "armor": "ECHO", "incarnation": 1, "token": b"\2" * 16},
            {"role": "armor", "armor": "echo.a", "incarnation": 1, "token": b"\2"},
        ]:
            frame = Frame.control(FrameKind.HELLO, value)
            self.assertRaises(HandshakeError, ArmorHello.from_frame, frame)

    def test_proofs(self) -> None:
        """
        A proof checks only with the same key, role, names and nonces: the other side's
        proof is not this side's (no reflection), another connection's nonces do not
        check (no replay), and another key does not check.
        """
        key = link_key(b"k" * 32)
        dn, an = b"d" * NONCE_SIZE, b"a" * NONCE_SIZE
        mine = proof(key, dialer=True, own="n1", peer="n2", dialer_nonce=dn, acceptor_nonce=an)
        check_proof(
            key, Auth(mine), dialer=True, own="n1", peer="n2", dialer_nonce=dn, acceptor_nonce=an
        )
        changes: list[dict[str, Any]] = [
            {"dialer": False},
            {"own": "n3"},
            {"peer": "n3"},
            {"dialer_nonce": b"e" * NONCE_SIZE},
            {"acceptor_nonce": b"e" * NONCE_SIZE},
        ]
        for changed in changes:
            kwargs: dict[str, Any] = {
                "dialer": True,
                "own": "n1",
                "peer": "n2",
                "dialer_nonce": dn,
                "acceptor_nonce": an,
                **changed,
            }
            with self.assertRaises(HandshakeError, msg=str(changed)):
                check_proof(key, Auth(mine), **kwargs)
        with self.assertRaises(HandshakeError):
            check_proof(
                link_key(b"j" * 32),
                Auth(mine),
                dialer=True,
                own="n1",
                peer="n2",
                dialer_nonce=dn,
                acceptor_nonce=an,
            )
        self.assertNotEqual(key, b"k" * 32)
        self.assertEqual(Auth.from_frame(Auth(mine).frame()), Auth(mine))

    def test_ping_and_close(self) -> None:
        """A PING carries a number; a CLOSE a reason (unreadable ones say so)."""
        self.assertEqual(ping_seq(Frame.control(FrameKind.PING, 7)), 7)
        self.assertRaises(LinkError, ping_seq, Frame.control(FrameKind.PING, "x"))
        self.assertRaises(LinkError, ping_seq, Frame(FrameKind.PING, body=b"\xc1"))
        self.assertEqual(close_reason(Frame.control(FrameKind.CLOSE, "bye")), "bye")
        self.assertEqual(close_reason(Frame(FrameKind.CLOSE, body=b"\xc1")), "(unreadable reason)")
