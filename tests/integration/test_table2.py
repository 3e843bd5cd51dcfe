# mypy: disable-error-code="untyped-decorator"
# (pytest-twisted ships no type hints, so its decorators are untyped.)
"""
The failure modes of the Chameleon paper's Table 2, each injected on purpose into real
processes on loopback: two FixServers, three lipsd that are their nodes' ARMOR daemons,
C{twistd lips-ftm} on n1 (its Backup FTM on another node), and one job per fault,
submitted through n2's daemon.  Each job must end with its correct result, reported
once (the application table's row is REPORTED with it).

    application abnormal termination    the task exits with status 3 on its first run
    application livelock                the task hangs without progress on its first run
    common ARMOR crash                  the Execution ARMOR's process is SIGKILLed
    common ARMOR alive but unresponsive the Execution ARMOR's process is SIGSTOPped
    surrogate manager crash             the job's surrogate manager is SIGKILLed
    Backup FTM crash                    the backup is SIGKILLed: the FTM makes a new one
    daemon crash / node crash           the lipsd of the task's node is SIGKILLed (the
                                        submitter's, it may be: the table has the result)
    FTM's daemon crash                  n1's lipsd is SIGKILLed: the backup takes over

(FTM crash is in L{tests.integration.test_ftm}; link down needs network namespaces and
is not here yet.)
"""

from __future__ import annotations

import os
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import pytest_twisted

import lips.client
from lips import jobs
from lips.armor import armor_template
from lips.armor.ftm import AppRow, AppState, ArmorEntry, HostRow
from lips.cluster import load_cluster
from lips.testing import armor_process, free_port
from lips.tuples import ANY, Step
from tests.integration._support import (
    ServerFarm,
    TwistdServer,
    eventually,
    spawn_lipsd,
    start_rings,
    within,
)

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.integration._ftmapp"
TICK = 0.2


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class Bed:
    """The cluster of the test and what it does to it."""

    def __init__(self, servers: ServerFarm, path: Path, runtime: Path, client: Any) -> None:
        self.servers = servers
        self.path = path
        self.cluster = load_cluster(path)
        self.runtime = runtime
        self.client = client
        self.lipsd: dict[str, TwistdServer] = {}
        self.markers = Path(tempfile.mkdtemp(prefix="lips-t2-"))

    def start_lipsd(self, name: str) -> None:
        self.lipsd[name] = spawn_lipsd(
            self.servers,
            self.path,
            name,
            "--armor-listen",
            f"tcp:{free_port()}:interface=127.0.0.1",
            "--armor-runtime",
            str(self.runtime / name),
            "--armor-ping-interval",
            "0.2",
            "--armor-ping-misses",
            "3",
            "--armor-kill-grace",
            "0.5",
            "--allow",
            f"{APP}:*",
            "--pythonpath",
            str(ROOT),
            processes=False,
        )

    def marker(self, name: str) -> str:
        return str(self.markers / name)

    async def rows(self, app: str | None = None) -> list[ArmorEntry]:
        template = ArmorEntry.template(ANY, ANY if app is None else app)
        (found,) = await within(self.client.atomic([Step.scan(template)]))
        return [ArmorEntry.from_tuple(t) for t in found]

    async def row(self, what: Callable[[ArmorEntry], bool], label: str) -> ArmorEntry:
        found: list[ArmorEntry] = []

        async def there() -> bool:
            found[:] = [r for r in await self.rows() if what(r)]
            return bool(found)

        await eventually(there, seconds=30, what=label)
        return found[0]

    async def process(self, armor: str, node: str) -> psutil.Process:
        found: list[psutil.Process] = []

        async def running() -> bool:
            p = armor_process(self.lipsd[node].pid, armor)
            found[:] = [p] if p is not None else []
            return bool(found)

        try:
            await eventually(running, seconds=30, what=f"the process of {armor} on {node}")
        except AssertionError:
            seen = [
                (c.pid, " ".join(c.cmdline()))
                for c in psutil.Process(self.lipsd[node].pid).children(recursive=True)
            ]
            raise AssertionError(f"no process of {armor} under {node}: {seen}") from None
        return found[0]

    async def run(
        self, app: str, target: str, args: list[Any], via: str = "n2", **options: Any
    ) -> Any:
        """Submit C{app} through the daemon of C{via} and wait for its result."""
        return await within(
            jobs.submit(
                _reactor(),
                self.cluster,
                via,
                app,
                jobs.job_from_options(f"{APP}:{target}", args, **options),
                socket=str(self.runtime / via / "daemon.sock"),
            ),
            90,
        )

    async def done(self, app: str, value: int) -> None:
        """C{app} ended with C{value}, as the application table says."""

        async def ended() -> bool:
            found = await self.client.rdp(AppRow.template(app))
            if found is None:
                return False
            row = AppRow.from_tuple(found)
            return row.state is AppState.DONE and row.result().result == {"main": value}

        await eventually(ended, seconds=60, what=f"{app} done with its result")

    async def check(self, submission: Any, app: str, value: int) -> None:
        assert submission.result is not None, submission
        assert (submission.result.ok, submission.result.result) == (True, {"main": value})

        async def reported() -> bool:
            found = await self.client.rdp(AppRow.template(app))
            return found is not None and AppRow.from_tuple(found).state is AppState.REPORTED

        await eventually(reported, seconds=15, what=f"{app} reported")


@pytest_twisted.ensureDeferred
async def test_table_2(servers: ServerFarm, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    )
    runtime = Path(tempfile.mkdtemp(prefix="lips-t2-run-"))
    rings = await start_rings(servers)
    client = await within(lips.client.connect(_reactor(), rings.endpoints("fixserver")))
    bed = Bed(servers, rings.path, runtime, client)
    try:
        for name in ("n1", "n2", "n3"):
            bed.start_lipsd(name)
        servers.spawn(
            "--config",
            str(rings.path),
            "--node",
            "n1",
            "--socket",
            str(runtime / "n1" / "daemon.sock"),
            "--tick",
            str(TICK),
            port=None,
            role="lips-ftm",
        )
        await within(client.rd(("ftm-epoch", 1, ANY), timeout=30), 35)

        async def surveyed() -> bool:
            rows = [await client.rdp(HostRow.template(n)) for n in ("n1", "n2", "n3")]
            return all(r is not None for r in rows)

        await eventually(surveyed, seconds=30, what="every node in the host table")

        # -- application abnormal termination, and livelock: restarted where it ran ------
        await bed.check(await bed.run("crash", "crash_once", [bed.marker("c"), 3]), "crash", 9)
        hung = await bed.run("hang", "hang_once", [bed.marker("h"), 4], task_timeout=1.0)
        await bed.check(hung, "hang", 16)

        # -- common ARMOR crash, and hang: its manager installs it again --------------------
        for app, how in (("armor-crash", signal.SIGKILL), ("armor-hang", signal.SIGSTOP)):
            running = defer_run(bed, app, [bed.marker(app), 5, 3.0])
            row = await bed.row(execution_of(app), f"{app}'s Execution ARMOR")
            process = await bed.process(row.armor, row.node)
            process.send_signal(how)
            await bed.check(await within(running, 90), app, 25)

        # -- surrogate manager crash: the FTM installs it again and it takes over --------
        running = defer_run(bed, "sm-crash", [bed.marker("sm"), 6, 3.0])
        sm = await bed.row(
            lambda r: r.application == "sm-crash" and r.type == "surrogate-manager",
            "the surrogate manager",
        )
        (await bed.process(sm.armor, sm.node)).kill()
        await bed.check(await within(running, 90), "sm-crash", 36)

        # -- Backup FTM crash: the FTM makes a new one -----------------------------------
        backup = await within(client.rd(("ftm-backup", 1, ANY), timeout=20), 25)
        entry = await bed.row(lambda r: r.armor == backup[2], "the backup's row")
        (await bed.process(entry.armor, entry.node)).kill()

        async def new_backup() -> bool:
            found = await client.rdp(("ftm-backup", 1, ANY))
            if found is None:
                return False
            row = await client.rdp(armor_template(found[2]))
            return row is not None and (found[2], row[5]) != (backup[2], entry.incarnation)

        await eventually(new_backup, seconds=30, what="a new Backup FTM running")

        # -- daemon (node) crash: the task's node's lipsd and all below it ----------------
        running = defer_run(bed, "node-crash", [bed.marker("node"), 7, 4.0])
        row = await bed.row(execution_of("node-crash"), "node-crash's Execution ARMOR")
        await bed.process(row.armor, row.node)
        bed.lipsd[row.node].kill()
        survivor = "n3" if row.node == "n2" else "n2"
        if row.node == "n2":  # the submitter went down with it: the table has the result
            with pytest.raises(ConnectionError):
                await within(running, 30)
            await bed.done("node-crash", 49)
        else:
            await bed.check(await within(running, 90), "node-crash", 49)

        # -- the FTM's daemon crashes: the backup takes epoch 2 ----------------------------
        bed.lipsd["n1"].kill()
        await within(client.rd(("ftm-epoch", 2, ANY), timeout=30), 35)
        await bed.check(await bed.run("after", "square", [8], via=survivor), "after", 64)
    finally:
        await within(client.close())


def defer_run(bed: Bed, app: str, args: list[Any]) -> Any:
    """Start C{bed.run} of the slow task for C{app}, as a Deferred."""
    from twisted.internet import defer

    return defer.ensureDeferred(bed.run(app, "slow", args))


def execution_of(app: str) -> Callable[[ArmorEntry], bool]:
    """Whether a row is C{app}'s Execution ARMOR."""
    return lambda r: r.application == app and r.type == "execution"
