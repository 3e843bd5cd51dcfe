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
       ring-durable  ring-own's ring and pairs with C{durable = true} in the cluster file:
                  every server journals what it applies and flushes it to disk before
                  its token goes on, so each answer waits for every member's disk
       etcd       three C{etcd} members on loopback (Debian's C{etcd-server}; skipped
                  if it is not installed), each fsyncing its Raft log and backend at
                  every commit; client k talks to member k mod 3 over its HTTP/JSON
                  gateway, on one kept-alive connection: a pair is a C{put} of key
                  C{job/k/i}, then a C{deleterange} of it with C{prev_kv}, the take of
                  one's own item, as ring-own and ring-durable do

   The method is that of C{bench/throughput.py}: fresh servers per measurement, the
   clients spread over C{--client-procs} processes started together, C{--warmup}
   seconds of warm-up, pairs counted over C{--duration} seconds, p50/p99 of a whole
   pair (nearest rank), each measurement repeated C{--repeat} times round-robin over
   the systems and the run with the median pairs/s shown.  Server CPU is summed over
   the servers of a system.  The ratios ring/single (target >= 50%), ring/pysyncobj
   (target >= 2x) and the ring's p50 at 1 client (target < 2 ms) follow the table, and
   what durability costs: ring-durable against ring-own and against etcd.

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

    python -m bench.replicated            # about 4 minutes
    python -m bench.replicated --quick    # a smoke run, about 35 s
    python -m bench.replicated --parts failover,join --failovers 5 --keep /tmp/logs

pysyncobj is installed into this interpreter with pip when it is missing (it is the
C{bench} extra of the project); if that fails the peer is skipped.  Every process it
started is stopped before it exits.  The results are also written as JSON to
C{bench/results/}.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import importlib.util
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import attrs
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

import lips.client
from bench._common import (
    PairFunction,
    Row,
    environment,
    firsts,
    idle_load,
    ints,
    measure_clients,
    measure_pairs,
    median_row,
    names,
    public_args,
    quick_defaults,
    react,
    result_of,
    save,
    spawn_client,
    spread,
    stop_child,
    tell,
    wait_ready,
    wait_until,
    warn_if_busy,
    workspace,
)
from lips.testing import Cluster, Process, ProcessGroup, free_port

HERE: Final = Path(__file__).resolve().parent
SYSTEMS: Final = ("ring", "ring-own", "single", "pysyncobj", "ring-durable", "etcd")
RINGS: Final = ("ring", "ring-own", "ring-durable")
#: The rings whose clients each take back their own tuples.
OWN: Final = ("ring-own", "ring-durable")
LABELS: Final = {
    "ring": "LiPS ring (3)",
    "ring-own": "ring, own tmpl",
    "single": "LiPS single",
    "pysyncobj": "pysyncobj (3)",
    "ring-durable": "ring, durable",
    "etcd": "etcd (3)",
}
PARTS: Final = ("throughput", "failover", "join")
PYSYNCOBJ: Final = "pysyncobj>=0.3.17"
ETCD: Final = "etcd"

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

#: How long clients may take to complete an operation after a kill before the trial fails.
FAILOVER_DEADLINE: Final = 30.0


# -- servers ----------------------------------------------------------------------------


def ring(directory: Path, durable: bool = False) -> Cluster:
    """A cluster file of three MessageServers on loopback, and their processes (stopped)."""
    return Cluster.create(directory, msgservers=3, cluster_id=9, durable=durable)


def etcd_nodes(directory: Path, size: int = 3) -> ProcessGroup:
    """Three etcd members on loopback, each with its data directory here (stopped)."""
    nodes = ProcessGroup(directory)
    peers = [f"http://127.0.0.1:{free_port()}" for _ in range(size)]
    initial = ",".join(f"e{n + 1}={url}" for n, url in enumerate(peers))
    for n in range(size):
        port = free_port()
        client_url = f"http://127.0.0.1:{port}"
        argv = [
            *(ETCD, "--name", f"e{n + 1}", "--data-dir", str(directory / f"e{n + 1}.etcd")),
            *("--listen-client-urls", client_url, "--advertise-client-urls", client_url),
            *("--listen-peer-urls", peers[n], "--initial-advertise-peer-urls", peers[n]),
            *("--initial-cluster", initial, "--initial-cluster-state", "new"),
            *("--initial-cluster-token", "lips-bench", "--log-level", "warn"),
        ]
        nodes.add(f"e{n + 1}", argv, port=port)
    return nodes


def _etcd_answers(p: Process) -> bool:
    """Whether a put through member C{p} is committed (a leader is elected)."""
    p.check_running()
    assert p.port is not None
    body = json.dumps({"key": _b64(b"ready"), "value": _b64(b"1")}).encode()
    request = (
        b"POST /v3/kv/put HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
    )
    try:
        with socket.create_connection(("127.0.0.1", p.port), 2) as s:
            s.settimeout(5)
            s.sendall(request)
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
            return answer.startswith(b"HTTP/1.1 200") and b'"header"' in answer
    except OSError:
        return False


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def syncobj_nodes(directory: Path, size: int = 3) -> ProcessGroup:
    """Three pysyncobj nodes replicating the queue, each serving clients on TCP (stopped)."""
    nodes = ProcessGroup(directory)
    raft = [f"127.0.0.1:{free_port()}" for _ in range(size)]
    for n in range(size):
        port = free_port()
        others = ",".join(r for k, r in enumerate(raft) if k != n)
        argv = [
            *(sys.executable, str(HERE / "_syncobj_queue.py")),
            *("--raft", raft[n], "--partners", others, "--listen", str(port)),
        ]
        nodes.add(f"s{n + 1}", argv, port=port)
    return nodes


def _syncobj_answers(p: Process) -> bool:
    """Whether a put and a get through node C{p} are committed."""
    p.check_running()
    assert p.port is not None
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


def syncobj_warnings(nodes: ProcessGroup) -> int:
    """How many times the nodes logged that they truncated applied log entries."""
    return sum(p.read_log().count("truncating already-applied") for p in nodes.processes.values())


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


class EtcdClient(Protocol):
    """
    A client of etcd's HTTP/JSON gateway on one kept-alive HTTP/1.1 connection: one
    request at a time, its answer's status and JSON body back.
    """

    def __init__(self) -> None:
        self.waiting: defer.Deferred[tuple[int, Any]] | None = None
        self._buffer = b""

    def request(self, path: str, body: dict[str, Any]) -> defer.Deferred[tuple[int, Any]]:
        assert self.waiting is None and self.transport is not None
        data = json.dumps(body).encode()
        d: defer.Deferred[tuple[int, Any]] = defer.Deferred()
        self.waiting = d
        self.transport.write(
            b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(data), data)
        )
        return d

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        head, sep, rest = self._buffer.partition(b"\r\n\r\n")
        if not sep:
            return
        lines = head.split(b"\r\n")
        headers = dict(
            (k.strip().lower(), v.strip()) for k, _, v in (h.partition(b":") for h in lines[1:])
        )
        if b"content-length" not in headers:
            raise RuntimeError(f"etcd answered without a Content-Length: {head!r}")
        length = int(headers[b"content-length"])
        if len(rest) < length:
            return
        self._buffer = rest[length:]
        status = int(lines[0].split()[1])
        d, self.waiting = self.waiting, None
        if d is not None:
            d.callback((status, json.loads(rest[:length])))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        d, self.waiting = self.waiting, None
        if d is not None:
            d.errback(reason)


async def connect_etcd(reactor: Any, ports: Sequence[int], index: int) -> PairFunction:
    """A client of member C{index} (mod their number): put its own key, then take it."""
    protocol = EtcdClient()
    port = ports[index % len(ports)]
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), protocol)

    async def pair(i: int) -> None:
        key = _b64(b"job/%d/%d" % (index, i))
        status, answer = await protocol.request("/v3/kv/put", {"key": key, "value": _b64(b"x")})
        if status != 200:
            raise RuntimeError(f"put failed: {status} {answer!r}")
        status, answer = await protocol.request(
            "/v3/kv/deleterange", {"key": key, "prev_kv": True}
        )
        if status != 200 or answer.get("deleted") != "1":
            raise RuntimeError(f"take failed: {status} {answer!r}")

    return pair


async def pairs_process(reactor: Any, args: argparse.Namespace) -> None:
    """
    The body of C{replicated.py client}: connect, say C{ready}, wait for a line on
    stdin, warm up, measure, print C{result <json>} (as C{throughput.py client}).
    """
    connect = {
        "pysyncobj": connect_syncobj,
        "ring-own": connect_lips_own,
        "ring-durable": connect_lips_own,
        "etcd": connect_etcd,
    }.get(args.system, connect_lips)
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


def client(role: str, ports: Sequence[int], *options: str) -> subprocess.Popen[bytes]:
    """A client process of this script: C{python -m bench.replicated ROLE --ports ...}."""
    return spawn_client("bench.replicated", role, "--ports", ",".join(map(str, ports)), *options)


# -- part 1: throughput -----------------------------------------------------------------


def start_system(system: str, directory: Path) -> ProcessGroup:
    """The servers of C{system}, started and answering (stopped again if they fail to)."""
    servers: ProcessGroup
    if system in RINGS:
        servers = ring(directory, durable=system == "ring-durable")
    elif system == "single":
        servers = ProcessGroup(directory)
        servers.standalone("single")
    elif system == "etcd":
        servers = etcd_nodes(directory)
    else:
        servers = syncobj_nodes(directory)
    try:
        for p in servers.processes.values():
            p.start()
        if isinstance(servers, Cluster):
            servers.wait_serving(members=3)
        elif system == "single":
            servers["single"].wait_serving()
        elif system == "etcd":
            for p in servers.processes.values():
                wait_until(
                    f"etcd member {p.name} to answer", functools.partial(_etcd_answers, p), 30, 0.1
                )
        else:
            for p in servers.processes.values():
                # Ready once a put and a get through this node are committed: a leader is
                # elected and this node knows it.
                wait_until(
                    f"pysyncobj node {p.name} to answer",
                    functools.partial(_syncobj_answers, p),
                    30,
                    0.05,
                )
    except BaseException:
        servers.stop()
        raise
    return servers


def measure(system: str, clients: int, args: argparse.Namespace, directory: Path) -> Row:
    """Start fresh servers of C{system}, measure C{clients} clients, stop them."""
    with start_system(system, directory) as servers:
        ports = ",".join(map(str, servers.ports))
        commands = [
            (
                "bench.replicated",
                "client",
                (
                    *("--ports", ports, "--system", system, "--first", str(first)),
                    *("--clients", str(share), "--warmup", str(args.warmup)),
                    *("--duration", str(args.duration)),
                ),
            )
            for first, share in firsts(spread(clients, args.client_procs))
        ]

        def counters() -> dict[str, float]:
            return servers.counters(RING_COUNTERS) if isinstance(servers, Cluster) else {}

        row = measure_clients(
            system,
            clients,
            commands,
            servers,
            warmup=args.warmup,
            duration=args.duration,
            counters=counters,
        )
        row.detail["servers"] = len(servers.ports)
        if system == "pysyncobj":
            row.detail["truncation_warnings"] = syncobj_warnings(servers)
    return row


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
    if "etcd" in systems and shutil.which(ETCD) is None:
        print("etcd: not installed (apt-get install etcd-server), peer skipped", flush=True)
        systems.remove("etcd")
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
    with ring(tmp / "failover") as cluster:
        cluster.start()
        cluster.wait_serving(members=3)
        names = cluster.names()
        for trial in range(args.failovers):
            victim = names[trial % len(names)]
            children: list[subprocess.Popen[bytes]] = []
            try:
                for first, share in firsts(spread(args.failover_clients, args.client_procs)):
                    children.append(
                        client(
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
                when = cluster.kill(victim)
                for child in children:
                    tell(child, f"after {when!r}")
                clients: list[dict[str, Any]] = []
                for child in children:
                    clients.extend(result_of(child, FAILOVER_DEADLINE + 30, "failover", cluster))
            finally:
                for child in children:
                    stop_child(child)
            errors = [c["error"] for c in clients if c["error"]]
            resumed = [c["resumed_s"] for c in clients]
            moved = [c["resumed_s"] for c in clients if c["failovers"]]
            stayed = [c["resumed_s"] for c in clients if not c["failovers"]]
            done = all(r is not None for r in resumed)
            survivors = cluster.wait_serving(*[n for n in names if n != victim], members=2)
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
            cluster.wait_serving(members=3)
    return trials


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:,.0f} ms"


# -- part 3: join -----------------------------------------------------------------------


def load(cluster: Cluster, first: int, count: int) -> float:
    """Put C{count} tuples into the cluster; the seconds it took."""
    child = client(
        "load",
        cluster.ports,
        *("--first", str(first), "--count", str(count), "--clients", "4", "--window", "64"),
    )
    try:
        result = result_of(child, 1800, "load", cluster)
    finally:
        stop_child(child)
    return float(result["seconds"])


def join_part(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    sizes: list[dict[str, Any]] = []
    with ring(tmp / "join") as cluster:
        cluster.start()
        cluster.wait_serving(members=3)
        loaded = 0
        for size in args.sizes:
            first, loaded = loaded, size
            seconds = load(cluster, first, size - first)
            print(
                f"  loaded {size - first:,} tuples in {seconds:.1f} s "
                f"({(size - first) / seconds:,.0f} outs/s pipelined)",
                flush=True,
            )
            tuples = {s["space.tuples"] for s in cluster.wait_serving(members=3)}
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


def join_once(cluster: Cluster, name: str, tuples: int) -> dict[str, Any]:
    """Kill C{name}, wait for the others to serve without it, start it; time its join."""
    others = [n for n in cluster.names() if n != name]
    cluster.kill(name)
    cluster.wait_serving(*others, members=len(others))
    process = cluster[name]
    process.start()
    listening: float | None = None
    latest: dict[str, Any] = {}

    def joined() -> bool:
        nonlocal listening, latest
        process.check_running()
        s = cluster.stats(name)
        if s is None:
            return False
        if listening is None:
            listening = time.monotonic()
        latest = s
        return (
            s.get("space.mode") == "serving"
            and s.get("space.members") == len(cluster.members)
            and s.get("space.tuples") == tuples
            and s.get("ring.replica.snapshots.restored") == 1
        )

    try:
        wait_until(f"{name} to rejoin with {tuples} tuples", joined, 600, 0.01)
    except RuntimeError as e:
        seen = {k: latest.get(k) for k in ("space.mode", "space.members", "space.tuples")}
        raise RuntimeError(f"{e}; its last status: {seen}") from None
    done = time.monotonic()
    assert listening is not None
    cluster.wait_serving(members=len(cluster.members))
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
    for system in ("ring", "ring-own"):
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
    for clients in sorted({r.clients for r in rows}):
        durable = by.get(("ring-durable", clients))
        if durable is None:
            continue
        for peer in ("ring-own", "etcd"):
            times = ratio(durable, by.get((peer, clients)))
            if not math.isnan(times):
                out.append(f"ring-durable/{peer} at {clients:>2} client(s): {times:5.2f}x")
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
    quick_defaults(
        args,
        args.quick,
        duration=(1.0, 5.0),
        warmup=(0.3, 1.0),
        repeat=(1, 3),
        failovers=(1, 3),
        joins=(1, 3),
    )
    if args.role != "bench":
        args.ports = ints(args.ports)
        args.clients = int(args.clients)
        return args
    try:
        args.levels = sorted(set(ints(args.clients)))
        sizes = args.sizes or ("1000,10000" if args.quick else "10000,100000")
        args.sizes = sorted(set(ints(sizes)))
    except ValueError:
        p.error("--clients and --sizes take comma-separated integers")
    args.parts = names(args.parts)
    args.systems = names(args.systems)
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
        body = {"client": pairs_process, "failover": failover_process, "load": load_process}
        react(lambda reactor: body[args.role](reactor, args))
        return 0
    print(
        f"replicated: parts {', '.join(args.parts)}; {args.duration:g} s per measurement "
        f"after {args.warmup:g} s of warm-up, {args.repeat} run(s); clients "
        f"{', '.join(map(str, args.levels))}; {args.failovers} kill(s) of "
        f"{args.failover_clients} clients; joins with {', '.join(f'{s:,}' for s in args.sizes)} "
        f"tuples, {args.joins} each; {os.cpu_count()} cores"
    )
    load = idle_load()
    rows: list[Row] = []
    trials: list[dict[str, Any]] = []
    sizes: list[dict[str, Any]] = []
    with workspace(args.keep, "lips-bench-rep-") as tmp:
        if "throughput" in args.parts:
            print("\n== 1. out+in throughput and latency ==", flush=True)
            rows = throughput_part(args, tmp)
        if "failover" in args.parts:
            print("\n== 2. failover: SIGKILL one of three servers under load ==", flush=True)
            trials = failover_part(args, tmp)
        if "join" in args.parts:
            print("\n== 3. join: a restarted server receives the space ==", flush=True)
            sizes = join_part(args, tmp)

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
        warn_if_busy(max((r.other_load for r in rows), default=0.0))
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
            **environment(),
            "idle_load": load,
            "args": public_args(args, "role", "system", "ports", "first", "count", "window"),
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
