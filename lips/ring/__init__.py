"""
The token ring that replicates the tuple space (in progress; see
C{docs/design/ring.md}): the sans-IO engine with its membership protocol, its messages
and their codec, and the sealing of its datagrams.
"""

from lips.ring._codec import RingCodecError, decode, encode
from lips.ring._engine import (
    Configuration,
    Deliver,
    Effect,
    PersistRingSeq,
    RingConfig,
    RingEngine,
    Safe,
    Send,
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
from lips.ring._seal import Dropped, DropReason, Mode, Opened, Sealer

__all__ = [
    "NO_RING",
    "Commit",
    "Configuration",
    "Deliver",
    "DropReason",
    "Dropped",
    "Effect",
    "Join",
    "Kind",
    "Mcast",
    "MergeDetect",
    "Mode",
    "Opened",
    "PersistRingSeq",
    "Report",
    "RingConfig",
    "RingEngine",
    "RingCodecError",
    "RingId",
    "RingMessage",
    "Safe",
    "Sealer",
    "Send",
    "State",
    "Token",
    "decode",
    "encode",
]
