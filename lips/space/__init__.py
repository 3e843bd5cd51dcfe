"""
The deterministic, sans-IO tuple space.
"""

from lips.space._space import Completion, Kind, SnapshotError, Status, TupleSpace

__all__ = ["Completion", "Kind", "SnapshotError", "Status", "TupleSpace"]
