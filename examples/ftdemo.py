"""
The LiPS demonstration: a fault-tolerant application on a local cluster, with faults
injected on purpose.

    python examples/ftdemo.py                  # what ./run demo runs
    python examples/ftdemo.py --no-faults      # the same run, nothing killed

It starts, on loopback, two FixServers (the System Tuple Space) and three
MessageServers (the application's space), each a replicated ring, and two lipsd nodes;
then it counts the primes below a bound with workers started by eval
(C{examples/ftprimes.py}).  While it runs it kills, with SIGKILL, a worker process,
then the MessageServer every client is connected to, then a whole node.  It shows a progress bar,
then what failed and how the system recovered, and checks the answer against a sieve
of its own.  Exit status 0 means the answer is exact.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
from twisted.internet import defer, task

import lips.client
from lips.node import eval_request
from lips.testing import ClusterMember, write_cluster

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
ftprimes: Any = importlib.import_module("ftprimes")

TWISTD = [
    sys.executable,
    "-c",
    "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()",
]


def _free(kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Cluster:
    """The servers and nodes of the demonstration, as child processes."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.members = [
            ClusterMember(name, n, _free(socket.SOCK_DGRAM), _free(socket.SOCK_STREAM), role=role)
            for name, n, role in (
                ("f1", 1, "fixserver"),
                ("f2", 2, "fixserver"),
                ("m1", 1, "msgserver"),
                ("m2", 2, "msgserver"),
                ("m3", 3, "msgserver"),
            )
        ]
        self.path = write_cluster(directory / "cluster", self.members)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def endpoints(self, role: str) -> list[str]:
        return [f"tcp:host=127.0.0.1:port={m.tcp_port}" for m in self.members if m.role == role]

    def _spawn(self, name: str, role: str, *options: str) -> None:
        log = open(self.directory / f"{name}.log", "wb")  # noqa: SIM115 - the child keeps it
        self.procs[name] = subprocess.Popen(
            [
                *TWISTD,
                "-n",
                "--pidfile=",
                role,
                "--config",
                str(self.path),
                "--name",
                name,
                *options,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def start_servers(self) -> None:
        for m in self.members:
            self._spawn(m.name, f"lips-{m.role}")
        deadline = time.monotonic() + 30
        for m in self.members:
            while True:
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", m.tcp_port), timeout=1),
                ):
                    break
                if self.procs[m.name].poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{m.name} did not start; see {self.directory}/{m.name}.log"
                    )
                time.sleep(0.05)

    def start_nodes(self) -> None:
        app = [arg for ep in self.endpoints("msgserver") for arg in ("--app", ep)]
        for name in ("n1", "n2"):
            self._spawn(
                name,
                "lips-node",
                "--interval",
                "0.25",
                "--watch",
                "n2" if name == "n1" else "n1",
                *app,
                "--pythonpath",
                str(HERE),
                "--allow",
                "ftprimes:*",
                "--max-load",
                "1000",
                "--min-cpu-idle",
                "0",
                "--min-free-memory",
                "0",
                "--restart-delay",
                "0.1",
            )

    def workers(self, node: str) -> list[psutil.Process]:
        """The running worker processes of lipsd C{node}."""
        found = []
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.procs[node].pid).children():
                with contextlib.suppress(psutil.Error):
                    if "ftprimes:worker" in child.cmdline() and child.status() != "zombie":
                        found.append(child)
        return found

    def kill(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGKILL)

    def stop(self) -> None:
        """Nodes first (they report to the servers), then the servers."""
        order = [n for n in ("n1", "n2") if n in self.procs] + [m.name for m in self.members]
        for name in order:
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)


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
        for node in ("n1", "n2"):
            await system.rd(("node", node, int, float, float, int, int, bool), timeout=20)
        work = ftprimes.tasks(args.bound, args.tasks)
        for t in work:
            await space.out(t)
        pids = {}
        for w in range(args.workers):
            node = ("n1", "n2")[w % 2]
            placed = await eval_request(system, ("worker", w), "ftprimes:worker", w, nodes=[node])
            pids[w] = (placed.pid, node)
        print(
            f"counting the primes below {args.bound:,}: {args.tasks} tasks,"
            f" {args.workers} workers on nodes n1 and n2, three MessageServers, two FixServers"
        )
        progress = Progress(args.tasks)
        total, seen = 0, set[int]()
        faults = [] if args.no_faults else [args.tasks // 4, args.tasks // 2, args.tasks * 3 // 4]
        pending_kill: tuple[str, float, int] | None = None
        while len(seen) < args.tasks:
            _, tid, n = await space.in_(("result", int, int), timeout=60)
            if tid in seen:
                raise AssertionError(f"task {tid} was counted twice")
            seen.add(tid)
            total += n
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
            if faults and len(seen) >= faults[0]:
                fault = faults.pop(0)
                if fault == args.tasks * 3 // 4:
                    moved = [w for w, (_, node) in pids.items() if node == "n2"]
                    killed_at = time.monotonic()
                    cluster.kill("n2")
                    note = "<- killed node n2 (its lipsd; its workers end with it)"
                    down = await system.rd(("node-down", "n2", int, str), timeout=30)
                    declared = time.monotonic()
                    summary.append(
                        f"  node n2 (lipsd and the {len(moved)} workers it ran): killed"
                        f" (SIGKILL) at {len(seen)}/{args.tasks} results -> {down[3]}"
                        f" declared it down after {1000 * (declared - killed_at):.0f} ms and"
                        f" restarted its workers, with their process ids, on n1"
                    )
                elif fault == args.tasks // 4:
                    victims = cluster.workers("n1")
                    if victims:
                        victim = victims[0]
                        killed_at = time.monotonic()
                        victim.send_signal(signal.SIGKILL)
                        note = f"<- killed a worker process on n1 (os pid {victim.pid})"
                        restarted = await _restarted(
                            reactor, cluster, "n1", victim.pid, len(victims)
                        )
                        summary.append(
                            f"  worker process on n1 (os pid {victim.pid}): killed (SIGKILL) at"
                            f" {len(seen)}/{args.tasks} results -> lipsd restarted it with the"
                            f" same LiPS process id in"
                            f" {1000 * (restarted - killed_at):.0f} ms; it recovered its"
                            f" checkpoint and its operations since were answered from the log"
                        )
                else:
                    cluster.kill("m1")
                    note = "<- killed MessageServer m1"
                    pending_kill = ("m1", time.monotonic(), len(seen))
            progress.show(len(seen), note)
        progress.end()
        for _ in range(args.workers):
            await space.out(("task", -1, 0, 0))
        tallies = 0
        for w in range(args.workers):
            _, _, counted = await space.in_(("worker", w, int), timeout=60)
            tallies += counted
        leftover = await space.inp(("result", int, int))
        expected = ftprimes.count_primes(0, args.bound)
        ok = total == expected and tallies == total and leftover is None
        print("what failed, and how the system recovered:")
        for line in summary or ["  nothing (run with faults to see some)"]:
            print(line)
        print(
            f"  the application's client failed over {space.failovers} time(s);"
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


async def _restarted(reactor: Any, cluster: Cluster, node: str, old: int, before: int) -> float:
    """
    When lipsd C{node}, which ran C{before} workers with C{old} among them, runs as many
    again without C{old}: the killed one was restarted.
    """
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        current = [p.pid for p in cluster.workers(node)]
        if old not in current and len(current) >= before:
            return time.monotonic()
        await task.deferLater(reactor, 0.005)
    raise AssertionError(f"lipsd {node} did not restart the killed worker")


@contextlib.contextmanager
def cluster_in(directory: Path) -> Iterator[Cluster]:
    cluster = Cluster(directory)
    try:
        cluster.start_servers()
        cluster.start_nodes()
        yield cluster
    finally:
        cluster.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bound", type=int, default=3_000_000, help="count primes below this")
    p.add_argument("--tasks", type=int, default=60, help="how many tasks")
    p.add_argument("--workers", type=int, default=6, help="how many workers")
    p.add_argument("--no-faults", action="store_true", help="inject no fault")
    p.add_argument("--keep", metavar="DIR", help="keep logs and cluster files in DIR")
    args = p.parse_args(argv)
    with contextlib.ExitStack() as stack:
        if args.keep:
            directory = Path(args.keep)
            directory.mkdir(parents=True, exist_ok=True)
        else:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lips-demo-")))
        cluster = stack.enter_context(cluster_in(directory))
        began = time.monotonic()
        status: list[int] = []

        async def body(reactor: Any) -> None:
            status.append(await run(reactor, cluster, args))

        try:
            task.react(lambda reactor: defer.ensureDeferred(body(reactor)))
        except SystemExit as e:
            if e.code not in (0, None):
                print(f"the demonstration failed; logs are in {directory}", file=sys.stderr)
                return int(e.code) if isinstance(e.code, int) else 1
        print(f"({time.monotonic() - began:.1f} s)")
        return status[0] if status else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
