"""
Out+in round trips through a real MessageServer, against the floor and against Redis.

One invocation measures on this machine, one after the other, at 1 and at 16 concurrent
clients (C{--clients}):

    lips (lips.client)   a C{twistd -n lips-msgserver} process on loopback; client
                         processes using L{lips.client}, each iteration being
                         C{await space.out(("job", i))}, C{await space.in_(("job", int))}
    lips (frame client)  the same server and the same OUT and IN frames, sent by the
                         light frame client of the minimal row instead of L{lips.client}:
                         a diagnostic that leaves out the client library's cost
    minimal server       C{bench/minimal_server.py}: a Twisted server that reads each
                         frame with L{lips.wire.FrameDecoder} and answers it at once with a
                         small frame, no tuple space; the frame client sends it the same
                         two frames per iteration
    redis LPUSH+RPOP     C{redis-server}, measured by C{redis-benchmark -t lpush,rpop --csv}

A pair is one out+in (for Redis one LPUSH+RPOP); p50 and p99 are the latency of a whole
pair, from just before the first request to the second answer.  Each server is a fresh
process per measurement.  The clients of a measurement are spread over
C{--client-procs} processes (one for a single client), all started before any begins;
each warms up for C{--warmup} seconds, then counts the pairs that end within the next
C{--duration} seconds.  Pairs/s is the sum over the client processes; ops/s is twice
that.  CPU columns are the share of one core the server process, and all client
processes together, used during the window.  Every measurement is made C{--repeat}
times (default 3), round-robin over the systems; the run with the median pairs/s is
shown.  C{--systems} picks from lips, lips-raw (the frame client row), minimal, redis.

Redis runs LPUSH and then RPOP as separate tests, so its pair rate is computed: a pair
costs one LPUSH and one RPOP, so pairs/s = 1 / (1/lpush_rps + 1/rpop_rps) (the
harmonic mean of the two rates, halved).  Its pair p50 and p99 are the sums of the two
commands' p50 and p99, marked ~ (an estimate: percentiles do not add exactly; for p99
it overstates).  redis-benchmark is a C client, so that row pays almost nothing on the
client side, while the other rows run a Python client on the same two cores.

    python -m bench.throughput                 # about 3.5 minutes
    python -m bench.throughput --quick         # a smoke run, about 25 s
    python -m bench.throughput --duration 10 --systems lips,minimal --clients 16
    python -m bench.throughput --profile-lips /tmp/prof   # LiPS servers under cProfile

Every server process it starts is stopped before it exits.  The results are also written
as JSON to C{bench/results/}.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import pstats
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure

import lips.client
from bench._common import (
    PairFunction,
    Row,
    environment,
    idle_load,
    ints,
    machine_busy_seconds,
    measure_clients,
    measure_pairs,
    median_row,
    names,
    quick_defaults,
    react,
    save,
    spread,
    warn_if_busy,
)
from lips.space import Kind
from lips.testing import ProcessGroup, free_port, run_directory
from lips.tuples import make_template
from lips.wire import (
    Error,
    Frame,
    FrameDecoder,
    Hello,
    Out,
    Take,
    Welcome,
    encode_message,
)

HERE = Path(__file__).resolve().parent
SYSTEMS = ("lips", "lips-raw", "minimal", "redis")
LABELS = {
    "lips": "lips (lips.client)",
    "lips-raw": "lips (frame client)",
    "minimal": "minimal server",
    "redis": "redis LPUSH+RPOP",
}
TARGET = 0.70


# -- server processes -------------------------------------------------------------------


def minimal_server_argv(port: int) -> list[str]:
    return [sys.executable, str(HERE / "minimal_server.py"), "--port", str(port)]


# -- one client process ---------------------------------------------------------------


class FrameClient(Protocol):
    """
    The light client: one request at a time, sent as a frame; the Deferred fires with
    the frame that answers it.
    """

    def __init__(self) -> None:
        self.decoder = FrameDecoder((1 << 20) + 4096)
        self.waiting: defer.Deferred[Frame] | None = None
        self.request_id = 0

    def request(self, encode: Callable[[int], bytes]) -> defer.Deferred[Frame]:
        """Send the frame C{encode(request_id)}."""
        assert self.waiting is None and self.transport is not None
        self.request_id = self.request_id % 0xFFFFFFFF + 1
        d: defer.Deferred[Frame] = defer.Deferred()
        self.waiting = d
        self.transport.write(encode(self.request_id))
        return d

    def dataReceived(self, data: bytes) -> None:
        for item in self.decoder.feed(data):
            d, self.waiting = self.waiting, None
            if d is None:
                continue
            if type(item) is Frame:
                d.callback(item)
            else:
                d.errback(RuntimeError(f"bad frame: {item}"))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        d, self.waiting = self.waiting, None
        if d is not None:
            d.errback(reason)


async def connect_lips(reactor: Any, port: int, n: int) -> PairFunction:
    space = await lips.client.connect(
        reactor, f"tcp:host=127.0.0.1:port={port}", name=f"bench-{n}"
    )

    async def pair(i: int) -> None:
        await space.out(("job", i))
        await space.in_(("job", int))

    return pair


async def connect_frames(reactor: Any, port: int, n: int, lips_server: bool) -> PairFunction:
    protocol = FrameClient()
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), protocol)
    hello = Hello(None, f"bench-{n}")
    welcome = await protocol.request(lambda rid: encode_message(hello, rid))
    if lips_server and welcome.type != Welcome.TYPE:
        raise RuntimeError(f"expected WELCOME, got a frame of type {welcome.type}")
    template = make_template(("job", int))
    event = 0

    async def pair(i: int) -> None:
        nonlocal event
        out = Out(event + 1, ("job", i))
        answer = await protocol.request(lambda rid: encode_message(out, rid))
        take = Take(Kind.IN, event + 2, template)
        event += 2
        if answer.type == Error.TYPE:
            raise RuntimeError(f"OUT failed: {answer.body!r}")
        answer = await protocol.request(lambda rid: encode_message(take, rid))
        if answer.type == Error.TYPE:
            raise RuntimeError(f"IN failed: {answer.body!r}")

    return pair


async def client_process(reactor: Any, args: argparse.Namespace) -> None:
    """
    The body of C{throughput.py client}: connect, say C{ready}, wait for a line on
    stdin, warm up, measure, print C{result <json>}.
    """
    pairs: list[PairFunction] = []
    for n in range(args.clients):
        if args.system == "lips":
            pairs.append(await connect_lips(reactor, args.port, n))
        else:
            pairs.append(await connect_frames(reactor, args.port, n, args.system == "lips-raw"))
    await measure_pairs(reactor, pairs, args.warmup, args.duration)


# -- measuring ------------------------------------------------------------------------


def measure_twisted(
    system: str, clients: int, args: argparse.Namespace, logs: Path, run: int
) -> tuple[Row, Path | None]:
    """Start a fresh server for C{system}, measure C{clients} clients, stop it."""
    port = free_port()
    profile = None
    with ProcessGroup(logs) as servers:
        name = f"{system}-{port}"
        if system == "minimal":
            server = servers.add(name, minimal_server_argv(port), port=port)
        else:
            if args.profile_lips is not None:
                profile = args.profile_lips / f"{system}-c{clients}-run{run}.prof"
            listen = ("--listen", f"tcp:{port}:interface=127.0.0.1", "--name", "bench")
            server = servers.twistd(name, "lips-msgserver", *listen, port=port, profile=profile)
        server.start().wait_listening()
        options = ("--system", system, "--port", str(port), "--warmup", str(args.warmup))
        commands = [
            (
                "bench.throughput",
                "client",
                (*options, "--clients", str(share), "--duration", str(args.duration)),
            )
            for share in spread(clients, args.client_procs)
        ]
        row = measure_clients(
            system, clients, commands, servers, warmup=args.warmup, duration=args.duration
        )
        # A profile is written as the server shuts down: give it time.
        server.stop(20)
    return row, profile


# -- redis ----------------------------------------------------------------------------


def find_redis() -> tuple[str, str] | None:
    """redis-server and redis-benchmark, installed with apt-get if need be and allowed."""
    server, bench = shutil.which("redis-server"), shutil.which("redis-benchmark")
    if server and bench:
        return server, bench
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        print("redis: redis-server is not installed and this is not root: peer skipped")
        return None
    print("redis: installing the Debian package redis-server (apt-get install -y) ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "redis-server"]
    if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, check=False)
        done = subprocess.run(install, env=env, capture_output=True, check=False)
        if done.returncode != 0:
            print(f"redis: apt-get failed, peer skipped:\n{done.stderr.decode()[-2000:]}")
            return None
    server, bench = shutil.which("redis-server"), shutil.which("redis-benchmark")
    if not (server and bench):
        print("redis: redis-server or redis-benchmark still missing: peer skipped")
        return None
    return server, bench


def redis_benchmark(bench: str, port: int, clients: int, n: int) -> dict[str, dict[str, float]]:
    """Run LPUSH and RPOP; their rows of redis-benchmark's CSV, by test name."""
    argv = [
        *(bench, "-h", "127.0.0.1", "-p", str(port), "-t", "lpush,rpop"),
        *("-n", str(n), "-c", str(clients), "--csv", "--precision", "3"),
    ]
    done = subprocess.run(argv, capture_output=True, check=True, timeout=600)
    rows: dict[str, dict[str, float]] = {}
    for record in csv.DictReader(io.StringIO(done.stdout.decode())):
        rows[record["test"].upper()] = {k: float(v) for k, v in record.items() if k != "test"}
    if set(rows) != {"LPUSH", "RPOP"}:
        raise RuntimeError(f"unexpected redis-benchmark output:\n{done.stdout.decode()}")
    return rows


def measure_redis(
    server_exe: str, bench: str, clients: int, args: argparse.Namespace, logs: Path
) -> Row:
    port = free_port()
    argv = [
        *(server_exe, "--port", str(port), "--bind", "127.0.0.1", "--save", ""),
        *("--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"),
    ]
    with ProcessGroup(logs) as servers:
        server = servers.add(f"redis-{port}", argv, port=port).start()
        server.wait_listening()
        # A short run warms up and tells how many requests fill --duration per test.
        trial = redis_benchmark(bench, port, clients, 2_000 if args.quick else 20_000)
        rate = min(r["rps"] for r in trial.values())
        n = max(1_000, int(rate * args.duration))
        cpu_before, busy_before = server.cpu_seconds(), machine_busy_seconds()
        children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        began = time.monotonic()
        rows = redis_benchmark(bench, port, clients, n)
        elapsed = time.monotonic() - began
        children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_after, busy_after = server.cpu_seconds(), machine_busy_seconds()
    push, pop = rows["LPUSH"], rows["RPOP"]
    bench_cpu = (children_after.ru_utime + children_after.ru_stime) - (
        children_before.ru_utime + children_before.ru_stime
    )
    return Row(
        system="redis",
        clients=clients,
        pairs_per_s=1 / (1 / push["rps"] + 1 / pop["rps"]),
        p50_us=(push["p50_latency_ms"] + pop["p50_latency_ms"]) * 1000,
        p99_us=(push["p99_latency_ms"] + pop["p99_latency_ms"]) * 1000,
        server_cpu=(cpu_after - cpu_before) / elapsed,
        client_cpu=bench_cpu / elapsed,
        machine_busy=(busy_after - busy_before) / elapsed,
        estimated_latency=True,
        detail={"requests_per_test": n, "LPUSH": push, "RPOP": pop},
    )


# -- reporting ------------------------------------------------------------------------


def ratio(a: Row | None, b: Row | None) -> str:
    if a is None or b is None or not b.pairs_per_s:
        return "-"
    return f"{a.pairs_per_s / b.pairs_per_s:.0%}"


def table(rows: list[Row]) -> str:
    head = (
        f"{'system':<20} {'clients':>7} {'pairs/s':>9} {'ops/s':>9} {'p50 µs':>8} "
        f"{'p99 µs':>8} {'srv CPU':>8} {'srv µs/pair':>11} {'cli CPU':>8} {'other':>6} "
        f"{'spread':>7} {'/minimal':>9} {'/redis':>7}"
    )
    lines = [head, "-" * len(head)]
    by = {(r.system, r.clients): r for r in rows}
    for clients in sorted({r.clients for r in rows}):
        for system in SYSTEMS:
            r = by.get((system, clients))
            if r is None:
                continue
            mark = "~" if r.estimated_latency else ""
            lines.append(
                f"{LABELS[system]:<20} {clients:>7} {r.pairs_per_s:>9,.0f} "
                f"{2 * r.pairs_per_s:>9,.0f} {mark + f'{r.p50_us:.0f}':>8} "
                f"{mark + f'{r.p99_us:.0f}':>8} {r.server_cpu:>8.0%} "
                f"{r.server_us_per_pair:>11.1f} {r.client_cpu:>8.0%} {r.other_load:>6.0%} "
                f"{'-' if math.isnan(r.spread) else f'{r.spread:.0%}':>7} "
                f"{ratio(r, by.get(('minimal', clients))) if system != 'minimal' else '':>9} "
                f"{ratio(r, by.get(('redis', clients))) if system != 'redis' else '':>7}"
            )
    return "\n".join(lines)


def verdicts(rows: list[Row]) -> list[str]:
    by = {(r.system, r.clients): r for r in rows}
    out = []
    for clients in sorted({r.clients for r in rows}):
        floor = by.get(("minimal", clients))
        if floor is None:
            continue
        for system in ("lips", "lips-raw"):
            r = by.get((system, clients))
            if r is None:
                continue
            share = r.pairs_per_s / floor.pairs_per_s
            verdict = "meets" if share >= TARGET else "is below"
            cost = r.server_us_per_pair / floor.server_us_per_pair
            out.append(
                f"{LABELS[system]}, {clients} client(s): {share:.0%} of the minimal server's "
                f"pairs/s ({verdict} the {TARGET:.0%} target); server CPU per pair "
                f"{r.server_us_per_pair:.1f} µs, {cost:.1f} x the minimal server's "
                f"{floor.server_us_per_pair:.1f} µs"
            )
    return out


def print_profile(path: Path, top: int) -> None:
    print(f"\n== cProfile of the LiPS server: {path} (top {top} by own time) ==")
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    print(out.getvalue().split("\n", 1)[1] if "\n" in out.getvalue() else out.getvalue())


# -- main -----------------------------------------------------------------------------


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "role", nargs="?", choices=["bench", "client"], default="bench", help=argparse.SUPPRESS
    )
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds measured per system and concurrency (default 5)",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="seconds of warm-up before each measurement (default 1)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="runs of every measurement, the median reported (default 3; 1 with --quick "
        "or --profile-lips)",
    )
    p.add_argument(
        "--quick", action="store_true", help="smoke run: 1 s measurements, 0.3 s warm-up"
    )
    p.add_argument(
        "--clients", default="1,16", help="comma-separated concurrency levels (default 1,16)"
    )
    p.add_argument(
        "--client-procs",
        type=int,
        default=2,
        help="client processes a concurrency level is spread over (default 2)",
    )
    p.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help=f"comma-separated subset of {','.join(SYSTEMS)}",
    )
    p.add_argument(
        "--profile-lips",
        type=Path,
        default=None,
        metavar="DIR",
        help="run the LiPS servers under cProfile, save the profiles in DIR "
        "and print them (the LiPS figures are then not comparable)",
    )
    # For the client processes this script starts.
    p.add_argument("--system", choices=SYSTEMS[:3], help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    quick_defaults(args, args.quick, duration=(1.0, 5.0), warmup=(0.3, 1.0))
    quick_defaults(args, args.quick or args.profile_lips is not None, repeat=(1, 3))
    if args.duration <= 0 or args.warmup < 0 or args.client_procs < 1 or args.repeat < 1:
        p.error(
            "--duration must be positive, --warmup not negative, "
            "--client-procs and --repeat at least 1"
        )
    if args.role == "client":
        args.clients = int(args.clients)
        return args
    try:
        args.levels = sorted(set(ints(args.clients)))
    except ValueError:
        p.error("--clients takes comma-separated integers")
    if not args.levels or min(args.levels) < 1:
        p.error("--clients must be at least 1")
    args.chosen = names(args.systems)
    unknown = set(args.chosen) - set(SYSTEMS)
    if unknown:
        p.error(f"unknown systems: {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.role == "client":
        react(lambda reactor: client_process(reactor, args))
        return 0
    if args.profile_lips is not None:
        args.profile_lips.mkdir(parents=True, exist_ok=True)
        args.profile_lips = args.profile_lips.resolve()
    print(
        f"throughput: {args.duration:g} s per measurement after {args.warmup:g} s of "
        f"warm-up; clients {', '.join(map(str, args.levels))}; "
        f"up to {args.client_procs} client processes; {os.cpu_count()} cores"
    )
    if args.profile_lips is not None:
        print("LiPS servers run under cProfile: their figures are slowed down by it.")
    idle_load()
    redis = find_redis() if "redis" in args.chosen else None
    runs: dict[tuple[str, int], list[Row]] = {}
    profiles: list[Path] = []
    with run_directory("lips-bench-") as logs:
        # Round-robin, so that a passing load on the machine falls on every system alike.
        for run in range(1, args.repeat + 1):
            for clients in args.levels:
                for system in SYSTEMS:
                    if system not in args.chosen:
                        continue
                    if system == "redis":
                        if redis is None:
                            continue
                        row = measure_redis(*redis, clients, args, logs)
                    else:
                        row, profile = measure_twisted(system, clients, args, logs, run)
                        if profile is not None:
                            profiles.append(profile)
                    runs.setdefault((system, clients), []).append(row)
                    print(
                        f"  run {run}/{args.repeat}  {LABELS[system]:<20} {clients:>3} "
                        f"clients: {row.pairs_per_s:>9,.0f} pairs/s  "
                        f"(other load {row.other_load:.0%} of a core)",
                        flush=True,
                    )
    rows = [median_row(r) for r in runs.values()]
    print()
    print(table(rows))
    print()
    print(
        "pairs/s: out+in round trips per second (redis: LPUSH+RPOP pairs, computed as\n"
        "1/(1/lpush_rps + 1/rpop_rps)); ops/s = 2 x pairs/s; p50/p99: latency of a pair\n"
        "(~ redis: sum of the two commands' percentiles); CPU: share of one core in the\n"
        "window (server process; all client processes; other: the rest of the machine's\n"
        "busy time, kernel work not charged to a process included); srv µs/pair: server\n"
        "CPU per pair; spread: (best - worst) / median pairs/s over the runs; each row is\n"
        "the run with the median pairs/s; /minimal, /redis: pairs/s relative to that row\n"
        "at the same concurrency."
    )
    warn_if_busy(max((r.other_load for r in rows), default=0.0))
    for line in verdicts(rows):
        print(line)
    for r in rows:
        if r.system == "redis":
            push, pop = r.detail["LPUSH"], r.detail["RPOP"]
            print(
                f"redis at {r.clients} client(s): LPUSH {push['rps']:,.0f} req/s "
                f"(p50 {push['p50_latency_ms'] * 1000:.0f} µs, p99 "
                f"{push['p99_latency_ms'] * 1000:.0f} µs), RPOP {pop['rps']:,.0f} req/s "
                f"(p50 {pop['p50_latency_ms'] * 1000:.0f} µs, p99 "
                f"{pop['p99_latency_ms'] * 1000:.0f} µs)"
            )
    for path in profiles:
        print_profile(path, 30)
    saved = save(
        {
            "benchmark": "throughput",
            **environment(),
            "duration": args.duration,
            "warmup": args.warmup,
            "repeat": args.repeat,
            "client_procs": args.client_procs,
            "profiled": args.profile_lips is not None,
            "rows": [
                {
                    **attrs.asdict(r),
                    "server_us_per_pair": r.server_us_per_pair,
                    "other_load": r.other_load,
                }
                for r in rows
            ],
            "all_runs": [
                {**attrs.asdict(r), "server_us_per_pair": r.server_us_per_pair}
                for rs in runs.values()
                for r in rs
            ],
        },
        "throughput",
    )
    print(f"\nresults: {saved}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
