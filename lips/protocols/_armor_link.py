"""
The daemon's links, Twisted side: the daemon link between the daemons of two nodes
(TCP), and the local link between a daemon and its ARMOR processes (a UNIX socket).

Both carry the frames of L{lips.armor.Frame} (header with source and destination ARMOR
ids, lengths and a CRC-32), and both are thin: bytes become frames here, frames become
calls of their host (L{IDaemonLinkHost}, L{ILocalLinkHost}: lipsd's
L{DaemonService<lips.node.DaemonService>}, which feeds the daemon core), and the host's
messages become frames.  A frame the decoder refuses (L{lips.armor.FrameError}) is
counted as C{frames.refused.<fault>} and the peer is hung up on: after a bad frame the
stream cannot be trusted.  A handshake that goes wrong (L{lips.armor.HandshakeError}) is
counted as C{links.refused} and hung up on too.

L{DaemonLink}: both sides send a L{DaemonHello<lips.armor.DaemonHello>} (node name,
nonce), then an L{Auth<lips.armor.Auth>} proving they hold the cluster key (see
L{lips.armor.proof}); only then does the host hear of the peer, and only then are
message frames taken (before, bodies are bounded by L{lips.armor.HANDSHAKE_BODY}).  A
dialer names the node it expects; a peer that answers as another node is refused.

L{LocalLink}: the ARMOR process sends an L{ArmorHello<lips.armor.ArmorHello>} (ARMOR id,
incarnation, token); the host says whether it is the process it started, and the link
answers WELCOME or hangs up.  A process the daemon did not start (C{twistd lips-ftm}, C{lips
submit}) sends an L{AttachHello<lips.armor.AttachHello>} instead: the link answers with a
L{DaemonHello<lips.armor.DaemonHello>} carrying a fresh nonce, the process proves it holds
the cluster key (an L{Auth<lips.armor.Auth>} over both nonces), and the host says whether
that ARMOR may attach (L{ILocalLinkHost.armor_attach}).  Then messages both ways, and
the daemon's pings.  A CLOSE from the process before it runs means its ARMOR could not
be made (the reason goes to the host).  Who can connect at all is settled by the
socket's directory (mode 0700).

Bounds: a handshake must end within C{handshake_timeout} seconds; the factories accept
at most C{max_links} connections at once; a peer that does not read is paused, then
hung up on once C{max_unsent} bytes wait for it (Twisted's producer/consumer flow
control, as for the MessageServer's clients).
"""

from __future__ import annotations

import enum
import os
from collections import Counter
from collections.abc import Callable
from typing import Any, Final, TypeVar

from twisted.internet.interfaces import IAddress, IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from lips.armor import (
    HANDSHAKE_BODY,
    MAX_FRAME_BODY,
    NONCE_SIZE,
    ArmorHello,
    ArmorId,
    AttachHello,
    Auth,
    DaemonHello,
    Frame,
    FrameDecoder,
    FrameError,
    FrameKind,
    LinkError,
    Message,
    check_proof,
    close_reason,
    daemon_id,
    encode_frame,
    hello_role,
    ping_seq,
    proof,
)

__all__ = [
    "LINK_COUNTERS",
    "DaemonLink",
    "DaemonLinkFactory",
    "IDaemonLinkHost",
    "ILocalLinkHost",
    "LinkPhase",
    "LocalLink",
    "LocalLinkFactory",
]

#: The counters the links keep (in the counter their host shares with them), besides
#: C{frames.refused.<fault>} for each L{lips.armor.FrameFault}.
LINK_COUNTERS: Final[tuple[str, ...]] = (
    "frames.in",
    "frames.out",
    "frames.refused",  # all refused frames (each also by its fault)
    "links.authenticated",
    "links.refused",  # a handshake that failed, or a hello the host refused
    "links.busy",  # a connection over max_links
    "links.timeout",  # no handshake within handshake_timeout
    "links.unread",  # hung up on: too many bytes waiting for a peer that does not read
)

#: Seconds a handshake may take.
HANDSHAKE_TIMEOUT: Final = 5.0
#: Bytes that may wait for a peer that does not read before it is hung up on.
MAX_UNSENT: Final = 16 * 1024 * 1024


class LinkPhase(enum.Enum):
    """Where a link stands."""

    HELLO = "hello"
    """Waiting for the peer's hello."""
    AUTH = "auth"
    """Daemon link: waiting for the peer's proof."""
    UP = "up"
    """Authenticated: messages flow."""
    CLOSED = "closed"
    """Hung up, or lost."""


class IDaemonLinkHost(Interface):
    """What a L{DaemonLink} tells: lipsd's daemon service."""

    def peer_authenticated(link: DaemonLink) -> bool:
        """
        C{link.peer} proved who it is.  Return False to have the link hung up on (the
        host keeps another link to that node).
        """

    def peer_message(link: DaemonLink, message: Message) -> None:
        """A message came over C{link}, from the daemon of C{link.peer}."""

    def peer_lost(link: DaemonLink, reason: str) -> None:
        """C{link} is gone (or never came up: C{link.phase} says how far it got)."""


class ILocalLinkHost(Interface):
    """What a L{LocalLink} tells: lipsd's daemon service."""

    def armor_hello(link: LocalLink, hello: ArmorHello) -> bool:
        """An ARMOR process named itself: is it the one started?  False: hang up."""

    def armor_attach(link: LocalLink, hello: AttachHello) -> bool:
        """
        A process the daemon did not start proved it holds the cluster key and attaches
        itself as C{hello} says: may it?  False: hang up.
        """

    def armor_message(link: LocalLink, message: Message) -> None:
        """A message from the ARMOR process of C{link}."""

    def armor_pong(link: LocalLink, seq: int) -> None:
        """It answered ping C{seq}."""

    def armor_failed(link: LocalLink, reason: str) -> None:
        """It says it cannot run, for C{reason}."""

    def armor_lost(link: LocalLink, reason: str) -> None:
        """The link of an ARMOR process that was welcomed is gone."""


@implementer(IPushProducer)
class _Link(Protocol):
    """What both links share: frames in and out, the handshake deadline, flow control."""

    log = Logger()
    description = "link"

    def __init__(
        self,
        counters: Counter[str],
        clock: IReactorTime,
        *,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        max_unsent: int = MAX_UNSENT,
        max_body: int = MAX_FRAME_BODY,
    ) -> None:
        self.counters = counters
        self.clock = clock
        self.phase = LinkPhase.HELLO
        self.decoder = FrameDecoder(min(HANDSHAKE_BODY, max_body))
        self.max_body = max_body
        self.max_unsent = max_unsent
        self.handshake_timeout = handshake_timeout
        self.reason: str | None = None
        self.peer_address = "?"
        self.up = False
        self.on_close: Callable[[_Link], None] | None = None
        self._deadline: IDelayedCall | None = None
        self._paused = False
        self._reading_paused = False
        self._unsent = 0

    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        self.peer_address = _describe(transport.getPeer())
        transport.registerProducer(self, True)  # type: ignore[attr-defined]
        self._deadline = self.clock.callLater(self.handshake_timeout, self._too_slow)
        self.opened()

    def opened(self) -> None:
        """The connection is made (the subclass starts its handshake)."""

    def _too_slow(self) -> None:
        self._deadline = None
        if self.phase is not LinkPhase.UP:
            self.counters["links.timeout"] += 1
            self.hangup(f"no handshake within {self.handshake_timeout:g} s", abort=True)

    def authenticated(self) -> None:
        """The handshake is over: lift the body bound, forget the deadline."""
        self.phase = LinkPhase.UP
        self.up = True
        if self._paused:  # the peer was already slow to read during the handshake
            self._stop_reading()
        self.decoder.limit(self.max_body)
        deadline, self._deadline = self._deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()

    # -- bytes in ---------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        for item in self.decoder.feed(data):
            if self.phase is LinkPhase.CLOSED:
                return
            if isinstance(item, FrameError):
                self.counters["frames.refused"] += 1
                self.counters[f"frames.refused.{item.fault.value}"] += 1
                self.log.warn(
                    "Refused a frame from {peer} ({what}): {error}; hanging up",
                    peer=self.peer_address,
                    what=self.description,
                    error=str(item),
                )
                self.hangup(f"bad frame: {item}", abort=True)
                return
            self.counters["frames.in"] += 1
            try:
                self.frame_received(item)
            except LinkError as e:
                self.counters["links.refused"] += 1
                self.log.warn(
                    "Hanging up on {peer} ({what}): {error}",
                    peer=self.peer_address,
                    what=self.description,
                    error=str(e),
                )
                self.hangup(str(e))
                return

    def frame_received(self, frame: Frame) -> None:
        raise NotImplementedError

    # -- bytes out --------------------------------------------------------------------------

    def write_frame(self, frame: Frame) -> bool:
        """
        Write C{frame}; False if the link is closed, or if the peer was hung up on
        because too much waits for it.
        """
        transport = self.transport
        if transport is None or self.phase is LinkPhase.CLOSED:
            return False
        data = encode_frame(frame)
        if self._paused:
            self._unsent += len(data)
            if self._unsent > self.max_unsent:
                self.counters["links.unread"] += 1
                self.log.warn(
                    "Hanging up on {peer} ({what}): it reads nothing ({unsent} bytes wait)",
                    peer=self.peer_address,
                    what=self.description,
                    unsent=self._unsent,
                )
                self.hangup("it reads nothing", abort=True)
                return False
        self.counters["frames.out"] += 1
        transport.write(data)
        return True

    def send_message(self, message: Message) -> bool:
        """Send C{message} (once the link is up); whether it was written."""
        if self.phase is not LinkPhase.UP:
            return False
        return self.write_frame(Frame.of_message(message))

    def hangup(self, reason: str, *, abort: bool = False) -> None:
        """Close the link, saying why (a CLOSE frame) unless C{abort}."""
        if self.phase is LinkPhase.CLOSED:
            return
        if not abort:
            self.write_frame(Frame.control(FrameKind.CLOSE, reason[:1000]))
        self.phase = LinkPhase.CLOSED
        self.reason = self.reason or reason
        transport = self.transport
        if transport is not None:
            if abort:
                transport.abortConnection()  # type: ignore[attr-defined]
            else:
                transport.loseConnection()

    # -- IPushProducer ------------------------------------------------------------------------

    def pauseProducing(self) -> None:
        """
        The peer reads too slowly: stop reading from it too, once the link is up.
        Before, reading goes on (a handshake's bodies are bounded): TLS pauses its
        producer until its own handshake is done, which needs reading.
        """
        if not self._paused:
            self._paused = True
            if self.phase is LinkPhase.UP:
                self._stop_reading()

    def _stop_reading(self) -> None:
        if not self._reading_paused:
            self._reading_paused = True
            assert self.transport is not None
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def resumeProducing(self) -> None:
        if self._paused:
            self._paused = False
            self._unsent = 0
        if self._reading_paused:
            self._reading_paused = False
            assert self.transport is not None
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def stopProducing(self) -> None:
        self._paused = False

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        deadline, self._deadline = self._deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()
        was = self.phase
        self.phase = LinkPhase.CLOSED
        if self.reason is None:
            self.reason = reason.getErrorMessage()
        if self.on_close is not None:
            self.on_close(self)
        self.closed(was, self.reason)

    def closed(self, phase: LinkPhase, reason: str) -> None:
        """The connection is gone; it had reached C{phase}."""


class DaemonLink(_Link):
    """
    One daemon link, either end (see the module docstring).

    @param node: this daemon's node.
    @param key: the links' key (L{lips.armor.link_key} of the cluster key).
    @param dialer: whether this side dialed.
    @param expect: the node a dialer dialed (it refuses any other).
    @param nonce: where nonces come from (L{os.urandom}).
    @ivar peer: the peer's node, once it said it (believed once C{phase} is UP).
    @ivar phase_reached: the furthest phase it reached (for the host, on its loss).
    """

    description = "daemon link"

    def __init__(
        self,
        host: IDaemonLinkHost,
        node: str,
        key: bytes,
        counters: Counter[str],
        clock: IReactorTime,
        *,
        dialer: bool,
        expect: str | None = None,
        nonce: Callable[[int], bytes] = os.urandom,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        max_unsent: int = MAX_UNSENT,
        max_body: int = MAX_FRAME_BODY,
    ) -> None:
        super().__init__(
            counters,
            clock,
            handshake_timeout=handshake_timeout,
            max_unsent=max_unsent,
            max_body=max_body,
        )
        if not IDaemonLinkHost.providedBy(host):
            raise TypeError(f"not an IDaemonLinkHost: {host!r}")
        if dialer and expect is None:
            raise ValueError("a dialer names the node it dials")
        self.host = host
        self.node = node
        self.key = key
        self.dialer = dialer
        self.expect = expect
        self.peer: str | None = None
        self.nonce = nonce(NONCE_SIZE)
        self._peer_nonce = b""

    def __repr__(self) -> str:
        way = "to" if self.dialer else "from"
        return f"<DaemonLink {self.node} {way} {self.peer or self.expect} {self.phase.value}>"

    def opened(self) -> None:
        self.write_frame(DaemonHello(self.node, self.nonce).frame())

    def _nonces(self) -> tuple[bytes, bytes]:
        return (self.nonce, self._peer_nonce) if self.dialer else (self._peer_nonce, self.nonce)

    def frame_received(self, frame: Frame) -> None:
        if frame.kind is FrameKind.CLOSE:
            self.reason = f"the peer hung up: {close_reason(frame)}"
            self._lose()
            return
        phase = self.phase
        if phase is LinkPhase.HELLO:
            hello = DaemonHello.from_frame(frame)
            if self.expect is not None and hello.node != self.expect:
                raise LinkError(f"dialed node {self.expect}, but {hello.node} answered")
            if hello.node == self.node:
                raise LinkError(f"a daemon link from node {self.node} to itself")
            self.peer = hello.node
            self._peer_nonce = hello.nonce
            dialer_nonce, acceptor_nonce = self._nonces()
            mine = proof(
                self.key,
                dialer=self.dialer,
                own=self.node,
                peer=hello.node,
                dialer_nonce=dialer_nonce,
                acceptor_nonce=acceptor_nonce,
            )
            self.phase = LinkPhase.AUTH
            self.write_frame(Auth(mine).frame())
        elif phase is LinkPhase.AUTH:
            assert self.peer is not None
            dialer_nonce, acceptor_nonce = self._nonces()
            check_proof(
                self.key,
                Auth.from_frame(frame),
                dialer=not self.dialer,
                own=self.peer,
                peer=self.node,
                dialer_nonce=dialer_nonce,
                acceptor_nonce=acceptor_nonce,
            )
            self.authenticated()
            self.counters["links.authenticated"] += 1
            if not self.host.peer_authenticated(self):
                self.hangup(f"a daemon link between {self.node} and {self.peer} is up already")
        elif frame.kind is FrameKind.MESSAGE:
            self.host.peer_message(self, frame.message())
        elif frame.kind is FrameKind.PING:
            self.write_frame(Frame(FrameKind.PONG, body=frame.body))
        elif frame.kind is not FrameKind.PONG:
            raise LinkError(f"a {frame.kind.name} frame on a daemon link that is up")

    def _lose(self) -> None:
        self.phase = LinkPhase.CLOSED
        if self.transport is not None:
            self.transport.loseConnection()

    def closed(self, phase: LinkPhase, reason: str) -> None:
        self.host.peer_lost(self, reason)


class DaemonLinkFactory(Factory):
    """
    Accepts daemon links for the daemon of C{node}: at most C{max_links} at once (more
    are refused at once, counted as C{links.busy}).
    """

    def __init__(
        self,
        host: IDaemonLinkHost,
        node: str,
        key: bytes,
        counters: Counter[str],
        clock: IReactorTime,
        *,
        max_links: int = 64,
        nonce: Callable[[int], bytes] = os.urandom,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        max_unsent: int = MAX_UNSENT,
    ) -> None:
        self.host = host
        self.node = node
        self.key = key
        self.counters = counters
        self.clock = clock
        self.max_links = max_links
        self.nonce = nonce
        self.handshake_timeout = handshake_timeout
        self.max_unsent = max_unsent
        self.open: set[DaemonLink] = set()

    def buildProtocol(self, addr: IAddress | None) -> DaemonLink | None:
        if not _room(self):
            return None
        link = DaemonLink(
            self.host,
            self.node,
            self.key,
            self.counters,
            self.clock,
            dialer=False,
            nonce=self.nonce,
            handshake_timeout=self.handshake_timeout,
            max_unsent=self.max_unsent,
        )
        return _opened(self, link)


class LocalLink(_Link):
    """
    The daemon's end of the local link of one ARMOR process (see the module docstring).

    @ivar armor: the ARMOR it named in its hello (believed once C{phase} is UP).
    @ivar incarnation: the incarnation it named.
    """

    description = "local link"

    def __init__(
        self,
        host: ILocalLinkHost,
        counters: Counter[str],
        clock: IReactorTime,
        *,
        node: str | None = None,
        key: bytes | None = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        max_unsent: int = MAX_UNSENT,
        max_body: int = MAX_FRAME_BODY,
    ) -> None:
        super().__init__(
            counters,
            clock,
            handshake_timeout=handshake_timeout,
            max_unsent=max_unsent,
            max_body=max_body,
        )
        if not ILocalLinkHost.providedBy(host):
            raise TypeError(f"not an ILocalLinkHost: {host!r}")
        if (node is None) != (key is None):
            raise ValueError("a local link takes attaching processes with both node and key")
        self.host = host
        self.node = node
        self.key = key
        self.armor: ArmorId | None = None
        self.incarnation = 0
        #: Whether the process attached itself (L{AttachHello}) rather than being started.
        self.attached = False
        self._attach: AttachHello | None = None
        self._nonce = b""

    def __repr__(self) -> str:
        return f"<LocalLink {self.armor}#{self.incarnation} {self.phase.value}>"

    def _welcome(self, armor: ArmorId, incarnation: int) -> None:
        self.armor = armor
        self.incarnation = incarnation
        self.authenticated()
        self.counters["links.authenticated"] += 1
        self.write_frame(Frame(FrameKind.WELCOME))

    def frame_received(self, frame: Frame) -> None:
        if self.phase is LinkPhase.HELLO:
            if hello_role(frame) == "attach":
                self._attach_hello(frame)
                return
            hello = ArmorHello.from_frame(frame)
            if not self.host.armor_hello(self, hello):
                raise LinkError(f"{hello.armor} (incarnation {hello.incarnation}) is not expected")
            self._welcome(hello.armor, hello.incarnation)
        elif self.phase is LinkPhase.AUTH:
            attach = self._attach
            assert attach is not None and self.key is not None and self.node is not None
            check_proof(
                self.key,
                Auth.from_frame(frame),
                dialer=True,
                own=attach.armor,
                peer=daemon_id(self.node),
                dialer_nonce=attach.nonce,
                acceptor_nonce=self._nonce,
            )
            self.attached = True
            if not self.host.armor_attach(self, attach):
                raise LinkError(f"{attach.armor} may not attach itself here")
            self._welcome(attach.armor, attach.incarnation)
        elif frame.kind is FrameKind.MESSAGE:
            self.host.armor_message(self, frame.message())
        elif frame.kind is FrameKind.PONG:
            self.host.armor_pong(self, ping_seq(frame))
        elif frame.kind is FrameKind.CLOSE:
            self.host.armor_failed(self, close_reason(frame))
            self.phase = LinkPhase.CLOSED
            self.reason = "it hung up"
            assert self.transport is not None
            self.transport.loseConnection()
        else:
            raise LinkError(f"a {frame.kind.name} frame from an ARMOR process")

    def _attach_hello(self, frame: Frame) -> None:
        """A process attaching itself: answer with a nonce; its proof comes next."""
        if self.key is None or self.node is None:
            raise LinkError("this daemon takes no attaching processes (it has no cluster key)")
        self._attach = AttachHello.from_frame(frame)
        self._nonce = os.urandom(NONCE_SIZE)
        self.phase = LinkPhase.AUTH
        self.write_frame(DaemonHello(self.node, self._nonce).frame())

    def send_ping(self, seq: int) -> bool:
        """Ping it with C{seq}; whether it was written."""
        if self.phase is not LinkPhase.UP:
            return False
        return self.write_frame(Frame.control(FrameKind.PING, seq))

    def closed(self, phase: LinkPhase, reason: str) -> None:
        if self.armor is not None:
            self.host.armor_lost(self, reason)


class LocalLinkFactory(Factory):
    """Accepts the local links of one daemon's ARMOR processes, at most C{max_links}."""

    def __init__(
        self,
        host: ILocalLinkHost,
        counters: Counter[str],
        clock: IReactorTime,
        *,
        node: str | None = None,
        key: bytes | None = None,
        max_links: int = 128,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        max_unsent: int = MAX_UNSENT,
    ) -> None:
        self.host = host
        self.counters = counters
        self.clock = clock
        self.node = node
        self.key = key
        self.max_links = max_links
        self.handshake_timeout = handshake_timeout
        self.max_unsent = max_unsent
        self.open: set[LocalLink] = set()

    def buildProtocol(self, addr: IAddress | None) -> LocalLink | None:
        if not _room(self):
            return None
        link = LocalLink(
            self.host,
            self.counters,
            self.clock,
            node=self.node,
            key=self.key,
            handshake_timeout=self.handshake_timeout,
            max_unsent=self.max_unsent,
        )
        return _opened(self, link)


_L = TypeVar("_L", bound=_Link)


def _room(factory: DaemonLinkFactory | LocalLinkFactory) -> bool:
    """Whether C{factory} may take one more link (else it is counted C{links.busy})."""
    if len(factory.open) >= factory.max_links:
        factory.counters["links.busy"] += 1
        return False
    return True


def _opened(factory: DaemonLinkFactory | LocalLinkFactory, link: _L) -> _L:
    """C{link}, one of C{factory}'s open links until it closes."""
    open_links: set[Any] = factory.open
    link.factory = factory
    link.on_close = open_links.discard
    open_links.add(link)
    return link


def _describe(address: IAddress) -> str:
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is not None:
        return f"{host}:{port}"
    name = getattr(address, "name", None)
    return str(name) if name else str(address)
