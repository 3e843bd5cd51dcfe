"""
The LiPS demonstration: a fault-tolerant application on a local cluster, with faults
injected on purpose.

    python examples/ftdemo.py                  # what ./run demo runs
    python examples/ftdemo.py --no-faults      # the same run, nothing killed

It starts, on loopback, two FixServers (the System Tuple Space) and three
MessageServers (the application's space), each a replicated ring, and two lipsd nodes;
then it counts the primes below a bound with workers started by eval
(C{examples/ftprimes.py}): the master and the workers are processes lipsd runs and
restarts.  While it runs it kills, with SIGKILL, a worker process, then the master, then
the MessageServer every client is connected to, then a whole node.  It shows a progress
bar, then what failed and how the system recovered, and checks the answer against a
sieve of its own.  Exit status 0 means the answer is exact.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from twisted.internet import defer, task

import lips.client
from lips.node import eval_request
from lips.testing import ANY_LOAD, Cluster, run_directory

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
ftprimes: Any = importlib.import_module("ftprimes")

NODES = ("n1", "n2")
#: How a worker's and the master's command lines name their functions.
WORKER = "ftprimes:worker"
MASTER = "ftprimes:master"


def make_cluster(directory: Path) -> Cluster:
    """
    The servers and nodes of the demonstration (not started): two FixServers and three
    MessageServers, each role a ring of its own, and two lipsd watching each other,
    which may run the workers of C{ftprimes} on any load.
    """
    cluster = Cluster.create(directory, fixservers=2, msgservers=3)
    app = [arg for ep in cluster.endpoints("msgserver") for arg in ("--app", ep)]
    for name, watch in zip(NODES, reversed(NODES), strict=True):
        cluster.node(
            name,
            *("--interval", "0.25", "--watch", watch, *app),
            *("--pythonpath", str(HERE), "--allow", "ftprimes:*", *ANY_LOAD),
            *("--restart-delay", "0.1"),
        )
    return cluster


class Progress:
    """A progress bar on a terminal; a line every tenth elsewhere (a CI log, say)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.tty = sys.stdout.isatty()
        self.shown = -1

    def show(self, done: int, note: str = "") -> None:
        width = 40
        filled = width * done // self.total
        line = f"[{'#' * filled}{'.' * (width - filled)}] {done:3}/{self.total} results"
        if note:
            line += f"  {note}"
        if self.tty:
            print("\r" + line.ljust(110), end="", flush=True)
        elif note or done * 10 // self.total != self.shown:
            self.shown = done * 10 // self.total
            print(line, flush=True)

    def end(self) -> None:
        if self.tty:
            print()


async def run(reactor: Any, cluster: Cluster, args: argparse.Namespace) -> int:
    system = await lips.client.connect(reactor, cluster.endpoints("fixserver"))
    space = await lips.client.connect(reactor, cluster.endpoints("msgserver"))
    summary: list[str] = []
    try:
        for node in NODES:
            await system.rd(("node", node, int, float, float, int, int, bool), timeout=20)
        pids = {}
        for w in range(args.workers):
            node = NODES[w % 2]
            placed = await eval_request(system, ("worker", w), WORKER, w, nodes=[node])
            pids[w] = (placed.pid, node)
        await eval_request(
            system, ("master",), MASTER, args.bound, args.tasks, args.workers, nodes=["n1"]
        )
        print(
            f"counting the primes below {args.bound:,}: {args.tasks} tasks, a master and"
            f" {args.workers} workers (each a process lipsd runs) on nodes n1 and n2,"
            " three MessageServers, two FixServers"
        )
        progress = Progress(args.tasks)
        n = args.tasks
        faults = [] if args.no_faults else [n // 5, 2 * n // 5, 3 * n // 5, 4 * n // 5]
        pending_kill: tuple[str, float, int] | None = None
        done = 0
        while done < args.tasks:
            # The master puts ("progress", k) after its k-th result, and never takes it.
            await space.rd(("progress", done + 1), timeout=60)
            done += 1
            note = ""
            if pending_kill is not None:
                _, when, at = pending_kill
                summary.append(
                    f"  MessageServer m1, which every client was on: killed (SIGKILL) at"
                    f" {at}/{args.tasks} results -> m2 and m3 formed a ring without it and"
                    f" every client moved to one of them, sending its unanswered request"
                    f" again; the next result came {1000 * (time.monotonic() - when):.0f} ms"
                    f" later"
                )
                pending_kill = None
            if faults and done >= faults[0]:
                fault = faults.pop(0)
                if fault == 4 * n // 5:
                    moved = [w for w, (_, node) in pids.items() if node == "n2"]
                    killed_at = time.monotonic()
                    cluster.kill("n2")
                    note = "<- killed node n2 (its lipsd; its workers end with it)"
                    down = await system.rd(("node-down", "n2", int, str), timeout=30)
                    declared = time.monotonic()
                    summary.append(
                        f"  node n2 (lipsd and the {len(moved)} workers it ran): killed"
                        f" (SIGKILL) at {done}/{args.tasks} results -> {down[3]}"
                        f" declared it down after {1000 * (declared - killed_at):.0f} ms and"
                        f" restarted its workers, with their process ids, on n1"
                    )
                elif fault == 3 * n // 5:
                    cluster.kill("m1")
                    note = "<- killed MessageServer m1"
                    pending_kill = ("m1", time.monotonic(), done)
                else:
                    what, target = ("worker", WORKER) if fault == n // 5 else ("master", MASTER)
                    killed = await _kill_one(reactor, cluster, "n1", target)
                    if killed is not None:
                        victim, killed_at, restarted = killed
                        note = f"<- killed the {what} process on n1 (os pid {victim})"
                        summary.append(
                            f"  {what} process on n1 (os pid {victim}): killed (SIGKILL) at"
                            f" {done}/{args.tasks} results -> lipsd restarted it with the"
                            f" same LiPS process id in"
                            f" {1000 * (restarted - killed_at):.0f} ms; it recovered its"
                            f" checkpoint and its operations since were answered from the log"
                        )
            progress.show(done, note)
        progress.end()
        _, total = await space.in_(("master", int), timeout=60)
        tallies = 0
        for w in range(args.workers):
            _, _, counted = await space.in_(("worker", w, int), timeout=60)
            tallies += counted
        leftover = await space.inp(("result", int, int))
        while await space.inp(("progress", int)) is not None:
            pass
        expected = ftprimes.count_primes(0, args.bound)
        ok = total == expected and tallies == total and leftover is None
        print("what failed, and how the system recovered:")
        for line in summary or ["  nothing (run with faults to see some)"]:
            print(line)
        print(
            f"  the demonstration's client failed over {space.failovers} time(s);"
            f" the System Tuple Space's {system.failovers} time(s)"
        )
        print(
            f"primes below {args.bound:,}: {total:,} (a sieve here says {expected:,}):"
            f" {'OK' if ok else 'WRONG'}; {args.tasks} tasks, each counted once;"
            f" the workers' own tallies add up to {tallies:,}"
        )
        return 0 if ok else 1
    finally:
        await system.close()
        await space.close()


async def _kill_one(
    reactor: Any, cluster: Cluster, node: str, target: str
) -> tuple[int, float, float] | None:
    """
    SIGKILL one of lipsd C{node}'s children running C{target}; its os pid, when it was
    killed, and when lipsd ran as many C{target} children again without it.
    """
    victims = cluster[node].children(target)
    if not victims:
        return None
    victim = victims[0]
    killed_at = time.monotonic()
    with contextlib.suppress(ProcessLookupError):
        os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        current = cluster[node].children(target)
        if victim not in current and len(current) >= len(victims):
            return victim, killed_at, time.monotonic()
        await task.deferLater(reactor, 0.005)
    raise AssertionError(f"lipsd {node} did not restart the killed {target} process")


@contextlib.contextmanager
def cluster_in(directory: Path) -> Iterator[Cluster]:
    """The demonstration's cluster, serving, with its nodes started; stopped at the end."""
    with make_cluster(directory) as cluster:
        cluster.start()
        cluster.wait_serving()
        for name in NODES:
            cluster[name].start()
        yield cluster


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bound", type=int, default=3_000_000, help="count primes below this")
    p.add_argument("--tasks", type=int, default=60, help="how many tasks")
    p.add_argument("--workers", type=int, default=6, help="how many workers")
    p.add_argument("--no-faults", action="store_true", help="inject no fault")
    p.add_argument("--keep", metavar="DIR", help="keep logs and cluster files in DIR")
    args = p.parse_args(argv)
    keep = Path(args.keep) if args.keep else None
    # A failure keeps the logs and cluster files, and says where they are.
    with run_directory("lips-demo-", keep) as directory, cluster_in(directory) as cluster:
        began = time.monotonic()
        status: list[int] = []

        async def body(reactor: Any) -> None:
            status.append(await run(reactor, cluster, args))

        with contextlib.suppress(SystemExit):  # react's, once body is done
            task.react(lambda reactor: defer.ensureDeferred(body(reactor)))
        if status:
            print(f"({time.monotonic() - began:.1f} s)")
        if not status or status[0]:
            where = f"; logs are in {directory}" if keep else ""
            print(f"the demonstration failed{where}", file=sys.stderr)
            raise SystemExit(status[0] if status else 1)
        return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
