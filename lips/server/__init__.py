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

__all__ = [
    "ISpaceBackend",
    "LocalBackend",
    "MessageServer",
    "Operation",
    "Session",
    "Unavailable",
]
