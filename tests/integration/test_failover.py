# mypy: disable-error-code="untyped-decorator"
# (pytest-twisted ships no type hints, so its decorators are untyped.)
"""
Client failover against real twistd MessageServers: the server a client is on is killed
with SIGKILL, and the client carries on with the next endpoint it was given.

The two servers here are independent (not a replicated space), so the test checks only
what does not depend on shared state: requests made after the kill, and a waiting in_
that moves with the client and is answered by a tuple stored at the second server.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable

import pytest
import pytest_twisted

import lips.client
from tests.integration._support import ServerFarm, eventually, within


@pytest_twisted.ensureDeferred
async def test_client_fails_over_when_its_server_is_killed(servers: ServerFarm) -> None:
    """
    A client given two endpoints uses the first; when that server is killed, a waiting
    in_ is re-sent to the second server, later operations go there too, and the client
    reports the move.
    """
    from twisted.internet import reactor

    first = await servers.start()
    second = await servers.start()
    space = await within(
        lips.client.connect(reactor, [first.endpoint, second.endpoint], name="failover")
    )
    second.clients.append(space)  # closed before the servers are stopped
    assert (space.endpoint, space.failovers) == (first.endpoint, 0)
    await within(space.out(("before", 1)))
    assert await within(space.inp(("before", int))) == ("before", 1)

    waiting = space.in_(("job", int), timeout=30)
    first.kill()

    await within(space.out(("job", 2)))
    assert await within(waiting) == ("job", 2)
    await within(space.out(("after", 3)))
    assert await within(space.in_(("after", int), timeout=5)) == ("after", 3)
    assert (space.endpoint, space.failovers, space.state) == (second.endpoint, 1, "connected")
    stats = await within(space.stats())
    assert stats["space.tuples"] == 0
    assert stats["space.waiting"] == 0
    assert stats["hellos"] == 1


@pytest_twisted.ensureDeferred
async def test_no_server_left(servers: ServerFarm) -> None:
    """
    When every endpoint is gone, a waiting request fails with NoServerAvailable (a
    ConnectionLost) once the failover timeout has passed, and later calls fail at once.
    """
    from twisted.internet import reactor

    from lips.client._client import NoServerAvailable

    first = await servers.start()
    second = await servers.start()
    space = await within(
        lips.client.connect(reactor, [first.endpoint, second.endpoint], failover_timeout=1.0)
    )
    await second.stop_async()
    waiting = space.rd(("never", int))
    first.kill()
    with pytest.raises(NoServerAvailable) as raised:
        await within(waiting)
    assert isinstance(raised.value, lips.ConnectionLost)
    assert space.state == "failed"
    with pytest.raises(NoServerAvailable):
        await within(space.rdp(("x",)))
    await within(space.close())


@pytest_twisted.ensureDeferred
async def test_hung_server_is_left_while_it_is_stopped(servers: ServerFarm) -> None:
    """
    A server that stops (SIGSTOP: no FIN, no RST, the connection looks alive) loses its
    client to the next server by the keepalive, while it is still stopped: the waiting
    in_ moves and is answered there, the caller never waits out the pause.
    """
    from twisted.internet import reactor

    first = await servers.start()
    second = await servers.start()
    space = await within(lips.client.connect(reactor, [first.endpoint, second.endpoint]))
    second.clients.append(space)
    waiting = space.in_(("job", int), timeout=30)
    await within(space.stats())
    first.pause()
    try:
        await eventually(_failed_over(space), what="the client left the stopped server")
        await within(space.out(("job", 1)))
        assert await within(waiting) == ("job", 1)
        assert space.endpoint == second.endpoint
    finally:
        first.resume()


def _failed_over(space: lips.client.TupleSpaceClient) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return space.failovers == 1 and space.state == "connected"

    return check


_BLOCKING_CLIENT = """
import sys
from lips import blocking
space = blocking.connect(sys.argv[1:], keepalive=0.3)
print(space.state, flush=True)
print(space.in_(("job", int), timeout=30), space.failovers, space.state, flush=True)
"""


@pytest_twisted.ensureDeferred
async def test_blocking_client_leaves_a_hung_server(servers: ServerFarm) -> None:
    """
    lips.blocking takes the keepalive option and shows its state: a blocking worker
    waiting in in_ at a server that stops is answered by the next one.
    """
    from twisted.internet import reactor, utils

    first = await servers.start()
    second = await servers.start()
    watcher = await within(lips.client.connect(reactor, first.endpoint))
    giver = await within(lips.client.connect(reactor, second.endpoint))
    first.clients.append(watcher)
    second.clients.append(giver)
    run = utils.getProcessOutputAndValue(
        sys.executable, ["-c", _BLOCKING_CLIENT, first.endpoint, second.endpoint]
    )

    async def waiting_at_first() -> bool:
        return (await within(watcher.stats()))["space.waiting"] == 1

    await eventually(waiting_at_first, what="the blocking client waits at the first server")
    first.pause()
    try:
        await within(giver.out(("job", 7)))
        out, err, code = await within(run, 30)
    finally:
        first.resume()
    assert code == 0, err.decode()
    assert out.decode().split("\n")[:2] == ["connected", "('job', 7) 1 connected"]
