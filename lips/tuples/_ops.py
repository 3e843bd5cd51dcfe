"""
The operations of the Linda model, as one vocabulary shared by the tuple space, the wire
codec and the clients (none of which should need another's module to name them).
"""

from __future__ import annotations

import enum

__all__ = ["Kind"]


class Kind(enum.IntEnum):
    """The Linda operations."""

    OUT = 1
    IN = 2
    RD = 3
    INP = 4
    RDP = 5
    CHECKPOINT = 6
    """Not a Linda operation: a process's checkpoint, applied and logged like one."""
    FORGET = 7
    """Not a Linda operation: a process said goodbye; the space forgets it (L{forget})."""

    @property
    def removes(self) -> bool:
        return self is Kind.IN or self is Kind.INP

    @property
    def blocks(self) -> bool:
        return self is Kind.IN or self is Kind.RD
