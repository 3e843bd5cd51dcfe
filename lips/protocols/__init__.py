"""
Twisted adapters: bytes in, events to a core, effects out.
"""

from lips.protocols._ring import RingProtocol
from lips.protocols._server import MessageServerFactory, MessageServerProtocol

__all__ = ["MessageServerFactory", "MessageServerProtocol", "RingProtocol"]
