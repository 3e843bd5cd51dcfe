"""
C{twistd lips-msgserver}: a MessageServer, holding an application's tuple space.
"""

from __future__ import annotations

from twisted.application import service

from lips.tap._server import ServerOptions, make_server_service

__all__ = ["Options", "makeService"]


class Options(ServerOptions):
    synopsis = "[options]"
    longdesc = "Run a LiPS MessageServer: an application's tuple space served over TCP."
    default_port = 7010
    role = "msgserver"


def makeService(options: Options) -> service.MultiService:
    return make_server_service(options)
