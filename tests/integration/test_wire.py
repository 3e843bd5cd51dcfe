# mypy: disable-error-code="untyped-decorator"
# (pytest-twisted ships no type hints, so its decorators are untyped.)
"""
Bad input over a real socket: a raw peer writes broken frames to a twistd MessageServer,
which answers with typed errors, closes the connection only when the framing is lost,
counts every error, and goes on serving everyone else.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

import msgpack
import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import deferLater

from lips.space import Kind
from lips.tuples import make_template, packb
from lips.wire import (
    MAGIC,
    VERSION,
    Error,
    ErrorCode,
    Hello,
    Matched,
    Out,
    Stored,
    Take,
    Welcome,
    encode_frame,
    encode_message,
)
from tests.integration._support import RawPeer, TwistdServer, expect_error, within

OUT_TYPE = Out.TYPE
IN_TYPE = Take(Kind.IN, 1, make_template(("x",))).TYPE
#: The frame header, packed by hand so that tests can put wrong values in it.
FRAME_HEADER = struct.Struct("!2sBBIII")


def hello(rid: int) -> bytes:
    """A valid HELLO frame asking for a new process id."""
    return encode_message(Hello(None, "raw"), rid)


def out(event: int, values: tuple[Any, ...], rid: int) -> bytes:
    """A valid OUT frame."""
    return encode_message(Out(event, values), rid)


def header(
    type_: int,
    rid: int,
    length: int,
    crc: int = 0,
    *,
    magic: bytes = MAGIC,
    version: int = VERSION,
) -> bytes:
    """A frame header with whatever values a test wants, right or wrong."""
    return FRAME_HEADER.pack(magic, version, type_, rid, length, crc)


async def raw_session(server: TwistdServer) -> RawPeer:
    """A raw connection that has said HELLO."""
    peer = await RawPeer.connect(server)
    assert isinstance(await peer.request(hello(1), 1), Welcome)
    return peer


async def still_works(peer: RawPeer, event: int, rid: int) -> None:
    """The connection C{peer} (past HELLO) still stores and takes tuples."""
    assert peer.open
    assert isinstance(await peer.request(out(event, ("ok", event), rid), rid), Stored)
    take = encode_message(Take(Kind.INP, event + 1, make_template(("ok", int))), rid + 1)
    assert await peer.request(take, rid + 1) == Matched(("ok", event))


async def served_counting(server: TwistdServer) -> dict[str, int | float | str]:
    """A separate, normal client is served; the server's counters as it reports them."""
    space = await server.connect(name="bystander")
    await within(space.out(("bystander", b"fine")))
    assert await within(space.in_(("bystander", bytes), timeout=5)) == ("bystander", b"fine")
    return await within(space.stats())


@pytest_twisted.ensureDeferred
async def test_bad_magic_closes_the_connection(msgserver: TwistdServer) -> None:
    """
    A frame without the magic loses the framing: the server answers BAD_MAGIC, closes
    the connection and counts it, and other clients are still served.
    """
    peer = await RawPeer.connect(msgserver)
    peer.send(header(OUT_TYPE, 3, 2, magic=b"XX") + b"\x92\x01")
    _, message = await peer.reply()
    expect_error(message, ErrorCode.BAD_MAGIC)
    await peer.wait_closed()
    stats = await served_counting(msgserver)
    assert stats["errors.bad_magic"] == 1


@pytest_twisted.ensureDeferred
async def test_bad_version_closes_the_connection(msgserver: TwistdServer) -> None:
    """A frame of another protocol version is answered BAD_VERSION and closes the connection."""
    peer = await RawPeer.connect(msgserver)
    body = packb([None, "v2"])
    peer.send(header(Hello.TYPE, 4, len(body), zlib.crc32(body), version=2) + body)
    rid, message = await peer.reply()
    assert rid == 4
    expect_error(message, ErrorCode.BAD_VERSION)
    await peer.wait_closed()
    stats = await served_counting(msgserver)
    assert stats["errors.bad_version"] == 1


@pytest_twisted.ensureDeferred
async def test_bad_crc_is_answered_and_the_connection_survives(msgserver: TwistdServer) -> None:
    """
    A frame whose body fails its CRC is answered with a BAD_CRC error for its request id
    and skipped; the same connection then says HELLO and works normally.
    """
    peer = await RawPeer.connect(msgserver)
    good = hello(5)
    bad = bytearray(good)
    bad[-1] ^= 0x01  # flip a bit of the body; the header's CRC no longer matches
    expect_error(await peer.request(bytes(bad), 5), ErrorCode.BAD_CRC)
    assert isinstance(await peer.request(hello(6), 6), Welcome)
    await still_works(peer, 1, 7)
    stats = await served_counting(msgserver)
    assert stats["errors.bad_crc"] == 1


@pytest_twisted.ensureDeferred
async def test_unknown_type_is_answered(msgserver: TwistdServer) -> None:
    """A frame of an unknown message type is answered UNKNOWN_TYPE; the session goes on."""
    peer = await raw_session(msgserver)
    for type_ in (0, 99, 255):
        frame = encode_frame(type_, 10 + type_, packb([]))
        expect_error(await peer.request(frame, 10 + type_), ErrorCode.UNKNOWN_TYPE)
    await still_works(peer, 1, 2)
    stats = await served_counting(msgserver)
    assert stats["errors.unknown_type"] == 3


@pytest_twisted.ensureDeferred
async def test_malformed_bodies_are_answered(msgserver: TwistdServer) -> None:
    """
    Bodies that are not valid msgpack, or valid msgpack of the wrong shape, are each
    answered MALFORMED for their own request id; the session goes on.
    """
    peer = await raw_session(msgserver)
    bodies = [
        (OUT_TYPE, b"\xc1"),  # a byte msgpack never uses
        (OUT_TYPE, b"\x92\x01"),  # truncated array
        (OUT_TYPE, packb([1, ["x"]]) + b"\x00"),  # trailing bytes
        (OUT_TYPE, packb({"event": 1})),  # not an array
        (OUT_TYPE, packb([1, ["x"], 3])),  # too many fields
        (OUT_TYPE, packb([-1, ["x"]])),  # negative event
        (OUT_TYPE, packb(["one", ["x"]])),  # event not an integer
        (IN_TYPE, packb([1, ["x"], -5])),  # negative timeout
        (Hello.TYPE, packb([None, 7])),  # name not a string
    ]
    for i, (type_, body) in enumerate(bodies, start=100):
        expect_error(await peer.request(encode_frame(type_, i, body), i), ErrorCode.MALFORMED)
    await still_works(peer, 1, 2)
    stats = await served_counting(msgserver)
    assert stats["errors.malformed"] == len(bodies)


@pytest_twisted.ensureDeferred
async def test_bad_templates_and_tuples_are_answered(msgserver: TwistdServer) -> None:
    """
    A template the server cannot accept is answered with a typed error: an unknown
    formal type code or ext type, an empty or too deeply nested template is BAD_TEMPLATE;
    a formal inside an OUT tuple is BAD_TUPLE.
    """
    peer = await raw_session(msgserver)
    unknown_formal = msgpack.ExtType(1, b"z")
    unknown_ext = msgpack.ExtType(9, b"")
    deep: list[Any] = ["leaf"]
    for _ in range(10):
        deep = [deep]
    cases = [
        (IN_TYPE, [1, ["x", unknown_formal], None], ErrorCode.BAD_TEMPLATE),
        (IN_TYPE, [1, ["x", unknown_ext], None], ErrorCode.BAD_TEMPLATE),
        (IN_TYPE, [1, [], None], ErrorCode.BAD_TEMPLATE),
        (IN_TYPE, [1, deep, None], ErrorCode.BAD_TEMPLATE),
        (IN_TYPE, [1, "not a sequence", None], ErrorCode.BAD_TEMPLATE),
        (OUT_TYPE, [1, ["x", int]], ErrorCode.BAD_TUPLE),
        (OUT_TYPE, [1, []], ErrorCode.BAD_TUPLE),
    ]
    for i, (type_, fields, code) in enumerate(cases, start=200):
        frame = encode_frame(type_, i, packb(fields))
        error = expect_error(await peer.request(frame, i), code)
        if i < 202:  # the two unknown extension values
            assert "ext type" in error.message, error
    await still_works(peer, 1, 2)
    stats = await served_counting(msgserver)
    assert stats["errors.bad_template"] == 5
    assert stats["errors.bad_tuple"] == 2
    assert stats.get("errors.malformed", 0) == 0


@pytest_twisted.ensureDeferred
async def test_oversize_length_is_refused_then_closed(msgserver: TwistdServer) -> None:
    """
    A header announcing a body over the limit is answered TOO_LARGE at once, before any
    of the body is sent, and the connection is closed.
    """
    peer = await raw_session(msgserver)
    peer.send(header(OUT_TYPE, 9, 0xFFFF_FFF0))
    rid, message = await peer.reply()
    assert rid == 9
    expect_error(message, ErrorCode.TOO_LARGE)
    await peer.wait_closed()
    stats = await served_counting(msgserver)
    assert stats["errors.too_large"] == 1


@pytest_twisted.ensureDeferred
async def test_request_before_hello_is_not_ready(msgserver: TwistdServer) -> None:
    """
    OUT and IN before HELLO are answered NOT_READY and change nothing; after HELLO the
    same connection works.
    """
    peer = await RawPeer.connect(msgserver)
    expect_error(await peer.request(out(1, ("early",), 3), 3), ErrorCode.NOT_READY)
    take = encode_message(Take(Kind.IN, 2, make_template(("early",))), 4)
    expect_error(await peer.request(take, 4), ErrorCode.NOT_READY)
    assert isinstance(await peer.request(hello(5), 5), Welcome)
    await still_works(peer, 1, 6)
    stats = await served_counting(msgserver)
    assert stats["errors.not_ready"] == 2
    assert stats["space.tuples"] == 0
    assert stats["space.waiting"] == 0


@pytest_twisted.ensureDeferred
async def test_protocol_misuse_is_answered(msgserver: TwistdServer) -> None:
    """
    A second HELLO, a server-to-client message sent by a client, and a request id reused
    while its request still waits are each answered with their typed error.
    """
    peer = await raw_session(msgserver)
    expect_error(await peer.request(hello(2), 2), ErrorCode.UNEXPECTED)
    expect_error(
        await peer.request(encode_message(Stored(), 3), 3),
        ErrorCode.UNEXPECTED,
    )
    waiting = encode_message(Take(Kind.IN, 1, make_template(("later", int))), 4)
    peer.send(waiting)
    again = encode_message(Take(Kind.IN, 2, make_template(("later", int))), 4)
    expect_error(await peer.request(again, 4), ErrorCode.DUPLICATE_REQUEST)
    assert isinstance(await peer.request(out(3, ("later", 1), 5), 5), Stored)
    assert await peer.reply() == (4, Matched(("later", 1)))
    stats = await served_counting(msgserver)
    assert stats["errors.unexpected"] == 2
    assert stats["errors.duplicate_request"] == 1


@pytest_twisted.ensureDeferred
async def test_frames_split_and_coalesced(msgserver: TwistdServer) -> None:
    """
    Frames are read whatever the TCP segmentation: several frames in one write are all
    answered in order, and a frame written in pieces with pauses between them is answered.
    """
    from twisted.internet import reactor

    peer = await RawPeer.connect(msgserver)
    peer.send(hello(1) + out(1, ("a",), 2) + out(2, ("b",), 3))
    replies = [await peer.reply() for _ in range(3)]
    assert [rid for rid, _ in replies] == [1, 2, 3]
    assert isinstance(replies[0][1], Welcome)
    assert [m for _, m in replies[1:]] == [Stored(), Stored()]
    frame = out(3, ("c", b"x" * 1000), 4)
    for start in range(0, len(frame), 300):
        peer.send(frame[start : start + 300])
        await deferLater(reactor, 0.01)
    assert await peer.reply() == (4, Stored())
    stats = await served_counting(msgserver)
    assert stats["space.tuples"] == 3


@pytest_twisted.ensureDeferred
async def test_server_survives_all_bad_input_at_once(msgserver: TwistdServer) -> None:
    """
    With every kind of bad input arriving on its own connection at the same time, a
    separate normal client is still served, and each error was counted.
    """
    peers = [await RawPeer.connect(msgserver) for _ in range(7)]
    bad_crc = bytearray(hello(1))
    bad_crc[-1] ^= 0xFF
    attacks = [
        header(OUT_TYPE, 1, 2, magic=b"??") + b"\x92\x01",
        bytes(bad_crc),
        encode_frame(77, 1, packb([])),
        encode_frame(OUT_TYPE, 1, b"\xc1"),
        encode_frame(IN_TYPE, 1, packb([1, [msgpack.ExtType(1, b"z")], None])),
        header(OUT_TYPE, 1, 0x7FFF_FFFF),
        out(1, ("early",), 1),
    ]
    for peer, attack in zip(peers, attacks, strict=True):
        peer.send(attack)
    replies = await within(defer.gatherResults([defer.ensureDeferred(p.reply()) for p in peers]))
    codes = [m.code if isinstance(m, Error) else m for _, m in replies]
    assert codes == [
        ErrorCode.BAD_MAGIC,
        ErrorCode.BAD_CRC,
        ErrorCode.UNKNOWN_TYPE,
        ErrorCode.MALFORMED,
        ErrorCode.BAD_TEMPLATE,
        ErrorCode.TOO_LARGE,
        ErrorCode.NOT_READY,
    ]
    await peers[0].wait_closed()
    await peers[5].wait_closed()
    stats = await served_counting(msgserver)
    for name, n in [
        ("bad_magic", 1),
        ("bad_crc", 1),
        ("unknown_type", 1),
        ("malformed", 1),
        ("bad_template", 1),
        ("too_large", 1),
        ("not_ready", 1),
    ]:
        assert stats[f"errors.{name}"] == n, name
    for peer in peers:
        peer.close()
