"""
Framing of the client protocol.

Every frame is a 16-byte header followed by a msgpack body::

    magic    2 bytes   b"LP"
    version  1 byte    1
    type     1 byte    message type
    request  4 bytes   request id, chosen by the client, echoed in replies
    length   4 bytes   body length
    crc      4 bytes   CRC-32 of the body

All integers are big-endian.  The decoder trusts nothing: a bad magic or version loses
the framing (the connection must be closed); an oversize length is refused before any
of the body is buffered; a body whose CRC does not match is skipped and reported, and
the frames after it are still read.
"""

from __future__ import annotations

import enum
import struct
import zlib
from typing import Final

import attrs

__all__ = [
    "HEADER",
    "MAGIC",
    "VERSION",
    "ErrorCode",
    "Frame",
    "FrameDecoder",
    "FrameError",
    "encode_frame",
]

MAGIC: Final = b"LP"
VERSION: Final = 1
_HEADER = struct.Struct("!2sBBIII")
HEADER: Final = _HEADER.size
_pack_header = _HEADER.pack
_unpack_header = _HEADER.unpack_from
_crc32 = zlib.crc32


class ErrorCode(enum.IntEnum):
    """Typed errors of the client protocol, sent in C{Error} replies."""

    BAD_MAGIC = 1
    BAD_VERSION = 2
    BAD_CRC = 3
    TOO_LARGE = 4
    UNKNOWN_TYPE = 5
    MALFORMED = 6
    BAD_TUPLE = 7
    BAD_TEMPLATE = 8
    NOT_READY = 9
    STALE_EVENT = 10
    BUSY = 11
    INTERNAL = 12
    UNEXPECTED = 13
    DUPLICATE_REQUEST = 14
    UNAVAILABLE = 15


@attrs.frozen
class Frame:
    """One well-formed frame: its type, request id and (CRC-checked) body."""

    type: int
    request_id: int
    body: bytes


@attrs.frozen
class FrameError:
    """
    A frame that could not be read.

    @ivar fatal: the framing is lost; nothing more can be read from this stream.
    """

    code: ErrorCode
    request_id: int
    message: str
    fatal: bool


def encode_frame(type_: int, request_id: int, body: bytes) -> bytes:
    """One frame, header and body."""
    return _pack_header(MAGIC, VERSION, type_, request_id, len(body), _crc32(body)) + body


class FrameDecoder:
    """
    Turns a byte stream into L{Frame}s and L{FrameError}s.

    @param max_body: the largest body accepted, in bytes.
    """

    def __init__(self, max_body: int) -> None:
        self.max_body = max_body
        # Bytes of an incomplete frame, kept as chunks until there are enough to read it
        # (so a large body arriving in many pieces is joined once, not once per piece).
        self._chunks: list[bytes] = []
        self._have = 0
        self._need = HEADER
        self.failed = False

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a whole frame."""
        return self._have

    def feed(self, data: bytes) -> list[Frame | FrameError]:
        """Consume C{data}; return the frames (and errors) it completed, in order."""
        if self.failed:
            return []
        if self._chunks:
            self._chunks.append(data)
            self._have += len(data)
            if self._have < self._need:
                return []
            buf = b"".join(self._chunks)
            self._chunks = []
        else:
            buf = data
        pos = 0
        need = HEADER
        size = len(buf)
        out: list[Frame | FrameError] = []
        while size - pos >= HEADER:
            magic, version, type_, rid, length, crc = _unpack_header(buf, pos)
            if magic != MAGIC:
                return self._fail(out, ErrorCode.BAD_MAGIC, 0, f"bad magic {magic!r}")
            if version != VERSION:
                return self._fail(
                    out,
                    ErrorCode.BAD_VERSION,
                    rid,
                    f"protocol version {version} is not supported (this is {VERSION})",
                )
            if length > self.max_body:
                return self._fail(
                    out,
                    ErrorCode.TOO_LARGE,
                    rid,
                    f"frame body of {length} bytes exceeds the limit of {self.max_body}",
                )
            end = pos + HEADER + length
            if end > size:
                need = HEADER + length
                break
            body = buf[pos + HEADER : end]
            pos = end
            if _crc32(body) != crc:
                out.append(FrameError(ErrorCode.BAD_CRC, rid, "body CRC-32 mismatch", False))
            else:
                out.append(Frame(type_, rid, body))
        rest = buf[pos:] if pos else buf
        self._chunks = [rest] if rest else []
        self._have = len(rest)
        self._need = need
        return out

    def _fail(
        self, out: list[Frame | FrameError], code: ErrorCode, rid: int, message: str
    ) -> list[Frame | FrameError]:
        self.failed = True
        self._chunks = []
        self._have = 0
        out.append(FrameError(code, rid, message, True))
        return out
