"""
C{twistd lips-msgserver}: a MessageServer, holding an application's tuple space.
"""

from __future__ import annotations

from lips.tap._server import makeService, role_options

__all__ = ["Options", "makeService"]

Options = role_options(
    "msgserver", 7010, "Run a LiPS MessageServer: an application's tuple space served over TCP."
)
