"""
The simulated world: agenda, hosts on the kernel contract, datagrams and streams, all
from one seed.
"""

from __future__ import annotations

import enum
import functools
from typing import Any, ClassVar

from twisted.trial.unittest import SynchronousTestCase

from lips.kernel import Deliver, Effect, Outbox, Send, StartTimer, TimerKey
from lips.testing.world import Host, Link, World


class Tick(enum.Enum):
    PING = "ping"


class Pinger:
    """A toy core: pings its peer every 0.1 s and delivers what it hears."""

    emits: ClassVar[frozenset[type[Effect]]] = frozenset({Send, Deliver, StartTimer})

    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.sent = 0
        self._outbox = Outbox(self.emits)

    def drain(self) -> list[Effect]:
        return self._outbox.drain()

    def start(self, now: float) -> None:
        self._outbox.start_timer(Tick.PING, now + 0.1)

    def timer(self, key: TimerKey, now: float) -> None:
        self.sent += 1
        self._outbox.send(self.peer, self.sent)
        self._outbox.start_timer(Tick.PING, now + 0.1)

    def received(self, src: str, message: Any, now: float) -> None:
        self._outbox.deliver((src, message, round(now, 6)))


def pair(seed: int, link: Link | None = None) -> tuple[World, dict[str, list[Any]]]:
    world = World(seed, link)
    heard: dict[str, list[Any]] = {"a": [], "b": []}
    for name, peer in [("a", "b"), ("b", "a")]:

        def send(host: Host[Any], e: Send[int], name: str = name) -> None:
            world.datagrams.send(name, e.to, e.message)

        def deliver(host: Host[Any], e: Deliver[Any], name: str = name) -> None:
            heard[name].append(e.item)

        host = world.host(name, Pinger(peer), {Send: send, Deliver: deliver})

        def receive(src: object, message: object, host: Host[Pinger] = host) -> None:
            host.feed(host.core.received, src, message)

        def start(host: Host[Pinger] = host) -> None:
            host.feed(host.core.start)

        world.datagrams.attach(name, receive)
        world.plan(0.01, start)
    return world, heard


class WorldTests(SynchronousTestCase):
    def test_replays_from_its_seed(self) -> None:
        """The same seed gives the same run, another seed another one."""
        lossy = Link(loss=0.2, duplicate=0.1, delay_min=0.001, delay_max=0.2)
        runs = []
        for seed in [3, 3, 4]:
            world, heard = pair(seed, lossy)
            world.run(until=5.0)
            runs.append((world.steps, heard, dict(world.datagrams.counts)))
        self.assertEqual(runs[0], runs[1])
        self.assertNotEqual(runs[0], runs[2])
        counts = runs[0][2]
        self.assertGreater(counts["lost"], 0)
        self.assertGreater(counts["duplicated"], 0)
        # Delays up to 0.2 s between pings 0.1 s apart: some overtake others.
        numbers = [m for _, m, _ in runs[0][1]["b"]]
        self.assertNotEqual(numbers, sorted(numbers))

    def test_timers_and_clock(self) -> None:
        """A host's timers fire at their deadlines on the virtual clock."""
        world, heard = pair(1)
        world.run(until=1.0)
        self.assertEqual(world.now, 1.0)
        self.assertEqual(world.hosts["a"].core.sent, 9)
        times = [t for _, _, t in heard["b"]]
        self.assertTrue(all(0.11 < t < 1.0 for t in times), times)

    def test_partition(self) -> None:
        """Across a partition nothing arrives; healed, it does again."""
        world, heard = pair(1)
        world.datagrams.groups = [{"a"}, {"b"}]
        world.run(until=1.0)
        self.assertEqual(heard["b"], [])
        world.datagrams.groups = None
        world.run(until=2.0)
        self.assertGreater(len(heard["b"]), 5)

    def test_pause_keeps_a_bounded_backlog(self) -> None:
        """A paused host fires no timers; its datagrams wait, up to the bound."""
        world, heard = pair(1)
        world.datagrams.backlog = 3
        a = world.hosts["a"]
        world.run(until=0.5)
        sent = a.core.sent
        a.paused = True
        world.datagrams.pause("a")
        world.run(until=2.0)
        self.assertEqual(a.core.sent, sent)
        count = len(heard["a"])
        backlog = world.datagrams.resume("a")
        self.assertEqual(len(backlog), 3)
        self.assertGreater(world.datagrams.counts["backlog.dropped"], 0)
        self.assertEqual(len(heard["a"]), count)

    def test_crash(self) -> None:
        """A removed host fires nothing more and what is sent to it is lost."""
        world, _ = pair(1)
        world.run(until=0.5)
        world.remove("b")
        world.run(until=1.5)
        self.assertNotIn("b", world.hosts)
        self.assertGreater(world.datagrams.counts["unattached"], 0)

    def test_checks_after_every_step(self) -> None:
        """Checks run after every step, and a failing one stops the run."""
        world, _ = pair(1)
        seen: list[int] = []
        world.check(lambda: seen.append(world.steps))
        world.run(until=0.3)
        self.assertEqual(seen, list(range(1, world.steps + 1)))

        def fail() -> None:
            raise AssertionError("broken")

        world.check(fail)
        with self.assertRaises(AssertionError):
            world.run(until=1.0)

    def test_unhandled_effect(self) -> None:
        """A core's effect with no handler is the simulator's error."""
        world = World(0)
        host = world.host("a", Pinger("b"), {})
        host.feed(host.core.start)
        with self.assertRaises(TypeError):
            world.run(until=1.0)
        with self.assertRaises(TypeError):
            world.host("x", Pinger("b"), {StartTimer: lambda h, e: None})

    def test_streams_in_order(self) -> None:
        """A stream delivers in order even with random delays; a close ends it after."""
        world = World(5)
        out, _ = world.streams.connect("c", "s")
        got: list[bytes] = []
        ends: list[str] = []
        out.receive = got.append
        out.closed = ends.append
        for i in range(50):
            world.plan(i * 0.0001, functools.partial(out.write, b"%d" % i))
        world.plan(0.01, lambda: out.close("bye"))
        world.run(until=1.0)
        self.assertEqual(got, [b"%d" % i for i in range(50)])
        self.assertEqual(ends, ["bye"])
        out.write(b"late")
        world.run(until=2.0)
        self.assertEqual(len(got), 50)

    def test_stream_cut(self) -> None:
        """A cut loses the bytes on their way."""
        world = World(5)
        out, _ = world.streams.connect("c", "s")
        got: list[bytes] = []
        out.receive = got.append
        out.write(b"x")
        out.cut()
        world.run(until=1.0)
        self.assertEqual(got, [])
        self.assertFalse(out.open)


class Echo:
    """A toy core: each C{said} input delivers its word; a word in C{again} says more."""

    emits: ClassVar[frozenset[type[Effect]]] = frozenset({Deliver, StartTimer})

    def __init__(self) -> None:
        self.again: dict[str, list[str]] = {}
        self.fired: list[tuple[TimerKey, float]] = []
        self._outbox = Outbox(self.emits)

    def drain(self) -> list[Effect]:
        return self._outbox.drain()

    def said(self, words: list[str], now: float) -> None:
        for word in words:
            self._outbox.deliver(word)

    def arm(self, at: float, now: float) -> None:
        self._outbox.start_timer(Tick.PING, at)

    def timer(self, key: TimerKey, now: float) -> None:
        self.fired.append((key, now))


class WorldOptionTests(SynchronousTestCase):
    """What the world offers simulators that need more (the ring's among them)."""

    def test_fault_model(self) -> None:
        """
        A simulator's own fault model decides each datagram's copies and their delays;
        partitions and deaf endpoints still come first, without asking it.
        """
        world = World(0)
        asked: list[tuple[object, object, object]] = []

        def fault(src: object, dst: object, message: object) -> list[float]:
            asked.append((src, dst, message))
            return {"lost": [], "once": [0.5], "twice": [0.25, 0.75]}[str(message)]

        world.datagrams.fault = fault
        got: list[tuple[float, object]] = []
        world.datagrams.attach("b", lambda src, m: got.append((world.now, m)))
        for message in ["lost", "once", "twice"]:
            world.datagrams.send("a", "b", message)
        world.datagrams.deaf.add("b")
        world.datagrams.send("a", "b", "once", broadcast=True)
        world.datagrams.groups = [{"a"}, {"b"}]
        world.datagrams.send("a", "b", "once")
        world.run()
        self.assertEqual(got, [(0.25, "twice"), (0.5, "once"), (0.75, "twice")])
        self.assertEqual(len(asked), 3)
        counts = world.datagrams.counts
        self.assertEqual((counts["lost"], counts["duplicated"], counts["partitioned"]), (2, 1, 1))

    def test_nested_carry_out(self) -> None:
        """
        By default a handler that feeds its core again has the new effects carried out
        at once, before the rest of its batch; with C{queue_nested}, after it, as the
        Driver does it.
        """
        self.assertEqual(self.nested(queue_nested=False), ["a", "x", "y", "b"])
        self.assertEqual(self.nested(queue_nested=True), ["a", "b", "x", "y"])

    def nested(self, queue_nested: bool) -> list[str]:
        """What an L{Echo} delivers, in order, when saying C{a} makes it say more."""
        world = World(0)
        done: list[str] = []

        def deliver(host: Host[Any], e: Deliver[str]) -> None:
            done.append(e.item)
            more = host.core.again.pop(e.item, None)
            if more:
                host.feed(host.core.said, more)

        host = world.host("e", Echo(), {Deliver: deliver}, queue_nested=queue_nested)
        host.core.again["a"] = ["x", "y"]
        host.feed(host.core.said, ["a", "b"])
        return done

    def test_host_outside_the_world(self) -> None:
        """
        A host made but not added is never fired by the world; L{Host.fire} fires its
        due timers at the time it is given.
        """
        world = World(0)
        host = Host(world, "e", Echo(), {})
        host.feed(host.core.arm, 0.5)
        world.run(until=1.0)
        self.assertEqual(host.core.fired, [])
        self.assertFalse(host.fire(now=0.25))
        self.assertTrue(host.fire(now=0.5))
        self.assertEqual(host.core.fired, [(Tick.PING, 0.5)])

    def test_outside_clock(self) -> None:
        """
        The world steps to an outside clock's calls and catches the clock up first at
        every step, before the step's own event.
        """
        from twisted.internet.task import Clock

        world = World(0)
        clock = Clock()
        seen: list[tuple[str, float]] = []

        def next_call() -> float | None:
            calls = clock.getDelayedCalls()
            return min(c.getTime() for c in calls) if calls else None

        def catch_up() -> None:
            clock.advance(world.now - clock.seconds())

        world.add_clock(next_call, catch_up)
        clock.callLater(0.3, lambda: seen.append(("clock", clock.seconds())))
        clock.callLater(0.5, lambda: seen.append(("clock", clock.seconds())))
        world.plan(0.5, lambda: seen.append(("agenda", world.now)))
        world.run()
        self.assertEqual(seen, [("clock", 0.3), ("clock", 0.5), ("agenda", 0.5)])
        self.assertEqual(world.steps, 2)
