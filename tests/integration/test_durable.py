# mypy: disable-error-code="untyped-decorator"
# (pytest-twisted ships no type hints, so its decorators are untyped.)
"""
A durable cluster (C{cluster.durable}) comes back from total loss: three real
MessageServers, every one killed with SIGKILL at once (and, in another test, all stopped
cleanly), then started again, serve the newest state, with every answered out, every
answered take and every checkpoint; a damaged journal stops its server with one clear
line, and the server rejoins from the others once the directory is moved away; a
backup of a running server (C{lips backup}) restored under every server (C{lips
restore}) after all journals are lost brings the state back.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

import lips.client
from lips import cli
from lips.client import TupleSpaceClient
from tests.integration._support import RingCluster, ServerFarm, run_twistd, within

OUTS = 60
TAKES = 20


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


async def _client(cluster: RingCluster, pid: int | None = None) -> TupleSpaceClient:
    eps = [cluster.endpoint(n) for n in cluster.names]
    return await within(lips.client.connect(_reactor(), eps, pid=pid, name="durable"), 30)


async def _load(cluster: RingCluster) -> tuple[int, set[tuple[str, int]]]:
    """Answered outs and takes, and a checkpoint: the pid and what must be left."""
    client = await _client(cluster)
    for i in range(OUTS):
        await within(client.out(("item", i)), 30)
    taken = set()
    for _ in range(TAKES):
        t = await within(client.in_(("item", int)), 30)
        taken.add(t)
    await within(client.checkpoint({"done": TAKES}), 30)
    pid = client.pid
    await client.close(goodbye=False)  # the process lives on: its checkpoint must stay
    left = {("item", i) for i in range(OUTS)} - taken
    assert len(left) == OUTS - TAKES
    return pid, left


async def _check(cluster: RingCluster, pid: int, left: set[tuple[str, int]]) -> None:
    """The space holds exactly C{left}, and process C{pid}'s checkpoint."""
    client = await _client(cluster)
    found = set()
    while True:
        t = await within(client.inp(("item", int)), 30)
        if t is None:
            break
        found.add(t)
    assert found == left
    await client.close()
    again = await _client(cluster, pid=pid)
    assert await within(again.recover(), 30) == {"done": TAKES}
    await again.close(goodbye=False)


async def _journals(cluster: RingCluster) -> dict[str, int]:
    stats = await cluster.serving()
    return {str(s["ring.node"]): int(s["journal.syncs"]) for s in stats}


@pytest_twisted.ensureDeferred
async def test_whole_cluster_killed_and_restarted(servers: ServerFarm) -> None:
    """Every server SIGKILLed at once: restarted, they serve every answered operation."""
    cluster = RingCluster(servers, 3, durable=True)
    for name in cluster.names:
        await cluster.start(name)
    await cluster.serving()
    pid, left = await _load(cluster)
    synced = await _journals(cluster)
    assert all(count > 0 for count in synced.values()), synced
    for name in cluster.names:
        cluster.kill(name)
    for name in cluster.names:
        await cluster.start(name)
    await cluster.serving()
    await _check(cluster, pid, left)


@pytest_twisted.ensureDeferred
async def test_whole_cluster_stopped_one_by_one_and_restarted(servers: ServerFarm) -> None:
    """
    Servers stopped cleanly one after the other (the last one alone holds the newest
    state), then started again in the opposite order: the newest state is served.
    """
    cluster = RingCluster(servers, 3, durable=True)
    for name in cluster.names:
        await cluster.start(name)
    await cluster.serving()
    pid, left = await _load(cluster)
    first, *rest = cluster.names
    cluster.cluster.processes[first].stop()
    await cluster.serving(*rest, members=2)
    client = await _client(cluster)
    for i in range(OUTS, OUTS + 5):
        await within(client.out(("item", i)), 30)
        left.add(("item", i))
    await client.close()
    for name in rest:
        cluster.cluster.processes[name].stop()
    # The one that stopped first comes back first: it must not serve its old state alone
    # or with the empty majority it does not have; with all three, the newest wins.
    for name in reversed(cluster.names):
        await cluster.start(name)
    await cluster.serving()
    await _check(cluster, pid, left)


@pytest_twisted.ensureDeferred
async def test_damaged_journal_refused_then_rejoined(servers: ServerFarm, tmp_path: Path) -> None:
    """
    A journal damaged in its middle stops the server with one line naming the file and
    the offset; moved away, the server starts empty and takes the others' state.
    """
    cluster = RingCluster(servers, 3, durable=True)
    for name in cluster.names:
        await cluster.start(name)
    await cluster.serving()
    pid, left = await _load(cluster)
    victim = cluster.names[-1]
    cluster.cluster.processes[victim].stop()
    journal = cluster.path.parent / "state" / f"{victim}.journal"
    [segment] = sorted(journal.glob("log.*"))
    data = bytearray(segment.read_bytes())
    data[12] ^= 0xFF  # inside the first record's body: its checksum fails
    segment.write_bytes(bytes(data))
    code, output = await run_twistd(
        "-n",
        "--pidfile=",
        "lips-msgserver",
        "--config",
        str(cluster.path),
        "--name",
        victim,
        cwd=tmp_path,
    )
    assert code != 0
    assert "damaged at byte" in output and str(segment) in output, output
    assert "Traceback" not in output, output
    journal.rename(journal.with_name(journal.name + ".damaged"))
    await cluster.start(victim)
    await cluster.serving()
    # Only the rejoined server holds the space for a moment: the others stop.
    for name in cluster.names[:-1]:
        cluster.cluster.processes[name].stop()
    for name in cluster.names[:-1]:
        await cluster.start(name)
    await cluster.serving()
    await _check(cluster, pid, left)


@pytest_twisted.ensureDeferred
async def test_backup_of_a_running_server_restored_after_total_loss(
    servers: ServerFarm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """
    C{lips backup} copies a running server's state; every journal lost, C{lips restore}
    puts the backup under each server, and the cluster serves it again.
    """
    cluster = RingCluster(servers, 3, durable=True)
    for name in cluster.names:
        await cluster.start(name)
    await cluster.serving()
    pid, left = await _load(cluster)
    copy = tmp_path / "m1.backup"
    config = str(cluster.path)
    assert cli.main(["backup", "-c", config, "--name", "m1", str(copy)]) == 0
    assert f"{OUTS - TAKES} tuples" in capsys.readouterr().err
    for name in cluster.names:
        cluster.cluster.processes[name].stop()
    state = cluster.path.parent / "state"
    for name in cluster.names:
        shutil.rmtree(state / f"{name}.journal")
    assert cli.main(["restore", "-c", config, "--name", "m1", str(tmp_path / "nothing")]) == 1
    for name in cluster.names:
        assert cli.main(["restore", "-c", config, "--name", name, str(copy)]) == 0
    assert cli.main(["restore", "-c", config, "--name", "m1", str(copy)]) == 1
    assert "holds a journal already" in capsys.readouterr().err
    for name in cluster.names:
        await cluster.start(name)
    await cluster.serving()
    await _check(cluster, pid, left)
