"""
The replicated tuple space: a sans-IO core over the token ring (its Twisted host is
L{lips.protocols.ReplicaNode}).
"""

from lips.replica._replica import Mode, Replica, ReplicaPayloadError, ReplicaTimer
from lips.replica._replica import decode as decode_payload

__all__ = ["Mode", "Replica", "ReplicaPayloadError", "ReplicaTimer", "decode_payload"]
