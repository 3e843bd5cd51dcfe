# mypy: disable-error-code="untyped-decorator"
# (pytest-twisted ships no type hints, so its decorators are untyped.)
"""
The Linda operations against a real twistd MessageServer, over loopback TCP.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer

import lips
from lips.client import TupleSpaceClient
from lips.wire import ErrorCode
from tests.integration._support import ServerFarm, TwistdServer, eventually, within


async def waiting_is(client: TupleSpaceClient, n: int) -> None:
    """Until the server reports C{n} waiting operations."""

    async def check() -> bool:
        return (await within(client.stats()))["space.waiting"] == n

    await eventually(check, what=f"space.waiting == {n}")


RECORD: tuple[Any, ...] = (
    "record",
    7,
    -2.5,
    "naïve",
    b"\x00\xff\x80bytes",
    True,
    None,
    ("nested", (1, b"deep", ("deeper", 2.0)), ()),
)


@pytest_twisted.ensureDeferred
async def test_round_trip_formals_any_nested_bytes(msgserver: TwistdServer) -> None:
    """
    A tuple of every value type, nested sequences and bytes included, comes back
    unchanged through rdp/rd/inp with actual, formal, ANY and nested templates; rd and rdp
    leave it in place, inp takes it, and inp/rdp then find nothing.
    """
    space = await msgserver.connect()
    await within(space.out(RECORD))
    formal = (str, int, float, str, bytes, bool, lips.ANY, ("nested", (int, bytes, lips.ANY), ()))
    assert await within(space.rdp(formal)) == RECORD
    assert await within(space.rd(("record", *[lips.ANY] * 7))) == RECORD
    assert await within(space.rd(RECORD, timeout=5)) == RECORD
    assert await within(space.inp(formal)) == RECORD
    assert await within(space.inp(formal)) is None
    assert await within(space.rdp(formal)) is None
    stats = await within(space.stats())
    assert stats["space.tuples"] == 0
    assert stats["space.waiting"] == 0


@pytest_twisted.ensureDeferred
async def test_in_takes_present_tuple_oldest_first(msgserver: TwistdServer) -> None:
    """in_ of a tuple already present answers at once, with the oldest match first."""
    space = await msgserver.connect()
    for i in range(3):
        await within(space.out(["job", i, [b"payload", i]]))
    got = [await within(space.in_(("job", int, (bytes, int)))) for _ in range(3)]
    assert got == [("job", i, (b"payload", i)) for i in range(3)]
    assert await within(space.inp(("job", lips.ANY, lips.ANY))) is None


@pytest_twisted.ensureDeferred
async def test_strict_matching_across_the_wire(msgserver: TwistdServer) -> None:
    """
    Types match exactly after the round trip: True is not an int, 1 is not 1.0, str is
    not bytes, and a nested formal does not match a scalar.
    """
    space = await msgserver.connect()
    await within(space.out(("flag", True)))
    await within(space.out(("num", 1)))
    await within(space.out(("text", "abc")))
    await within(space.out(("pair", 5)))
    assert await within(space.rdp(("flag", int))) is None
    assert await within(space.rdp(("flag", 1))) is None
    assert await within(space.rdp(("flag", bool))) == ("flag", True)
    assert await within(space.rdp(("num", 1.0))) is None
    assert await within(space.rdp(("num", float))) is None
    assert await within(space.rdp(("num", 1))) == ("num", 1)
    assert await within(space.rdp(("text", bytes))) is None
    assert await within(space.rdp(("text", b"abc"))) is None
    assert await within(space.rdp(("text", str))) == ("text", "abc")
    assert await within(space.rdp(("pair", (int,)))) is None
    assert await within(space.rdp(("flag",))) is None  # arity differs


@pytest_twisted.ensureDeferred
async def test_blocking_in_satisfied_by_another_client(msgserver: TwistdServer) -> None:
    """
    An in_ with nothing to match waits at the server, and another client's out wakes it
    with that tuple, which is then gone from the space.
    """
    taker = await msgserver.connect(name="taker")
    giver = await msgserver.connect(name="giver")
    taken = taker.in_(("job", int, bytes))
    await waiting_is(giver, 1)
    assert not taken.called
    await within(giver.out(("job", 42, b"work")))
    assert await within(taken) == ("job", 42, b"work")
    stats = await within(giver.stats())
    assert (stats["space.waiting"], stats["space.tuples"]) == (0, 0)


@pytest_twisted.ensureDeferred
async def test_one_out_serves_every_rd_and_one_in(msgserver: TwistdServer) -> None:
    """
    One out wakes every waiting rd, and the first waiting in_ takes it: a second in_
    keeps waiting, and the tuple is not left in the space.
    """
    clients = [await msgserver.connect() for _ in range(4)]
    readers = [clients[0].rd(("news", str)), clients[1].rd(("news", lips.ANY))]
    await waiting_is(clients[3], 2)
    first = clients[2].in_(("news", str))
    await waiting_is(clients[3], 3)
    second = clients[0].in_(("news", str), timeout=30)
    await waiting_is(clients[3], 4)
    await within(clients[3].out(("news", "hello")))
    assert [await within(r) for r in readers] == [("news", "hello")] * 2
    assert await within(first) == ("news", "hello")
    stats = await within(clients[3].stats())
    assert (stats["space.waiting"], stats["space.tuples"]) == (1, 0)
    assert not second.called
    await within(clients[3].out(("news", "again")))
    assert await within(second) == ("news", "again")


@pytest_twisted.ensureDeferred
async def test_timeout_raises_and_leaves_no_waiter(msgserver: TwistdServer) -> None:
    """
    in_ and rd with a timeout and nothing to match raise lips.Timeout once the server's
    timer fires, and the server keeps no waiter for them; a later out stays in the space.
    """
    space = await msgserver.connect()
    before = await within(space.stats())
    with pytest.raises(lips.Timeout):
        await within(space.in_(("never", int), timeout=0.2))
    with pytest.raises(lips.Timeout):
        await within(space.rd(("never", int), timeout=0.0))
    stats = await within(space.stats())
    assert stats["space.waiting"] == 0
    assert stats.get("timeouts", 0) == int(before.get("timeouts", 0)) + 2
    await within(space.out(("never", 1)))
    assert await within(space.rdp(("never", int))) == ("never", 1)


@pytest_twisted.ensureDeferred
async def test_cancel_withdraws_the_waiter(msgserver: TwistdServer) -> None:
    """
    Cancelling the Deferred of a waiting in_ fails it with CancelledError and withdraws
    it at the server: no waiter is left, and a later out is not swallowed by it.
    """
    space = await msgserver.connect()
    other = await msgserver.connect()
    d = space.in_(("ghost", int))
    await waiting_is(other, 1)
    d.cancel()
    with pytest.raises(defer.CancelledError):
        await d
    await waiting_is(other, 0)
    stats = await within(other.stats())
    assert stats.get("cancels", 0) == 1
    await within(other.out(("ghost", 1)))
    assert await within(other.rdp(("ghost", int))) == ("ghost", 1)
    assert space.connected
    assert await within(space.inp(("ghost", int))) == ("ghost", 1)


@pytest_twisted.ensureDeferred
async def test_closing_a_connection_withdraws_its_waiters(msgserver: TwistdServer) -> None:
    """A client that disconnects while its in_ and rd wait leaves no waiter behind."""
    space = await msgserver.connect()
    other = await msgserver.connect()
    waits = [space.in_(("gone", int)), space.rd(("gone", str))]
    for d in waits:
        d.addErrback(lambda f: f.trap(lips.ConnectionLost))
    await waiting_is(other, 2)
    await within(space.close())
    await waiting_is(other, 0)
    await within(other.out(("gone", 1)))
    assert await within(other.rdp(("gone", int))) == ("gone", 1)


@pytest_twisted.ensureDeferred
async def test_two_waiting_clients_race_for_one_tuple(msgserver: TwistdServer) -> None:
    """
    Two clients wait in in_ for the same template; one out satisfies exactly one of them
    and the other keeps waiting until a second tuple arrives.
    """
    a, b, giver = [await msgserver.connect() for _ in range(3)]
    racers = [a.in_(("prize", int)), b.in_(("prize", int))]
    await waiting_is(giver, 2)
    await within(giver.out(("prize", 1)))
    await within(defer.DeferredList(racers, fireOnOneCallback=True, fireOnOneErrback=True))
    await waiting_is(giver, 1)
    assert [d.called for d in racers].count(True) == 1
    await within(giver.out(("prize", 2)))
    results = [await within(d) for d in racers]
    assert sorted(results) == [("prize", 1), ("prize", 2)]


@pytest_twisted.ensureDeferred
async def test_many_clients_race_inp_for_one_tuple(msgserver: TwistdServer) -> None:
    """Of eight clients that inp the one matching tuple at once, exactly one gets it."""
    clients = [await msgserver.connect() for _ in range(8)]
    await within(clients[0].out(("token", b"t")))
    results = await within(defer.gatherResults([c.inp(("token", bytes)) for c in clients]))
    assert sorted(results, key=repr) == [("token", b"t")] + [None] * 7
    stats = await within(clients[0].stats())
    assert stats["space.tuples"] == 0


@pytest_twisted.ensureDeferred
async def test_server_limits_come_from_the_command_line(servers: ServerFarm) -> None:
    """
    The --max-arity and --max-tuple-size options reach the running server: the client
    learns the size limit from the WELCOME, and the server refuses a tuple with more
    fields than allowed with BAD_TUPLE.
    """
    server = await servers.start("--max-arity", "3", "--max-tuple-size", "64", "--name", "tiny")
    space = await server.connect()
    assert (space.server, space.max_size) == ("tiny", 64)
    with pytest.raises(lips.RequestError) as excinfo:
        await within(space.out((1, 2, 3, 4)))
    assert excinfo.value.code is ErrorCode.BAD_TUPLE
    with pytest.raises(lips.TupleTooLarge):
        await within(space.out(("x" * 100,)))
    await within(space.out((1, 2, 3)))
    assert await within(space.inp((int, int, int))) == (1, 2, 3)
