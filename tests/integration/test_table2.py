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

import signal
from typing import Any

import pytest
import pytest_twisted

from lips.armor import armor_template
from lips.tuples import ANY
from tests.integration._ftm import Bed, execution_of
from tests.integration._support import ServerFarm, eventually, within


@pytest_twisted.ensureDeferred
async def test_table_2(servers: ServerFarm, monkeypatch: pytest.MonkeyPatch) -> None:
    bed = await Bed.start(servers, monkeypatch, ("n1", "n2", "n3"))
    client = bed.client
    try:
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
        await bed.close()


def defer_run(bed: Bed, app: str, args: list[Any]) -> Any:
    """Start C{bed.run} of the slow task for C{app}, as a Deferred."""
    from twisted.internet import defer

    return defer.ensureDeferred(bed.run(app, "slow", args))
