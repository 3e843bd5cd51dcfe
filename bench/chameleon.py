"""
Chameleon's figures (the paper's section 6.2 and Table 4) measured on LiPS's FTM, side
by side with the paper's: real C{twistd} FixServers, lipsd ARMOR daemons and
C{twistd lips-ftm} on loopback, jobs submitted with L{lips.jobs.submit}.

    install an Execution ARMOR     its intent row in the FTM's table (the surrogate
                                   manager's decision) to its daemon's location row
                                   (the process started, connected and registered)
    set up a node                  C{twistd lips-node} started to its node's survey in
                                   the host table (daemon up, joined, surveyed)
    submit to result               a trivial one-task job: L{lips.jobs.submit} to its
                                   result, through another node's daemon
    node failure detection         SIGKILL of a node's lipsd to the FTM's failure row
    Execution ARMOR recovery       SIGKILL of its process to its next incarnation's
                                   location row
    daemon recovery                SIGKILL of a lipsd and its start again (as a
                                   supervisor would) to the node's survey again
    surrogate manager recovery     SIGKILL of its process to its next incarnation's row
    FTM failover                   SIGKILL of C{twistd lips-ftm} to the next epoch's tuple
                                   (the backup promoted), and to the first job it runs

Times come from polling the System Tuple Space every C{--poll} seconds (default 5 ms),
which adds up to that much to each figure.  Each is measured C{--runs} times (default
5, C{--quick} 2); the median and the maximum are shown with the paper's figure and the
issue's target (a fifth of the paper's; FTM failover under 1 s).

    python -m bench.chameleon            # about 2 minutes
    python -m bench.chameleon --quick

The FTM runs with C{--tick 0.2} and C{--misses 3} (a node is down after 0.6 s without
heartbeat answers); the daemons ping their ARMOR processes every 0.2 s.  Results are
also written as JSON to C{bench/results/}.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, Final

from twisted.internet import defer
from twisted.internet.task import deferLater

from bench._common import ROOT, environment, react, save, workspace
from lips import jobs
from lips.armor import armor_template
from lips.armor.ftm import ArmorEntry, HostRow
from lips.cluster import load_cluster
from lips.testing import Cluster, Process, armor_process, free_port
from lips.tuples import ANY

#: The paper's figures (ms), section 6.2 and Table 4.
PAPER: Final = {
    "install an Execution ARMOR": 71.0,
    "set up a node": 2245.0,
    "submit to result": 1056.0,
    "node failure detection": 10494.0,
    "Execution ARMOR recovery": 2428.0,
    "daemon recovery": 1891.0,
    "surrogate manager recovery": 1857.0,
    "FTM failover": None,
}
TARGET_FTM_FAILOVER_MS: Final = 1000.0
TICK: Final = 0.2
TASKS: Final = "bench._chameleon_tasks"


class Bench:
    """One cluster under the FTM, and the measurements made on it."""

    def __init__(self, directory: Path, reactor: Any, poll: float) -> None:
        self.reactor = reactor
        self.poll = poll
        self.cluster = Cluster.create(directory, fixservers=2, msgservers=0)
        self.config = load_cluster(self.cluster.path)
        self.runtime = directory / "run"
        self.nodes: dict[str, Process] = {}
        self.ftm: Process | None = None
        self.client: Any = None
        self.figures: dict[str, list[float]] = {name: [] for name in PAPER}
        self._jobs = 0

    # -- the cluster ---------------------------------------------------------------------

    def node(self, name: str) -> Process:
        process = self.cluster.node(
            name,
            "--armor-listen",
            f"tcp:{free_port()}:interface=127.0.0.1",
            "--armor-runtime",
            str(self.runtime / name),
            "--armor-ping-interval",
            "0.2",
            "--armor-kill-grace",
            "0.5",
            "--allow",
            f"{TASKS}:*",
            "--pythonpath",
            str(ROOT),
        )
        self.nodes[name] = process
        return process

    async def start(self) -> None:
        import lips.client

        self.cluster.start()
        await self.cluster.wait_serving_async(deadline=30)
        self.client = await lips.client.connect(self.reactor, self.cluster.endpoints("fixserver"))
        for name in ("n1", "n2"):
            self.node(name).start()
        self.ftm = self.cluster.twistd(
            "ftm",
            "lips-ftm",
            "--config",
            str(self.cluster.path),
            "--node",
            "n1",
            "--socket",
            str(self.runtime / "n1" / "daemon.sock"),
            "--tick",
            str(TICK),
        )
        self.ftm.start()
        await self.until(lambda: self.client.rdp(("ftm-epoch", 1, ANY)), "the FTM's epoch", 30)
        for name in ("n1", "n2"):
            await self.until(partial(self.client.rdp, HostRow.template(name)), name, 30)

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.close()
        await self.cluster.stop_async()

    # -- polling -------------------------------------------------------------------------

    async def until(
        self, probe: Callable[[], Awaitable[Any]], what: str, deadline: float = 60.0
    ) -> float:
        """Poll C{probe} until it answers something; the monotonic time it first did."""
        end = time.monotonic() + deadline
        while True:
            found = await probe()
            if found:
                return time.monotonic()
            if time.monotonic() > end:
                raise TimeoutError(f"{what}: not within {deadline:g} s")
            await deferLater(self.reactor, self.poll)

    async def located(self, armor: str, incarnation: int) -> Any:
        row = await self.client.rdp(armor_template(armor))
        return row is not None and row[5] >= incarnation

    async def intent(self, app: str, type: str) -> ArmorEntry | None:
        for t in await self.client.atomic_scan(ArmorEntry.template(ANY, app)):
            entry = ArmorEntry.from_tuple(t)
            if entry.type == type:
                return entry
        return None

    def armor_pid(self, node: str, armor: str) -> int:
        found = armor_process(self.nodes[node].pid, armor)
        if found is None:
            raise LookupError(f"no process of {armor} on {node}")
        return int(found.pid)

    def submit(self, target: str, args: list[Any], via: str = "n2") -> defer.Deferred[Any]:
        self._jobs += 1
        name = f"b{self._jobs}"
        d = defer.Deferred.fromCoroutine(
            jobs.submit(
                self.reactor,
                self.config,
                via,
                name,
                jobs.job_from_options(f"{TASKS}:{target}", args),
                socket=str(self.runtime / via / "daemon.sock"),
                retry=0.2,
            )
        )
        d.app = name  # type: ignore[attr-defined]
        return d

    async def result(self, d: defer.Deferred[Any], value: int) -> None:
        outcome = await d
        assert outcome.result is not None and outcome.result.ok, outcome
        assert outcome.result.result == {"main": value}, outcome.result

    def record(self, name: str, seconds: float) -> None:
        self.figures[name].append(seconds * 1000.0)
        print(f"  {name:28} {seconds * 1000:9.1f} ms", flush=True)

    # -- the measurements ------------------------------------------------------------------

    async def trivial_jobs(self, runs: int) -> None:
        """Submit to result, and the install of each job's Execution ARMOR within it."""
        for _ in range(runs):
            t0 = time.monotonic()
            d = self.submit("square", [9])
            app = d.app  # type: ignore[attr-defined]
            t_intent = await self.until(partial(self.intent, app, "execution"), "the intent", 30)
            entry = await self.intent(app, "execution")
            assert entry is not None
            armor = entry.armor
            t_run = await self.until(partial(self.located, armor, 1), "the install", 30)
            await self.result(d, 81)
            t1 = time.monotonic()
            self.record("submit to result", t1 - t0)
            self.record("install an Execution ARMOR", t_run - t_intent)

    async def recoveries(self, runs: int) -> None:
        """Kill a running job's Execution ARMOR, then its surrogate manager."""
        for kind, type in (
            ("Execution ARMOR recovery", "execution"),
            ("surrogate manager recovery", "surrogate-manager"),
        ):
            for _ in range(runs):
                d = self.submit("slow", [5, 2.0])
                app = d.app  # type: ignore[attr-defined]
                await self.until(partial(self.intent, app, type), "the intent", 30)
                entry = await self.intent(app, type)
                assert entry is not None
                await self.until(partial(self.located, entry.armor, entry.incarnation), "up", 30)
                pid = self.armor_pid(entry.node, entry.armor)
                t0 = time.monotonic()
                os.kill(pid, signal.SIGKILL)
                t1 = await self.until(
                    partial(self.located, entry.armor, entry.incarnation + 1), "recovered", 60
                )
                self.record(kind, t1 - t0)
                await self.result(d, 25)

    async def nodes_coming_and_going(self, runs: int) -> None:
        """Set up n3; kill it (detection); restart it (daemon recovery)."""
        name = "n3"
        for run in range(runs):
            t0 = time.monotonic()
            if run == 0:
                self.node(name).start()
            else:
                self.nodes[name].restart()
            await self.until(partial(self.up, "n3"), "the survey", 60)
            self.record("set up a node" if run == 0 else "daemon recovery", time.monotonic() - t0)
            failures = len(await self.client.atomic_scan(("failure", name, ANY, ANY)))
            t0 = self.nodes[name].kill()
            await self.until(partial(self.failed, name, failures), "the failure row", 60)
            self.record("node failure detection", time.monotonic() - t0)
        # One more set-up time with the same command, for the median.
        self.nodes["n3"].restart()

    async def up(self, node: str) -> bool:
        row = await self.client.rdp(HostRow.template(node))
        return row is not None and HostRow.from_tuple(row).up

    async def failed(self, node: str, before: int) -> bool:
        return len(await self.client.atomic_scan(("failure", node, ANY, ANY))) > before

    async def ftm_failover(self) -> None:
        assert self.ftm is not None
        t0 = self.ftm.kill()
        t1 = await self.until(lambda: self.client.rdp(("ftm-epoch", 2, ANY)), "epoch 2", 60)
        self.record("FTM failover", t1 - t0)
        await self.result(self.submit("square", [3]), 9)
        print(f"  {'(first job under it done)':28} {(time.monotonic() - t0) * 1000:9.1f} ms")


def _scanner(client: Any) -> Callable[[tuple[Any, ...]], Awaitable[Any]]:
    from lips.tuples import Step

    async def scan(template: tuple[Any, ...]) -> Any:
        (found,) = await client.atomic([Step.scan(template)])
        return tuple(found)

    return scan


def table(figures: dict[str, list[float]]) -> list[str]:
    lines = [
        f"{'':28} {'median':>9} {'max':>9} {'paper':>9} {'target':>9} {'x paper':>8}",
    ]
    for name, paper in PAPER.items():
        values = figures.get(name) or []
        if not values:
            lines.append(f"{name:28} {'-':>9}")
            continue
        median, worst = statistics.median(values), max(values)
        target = TARGET_FTM_FAILOVER_MS if paper is None else paper / 5
        ratio = f"{median / paper:8.3f}" if paper else f"{'':>8}"
        shown = f"{paper:9.0f}" if paper else f"{'-':>9}"
        mark = "" if median <= target else "  (over target)"
        lines.append(f"{name:28} {median:9.1f} {worst:9.1f} {shown} {target:9.0f} {ratio}{mark}")
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.chameleon", description=__doc__)
    p.add_argument("--runs", type=int, default=None, help="runs of each figure (default 5)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 2 runs of each")
    p.add_argument("--poll", type=float, default=0.005, help="seconds between table polls")
    p.add_argument("--keep", type=Path, default=None, help="keep the logs in this directory")
    args = p.parse_args(argv)
    runs = args.runs or (2 if args.quick else 5)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        x for x in (str(ROOT), os.environ.get("PYTHONPATH", "")) if x
    )

    async def body(reactor: Any) -> None:
        with workspace(args.keep, "lips-chameleon-") as directory:
            bench = Bench(directory, reactor, args.poll)
            try:
                await bench.start()
                bench.client.atomic_scan = _scanner(bench.client)
                print(f"Chameleon figures, {runs} runs each (ms):", flush=True)
                await bench.trivial_jobs(runs)
                await bench.recoveries(runs)
                await bench.nodes_coming_and_going(runs)
                await bench.ftm_failover()
            except BaseException:
                print(f"logs: {directory}", file=sys.stderr)
                raise
            finally:
                await bench.stop()
        print()
        for line in table(bench.figures):
            print(line)
        path = save(
            {
                "runs": runs,
                "figures_ms": bench.figures,
                "paper_ms": PAPER,
                "environment": environment(),
            },
            "chameleon",
        )
        print(f"\nwritten to {path}")

    react(body)


if __name__ == "__main__":
    main()
