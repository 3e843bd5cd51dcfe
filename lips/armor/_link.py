"""
The frames of the daemon link and of the local link, and their handshakes: sans-IO.

Both links carry the same frames.  The daemon link joins the daemons of two nodes over
TCP; the local link joins a daemon and one of its ARMOR processes over a UNIX socket.

A frame is a fixed header, then the source and destination ARMOR ids, then the body:

    offset  size  field
    0       2     magic, C{b"LA"}
    2       1     version, L{VERSION}
    3       1     kind, a L{FrameKind}
    4       1     length of the source ARMOR id (0 to L{MAX_ID_LENGTH})
    5       1     length of the destination ARMOR id (0 to L{MAX_ID_LENGTH})
    6       4     length of the body (unsigned, big-endian)
    10      4     CRC-32 (L{zlib.crc32}) of bytes 0-9, the two ids and the body
    14      ...   source id, destination id (ASCII), body

A L{FrameKind.MESSAGE} frame carries one ARMOR message: its body is
L{lips.armor.encode}C{(message)} and its header names the message's source and
destination (a header that disagrees with its body is refused), so a daemon routes by
the header and the receiving daemon checks both.  The other kinds are the links' own:
the handshake (L{FrameKind.HELLO}, L{FrameKind.AUTH}, L{FrameKind.WELCOME}), pings
(L{FrameKind.PING}, L{FrameKind.PONG}: a msgpack integer) and L{FrameKind.CLOSE} (a
msgpack string, the reason, sent before hanging up).  Their ids may be empty.

L{FrameDecoder} is the only place that trusts nothing: a bad magic, version or kind,
an id longer than L{MAX_ID_LENGTH} or not an ARMOR id, a body over the decoder's
limit, a CRC-32 mismatch, or a message body that does not decode (or disagrees with
its header) is a L{FrameError}, naming its L{FrameFault}.  After one the stream cannot
be trusted any more (the lengths themselves may be what is wrong): the decoder stops,
and the adapter counts the fault and hangs up on the peer.

Handshakes.  On the daemon link each side sends a L{DaemonHello} (its node name and a
fresh random nonce), then, once it has the other's, an L{Auth}: an HMAC-SHA256, keyed
with L{link_key} of the cluster key, over the side's role (the side that dialed, or
the side that accepted), both names and both nonces (L{proof}).  A side that checks
the other's proof knows the peer holds the cluster key and is, for this connection,
the node it names; a proof cannot be replayed on another connection (the nonces) nor
reflected to its sender (the role).  Nothing but handshake frames is accepted before.
On the local link the ARMOR process sends an L{ArmorHello} (its ARMOR id, its
incarnation and the token the daemon gave it when it started it) and the daemon
answers L{FrameKind.WELCOME} or L{FrameKind.CLOSE}.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import struct
import zlib
from typing import Any, ClassVar, Final

import attrs
import msgpack

from lips.armor._messages import MAX_MESSAGE_SIZE, Message, decode, encode
from lips.armor._names import (
    MAX_ID_LENGTH,
    ArmorId,
    MessageError,
    armor_id,
    check_label,
    check_name,
)

__all__ = [
    "HANDSHAKE_BODY",
    "HEADER",
    "MAGIC",
    "MAX_FRAME_BODY",
    "NONCE_SIZE",
    "PROOF_SIZE",
    "TOKEN_SIZE",
    "VERSION",
    "ArmorHello",
    "AttachHello",
    "Auth",
    "DaemonHello",
    "Frame",
    "FrameDecoder",
    "FrameError",
    "FrameFault",
    "FrameKind",
    "HandshakeError",
    "LinkError",
    "close_reason",
    "encode_frame",
    "hello_role",
    "link_key",
    "ping_seq",
    "proof",
    "check_proof",
]

#: The first two bytes of every frame.
MAGIC: Final = b"LA"
#: The version of the frame format.
VERSION: Final = 1
_HEAD: Final = struct.Struct("!2sBBBBI")  # magic, version, kind, id lengths, body length
#: The length of the fixed header (with its CRC-32).
HEADER: Final = _HEAD.size + 4
#: The largest body of a frame: one encoded ARMOR message.
MAX_FRAME_BODY: Final = MAX_MESSAGE_SIZE
#: The largest body accepted before the handshake is over.
HANDSHAKE_BODY: Final = 1024
#: The length of a handshake nonce, of a local link token and of a proof, in bytes.
NONCE_SIZE: Final = 32
TOKEN_SIZE: Final = 16
PROOF_SIZE: Final = 32

_LABEL: Final = b"lips armor link v1"


class LinkError(ValueError):
    """Something that came over a daemon link or a local link is not acceptable."""


class FrameFault(enum.Enum):
    """Why a frame was refused (the adapters count each as C{frames.refused.<value>})."""

    MAGIC = "magic"
    VERSION = "version"
    KIND = "kind"
    ID = "id"
    TOO_LARGE = "too-large"
    CRC = "crc"
    BODY = "body"


class FrameError(LinkError):
    """
    A frame is malformed: C{fault} says how, the text says more.  The stream it came
    in is not to be trusted any further.
    """

    def __init__(self, fault: FrameFault, text: str) -> None:
        super().__init__(f"{fault.value}: {text}")
        self.fault = fault


class HandshakeError(LinkError):
    """A handshake went wrong: an unexpected frame, a malformed hello, a bad proof."""


class FrameKind(enum.IntEnum):
    """What a frame is."""

    HELLO = 1
    """Handshake: who this side is (L{DaemonHello} or L{ArmorHello})."""
    AUTH = 2
    """Handshake, daemon link: this side's proof (L{Auth})."""
    WELCOME = 3
    """Handshake, local link: the daemon accepts the ARMOR process."""
    MESSAGE = 4
    """One ARMOR message (L{lips.armor.encode})."""
    PING = 5
    """Are you alive?  Body: a msgpack integer, answered by a PONG with the same one."""
    PONG = 6
    """The answer to a PING."""
    CLOSE = 7
    """This side hangs up; body: a msgpack string, why."""


_KINDS: Final = {k.value: k for k in FrameKind}


def _frame_id(instance: object, attribute: attrs.Attribute[str], value: object) -> None:
    if value != "":
        armor_id(value)


@attrs.frozen
class Frame:
    """
    One frame (see the module docstring): its C{kind}, C{source} and C{destination}
    ARMOR ids (empty for a link's own frames that need none) and its C{body}.

    @raise MessageError: if an id is neither empty nor an ARMOR id.
    """

    kind: FrameKind = attrs.field(converter=FrameKind)
    source: str = attrs.field(default="", validator=_frame_id)
    destination: str = attrs.field(default="", validator=_frame_id)
    body: bytes = attrs.field(default=b"", validator=attrs.validators.instance_of(bytes))

    @classmethod
    def of_message(cls, message: Message) -> Frame:
        """The L{FrameKind.MESSAGE} frame that carries C{message}."""
        return cls(FrameKind.MESSAGE, message.source, message.destination, encode(message))

    @classmethod
    def control(cls, kind: FrameKind, value: object = None, source: str = "") -> Frame:
        """A link's own frame of C{kind} whose body is the msgpack of C{value}."""
        body = b"" if value is None else msgpack.packb(value, use_bin_type=True)
        return cls(kind, source, "", body)

    def message(self) -> Message:
        """
        The ARMOR message this MESSAGE frame carries.

        @raise FrameError: if it is not a MESSAGE frame, its body is no valid message,
            or the message's ids are not the header's.
        """
        if self.kind is not FrameKind.MESSAGE:
            raise FrameError(FrameFault.KIND, f"a {self.kind.name} frame carries no message")
        try:
            message = decode(self.body)
        except MessageError as e:
            raise FrameError(FrameFault.BODY, str(e)) from None
        if message.source != self.source or message.destination != self.destination:
            raise FrameError(
                FrameFault.BODY,
                f"the header says {self.source} -> {self.destination}, the message"
                f" {message.source} -> {message.destination}",
            )
        return message


def _crc(head: bytes, source: bytes, destination: bytes, body: bytes) -> int:
    return zlib.crc32(body, zlib.crc32(destination, zlib.crc32(source, zlib.crc32(head))))


def encode_frame(frame: Frame) -> bytes:
    """
    C{frame} as bytes.

    @raise FrameError: if its body is longer than L{MAX_FRAME_BODY}.
    """
    if len(frame.body) > MAX_FRAME_BODY:
        raise FrameError(
            FrameFault.TOO_LARGE, f"a body of {len(frame.body)} bytes is over {MAX_FRAME_BODY}"
        )
    source = frame.source.encode("ascii")
    destination = frame.destination.encode("ascii")
    head = _HEAD.pack(MAGIC, VERSION, frame.kind, len(source), len(destination), len(frame.body))
    crc = _crc(head, source, destination, frame.body)
    return b"".join((head, crc.to_bytes(4, "big"), source, destination, frame.body))


class FrameDecoder:
    """
    Turns a byte stream into L{Frame}s, stopping at the first L{FrameError}.

    @param max_body: the largest body accepted, in bytes (raise it with L{limit} once
        a handshake is over).
    @ivar failed: whether a frame was refused (nothing more is decoded).
    """

    def __init__(self, max_body: int = MAX_FRAME_BODY) -> None:
        self.limit(max_body)
        self._chunks: list[bytes] = []
        self._have = 0
        self._need = HEADER
        self.failed = False

    def limit(self, max_body: int) -> None:
        """Accept bodies of up to C{max_body} bytes (at most L{MAX_FRAME_BODY}) from now on."""
        if not 0 <= max_body <= MAX_FRAME_BODY:
            raise ValueError(f"max_body must be 0-{MAX_FRAME_BODY}, not {max_body}")
        self.max_body = max_body

    @property
    def buffered(self) -> int:
        """Bytes received that are not yet part of a whole frame."""
        return self._have

    def feed(self, data: bytes) -> list[Frame | FrameError]:
        """
        Consume C{data}: the frames it completed, in order, ended by a L{FrameError}
        if one of them was bad (after which this decoder returns nothing more).
        """
        if self.failed:
            return []
        self._chunks.append(data)
        self._have += len(data)
        if self._have < self._need:
            return []
        buf = b"".join(self._chunks)
        self._chunks = []
        out: list[Frame | FrameError] = []
        pos = 0
        need = HEADER
        size = len(buf)
        while size - pos >= HEADER:
            head = _HEAD.unpack_from(buf, pos)
            problem = self._check_head(head)
            if problem is not None:
                return self._fail(out, problem)
            _, _, kind, source_len, destination_len, body_len = head
            end = pos + HEADER + source_len + destination_len + body_len
            if end > size:
                need = end - pos
                break
            at = pos + HEADER
            source = buf[at : at + source_len]
            destination = buf[at + source_len : at + source_len + destination_len]
            body = buf[at + source_len + destination_len : end]
            crc = int.from_bytes(buf[pos + _HEAD.size : at], "big")
            if _crc(buf[pos : pos + _HEAD.size], source, destination, body) != crc:
                return self._fail(out, FrameError(FrameFault.CRC, "CRC-32 mismatch"))
            pos = end
            try:
                frame = Frame(kind, _text(source), _text(destination), body)
            except MessageError as e:
                return self._fail(out, FrameError(FrameFault.ID, str(e)))
            if frame.kind is FrameKind.MESSAGE:
                try:
                    frame.message()
                except FrameError as e:
                    return self._fail(out, e)
            out.append(frame)
        rest = buf[pos:]
        if rest:
            self._chunks = [rest]
        self._have = len(rest)
        self._need = need
        return out

    def _check_head(self, head: tuple[bytes, int, int, int, int, int]) -> FrameError | None:
        magic, version, kind, source_len, destination_len, body_len = head
        if magic != MAGIC:
            return FrameError(FrameFault.MAGIC, f"bad magic {magic!r}")
        if version != VERSION:
            return FrameError(
                FrameFault.VERSION, f"frame version {version} is not supported (this is {VERSION})"
            )
        if kind not in _KINDS:
            return FrameError(FrameFault.KIND, f"unknown frame kind {kind}")
        if source_len > MAX_ID_LENGTH or destination_len > MAX_ID_LENGTH:
            return FrameError(FrameFault.ID, f"an ARMOR id has at most {MAX_ID_LENGTH} characters")
        if body_len > self.max_body:
            return FrameError(
                FrameFault.TOO_LARGE, f"a body of {body_len} bytes is over {self.max_body}"
            )
        return None

    def _fail(self, out: list[Frame | FrameError], error: FrameError) -> list[Frame | FrameError]:
        self.failed = True
        self._chunks = []
        self._have = 0
        out.append(error)
        return out


def _text(data: bytes) -> str:
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise MessageError(f"an ARMOR id is ASCII, not {data[:40]!r}") from None


# -- the bodies of the links' own frames --------------------------------------------------------


def _unpack(frame: Frame, what: str) -> Any:
    try:
        return msgpack.unpackb(
            frame.body, raw=False, use_list=False, strict_map_key=True, max_ext_len=0
        )
    except Exception as e:
        raise HandshakeError(f"{what} is not msgpack: {e}") from None


def _fields(frame: Frame, kind: FrameKind, what: str, keys: frozenset[str]) -> dict[str, Any]:
    if frame.kind is not kind:
        raise HandshakeError(f"expected {what}, got a {frame.kind.name} frame")
    value = _unpack(frame, what)
    if type(value) is not dict or set(value) != keys:
        raise HandshakeError(f"{what} is a map of {sorted(keys)}")
    return value


def _bytes(value: object, size: int, what: str) -> bytes:
    if type(value) is not bytes or len(value) != size:
        raise HandshakeError(f"{what} is {size} bytes")
    return value


def _armor_and_incarnation(value: dict[str, Any]) -> tuple[ArmorId, int]:
    """The ARMOR id and the incarnation a process's hello names."""
    try:
        id = armor_id(value["armor"])
    except MessageError as e:
        raise HandshakeError(str(e)) from None
    incarnation = value["incarnation"]
    if type(incarnation) is not int or not 1 <= incarnation < 2**63:
        raise HandshakeError(f"an incarnation is a positive integer, not {incarnation!r}")
    return id, incarnation


@attrs.frozen
class DaemonHello:
    """A daemon link's hello: the daemon of node C{node}, with its C{nonce}."""

    node: str
    nonce: bytes

    _keys: ClassVar[frozenset[str]] = frozenset({"role", "node", "nonce"})

    def frame(self) -> Frame:
        return Frame.control(
            FrameKind.HELLO, {"role": "daemon", "node": self.node, "nonce": self.nonce}
        )

    @classmethod
    def from_frame(cls, frame: Frame) -> DaemonHello:
        """
        The hello C{frame} carries.

        @raise HandshakeError: if it is not a daemon's hello.
        """
        value = _fields(frame, FrameKind.HELLO, "a daemon's hello", cls._keys)
        if value["role"] != "daemon":
            raise HandshakeError(f"expected a daemon's hello, not a {value['role']!r}'s")
        try:
            node = check_label(value["node"], "a node name")
        except MessageError as e:
            raise HandshakeError(str(e)) from None
        return cls(node, _bytes(value["nonce"], NONCE_SIZE, "a nonce"))


@attrs.frozen
class ArmorHello:
    """
    A local link's hello: the process of incarnation C{incarnation} of ARMOR C{armor},
    with the C{token} its daemon started it with.
    """

    armor: ArmorId
    incarnation: int
    token: bytes

    _keys: ClassVar[frozenset[str]] = frozenset({"role", "armor", "incarnation", "token"})

    def frame(self) -> Frame:
        return Frame.control(
            FrameKind.HELLO,
            {
                "role": "armor",
                "armor": self.armor,
                "incarnation": self.incarnation,
                "token": self.token,
            },
        )

    @classmethod
    def from_frame(cls, frame: Frame) -> ArmorHello:
        """
        The hello C{frame} carries.

        @raise HandshakeError: if it is not an ARMOR process's hello.
        """
        value = _fields(frame, FrameKind.HELLO, "an ARMOR's hello", cls._keys)
        if value["role"] != "armor":
            raise HandshakeError(f"expected an ARMOR's hello, not a {value['role']!r}'s")
        id, incarnation = _armor_and_incarnation(value)
        return cls(id, incarnation, _bytes(value["token"], TOKEN_SIZE, "a token"))


@attrs.frozen
class AttachHello:
    """
    A local link's hello from a process its daemon did not start, that attaches itself
    (C{twistd lips-ftm}'s FTM, C{lips submit}'s submitter): incarnation C{incarnation}
    of ARMOR C{armor}, of type C{type}, with its C{nonce}.  The daemon answers with a
    L{DaemonHello} of its own nonce, and the process then proves it holds the cluster
    key with an L{Auth} (L{proof}, as the dialer, its own name the ARMOR id, the peer's
    the daemon's id).
    """

    armor: ArmorId
    incarnation: int
    type: str
    nonce: bytes

    _keys: ClassVar[frozenset[str]] = frozenset({"role", "armor", "incarnation", "type", "nonce"})

    def frame(self) -> Frame:
        return Frame.control(
            FrameKind.HELLO,
            {
                "role": "attach",
                "armor": self.armor,
                "incarnation": self.incarnation,
                "type": self.type,
                "nonce": self.nonce,
            },
        )

    @classmethod
    def from_frame(cls, frame: Frame) -> AttachHello:
        """
        The hello C{frame} carries.

        @raise HandshakeError: if it is not an attaching process's hello.
        """
        value = _fields(frame, FrameKind.HELLO, "an attaching ARMOR's hello", cls._keys)
        if value["role"] != "attach":
            raise HandshakeError(f"expected an attaching ARMOR's hello, not a {value['role']!r}'s")
        id, incarnation = _armor_and_incarnation(value)
        try:
            type_ = check_name(value["type"], "an ARMOR type")
        except MessageError as e:
            raise HandshakeError(str(e)) from None
        return cls(id, incarnation, type_, _bytes(value["nonce"], NONCE_SIZE, "a nonce"))


def hello_role(frame: Frame) -> str:
    """
    Who a HELLO frame says it is from: C{"armor"} (a process its daemon started),
    C{"attach"} (one that attaches itself) or C{"daemon"}.

    @raise HandshakeError: if it says none of them.
    """
    value = _unpack(frame, "a hello") if frame.kind is FrameKind.HELLO else None
    role = value.get("role") if type(value) is dict else None
    if role not in ("armor", "attach", "daemon"):
        raise HandshakeError("expected a hello naming its role")
    assert isinstance(role, str)
    return role


@attrs.frozen
class Auth:
    """A daemon link's proof (see L{proof})."""

    proof: bytes

    def frame(self) -> Frame:
        return Frame.control(FrameKind.AUTH, {"proof": self.proof})

    @classmethod
    def from_frame(cls, frame: Frame) -> Auth:
        """
        The proof C{frame} carries.

        @raise HandshakeError: if it is not an AUTH frame with a proof.
        """
        value = _fields(frame, FrameKind.AUTH, "a proof", frozenset({"proof"}))
        return cls(_bytes(value["proof"], PROOF_SIZE, "a proof"))


def link_key(cluster_key: bytes) -> bytes:
    """The key of the daemon links' proofs, derived from the cluster key (not the key itself)."""
    if type(cluster_key) is not bytes or not cluster_key:
        raise ValueError("the cluster key is non-empty bytes")
    return hmac.new(cluster_key, _LABEL + b" key", hashlib.sha256).digest()


def proof(
    key: bytes,
    *,
    dialer: bool,
    own: str,
    peer: str,
    dialer_nonce: bytes,
    acceptor_nonce: bytes,
) -> bytes:
    """
    The proof the side that C{dialer} says (the one that dialed, or the one that
    accepted) sends: an HMAC-SHA256 with C{key} (L{link_key}) of the label, its role,
    its own name C{own}, the other's name C{peer}, then the dialer's and the acceptor's
    nonces.
    """
    role = b"dialer" if dialer else b"acceptor"
    parts = (_LABEL, role, own.encode(), peer.encode(), dialer_nonce, acceptor_nonce)
    data = b"".join(len(p).to_bytes(2, "big") + p for p in parts)
    return hmac.new(key, data, hashlib.sha256).digest()


def check_proof(
    key: bytes,
    auth: Auth,
    *,
    dialer: bool,
    own: str,
    peer: str,
    dialer_nonce: bytes,
    acceptor_nonce: bytes,
) -> None:
    """
    Check the proof C{auth} of the side named C{own} (C{dialer} says its role).

    @raise HandshakeError: if it is not that side's proof with C{key}.
    """
    expected = proof(
        key,
        dialer=dialer,
        own=own,
        peer=peer,
        dialer_nonce=dialer_nonce,
        acceptor_nonce=acceptor_nonce,
    )
    if not hmac.compare_digest(expected, auth.proof):
        raise HandshakeError(f"{own} did not prove it holds the cluster key")


def ping_seq(frame: Frame) -> int:
    """
    The number a PING or PONG frame carries.

    @raise LinkError: if it carries none.
    """
    try:
        value = msgpack.unpackb(frame.body, strict_map_key=True, max_ext_len=0)
    except Exception as e:
        raise LinkError(f"a {frame.kind.name} frame's body is not msgpack: {e}") from None
    if type(value) is not int or value < 0:
        raise LinkError(f"a {frame.kind.name} frame carries a number, not {value!r}")
    return value


def close_reason(frame: Frame) -> str:
    """Why a CLOSE frame's sender hung up (whatever it sent, made printable)."""
    try:
        value = msgpack.unpackb(frame.body, raw=False, max_ext_len=0)
    except Exception:
        return "(unreadable reason)"
    return value[:1000] if isinstance(value, str) else "(no reason)"
