"""
The exceptions a LiPS client sees.
"""

from __future__ import annotations

from lips.wire import ErrorCode

__all__ = [
    "CheckpointError",
    "ConnectionLost",
    "LipsError",
    "OutcomeUnknown",
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
    """
    A server decided that no matching tuple arrived within the operation's timeout:
    nothing was taken or read.  On a replicated space the decision is made in the total
    order, so a tuple taken for the operation (at any server) is its answer instead.
    """


class OutcomeUnknown(LipsError):
    """
    No answer came, and none can be had: the operation may or may not have taken
    effect.  An C{out} may be stored; an C{in_} may have taken a tuple that is now
    lost to the caller.  Raised when the client's own guard fires (no answer a while
    after the operation's timeout) and, as L{ConnectionLost} or
    L{lips.client.NoServerAvailable}, when the connection is lost with no server to
    fail over to.
    """


class ConnectionLost(OutcomeUnknown, ConnectionError):
    """The connection to the server was lost before the answer came."""


class ProtocolViolation(LipsError):
    """The server sent something the protocol does not allow."""


class CheckpointError(LipsError):
    """
    A checkpoint cannot be made or restored: a state msgpack cannot encode, a file
    name that is not a plain name in the working directory, a file that cannot be read
    or written, a malformed checkpoint.
    """
