# mypy: disable-error-code="untyped-decorator"
# (pytest-twisted ships no type hints, so its decorators are untyped.)
"""
A storm of faults on a replicated cluster of real processes, checked against the
history its clients saw.

Three C{twistd lips-msgserver --config} on loopback serve producers and consumers that
know all three servers.  Meanwhile one server at a time is killed with SIGKILL and
started again, or paused with SIGSTOP and resumed; the next fault waits until the ring
has its three members again.  Every answer, every L{lips.Timeout} and every other error
is recorded, and at the end the space is drained and the history checked: what an
answered C{out} stored was taken once or is still there (short of as many tuples as
there were takes whose outcome is unknown), nothing was taken twice, nothing taken was
never put.

By default the faults last C{STORM_SECONDS} (about 20 s for the whole test); set
C{LIPS_STORM_SECONDS} for a longer storm, C{LIPS_STORM_SEED} to replay a schedule
(the seed is printed; the real processes' timing is not replayed):

    LIPS_STORM_SECONDS=300 .venv/bin/pytest tests/integration/test_storm.py -s
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from typing import Any, Final

import attrs
import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import deferLater

import lips
import lips.client
from lips.client import TupleSpaceClient
from tests.integration._support import RingCluster, ServerFarm, eventually, within

#: Seconds of faults by default: the whole test takes about 20 s with them.
STORM_SECONDS: Final = 16.0
PRODUCERS: Final = 3
CONSUMERS: Final = 4
#: A consumer's in_ waits this long at most (seconds, drawn per call): shorter than a
#: failover, sometimes.
TAKE_TIMEOUT: Final = (0.2, 1.0)
#: The share of a consumer's takes that are inp rather than in_.
INP_SHARE: Final = 0.2
#: A producer puts in bursts of up to BURST outs, then rests (seconds, drawn per rest),
#: so that the space runs dry at times and in_ waits, and times out.
BURST: Final = 60
REST: Final = (0.02, 0.3)
#: The share of faults that are SIGKILL (and a restart) rather than SIGSTOP.
KILL_SHARE: Final = 0.5
#: How long a paused server stays paused, a killed one down, and the ring whole
#: between two faults (seconds, drawn per fault).
PAUSE: Final = (0.5, 2.0)
DOWN: Final = (0.0, 0.5)
CALM: Final = (0.3, 1.0)
#: How long the ring may take to have its three members again after a fault.
WHOLE_DEADLINE: Final = 60.0

Key = tuple[int, int]
"""A stored tuple C{("ks", producer, n)} by its two numbers."""


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


async def _sleep(seconds: float) -> None:
    await deferLater(_reactor(), seconds)


@attrs.define
class History:
    """What the clients asked for and what they were told."""

    put: set[Key] = attrs.Factory(set)
    """Every tuple an out was made for, answered or not."""
    stored: set[Key] = attrs.Factory(set)
    """The tuples of the outs that were answered."""
    taken: list[Key] = attrs.Factory(list)
    """The tuples answered to in_ and inp, in the order the answers came."""
    timeouts: int = 0
    """in_ answered L{lips.Timeout}: a server decided nothing matched in time."""
    empty: int = 0
    """inp answered None."""
    unknown_outs: int = 0
    unknown_takes: int = 0
    errors: Counter[str] = attrs.Factory(Counter)
    """The errors of unknown outcome, by type."""

    @property
    def ops(self) -> int:
        return (
            len(self.stored)
            + len(self.taken)
            + self.timeouts
            + self.empty
            + self.unknown_outs
            + self.unknown_takes
        )

    def unknown(self, error: Exception, take: bool) -> None:
        """An operation failed with C{error}: it may or may not have taken effect."""
        kind = "OutcomeUnknown" if isinstance(error, lips.OutcomeUnknown) else "other"
        self.errors[f"{type(error).__name__} ({kind})"] += 1
        if take:
            self.unknown_takes += 1
        else:
            self.unknown_outs += 1


def problems(history: History, left: list[Key]) -> list[str]:
    """
    What is wrong with C{history}, given the tuples C{left} in the space at the end.

    A tuple is returned by at most one take (the final drain included); every tuple
    returned was put by someone; every answered out's tuple was returned or is left,
    except at most as many as there were takes of unknown outcome.  A take answered
    L{lips.Timeout} that took a tuple all the same shows as one missing more.
    """
    found: list[str] = []
    seen = Counter(history.taken + left)
    twice = sorted(k for k, n in seen.items() if n > 1)
    if twice:
        found.append(f"{len(twice)} tuples returned twice, e.g. {twice[:5]}")
    never = sorted(set(seen) - history.put)
    if never:
        found.append(f"{len(never)} tuples returned that were never put, e.g. {never[:5]}")
    missing = sorted(history.stored - set(seen))
    if len(missing) > history.unknown_takes:
        found.append(
            f"{len(missing)} answered outs' tuples are gone, but only "
            f"{history.unknown_takes} takes have an unknown outcome: e.g. {missing[:5]}"
        )
    return found


@attrs.define
class Fault:
    kind: str
    victim: str
    seconds: float
    whole_after: float
    """Seconds from the fault's end (restart or SIGCONT) until the ring was whole."""


@attrs.define(eq=False)
class Storm:
    """The cluster, its clients and their history."""

    cluster: RingCluster
    seed: int
    history: History = attrs.Factory(History)
    clients: list[TupleSpaceClient] = attrs.Factory(list)
    faults: list[Fault] = attrs.Factory(list)
    stopping: bool = False

    @property
    def endpoints(self) -> list[str]:
        return [self.cluster.endpoint(n) for n in self.cluster.names]

    async def connect(self, first: int, name: str) -> TupleSpaceClient:
        """A client of every server, trying the C{first}-th first."""
        client = await within(
            lips.client.connect(_reactor(), self.endpoints, start=first, name=name), 30
        )
        self.clients.append(client)
        return client

    async def usable(self, client: TupleSpaceClient, first: int, name: str) -> TupleSpaceClient:
        """C{client}, or a new one in its place if it gave up (no server in time)."""
        if client.state != "failed":
            return client
        await within(client.close())
        return await self.connect(first, name)

    async def produce(self, k: int) -> None:
        """Out C{("ks", k, n)} for n = 1, 2, ..., in bursts, until the storm is over."""
        name = f"producer{k}"
        rng = random.Random(f"{self.seed}/{name}")
        client = await self.connect(k, name)
        n = 0
        burst = rng.randint(1, BURST)
        while not self.stopping:
            if n == burst:
                await _sleep(rng.uniform(*REST))
                burst += rng.randint(1, BURST)
            n += 1
            self.history.put.add((k, n))
            try:
                await client.out(("ks", k, n))
            except Exception as e:
                self.history.unknown(e, take=False)
                client = await self.usable(client, k, name)
            else:
                self.history.stored.add((k, n))

    async def consume(self, k: int) -> None:
        """Take any C{("ks", int, int)}, with in_ (a short timeout) or inp, until done."""
        name = f"consumer{k}"
        rng = random.Random(f"{self.seed}/{name}")
        client = await self.connect(k + 1, name)
        while not self.stopping:
            try:
                if rng.random() < INP_SHARE:
                    t = await client.inp(("ks", int, int))
                else:
                    t = await client.in_(("ks", int, int), timeout=rng.uniform(*TAKE_TIMEOUT))
            except lips.Timeout:
                self.history.timeouts += 1
            except Exception as e:
                self.history.unknown(e, take=True)
                client = await self.usable(client, k + 1, name)
            else:
                if t is None:
                    self.history.empty += 1
                else:
                    self.history.taken.append((int(t[1]), int(t[2])))

    async def whole(self) -> list[dict[str, Any]]:
        """Wait until all three serve in one ring of three, in its operational state."""
        latest: list[dict[str, Any]] = []

        async def one_ring() -> bool:
            latest[:] = await self.cluster.serving(members=3)
            return len({s["space.ring"] for s in latest}) == 1 and all(
                s["ring.state"] == "operational" for s in latest
            )

        await eventually(one_ring, WHOLE_DEADLINE, "the three servers in one ring")
        return latest

    async def fault(self, rng: random.Random) -> None:
        """Kill and restart, or pause and resume, one server; wait for the whole ring."""
        victim = rng.choice(self.cluster.names)
        began = time.monotonic()
        if rng.random() < KILL_SHARE:
            kind = "SIGKILL"
            self.cluster.kill(victim)
            await _sleep(rng.uniform(*DOWN))
            await self.cluster.start(victim)
        else:
            kind = "SIGSTOP"
            server = self.cluster.running[victim]
            server.pause()
            try:
                await _sleep(rng.uniform(*PAUSE))
            finally:
                server.resume()
        ended = time.monotonic()
        await self.whole()
        self.faults.append(Fault(kind, victim, ended - began, time.monotonic() - ended))

    async def storm(self, seconds: float) -> None:
        """Faults, one at a time, for C{seconds}."""
        rng = random.Random(f"{self.seed}/faults")
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await _sleep(rng.uniform(*CALM))
            await self.fault(rng)

    @property
    def failovers(self) -> int:
        return sum(c.failovers for c in self.clients)

    def summary(self, seconds: float, left: list[Key]) -> str:
        h = self.history
        kinds = Counter(f.kind for f in self.faults)
        by_kind = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        whole = max((f.whole_after for f in self.faults), default=0.0)
        missing = len(h.stored - set(h.taken) - set(left))
        return "\n".join(
            [
                f"storm (seed {self.seed}): {seconds:.1f} s of faults, {h.ops} operations "
                f"({h.ops / seconds:,.0f}/s)",
                f"  faults: {len(self.faults)} ({by_kind}); "
                f"the ring whole again at most {whole:.2f} s after a fault ended",
                f"  outs: {len(h.stored)} answered, {h.unknown_outs} of unknown outcome",
                f"  takes: {len(h.taken)} answered with a tuple, {h.timeouts} timed out, "
                f"{h.empty} inp found nothing, {h.unknown_takes} of unknown outcome",
                f"  unknown outcomes by error: {dict(h.errors) or 'none'}",
                f"  client failovers: {self.failovers}; left in the space: {len(left)}; "
                f"answered outs missing: {missing} (at most {h.unknown_takes} allowed)",
            ]
        )


def _seed() -> int:
    text = os.environ.get("LIPS_STORM_SEED")
    return int(text) if text else random.SystemRandom().randrange(1 << 32)


async def _gather(work: list[defer.Deferred[Any]], seconds: float) -> None:
    await within(defer.gatherResults(work, consumeErrors=True), seconds)


@pytest.mark.parametrize("durable", [False, True], ids=["in-memory", "durable"])
@pytest_twisted.ensureDeferred
async def test_storm(servers: ServerFarm, durable: bool) -> None:
    """
    Under SIGKILLs and SIGSTOPs of one server at a time, with in_ timeouts shorter than
    a failover, the clients' history is linearizable enough to check by counting: no
    answered out is lost (beyond the takes of unknown outcome), no tuple is taken twice,
    nothing taken was never put, and a take answered Timeout took nothing.  Afterwards
    the three servers agree on the space.  A durable cluster (C{cluster.durable}) is
    then killed whole, all three servers at once, and started again before the drain:
    nothing answered may be missing after that either.
    """
    seconds = float(os.environ.get("LIPS_STORM_SECONDS", STORM_SECONDS))
    seed = _seed()
    print(f"\nstorm: seed {seed} (LIPS_STORM_SEED={seed} to replay its schedule)")
    cluster = RingCluster(servers, 3, durable=durable)
    await _gather([defer.ensureDeferred(cluster.start(n)) for n in cluster.names], 60)
    storm = Storm(cluster, seed)
    await storm.whole()

    work = [defer.ensureDeferred(storm.produce(k)) for k in range(PRODUCERS)]
    work += [defer.ensureDeferred(storm.consume(k)) for k in range(CONSUMERS)]
    left: list[Key] = []
    try:
        began = time.monotonic()
        try:
            await within(defer.ensureDeferred(storm.storm(seconds)), seconds + 300)
        finally:
            seconds = time.monotonic() - began
            storm.stopping = True
            await _gather(work, 60)

        # The three at the same point, then drained from a fresh client.
        latest: list[dict[str, Any]] = []

        async def agreed() -> bool:
            latest[:] = await storm.whole()
            marks = {
                (s["space.applied"], s["space.fingerprint"], s["space.tuples"]) for s in latest
            }
            return len(marks) == 1

        await eventually(agreed, 30, "the three servers at the same point")
        if durable:
            for name in cluster.names:
                cluster.kill(name)
            await _gather([defer.ensureDeferred(cluster.start(n)) for n in cluster.names], 60)
            await eventually(agreed, 60, "the three servers back, at the same point")
        stored = int(latest[0]["space.tuples"])
        drainer = await storm.connect(0, "drainer")
        while (t := await within(drainer.inp(("ks", int, int)))) is not None:
            left.append((int(t[1]), int(t[2])))
    except BaseException:
        print(storm.summary(seconds, left) + "\n  (the test stopped before the drain ended)")
        raise
    finally:
        for c in storm.clients:
            await within(c.close())

    print(storm.summary(seconds, left))
    found = problems(storm.history, left)
    assert not found, f"seed {seed}: " + "; ".join(found)
    assert len(left) == stored, f"the servers held {stored} tuples, the drain found {len(left)}"
    assert storm.faults, "no fault was injected"
