"""
Helpers of the integration suite: real twistd servers, a raw wire peer, a test PKI.

Everything here runs on the real reactor that pytest-twisted drives; nothing sleeps
for a fixed time: waiting is polling against a deadline, or a Deferred with a timeout.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import socket
import sys
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import defer, error
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.protocol import ProcessProtocol, Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

import lips.client
from lips.client import TupleSpaceClient
from lips.testing import ClusterMember, write_cluster
from lips.wire import Error, ErrorCode, Frame, FrameDecoder, FrameError, Message, decode_message

__all__ = [
    "PKI",
    "TWISTD",
    "RawPeer",
    "ANY_LOAD",
    "EXAMPLES",
    "RingCluster",
    "Rings",
    "ServerDidNotStart",
    "ServerFarm",
    "TwistdServer",
    "eventually",
    "expect_error",
    "free_port",
    "live_children",
    "make_pki",
    "run_twistd",
    "spawn_lipsd",
    "start_rings",
    "within",
]

T = TypeVar("T")

#: Runs twistd in this interpreter.  C{python -m twisted} is C{twist}, not C{twistd}
#: (it knows neither C{-n} nor C{--pidfile}), and C{twisted.scripts.twistd} has no
#: C{__main__}, so the entry point is called directly, as the C{twistd} script does.
TWISTD: Final = (
    sys.executable,
    "-c",
    "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()",
)

#: How long a server may take to start accepting connections.
START_DEADLINE: Final = 20.0
#: How long a server may take to exit after SIGTERM before it is killed.
STOP_DEADLINE: Final = 5.0
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


class ServerDidNotStart(Exception):
    """A twistd server exited, or did not accept connections, before its deadline."""


class _Watcher(ProcessProtocol):
    """Knows when the child process ended and how."""

    def __init__(self) -> None:
        self.ended: defer.Deferred[None] = defer.Deferred()
        self._waiters: list[defer.Deferred[None]] = []
        self.reason: Failure | None = None

    def processEnded(self, reason: Failure) -> None:
        self.reason = reason
        self.ended.callback(None)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def wait(self) -> defer.Deferred[None]:
        """A new Deferred that fires when the process has ended (one to time out)."""
        if self.reason is not None:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiters.append(d)
        return d


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@attrs.define(eq=False)
class TwistdServer:
    """One running C{twistd -n <role>} process and how to reach it."""

    role: str
    port: int
    log: Path
    transport: IProcessTransport
    watcher: _Watcher
    clients: list[TupleSpaceClient] = attrs.field(factory=list)
    host: str = "127.0.0.1"

    @property
    def endpoint(self) -> str:
        """Plain TCP client endpoint string of this server."""
        return f"tcp:host={self.host}:port={self.port}"

    @property
    def running(self) -> bool:
        return self.watcher.reason is None

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

    def read_log(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError as e:
            return f"(cannot read {self.log}: {e})"

    async def stop(self) -> None:
        """Close its clients, SIGTERM the process, SIGKILL it if it lingers."""
        clients, self.clients = self.clients, []
        for client in clients:
            await within(client.close())
        if not self.running:
            return
        with contextlib.suppress(error.ProcessExitedAlready):
            self.transport.signalProcess("TERM")
        try:
            await within(self.watcher.wait(), STOP_DEADLINE)
        except defer.TimeoutError:
            with contextlib.suppress(error.ProcessExitedAlready):
                self.transport.signalProcess("KILL")
            await within(self.watcher.wait(), STOP_DEADLINE)


def _spawn(
    args: list[str], log: Path, cwd: Path, prefix: Sequence[str] = ()
) -> tuple[IProcessTransport, _Watcher]:
    watcher = _Watcher()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    command = [*prefix, *TWISTD]
    with log.open("ab") as f:
        transport = _reactor().spawnProcess(
            watcher,
            command[0],
            [*command, *args],
            env=env,
            path=str(cwd),
            childFDs={0: "w", 1: f.fileno(), 2: f.fileno()},
        )
    transport.closeStdin()
    return transport, watcher


class _PortTaken(Exception):
    """Another process took the chosen port before the server could listen on it."""


async def _accepting(server: TwistdServer, deadline: float) -> None:
    """
    Poll until C{server} accepts a connection on its port.

    @raise _PortTaken: if its log says the port is in use.
    @raise ServerDidNotStart: if it exits, logs an error, or the deadline passes first.
    """
    reactor = _reactor()
    while True:
        text = server.read_log()
        if not server.running or "Unhandled Error" in text or "Traceback" in text:
            if "Address already in use" in text:
                raise _PortTaken()
            raise ServerDidNotStart(f"{server.role} failed to start; its log:\n{text}")
        try:
            probe = await connectProtocol(
                TCP4ClientEndpoint(reactor, server.host, server.port, timeout=2), Protocol()
            )
        except error.ConnectError:
            if reactor.seconds() > deadline:
                raise ServerDidNotStart(
                    f"nothing accepted on port {server.port}; its log:\n{text}"
                ) from None
            await deferLater(reactor, 0.05)
        else:
            assert probe.transport is not None
            probe.transport.loseConnection()
            return


@attrs.define(eq=False)
class ServerFarm:
    """Starts twistd servers for one test, logging under C{directory}; stops them all."""

    directory: Path
    servers: list[TwistdServer] = attrs.field(factory=list)
    logs: list[Path] = attrs.field(factory=list)

    def spawn(
        self,
        *options: str,
        port: int,
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
        log = self.directory / f"{role}-{len(self.logs)}.log"
        self.logs.append(log)
        args = ["-n", "--pidfile=", role, *options]
        log.write_text(f"$ {' '.join(prefix)} twistd {' '.join(args)}\n")
        transport, watcher = _spawn(args, log, self.directory, prefix)
        server = TwistdServer(role, port, log, transport, watcher, host=host)
        self.servers.append(server)
        return server

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
        reactor = _reactor()
        for _ in range(3):
            port = _free_port()
            server = self.spawn(
                "--listen", listen.format(port=port), *options, port=port, role=role
            )
            try:
                await _accepting(server, reactor.seconds() + START_DEADLINE)
            except _PortTaken:
                await server.stop()
            else:
                return server
        raise ServerDidNotStart(f"{role}: every port tried was taken")

    async def stop(self) -> None:
        servers, self.servers = self.servers, []
        for server in servers:
            await server.stop()


def _free_udp_port() -> int:
    return free_port(socket.SOCK_DGRAM)


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    """A port free on loopback for C{kind} (TCP by default), as far as one can tell."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def live_children(server: TwistdServer, target: str) -> list[int]:
    """The OS ids of a lipsd's live children running C{target} (C{module:function})."""
    import psutil

    pid = server.transport.pid
    assert isinstance(pid, int)
    found = []
    for child in psutil.Process(pid).children():
        try:
            if target in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child.pid)
        except psutil.Error:
            pass
    return found


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
    prefixes: Mapping[str, Sequence[str]] = attrs.Factory(dict)
    """A command that runs each server's twistd (C{ip netns exec NS}), by name."""
    path: Path = attrs.field(init=False)
    ports: dict[str, int] = attrs.field(init=False, factory=dict)
    addresses: dict[str, str] = attrs.field(init=False, factory=dict)
    running: dict[str, TwistdServer] = attrs.field(init=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        members = []
        for n in range(1, self.size + 1):
            name = f"m{n}"
            host = self.hosts[n - 1] if self.hosts else "127.0.0.1"
            local = host == "127.0.0.1"
            port, ring = (_free_port(), _free_udp_port()) if local else (7010, 7100)
            self.ports[name], self.addresses[name] = port, host
            members.append(ClusterMember(name, n, ring, port, host))
        self.path = write_cluster(
            self.farm.directory / "cluster",
            members,
            transport=self.transport,
            one_to_many=self.one_to_many,
            timings=self.timings,
        )

    @property
    def names(self) -> list[str]:
        return list(self.ports)

    def endpoint(self, name: str) -> str:
        return f"tcp:host={self.addresses[name]}:port={self.ports[name]}"

    async def start(self, name: str) -> TwistdServer:
        """Start server C{name}; return once it accepts connections."""
        server = self.farm.spawn(
            "--config",
            str(self.path),
            "--name",
            name,
            port=self.ports[name],
            host=self.addresses[name],
            prefix=self.prefixes.get(name, ()),
        )
        self.running[name] = server
        await _accepting(server, _reactor().seconds() + START_DEADLINE)
        return server

    def kill(self, name: str) -> None:
        """SIGKILL server C{name}: no goodbye to anyone."""
        self.running.pop(name).transport.signalProcess("KILL")

    async def serving(self, *names: str, members: int | None = None) -> list[dict[str, Any]]:
        """
        Wait until every server in C{names} (all running ones by default) serves in a
        ring of C{members} members (all running ones by default); their stats.
        """
        names = names or tuple(self.running)
        want = len(self.running) if members is None else members
        latest: list[dict[str, Any]] = []

        async def ready() -> bool:
            latest.clear()
            for name in names:
                try:
                    stats = await self.running[name].stats()
                except Exception:
                    return False
                latest.append(stats)
            return all(s["space.mode"] == "serving" and s["space.members"] == want for s in latest)

        await eventually(ready, 30, f"servers {names} serving in a ring of {want}")
        return latest


#: The examples' directory: the modules lipsd's children import (C{--pythonpath}).
EXAMPLES: Final = Path(__file__).resolve().parents[2] / "examples"

#: lipsd options that count a node idle however loaded the test machine is.
ANY_LOAD: Final = ("--max-load", "1000", "--min-cpu-idle", "0", "--min-free-memory", "0")


@attrs.frozen
class Rings:
    """The FixServers (C{f1}...) and MessageServers (C{m1}...) of one cluster file."""

    path: Path
    servers: Mapping[str, TwistdServer]

    def endpoints(self, role: str) -> list[str]:
        """The client endpoints of the servers of C{role} (C{"fixserver"}, ...)."""
        return [s.endpoint for name, s in self.servers.items() if name[0] == role[0]]


async def start_rings(
    farm: ServerFarm, directory: Path, fixservers: int = 2, msgservers: int = 0
) -> Rings:
    """
    Write a cluster file of C{fixservers} FixServers and C{msgservers} MessageServers
    (each role its own ring), start them all, and return once every one serves in a
    ring of all its role's servers.
    """
    counts = {"fixserver": fixservers, "msgserver": msgservers}
    members = [
        ClusterMember(f"{role[0]}{n}", n, free_port(socket.SOCK_DGRAM), free_port(), role=role)
        for role, count in counts.items()
        for n in range(1, count + 1)
    ]
    path = write_cluster(directory / "cluster", members)
    servers = {
        m.name: farm.spawn(
            "--config", str(path), "--name", m.name, port=m.tcp_port, role=f"lips-{m.role}"
        )
        for m in members
    }

    async def serving() -> bool:
        for m in members:
            try:
                stats = await servers[m.name].stats()
            except Exception:
                return False
            if stats["space.mode"] != "serving" or stats["space.members"] != counts[m.role]:
                return False
        return True

    await eventually(serving, 30, "every ring serving")
    return Rings(path, servers)


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
        "--config", str(path), "--name", name, *extra, *options, port=0, role="lips-node"
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
    usage: x509.ObjectIdentifier,
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
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
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
    )
