"""
The TCP adapter of the MessageServer: bytes in, messages to the core, bytes out.
"""

from __future__ import annotations

from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from lips.server import MessageServer, Session
from lips.wire import Frame, FrameDecoder, MessageError, decode_message

__all__ = ["MessageServerFactory", "MessageServerProtocol"]

#: Room in a frame body beyond the largest tuple, for the other fields of a message.
BODY_OVERHEAD = 4096


class MessageServerProtocol(Protocol):
    """One client connection."""

    log = Logger()

    def __init__(self, server: MessageServer) -> None:
        self.server = server
        self.decoder = FrameDecoder(server.limits.max_size + BODY_OVERHEAD)
        self.session: Session | None = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        peer = self.transport.getPeer()
        self.session = self.server.open_session(self.transport.write, _describe(peer))

    def dataReceived(self, data: bytes) -> None:
        session = self.session
        assert session is not None
        limits = self.server.limits
        for item in self.decoder.feed(data):
            if type(item) is Frame:
                try:
                    message = decode_message(item, limits)
                except MessageError as e:
                    session.error(e.code, e.message, item.request_id)
                    continue
                session.received(message, item.request_id)
            else:
                assert not isinstance(item, Frame)
                session.error(item.code, item.message, item.request_id)
                if item.fatal:
                    self.log.warn(
                        "Closing {peer}: framing lost ({code}: {message})",
                        peer=session.peer,
                        code=item.code.name,
                        message=item.message,
                    )
                    assert self.transport is not None
                    self.transport.loseConnection()
                    return

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.session is not None:
            self.session.close()


class MessageServerFactory(Factory):
    """Builds a L{MessageServerProtocol} per connection to one L{MessageServer}."""

    def __init__(self, server: MessageServer) -> None:
        self.server = server

    def buildProtocol(self, addr: IAddress | None) -> MessageServerProtocol:
        return MessageServerProtocol(self.server)


def _describe(address: IAddress) -> str:
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    return f"{host}:{port}" if host is not None else str(address)
