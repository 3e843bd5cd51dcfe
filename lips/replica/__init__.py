"""
The replicated tuple space: a sans-IO core over the token ring (its Twisted host is
L{lips.protocols.ReplicaNode}).
"""

from lips.replica._journal import (
    RESTORE_STEP,
    SNAPSHOT_AFTER,
    Journal,
    JournalError,
    Loaded,
    Record,
    backup,
    replay,
    restore,
)
from lips.replica._replica import Mode, Replica, ReplicaPayloadError, ReplicaTimer
from lips.replica._replica import decode as decode_payload

__all__ = [
    "RESTORE_STEP",
    "SNAPSHOT_AFTER",
    "Journal",
    "JournalError",
    "Loaded",
    "Mode",
    "Record",
    "Replica",
    "ReplicaPayloadError",
    "ReplicaTimer",
    "backup",
    "decode_payload",
    "replay",
    "restore",
]
