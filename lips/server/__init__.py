"""
The MessageServer core (sans-IO): client sessions served from a tuple-space backend.
"""

from lips.server._core import (
    ISpaceBackend,
    LocalBackend,
    MessageServer,
    Operation,
    Session,
    Unavailable,
)
from lips.server._limits import ServerLimits

__all__ = [
    "ISpaceBackend",
    "LocalBackend",
    "MessageServer",
    "Operation",
    "ServerLimits",
    "Session",
    "Unavailable",
]
