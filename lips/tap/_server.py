"""
Options and service construction shared by the MessageServer and FixServer roles.

Both roles are the same server: a FixServer holds the System Tuple Space (node state),
a MessageServer an application's tuple space.  Alone (C{--listen}), a server keeps its
space in memory; with C{--config cluster.toml --name NAME} it is one member of the
file's ring for its role, and the space is replicated by the ring.
"""

from __future__ import annotations

import math
import os
import random
import socket
from typing import Any, Final

from OpenSSL import crypto
from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import ssl
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.endpoints import serverFromString, wrapServerTLS
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.python import usage

from lips.cluster import (
    ClusterConfig,
    ClusterConfigError,
    Role,
    ServerEntry,
    StateFileError,
    load_cluster,
)
from lips.protocols import (
    BroadcastTransport,
    IRingTransport,
    MessageServerFactory,
    MulticastTransport,
    ReplicaNode,
    UnicastTransport,
    listen_ring,
)
from lips.replica import Journal, JournalError
from lips.server import ISpaceBackend, LocalBackend, MessageServer, ServerLimits
from lips.space import TupleSpace
from lips.tuples import Limits

__all__ = ["ServerOptions", "ServerService", "make_server_service"]


def number_option(name: str, *, positive: bool = False, top: float | None = None) -> Any:
    """
    A converter of option C{--name}: a finite number of at least 0 (above 0 if
    C{positive}, at most C{top} if given), else a UsageError.
    """

    def convert(value: str) -> float:
        try:
            n = float(value)
        except ValueError:
            raise usage.UsageError(f"--{name} must be a number, not {value!r}") from None
        if not math.isfinite(n) or n < 0 or (positive and n == 0):
            what = "positive" if positive else "at least 0"
            raise usage.UsageError(f"--{name} must be {what}, not {value!r}")
        if top is not None and n > top:
            raise usage.UsageError(f"--{name} must be at most {top:g}, not {value!r}")
        return n

    return convert


def integer_option(name: str, lo: int) -> Any:
    """A converter of option C{--name}: an integer of at least C{lo}, else a UsageError."""

    def convert(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise usage.UsageError(f"--{name} must be an integer, not {value!r}") from None
        if n < lo:
            raise usage.UsageError(f"--{name} must be at least {lo}")
        return n

    return convert


_BOUNDS: Final = ServerLimits()
#: The bounds of L{ServerLimits} as options, with their help (timeouts: 0 is never).
_BOUND_OPTIONS: Final = (
    ("max_connections", "Most client connections at once."),
    ("max_per_peer", "Most client connections at once from one address."),
    ("hello_timeout", "Seconds a new connection may take to say HELLO (0: no limit)."),
    ("idle_timeout", "Seconds a connection with nothing waiting may be silent (0: no limit)."),
    ("max_partial_bytes", "Bytes of incomplete frames held across all connections."),
    ("partial_timeout", "Seconds a frame may stay incomplete (0: no limit)."),
    ("max_unsent_bytes", "Bytes of replies a client that does not read may leave unsent."),
    ("max_waiting_per_session", "Most in/rd requests of one connection waiting at once."),
    ("max_waiting", "Most in/rd requests of all connections waiting at once."),
    ("forget_after", "Seconds before a vanished unnamed process is forgotten (0: never)."),
    ("max_vanished", "Most vanished processes waiting to be forgotten."),
)


def _bound_option(name: str, help_: str) -> list[Any]:
    """The option of the L{ServerLimits} field C{name}: C{--max-connections}, say."""
    option = name.replace("_", "-")
    default = getattr(_BOUNDS, name)
    if isinstance(default, float):
        return [option, None, default, help_, number_option(option)]
    return [option, None, default, help_, integer_option(option, 1)]


class ServerOptions(usage.Options):
    """Command-line options of a tuple-space server."""

    default_port = 7010
    role: Role = "msgserver"

    optParameters: list[Any] = [
        [
            "config",
            "c",
            None,
            "Cluster file (TOML): serve as its server --name, replicated by the ring.",
        ],
        ["listen", "l", None, "Endpoint to listen on (default tcp:PORT:interface=127.0.0.1)."],
        [
            "name",
            None,
            None,
            "Name of this server (with --config: its name in the file; else HOST-ROLE).",
        ],
        ["tls-cert", None, None, "PEM certificate: serve TLS on the --listen endpoint."],
        ["tls-key", None, None, "PEM private key of --tls-cert."],
        [
            "tls-client-ca",
            None,
            None,
            "PEM CA certificate: require client certificates it signed.",
        ],
        [
            "max-tuple-size",
            None,
            1 << 20,
            "Largest encoded tuple, bytes.",
            integer_option("max-tuple-size", 16),
        ],
        ["max-arity", None, 64, "Most fields in a tuple.", integer_option("max-arity", 1)],
        ["max-depth", None, 8, "Deepest nesting of a tuple.", integer_option("max-depth", 1)],
        [
            "log-limit",
            None,
            4096,
            "Answers remembered per process for retries.",
            integer_option("log-limit", 1),
        ],
        *(_bound_option(name, help_) for name, help_ in _BOUND_OPTIONS),
    ]

    def postOptions(self) -> None:
        self["cluster"] = self["entry"] = None
        if self["config"] is not None:
            self._cluster_options()
        if self["listen"] is None:
            self["listen"] = f"tcp:{self.default_port}:interface=127.0.0.1"
        if self["name"] is None:
            self["name"] = f"{socket.gethostname()}-{self.role}"
        cert, key, ca = self["tls-cert"], self["tls-key"], self["tls-client-ca"]
        if (cert is None) != (key is None):
            raise usage.UsageError("--tls-cert and --tls-key go together")
        if ca is not None and cert is None:
            raise usage.UsageError("--tls-client-ca needs --tls-cert and --tls-key")
        for path in (cert, key, ca):
            if path is not None and not os.path.isfile(path):
                raise usage.UsageError(f"no such file: {path}")
        self["tls"] = tls_options(cert, key, ca) if cert is not None else None
        from twisted.internet import reactor

        try:
            serverFromString(reactor, self["listen"])
        except (ValueError, TypeError, KeyError, OSError) as e:
            # OSError: an ssl: endpoint naming a key or certificate that cannot be read.
            raise usage.UsageError(f"bad --listen endpoint {self['listen']!r}: {e}") from None
        try:
            self["limits"] = Limits(
                max_arity=self["max-arity"],
                max_depth=self["max-depth"],
                max_size=self["max-tuple-size"],
            )
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        try:
            self["bounds"] = ServerLimits(
                **{name: self[name.replace("_", "-")] for name, _ in _BOUND_OPTIONS}
            )
        except (TypeError, ValueError) as e:
            raise usage.UsageError(str(e)) from None

    def _cluster_options(self) -> None:
        """Take this server's name, listen endpoint and ring from the cluster file."""
        if self["listen"] is not None:
            raise usage.UsageError("--listen comes from the cluster file with --config")
        try:
            cluster = load_cluster(self["config"])
        except ClusterConfigError as e:
            raise usage.UsageError(str(e)) from None
        names = [s.name for s in cluster.members(self.role)]
        if self["name"] is None:
            raise usage.UsageError(
                f"--config needs --name: one of the {self.role}s {', '.join(names) or '(none)'}"
            )
        try:
            entry = cluster.server(self["name"])
        except ClusterConfigError as e:
            raise usage.UsageError(str(e)) from None
        if entry.role != self.role:
            raise usage.UsageError(
                f"{entry.name} is a {entry.role} in {self['config']}, not a {self.role}"
            )
        try:
            cluster.ring_seq_store(entry.name).load()
        except StateFileError as e:
            raise usage.UsageError(str(e)) from None
        if entry.role in cluster.require_tls and self["tls-client-ca"] is None:
            raise usage.UsageError(
                f"{self['config']}: cluster.require_tls names {entry.role}s: {entry.name} serves"
                " only TLS with client certificates (give --tls-cert, --tls-key and"
                " --tls-client-ca)"
            )
        self["cluster"], self["entry"], self["listen"] = cluster, entry, entry.listen


def tls_options(cert: str, key: str, ca: str | None) -> ssl.CertificateOptions:
    """
    TLS with C{cert} and C{key}; with C{ca}, the peer must present a certificate it
    signed.

    @raise usage.UsageError: if the PEM files cannot be loaded.
    """
    try:
        with open(cert, "rb") as f:
            certificate = crypto.load_certificate(crypto.FILETYPE_PEM, f.read())
        with open(key, "rb") as f:
            private_key = crypto.load_privatekey(crypto.FILETYPE_PEM, f.read())
        ca_certs = []
        if ca is not None:
            with open(ca, "rb") as f:
                ca_certs.append(crypto.load_certificate(crypto.FILETYPE_PEM, f.read()))
    except crypto.Error as e:
        raise usage.UsageError(f"cannot load TLS material: {e}") from None
    except OSError as e:
        raise usage.UsageError(f"cannot read TLS material {e.filename}: {e.strerror}") from None
    return ssl.CertificateOptions(
        privateKey=private_key,
        certificate=certificate,
        verify=ca is not None,
        caCerts=ca_certs or None,
        requireCertificate=ca is not None,
    )


def ring_transport(cluster: ClusterConfig, role: Role) -> IRingTransport:
    """The transport the cluster file asks for, for C{role}'s ring."""
    address = cluster.one_to_many_address(role)
    if cluster.transport == "multicast":
        assert address is not None
        spec = cluster.one_to_many[role]
        return MulticastTransport(
            address,
            interface=cluster.interface,
            ttl=spec.ttl if spec is not None else 1,
            loopback=True,
        )
    if cluster.transport == "broadcast":
        assert address is not None
        return BroadcastTransport(address)
    return UnicastTransport()


class RingService(service.Service):
    """
    A server's ring member on the network: its sockets are opened before the reactor
    runs (so twistd exits at once if they cannot be), and closed on stop.
    """

    def __init__(self, node: ReplicaNode, reactor: Any) -> None:
        self.node = node
        self.reactor = reactor
        self.ports: list[IListeningPort] = []

    def privilegedStartService(self) -> None:
        service.Service.privilegedStartService(self)
        self._listen()

    def startService(self) -> None:
        service.Service.startService(self)
        self._listen()

    def _listen(self) -> None:
        if not self.ports:
            self.ports = listen_ring(self.reactor, self.node.protocol)

    def stopService(self) -> Deferred[None]:
        service.Service.stopService(self)
        if self.ports:
            self.node.protocol.leave()
        self.node.stop()
        ports, self.ports = self.ports, []
        return DeferredList(
            [maybeDeferred(p.stopListening) for p in ports], consumeErrors=True
        ).addCallback(lambda _: None)


class ServerService(service.MultiService):
    """A tuple-space server: its listener, and the core it serves (C{core})."""

    def __init__(self, core: MessageServer, listen: str = "") -> None:
        service.MultiService.__init__(self)
        self.core = core
        self.listen = listen

    def stopService(self) -> Any:
        self.core.stop()
        return service.MultiService.stopService(self)

    def privilegedStartService(self) -> None:
        """
        Listen (as root, if twistd runs so).  An endpoint that cannot listen (a port in
        use or out of range, an address not here, a refused privilege) ends twistd with
        one line naming the endpoint and the reason, and a non-zero exit.
        """
        try:
            service.MultiService.privilegedStartService(self)
        except (CannotListenError, OverflowError, OSError) as e:
            reason = e.socketError if isinstance(e, CannotListenError) else e
            raise SystemExit(
                f"{self.core.name}: cannot listen on {self.listen or 'its endpoint'}: {reason}"
            ) from None


def role_options(role: Role, port: int, description: str) -> type[ServerOptions]:
    """The options of C{twistd lips-ROLE}: a server of C{role}, by default on C{port}."""
    return type(
        "Options",
        (ServerOptions,),
        {
            "synopsis": "[options]",
            "longdesc": description,
            "default_port": port,
            "role": role,
            "__module__": f"lips.tap.{role}",
        },
    )


def makeService(options: ServerOptions) -> service.MultiService:
    """A server as C{options} say (the C{makeService} of every server plugin)."""
    return make_server_service(options)


def make_server_service(options: ServerOptions, reactor: Any = None) -> ServerService:
    """A MultiService running one tuple-space server as C{options} say."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    limits: Limits = options["limits"]
    space = TupleSpace(limits, options["log-limit"])
    cluster: ClusterConfig | None = options["cluster"]
    backend: ISpaceBackend
    probes = []
    ring: RingService | None = None
    if cluster is not None:
        entry: ServerEntry = options["entry"]
        try:
            node = ReplicaNode(
                node=entry.id,
                peers=cluster.ring_peers(entry.role),
                sealer=cluster.sealer(entry.role),
                clock=reactor,
                config=cluster.ring_config,
                space=space,
                store=cluster.ring_seq_store(entry.name),
                journal=Journal(cluster.journal_dir(entry.name)) if cluster.durable else None,
                ring_transport=ring_transport(cluster, entry.role),
            )
        except (JournalError, OSError) as e:
            raise SystemExit(f"{entry.name}: cannot recover its state: {e}") from None
        backend, ring = node, RingService(node, reactor)
        probes.append(node.stats)
    else:
        backend = LocalBackend(space)
    core = MessageServer(
        backend,
        reactor,
        name=options["name"],
        limits=limits,
        rng=random.SystemRandom(),
        probes=probes,
        bounds=options["bounds"],
    )
    factory = MessageServerFactory(core)
    top = ServerService(core, options["listen"])
    if ring is not None:
        service.MultiService.addService(top, ring)
    endpoint = serverFromString(reactor, options["listen"])
    if options["tls"] is not None:
        endpoint = wrapServerTLS(options["tls"], endpoint)
    listener = StreamServerEndpointService(endpoint, factory)
    # Fail startup (twistd exits non-zero) when the endpoint cannot listen, as strports do.
    listener._raiseSynchronously = True
    listener.setServiceParent(top)
    return top
