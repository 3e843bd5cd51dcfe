"""
The test bed of the FTM's real-process tests (L{tests.integration.test_ftm},
L{tests.integration.test_table2}): two FixServers, lipsd ARMOR daemons, C{twistd
lips-ftm}, jobs of L{tests.integration._ftmapp}'s tasks, and what a test reads of the
tables and does to the processes.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil
import pytest

import lips.client
from lips import jobs
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


async def lips_cli(*args: str) -> tuple[int, str]:
    """Run the lips command line to completion: its exit status and its stdout."""
    from twisted.internet.utils import getProcessOutputAndValue

    out, err, code = await within(
        getProcessOutputAndValue(sys.executable, ["-m", "lips.cli", *args], env=dict(os.environ)),
        60,
    )
    return code, out.decode() + (err.decode() if code else "")


def execution_of(app: str) -> Callable[[ArmorEntry], bool]:
    """Whether a row is C{app}'s Execution ARMOR."""
    return lambda r: r.application == app and r.type == "execution"


class Bed:
    """The cluster of the test and what it does to it."""

    def __init__(self, servers: ServerFarm, path: Path, runtime: Path, client: Any) -> None:
        self.servers = servers
        self.path = path
        self.cluster = load_cluster(path)
        self.runtime = runtime
        self.client = client
        self.lipsd: dict[str, TwistdServer] = {}
        self.ftm: TwistdServer | None = None
        self.markers = Path(tempfile.mkdtemp(prefix="lips-ftm-markers-"))

    @classmethod
    async def start(
        cls, servers: ServerFarm, monkeypatch: pytest.MonkeyPatch, nodes: Sequence[str]
    ) -> Bed:
        """
        Two FixServers, a lipsd ARMOR daemon on each of C{nodes}, C{twistd lips-ftm} on
        the first: returns once the FTM holds epoch 1 and every node is in the host table.
        The test must C{await bed.close()}.
        """
        monkeypatch.setenv(
            "PYTHONPATH",
            os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
        )
        runtime = Path(tempfile.mkdtemp(prefix="lips-ftm-run-"))
        rings = await start_rings(servers)
        client = await within(lips.client.connect(_reactor(), rings.endpoints("fixserver")))
        bed = cls(servers, rings.path, runtime, client)
        for name in nodes:
            bed.start_lipsd(name)
        bed.ftm = servers.spawn(
            "--config",
            str(rings.path),
            "--node",
            nodes[0],
            "--socket",
            bed.socket(nodes[0]),
            "--tick",
            str(TICK),
            port=None,
            role="lips-ftm",
        )
        await within(client.rd(("ftm-epoch", 1, ANY), timeout=30), 35)

        async def surveyed() -> bool:
            rows = [await client.rdp(HostRow.template(n)) for n in nodes]
            return all(r is not None for r in rows)

        await eventually(surveyed, seconds=30, what="every node in the host table")
        return bed

    async def close(self) -> None:
        await within(self.client.close())

    def socket(self, node: str) -> str:
        """The daemon socket of C{node}."""
        return str(self.runtime / node / "daemon.sock")

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
                socket=self.socket(via),
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
