"""
The UDP adapter of the token ring: datagrams in, messages to the engine, effects out.

L{RingProtocol} holds no ring logic.  It opens each datagram with the cluster's
L{Sealer}, checks that the sender is a configured peer writing from its configured
address, decodes the body with L{lips.ring._codec} and hands the message to the
L{RingEngine}; then it carries out what the engine asks for: L{Send} effects become
sealed datagrams (a broadcast is unicast to every other peer), every other effect goes
to the C{deliver} callback, in order.  It keeps one pending timer for the engine's next
deadline.  Bad datagrams are logged, counted and dropped here: nothing a peer or a
stranger sends can raise into the reactor.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Mapping
from typing import Any, TypeAlias

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from lips.ring._codec import RingCodecError, decode, encode
from lips.ring._engine import (
    Configuration,
    Deliver,
    PersistRingSeq,
    RingEngine,
    Safe,
    Send,
)
from lips.ring._messages import Join, MergeDetect, RingMessage
from lips.ring._seal import Dropped, Sealer

__all__ = ["RingEvent", "RingProtocol"]

RingEvent: TypeAlias = Deliver | Safe | Configuration | PersistRingSeq
"""The effects of the engine that are for the application rather than the network."""

Address: TypeAlias = tuple[str, int]


class RingProtocol(DatagramProtocol):
    """
    One ring member's UDP endpoint.

    @param engine: the ring engine of this node (not yet started).
    @param sealer: seals and opens the cluster's datagrams.
    @param peers: the C{(host, port)} of every configured node; hosts are IP addresses,
        as the transport reports them for incoming datagrams.  This node's own entry,
        if present, is never written to.
    @param clock: the time source and scheduler.
    @param deliver: called with every non-L{Send} effect of the engine, in order.
    @param counters: where datagram, byte, drop and error counts go.
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
        self._others = [a for n, a in sorted(self.peers.items()) if n != self.node]
        self._timer: IDelayedCall | None = None
        self._timer_deadline = 0.0
        self._loopback: deque[RingMessage] = deque()
        self._loopback_call: IDelayedCall | None = None
        self._flushing = False
        self._stopped = False

    # -- inputs ---------------------------------------------------------------------------

    def startProtocol(self) -> None:
        """Start the engine: it persists a ring sequence number and gathers a ring."""
        self._input(self.engine.start)

    def stopProtocol(self) -> None:
        self.stop()

    def stop(self) -> None:
        """Go quiet: cancel the pending timer and loopback, ignore further input."""
        self._stopped = True
        for call in (self._timer, self._loopback_call):
            if call is not None and call.active():
                call.cancel()
        self._timer = self._loopback_call = None
        self._loopback.clear()

    def submit(self, payload: bytes) -> bool:
        """
        Queue C{payload} for broadcast in the ring's total order.

        @return: False if it was not queued (the engine's queue is full, or this
            protocol is stopped).
        """
        if self._stopped:
            return False
        try:
            return self.engine.submit(payload, self.clock.seconds())
        finally:
            self._flush()

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
        source = (addr[0], addr[1]) if isinstance(addr, tuple) and len(addr) >= 2 else None
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
        self._input(lambda now: self.engine.received(message, now))

    def _input(self, event: Callable[[float], None]) -> None:
        """Feed one event to the engine, then carry out its effects and re-arm the timer."""
        try:
            event(self.clock.seconds())
        except Exception:
            self.counters["errors.internal"] += 1
            self.log.failure("The ring engine failed on an input")
        self._flush()

    def _tick(self) -> None:
        self._timer = None
        # The clock computes "now + delay", which may land a rounding error short of
        # the deadline: tick at the deadline itself, so what was due fires.
        deadline = self._timer_deadline
        self._input(lambda now: self.engine.tick(max(now, deadline)))

    def _run_loopback(self) -> None:
        self._loopback_call = None
        for _ in range(len(self._loopback)):
            if self._stopped:
                return
            self._feed(self._loopback.popleft())

    # -- effects --------------------------------------------------------------------------

    def _flush(self) -> None:
        """
        Carry out the engine's effects in order.  An effect that feeds the engine again
        (a C{deliver} callback that submits) adds effects that this same loop picks up
        after the current ones, so order is kept.
        """
        if self._flushing or self._stopped:
            return
        self._flushing = True
        try:
            while not self._stopped:
                effects = self.engine.take_effects()
                if not effects:
                    break
                for effect in effects:
                    # Once stopped (by a deliver callback, say), nothing more goes out.
                    if isinstance(effect, Send):
                        self._send(effect)
                    else:
                        self._deliver(effect)
        finally:
            self._flushing = False
        self._reschedule()

    def _deliver(self, event: RingEvent) -> None:
        if self._stopped:
            return
        try:
            self.deliver(event)
        except Exception:
            self.counters["errors.deliver"] += 1
            self.log.failure("The deliver callback failed on {event!r}", event=event)

    def _send(self, effect: Send) -> None:
        if self._stopped:
            return
        if effect.to == self.node:
            # To itself (a one-member ring's token): back to the engine on the next turn
            # of the reactor, not by recursion.
            self._loopback.append(effect.message)
            if self._loopback_call is None:
                self._loopback_call = self.clock.callLater(0, self._run_loopback)
            return
        if effect.to is None:
            targets = self._others
        else:
            addr = self.peers.get(effect.to)
            if addr is None:
                self.counters["send.unknown_peer"] += 1
                self.log.warn("No address for ring node {node}", node=effect.to)
                return
            targets = [addr]
        try:
            type_code, body = encode(effect.message)
            datagram = self.sealer.seal(type_code, self.node, body)
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

    def _reschedule(self) -> None:
        """Keep exactly one timer, due at the engine's next deadline (none if it has none)."""
        if self._stopped:
            return
        deadline = self.engine.next_deadline()
        timer = self._timer
        if deadline is None:
            if timer is not None and timer.active():
                timer.cancel()
            self._timer = None
            return
        if timer is not None and timer.active():
            if deadline != self._timer_deadline:
                self._timer_deadline = deadline
                timer.reset(max(0.0, deadline - self.clock.seconds()))
            return
        self._timer_deadline = deadline
        self._timer = self.clock.callLater(max(0.0, deadline - self.clock.seconds()), self._tick)
