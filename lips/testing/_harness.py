"""
Real LiPS processes on this machine, for tests, benchmarks and demonstrations: free
ports, twistd command lines, processes that log to files, and clusters of them.

    with Cluster.create(directory, fixservers=2, msgservers=3) as cluster:
        cluster.start()
        cluster.wait_serving()              # every ring formed
        cluster.node("n1", *ANY_LOAD).start()
        cluster.kill("m1")                  # SIGKILL: no goodbye to anyone
        ...
    # every process stopped (SIGTERM, then SIGKILL), and what each one started

A L{Process} is one child (C{subprocess.Popen}, stdout and stderr appended to its log
file), started, signalled and stopped from plain code; waiting has a blocking form for
scripts (C{wait_serving}, C{stop}) and a form for code on a running reactor
(C{wait_serving_async}, C{stop_async}), which polls instead of blocking it.  A
L{ProcessGroup} holds the processes of one run in one directory and stops them all; a
L{Cluster} is a group made from a cluster file (L{write_cluster}) of
FixServers and MessageServers, with lipsd nodes added to it.

Starting fails loudly: a process that exits, logs a traceback or answers nothing before
its deadline raises L{ServerDidNotStart} quoting the end of its log, and
L{run_directory} keeps the logs of a run that failed.
"""

from __future__ import annotations

import contextlib
import math
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal, Self

import attrs
from twisted.internet import defer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure

from lips.testing._cluster import ClusterMember, write_cluster
from lips.wire import (
    Frame,
    FrameDecoder,
    Hello,
    Stats,
    StatsRequest,
    decode_message,
    encode_message,
)

__all__ = [
    "ANY_LOAD",
    "ROLES",
    "START_DEADLINE",
    "STOP_DEADLINE",
    "TWISTD",
    "Cluster",
    "PortTaken",
    "Process",
    "ProcessGroup",
    "ServerDidNotStart",
    "StatusProbe",
    "fetch_stats",
    "free_port",
    "log_tail",
    "ring_serving",
    "run_directory",
    "twistd_command",
]

#: Runs twistd in this interpreter.  C{python -m twisted} is C{twist}, not C{twistd} (it
#: knows neither C{-n} nor C{--pidfile}), and C{twisted.scripts.twistd} has no
#: C{__main__}, so the entry point is called directly, as the C{twistd} script does.
TWISTD: Final = (
    sys.executable,
    "-c",
    "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()",
)

#: twistd under cProfile.  C{python -m cProfile} would never write its file: on SIGTERM
#: twistd shuts down and then kills itself with the same signal, so the profile is
#: written by a reactor shutdown trigger instead.  Arguments: the output file, then
#: twistd's own.
_PROFILED_TWISTD: Final = """
import cProfile, sys
from twisted.internet import reactor
from twisted.scripts.twistd import run
out = sys.argv[1]
sys.argv = ["twistd", *sys.argv[2:]]
profile = cProfile.Profile()
def dump():
    profile.disable()
    profile.dump_stats(out)
reactor.addSystemEventTrigger("after", "shutdown", dump)
profile.enable()
run()
"""

#: The twistd plugins of LiPS, one per role.
ROLES: Final = ("lips-msgserver", "lips-fixserver", "lips-node", "lips-ftm")

#: lipsd options that count a node idle however loaded the machine is (it runs the
#: servers and the workers too).
ANY_LOAD: Final = ("--max-load", "1000", "--min-cpu-idle", "0", "--min-free-memory", "0")

#: How long a server may take to start answering, and a cluster to serve.
START_DEADLINE: Final = 30.0
#: How long a process may take to exit after SIGTERM before it is killed.
STOP_DEADLINE: Final = 5.0
#: The ports of a server on an address of its own (a network namespace, say), where
#: nobody else can have taken them.
OWN_HOST_PORTS: Final = (7010, 7100)

#: What a log says when its server failed to start, and when its port was taken.
_FAILED: Final = ("Traceback", "Unhandled Error")
_PORT_TAKEN: Final = "Address already in use"
#: How often a wait polls.
_STEP: Final = 0.02


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def free_port(kind: Literal["tcp", "udp"] = "tcp", host: str = "127.0.0.1") -> int:
    """
    A port of C{host} that nobody has bound for C{kind} now (bind port 0, read it, let
    it go): free as far as one can tell, since another process may take it next.
    """
    family = socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, family) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def twistd_command(
    role: str, *options: str, prefix: Sequence[str] = (), profile: Path | None = None
) -> list[str]:
    """
    The command line of C{twistd -n --pidfile= ROLE OPTIONS} in this interpreter: in the
    foreground, logging to stdout, and with no pid file, so that several run in one
    directory.

    @param role: one of L{ROLES}.
    @param prefix: a command that runs twistd (C{ip netns exec NS}, say).
    @param profile: run it under cProfile, writing the profile to this file on exit.
    """
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: not one of {', '.join(ROLES)}")
    launcher = [sys.executable, "-c", _PROFILED_TWISTD, str(profile)] if profile else TWISTD
    return [*prefix, *launcher, "-n", "--pidfile=", role, *options]


def log_tail(path: Path, lines: int = 40) -> str:
    """The last C{lines} lines of the log at C{path}, or why it cannot be read."""
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"(cannot read {path}: {e})"
    return "\n".join(text.splitlines()[-lines:])


def ring_serving(stats: Mapping[str, Any], members: int) -> bool:
    """Whether a server's status says it serves in a ring of C{members}."""
    return stats.get("space.mode") == "serving" and stats.get("space.members") == members


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds process C{pid} has used so far (from /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return math.nan
    fields = stat.rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3 of proc(5)): utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- asking a server for its status -------------------------------------------------------


class _StatusExchange:
    """
    The bytes of a status request and its answer out of the bytes that come back
    (sans-IO): with C{hello}, a HELLO first, so that the server keeps the connection
    for later requests.
    """

    def __init__(self) -> None:
        self.decoder = FrameDecoder(1 << 20)
        self.rid = 0

    def request(self, hello: bool) -> bytes:
        out = b""
        if hello:
            self.rid += 1
            out += encode_message(Hello(None, "status"), self.rid)
        self.rid += 1
        return out + encode_message(StatsRequest(), self.rid)

    def feed(self, data: bytes) -> dict[str, Any] | None:
        """The counters, once the answer to the latest request is in."""
        for item in self.decoder.feed(data):
            if not isinstance(item, Frame):
                raise ConnectionError(f"bad frame: {item}")
            if item.request_id == self.rid:
                answer = decode_message(item)
                if not isinstance(answer, Stats):
                    raise ConnectionError(f"expected STATS, got {type(answer).__name__}")
                return dict(answer.values)
        return None


class StatusProbe:
    """
    A blocking status client of one LiPS server for polling: HELLO once, then STATS
    requests on the same connection, connecting again when it is lost.
    """

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 2.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.exchange = _StatusExchange()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def stats(self) -> dict[str, Any]:
        """The server's counters; raises L{OSError} if it cannot be had now."""
        try:
            hello = self.sock is None
            if self.sock is None:
                self.sock = socket.create_connection((self.host, self.port), self.timeout)
                self.sock.settimeout(self.timeout)
                self.exchange = _StatusExchange()
            self.sock.sendall(self.exchange.request(hello))
            while True:
                data = self.sock.recv(1 << 16)
                if not data:
                    raise ConnectionError("the server closed the connection")
                answer = self.exchange.feed(data)
                if answer is not None:
                    return answer
        except OSError:
            self.close()
            raise


class _StatusProtocol(Protocol):
    """One status request on the reactor, without HELLO: the answer fires C{answer}."""

    def __init__(self) -> None:
        self.exchange = _StatusExchange()
        self.answer: defer.Deferred[dict[str, Any]] = defer.Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.exchange.request(hello=False))

    def dataReceived(self, data: bytes) -> None:
        if self.answer.called:
            return
        try:
            stats = self.exchange.feed(data)
        except ConnectionError as e:
            self.answer.errback(e)
        else:
            if stats is None:
                return
            self.answer.callback(stats)
        assert self.transport is not None
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.answer.called:
            self.answer.errback(ConnectionError("the server closed the connection"))


async def fetch_stats(
    port: int, host: str = "127.0.0.1", timeout: float = 2.0, reactor: Any = None
) -> dict[str, Any]:
    """
    A server's counters, asked for on a connection of its own on the running reactor
    (no HELLO, so the server keeps no session of it); raises L{ConnectionError} or
    L{defer.TimeoutError} if they cannot be had.
    """
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    reactor = _reactor() if reactor is None else reactor
    protocol = _StatusProtocol()
    endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=max(1, round(timeout)))
    try:
        await connectProtocol(endpoint, protocol)
        return await protocol.answer.addTimeout(timeout, reactor)
    except ConnectionError:
        raise
    except Exception as e:
        raise ConnectionError(f"no status from {host}:{port}: {e}") from e
    finally:
        if protocol.transport is not None:
            protocol.transport.loseConnection()


async def _sleep(reactor: Any, seconds: float) -> None:
    from twisted.internet.task import deferLater

    await deferLater(reactor, seconds)


# -- processes ---------------------------------------------------------------------------


class ServerDidNotStart(Exception):
    """A server exited, failed, or did not answer before its deadline."""


class PortTaken(ServerDidNotStart):
    """Another process took the port a server was to listen on before it could."""


@attrs.define(eq=False)
class Process:
    """
    One child process: its command line, the log its output is appended to, and, for a
    server, the address it serves on.  Made stopped; L{start} runs it (again).
    """

    name: str
    argv: list[str]
    log: Path
    port: int | None = None
    """The TCP port it serves clients on (C{None} for a process that serves none)."""
    host: str = "127.0.0.1"
    cwd: Path | None = None
    popen: subprocess.Popen[bytes] | None = attrs.field(default=None, init=False)
    started: float = attrs.field(default=0.0, init=False)
    """When it was last started (C{time.monotonic()})."""
    paused: bool = attrs.field(default=False, init=False)
    _left: list[Any] = attrs.field(factory=list, init=False)
    """What it had started when it was killed, to be killed when it is stopped if any
    of it outlived it (no orphans)."""

    @property
    def endpoint(self) -> str:
        """The plain TCP client endpoint string of this server."""
        return f"tcp:host={self.host}:port={self.port}"

    @property
    def running(self) -> bool:
        """Whether it was started and has not exited (a paused process is running)."""
        return self.popen is not None and self.popen.poll() is None

    @property
    def pid(self) -> int:
        """The operating system's id of the process last started."""
        if self.popen is None:
            raise RuntimeError(f"{self.name} was never started")
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        """How it exited (C{-N} for signal N), or C{None} while it runs."""
        return None if self.popen is None else self.popen.poll()

    def start(self) -> Self:
        """Run it, appending its output to its log after a line with its command."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        self.log.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with self.log.open("ab") as out:
            out.write(f"$ {shlex.join(self.argv)}\n".encode())
            out.flush()
            self.started = time.monotonic()
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env=env,
            )
        self.paused = False
        return self

    def signal(self, signum: int) -> None:
        """Send it C{signum}, if it runs."""
        if self.running:
            assert self.popen is not None
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signum)

    def kill(self) -> float:
        """SIGKILL it (no goodbye to anyone) and reap it; the monotonic time just before."""
        if not self.running:
            raise RuntimeError(f"{self.name} is not running")
        assert self.popen is not None
        self._left += self._descendants()
        when = time.monotonic()
        self.signal(signal.SIGKILL)
        self.popen.wait(STOP_DEADLINE)
        self.paused = False
        return when

    def pause(self) -> None:
        """SIGSTOP it: its sockets stay open and silent."""
        if self.running:
            self.signal(signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        """SIGCONT it."""
        self.signal(signal.SIGCONT)
        self.paused = False

    def wait(self, timeout: float | None = None) -> int:
        """Until it exits; how (raises L{subprocess.TimeoutExpired} after C{timeout})."""
        if self.popen is None:
            raise RuntimeError(f"{self.name} was never started")
        return self.popen.wait(timeout)

    async def wait_async(self, timeout: float, reactor: Any = None) -> int | None:
        """Until it exits, polling on the reactor; how, or C{None} after C{timeout}."""
        reactor = _reactor() if reactor is None else reactor
        deadline = time.monotonic() + timeout
        while self.running:
            if time.monotonic() > deadline:
                return None
            await _sleep(reactor, _STEP)
        return self.returncode

    def _descendants(self) -> list[Any]:
        import psutil

        if not self.running:
            return []
        try:
            found: list[Any] = psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            return []
        return found

    def _terminate(self) -> list[Any]:
        """SIGTERM it (a paused one is resumed to act on it); its descendants before."""
        descendants = self._descendants()
        self.signal(signal.SIGTERM)
        if self.paused:
            self.resume()
        return descendants

    def _end(self, descendants: list[Any]) -> None:
        """SIGKILL it if it still runs, and whatever it started that is left."""
        import psutil

        if self.running:
            self.signal(signal.SIGKILL)
            self.wait(STOP_DEADLINE)
        for child in [*self._left, *descendants]:
            with contextlib.suppress(psutil.Error):
                child.kill()
        self._left.clear()
        self.paused = False

    def stop(self, timeout: float = STOP_DEADLINE) -> None:
        """SIGTERM it, SIGKILL it if it lingers, and kill any of its descendants left."""
        if not self.running:
            self._end([])
            return
        descendants = self._terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.wait(timeout)
        self._end(descendants)

    async def stop_async(self, timeout: float = STOP_DEADLINE, reactor: Any = None) -> None:
        """L{stop}, waiting on the reactor rather than blocking it."""
        if not self.running:
            self._end([])
            return
        descendants = self._terminate()
        await self.wait_async(timeout, reactor)
        self._end(descendants)

    def restart(self) -> Self:
        """Stop it if it runs, then start it again."""
        self.stop()
        return self.start()

    def read_log(self) -> str:
        """All of its log, or why it cannot be read."""
        try:
            return self.log.read_text(errors="replace")
        except OSError as e:
            return f"(cannot read {self.log}: {e})"

    def tail(self, lines: int = 40) -> str:
        """The end of its log."""
        return log_tail(self.log, lines)

    def cpu_seconds(self) -> float:
        """CPU seconds it has used so far (0 when not running)."""
        return _cpu_seconds(self.pid) if self.running else 0.0

    def children(self, target: str) -> list[int]:
        """The ids of its live children whose command line holds C{target}."""
        import psutil

        found = []
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.pid).children():
                with contextlib.suppress(psutil.Error):
                    if target in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE:
                        found.append(child.pid)
        return found

    def check_running(self) -> None:
        """
        @raise ServerDidNotStart: if it is not running (it exited, or never started),
            quoting the end of its log.
        """
        if not self.running:
            raise ServerDidNotStart(
                f"{self.name} exited with status {self.returncode}; {self._log_end()}"
            )

    def _check_started(self) -> None:
        """
        @raise PortTaken: if it failed because its port is in use.
        @raise ServerDidNotStart: if it exited or logged a failure.
        """
        text = self.read_log()
        running = self.running
        if running and not any(word in text for word in _FAILED):
            return
        why = "logged a failure" if running else f"exited with status {self.returncode}"
        error = PortTaken if _PORT_TAKEN in text else ServerDidNotStart
        raise error(f"{self.name} {why} before it answered; {self._log_end()}")

    def _log_end(self) -> str:
        return f"the end of its log {self.log}:\n{self.tail()}"

    def _late(self, what: str, deadline: float) -> ServerDidNotStart:
        return ServerDidNotStart(
            f"{self.name} did not {what} on {self.host}:{self.port} within {deadline:g} s; "
            + self._log_end()
        )

    def _accepts(self) -> bool:
        try:
            with socket.create_connection((self.host, self._port()), 0.5):
                return True
        except OSError:
            return False

    def _port(self) -> int:
        if self.port is None:
            raise RuntimeError(f"{self.name} serves on no port")
        return self.port

    def wait_listening(self, deadline: float = START_DEADLINE) -> None:
        """Until it accepts connections on its port (a server of any protocol)."""
        end = time.monotonic() + deadline
        while True:
            self._check_started()
            if self._accepts():
                return
            if time.monotonic() > end:
                raise self._late("listen", deadline)
            time.sleep(_STEP)

    def wait_serving(self, deadline: float = START_DEADLINE) -> dict[str, Any]:
        """Until it answers a status request (a LiPS server); its counters."""
        end = time.monotonic() + deadline
        probe = StatusProbe(self._port(), self.host)
        try:
            while True:
                self._check_started()
                with contextlib.suppress(OSError):
                    return probe.stats()
                if time.monotonic() > end:
                    raise self._late("answer", deadline)
                time.sleep(_STEP)
        finally:
            probe.close()

    async def wait_listening_async(
        self, deadline: float = START_DEADLINE, reactor: Any = None
    ) -> None:
        """L{wait_listening} on the reactor."""
        from twisted.internet import error
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

        reactor = _reactor() if reactor is None else reactor
        end = time.monotonic() + deadline
        while True:
            self._check_started()
            try:
                endpoint = TCP4ClientEndpoint(reactor, self.host, self._port(), timeout=2)
                probe = await connectProtocol(endpoint, Protocol())
            except error.ConnectError:
                if time.monotonic() > end:
                    raise self._late("listen", deadline) from None
                await _sleep(reactor, _STEP)
            else:
                assert probe.transport is not None
                probe.transport.loseConnection()
                return


@attrs.define(eq=False)
class ProcessGroup:
    """
    The processes of one run, logging into C{directory}: stopped together, and always
    (use it as a context manager, or call L{stop} in a C{finally}): those that serve on
    no port (lipsd nodes, which report to servers) first, then the servers, the last
    started first.
    """

    directory: Path
    processes: dict[str, Process] = attrs.field(factory=dict)
    process_type: type[Process] = attrs.field(default=Process, kw_only=True)
    """What L{add} makes: L{Process}, or a subclass of it with more to it."""

    def add(
        self, name: str, argv: Sequence[str], *, port: int | None = None, host: str = "127.0.0.1"
    ) -> Process:
        """A new process C{name} running C{argv}, logging to C{directory/NAME.log}; not started."""
        if name in self.processes:
            raise ValueError(f"there is a process {name!r} already")
        self.directory.mkdir(parents=True, exist_ok=True)
        log = self.directory / f"{name}.log"
        process = self.process_type(name, list(argv), log, port, host, cwd=self.directory)
        self.processes[name] = process
        return process

    def twistd(
        self,
        name: str,
        role: str,
        *options: str,
        port: int | None = None,
        host: str = "127.0.0.1",
        prefix: Sequence[str] = (),
        profile: Path | None = None,
    ) -> Process:
        """A new process running L{twistd_command}C{(role, *options)}; not started."""
        argv = twistd_command(role, *options, prefix=prefix, profile=profile)
        return self.add(name, argv, port=port, host=host)

    def standalone(
        self, name: str, *options: str, role: str = "lips-msgserver", port: int | None = None
    ) -> Process:
        """
        A new server C{twistd ROLE --listen tcp:PORT:interface=127.0.0.1 --name NAME
        OPTIONS} on a free loopback port (or C{port}); not started.
        """
        port = free_port() if port is None else port
        listen = ("--listen", f"tcp:{port}:interface=127.0.0.1", "--name", name)
        return self.twistd(name, role, *listen, *options, port=port)

    def __getitem__(self, name: str) -> Process:
        return self.processes[name]

    @property
    def logs(self) -> list[Path]:
        return [p.log for p in self.processes.values()]

    @property
    def ports(self) -> list[int]:
        """The ports of the processes that serve on one, in order."""
        return [p.port for p in self.processes.values() if p.port is not None]

    def endpoints(self) -> list[str]:
        """The client endpoints of the processes that serve on a port, in order."""
        return [p.endpoint for p in self.processes.values() if p.port is not None]

    def cpu_seconds(self) -> float:
        """CPU seconds its running processes have used so far, together."""
        return sum(p.cpu_seconds() for p in self.processes.values())

    def tails(self, lines: int = 20) -> str:
        """The end of every log, each under its process's name."""
        return "\n".join(f"-- {p.name}:\n{p.tail(lines)}" for p in self.processes.values())

    def _stopping_order(self) -> list[Process]:
        # Those that serve nobody (nodes, which report to the servers) first, then the
        # servers; the last started first.
        return sorted(
            self.processes.values(), key=lambda p: (p.port is None, p.started), reverse=True
        )

    def stop(self) -> None:
        """Stop every process, the last started first; each is stopped whatever the others do."""
        errors = []
        for process in self._stopping_order():
            try:
                process.stop()
            except Exception as e:  # keep stopping the others
                errors.append(e)
        if errors:
            raise errors[0]

    async def stop_async(self, reactor: Any = None) -> None:
        """L{stop} on the reactor."""
        for process in self._stopping_order():
            await process.stop_async(reactor=reactor)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@attrs.define(eq=False)
class Cluster(ProcessGroup):
    """
    A cluster file of FixServers (C{f1}...) and MessageServers (C{m1}...) in
    C{directory}, the server process of each member, and lipsd nodes added with
    L{node}.  Make it with L{create}.
    """

    path: Path = attrs.field(kw_only=True)
    members: dict[str, ClusterMember] = attrs.field(kw_only=True)
    probes: dict[str, StatusProbe] = attrs.field(init=False, factory=dict)

    @classmethod
    def create(
        cls,
        directory: Path,
        *,
        fixservers: int = 0,
        msgservers: int = 3,
        hosts: Sequence[str] = (),
        transport: str = "unicast",
        one_to_many: str = "",
        timings: str = "loopback",
        cluster_id: int = 11,
        durable: bool = False,
        prefixes: Mapping[str, Sequence[str]] | None = None,
        options: Sequence[str] = (),
        process_type: type[Process] = Process,
    ) -> Cluster:
        """
        Write the key and cluster file of C{fixservers} FixServers and C{msgservers}
        MessageServers (each role its own ring) into C{directory}, and make (not start)
        the process of each.

        @param hosts: each MessageServer's address: on 127.0.0.1 (the default) its
            ports are free ones, on an address of its own L{OWN_HOST_PORTS}.
        @param one_to_many: the multicast group or broadcast address and port of a
            non-unicast transport.
        @param prefixes: a command that runs a server's twistd (C{ip netns exec NS}),
            by name.
        @param durable: the servers keep their state on disk (C{cluster.durable}).
        @param options: more twistd options for every server.
        @param process_type: what each process is made as (L{ProcessGroup.process_type}).
        """
        members = []
        for role, count in (("fixserver", fixservers), ("msgserver", msgservers)):
            for n in range(1, count + 1):
                host = hosts[n - 1] if hosts and role == "msgserver" else "127.0.0.1"
                if host == "127.0.0.1":
                    tcp, ring = free_port(), free_port("udp")
                else:
                    tcp, ring = OWN_HOST_PORTS
                members.append(ClusterMember(f"{role[0]}{n}", n, ring, tcp, host, role))
        path = write_cluster(
            directory,
            members,
            transport=transport,
            one_to_many=one_to_many,
            timings=timings,
            cluster_id=cluster_id,
            durable=durable,
        )
        cluster = cls(
            directory, path=path, members={m.name: m for m in members}, process_type=process_type
        )
        for m in members:
            cluster.twistd(
                m.name,
                f"lips-{m.role}",
                *("--config", str(path), "--name", m.name, *options),
                port=m.tcp_port,
                host=m.host,
                prefix=(prefixes or {}).get(m.name, ()),
            )
        return cluster

    def names(self, role: str | None = None) -> list[str]:
        """The names of its members (of C{role}: C{"fixserver"} or C{"msgserver"})."""
        return [n for n, m in self.members.items() if role is None or m.role == role]

    def endpoints(self, role: str | None = None) -> list[str]:
        """The client endpoints of its members (of C{role}), in order; not of its nodes."""
        return [self.processes[n].endpoint for n in self.names(role)]

    def node(self, name: str, *options: str) -> Process:
        """A new lipsd C{name} of this cluster file, with C{options}; not started."""
        argv = ("--config", str(self.path), "--name", name, *options)
        return self.twistd(name, "lips-node", *argv)

    def start(self, *names: str) -> None:
        """Start the members C{names} (by default every one not running); wait for none."""
        for name in names or [n for n in self.members if not self.processes[n].running]:
            self.processes[name].start()

    def kill(self, name: str) -> float:
        """SIGKILL member C{name}; the monotonic time just before."""
        self.close_probe(name)
        return self.processes[name].kill()

    def pause(self, name: str) -> None:
        self.processes[name].pause()

    def resume(self, name: str) -> None:
        self.processes[name].resume()

    def stats(self, name: str) -> dict[str, Any] | None:
        """Member C{name}'s counters (blocking), or C{None} if they cannot be had now."""
        member = self.members[name]
        probe = self.probes.get(name)
        if probe is None:
            probe = self.probes[name] = StatusProbe(member.tcp_port, member.host)
        try:
            return probe.stats()
        except OSError:
            return None

    def close_probe(self, name: str) -> None:
        probe = self.probes.pop(name, None)
        if probe is not None:
            probe.close()

    def counters(self, keys: Sequence[str]) -> dict[str, float]:
        """The counters C{keys}, summed over the members (0 for one out of reach)."""
        total = dict.fromkeys(keys, 0.0)
        for name in self.members:
            s = self.stats(name) or {}
            for key in keys:
                total[key] += float(s.get(key, 0))
        return total

    def _wanted(
        self, names: Sequence[str], members: int | None
    ) -> tuple[list[str], dict[str, int]]:
        running = [n for n in self.members if self.processes[n].running]
        chosen = list(names) or running
        if members is not None:
            return chosen, dict.fromkeys(chosen, members)
        of_role = {
            n: sum(1 for r in running if self.members[r].role == self.members[n].role)
            for n in chosen
        }
        return chosen, of_role

    def _not_serving(self, chosen: Sequence[str], want: Mapping[str, int], deadline: float) -> str:
        rings = ", ".join(f"{n} in a ring of {want[n]}" for n in chosen)
        return f"not serving within {deadline:g} s: {rings}\n" + "\n".join(
            f"-- {n}: {self.processes[n]._log_end()}" for n in chosen
        )

    def _exited(self, chosen: Sequence[str]) -> None:
        for name in chosen:
            self.processes[name].check_running()

    def wait_serving(
        self, *names: str, members: int | None = None, deadline: float = START_DEADLINE
    ) -> list[dict[str, Any]]:
        """
        Until every member of C{names} (by default every running one) serves in a ring
        of C{members} (by default as many as run of its role); their counters, in order.

        @raise ServerDidNotStart: if one exits, or the deadline passes first.
        """
        chosen, want = self._wanted(names, members)
        end = time.monotonic() + deadline
        while True:
            self._exited(chosen)
            latest = [self.stats(n) for n in chosen]
            if all(
                s is not None and ring_serving(s, want[n])
                for n, s in zip(chosen, latest, strict=True)
            ):
                return [s for s in latest if s is not None]
            if time.monotonic() > end:
                raise ServerDidNotStart(self._not_serving(chosen, want, deadline))
            time.sleep(_STEP)

    async def wait_serving_async(
        self,
        *names: str,
        members: int | None = None,
        deadline: float = START_DEADLINE,
        reactor: Any = None,
    ) -> list[dict[str, Any]]:
        """L{wait_serving} on the reactor, each status asked for on a new connection."""
        reactor = _reactor() if reactor is None else reactor
        chosen, want = self._wanted(names, members)
        end = time.monotonic() + deadline
        while True:
            self._exited(chosen)
            latest = []
            for name in chosen:
                member = self.members[name]
                try:
                    latest.append(await fetch_stats(member.tcp_port, member.host, reactor=reactor))
                except (ConnectionError, defer.TimeoutError):
                    break
            else:
                if all(ring_serving(s, want[n]) for n, s in zip(chosen, latest, strict=True)):
                    return latest
            if time.monotonic() > end:
                raise ServerDidNotStart(self._not_serving(chosen, want, deadline))
            await _sleep(reactor, _STEP)

    def close_probes(self) -> None:
        for name in list(self.probes):
            self.close_probe(name)

    def stop(self) -> None:
        self.close_probes()
        super().stop()

    async def stop_async(self, reactor: Any = None) -> None:
        self.close_probes()
        await super().stop_async(reactor)


@contextlib.contextmanager
def run_directory(prefix: str, keep: Path | None = None) -> Iterator[Path]:
    """
    A directory for one run's cluster files and logs: C{keep} if given (made if need
    be, and never removed), else a new temporary one, removed at the end unless the
    body raised (C{SystemExit} and Ctrl-C too): then it is kept, and its path said on
    stderr, so that the logs can be read.
    """
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    except BaseException as e:
        if not (isinstance(e, SystemExit) and e.code in (0, None)):
            print(f"the logs and cluster files of this run are kept in {path}", file=sys.stderr)
            raise
        shutil.rmtree(path, ignore_errors=True)
        raise
    shutil.rmtree(path, ignore_errors=True)
