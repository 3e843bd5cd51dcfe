"""
Twisted adapters: bytes in, events to a core, effects out.
"""

from lips.protocols._armor_link import (
    LINK_COUNTERS,
    DaemonLink,
    DaemonLinkFactory,
    IDaemonLinkHost,
    ILocalLinkHost,
    LinkPhase,
    LocalLink,
    LocalLinkFactory,
)
from lips.protocols._replica import ReplicaNode, RingSeqStorage
from lips.protocols._ring import COUNTERS, RingProtocol, listen_ring
from lips.protocols._server import MessageServerFactory, MessageServerProtocol
from lips.protocols._transports import (
    BroadcastTransport,
    IRingTransport,
    MulticastTransport,
    UnicastTransport,
)

__all__ = [
    "LINK_COUNTERS",
    "DaemonLink",
    "DaemonLinkFactory",
    "IDaemonLinkHost",
    "ILocalLinkHost",
    "LinkPhase",
    "LocalLink",
    "LocalLinkFactory",
    "COUNTERS",
    "BroadcastTransport",
    "IRingTransport",
    "MessageServerFactory",
    "MessageServerProtocol",
    "MulticastTransport",
    "ReplicaNode",
    "RingProtocol",
    "RingSeqStorage",
    "UnicastTransport",
    "listen_ring",
]
