"""
Helpers of the integration suite: real twistd servers (on L{lips.testing.Cluster} and
L{lips.testing.Process}), a raw wire peer, a test PKI.

Everything here runs on the real reactor that pytest-twisted drives; nothing sleeps
for a fixed time: waiting is polling against a deadline, or a Deferred with a timeout.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

import lips.client
from lips.client import TupleSpaceClient
from lips.testing import (
    ANY_LOAD,
    START_DEADLINE,
    STOP_DEADLINE,
    TWISTD,
    Cluster,
    PortTaken,
    Process,
    ProcessGroup,
    ServerDidNotStart,
    free_port,
)
from lips.wire import Error, ErrorCode, Frame, FrameDecoder, FrameError, Message, decode_message

__all__ = [
    "EXAMPLES",
    "PKI",
    "STEP_TIMEOUT",
    "RawPeer",
    "RingCluster",
    "ServerFarm",
    "TwistdServer",
    "eventually",
    "expect_error",
    "make_pki",
    "run_twistd",
    "spawn_lipsd",
    "start_rings",
    "within",
]

T = TypeVar("T")

#: The longest any single step of a test may wait for the network.
STEP_TIMEOUT: Final = 10.0


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


async def within(
    d: defer.Deferred[T] | Coroutine[Any, Any, T], seconds: float = STEP_TIMEOUT
) -> T:
    """Await C{d}, failing with L{defer.TimeoutError} if it takes longer than C{seconds}."""
    dd: defer.Deferred[T] = d if isinstance(d, defer.Deferred) else defer.ensureDeferred(d)
    dd.addTimeout(seconds, _reactor())
    return await dd


async def eventually(
    check: Callable[[], Awaitable[bool]], seconds: float = STEP_TIMEOUT, what: str = "condition"
) -> None:
    """Poll C{check} every 20 ms until it is true; fail after C{seconds}."""
    reactor = _reactor()
    deadline = reactor.seconds() + seconds
    while not await check():
        if reactor.seconds() > deadline:
            raise AssertionError(f"{what} did not become true within {seconds} s")
        await deferLater(reactor, 0.02)


def expect_error(message: Message, code: ErrorCode) -> Error:
    """C{message} is a typed Error reply with C{code}."""
    assert isinstance(message, Error), f"expected Error {code.name}, got {message!r}"
    assert message.code is code, f"expected {code.name}, got {message!r}"
    return message


# -- twistd processes --------------------------------------------------------------------


@attrs.define(eq=False)
class TwistdServer(Process):
    """
    One twistd process of a test (a L{lips.testing.Process}), and the clients the test
    connected to it, which are closed before it is stopped.
    """

    clients: list[TupleSpaceClient] = attrs.field(factory=list, init=False)

    async def connect(self, endpoint: str | None = None, name: str = "") -> TupleSpaceClient:
        """A client connected to this server (closed before the server stops)."""
        client = await within(
            lips.client.connect(_reactor(), endpoint or self.endpoint, name=name)
        )
        self.clients.append(client)
        return client

    async def stats(self, endpoint: str | None = None) -> dict[str, int | float | str]:
        """The server's counters, read over a fresh connection that is closed again."""
        client = await self.connect(endpoint)
        try:
            return await within(client.stats())
        finally:
            self.clients.remove(client)
            await within(client.close())

    async def stop_async(self, timeout: float = STOP_DEADLINE, reactor: Any = None) -> None:
        """Close its clients, then SIGTERM the process, SIGKILL it if it lingers."""
        clients, self.clients = self.clients, []
        for client in clients:
            await within(client.close())
        await super().stop_async(timeout, reactor)


def _server(process: Process) -> TwistdServer:
    assert isinstance(process, TwistdServer), process
    return process


@attrs.define(eq=False)
class ServerFarm:
    """
    Starts twistd servers and clusters for one test, logging under C{directory}; stops
    them all (the lipsd nodes first).
    """

    directory: Path
    group: ProcessGroup = attrs.field(init=False)
    clusters: list[Cluster] = attrs.field(factory=list, init=False)

    def __attrs_post_init__(self) -> None:
        self.group = ProcessGroup(self.directory, process_type=TwistdServer)

    @property
    def logs(self) -> list[Path]:
        """The log of every process started so far."""
        return [*self.group.logs, *(log for c in self.clusters for log in c.logs)]

    def spawn(
        self,
        *options: str,
        port: int | None,
        role: str = "lips-msgserver",
        host: str = "127.0.0.1",
        prefix: Sequence[str] = (),
    ) -> TwistdServer:
        """
        Run C{twistd -n --pidfile= ROLE OPTIONS} without waiting for anything.

        @param port: the port it is expected to listen on (the options must say so).
        @param host: the address it listens on.
        @param prefix: a command that runs twistd (C{ip netns exec NS}, say).
        """
        name = f"{role}-{len(self.group.processes)}"
        server = self.group.twistd(name, role, *options, port=port, host=host, prefix=prefix)
        return _server(server.start())

    async def start(
        self,
        *options: str,
        role: str = "lips-msgserver",
        listen: str = "tcp:{port}:interface=127.0.0.1",
    ) -> TwistdServer:
        """
        Start C{twistd -n --pidfile= ROLE --listen LISTEN OPTIONS} on a free loopback
        port and return once it accepts connections.  Should another process take the
        port first, try again on another.

        @param listen: the --listen endpoint, C{{port}} standing for the chosen port.
        """
        for _ in range(3):
            port = free_port()
            server = self.spawn(
                "--listen", listen.format(port=port), *options, port=port, role=role
            )
            try:
                await server.wait_listening_async(START_DEADLINE)
            except PortTaken:
                await server.stop_async()
            else:
                return server
        raise ServerDidNotStart(f"{role}: every port tried was taken")

    def cluster(self, **options: Any) -> Cluster:
        """
        A new L{Cluster} of C{Cluster.create(DIRECTORY, **options)} in a directory of
        its own, its servers made as L{TwistdServer}s and stopped with the farm.
        """
        directory = self.directory / f"cluster-{len(self.clusters) + 1}"
        cluster = Cluster.create(directory, process_type=TwistdServer, **options)
        self.clusters.append(cluster)
        return cluster

    async def stop(self) -> None:
        await self.group.stop_async()
        for cluster in self.clusters:
            await cluster.stop_async()


@attrs.define(eq=False)
class RingCluster:
    """
    A cluster file of C{size} MessageServers on loopback (free ports, its own key and
    state directory), and the servers of it that a test starts.
    """

    farm: ServerFarm
    size: int = 3
    hosts: Sequence[str] = ()
    """Each server's address (all on 127.0.0.1 with free ports by default; on other
    addresses the ports are fixed)."""
    transport: str = "unicast"
    one_to_many: str = ""
    """The multicast group or broadcast address and port of a non-unicast transport."""
    timings: str = "loopback"
    durable: bool = False
    prefixes: Mapping[str, Sequence[str]] = attrs.Factory(dict)
    """A command that runs each server's twistd (C{ip netns exec NS}), by name."""
    cluster: Cluster = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.cluster = self.farm.cluster(
            msgservers=self.size,
            hosts=self.hosts,
            transport=self.transport,
            one_to_many=self.one_to_many,
            timings=self.timings,
            durable=self.durable,
            prefixes=self.prefixes,
        )

    @property
    def path(self) -> Path:
        return self.cluster.path

    @property
    def names(self) -> list[str]:
        return self.cluster.names()

    @property
    def running(self) -> dict[str, TwistdServer]:
        """The servers that run now, by name."""
        return {
            name: _server(p)
            for name, p in self.cluster.processes.items()
            if name in self.cluster.members and p.running
        }

    def endpoint(self, name: str) -> str:
        return self.cluster.processes[name].endpoint

    async def start(self, name: str) -> TwistdServer:
        """Start server C{name}; return once it accepts connections."""
        server = _server(self.cluster.processes[name].start())
        await server.wait_listening_async(START_DEADLINE)
        return server

    def kill(self, name: str) -> None:
        """SIGKILL server C{name}: no goodbye to anyone."""
        self.cluster.processes[name].kill()

    async def serving(self, *names: str, members: int | None = None) -> list[dict[str, Any]]:
        """
        Wait until every server in C{names} (all running ones by default) serves in a
        ring of C{members} members (all running ones by default); their stats.
        """
        return await self.cluster.wait_serving_async(*names, members=members, deadline=30)


#: The examples' directory: the modules lipsd's children import (C{--pythonpath}).
EXAMPLES: Final = Path(__file__).resolve().parents[2] / "examples"


async def start_rings(farm: ServerFarm, fixservers: int = 2, msgservers: int = 0) -> Cluster:
    """
    A cluster file of C{fixservers} FixServers and C{msgservers} MessageServers (each
    role its own ring) with every server started; returns once every one serves in a
    ring of all its role's servers.
    """
    rings = farm.cluster(fixservers=fixservers, msgservers=msgservers)
    rings.start()
    await rings.wait_serving_async(deadline=30)
    return rings


def spawn_lipsd(
    farm: ServerFarm, path: Path, name: str, *options: str, processes: bool = True
) -> TwistdServer:
    """
    Start C{twistd lips-node} as node C{name} of cluster file C{path}, with C{options};
    with C{processes}, it may run the examples' functions (and only those) on any load.
    """
    allow = ("--allow", "evalapp:*", "--allow", "ftprimes:*")
    extra = ("--pythonpath", str(EXAMPLES), *allow, *ANY_LOAD) if processes else ()
    return farm.spawn(
        "--config", str(path), "--name", name, *extra, *options, port=None, role="lips-node"
    )


async def run_twistd(*args: str, cwd: Path) -> tuple[int, str]:
    """Run twistd to completion; its exit code and its output (stdout and stderr)."""
    from twisted.internet.utils import getProcessOutputAndValue

    out, err, code = await within(
        getProcessOutputAndValue(
            TWISTD[0],
            [*TWISTD[1:], *args],
            env=dict(os.environ),
            path=str(cwd),
        ),
        60,
    )
    return code, (out + err).decode(errors="replace")


# -- a raw peer on the wire ------------------------------------------------------------------


class RawPeer(Protocol):
    """A client that writes whatever bytes a test gives it and decodes what comes back."""

    def __init__(self) -> None:
        self.decoder = FrameDecoder(1 << 24)
        self.received: defer.DeferredQueue[Frame | FrameError] = defer.DeferredQueue()
        self.closed: defer.Deferred[None] = defer.Deferred()

    @classmethod
    async def connect(cls, server: TwistdServer) -> RawPeer:
        assert server.port is not None
        endpoint = TCP4ClientEndpoint(_reactor(), "127.0.0.1", server.port)
        return await within(connectProtocol(endpoint, cls()))

    def dataReceived(self, data: bytes) -> None:
        for item in self.decoder.feed(data):
            self.received.put(item)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed.callback(None)

    @property
    def open(self) -> bool:
        return not self.closed.called

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    async def reply(self) -> tuple[int, Message]:
        """The next message from the server and its request id."""
        item = await within(self.received.get())
        assert isinstance(item, Frame), f"the server sent a bad frame: {item!r}"
        return item.request_id, decode_message(item)

    async def request(self, frame: bytes, request_id: int) -> Message:
        """Send C{frame}; the server's answer, which must carry C{request_id}."""
        self.send(frame)
        rid, message = await self.reply()
        assert rid == request_id, f"answer to request {rid}, expected {request_id}: {message!r}"
        return message

    async def wait_closed(self) -> None:
        """Until the server closes the connection (fails after the step timeout)."""
        await within(self.closed)

    def close(self) -> None:
        if self.open:
            assert self.transport is not None
            self.transport.loseConnection()


# -- a test PKI ---------------------------------------------------------------------------------


@attrs.frozen
class PKI:
    """PEM files of a test CA, a server and a client it signed, and a rogue CA and client."""

    directory: Path
    ca_cert: Path
    trust_dir: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_trust_dir: Path
    rogue_client_cert: Path
    rogue_client_key: Path
    peer_cert: Path
    peer_key: Path
    """A certificate for both ends of a link (server and client use): a daemon's."""


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "LiPS tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    common_name: str,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    usage: x509.ObjectIdentifier | list[x509.ObjectIdentifier],
    names: list[x509.GeneralName],
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_cert, ca_key = ca
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(usage if isinstance(usage, list) else [usage]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _write(
    directory: Path, stem: str, pair: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]
) -> tuple[Path, Path]:
    cert, key = pair
    cert_path = directory / f"{stem}.pem"
    key_path = directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def make_pki(directory: Path) -> PKI:
    """
    Generate the test PKI into C{directory}: a CA; a server certificate for
    C{DNS:localhost} and C{IP:127.0.0.1} and a client certificate, both signed by it;
    and a rogue CA with a client certificate of its own.  The trust directories hold
    only the CA certificate, as C{caCertsDir} and C{trustRoots} want.
    """
    ca = _ca("LiPS test CA")
    rogue = _ca("Rogue CA")
    server = _leaf(
        "localhost",
        ca,
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))],
    )
    client = _leaf("client", ca, ExtendedKeyUsageOID.CLIENT_AUTH, [])
    both = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    peer = _leaf("daemon", ca, both, [x509.DNSName("localhost")])
    rogue_client = _leaf("rogue client", rogue, ExtendedKeyUsageOID.CLIENT_AUTH, [])
    trust_dir = directory / "trust"
    rogue_trust_dir = directory / "rogue-trust"
    trust_dir.mkdir()
    rogue_trust_dir.mkdir()
    ca_cert, _ = _write(directory, "ca", ca)
    (trust_dir / "ca.pem").write_bytes(ca_cert.read_bytes())
    rogue_ca_cert, _ = _write(directory, "rogue-ca", rogue)
    (rogue_trust_dir / "rogue-ca.pem").write_bytes(rogue_ca_cert.read_bytes())
    server_cert, server_key = _write(directory, "server", server)
    client_cert, client_key = _write(directory, "client", client)
    peer_cert, peer_key = _write(directory, "peer", peer)
    rogue_client_cert, rogue_client_key = _write(directory, "rogue-client", rogue_client)
    return PKI(
        directory=directory,
        ca_cert=ca_cert,
        trust_dir=trust_dir,
        server_cert=server_cert,
        server_key=server_key,
        client_cert=client_cert,
        client_key=client_key,
        rogue_trust_dir=rogue_trust_dir,
        rogue_client_cert=rogue_client_cert,
        rogue_client_key=rogue_client_key,
        peer_cert=peer_cert,
        peer_key=peer_key,
    )
