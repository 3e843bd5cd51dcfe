"""
C{twistd lips-fixserver}: a FixServer, holding the System Tuple Space (node state).
"""

from __future__ import annotations

from twisted.application import service

from lips.tap._server import ServerOptions, make_server_service

__all__ = ["Options", "makeService"]


class Options(ServerOptions):
    synopsis = "[options]"
    longdesc = "Run a LiPS FixServer: the System Tuple Space served over TCP."
    default_port = 7020
    role = "fixserver"


def makeService(options: Options) -> service.MultiService:
    return make_server_service(options)
