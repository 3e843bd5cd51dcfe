"""
The TCP adapter of the MessageServer: bytes in, messages to the core, bytes out.

Each event of a connection is one input of the L{MessageServer<lips.server.MessageServer>}
(its core on the reactor's clock): the connection made, each decoded request, the bytes
of an incomplete frame it holds after each read (the core keeps the budget they share
across connections, and each frame's deadline, as one of its timers), and the
connection lost.  A connection past the connection bounds is refused BUSY at once.

The adapter holds only what it alone can see, within the core's L{ServerLimits
<lips.server.ServerLimits>}: a client that does not read its replies stops being read
from (Twisted's producer/consumer flow control: the transport pauses this protocol,
which pauses reading) and is closed once the replies waiting for it pass their bound.
It keeps no timer.
"""

from __future__ import annotations

from twisted.internet.interfaces import IAddress, IPushProducer
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from lips.server import MessageServer, Session
from lips.wire import (
    Error,
    ErrorCode,
    Frame,
    FrameDecoder,
    MessageError,
    decode_message,
    encode_message,
)

__all__ = ["MessageServerFactory", "MessageServerProtocol"]

#: Room in a frame body beyond the largest tuple, for the other fields of a message.
BODY_OVERHEAD = 4096


@implementer(IPushProducer)
class MessageServerProtocol(Protocol):
    """One client connection."""

    log = Logger()

    def __init__(self, server: MessageServer) -> None:
        self.server = server
        self.decoder = FrameDecoder(server.limits.max_size + BODY_OVERHEAD)
        self.session: Session | None = None
        self._paused = False  # the transport cannot take more replies for now
        self._unsent = 0  # bytes of replies written while paused

    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        peer = transport.getPeer()
        host = getattr(peer, "host", None)
        refused = self.server.admit(host)
        if refused is not None:
            self.log.warn(
                "Refusing a connection from {peer}: {why}", peer=_describe(peer), why=refused
            )
            transport.write(encode_message(Error(ErrorCode.BUSY, f"{refused}; retry later"), 0))
            transport.loseConnection()
            return
        transport.registerProducer(self, True)  # type: ignore[attr-defined]
        self.session = self.server.open_session(
            self._send, _describe(peer), host=host, abort=self._abort
        )

    def _send(self, data: bytes) -> None:
        transport = self.transport
        assert transport is not None
        if self._paused:
            self._unsent += len(data)
            bound = self.server.bounds.max_unsent_bytes
            if self._unsent > bound:
                self.server.counters["closed.unread"] += 1
                self.log.warn(
                    "Closing {peer}: it reads none of its replies ({unsent} bytes waiting,"
                    " the bound is {bound})",
                    peer=self.session.peer if self.session else "?",
                    unsent=self._unsent,
                    bound=bound,
                )
                self._abort()
                return
        transport.write(data)

    # -- IPushProducer: the transport's say on our replies ---------------------------------

    def pauseProducing(self) -> None:
        """The client reads too slowly for its replies: read its requests no more."""
        if not self._paused:
            self._paused = True
            self.server.counters["paused.unread"] += 1
            assert self.transport is not None
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def resumeProducing(self) -> None:
        if self._paused:
            self._paused = False
            self._unsent = 0
            assert self.transport is not None
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def stopProducing(self) -> None:
        self._paused = False

    def _abort(self) -> None:
        transport = self.transport
        if transport is not None:
            transport.abortConnection()  # type: ignore[attr-defined]

    # -- bytes in ---------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        session = self.session
        if session is None:
            return  # refused: its bytes mean nothing
        server = self.server
        limits = server.limits
        items = self.decoder.feed(data)
        held = self.decoder.buffered
        if (held or session.partial) and not server.buffered(session, held, bool(items)):
            return  # past the budget for incomplete frames: closing
        for item in items:
            if type(item) is Frame:
                try:
                    message = decode_message(item, limits)
                except MessageError as e:
                    session.error(e.code, e.message, item.request_id)
                    continue
                server.received(session, message, item.request_id)
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
            self.server.session_closed(self.session)


class MessageServerFactory(Factory):
    """Builds a L{MessageServerProtocol} per connection to one L{MessageServer}."""

    def __init__(self, server: MessageServer) -> None:
        self.server = server

    def buildProtocol(self, addr: IAddress | None) -> MessageServerProtocol:
        protocol = MessageServerProtocol(self.server)
        protocol.factory = self
        return protocol


def _describe(address: IAddress) -> str:
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    return f"{host}:{port}" if host is not None else str(address)
