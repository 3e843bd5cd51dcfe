"""
What a client sees when the server it is on fails, and how often a healthy ring's
clients fail over for nothing, in two parts printed side by side at the end:

1. The gap: one client does out+in pairs, one operation at a time, against a 3-server
   ring (C{lips.client.connect} to all three endpoints, starting at the victim), and
   the victim then

       kill   gets SIGKILL (started again C{--hold} seconds later)
       stop   gets SIGSTOP, and SIGCONT C{--hold} seconds later (a paused server: its
              sockets stay open and silent, so only the client's keepalive notices)
       cut    loses its link for C{--hold} seconds: the servers run in network
              namespaces on a bridge (198.18.0.0/15), and the victim's veth is set
              down, then up again (root only; skipped otherwise)

   The figure is the gap: the longest interval between two consecutive completed
   operations of that client from the fault until it was undone.  Beside it: the
   ring's own time to serve again without the victim (the survivors' status polled
   every 10 ms until both serve in a ring of two), and the longest interval around
   the undoing (the victim rejoining).  C{--runs} faults of each kind (default 5,
   C{--quick} 2), the victim m1, m2, m3 in turn; median and max.

2. False suspicions: C{--suspect-clients} clients (default 64, over
   C{--client-procs} processes) do out+in pairs flat out against a 3-server ring for
   C{--suspect-seconds} (default 20, C{--quick} 5) with no fault at all.  Every client
   failover is a false suspicion: counted from C{TupleSpaceClient.failovers} and from
   the clients' "Failing over" and "No word from the server" log lines, as failovers
   per client-minute; with the rings the servers installed and the tokens they lost
   over the same window.

    python -m bench.failover              # about 2 minutes (as root)
    python -m bench.failover --quick      # a smoke run, about 50 s
    python -m bench.failover --parts gap --kinds stop,cut --runs 9 --keep /tmp/logs

Every server is a real C{twistd -n lips-msgserver --config cluster.toml --name mN}
from a cluster file of its own (C{timings = "loopback"}).  Every process it started is
stopped, and every namespace it made removed, before it exits (on errors, Ctrl-C and
SIGTERM too).  The results are also written as JSON to C{bench/results/}.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Final

import attrs
from twisted.internet import defer
from twisted.internet.task import deferLater
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from zope.interface import implementer

import lips.client
from bench._common import (
    ReactorThread,
    environment,
    firsts,
    idle_load,
    ints,
    machine_busy_seconds,
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
    workspace,
)
from lips.client import TupleSpaceClient
from lips.testing import Bridge, Cluster

PARTS: Final = ("gap", "suspicion")
KINDS: Final = ("kill", "stop", "cut")
LABELS: Final = {"kill": "SIGKILL", "stop": "SIGSTOP", "cut": "link cut"}
#: How often the survivors' status is polled while the ring forms without the victim.
POLL: Final = 0.01
#: Steady operation of the gap client before a fault, and after the ring is whole.
SETTLE: Final = 1.0
#: How long the ring may take to serve again, and one client step may take.
DEADLINE: Final = 30.0
#: The client log lines that tell of a failover, and of a server taken for silent.
FAILING_OVER: Final = "Failing over"
NO_WORD: Final = "No word from the server"
#: Ring counters of the servers compared over the false-suspicion window.
SUSPICION_COUNTERS: Final = ("ring.installed", "ring.token.lost", "ring.gather.entered")


# -- servers ----------------------------------------------------------------------------


def loopback_cluster(directory: Path) -> Cluster:
    """Three MessageServers on loopback, from a cluster file of their own (stopped)."""
    return Cluster.create(directory, cluster_id=9)


def netns_cluster(directory: Path, bridge: Bridge) -> Cluster:
    """Three MessageServers, server I{n} in namespace I{n} of C{bridge} (stopped)."""
    return Cluster.create(
        directory,
        msgservers=len(bridge.hosts),
        hosts=bridge.hosts,
        prefixes={f"m{n}": bridge.prefix(n) for n in range(1, len(bridge.hosts) + 1)},
        cluster_id=9,
    )


def ring_without(cluster: Cluster, victim: str, since: float, until: float) -> float | None:
    """
    Poll the servers other than C{victim} every L{POLL} seconds until each serves in a
    ring without it; the seconds from C{since}, or C{None} if not before C{until}.
    """
    others = [n for n in cluster.names() if n != victim]
    want = len(others)
    while time.monotonic() < until:
        stats = [cluster.stats(n) for n in others]
        if all(
            s and s.get("space.mode") == "serving" and s["space.members"] == want for s in stats
        ):
            return time.monotonic() - since
        time.sleep(POLL)
    return None


# -- part 1: the gap --------------------------------------------------------------------


@implementer(ILogObserver)
@attrs.define
class LineCounter:
    """Counts the client log lines that tell of a failover or of a silent server."""

    counts: Counter[str] = attrs.Factory(Counter)
    texts: list[tuple[float, str]] = attrs.Factory(list)
    """The lines themselves, as formatted, with their time (C{time.time()})."""

    def __call__(self, event: LogEvent) -> None:
        text = event.get("log_format") or ""
        for prefix in (FAILING_OVER, NO_WORD):
            if text.startswith(prefix):
                self.counts[prefix] += 1
                self.texts.append((event.get("log_time", time.time()), formatEvent(event)))


@attrs.define(eq=False)
class GapClient:
    """A client doing out+in pairs one operation at a time; when each one ended."""

    space: TupleSpaceClient
    key: int
    done: list[float] = attrs.Factory(list)
    errors: list[str] = attrs.Factory(list)
    running: bool = True
    loop: defer.Deferred[None] | None = None

    async def run(self, reactor: Any) -> None:
        i = 0
        while self.running:
            try:
                await self.space.out(("gap", self.key, i))
                self.done.append(time.monotonic())
                await self.space.in_(("gap", self.key, int))
                self.done.append(time.monotonic())
            except Exception as e:
                self.errors.append(f"{type(e).__name__}: {e}")
                if self.space.state == "failed":
                    return
                await deferLater(reactor, 0.01)
            i += 1


async def start_gap_client(reactor: Any, eps: list[str], first: int, key: int) -> GapClient:
    space = await lips.client.connect(reactor, eps, start=first, name=f"bench-gap-{key}")
    client = GapClient(space, key)
    client.loop = defer.Deferred.fromCoroutine(client.run(reactor))
    return client


async def stop_gap_client(reactor: Any, client: GapClient) -> None:
    client.running = False
    assert client.loop is not None
    with contextlib.suppress(defer.TimeoutError):
        await client.loop.addTimeout(DEADLINE, reactor)
    await client.space.close()


def longest_gap(done: Sequence[float], after: float, before: float) -> float | None:
    """
    The longest interval between consecutive times of C{done} that ends after C{after}
    and begins before C{before}; C{None} if nothing was done after C{after}.
    """
    gaps = [b - a for a, b in itertools.pairwise(done) if b > after and a < before]
    return max(gaps) if gaps else None


def fault(cluster: Cluster, bridge: Bridge | None, kind: str, victim: str) -> float:
    """Inflict C{kind} on C{victim}; the monotonic time just before."""
    when = time.monotonic()
    if kind == "kill":
        return cluster.kill(victim)
    if kind == "stop":
        cluster.pause(victim)
    else:
        assert bridge is not None
        bridge.cut(int(victim[1:]))
    return when


def undo(cluster: Cluster, bridge: Bridge | None, kind: str, victim: str) -> None:
    if kind == "kill":
        cluster.start(victim)
    elif kind == "stop":
        cluster.resume(victim)
    else:
        assert bridge is not None
        bridge.heal(int(victim[1:]))


def gap_trial(
    loop: ReactorThread,
    cluster: Cluster,
    bridge: Bridge | None,
    *,
    kind: str,
    victim: str,
    hold: float,
    key: int,
) -> dict[str, Any]:
    """One fault of C{kind} on C{victim} under the gap client; what it saw."""
    eps = cluster.endpoints()
    index = cluster.names().index(victim)
    client = loop.run(start_gap_client, loop.reactor, eps, index, key)
    lines = LineCounter()
    globalLogPublisher.addObserver(lines)
    undone = False
    try:
        time.sleep(SETTLE)
        if client.space.endpoint != eps[index]:
            raise RuntimeError(f"the gap client is on {client.space.endpoint}, not {victim}")
        failovers = client.space.failovers
        wall = time.time()
        t0 = fault(cluster, bridge, kind, victim)
        ring_s = ring_without(cluster, victim, t0, t0 + hold)
        time.sleep(max(0.0, t0 + hold - time.monotonic()))
        t1 = time.monotonic()
        undo(cluster, bridge, kind, victim)
        undone = True
        cluster.wait_serving(members=len(cluster.members))
        whole_s = time.monotonic() - t1
        time.sleep(SETTLE)
        t2 = time.monotonic()
    finally:
        if not undone:
            with contextlib.suppress(Exception):
                undo(cluster, bridge, kind, victim)
        loop.run(stop_gap_client, loop.reactor, client)
        globalLogPublisher.removeObserver(lines)
    done = list(client.done)
    return {
        "kind": kind,
        "victim": victim,
        "gap_s": longest_gap(done, t0, t1),
        "undo_gap_s": longest_gap(done, t1, t2),
        "ring_s": ring_s,
        "whole_s": whole_s,
        "moved": client.space.failovers - failovers,
        # What the client logged, from the fault (the undoing came at `hold`).
        "why": [f"{when - wall:+.3f} s: {text}" for when, text in lines.texts],
        "ops": len(done),
        "errors": client.errors[:5],
    }


def gap_kind(
    args: argparse.Namespace,
    loop: ReactorThread,
    cluster: Cluster,
    bridge: Bridge | None,
    kind: str,
) -> list[dict[str, Any]]:
    trials: list[dict[str, Any]] = []
    cluster.start()
    cluster.wait_serving(members=3)
    members = cluster.names()
    for k in range(args.runs):
        victim = members[k % len(members)]
        t = gap_trial(loop, cluster, bridge, kind=kind, victim=victim, hold=args.hold, key=k)
        trials.append(t)
        print(
            f"  {LABELS[kind]} {k + 1}/{args.runs} of {victim}: gap {_ms(t['gap_s'])}, the ring "
            f"without it after {_ms(t['ring_s'])}, on rejoining {_ms(t['undo_gap_s'])} "
            f"(moved {t['moved']}x)"
            + (f"  errors: {t['errors']}" if t["errors"] else "")
            + ("".join(f"\n      {why}" for why in t["why"]) if t["moved"] > 1 else ""),
            flush=True,
        )
    return trials


def can_cut() -> str | None:
    """Why the link-cut kind cannot run here, or C{None} if it can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "needs iproute2's ip command"
    return None


def gap_part(args: argparse.Namespace, loop: ReactorThread, tmp: Path) -> dict[str, Any]:
    kinds: dict[str, Any] = {}
    for kind in args.kinds:
        if kind == "cut":
            why = can_cut()
            if why is not None:
                print(f"  {LABELS[kind]}: skipped ({why})", flush=True)
                kinds[kind] = {"skipped": why}
                continue
            bridge = Bridge(3)
            bridge.destroy()  # leftovers of an interrupted run with the same tag
            try:
                bridge.create()
                with netns_cluster(tmp / kind, bridge) as cluster:
                    kinds[kind] = {"trials": gap_kind(args, loop, cluster, bridge, kind)}
            finally:
                bridge.destroy()
        else:
            with loopback_cluster(tmp / kind) as cluster:
                kinds[kind] = {"trials": gap_kind(args, loop, cluster, None, kind)}
    return kinds


# -- part 2: false suspicions -----------------------------------------------------------


async def suspect_process(reactor: Any, args: argparse.Namespace) -> None:
    """
    The body of C{failover.py suspect}: connect C{--clients} clients, say C{ready}; on
    C{go} run out+in pairs flat out for C{--duration} seconds; print C{result <json>}:
    the pairs, the failovers and the log lines that tell of them.
    """
    from twisted.internet import threads

    lines = LineCounter()
    eps = [f"tcp:host=127.0.0.1:port={p}" for p in args.ports]
    spaces = [
        await lips.client.connect(
            reactor, eps, start=args.first + n, name=f"bench-suspect-{args.first + n}"
        )
        for n in range(args.clients)
    ]
    globalLogPublisher.addObserver(lines)
    print("ready", flush=True)
    await threads.deferToThread(sys.stdin.readline)
    began = time.monotonic()
    end = began + args.duration
    pairs = 0
    errors: list[str] = []

    async def run(space: TupleSpaceClient) -> None:
        nonlocal pairs
        i = 0
        while time.monotonic() < end:
            try:
                await space.out(("job", i))
                await space.in_(("job", int))
            except Exception as e:
                errors.append(f"{type(e).__name__}: {e}")
                if space.state == "failed":
                    return
            else:
                pairs += 1
            i += 1

    await defer.gatherResults(
        [defer.Deferred.fromCoroutine(run(s)) for s in spaces], consumeErrors=True
    )
    result = {
        "clients": len(spaces),
        "seconds": time.monotonic() - began,
        "pairs": pairs,
        "failovers": sum(s.failovers for s in spaces),
        "lines": dict(lines.counts),
        "errors": errors[:5],
    }
    sys.stdout.write("result " + json.dumps(result) + "\n")
    sys.stdout.flush()
    for s in spaces:
        await s.close()


def spawn_suspect(ports: Sequence[int], *options: str) -> subprocess.Popen[bytes]:
    """A client process of part 2: C{python -m bench.failover suspect --ports ...}."""
    return spawn_client(
        "bench.failover", "suspect", "--ports", ",".join(map(str, ports)), *options
    )


def suspicion_part(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    with loopback_cluster(tmp / "suspicion") as cluster:
        cluster.start()
        cluster.wait_serving(members=3)
        children: list[subprocess.Popen[bytes]] = []
        try:
            for first, share in firsts(spread(args.suspect_clients, args.client_procs)):
                children.append(
                    spawn_suspect(
                        cluster.ports,
                        *("--first", str(first), "--clients", str(share)),
                        *("--duration", str(args.suspect_seconds)),
                    )
                )
            wait_ready(children, "suspicion")
            before = cluster.counters(SUSPICION_COUNTERS)
            busy, wall = machine_busy_seconds(), time.monotonic()
            for child in children:
                tell(child, "go")
            results = [
                result_of(child, args.suspect_seconds + 120, "suspicion", cluster)
                for child in children
            ]
            busy = (machine_busy_seconds() - busy) / (time.monotonic() - wall)
            after = cluster.counters(SUSPICION_COUNTERS)
        finally:
            for child in children:
                stop_child(child)
    clients = sum(r["clients"] for r in results)
    seconds = max(r["seconds"] for r in results)
    failovers = sum(r["failovers"] for r in results)
    lines: Counter[str] = Counter()
    for r in results:
        lines.update(r["lines"])
    summary = {
        "clients": clients,
        "processes": len(results),
        "seconds": seconds,
        "pairs": sum(r["pairs"] for r in results),
        "failovers": failovers,
        "per_client_minute": failovers / (clients * seconds / 60),
        "lines": {FAILING_OVER: lines[FAILING_OVER], NO_WORD: lines[NO_WORD]},
        "ring": {k: after[k] - before[k] for k in SUSPICION_COUNTERS},
        "machine_busy": busy,
        "errors": [e for r in results for e in r["errors"]][:5],
    }
    print(
        f"  {clients} clients, {seconds:.1f} s: {summary['pairs']:,} pairs, {failovers} failovers",
        flush=True,
    )
    return summary


# -- results ----------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:,.0f} ms"


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known and len(known) == len(values) else None


def _max(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return max(known) if known and len(known) == len(values) else None


def gap_lines(kinds: dict[str, Any], hold: float) -> list[str]:
    if not kinds:
        return []
    lines = [
        f"{'fault (' + format(hold, 'g') + ' s)':<16} {'runs':>4} {'gap median':>10} "
        f"{'gap max':>9} {'moved':>9}   {'ring without it':>15} {'max':>9}   "
        f"{'on rejoining, max':>17}"
    ]
    for kind, k in kinds.items():
        if "skipped" in k:
            lines.append(f"{LABELS[kind]:<16} skipped: {k['skipped']}")
            continue
        trials = k["trials"]
        gaps = [t["gap_s"] for t in trials]
        rings = [t["ring_s"] for t in trials]
        moved = sum(1 for t in trials if t["moved"])
        total = sum(t["moved"] for t in trials)
        lines.append(
            f"{LABELS[kind]:<16} {len(trials):>4} {_ms(_median(gaps)):>10} "
            f"{_ms(_max(gaps)):>9} {f'{moved}/{len(trials)} ({total})':>9}   "
            f"{_ms(_median(rings)):>15} "
            f"{_ms(_max(rings)):>9}   {_ms(_max([t['undo_gap_s'] for t in trials])):>17}"
        )
    lines.append(
        "gap: the longest interval between two consecutive operations of a client on the\n"
        "victim, from the fault until it was undone; moved: trials in which that client\n"
        "failed over (its failovers in all); ring without it: the survivors serving in a\n"
        f"ring of two (their status polled every {POLL * 1000:g} ms); on rejoining: the\n"
        "longest interval from undoing the fault until the ring was whole again, and a\n"
        "second more."
    )
    return lines


def suspicion_lines(s: dict[str, Any]) -> list[str]:
    if not s:
        return []
    ring = s["ring"]
    lines = [
        f"false suspicions, no fault: {s['clients']} clients over {s['processes']} "
        f"process(es) flat out for {s['seconds']:.1f} s, {s['pairs']:,} out+in pairs "
        f"({s['pairs'] / s['seconds']:,.0f}/s)",
        f"  client failovers: {s['failovers']} ({s['per_client_minute']:.3f} per "
        f'client-minute); log lines "{FAILING_OVER}": {s["lines"][FAILING_OVER]}, '
        f'"{NO_WORD}": {s["lines"][NO_WORD]}',
        f"  the servers over the window: {ring['ring.installed']:.0f} rings installed, "
        f"{ring['ring.token.lost']:.0f} tokens lost, {ring['ring.gather.entered']:.0f} "
        "gathers (0 each when healthy)",
    ]
    if s["errors"]:
        lines.append(f"  client errors: {s['errors']}")
    lines.append(f"  the machine was {s['machine_busy']:.0%} of a core busy over the window")
    return lines


# -- main -------------------------------------------------------------------------------


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "role", nargs="?", choices=["bench", "suspect"], default="bench", help=argparse.SUPPRESS
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 2 faults a kind, 5 s load")
    p.add_argument(
        "--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}"
    )
    p.add_argument(
        "--kinds",
        default=",".join(KINDS),
        help=f"gap: comma-separated subset of {','.join(KINDS)}",
    )
    p.add_argument("--runs", type=int, default=None, help="gap: faults of each kind (default 5)")
    p.add_argument(
        "--hold", type=float, default=3.0, help="gap: seconds until a fault is undone (3)"
    )
    p.add_argument(
        "--suspect-clients", type=int, default=64, help="suspicion: clients (default 64)"
    )
    p.add_argument(
        "--suspect-seconds", type=float, default=None, help="suspicion: seconds (default 20)"
    )
    p.add_argument(
        "--client-procs", type=int, default=2, help="suspicion: client processes (default 2)"
    )
    p.add_argument(
        "--keep",
        type=Path,
        default=None,
        metavar="DIR",
        help="keep the server logs and cluster files in a new directory under DIR",
    )
    # For the client processes this script starts.
    p.add_argument("--ports", help=argparse.SUPPRESS)
    p.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--clients", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--duration", type=float, default=0.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.role != "bench":
        args.ports = ints(args.ports)
        return args
    quick_defaults(args, args.quick, runs=(2, 5), suspect_seconds=(5.0, 20.0))
    args.parts = names(args.parts)
    args.kinds = names(args.kinds)
    if set(args.parts) - set(PARTS) or set(args.kinds) - set(KINDS):
        p.error("unknown part or kind")
    if (
        min(args.runs, args.suspect_clients, args.client_procs) < 1
        or args.hold <= 0
        or args.suspect_seconds <= 0
    ):
        p.error("counts and durations must be positive")
    return args


def _terminate(signum: int, frame: FrameType | None) -> None:
    # So that SIGTERM unwinds like Ctrl-C: servers stopped, namespaces removed.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.role != "bench":
        react(lambda reactor: suspect_process(reactor, args))
        return 0
    signal.signal(signal.SIGTERM, _terminate)
    print(
        f"failover: parts {', '.join(args.parts)}; {args.runs} fault(s) of each of "
        f"{', '.join(LABELS[k] for k in args.kinds)}, undone after {args.hold:g} s; "
        f"{args.suspect_clients} clients for {args.suspect_seconds:g} s with no fault; "
        f"{os.cpu_count()} cores"
    )
    load = idle_load()
    kinds: dict[str, Any] = {}
    suspicion: dict[str, Any] = {}
    loop = ReactorThread()
    try:
        with workspace(args.keep, "lips-fo-") as tmp:
            parts: list[tuple[str, str, Callable[[], None]]] = [
                (
                    "gap",
                    "1. the gap a client sees when its server fails",
                    lambda: kinds.update(gap_part(args, loop, tmp)),
                ),
                (
                    "suspicion",
                    "2. false suspicions: clients flat out, no fault",
                    lambda: suspicion.update(suspicion_part(args, tmp)),
                ),
            ]
            for name, title, body in parts:
                if name in args.parts:
                    print(f"\n== {title} ==", flush=True)
                    body()
    finally:
        loop.stop()

    print("\n== results ==")
    for lines in (gap_lines(kinds, args.hold), suspicion_lines(suspicion)):
        if lines:
            print()
            print("\n".join(lines))
    saved = save(
        {
            "benchmark": "failover",
            **environment(),
            "idle_load": load,
            "args": public_args(args, "role", "ports", "first", "clients", "duration"),
            "gap": kinds,
            "suspicion": suspicion,
        },
        "failover",
    )
    print(f"\nresults: {saved}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
