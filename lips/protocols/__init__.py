"""
Twisted adapters: bytes in, events to a core, effects out.
"""

from lips.protocols._ring import COUNTERS, RingProtocol, listen_ring
from lips.protocols._server import MessageServerFactory, MessageServerProtocol
from lips.protocols._transports import (
    BroadcastTransport,
    IRingTransport,
    MulticastTransport,
    UnicastTransport,
)

__all__ = [
    "COUNTERS",
    "BroadcastTransport",
    "IRingTransport",
    "MessageServerFactory",
    "MessageServerProtocol",
    "MulticastTransport",
    "RingProtocol",
    "UnicastTransport",
    "listen_ring",
]
