"""
The MessageServer: client sessions served from a tuple-space backend.

L{ServerCore} is the sans-IO core (its timers are effects, its time an input);
L{MessageServer} runs it on a reactor's clock.
"""

from lips.server._core import (
    Answer,
    ISpaceBackend,
    LocalBackend,
    Operation,
    Refusal,
    Refused,
    ServerCore,
    ServerTimer,
    Session,
    Unavailable,
)
from lips.server._limits import ServerLimits
from lips.server._server import MessageServer

__all__ = [
    "Answer",
    "ISpaceBackend",
    "LocalBackend",
    "MessageServer",
    "Operation",
    "Refusal",
    "Refused",
    "ServerCore",
    "ServerLimits",
    "ServerTimer",
    "Session",
    "Unavailable",
]
