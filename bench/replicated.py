"""
What replication costs: a 3-server LiPS ring against one server and against Raft, how
long the ring takes to serve again after a server dies, and how long a restarted
server takes to rejoin with the whole space.

One invocation runs three parts, on loopback, and prints their figures side by side:

1. Throughput and latency of out+in pairs at 1 and 16 clients (C{--clients}):

       ring       three C{twistd -n lips-msgserver --config cluster.toml --name mN}
                  (a cluster file with C{timings = "loopback"}); client k connects with
                  L{lips.client.connect} to all three endpoints, starting at server
                  k mod 3, so the clients are spread over the servers; each pair is
                  C{out(("job", i))}, C{in_(("job", int))}, so every client competes
                  for every tuple, as consumers of a queue do
       ring-own   the same ring, but client k does C{out(("job", k, i))},
                  C{in_(("job", k, int))}: it takes back a tuple no other client's
                  template matches, so no claim is ever lost to another server's
       single     one C{twistd -n lips-msgserver --listen tcp:PORT:interface=127.0.0.1},
                  nothing replicated
       pysyncobj  three C{bench/_syncobj_queue.py} processes: a FIFO queue replicated by
                  Raft (pysyncobj), C{put} and C{get} served over a line protocol on TCP;
                  client k talks to node k mod 3 (a follower forwards to the leader)

   The method is that of C{bench/throughput.py}: fresh servers per measurement, the
   clients spread over C{--client-procs} processes started together, C{--warmup}
   seconds of warm-up, pairs counted over C{--duration} seconds, p50/p99 of a whole
   pair (nearest rank), each measurement repeated C{--repeat} times round-robin over
   the systems and the run with the median pairs/s shown.  Server CPU is summed over
   the servers of a system.  The ratios ring/single (target >= 50%), ring/pysyncobj
   (target >= 2x) and the ring's p50 at 1 client (target < 2 ms) follow the table.

2. Failover: C{--failover-clients} clients (spread over the three servers) do out+in
   in a loop; one server is killed with SIGKILL.  The figure is the time from the kill
   until every client has completed an operation that it began after the kill.  The
   clients of the killed server fail over to another endpoint and send their request
   again with the same (process id, event number), so it is applied once.  Three kills
   (C{--failovers}), of m1, m2 and m3 in turn; the killed server is restarted and
   serving again before the next.  The median is reported.

3. Join: C{--sizes} tuples C{("t", i, <64 bytes>)} are put into a fresh ring; then m3
   is killed, and once m1 and m2 serve without it, started again.  The figure is the
   time from starting the process until its status shows C{space.mode} serving in a
   ring of 3, with the others' C{space.tuples} and C{ring.replica.snapshots.restored}
   = 1.  The time until it first answers a status request (the process starting up)
   is shown apart.  C{--joins} restarts per size, the median reported.

    python bench/replicated.py            # about 4 minutes
    python bench/replicated.py --quick    # a smoke run, about 35 s
    python bench/replicated.py --parts failover,join --failovers 5 --keep /tmp/logs

pysyncobj is installed into this interpreter with pip when it is missing (it is the
C{bench} extra of the project); if that fails the peer is skipped.  Every process it
started is stopped before it exits.  The results are also written as JSON to
C{bench/results/}.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import math
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final, Self

import attrs
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import connectionDone
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

import lips.client
from bench.throughput import (
    BUSY,
    PairFunction,
    Row,
    cpu_seconds,
    free_port,
    machine_busy_seconds,
    measure_pairs,
    median_row,
    percentile,
    read_line,
    save,
    spread,
    stop,
)
from lips.testing import ClusterMember, write_cluster
from lips.wire import (
    Frame,
    FrameDecoder,
    Hello,
    Stats,
    StatsRequest,
    decode_message,
    encode_message,
)

HERE: Final = Path(__file__).resolve().parent
RESULTS: Final = HERE / "results"
SYSTEMS: Final = ("ring", "ring-own", "single", "pysyncobj")
RINGS: Final = ("ring", "ring-own")
LABELS: Final = {
    "ring": "LiPS ring (3)",
    "ring-own": "ring, own tmpl",
    "single": "LiPS single",
    "pysyncobj": "pysyncobj (3)",
}
PARTS: Final = ("throughput", "failover", "join")
PYSYNCOBJ: Final = "pysyncobj>=0.3.17"

#: Targets: ring pairs/s against one server, against pysyncobj; p50 at 1 client;
#: failover time.
TARGET_SINGLE: Final = 0.50
TARGET_SYNCOBJ: Final = 2.0
TARGET_P50_US: Final = 2000.0
TARGET_FAILOVER_S: Final = 1.0

#: Ring counters whose change over a measurement window is kept (summed over servers).
RING_COUNTERS: Final = (
    "ring.token.received",
    "ring.token.retransmitted",
    "ring.token.lost",
    "ring.sent.mcast",
    "ring.mcast.retransmitted",
    "ring.packed",
    "ring.installed",
    "ring.net.datagrams.sent",
    "space.applied",
)

#: Ring counters of the surviving servers compared before a kill and after.
FAILOVER_COUNTERS: Final = (
    "ring.token.lost",
    "ring.gather.entered",
    "ring.consensus.timeout",
    "ring.installed",
)
#: Counters of a joining server shown with its join time.
JOIN_COUNTERS: Final = (
    "ring.installed",
    "ring.token.lost",
    "ring.mcast.received",
    "ring.fragments.abandoned",
)

#: How long a server or a cluster may take to start, and to serve again.
START_DEADLINE: Final = 30.0
#: How long clients may take to complete an operation after a kill before the trial fails.
FAILOVER_DEADLINE: Final = 30.0


# -- servers ----------------------------------------------------------------------------


def free_udp_port() -> int:
    """A loopback UDP port nobody has bound now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def twistd_argv(*args: str) -> list[str]:
    """C{twistd -n --pidfile= ARGS} in this interpreter."""
    script = Path(sys.executable).with_name("twistd")
    if not script.exists():
        raise RuntimeError(f"no twistd beside {sys.executable}")
    return [sys.executable, str(script), "-n", "--pidfile=", *args]


class StatusProbe:
    """
    A blocking status client of one LiPS server: HELLO once, then STATS requests on
    the same connection, reconnecting when it is lost.
    """

    def __init__(self, port: int, timeout: float = 2.0, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.decoder = FrameDecoder(1 << 20)
        self.rid = 0

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _ask(self, message: Any) -> Any:
        assert self.sock is not None
        self.rid += 1
        self.sock.sendall(encode_message(message, self.rid))
        while True:
            data = self.sock.recv(1 << 16)
            if not data:
                raise ConnectionError("the server closed the connection")
            for item in self.decoder.feed(data):
                if type(item) is not Frame:
                    raise ConnectionError(f"bad frame: {item}")
                assert isinstance(item, Frame)
                if item.request_id == self.rid:
                    return decode_message(item)

    def stats(self) -> dict[str, Any]:
        """The server's counters; raises L{OSError} if it cannot be reached."""
        try:
            if self.sock is None:
                self.sock = socket.create_connection((self.host, self.port), self.timeout)
                self.sock.settimeout(self.timeout)
                self.decoder = FrameDecoder(1 << 20)
                self._ask(Hello(None, "bench-status"))
            answer = self._ask(StatsRequest())
        except OSError:
            self.close()
            raise
        if not isinstance(answer, Stats):
            self.close()
            raise ConnectionError(f"expected STATS, got {type(answer).__name__}")
        return dict(answer.values)


@attrs.define
class Process:
    """A server process of ours."""

    name: str
    port: int
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.started = time.monotonic()
            self.proc = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def kill(self) -> float:
        """SIGKILL it; the monotonic time just before the signal."""
        assert self.proc is not None
        when = time.monotonic()
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None
        return when

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid) if self.proc is not None else 0.0

    def check(self) -> None:
        """Raise if it has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with status {self.proc.returncode}:\n{self.tail()}"
            )

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def wait_until(what: str, ready: Callable[[], bool], deadline: float, step: float) -> None:
    """Call C{ready} every C{step} seconds until it is true; raise after C{deadline}."""
    end = time.monotonic() + deadline
    while not ready():
        if time.monotonic() > end:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(step)


class Servers:
    """A set of server processes of one system, started and stopped together."""

    system: str = ""

    def __init__(self) -> None:
        self.processes: dict[str, Process] = {}

    @property
    def ports(self) -> list[int]:
        return [p.port for p in self.processes.values()]

    def cpu_seconds(self) -> float:
        return sum(p.cpu_seconds() for p in self.processes.values())

    def counters(self) -> dict[str, float]:
        """Counters to diff over a measurement window (none by default)."""
        return {}

    def stop(self) -> None:
        for p in self.processes.values():
            p.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def tails(self) -> str:
        return "\n".join(f"-- {p.name}:\n{p.tail()}" for p in self.processes.values())


class LipsCluster(Servers):
    """A cluster file of C{size} MessageServers on loopback, and their processes."""

    system = "ring"

    def __init__(self, directory: Path, size: int = 3) -> None:
        super().__init__()
        directory.mkdir(parents=True)
        self.directory = directory
        self.path = directory / "cluster.toml"
        members = [
            ClusterMember(f"m{n}", n, free_udp_port(), free_port()) for n in range(1, size + 1)
        ]
        write_cluster(directory, members, cluster_id=9)
        for m in members:
            argv = twistd_argv("lips-msgserver", "--config", str(self.path), "--name", m.name)
            self.processes[m.name] = Process(m.name, m.tcp_port, argv, directory / f"{m.name}.log")
        self.probes = {name: StatusProbe(p.port) for name, p in self.processes.items()}

    def start(self, *names: str) -> None:
        for name in names or self.processes:
            self.processes[name].start()

    def stats(self, name: str) -> dict[str, Any] | None:
        """Server C{name}'s status, or C{None} if it cannot be had now."""
        try:
            return self.probes[name].stats()
        except OSError:
            return None

    def serving(self, *names: str, members: int | None = None) -> list[dict[str, Any]]:
        """
        Wait until every server of C{names} (all running ones by default) serves in a
        ring of C{members} (the number of running servers by default); their status.
        """
        running = [n for n, p in self.processes.items() if p.proc is not None]
        names = names or tuple(running)
        want = len(running) if members is None else members
        latest: list[dict[str, Any]] = []

        def ready() -> bool:
            latest.clear()
            for name in names:
                self.processes[name].check()
                s = self.stats(name)
                if s is None or s.get("space.mode") != "serving":
                    return False
                if s.get("space.members") != want:
                    return False
                latest.append(s)
            return True

        wait_until(f"{', '.join(names)} serving in a ring of {want}", ready, START_DEADLINE, 0.02)
        return latest

    def counters(self) -> dict[str, float]:
        total: dict[str, float] = dict.fromkeys(RING_COUNTERS, 0.0)
        for name in self.processes:
            s = self.stats(name) or {}
            for key in RING_COUNTERS:
                total[key] += float(s.get(key, 0))
        return total

    def stop(self) -> None:
        for probe in self.probes.values():
            probe.close()
        super().stop()


class LipsSingle(Servers):
    """One unreplicated MessageServer."""

    system = "single"

    def __init__(self, directory: Path) -> None:
        super().__init__()
        directory.mkdir(parents=True)
        port = free_port()
        argv = twistd_argv(
            "lips-msgserver", "--listen", f"tcp:{port}:interface=127.0.0.1", "--name", "single"
        )
        self.processes["single"] = Process("single", port, argv, directory / "single.log")

    def start(self) -> None:
        p = self.processes["single"]
        p.start()
        probe = StatusProbe(p.port)

        def ready() -> bool:
            p.check()
            try:
                probe.stats()
            except OSError:
                return False
            return True

        try:
            wait_until("the single server", ready, START_DEADLINE, 0.02)
        finally:
            probe.close()


class SyncObjCluster(Servers):
    """Three pysyncobj nodes replicating the queue, each serving clients on TCP."""

    system = "pysyncobj"

    def __init__(self, directory: Path, size: int = 3) -> None:
        super().__init__()
        directory.mkdir(parents=True)
        raft = [f"127.0.0.1:{free_port()}" for _ in range(size)]
        for n in range(size):
            name, port = f"s{n + 1}", free_port()
            others = ",".join(r for k, r in enumerate(raft) if k != n)
            argv = [
                *(sys.executable, str(HERE / "_syncobj_queue.py")),
                *("--raft", raft[n], "--partners", others, "--listen", str(port)),
            ]
            self.processes[name] = Process(name, port, argv, directory / f"{name}.log")

    def start(self) -> None:
        for p in self.processes.values():
            p.start()
        for p in self.processes.values():
            # Ready once a put and a get through this node are committed: a leader is
            # elected and this node knows it.
            wait_until(
                f"pysyncobj node {p.name} to answer", functools.partial(self._probe, p), 30, 0.05
            )

    @staticmethod
    def _probe(p: Process) -> bool:
        p.check()
        try:
            with socket.create_connection(("127.0.0.1", p.port), 2) as s:
                s.settimeout(5)
                f = s.makefile("rb")
                s.sendall(b"P 0\n")
                if f.readline() != b"S\n":
                    return False
                s.sendall(b"G\n")
                return f.readline().startswith(b"M")
        except OSError:
            return False

    def warnings(self) -> int:
        """How many times the nodes logged that they truncated applied log entries."""
        count = 0
        for p in self.processes.values():
            with contextlib.suppress(OSError):
                count += p.log.read_text(errors="replace").count("truncating already-applied")
        return count


# -- client processes -------------------------------------------------------------------


def endpoints(ports: Sequence[int]) -> list[str]:
    return [f"tcp:host=127.0.0.1:port={p}" for p in ports]


async def connect_lips(reactor: Any, ports: Sequence[int], index: int) -> PairFunction:
    """
    A client of all C{ports}, starting with the C{index}-th (mod their number), doing
    C{out(("job", i))}, C{in_(("job", int))}: every client competes for every tuple.
    """
    space = await lips.client.connect(
        reactor, endpoints(ports), start=index, name=f"bench-{index}"
    )

    async def pair(i: int) -> None:
        await space.out(("job", i))
        await space.in_(("job", int))

    return pair


async def connect_lips_own(reactor: Any, ports: Sequence[int], index: int) -> PairFunction:
    """
    As L{connect_lips}, but client C{index} does C{out(("job", index, i))},
    C{in_(("job", index, int))}: it takes back a tuple of its own, which no other
    client's template matches.
    """
    space = await lips.client.connect(
        reactor, endpoints(ports), start=index, name=f"bench-{index}"
    )

    async def pair(i: int) -> None:
        await space.out(("job", index, i))
        await space.in_(("job", index, int))

    return pair


class LineClient(LineReceiver):
    """The pysyncobj peer's client: one request line at a time, its answer line back."""

    delimiter = b"\n"

    def __init__(self) -> None:
        self.waiting: defer.Deferred[bytes] | None = None

    def request(self, line: bytes) -> defer.Deferred[bytes]:
        assert self.waiting is None
        d: defer.Deferred[bytes] = defer.Deferred()
        self.waiting = d
        assert self.transport is not None
        self.transport.write(line + self.delimiter)
        return d

    def lineReceived(self, line: bytes) -> None:
        d, self.waiting = self.waiting, None
        if d is not None:
            d.callback(line)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        d, self.waiting = self.waiting, None
        if d is not None:
            d.errback(reason)


async def connect_syncobj(reactor: Any, ports: Sequence[int], index: int) -> PairFunction:
    """A client of node C{index} (mod their number): put, then get."""
    protocol = LineClient()
    port = ports[index % len(ports)]
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), protocol)

    async def pair(i: int) -> None:
        answer = await protocol.request(b"P %d" % i)
        if answer != b"S":
            raise RuntimeError(f"put failed: {answer!r}")
        answer = await protocol.request(b"G")
        if not answer.startswith(b"M"):
            raise RuntimeError(f"get failed: {answer!r}")

    return pair


async def pairs_process(reactor: Any, args: argparse.Namespace) -> None:
    """
    The body of C{replicated.py client}: connect, say C{ready}, wait for a line on
    stdin, warm up, measure, print C{result <json>} (as C{throughput.py client}).
    """
    connect = {"pysyncobj": connect_syncobj, "ring-own": connect_lips_own}.get(
        args.system, connect_lips
    )
    pairs = [await connect(reactor, args.ports, args.first + n) for n in range(args.clients)]
    await measure_pairs(reactor, pairs, args.warmup, args.duration)


@attrs.define
class Worker:
    """A failover client: its operations as (began, ended) monotonic times."""

    space: lips.client.TupleSpaceClient
    ops: list[tuple[float, float]] = attrs.Factory(list)
    error: str | None = None

    def first_after(self, when: float, began_after: bool) -> float | None:
        """When the first operation to end after C{when} ended (begun after it, if so)."""
        for began, ended in self.ops:
            if ended >= when and (began >= when or not began_after):
                return ended
        return None


async def failover_process(reactor: Any, args: argparse.Namespace) -> None:
    """
    The body of C{replicated.py failover}: connect, say C{ready}; on C{go} loop out+in;
    on C{after T} wait until every client has completed an operation begun after the
    monotonic time T, then print C{result <json>} and stop.
    """
    from twisted.internet import task, threads

    clock = time.monotonic
    workers = [
        Worker(
            await lips.client.connect(
                reactor,
                endpoints(args.ports),
                start=args.first + n,
                name=f"bench-failover-{args.first + n}",
            )
        )
        for n in range(args.clients)
    ]
    print("ready", flush=True)
    await threads.deferToThread(sys.stdin.readline)
    running = True

    async def loop(w: Worker) -> None:
        i = 0
        try:
            while running:
                began = clock()
                await w.space.out(("job", i))
                ended = clock()
                w.ops.append((began, ended))
                await w.space.in_(("job", int))
                w.ops.append((ended, clock()))
                i += 1
        except Exception as e:
            w.error = f"{type(e).__name__}: {e}"

    loops = [defer.Deferred.fromCoroutine(loop(w)) for w in workers]
    line = await threads.deferToThread(sys.stdin.readline)
    when = float(line.split()[1])
    deadline = clock() + FAILOVER_DEADLINE
    while clock() < deadline and not all(
        w.first_after(when, True) is not None or w.error for w in workers
    ):
        await task.deferLater(reactor, 0.01)
    running = False
    result = [
        {
            "resumed_s": _since(w.first_after(when, True), when),
            "any_op_s": _since(w.first_after(when, False), when),
            "failovers": w.space.failovers,
            "error": w.error,
        }
        for w in workers
    ]
    sys.stdout.write("result " + json.dumps(result) + "\n")
    sys.stdout.flush()
    # Let each loop finish the operation it is in (a stuck one is left behind).
    with contextlib.suppress(defer.TimeoutError):
        await defer.DeferredList(loops).addTimeout(5, reactor)
    for w in workers:
        await w.space.close()


def _since(t: float | None, when: float) -> float | None:
    return None if t is None else t - when


async def load_process(reactor: Any, args: argparse.Namespace) -> None:
    """
    The body of C{replicated.py load}: put C{("t", i, <64 bytes>)} for i in
    [first, first + count) through C{--clients} clients, each keeping up to C{--window}
    outs in flight; print C{result <json>}.
    """
    blob = bytes(range(64))
    spaces = [
        await lips.client.connect(reactor, endpoints(args.ports), start=n, name=f"bench-load-{n}")
        for n in range(args.clients)
    ]
    began = time.perf_counter()

    async def put(space: lips.client.TupleSpaceClient, share: range) -> None:
        sem = defer.DeferredSemaphore(args.window)
        await defer.gatherResults(
            [sem.run(space.out, ("t", i, blob)) for i in share], consumeErrors=True
        )

    end = args.first + args.count
    await defer.gatherResults(
        [
            defer.Deferred.fromCoroutine(put(s, range(args.first + k, end, len(spaces))))
            for k, s in enumerate(spaces)
        ],
        consumeErrors=True,
    )
    elapsed = time.perf_counter() - began
    sys.stdout.write("result " + json.dumps({"count": args.count, "seconds": elapsed}) + "\n")
    sys.stdout.flush()
    for s in spaces:
        await s.close()


def client_main(args: argparse.Namespace) -> None:
    from twisted.internet import task

    body = {"client": pairs_process, "failover": failover_process, "load": load_process}
    task.react(lambda reactor: defer.Deferred.fromCoroutine(body[args.role](reactor, args)))


def spawn_client(role: str, ports: Sequence[int], *options: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            *(sys.executable, str(Path(__file__).resolve()), role),
            *("--ports", ",".join(map(str, ports)), *options),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def tell(child: subprocess.Popen[bytes], line: str) -> None:
    assert child.stdin is not None
    child.stdin.write(line.encode() + b"\n")
    child.stdin.flush()


def wait_ready(children: list[subprocess.Popen[bytes]], what: str) -> None:
    for child in children:
        line = read_line(child, 60)
        if line.strip() != b"ready":
            stop(child)
            _, err = child.communicate(timeout=10)
            raise RuntimeError(f"a {what} client failed to start:\n{err.decode()}")


def result_of(child: subprocess.Popen[bytes], timeout: float, what: str, servers: Servers) -> Any:
    out, err = child.communicate(timeout=timeout)
    lines = [x for x in out.decode().splitlines() if x.startswith("result ")]
    if child.returncode != 0 or not lines:
        raise RuntimeError(
            f"a {what} client failed (status {child.returncode}):\n{err.decode()[-3000:]}\n"
            f"server logs:\n{servers.tails()}"
        )
    return json.loads(lines[-1].removeprefix("result "))


def firsts(shares: Sequence[int]) -> Iterator[tuple[int, int]]:
    """Each client process's share, with the index of its first client overall."""
    first = 0
    for share in shares:
        yield first, share
        first += share


# -- part 1: throughput -----------------------------------------------------------------


def start_system(system: str, directory: Path) -> Servers:
    servers: Servers
    if system in RINGS:
        cluster = LipsCluster(directory)
        servers = cluster
        try:
            cluster.start()
            cluster.serving(members=3)
        except BaseException:
            cluster.stop()
            raise
    elif system == "single":
        single = LipsSingle(directory)
        servers = single
        try:
            single.start()
        except BaseException:
            single.stop()
            raise
    else:
        syncobj = SyncObjCluster(directory)
        servers = syncobj
        try:
            syncobj.start()
        except BaseException:
            syncobj.stop()
            raise
    return servers


def measure(system: str, clients: int, args: argparse.Namespace, directory: Path) -> Row:
    """Start fresh servers of C{system}, measure C{clients} clients, stop them."""
    with start_system(system, directory) as servers:
        children: list[subprocess.Popen[bytes]] = []
        try:
            for first, share in firsts(spread(clients, args.client_procs)):
                children.append(
                    spawn_client(
                        "client",
                        servers.ports,
                        *("--system", system, "--first", str(first)),
                        *("--clients", str(share), "--warmup", str(args.warmup)),
                        *("--duration", str(args.duration)),
                    )
                )
            wait_ready(children, system)
            for child in children:
                tell(child, "go")
            time.sleep(args.warmup)
            cpu_before, busy_before = servers.cpu_seconds(), machine_busy_seconds()
            counters_before = servers.counters()
            time.sleep(args.duration)
            cpu_after, busy_after = servers.cpu_seconds(), machine_busy_seconds()
            counters_after = servers.counters()
            latencies: list[int] = []
            client_cpu = 0.0
            for child in children:
                result = result_of(child, args.warmup + args.duration + 60, system, servers)
                latencies.extend(result["latencies_ns"])
                client_cpu += result["cpu_share"]
        finally:
            for child in children:
                stop(child)
        detail: dict[str, Any] = {
            "pairs": len(latencies),
            "client_processes": len(children),
            "servers": len(servers.processes),
            "mean_us": sum(latencies) / len(latencies) / 1000 if latencies else math.nan,
        }
        if counters_before:
            detail["ring"] = {k: counters_after[k] - counters_before[k] for k in counters_before}
        if isinstance(servers, SyncObjCluster):
            detail["truncation_warnings"] = servers.warnings()
    latencies.sort()
    return Row(
        system=system,
        clients=clients,
        pairs_per_s=len(latencies) / args.duration,
        p50_us=percentile(latencies, 50) / 1000,
        p99_us=percentile(latencies, 99) / 1000,
        server_cpu=(cpu_after - cpu_before) / args.duration,
        client_cpu=client_cpu,
        machine_busy=(busy_after - busy_before) / args.duration,
        detail=detail,
    )


def ensure_pysyncobj() -> bool:
    """Whether pysyncobj can be imported, installing it with pip if need be."""
    if importlib.util.find_spec("pysyncobj") is not None:
        return True
    print(f"pysyncobj: installing {PYSYNCOBJ} into {sys.prefix} (pip) ...", flush=True)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", PYSYNCOBJ],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        print(f"pysyncobj: pip failed, peer skipped:\n{done.stderr.decode()[-2000:]}")
        return False
    importlib.invalidate_caches()
    return importlib.util.find_spec("pysyncobj") is not None


def throughput_part(args: argparse.Namespace, tmp: Path) -> list[Row]:
    systems = [s for s in SYSTEMS if s in args.systems]
    if "pysyncobj" in systems and not ensure_pysyncobj():
        systems.remove("pysyncobj")
    runs: dict[tuple[str, int], list[Row]] = {}
    serial = 0
    for run in range(1, args.repeat + 1):
        for clients in args.levels:
            for system in systems:
                serial += 1
                row = measure(system, clients, args, tmp / f"{system}-{serial}")
                runs.setdefault((system, clients), []).append(row)
                print(
                    f"  run {run}/{args.repeat}  {LABELS[system]:<14} {clients:>3} clients: "
                    f"{row.pairs_per_s:>8,.0f} pairs/s  p50 {row.p50_us:>6,.0f} µs  "
                    f"(other load {row.other_load:.0%} of a core)",
                    flush=True,
                )
    return [median_row(r) for r in runs.values()]


# -- part 2: failover -------------------------------------------------------------------


def failover_part(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    trials: list[dict[str, Any]] = []
    with LipsCluster(tmp / "failover") as cluster:
        cluster.start()
        cluster.serving(members=3)
        names = list(cluster.processes)
        for trial in range(args.failovers):
            victim = names[trial % len(names)]
            children: list[subprocess.Popen[bytes]] = []
            try:
                for first, share in firsts(spread(args.failover_clients, args.client_procs)):
                    children.append(
                        spawn_client(
                            "failover",
                            cluster.ports,
                            *("--first", str(first), "--clients", str(share)),
                        )
                    )
                wait_ready(children, "failover")
                for child in children:
                    tell(child, "go")
                time.sleep(args.warmup)
                before = {n: cluster.stats(n) or {} for n in names if n != victim}
                when = cluster.processes[victim].kill()
                for child in children:
                    tell(child, f"after {when!r}")
                clients: list[dict[str, Any]] = []
                for child in children:
                    clients.extend(result_of(child, FAILOVER_DEADLINE + 30, "failover", cluster))
            finally:
                for child in children:
                    stop(child)
            errors = [c["error"] for c in clients if c["error"]]
            resumed = [c["resumed_s"] for c in clients]
            moved = [c["resumed_s"] for c in clients if c["failovers"]]
            stayed = [c["resumed_s"] for c in clients if not c["failovers"]]
            done = all(r is not None for r in resumed)
            survivors = cluster.serving(*[n for n in names if n != victim], members=2)
            record: dict[str, Any] = {
                "victim": victim,
                "clients": clients,
                "all_resumed_s": max(resumed) if done and resumed else None,
                "moved_s": max(moved) if moved and None not in moved else None,
                "stayed_s": max(stayed) if stayed and None not in stayed else None,
                "moved": len(moved),
                "errors": errors,
                # What the survivors' rings went through, from the kill to serving.
                "survivor_ring": {
                    k: sum(float(s.get(k, 0)) for s in survivors)
                    - sum(float(b.get(k, 0)) for b in before.values())
                    for k in FAILOVER_COUNTERS
                },
            }
            trials.append(record)
            print(
                f"  kill {trial + 1}/{args.failovers}  {victim}: every client again after "
                f"{_seconds(record['all_resumed_s'])} ({len(moved)} moved: "
                f"{_seconds(record['moved_s'])}; the others: {_seconds(record['stayed_s'])})"
                + (f"  errors: {errors[:3]}" if errors else ""),
                flush=True,
            )
            cluster.start(victim)
            cluster.serving(members=3)
    return trials


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:,.0f} ms"


# -- part 3: join -----------------------------------------------------------------------


def load(cluster: LipsCluster, first: int, count: int) -> float:
    """Put C{count} tuples into the cluster; the seconds it took."""
    child = spawn_client(
        "load",
        cluster.ports,
        *("--first", str(first), "--count", str(count), "--clients", "4", "--window", "64"),
    )
    try:
        result = result_of(child, 1800, "load", cluster)
    finally:
        stop(child)
    return float(result["seconds"])


def join_part(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    sizes: list[dict[str, Any]] = []
    with LipsCluster(tmp / "join") as cluster:
        cluster.start()
        cluster.serving(members=3)
        loaded = 0
        for size in args.sizes:
            first, loaded = loaded, size
            seconds = load(cluster, first, size - first)
            print(
                f"  loaded {size - first:,} tuples in {seconds:.1f} s "
                f"({(size - first) / seconds:,.0f} outs/s pipelined)",
                flush=True,
            )
            tuples = {s["space.tuples"] for s in cluster.serving(members=3)}
            if tuples != {size}:
                raise RuntimeError(f"expected {size} tuples in every server, found {tuples}")
            trials = []
            for k in range(args.joins):
                trials.append(join_once(cluster, "m3", size))
                t = trials[-1]
                print(
                    f"  join {k + 1}/{args.joins} with {size:,} tuples: serving after "
                    f"{t['serving_s']:.3f} s (answering status after {t['listening_s']:.3f} s)",
                    flush=True,
                )
            sizes.append(
                {
                    "tuples": size,
                    "loaded": size - first,
                    "load_s": seconds,
                    "trials": trials,
                    "serving_s": statistics.median(t["serving_s"] for t in trials),
                    "listening_s": statistics.median(t["listening_s"] for t in trials),
                }
            )
    return sizes


def join_once(cluster: LipsCluster, name: str, tuples: int) -> dict[str, Any]:
    """Kill C{name}, wait for the others to serve without it, start it; time its join."""
    others = [n for n in cluster.processes if n != name]
    cluster.processes[name].kill()
    cluster.probes[name].close()
    cluster.serving(*others, members=len(others))
    process = cluster.processes[name]
    process.start()
    listening: float | None = None
    latest: dict[str, Any] = {}

    def joined() -> bool:
        nonlocal listening, latest
        process.check()
        s = cluster.stats(name)
        if s is None:
            return False
        if listening is None:
            listening = time.monotonic()
        latest = s
        return (
            s.get("space.mode") == "serving"
            and s.get("space.members") == len(cluster.processes)
            and s.get("space.tuples") == tuples
            and s.get("ring.replica.snapshots.restored") == 1
        )

    wait_until(f"{name} to rejoin with {tuples} tuples", joined, 600, 0.01)
    done = time.monotonic()
    assert listening is not None
    cluster.serving(members=len(cluster.processes))
    return {
        "serving_s": done - process.started,
        "listening_s": listening - process.started,
        "ring": {k: v for k, v in latest.items() if k.startswith("ring.")},
    }


# -- reporting --------------------------------------------------------------------------


def ratio(a: Row | None, b: Row | None) -> float:
    if a is None or b is None or not b.pairs_per_s:
        return math.nan
    return a.pairs_per_s / b.pairs_per_s


def throughput_table(rows: list[Row]) -> list[str]:
    head = (
        f"{'system':<14} {'clients':>7} {'pairs/s':>8} {'p50 µs':>7} {'p99 µs':>7} "
        f"{'srv CPU':>7} {'srv µs/pair':>11} {'cli CPU':>7} {'other':>6} {'spread':>6} "
        f"{'/single':>7} {'ring/x':>6}"
    )
    lines = [head, "-" * len(head)]
    by = {(r.system, r.clients): r for r in rows}
    for clients in sorted({r.clients for r in rows}):
        ring = by.get(("ring", clients))
        for system in SYSTEMS:
            r = by.get((system, clients))
            if r is None:
                continue
            vs_single = ratio(r, by.get(("single", clients))) if system != "single" else math.nan
            ring_x = ratio(ring, r) if system != "ring" else math.nan
            lines.append(
                f"{LABELS[system]:<14} {clients:>7} {r.pairs_per_s:>8,.0f} {r.p50_us:>7,.0f} "
                f"{r.p99_us:>7,.0f} {r.server_cpu:>7.0%} {r.server_us_per_pair:>11.1f} "
                f"{r.client_cpu:>7.0%} {r.other_load:>6.0%} "
                f"{'-' if math.isnan(r.spread) else f'{r.spread:.0%}':>6} "
                f"{'' if math.isnan(vs_single) else f'{vs_single:.0%}':>7} "
                f"{'' if math.isnan(ring_x) else f'{ring_x:.2f}x':>6}"
            )
    return lines


def verdicts(rows: list[Row]) -> list[str]:
    by = {(r.system, r.clients): r for r in rows}
    out = []
    for system in RINGS:
        for clients in sorted({r.clients for r in rows}):
            ring = by.get((system, clients))
            if ring is None:
                continue
            share = ratio(ring, by.get(("single", clients)))
            if not math.isnan(share):
                out.append(
                    f"{system}/single at {clients:>2} client(s): {share:6.0%}  "
                    + _verdict(share >= TARGET_SINGLE, f">= {TARGET_SINGLE:.0%}")
                )
            times = ratio(ring, by.get(("pysyncobj", clients)))
            if not math.isnan(times):
                out.append(
                    f"{system}/pysyncobj at {clients:>2} client(s): {times:5.2f}x  "
                    + _verdict(times >= TARGET_SYNCOBJ, f">= {TARGET_SYNCOBJ:g}x")
                )
    low = by.get(("ring", 1))
    if low is not None:
        out.append(
            f"ring p50 at 1 client: {low.p50_us / 1000:.2f} ms  "
            + _verdict(low.p50_us < TARGET_P50_US, f"< {TARGET_P50_US / 1000:g} ms")
        )
    return out


def _verdict(met: bool, target: str) -> str:
    return f"(target {target}: {'met' if met else 'MISSED'})"


def ring_notes(rows: list[Row], duration: float) -> list[str]:
    """What the ring's counters say about each ring row's window."""
    out = []
    for r in rows:
        ring = r.detail.get("ring")
        pairs = r.detail.get("pairs", 0)
        if r.system not in RINGS or not ring or not pairs:
            continue
        servers = r.detail["servers"]
        # Every server takes the token once per rotation, and applies every operation.
        rotations = ring["ring.token.received"] / servers
        if not rotations:
            continue
        out.append(
            f"{r.system} at {r.clients:>2} client(s): {rotations / duration:,.0f} token "
            f"rotations/s ({duration / rotations * 1e6:,.0f} µs each); per rotation "
            f"{pairs / rotations:.2f} pairs, {ring['ring.sent.mcast'] / rotations:.2f} "
            f"broadcasts; {ring['space.applied'] / servers / pairs:.1f} operations applied "
            f"per pair (2 without lost claims); retransmitted "
            f"{ring['ring.token.retransmitted']:.0f} tokens, "
            f"{ring['ring.mcast.retransmitted']:.0f} broadcasts; tokens lost "
            f"{ring['ring.token.lost']:.0f}"
        )
    return out


def failover_lines(trials: list[dict[str, Any]]) -> list[str]:
    if not trials:
        return []
    all_times = [t["all_resumed_s"] for t in trials]
    lines = [
        f"{'kill':<5} {'victim':<6} {'every client':>12} {'moved':>5} {'moved max':>10} "
        f"{'others max':>10}   survivors: {'tokens lost':>11} {'consensus t/o':>13} "
        f"{'rings':>5}"
    ]
    for k, t in enumerate(trials, 1):
        ring = t["survivor_ring"]
        lines.append(
            f"{k:<5} {t['victim']:<6} {_seconds(t['all_resumed_s']):>12} {t['moved']:>5} "
            f"{_seconds(t['moved_s']):>10} {_seconds(t['stayed_s']):>10}   {'':>10} "
            f"{ring['ring.token.lost']:>11.0f} {ring['ring.consensus.timeout']:>13.0f} "
            f"{ring['ring.installed']:>5.0f}"
        )
    if None in all_times:
        lines.append("failover: some client did not complete an operation in time")
    else:
        median = statistics.median(all_times)
        lines.append(
            f"failover, median of {len(trials)}: {median * 1000:,.0f} ms  "
            + _verdict(median < TARGET_FAILOVER_S, f"< {TARGET_FAILOVER_S:g} s")
        )
    return lines


def join_lines(sizes: list[dict[str, Any]]) -> list[str]:
    if not sizes:
        return []
    lines = [
        f"{'tuples':>8} {'serving (median)':>16} {'process start':>13} {'transfer':>9} "
        f"{'runs (s)':<20} {'load outs/s':>11}   joiner: {'rings':>5} {'tokens lost':>11} "
        f"{'bcasts in':>9} {'fragments dropped':>17}"
    ]
    for s in sizes:
        runs = ", ".join(f"{t['serving_s']:.2f}" for t in s["trials"])
        # The joiner's counters in the median run.
        median = sorted(s["trials"], key=lambda t: t["serving_s"])[(len(s["trials"]) - 1) // 2]
        ring = {k: float(median["ring"].get(k, 0)) for k in JOIN_COUNTERS}
        lines.append(
            f"{s['tuples']:>8,} {s['serving_s']:>14.2f} s {s['listening_s']:>11.2f} s "
            f"{s['serving_s'] - s['listening_s']:>7.2f} s {runs:<20} "
            f"{s['loaded'] / s['load_s']:>11,.0f}   {'':>7} {ring['ring.installed']:>5.0f} "
            f"{ring['ring.token.lost']:>11.0f} {ring['ring.mcast.received']:>9,.0f} "
            f"{ring['ring.fragments.abandoned']:>17,.0f}"
        )
    return lines


# -- main -------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "role",
        nargs="?",
        choices=["bench", "client", "failover", "load"],
        default="bench",
        help=argparse.SUPPRESS,
    )
    p.add_argument("--quick", action="store_true", help="smoke run: short, small, once each")
    p.add_argument(
        "--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}"
    )
    p.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help=f"throughput: comma-separated subset of {','.join(SYSTEMS)}",
    )
    p.add_argument(
        "--duration", type=float, default=None, help="throughput: seconds measured (default 5)"
    )
    p.add_argument("--warmup", type=float, default=None, help="seconds of warm-up (default 1)")
    p.add_argument(
        "--repeat", type=int, default=None, help="throughput: runs, median shown (default 3)"
    )
    p.add_argument(
        "--clients", default="1,16", help="throughput: concurrency levels (default 1,16)"
    )
    p.add_argument(
        "--client-procs", type=int, default=2, help="client processes per level (default 2)"
    )
    p.add_argument(
        "--failovers", type=int, default=None, help="failover: kills, median shown (default 3)"
    )
    p.add_argument("--failover-clients", type=int, default=6, help="failover: clients (default 6)")
    p.add_argument("--sizes", default=None, help="join: tuple counts (default 10000,100000)")
    p.add_argument("--joins", type=int, default=None, help="join: restarts per size (default 3)")
    p.add_argument(
        "--keep",
        type=Path,
        default=None,
        metavar="DIR",
        help="keep the server logs and cluster files in a new directory under DIR",
    )
    # For the client processes this script starts.
    p.add_argument("--system", choices=SYSTEMS, help=argparse.SUPPRESS)
    p.add_argument("--ports", help=argparse.SUPPRESS)
    p.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--window", type=int, default=64, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    quick = args.quick
    if args.duration is None:
        args.duration = 1.0 if quick else 5.0
    if args.warmup is None:
        args.warmup = 0.3 if quick else 1.0
    if args.repeat is None:
        args.repeat = 1 if quick else 3
    if args.failovers is None:
        args.failovers = 1 if quick else 3
    if args.joins is None:
        args.joins = 1 if quick else 3
    if args.role != "bench":
        args.ports = _ints(args.ports)
        args.clients = int(args.clients)
        return args
    try:
        args.levels = sorted(set(_ints(args.clients)))
        args.sizes = sorted(set(_ints(args.sizes or ("1000,10000" if quick else "10000,100000"))))
    except ValueError:
        p.error("--clients and --sizes take comma-separated integers")
    args.parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    args.systems = [x.strip() for x in args.systems.split(",") if x.strip()]
    if set(args.parts) - set(PARTS) or set(args.systems) - set(SYSTEMS):
        p.error("unknown part or system")
    if (
        args.duration <= 0
        or args.warmup < 0
        or min(args.repeat, args.failovers, args.joins, args.client_procs) < 1
        or args.failover_clients < 1
        or not args.levels
        or min(args.levels) < 1
        or not args.sizes
        or min(args.sizes) < 1
    ):
        p.error("durations, counts and sizes must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.role != "bench":
        client_main(args)
        return 0
    print(
        f"replicated: parts {', '.join(args.parts)}; {args.duration:g} s per measurement "
        f"after {args.warmup:g} s of warm-up, {args.repeat} run(s); clients "
        f"{', '.join(map(str, args.levels))}; {args.failovers} kill(s) of "
        f"{args.failover_clients} clients; joins with {', '.join(f'{s:,}' for s in args.sizes)} "
        f"tuples, {args.joins} each; {os.cpu_count()} cores"
    )
    before = machine_busy_seconds()
    time.sleep(1)
    idle_load = machine_busy_seconds() - before
    print(f"machine load before starting: {idle_load:.0%} of a core")
    if idle_load > BUSY:
        print("WARNING: the machine is busy with other work: these figures will be noisy.")
    rows: list[Row] = []
    trials: list[dict[str, Any]] = []
    sizes: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            tmp = str(Path(tempfile.mkdtemp(prefix="run-", dir=args.keep)))
            print(f"server logs and cluster files are kept in {tmp}")
        else:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="lips-bench-rep-"))
        if "throughput" in args.parts:
            print("\n== 1. out+in throughput and latency ==", flush=True)
            rows = throughput_part(args, Path(tmp))
        if "failover" in args.parts:
            print("\n== 2. failover: SIGKILL one of three servers under load ==", flush=True)
            trials = failover_part(args, Path(tmp))
        if "join" in args.parts:
            print("\n== 3. join: a restarted server receives the space ==", flush=True)
            sizes = join_part(args, Path(tmp))

    print("\n== results ==")
    if rows:
        print()
        print("\n".join(throughput_table(rows)))
        print(
            "pairs/s: out+in (pysyncobj: put+get) round trips per second; p50/p99: latency "
            "of a pair;\nCPU: share of one core in the window (srv: all servers of the "
            "system together; other: the rest of the machine); spread: (best - worst) / "
            "median pairs/s;\n/single: pairs/s against the single server; ring/x: the "
            "ring's pairs/s against this row."
        )
        busiest = max((r.other_load for r in rows), default=0.0)
        if busiest > BUSY:
            print(
                f"WARNING: up to {busiest:.0%} of a core was busy with other work during a\n"
                "measurement: the machine is shared, and these figures are not reliable."
            )
        print()
        for line in [*verdicts(rows), *ring_notes(rows, args.duration)]:
            print(line)
        for r in rows:
            if r.system == "pysyncobj" and r.detail.get("truncation_warnings"):
                print(
                    f"pysyncobj at {r.clients} client(s): its nodes logged "
                    f"{r.detail['truncation_warnings']} 'truncating already-applied log "
                    "entries' warnings (a follower given entries it holds again)"
                )
    if trials:
        print()
        print("\n".join(failover_lines(trials)))
    if sizes:
        print()
        print("\n".join(join_lines(sizes)))
    saved = save(
        {
            "benchmark": "replicated",
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "python": sys.version,
            "machine": platform.platform(),
            "cores": os.cpu_count(),
            "idle_load": idle_load,
            "args": {
                k: str(v) if isinstance(v, Path) else v
                for k, v in vars(args).items()
                if k not in ("role", "system", "ports", "first", "count", "window")
            },
            "throughput": [
                {**attrs.asdict(r), "server_us_per_pair": r.server_us_per_pair} for r in rows
            ],
            "failover": trials,
            "join": sizes,
        },
        "replicated",
    )
    print(f"\nresults: {saved}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
