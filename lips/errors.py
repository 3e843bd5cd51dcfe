"""
The exceptions a LiPS client sees.
"""

from __future__ import annotations

from lips.wire import ErrorCode

__all__ = [
    "CheckpointError",
    "ConnectionLost",
    "LipsError",
    "ProtocolViolation",
    "RequestError",
    "Timeout",
]


class LipsError(Exception):
    """Base of every LiPS client error."""


class RequestError(LipsError):
    """The server refused a request; C{code} says why."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class Timeout(LipsError, TimeoutError):
    """No matching tuple arrived within the operation's timeout."""


class ConnectionLost(LipsError, ConnectionError):
    """The connection to the server was lost before the answer came."""


class ProtocolViolation(LipsError):
    """The server sent something the protocol does not allow."""


class CheckpointError(LipsError):
    """
    A checkpoint cannot be made or restored: a state msgpack cannot encode, a file
    name that is not a plain name in the working directory, a file that cannot be read
    or written, a malformed checkpoint.
    """
