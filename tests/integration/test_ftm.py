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

import pytest
import pytest_twisted
from twisted.internet.task import deferLater

from lips.armor.ftm import AppRow, AppState
from lips.tuples import ANY
from tests.integration._ftm import APP, TICK, Bed, _reactor, lips_cli
from tests.integration._support import ServerFarm, within


@pytest_twisted.ensureDeferred
async def test_a_job_under_the_ftm(servers: ServerFarm, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    The FTM takes epoch 1, the daemons join it and are surveyed into the host table, a
    Backup FTM is installed on the other node, and a submitted job is accepted under
    simplex and ends with its result, which the application table keeps.
    """
    bed = await Bed.start(servers, monkeypatch, ("n1", "n2"))
    client, path = bed.client, str(bed.path)
    ftm = bed.ftm
    assert ftm is not None
    try:
        epoch = await within(client.rdp(("ftm-epoch", ANY, ANY)))
        assert epoch == ("ftm-epoch", 1, "ftm")
        result = await bed.run("itest", "square", [12])
        assert result.result is not None, result
        assert (result.result.ok, result.result.result) == (True, {"main": 144})
        assert result.ftm == "ftm"
        found = await within(client.rdp(AppRow.template("itest")))
        assert found is not None
        row = AppRow.from_tuple(found)
        assert row.state in (AppState.DONE, AppState.REPORTED)

        # -- the command line sees it: lips job status, lips armors, lips submit ----------
        code, out = await lips_cli("job", "status", "-c", path, "itest", "--json")
        assert code == 0, out
        status = json.loads(out)
        assert (status["state"], status["result"]) in (
            ("reported", {"main": 144}),
            ("done", {"main": 144}),
        )
        code, out = await lips_cli("status", "-c", path)
        assert code == 0, out
        shown = dict(line.split(None, 1) for line in out.splitlines() if line.strip())
        assert (shown.get("ftm.id"), shown.get("ftm.epoch")) == ("ftm", "1"), out
        assert int(shown["ftm.hosts.up"]) == 2, out
        code, out = await lips_cli("armors", "-c", path)
        assert code == 0, out
        assert out.splitlines()[0].startswith("ftm (ftm) on n1"), out
        assert "heartbeat." in out, out
        code, out = await lips_cli(
            "submit",
            "-c",
            path,
            "--node",
            "n2",
            "--socket",
            bed.socket("n2"),
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
        second = await bed.run("itest2", "square", [7], via="n1")
        assert second.result is not None, second
        assert (second.result.ok, second.result.result) == (True, {"main": 49})
        assert second.ftm == backup[2]

        # -- lips-ftm started again on n1 stands by: it does not take the epoch -------------
        ftm.restart()
        await deferLater(_reactor(), 3 * TICK * 3)
        assert await within(client.rdp(("ftm-epoch", ANY, ANY))) == epoch
    finally:
        await bed.close()
