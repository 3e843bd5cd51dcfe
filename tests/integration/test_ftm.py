# mypy: disable-error-code="untyped-decorator"
# (pytest-twisted ships no type hints, so its decorators are untyped.)
"""
C{twistd lips-ftm} and C{lips submit} against real processes on loopback: two FixServers
(the System Tuple Space), two lipsd that are their nodes' ARMOR daemons, the FTM on n1
attached to n1's daemon, and a job submitted through n2's daemon that runs under the
simplex strategy and ends with its result reported once.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.task import deferLater

import lips.client
from lips import jobs
from lips.armor.ftm import AppRow, AppState, HostRow
from lips.cluster import load_cluster
from lips.testing import free_port
from lips.tuples import ANY
from tests.integration._support import ServerFarm, eventually, spawn_lipsd, start_rings, within

ROOT = Path(__file__).resolve().parents[2]
TICK = 0.2


APP = "tests.integration._ftmapp"


async def lips_cli(*args: str) -> tuple[int, str]:
    """Run the lips command line to completion: its exit status and its stdout."""
    from twisted.internet.utils import getProcessOutputAndValue

    out, err, code = await within(
        getProcessOutputAndValue(sys.executable, ["-m", "lips.cli", *args], env=dict(os.environ)),
        60,
    )
    return code, out.decode() + (err.decode() if code else "")


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


@pytest_twisted.ensureDeferred
async def test_a_job_under_the_ftm(
    servers: ServerFarm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    The FTM takes epoch 1, the daemons join it and are surveyed into the host table, a
    Backup FTM is installed on the other node, and a submitted job is accepted under
    simplex and ends with its result, which the application table keeps.
    """
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    )
    runtime = Path(tempfile.mkdtemp(prefix="lips-ftm-"))
    rings = await start_rings(servers)
    cluster = load_cluster(rings.path)
    for name in ("n1", "n2"):
        spawn_lipsd(
            servers,
            rings.path,
            name,
            "--armor-listen",
            f"tcp:{free_port()}:interface=127.0.0.1",
            "--armor-runtime",
            str(runtime / name),
            "--allow",
            "tests.integration._ftmapp:*",
            "--pythonpath",
            str(ROOT),
            processes=False,
        )
    ftm = servers.spawn(
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
    client = await within(lips.client.connect(_reactor(), rings.endpoints("fixserver")))
    try:
        epoch = await within(client.rd(("ftm-epoch", ANY, ANY), timeout=30), 35)
        assert epoch == ("ftm-epoch", 1, "ftm")

        async def surveyed() -> bool:
            rows = [await client.rdp(HostRow.template(n)) for n in ("n1", "n2")]
            return all(r is not None for r in rows)

        await eventually(surveyed, what="both nodes in the host table", seconds=30)
        result = await within(
            jobs.submit(
                _reactor(),
                cluster,
                "n2",
                "itest",
                jobs.job_from_options("tests.integration._ftmapp:square", [12]),
                socket=str(runtime / "n2" / "daemon.sock"),
            ),
            60,
        )
        assert result.result is not None, result
        assert (result.result.ok, result.result.result) == (True, {"main": 144})
        assert result.ftm == "ftm"
        found = await within(client.rdp(AppRow.template("itest")))
        assert found is not None
        row = AppRow.from_tuple(found)
        assert row.state in (AppState.DONE, AppState.REPORTED)

        # -- the command line sees it: lips job status, lips armors, lips submit ----------
        code, out = await lips_cli("job", "status", "-c", str(rings.path), "itest", "--json")
        assert code == 0, out
        status = json.loads(out)
        assert (status["state"], status["result"]) in (
            ("reported", {"main": 144}),
            ("done", {"main": 144}),
        )
        code, out = await lips_cli("status", "-c", str(rings.path))
        assert code == 0, out
        shown = dict(line.split(None, 1) for line in out.splitlines() if line.strip())
        assert (shown.get("ftm.id"), shown.get("ftm.epoch")) == ("ftm", "1"), out
        assert int(shown["ftm.hosts.up"]) == 2, out
        code, out = await lips_cli("armors", "-c", str(rings.path))
        assert code == 0, out
        assert out.splitlines()[0].startswith("ftm (ftm) on n1"), out
        assert "heartbeat." in out, out
        code, out = await lips_cli(
            "submit",
            "-c",
            str(rings.path),
            "--node",
            "n2",
            "--socket",
            str(runtime / "n2" / "daemon.sock"),
            "--target",
            f"{APP}:square",
            "--arg",
            "5",
        )
        assert (code, out.strip().splitlines()[-1]) == (0, '{"main": 25}'), out

        # -- the FTM crashes: its backup (on n2) takes epoch 2 and runs the next job -------
        backup = await within(client.rd(("ftm-backup", 1, ANY), timeout=10), 15)
        ftm.kill()
        epoch = await within(client.rd(("ftm-epoch", 2, ANY), timeout=30), 35)
        assert epoch[2] == backup[2]
        second = await within(
            jobs.submit(
                _reactor(),
                cluster,
                "n1",
                "itest2",
                jobs.job_from_options("tests.integration._ftmapp:square", [7]),
                socket=str(runtime / "n1" / "daemon.sock"),
            ),
            60,
        )
        assert second.result is not None, second
        assert (second.result.ok, second.result.result) == (True, {"main": 49})
        assert second.ftm == backup[2]

        # -- lips-ftm started again on n1 stands by: it does not take the epoch -------------
        ftm.restart()
        await deferLater(_reactor(), 3 * TICK * 3)
        assert await within(client.rdp(("ftm-epoch", ANY, ANY))) == epoch
    finally:
        await within(client.close())
