"""
C{twistd lips-fixserver}: a FixServer, holding the System Tuple Space (node state).
"""

from __future__ import annotations

from lips.tap._server import makeService, role_options

__all__ = ["Options", "makeService"]

Options = role_options(
    "fixserver", 7020, "Run a LiPS FixServer: the System Tuple Space served over TCP."
)
