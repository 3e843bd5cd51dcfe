"""
The replicated tuple space: a MessageServer backend over the token ring.
"""

from lips.replica._node import ReplicaNode, RingSeqStorage
from lips.replica._replica import Mode, Replica, ReplicaPayloadError

__all__ = ["Mode", "Replica", "ReplicaNode", "ReplicaPayloadError", "RingSeqStorage"]
