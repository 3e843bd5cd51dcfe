"""
How a ring member's datagrams reach the others: the three transports of the ring.

The engine asks for two kinds of sends: to one node (the token, a commit token) and to
every node (messages, joins, merge detects).  A send to one node is always a unicast
datagram to that node's ring address.  What differs is the send to every node:

  - L{UnicastTransport} (corosync's C{udpu}): one datagram per other member, each written
    to its ring address.  Works on any network, costs N-1 writes per broadcast.
  - L{MulticastTransport} (corosync's C{udp}): one datagram written to an IP multicast
    group; every member listens on the group with a second socket, bound to the group
    address and port and joined (C{IP_ADD_MEMBERSHIP}) on its interface.
  - L{BroadcastTransport}: one datagram written to the subnet's broadcast address
    (C{SO_BROADCAST}); every member listens on a second socket bound to that address and
    port.

In every transport each member writes everything -- unicast and one-to-many -- from its
ring socket, bound to its own ring address: so every datagram, on whichever socket it
arrives, comes from the exact (host, port) configured for its sender, and the sender
check of L{lips.protocols.RingProtocol} stays exact in every transport.  The second
socket only receives.  Several members may share a host (the receiving sockets are
opened with C{SO_REUSEADDR} and C{SO_REUSEPORT}, and the kernel hands each one-to-many
datagram to all of them); a member then hears its own one-to-many datagrams too, which
the protocol drops and counts as C{dropped.own}.

Addresses are IP literals: no name is ever resolved, so a port is ready as soon as it is
opened.  Multicast and broadcast are IPv4 only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeAlias, TypeVar

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IListeningPort,
    IMulticastTransport,
    IReactorMulticast,
    IReactorUDP,
    IUDPTransport,
)
from twisted.internet.protocol import DatagramProtocol
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

__all__ = [
    "MAX_DATAGRAM",
    "Address",
    "BroadcastTransport",
    "IRingTransport",
    "MulticastTransport",
    "UnicastTransport",
]

Address: TypeAlias = tuple[str, int]
T = TypeVar("T")

#: The largest datagram the ring's sockets read: the largest a UDP datagram can be, so a
#: datagram is never cut short by the read (the sealer would drop it as unauthentic).
MAX_DATAGRAM: Final = 65535


class IRingTransport(Interface):
    """
    One way to carry a ring member's broadcasts: where they are written, how the ring
    socket is set up, and which sockets a member listens on.
    """

    def broadcast_to(others: Sequence[Address]) -> Sequence[Address]:
        """
        Where one broadcast is written, given the ring addresses of the other members
        (nowhere, if there are none).
        """

    def prepare(port: IUDPTransport | IMulticastTransport) -> None:
        """
        Set up the member's ring socket before its first write.

        @raise Exception: if the socket cannot be set up for this transport.
        """

    def listen(
        reactor: IReactorUDP,
        ring: DatagramProtocol,
        own: Address,
        one_to_many: Callable[[bytes, Any], None],
    ) -> list[IListeningPort]:
        """
        Open the member's sockets: C{ring} on its ring address C{own} (opened last, as
        that starts the member), and, if this transport has one, a socket for the
        one-to-many datagrams, whose datagrams go to C{one_to_many}.  On failure nothing
        is left open.
        """


class _Relay(DatagramProtocol):
    """The protocol of the one-to-many socket: hands every datagram to the ring member."""

    noisy = False

    def __init__(self, received: Callable[[bytes, Any], None]) -> None:
        self.received = received

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.received(datagram, addr)


def _at_once(d: Deferred[T], what: str) -> T:
    """
    The result of C{d}, which must already have one (Twisted's multicast calls answer at
    once when given IP literals); its failure is raised.
    """
    outcome: list[T | Failure] = []
    d.addBoth(outcome.append)
    if not outcome:
        raise RuntimeError(f"{what} did not complete at once")
    result = outcome[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result


def _close(ports: Sequence[IListeningPort]) -> None:
    for port in ports:
        port.stopListening()


def _ring_port(
    reactor: IReactorUDP, ring: DatagramProtocol, own: Address, multicast: bool
) -> IListeningPort:
    if multicast:
        port = IReactorMulticast(reactor).listenMulticast(
            own[1], ring, interface=own[0], maxPacketSize=MAX_DATAGRAM
        )
        return IListeningPort(port)
    return reactor.listenUDP(own[1], ring, interface=own[0], maxPacketSize=MAX_DATAGRAM)


def _shared_port(
    reactor: IReactorUDP, address: Address, one_to_many: Callable[[bytes, Any], None]
) -> IMulticastTransport:
    """A socket bound to a group or broadcast C{address}, which other members may share."""
    return IReactorMulticast(reactor).listenMulticast(
        address[1],
        _Relay(one_to_many),
        interface=address[0],
        maxPacketSize=MAX_DATAGRAM,
        listenMultiple=True,
    )


def _port_number(instance: object, attribute: attrs.Attribute[Any], value: Address) -> None:
    if not (isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], int)):
        raise TypeError(f"{attribute.name} must be a (host, port) tuple, not {value!r}")
    if not 0 < value[1] < 65536:
        raise ValueError(f"{attribute.name}: {value[1]} is not a UDP port")


def _ipv4(what: str, host: object) -> ipaddress.IPv4Address:
    if not isinstance(host, str):
        raise TypeError(f"{what} must be an IPv4 address literal, not {host!r}")
    try:
        return ipaddress.IPv4Address(host)
    except ValueError:
        raise ValueError(f"{what} must be an IPv4 address literal, not {host!r}") from None


def _group(instance: object, attribute: attrs.Attribute[Any], value: Address) -> None:
    _port_number(instance, attribute, value)
    if not _ipv4(attribute.name, value[0]).is_multicast:
        raise ValueError(f"{attribute.name}: {value[0]} is not an IPv4 multicast address")


def _broadcast(instance: object, attribute: attrs.Attribute[Any], value: Address) -> None:
    _port_number(instance, attribute, value)
    address = _ipv4(attribute.name, value[0])
    if address.is_multicast or address.is_unspecified:
        raise ValueError(f"{attribute.name}: {value[0]} is not a broadcast address")


def _interface(instance: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None and _ipv4(attribute.name, value).is_multicast:
        raise ValueError(f"{attribute.name}: {value} is not an interface address")


def _prepare_multicast(
    port: IUDPTransport | IMulticastTransport, interface: str | None, ttl: int, loopback: bool
) -> None:
    multicast = IMulticastTransport(port)
    if interface is None:
        interface = IUDPTransport(port).getHost().host
        if _ipv4("the ring socket's address", interface).is_unspecified:
            raise ValueError("the ring socket is bound to every interface: name one")
    _at_once(multicast.setOutgoingInterface(interface), "IP_MULTICAST_IF")
    multicast.setTTL(ttl)
    multicast.setLoopbackMode(loopback)


@implementer(IRingTransport)
@attrs.frozen
class UnicastTransport:
    """
    Broadcast by unicast fan-out: one datagram to every other member's ring address.
    One socket per member.
    """

    def broadcast_to(self, others: Sequence[Address]) -> Sequence[Address]:
        return others

    def prepare(self, port: IUDPTransport | IMulticastTransport) -> None:
        pass

    def listen(
        self,
        reactor: IReactorUDP,
        ring: DatagramProtocol,
        own: Address,
        one_to_many: Callable[[bytes, Any], None],
    ) -> list[IListeningPort]:
        return [_ring_port(reactor, ring, own, multicast=False)]


@implementer(IRingTransport)
@attrs.frozen
class MulticastTransport:
    """
    Broadcast by IP multicast: one datagram written to C{group}.

    @ivar group: the multicast group address and port every member listens on.
    @ivar interface: the address of the interface to join the group on and to send
        multicast from; by default the one the ring socket is bound to.
    @ivar ttl: how many routers a multicast datagram may cross (1: the local network).
    @ivar loopback: whether the kernel hands this host's own multicast datagrams back
        to its sockets (C{IP_MULTICAST_LOOP}).  Members on different hosts do not need
        it; members sharing a host on a real interface do.  On the loopback interface
        the kernel loops them back either way.  A member's own datagrams that come back
        are dropped and counted as C{dropped.own}.
    """

    group: Address = attrs.field(validator=_group)
    interface: str | None = attrs.field(default=None, validator=_interface, kw_only=True)
    ttl: int = attrs.field(
        default=1,
        validator=[
            attrs.validators.instance_of(int),
            attrs.validators.ge(0),
            attrs.validators.le(255),
        ],
        kw_only=True,
    )
    loopback: bool = attrs.field(
        default=False, validator=attrs.validators.instance_of(bool), kw_only=True
    )

    def broadcast_to(self, others: Sequence[Address]) -> Sequence[Address]:
        return [self.group] if others else []

    def prepare(self, port: IUDPTransport | IMulticastTransport) -> None:
        _prepare_multicast(port, self.interface, self.ttl, self.loopback)

    def listen(
        self,
        reactor: IReactorUDP,
        ring: DatagramProtocol,
        own: Address,
        one_to_many: Callable[[bytes, Any], None],
    ) -> list[IListeningPort]:
        interface = self.interface if self.interface is not None else own[0]
        shared = _shared_port(reactor, self.group, one_to_many)
        ports = [IListeningPort(shared)]
        try:
            _at_once(shared.joinGroup(self.group[0], interface), "IP_ADD_MEMBERSHIP")
            ports.append(_ring_port(reactor, ring, own, multicast=True))
        except BaseException:
            _close(ports)
            raise
        return ports


@implementer(IRingTransport)
@attrs.frozen
class BroadcastTransport:
    """
    Broadcast by UDP broadcast to the subnet: one datagram written to C{address}.  The
    host always hears its own broadcasts, so each member drops its own (C{dropped.own}).

    @ivar address: the subnet's broadcast address (C{192.0.2.255}, say) and the port
        every member listens on.  Members bind their receiving socket to this address,
        which Linux allows and which keeps unicast traffic off it.
    """

    address: Address = attrs.field(validator=_broadcast)

    def broadcast_to(self, others: Sequence[Address]) -> Sequence[Address]:
        return [self.address] if others else []

    def prepare(self, port: IUDPTransport | IMulticastTransport) -> None:
        IUDPTransport(port).setBroadcastAllowed(True)

    def listen(
        self,
        reactor: IReactorUDP,
        ring: DatagramProtocol,
        own: Address,
        one_to_many: Callable[[bytes, Any], None],
    ) -> list[IListeningPort]:
        ports = [IListeningPort(_shared_port(reactor, self.address, one_to_many))]
        try:
            ports.append(_ring_port(reactor, ring, own, multicast=False))
        except BaseException:
            _close(ports)
            raise
        return ports
