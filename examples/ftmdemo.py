"""
The LiPS demonstration of Chameleon's Fault Tolerance Manager: a job under the FTM on a
local cluster, with its ARMORs killed on purpose.

    python examples/ftmdemo.py                 # what ./run demo runs, after ftdemo.py
    python examples/ftmdemo.py --no-faults     # the same run, nothing killed

It starts, on loopback, two FixServers (the System Tuple Space, which holds the FTM's
tables), three lipsd nodes that are their nodes' ARMOR daemons, and C{twistd lips-ftm}
on n1 (the FTM installs its Backup FTM on another node).  Then it submits, through n2's
daemon, a job of three tasks under the simplex strategy, each counting the primes of a
slice of a range (C{examples/ftmtasks.py}).  While the job runs it kills, with SIGKILL,
one task's Execution ARMOR, then the FTM itself.  It shows the tasks' progress, then what
failed and what recovered it, as the tables say, and checks the answer against a sieve
of its own.  Exit status 0 means the answer is exact.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psutil
from twisted.internet import defer, task

import lips.client
from lips import jobs
from lips.armor.ftm import AppRow, AppState, ArmorEntry, HostRow
from lips.armor.submit import Submission
from lips.cluster import load_cluster
from lips.strategy import Job
from lips.testing import Cluster, Process, free_port, log_tail, run_directory
from lips.testing import armor_process as find_armor_process
from lips.tuples import ANY, Step

HERE = Path(__file__).resolve().parent

NODES = ("n1", "n2", "n3")
#: The application's name, and the tasks' target.
APP = "ftmdemo"
TARGET = "ftmtasks:count_primes"
#: The FTM's tick (seconds), and the daemons' ARMOR ping interval.
TICK = 0.2
#: The longest any one step may take (the machine may be slow and shared).
STEP = 45.0

T = TypeVar("T")


class DemoError(Exception):
    """A step of the demonstration did not happen: what, and why."""


def slices(bound: int, count: int) -> list[tuple[int, int]]:
    """
    C{[0, bound)} cut into C{count} slices of about the same work (trial division costs
    about n^1.5 in all up to n, so the cuts are at C{bound * (k / count) ** (2 / 3)}).
    """
    cuts = [0, *(round(bound * (k / count) ** (2 / 3)) for k in range(1, count)), bound]
    return list(itertools.pairwise(cuts))


def sieve_counts(bound: int, parts: list[tuple[int, int]]) -> list[int]:
    """The number of primes in each of C{parts}, by a sieve of Eratosthenes below C{bound}."""
    marks = bytearray([1]) * bound
    marks[: min(2, bound)] = bytes(min(2, bound))
    for p in range(2, int(bound**0.5) + 1):
        if marks[p]:
            marks[p * p :: p] = bytes(len(range(p * p, bound, p)))
    return [marks[lo:hi].count(1) for lo, hi in parts]


def make_cluster(directory: Path, runtime: Path) -> Cluster:
    """
    The servers and processes of the demonstration (not started): two FixServers in a
    ring, three lipsd with ARMOR daemons whose sockets are under C{runtime}, which may run
    C{ftmtasks}'s functions, and the FTM attached to n1's daemon.
    """
    cluster = Cluster.create(directory, fixservers=2, msgservers=0)
    for name in NODES:
        cluster.node(
            name,
            *("--armor-listen", f"tcp:{free_port()}:interface=127.0.0.1"),
            *("--armor-runtime", str(runtime / name)),
            *("--armor-ping-interval", str(TICK), "--armor-ping-misses", "3"),
            *("--armor-kill-grace", "0.5"),
            *("--allow", "ftmtasks:*", "--pythonpath", str(HERE)),
        )
    cluster.twistd(
        "ftm",
        "lips-ftm",
        *("--config", str(cluster.path), "--node", "n1"),
        *("--socket", str(runtime / "n1" / "daemon.sock"), "--tick", str(TICK)),
    )
    return cluster


class Progress:
    """
    The tasks' progress, as the reports they write say: bars on a terminal, redrawn;
    elsewhere (a CI log, say) a line at every quarter of the work and at every event.
    """

    def __init__(self, reports: dict[str, Path], began: float) -> None:
        self.reports = reports
        self.began = began
        self.tty = sys.stdout.isatty()
        self.shown = -1
        self.drawn = False

    def fractions(self) -> dict[str, float]:
        out = {}
        for name, path in self.reports.items():
            try:
                done, total = path.read_text().split()
                out[name] = int(done) / max(int(total), 1)
            except (OSError, ValueError):
                out[name] = 0.0
        return out

    def line(self) -> str:
        width = 12
        bars = []
        for name, f in self.fractions().items():
            filled = round(width * f)
            bars.append(f"{name} [{'#' * filled}{'.' * (width - filled)}] {100 * f:3.0f}%")
        return f"{time.monotonic() - self.began:5.1f} s  " + "  ".join(bars)

    def tick(self) -> None:
        fractions = self.fractions()
        if self.tty:
            print("\r" + self.line().ljust(100), end="", flush=True)
            self.drawn = True
            return
        quarter = int(4 * sum(fractions.values()) / max(len(fractions), 1))
        if quarter != self.shown:
            self.shown = quarter
            print(self.line(), flush=True)

    def event(self, text: str) -> None:
        """Say C{text}, with the time and progress, on a line of its own."""
        if self.tty and self.drawn:
            print("\r" + " " * 100 + "\r", end="")
        print(f"{self.line()}  <- {text}", flush=True)
        self.drawn = False

    def end(self) -> None:
        if self.tty and self.drawn:
            print()
            self.drawn = False


def armor_process(lipsd: Process, armor: str) -> psutil.Process | None:
    """The process of ARMOR C{armor} among C{lipsd}'s descendants (by its title)."""
    return find_armor_process(lipsd.pid, armor)


class Demo:
    """One run: the cluster, a client of the System Tuple Space, and what happened."""

    def __init__(
        self, reactor: Any, cluster: Cluster, runtime: Path, system: Any, began: float
    ) -> None:
        self.reactor = reactor
        self.cluster = cluster
        self.runtime = runtime
        self.system = system
        self.began = began
        self.killed: set[str] = set()
        self.progress: Progress | None = None
        self.outcome: list[Submission | BaseException] = []
        """How the submission ended, once it did."""

    def at(self, when: float | None = None) -> str:
        """C{when} (now by default), in seconds since the start."""
        return f"{(time.monotonic() if when is None else when) - self.began:.1f} s"

    def check_alive(self) -> None:
        """
        Fail, quoting its log, if a process that should run has exited, and if the
        submission failed.
        """
        if self.outcome and isinstance(self.outcome[0], BaseException):
            raise DemoError(f"the submission failed: {self.outcome[0]}")
        for name, process in self.cluster.processes.items():
            if name not in self.killed and not process.running:
                raise DemoError(
                    f"{name} exited ({process.returncode}); the end of its log:\n"
                    f"{log_tail(process.log, 20)}"
                )

    async def until(
        self, what: str, check: Callable[[], Awaitable[T | None]], seconds: float = STEP
    ) -> T:
        """Poll C{check} until it gives something; fail, saying C{what}, after C{seconds}."""
        deadline = time.monotonic() + seconds
        while True:
            self.check_alive()
            found = await check()
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise DemoError(f"{what}: not within {seconds:g} s")
            if self.progress is not None:
                self.progress.tick()
            await task.deferLater(self.reactor, 0.05)

    async def rd(self, template: tuple[Any, ...], what: str) -> tuple[Any, ...]:
        """The first tuple matching C{template}, once there is one."""

        async def found() -> tuple[Any, ...] | None:
            row = await self.system.rdp(template)
            return None if row is None else tuple(row)

        return await self.until(what, found)

    async def rows(self) -> list[ArmorEntry]:
        """The FTM's ARMOR table."""
        (found,) = await self.system.atomic([Step.scan(ArmorEntry.template())])
        return [ArmorEntry.from_tuple(t) for t in found]

    async def row(self, what: str, wanted: Callable[[ArmorEntry], bool]) -> ArmorEntry:
        async def found() -> ArmorEntry | None:
            return next((r for r in await self.rows() if wanted(r)), None)

        return await self.until(what, found)

    async def process(self, entry: ArmorEntry) -> psutil.Process:
        async def found() -> psutil.Process | None:
            return armor_process(self.cluster[entry.node], entry.armor)

        return await self.until(f"the process of {entry.armor} on {entry.node}", found)


async def run(
    reactor: Any, cluster: Cluster, runtime: Path, args: argparse.Namespace, began: float
) -> int:
    """The demonstration on the cluster started at C{began}; its exit status."""
    config = load_cluster(cluster.path)
    system = await lips.client.connect(reactor, cluster.endpoints("fixserver"))
    demo = Demo(reactor, cluster, runtime, system, began)
    try:
        return await _run(demo, config, args)
    except DemoError as e:
        if demo.progress is not None:
            demo.progress.end()
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        await system.close()


async def _run(demo: Demo, config: Any, args: argparse.Namespace) -> int:
    cluster = demo.cluster
    epoch = await demo.rd(("ftm-epoch", 1, ANY), "the FTM taking epoch 1")
    ftm = epoch[2]

    async def surveyed() -> bool | None:
        rows = [await demo.system.rdp(HostRow.template(n)) for n in NODES]
        return True if all(r is not None for r in rows) else None

    await demo.until("every node in the FTM's host table", surveyed)
    backup = (await demo.rd(("ftm-backup", 1, ANY), "the FTM installing its backup"))[2]
    backup_row = await demo.row(f"the backup {backup}'s row", lambda r: r.armor == backup)
    ready = time.monotonic()
    print(
        f"cluster up in {demo.at(ready)}: two FixServers, daemons on {', '.join(NODES)},"
        f" the FTM {ftm} on n1 (epoch 1), its Backup FTM {backup} on {backup_row.node}"
    )

    parts = slices(args.bound, args.tasks)
    names = [f"t{i}" for i in range(1, args.tasks + 1)]
    reports = {n: cluster.directory / f"progress-{n}" for n in names}
    value = {
        "strategy": "simplex",
        "tasks": [
            {"name": n, "target": TARGET, "args": [lo, hi, str(reports[n])], "timeout": 10.0}
            for n, (lo, hi) in zip(names, parts, strict=True)
        ],
    }
    job = Job.from_value(value).to_value()
    shown = ", ".join(f"{n} [{lo:,}, {hi:,})" for n, (lo, hi) in zip(names, parts, strict=True))
    print(
        f"submitting {APP} through n2: the primes below {args.bound:,} in {args.tasks}"
        f" tasks ({shown}), simplex strategy"
    )
    submitted_at = time.monotonic()
    submitted: defer.Deferred[Submission] = defer.ensureDeferred(
        jobs.submit(
            demo.reactor,
            config,
            "n2",
            APP,
            job,
            socket=str(demo.runtime / "n2" / "daemon.sock"),
        )
    )
    outcome = demo.outcome
    submitted.addCallbacks(outcome.append, lambda f: outcome.append(f.value))
    progress = demo.progress = Progress(reports, demo.began)
    summary: list[str] = []

    async def running(entry: ArmorEntry) -> float | None:
        """How far the task of C{entry} got, once it got somewhere (and the job runs)."""
        if outcome:
            raise DemoError(f"the job ended before the fault could be injected: {outcome[0]}")
        f = progress.fractions().get(entry.armor.rsplit(".", 1)[-1], 0.0)
        if f >= 0.9:
            raise DemoError(
                f"{entry.armor}'s task was {100 * f:.0f}% done before it could be killed:"
                " this machine is fast; give a larger --bound"
            )
        return f if f >= 0.15 else None

    if not args.no_faults:
        # -- a common ARMOR crash: the Execution ARMOR of a task -------------------------
        victim = await demo.row(
            "the Execution ARMOR of t1 in the ARMOR table",
            lambda r: r.application == APP and r.type == "execution" and r.armor.endswith(".t1"),
        )
        done = await demo.until(f"{victim.armor}'s task getting on", lambda: running(victim))
        process = await demo.process(victim)
        pid = process.pid
        killed_at = time.monotonic()
        with contextlib.suppress(psutil.Error):
            process.send_signal(signal.SIGKILL)
        progress.event(
            f"killed the Execution ARMOR {victim.armor} on {victim.node} (os pid {pid}),"
            f" t1 {100 * done:.0f}% done"
        )
        # t1 starts again from the beginning (it takes no checkpoint): so does its bar.
        reports["t1"].unlink(missing_ok=True)
        again = await demo.row(
            f"{victim.armor} installed again (incarnation 2)",
            lambda r: r.armor == victim.armor and r.incarnation >= 2,
        )
        reinstalled = time.monotonic()
        new = await demo.process(again)
        sm = await demo.row(f"{again.manager}'s row", lambda r: r.armor == again.manager)
        progress.event(
            f"{again.manager} installed {again.armor} again on {again.node}"
            f" (incarnation {again.incarnation}, os pid {new.pid})"
        )
        summary.append(
            f"  Execution ARMOR {victim.armor} on {victim.node} (os pid {pid}), running t1"
            f" ({100 * done:.0f}% done): killed (SIGKILL) at {demo.at(killed_at)} -> its"
            f" daemon saw it gone and its manager, the surrogate manager {again.manager}"
            f" on {sm.node}, installed it again on {again.node}"
            f" {1000 * (reinstalled - killed_at):.0f} ms later: incarnation"
            f" {again.incarnation} in the ARMOR table (os pid {new.pid}); t1 ran again"
            f" from the beginning"
        )

        # -- the FTM crashes: its backup takes the next epoch ----------------------------
        killed_at = cluster.kill("ftm")
        demo.killed.add("ftm")
        progress.event(f"killed the FTM {ftm} on n1 (twistd lips-ftm)")
        promoted = await demo.rd(("ftm-epoch", 2, ANY), "the backup taking epoch 2")
        taken = time.monotonic()
        progress.event(f"{promoted[2]} took epoch 2: it is the FTM now")
        if promoted[2] != backup:
            raise DemoError(f"epoch 2 went to {promoted[2]}, not to the backup {backup}")
        summary.append(
            f"  the FTM {ftm} on n1: killed (SIGKILL) at {demo.at(killed_at)}, with the job"
            f" {'running' if not outcome else 'done'} -> its Backup FTM {backup} on"
            f" {backup_row.node} took epoch 2 {1000 * (taken - killed_at):.0f} ms later"
            f" and carried on from the tables in the System Tuple Space"
        )

    async def ended() -> Submission | None:
        return outcome[0] if outcome and isinstance(outcome[0], Submission) else None

    submission = await demo.until("the job's result", ended, seconds=2 * STEP)
    finished = time.monotonic()
    progress.tick()
    progress.end()

    async def reported() -> AppRow | None:
        found = await demo.system.rdp(AppRow.template(APP))
        row = None if found is None else AppRow.from_tuple(found)
        return row if row is not None and row.state is AppState.REPORTED else None

    await demo.until(f"{APP} REPORTED in the application table", reported)
    result = submission.result
    if result is None:
        raise DemoError(f"the FTM refused the job: {submission.refused}")
    if not result.ok:
        raise DemoError(f"the job failed: {result.reason}")
    expected = sieve_counts(args.bound, parts)
    got = result.result if isinstance(result.result, dict) else {}
    counts = [got.get(n) for n in names]
    ok = counts == expected
    print("what failed, and how the system recovered:")
    for line in summary or ["  nothing (run with faults to see some)"]:
        print(line)
    print(
        f"  the result came from {submission.ftm}, once: {APP} is REPORTED in the"
        f" application table"
    )
    total = sum(c for c in counts if isinstance(c, int))
    print(
        f"primes below {args.bound:,}: {total:,} (a sieve here says {sum(expected):,}):"
        f" {'OK' if ok else 'WRONG'}; "
        + ", ".join(
            f"{n} {c:,} (sieve {e:,})" if isinstance(c, int) else f"{n} {c!r} (sieve {e:,})"
            for n, c, e in zip(names, counts, expected, strict=True)
        )
    )
    print(
        f"cluster up in {demo.at(ready)}, job {finished - submitted_at:.1f} s"
        f" from submission to result"
    )
    return 0 if ok else 1


@contextlib.contextmanager
def runtime_dir(directory: Path) -> Iterator[Path]:
    """
    Where the daemons' sockets go: in C{directory}, unless its path is too long for a
    Unix socket's; then in a temporary directory of its own, removed at the end.
    """
    if len(str(directory / "armor" / "n1" / "daemon.sock")) < 100:
        path = directory / "armor"
        path.mkdir(mode=0o700, exist_ok=True)
        yield path
        return
    path = Path(tempfile.mkdtemp(prefix="lips-ftm-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def cluster_in(directory: Path, runtime: Path) -> Iterator[Cluster]:
    """The demonstration's cluster serving, its daemons and FTM started; stopped at the end."""
    with make_cluster(directory, runtime) as cluster:
        cluster.start()
        cluster.wait_serving()
        for name in NODES:
            cluster[name].start()
        cluster["ftm"].start()
        yield cluster


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bound", type=int, default=1_500_000, help="count primes below this")
    p.add_argument("--tasks", type=int, default=3, help="how many tasks (at least 1)")
    p.add_argument("--no-faults", action="store_true", help="inject no fault")
    p.add_argument("--keep", metavar="DIR", help="keep logs and cluster files in DIR")
    args = p.parse_args(argv)
    if args.tasks < 1 or args.bound < args.tasks:
        p.error("--tasks must be at least 1 and at most --bound")
    keep = Path(args.keep) if args.keep else None
    # The ARMOR processes import the task module: from here, whatever their path.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p
    )
    began = time.monotonic()
    # A failure keeps the logs and cluster files, and says where they are.
    with (
        run_directory("lips-ftmdemo-", keep) as directory,
        runtime_dir(directory) as runtime,
        cluster_in(directory, runtime) as cluster,
    ):
        status: list[int] = []

        async def body(reactor: Any) -> None:
            status.append(await run(reactor, cluster, runtime, args, began))

        with contextlib.suppress(SystemExit):  # react's, once body is done
            task.react(lambda reactor: defer.ensureDeferred(body(reactor)))
        if status:
            print(f"({time.monotonic() - began:.1f} s)")
        if not status or status[0]:
            where = f"; logs are in {directory}" if keep else ""
            print(f"the FTM demonstration failed{where}", file=sys.stderr)
            raise SystemExit(status[0] if status else 1)
        return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
