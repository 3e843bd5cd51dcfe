"""
The UDP adapter of the token ring: datagrams in, messages to the engine, effects out.

L{RingProtocol} holds no ring logic.  It opens each datagram with the cluster's
L{Sealer}, checks that the sender is a configured peer writing from its configured
address, decodes the body with L{lips.ring._codec} and hands the message to the
L{RingEngine}, through the L{Driver} that hosts the engine on the reactor's clock (its
timers, the order of its effects).  The driver carries out what the engine asks for
with the protocol's handlers: a L{Send} becomes a sealed datagram; the item of a
L{Deliver} (a L{Delivered} payload, a L{Safe} watermark, a L{Configuration}) and every
L{Persist} go to the C{deliver} callback, in order; a L{Log} is logged.  A send to one
node is written to that node's ring address, a send to this node itself is handed back
to the engine on the next turn of the reactor; a broadcast goes where the ring's
transport says (L{lips.protocols._transports}): unicast to every other peer, once to a
multicast group, or once to the subnet's broadcast address.  L{listen_ring} opens the
sockets the transport needs.  Bad datagrams are logged, counted and dropped here:
nothing a peer or a stranger sends can raise into the reactor.  A pause the engine
notices (its timers far overdue: the process was stopped or not scheduled) is logged as
a warning, with how long it lasted; the engine counts it as C{paused}.

Counters (L{RingProtocol.counters}, and L{RingProtocol.stats} for a status display;
the names are stable, see L{COUNTERS}):

  - C{datagrams.sent}, C{bytes.sent}: datagrams written, and their bytes.  A broadcast
    counts once per peer in unicast fan-out, once with multicast or broadcast.
  - C{datagrams.received}, C{bytes.received}: datagrams read on any of the member's
    sockets, before any check.
  - C{datagrams.received.group}: of those, the ones read on the multicast group or
    broadcast socket (zero while multicast does not get through, e.g. a switch with IGMP
    snooping and no querier).
  - C{dropped.<reason>}: datagrams dropped, by reason.  From the sealer:
    C{dropped.truncated}, C{dropped.bad_magic}, C{dropped.bad_version},
    C{dropped.other_cluster} (another cluster on the same network), C{dropped.wrong_mode},
    C{dropped.bad_auth} (tampered, or sealed with another key), and, for authentic
    datagrams that are not fresh (L{lips.ring._seal}'s anti-replay window),
    C{dropped.stale_boot} (of an earlier boot of its sender: replayed from a member
    that died or restarted), C{dropped.replayed} (a counter already accepted: a replay,
    or the network duplicated it), C{dropped.too_old} (a counter below the window) and
    C{dropped.too_many_senders} (more sender ids than the sealer tracks).  Then
    C{dropped.misdirected} (authentic, but written to another member alone: a token or
    commit token replayed here), C{dropped.own}
    (this member's own one-to-many datagram, looped back by the host: expected with
    multicast and broadcast, not logged), C{dropped.unknown_sender} (authentic, but the
    claimed sender is not a peer, or wrote from another address than its own),
    C{dropped.malformed} (authentic, but the body does not decode),
    C{dropped.sender_mismatch} (a join or merge detect naming another sender than its
    datagram) and C{dropped.stopped} (arrived after L{RingProtocol.stop}).
  - C{send.unknown_peer} (the engine sent to a node with no address),
    C{send.no_transport} (a send before the socket was open or after it closed),
    C{send.failed} (the socket refused a write; the datagram is lost like any other).
  - C{errors.internal} (a bug in the adapter or the engine, logged with its traceback),
    C{errors.deliver} (the C{deliver} callback raised), C{errors.transport} (the ring
    socket could not be set up for the transport: the member did not start).
  - The driver's (L{lips.kernel.COUNTERS}): C{timers.fired} (engine timers that came
    due), C{effects.dropped} (effects left after L{RingProtocol.stop}), and, for bugs,
    C{errors.core} (the engine raised on a timer), C{errors.handler} (a handler of the
    protocol raised), C{errors.unhandled} (an effect the protocol has no handler for).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, TypeAlias, TypeVarTuple

from twisted.internet.interfaces import IDelayedCall, IListeningPort, IReactorTime, IReactorUDP
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from lips.kernel import COUNTERS as DRIVER_COUNTERS
from lips.kernel import Deliver, Driver, Log, Persist, Send
from lips.protocols._transports import Address, IRingTransport, UnicastTransport
from lips.ring import (
    Configuration,
    Delivered,
    Delivery,
    Dropped,
    DropReason,
    Join,
    MergeDetect,
    RingCodecError,
    RingEngine,
    RingMessage,
    Safe,
    Sealer,
    decode,
    encode,
)

__all__ = ["COUNTERS", "RingEvent", "RingProtocol", "listen_ring"]

Ts = TypeVarTuple("Ts")

RingEvent: TypeAlias = Delivered | Safe | Configuration | Persist[int]
"""
What the protocol hands the application: the item of each of the engine's L{Deliver}
effects, and each L{Persist} (the ring sequence number to store, as
C{Persist(RingStored.RING_SEQ, seq)}).
"""

#: Every counter L{RingProtocol} keeps, as the module docstring describes them.
COUNTERS: Final[tuple[str, ...]] = (
    "datagrams.sent",
    "bytes.sent",
    "datagrams.received",
    "bytes.received",
    "datagrams.received.group",
    *(f"dropped.{reason.value}" for reason in DropReason),
    "dropped.misdirected",
    "dropped.own",
    "dropped.unknown_sender",
    "dropped.malformed",
    "dropped.sender_mismatch",
    "dropped.stopped",
    "send.unknown_peer",
    "send.no_transport",
    "send.failed",
    "errors.internal",
    "errors.deliver",
    "errors.transport",
    *DRIVER_COUNTERS,
)


class RingProtocol(DatagramProtocol):
    """
    One ring member's UDP endpoint.

    @param engine: the ring engine of this node (not yet started).
    @param sealer: seals and opens the cluster's datagrams.
    @param peers: the ring address C{(host, port)} of every configured node; hosts are
        IP addresses, as the transport reports them for incoming datagrams.  This
        node's own entry is never written to; L{listen_ring} binds the ring socket to
        it, and own datagrams are recognised by it.
    @param clock: the time source and scheduler.
    @param deliver: called with every L{RingEvent}, in the engine's order.
    @param counters: where datagram, byte, drop and error counts go (see L{COUNTERS}).
    @param ring_transport: how broadcasts travel; unicast fan-out by default.

    Sender check: an authentic datagram is accepted only from the exact ring address
    (host and port) configured for the node it claims to be, whichever socket it
    arrives on.  This holds for multicast and broadcast as well, because members write
    their one-to-many datagrams from their ring socket too: the group or broadcast
    socket only receives.  A datagram claiming to be this node, from this node's own
    ring address, is its own one-to-many datagram come back through the host: dropped
    as C{dropped.own}, quietly.  From any other address (another node configured with
    the same id, or a replay) it is C{dropped.unknown_sender}, with a warning.

    @ivar start_failure: why the ring socket could not be set up for the transport, if
        it could not (the engine was then not started).
    @ivar driver: the L{Driver} hosting the engine on C{clock}.
    """

    log = Logger()

    def __init__(
        self,
        engine: RingEngine,
        sealer: Sealer,
        peers: Mapping[int, Address],
        clock: IReactorTime,
        deliver: Callable[[RingEvent], None],
        *,
        counters: Counter[str] | None = None,
        ring_transport: IRingTransport | None = None,
    ) -> None:
        missing = sorted(engine.peers - set(peers) - {engine.node})
        if missing:
            raise ValueError(f"no address for ring peers {missing}")
        self.engine = engine
        self.sealer = sealer
        self.node = engine.node
        self.peers: dict[int, Address] = {n: (a[0], a[1]) for n, a in peers.items()}
        self.clock = clock
        self.deliver = deliver
        self.counters: Counter[str] = counters if counters is not None else Counter()
        self.ring_transport: IRingTransport = (
            ring_transport if ring_transport is not None else UnicastTransport()
        )
        self.start_failure: Failure | None = None
        self._own = self.peers.get(self.node)
        self._others = [a for n, a in sorted(self.peers.items()) if n != self.node]
        self._loopback: deque[RingMessage] = deque()
        self._loopback_call: IDelayedCall | None = None
        self._stopped = False
        self.driver = Driver(
            engine,
            clock,
            {Send: self._send, Deliver: self._deliver, Persist: self._deliver, Log: self._log},
            counters=self.counters,
            log=self.log,
        )

    # -- inputs ---------------------------------------------------------------------------

    def startProtocol(self) -> None:
        """
        Set the ring socket up for the transport, then start the engine: it persists a
        ring sequence number and gathers a ring.  If the socket cannot be set up, the
        failure is logged, counted and kept in L{start_failure}, and the protocol stops.
        """
        transport = self.transport
        try:
            if transport is None:
                raise RuntimeError("started without a transport")
            self.ring_transport.prepare(transport)
        except Exception:
            self.start_failure = Failure()
            self.counters["errors.transport"] += 1
            self.log.failure(
                "Could not set up the ring socket for {transport!r}",
                failure=self.start_failure,
                transport=self.ring_transport,
            )
            self.stop()
            return
        self._input(self.engine.start)

    def stopProtocol(self) -> None:
        self.stop()

    def stop(self) -> None:
        """Go quiet: cancel the pending timer and loopback, ignore further input."""
        self._stopped = True
        self.driver.stop()
        call, self._loopback_call = self._loopback_call, None
        if call is not None and call.active():
            call.cancel()
        self._loopback.clear()

    def leave(self) -> None:
        """
        Leave the ring gracefully: the engine says goodbye (the others form a new ring
        at once, without waiting for the token to be lost) and falls silent.
        """
        if not self._stopped:
            self._input(self.engine.leave)

    def submit(self, payload: bytes) -> bool:
        """
        Queue C{payload} for broadcast in the ring's total order.

        @return: False if it was not queued (the engine's queue is full, or this
            protocol is stopped).
        """
        if self._stopped:
            return False
        return self.driver.input(self.engine.submit, payload)

    def stats(self) -> dict[str, int]:
        """Every counter of L{COUNTERS} (zero if it never counted) and any other kept."""
        values = dict.fromkeys(COUNTERS, 0)
        values.update(self.counters)
        return values

    def one_to_many_received(self, datagram: bytes, addr: Any) -> None:
        """A datagram read on the multicast group or broadcast socket."""
        self.counters["datagrams.received.group"] += 1
        self.datagramReceived(datagram, addr)

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        if self._stopped:
            self.counters["dropped.stopped"] += 1
            return
        try:
            self._datagram(datagram, addr)
        except Exception:
            self.counters["errors.internal"] += 1
            self.log.failure("Unexpected error handling a datagram from {addr}", addr=addr)

    def _datagram(self, datagram: bytes, addr: Any) -> None:
        self.counters["datagrams.received"] += 1
        self.counters["bytes.received"] += len(datagram)
        opened = self.sealer.open(datagram)
        if isinstance(opened, Dropped):
            reason = opened.reason.value
            self.counters[f"dropped.{reason}"] += 1
            self.log.debug("Dropped a datagram from {addr}: {reason}", addr=addr, reason=reason)
            return
        sender = opened.sender
        if opened.to not in (0, self.node):
            # Written to one other member (a token, a commit token): a replay here.
            self.counters["dropped.misdirected"] += 1
            return
        source = (addr[0], addr[1]) if isinstance(addr, tuple) and len(addr) >= 2 else None
        if sender == self.node and source is not None and source == self._own:
            self.counters["dropped.own"] += 1
            return
        if sender == self.node or source is None or self.peers.get(sender) != source:
            self.counters["dropped.unknown_sender"] += 1
            self.log.warn(
                "Dropped an authentic datagram from {addr} claiming to be node {sender}",
                addr=addr,
                sender=sender,
            )
            return
        try:
            message = decode(opened.type, opened.body)
        except RingCodecError as e:
            self.counters["dropped.malformed"] += 1
            self.log.warn(
                "Dropped a malformed message from node {sender}: {error}",
                sender=sender,
                error=str(e),
            )
            return
        if isinstance(message, Join | MergeDetect) and message.sender != sender:
            self.counters["dropped.sender_mismatch"] += 1
            self.log.warn(
                "Dropped a {kind} from node {sender} naming node {named} as its sender",
                kind=type(message).__name__,
                sender=sender,
                named=message.sender,
            )
            return
        self._feed(message)

    def _feed(self, message: RingMessage) -> None:
        self._input(self.engine.received, message)

    def _input(self, method: Callable[[*Ts, float], object], *args: *Ts) -> None:
        """
        Feed one input to the engine through the driver, which carries out its effects
        and re-arms the timer; an engine that raises is logged and counted.
        """
        try:
            self.driver.input(method, *args)
        except Exception:
            self.counters["errors.internal"] += 1
            self.log.failure("The ring engine failed on an input")

    def _run_loopback(self) -> None:
        self._loopback_call = None
        for _ in range(len(self._loopback)):
            if self._stopped:
                return
            self._feed(self._loopback.popleft())

    # -- effects --------------------------------------------------------------------------

    #
    # The driver carries the engine's effects out in order, and none once stopped.  A
    # handler that feeds the engine again (a C{deliver} callback that submits) adds
    # effects that the driver carries out after the current ones, so order is kept.

    def _deliver(self, effect: Deliver[Delivery] | Persist[int]) -> None:
        event: RingEvent = effect.item if isinstance(effect, Deliver) else effect
        try:
            self.deliver(event)
        except Exception:
            self.counters["errors.deliver"] += 1
            self.log.failure("The deliver callback failed on {event!r}", event=event)

    def _log(self, effect: Log) -> None:
        self.log.emit(effect.level, effect.format, **dict(effect.fields))

    def _send(self, effect: Send[RingMessage]) -> None:
        if effect.to == self.node:
            # To itself (a one-member ring's token): back to the engine on the next turn
            # of the reactor, not by recursion.
            self._loopback.append(effect.message)
            if self._loopback_call is None:
                self._loopback_call = self.clock.callLater(0, self._run_loopback)
            return
        targets: Sequence[Address]
        if effect.to is None:
            targets = self.ring_transport.broadcast_to(self._others)
            if not targets:
                return
        else:
            addr = self.peers.get(effect.to) if isinstance(effect.to, int) else None
            if addr is None:
                self.counters["send.unknown_peer"] += 1
                self.log.warn("No address for ring node {node}", node=effect.to)
                return
            targets = [addr]
        try:
            type_code, body = encode(effect.message)
            to = effect.to if isinstance(effect.to, int) else 0
            datagram = self.sealer.seal(type_code, self.node, body, to)
        except Exception:
            self.counters["errors.internal"] += 1
            self.log.failure("Could not encode {message!r}", message=effect.message)
            return
        transport = self.transport
        if transport is None:
            self.counters["send.no_transport"] += 1
            return
        for addr in targets:
            try:
                transport.write(datagram, addr)
            except Exception as e:
                self.counters["send.failed"] += 1
                self.log.warn("Could not send to {addr}: {error}", addr=addr, error=str(e))
                continue
            self.counters["datagrams.sent"] += 1
            self.counters["bytes.sent"] += len(datagram)


def listen_ring(reactor: IReactorUDP, protocol: RingProtocol) -> list[IListeningPort]:
    """
    Open the sockets of ring member C{protocol} on C{reactor}, as its transport needs
    them, which starts the member.

    The ring socket is bound to the member's own ring address (its entry in the
    protocol's peers); with multicast or broadcast, a second socket is bound to the
    group or broadcast address and port first, and the group is joined on the
    transport's interface.  Multicast and broadcast need a reactor that also provides
    L{IReactorMulticast<twisted.internet.interfaces.IReactorMulticast>}.

    @return: the listening ports, the ring socket last.  Stop all of them to take the
        member off the network; stopping the ring socket stops the protocol.
    @raise ValueError: if the protocol's peers have no address for the member itself.
    @raise Exception: whatever opening, joining or setting up a socket raised (a
        L{CannotListenError<twisted.internet.error.CannotListenError>}, a
        L{MulticastJoinError<twisted.internet.error.MulticastJoinError>}, ...); then no
        socket is left open.
    """
    own = protocol.peers.get(protocol.node)
    if own is None:
        raise ValueError(f"no ring address for this node ({protocol.node}) among the peers")
    ports = protocol.ring_transport.listen(reactor, protocol, own, protocol.one_to_many_received)
    failure = protocol.start_failure
    if failure is not None:
        for port in ports:
            port.stopListening()
        failure.raiseException()
    return ports
