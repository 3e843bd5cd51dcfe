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

import pytest
import pytest_twisted

import lips.client
from tests.integration._support import ServerFarm, within


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
    first.transport.signalProcess("KILL")
    await within(first.watcher.ended)

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
    await second.stop()
    waiting = space.rd(("never", int))
    first.transport.signalProcess("KILL")
    await within(first.watcher.ended)
    with pytest.raises(NoServerAvailable) as raised:
        await within(waiting)
    assert isinstance(raised.value, lips.ConnectionLost)
    assert space.state == "failed"
    with pytest.raises(NoServerAvailable):
        await within(space.rdp(("x",)))
    await within(space.close())
