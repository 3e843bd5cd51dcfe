# mypy: disable-error-code="untyped-decorator"
# (pytest-twisted ships no type hints, so its decorators are untyped.)
"""
A member's return to a ring of real processes: three C{twistd lips-msgserver --config}
on loopback; one is paused with SIGSTOP (or killed with SIGKILL) until the other two
serve in a ring of their own, then continued (or started again).  The two that served
throughout take it back with one new configuration: the stop cost them one (three
members to two), the return at most one more (two to three), not a string of
single-member rings while the returned server acts on the stale datagrams its socket
kept.  The count is the engine's C{ring.installed}, read from each server's stats.
"""

from __future__ import annotations

from typing import Any, Final

import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import deferLater

from tests.integration._support import RingCluster, ServerFarm, within

#: How long the paused server stays stopped, and the killed one down (seconds).
PAUSE: Final = 1.5
DOWN: Final = 0.5
#: How long the ring must then stay as it is, to count any late change.
SETTLE: Final = 1.0
SERVING: Final = ("m1", "m2")


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


async def _sleep(seconds: float) -> None:
    await deferLater(_reactor(), max(0.0, seconds))


async def _three(servers: ServerFarm) -> RingCluster:
    cluster = RingCluster(servers, 3)
    await within(
        defer.gatherResults([defer.ensureDeferred(cluster.start(n)) for n in cluster.names]),
        30,
    )
    await cluster.serving()
    return cluster


async def _installed(cluster: RingCluster) -> dict[str, int]:
    """How many regular configurations each serving server's ring engine installed."""
    return {n: int((await cluster.running[n].stats())["ring.installed"]) for n in SERVING}


async def _back_together(cluster: RingCluster) -> list[dict[str, Any]]:
    """Wait until all three serve in one ring, and stay so for L{SETTLE}; their stats."""
    stats = await cluster.serving(members=3)
    await _sleep(SETTLE)
    again = await cluster.serving(members=3)
    rings = {s["ring.id"] for s in again}
    assert len(rings) == 1, f"the servers are in different rings: {rings}"
    assert [s["ring.id"] for s in stats] == [s["ring.id"] for s in again], (
        "the ring changed again after the three served together",
        [s["ring.id"] for s in stats],
        [s["ring.id"] for s in again],
    )
    return again


def _check(before: dict[str, int], down: dict[str, int], after: dict[str, int]) -> None:
    print(f"configurations installed: before {before}, without it {down}, after {after}")
    for name in SERVING:
        away, back = down[name] - before[name], after[name] - down[name]
        assert away >= 1, (name, before, down)
        assert back <= 1, (
            f"{name} installed {back} configurations to take the returning server back"
            f" (at most 1); before the fault {before}, without it {down}, after {after}"
        )
        assert away + back <= 2, (name, before, down, after)


@pytest_twisted.ensureDeferred
async def test_paused_member_returns_with_one_change(servers: ServerFarm) -> None:
    """
    A server stopped with SIGSTOP for 1.5 s and continued is taken back with at most
    one new configuration at each of the two others, and says it noticed the pause.
    """
    cluster = await _three(servers)
    before = await _installed(cluster)
    paused = cluster.running["m3"]
    paused.pause()
    stopped = _reactor().seconds()
    try:
        await cluster.serving(*SERVING, members=2)
        down = await _installed(cluster)
        await _sleep(stopped + PAUSE - _reactor().seconds())
    finally:
        paused.resume()
    stats = await _back_together(cluster)
    _check(before, down, await _installed(cluster))
    m3 = next(s for s in stats if s["ring.node"] == 3)
    assert m3.get("ring.paused", 0) >= 1, m3


@pytest_twisted.ensureDeferred
async def test_restarted_member_returns_with_one_change(servers: ServerFarm) -> None:
    """
    A server killed with SIGKILL and started again once the others serve without it
    is taken back with at most one new configuration at each of them.
    """
    cluster = await _three(servers)
    before = await _installed(cluster)
    cluster.kill("m3")
    await cluster.serving(*SERVING, members=2)
    down = await _installed(cluster)
    await _sleep(DOWN)
    await cluster.start("m3")
    await _back_together(cluster)
    _check(before, down, await _installed(cluster))
