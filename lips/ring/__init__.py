"""
The token ring that will replicate the tuple space (in progress; see
C{docs/design/ring.md}).  So far: sealing and opening of authenticated ring datagrams.
"""

from lips.ring._seal import Dropped, DropReason, Mode, Opened, Sealer

__all__ = ["DropReason", "Dropped", "Mode", "Opened", "Sealer"]
