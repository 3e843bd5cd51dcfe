"""
The token ring that replicates the tuple space (in progress; see
C{docs/design/ring.md}): the sans-IO engine with its membership protocol, its messages
and their codec, and the sealing of its datagrams.
"""

from lips.ring._codec import MAX_COUNT, MAX_NODE, RingCodecError, decode, encode
from lips.ring._engine import (
    Configuration,
    Delivered,
    Delivery,
    RingConfig,
    RingEngine,
    RingStored,
    RingTimer,
    Safe,
    State,
)
from lips.ring._messages import (
    NO_RING,
    Commit,
    Join,
    Kind,
    Mcast,
    MergeDetect,
    Report,
    RingId,
    RingMessage,
    Token,
)
from lips.ring._seal import MIN_KEY, Dropped, DropReason, Mode, Opened, Sealer

__all__ = [
    "MAX_COUNT",
    "MAX_NODE",
    "MIN_KEY",
    "NO_RING",
    "Commit",
    "Configuration",
    "Delivered",
    "Delivery",
    "DropReason",
    "Dropped",
    "Join",
    "Kind",
    "Mcast",
    "MergeDetect",
    "Mode",
    "Opened",
    "Report",
    "RingCodecError",
    "RingConfig",
    "RingEngine",
    "RingId",
    "RingMessage",
    "RingStored",
    "RingTimer",
    "Safe",
    "Sealer",
    "State",
    "Token",
    "decode",
    "encode",
]
