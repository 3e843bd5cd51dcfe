"""
The replicated tuple space: a MessageServer backend over the token ring (sans-IO).
"""

from lips.replica._replica import Replica, ReplicaPayloadError

__all__ = ["Replica", "ReplicaPayloadError"]
