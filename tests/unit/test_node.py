"""
Tests for L{lips.node}: lipsd's node state, idle policy and watchdog (the watchdog
core driven directly with C{now}), and the lipsd service on a fake clock, with a fake
sampler and the real tuple-space core behind a fake client.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from lips.kernel import Deliver, Driver
from lips.node import (
    DOWN_TAG,
    STATE_TAG,
    UP_TAG,
    IdlePolicy,
    ISampler,
    NodeMonitor,
    NodeService,
    PsutilSampler,
    Sample,
    Suspect,
    Watchdog,
    declare_down,
    down_template,
    publish,
    state_template,
    up_template,
)
from lips.space import Kind, Status, TupleSpace
from lips.tap import node as node_tap
from lips.testing import ClusterMember, write_cluster
from lips.tuples import (
    AtomicAborted,
    LTuple,
    Step,
    StepResult,
    make_template,
    make_tuple,
    packb,
    unpackb,
)

IDLE = Sample(load1=0.2, cpu_idle=90.0, free_memory=4 << 30, processes=0)
BUSY = Sample(load1=3.5, cpu_idle=10.0, free_memory=4 << 30, processes=2)


@implementer(ISampler)
class FakeSampler:
    """Gives the samples it is set to, and counts the readings."""

    def __init__(self, sample: Sample = IDLE) -> None:
        self.current = sample
        self.readings = 0

    def sample(self) -> Sample:
        self.readings += 1
        return self.current


class FakeClient:
    """
    A client of a shared L{TupleSpace} as one process.  With C{hold}, each operation
    waits in C{held} and is applied at the space only when L{release} lets it go, so
    a test chooses how the operations of several clients interleave.
    """

    _pids = iter(range(1, 1 << 30))

    def __init__(self, space: TupleSpace, hold: bool = False, pid: int | None = None) -> None:
        self.space = space
        self.pid = next(self._pids) if pid is None else pid
        self.event = 0
        self.hold = hold
        self.held: list[Callable[[], None]] = []
        self.state = "connected"

    def _op(self, apply: Callable[[int], Any]) -> defer.Deferred[Any]:
        self.event += 1
        event = self.event
        d: defer.Deferred[Any] = defer.Deferred()
        if self.hold:
            self.held.append(lambda: d.callback(apply(event)))
        else:
            d.callback(apply(event))
        return d

    def release(self) -> None:
        self.held.pop(0)()

    def out(self, values: Sequence[Any]) -> defer.Deferred[None]:
        def apply(event: int) -> None:
            self.space.out(self.pid, event, make_tuple(values))

        return self._op(apply)

    def _take(self, kind: Kind, template: Sequence[Any]) -> defer.Deferred[LTuple | None]:
        def apply(event: int) -> LTuple | None:
            done = self.space.take(self.pid, event, kind, make_template(template))
            return done.value if done.status is Status.MATCHED else None

        return self._op(apply)

    def inp(self, template: Sequence[Any]) -> defer.Deferred[LTuple | None]:
        return self._take(Kind.INP, template)

    def rdp(self, template: Sequence[Any]) -> defer.Deferred[LTuple | None]:
        return self._take(Kind.RDP, template)

    def atomic(self, steps: Sequence[Step]) -> defer.Deferred[tuple[StepResult, ...]]:
        """As the real client: each step's result, or L{AtomicAborted}."""

        def apply(event: int) -> tuple[StepResult, ...] | Failure:
            [done, *_] = self.space.atomic(self.pid, event, steps)
            if done.aborted is not None:
                return Failure(AtomicAborted(*done.aborted))
            assert done.results is not None
            return done.results

        return self._op(apply)

    def checkpoint(self, state: Any) -> defer.Deferred[None]:
        def apply(event: int) -> None:
            self.space.checkpoint(self.pid, event, packb(state))

        return self._op(apply)

    def recover(self) -> defer.Deferred[Any]:
        """As the real client: the last checkpoint's state; events continue after it."""
        found = self.space.recovered(self.pid)
        if found is None:
            self.event = 0
            return defer.succeed(None)
        self.event = found[0]
        return defer.succeed(unpackb(found[1]))

    def close(self) -> defer.Deferred[None]:
        self.state = "closed"
        return defer.succeed(None)


class Killed(FakeClient):
    """
    A lipsd's client that dies at its C{at}-th operation (from 0): with C{applied}, the
    space applies that operation but the answer never comes back; otherwise it never
    reaches the space.  Nothing after it is sent: the process is gone.
    """

    def __init__(self, space: TupleSpace, pid: int, at: int, applied: bool) -> None:
        super().__init__(space, pid=pid)
        self.at = at
        self.applied = applied
        self.ops = 0
        self.dead = False

    def _op(self, apply: Callable[[int], Any]) -> defer.Deferred[Any]:
        if self.dead:
            return defer.Deferred()
        if self.ops == self.at:
            self.dead = True
            if self.applied:
                self.event += 1
                apply(self.event)
            return defer.Deferred()
        self.ops += 1
        return super()._op(apply)


def matching(space: TupleSpace, template: Sequence[Any]) -> list[LTuple]:
    t = make_template(template)
    return [v for v in space.tuples() if t.matches(v)]


class SampleTests(SynchronousTestCase):
    def test_valid(self) -> None:
        """A sample keeps its readings, the load and CPU idle as floats."""
        s = Sample(load1=1, cpu_idle=50, free_memory=10, processes=3)
        self.assertEqual((s.load1, s.cpu_idle, s.free_memory, s.processes), (1.0, 50.0, 10, 3))
        self.assertIsInstance(s.load1, float)

    def test_invalid(self) -> None:
        """Negative, non-finite, out-of-range and wrongly typed readings are refused."""
        with self.assertRaises(ValueError):
            Sample(load1=-1.0, cpu_idle=50.0, free_memory=1, processes=0)
        with self.assertRaises(ValueError):
            Sample(load1=float("nan"), cpu_idle=50.0, free_memory=1, processes=0)
        with self.assertRaises(ValueError):
            Sample(load1=0.0, cpu_idle=100.5, free_memory=1, processes=0)
        with self.assertRaises(TypeError):
            Sample(load1=0.0, cpu_idle=50.0, free_memory=1.5, processes=0)  # type: ignore[arg-type]
        with self.assertRaises(TypeError):
            Sample(load1=0.0, cpu_idle=50.0, free_memory=1, processes=True)
        with self.assertRaises(ValueError):
            Sample(load1=0.0, cpu_idle=50.0, free_memory=1, processes=-1)

    def test_psutil_sampler(self) -> None:
        """The psutil sampler reads this machine into a valid Sample."""
        s = PsutilSampler().sample()
        self.assertIsInstance(s, Sample)
        self.assertGreater(s.free_memory, 0)


class IdlePolicyTests(SynchronousTestCase):
    policy = IdlePolicy(max_load=1.0, min_cpu_idle=50.0, min_free_memory=1000)

    def test_all_thresholds_hold(self) -> None:
        """A node within every threshold, including exactly at them, is idle."""
        self.assertTrue(self.policy.is_idle(Sample(0.5, 80.0, 5000, 0)))
        self.assertTrue(self.policy.is_idle(Sample(1.0, 50.0, 1000, 0)))

    def test_each_threshold(self) -> None:
        """Too much load, too little CPU idle or too little memory: not idle."""
        self.assertFalse(self.policy.is_idle(Sample(1.01, 80.0, 5000, 0)))
        self.assertFalse(self.policy.is_idle(Sample(0.5, 49.9, 5000, 0)))
        self.assertFalse(self.policy.is_idle(Sample(0.5, 80.0, 999, 0)))

    def test_invalid_thresholds(self) -> None:
        """Thresholds are checked: a CPU percentage over 100, negative memory."""
        with self.assertRaises(ValueError):
            IdlePolicy(min_cpu_idle=101.0)
        with self.assertRaises(ValueError):
            IdlePolicy(min_free_memory=-1)


class NodeMonitorTests(SynchronousTestCase):
    def test_reports(self) -> None:
        """Each report reads the sampler once, is numbered from 1 and stamped by the clock."""
        clock, sampler = Clock(), FakeSampler()
        monitor = NodeMonitor("n1", sampler, clock, interval=0.5)
        first = monitor.report()
        clock.advance(0.5)
        sampler.current = BUSY
        second = monitor.report()
        self.assertEqual((first.seq, first.time, first.idle), (1, 0.0, True))
        self.assertEqual((second.seq, second.time, second.idle), (2, 0.5, False))
        self.assertEqual(sampler.readings, 2)

    def test_tuple_shape(self) -> None:
        """The state tuple is (node, name, seq, load1, cpu idle, free memory, processes,
        idle), and matches the node's state template, with and without its seq."""
        state = NodeMonitor("n1", FakeSampler(BUSY), Clock()).report()
        values = state.as_tuple()
        self.assertEqual(values, (STATE_TAG, "n1", 1, 3.5, 10.0, 4 << 30, 2, False))
        self.assertTrue(make_template(state_template("n1")).matches(make_tuple(values)))
        self.assertTrue(make_template(state_template("n1", 1)).matches(make_tuple(values)))
        self.assertFalse(make_template(state_template("n1", 2)).matches(make_tuple(values)))
        self.assertFalse(make_template(state_template("n2")).matches(make_tuple(values)))

    def test_policy_applied(self) -> None:
        """The idle flag is the monitor's policy applied to the sample."""
        lenient = IdlePolicy(max_load=10.0, min_cpu_idle=5.0, min_free_memory=0)
        state = NodeMonitor("n1", FakeSampler(BUSY), Clock(), policy=lenient).report()
        self.assertTrue(state.idle)

    def test_bad_arguments(self) -> None:
        """An empty name, a non-positive interval, a sampler or clock that is not one,
        or a sampler giving junk are refused."""
        with self.assertRaises(ValueError):
            NodeMonitor("", FakeSampler(), Clock())
        with self.assertRaises(TypeError):
            NodeMonitor("n1", object(), Clock())  # type: ignore[arg-type]
        with self.assertRaises(TypeError):
            NodeMonitor("n1", FakeSampler(), object())  # type: ignore[arg-type]
        with self.assertRaises(ValueError):
            NodeMonitor("n1", FakeSampler(), Clock(), interval=0.0)
        bad = FakeSampler()
        bad.current = (1, 2, 3, 4)  # type: ignore[assignment]
        with self.assertRaises(TypeError):
            NodeMonitor("n1", bad, Clock()).report()


def suspects(dog: Watchdog, now: float) -> list[Suspect]:
    """Ask the watchdog for its verdict at C{now}: the suspects it delivers."""
    dog.check(now)
    effects = dog.drain()
    assert all(isinstance(e, Deliver) for e in effects), effects
    return [e.item for e in effects if isinstance(e, Deliver)]


class WatchdogTests(SynchronousTestCase):
    """The Watchdog core, driven directly with C{now}."""

    def setUp(self) -> None:
        self.dog = Watchdog(["a", "b"], interval=1.0, misses=3)

    def test_never_seen(self) -> None:
        """A node never seen is never suspected, however long it stays silent."""
        self.dog.observe("a", None, 100.0)
        self.assertEqual(suspects(self.dog, 100.0), [])

    def test_down_after_misses(self) -> None:
        """
        A report unchanged for misses intervals makes its node a suspect; a round a hair
        early (within a quarter interval) counts, so jitter never costs a whole round.
        """
        self.dog.observe("a", 1, 0.0)
        self.dog.observe("b", 1, 0.0)
        self.dog.observe("a", 1, 2.7)
        self.dog.observe("b", 2, 2.7)
        self.assertEqual(suspects(self.dog, 2.7), [])
        self.assertEqual(suspects(self.dog, 2.75), [Suspect("a", 1, 2.75)])

    def test_new_report_resets(self) -> None:
        """A changed report, or none read, restarts or keeps the count as it should."""
        self.dog.observe("a", 1, 0.0)
        self.dog.observe("a", 2, 2.0)
        self.dog.observe("a", None, 4.0)
        self.assertEqual(suspects(self.dog, 4.0), [])
        self.assertEqual([s.seq for s in suspects(self.dog, 5.0)], [2])

    def test_tried_once_then_back(self) -> None:
        """A suspect is delivered at every check until it is tried, then not again
        until its node reports again."""
        self.dog.observe("a", 5, 0.0)
        self.assertEqual(suspects(self.dog, 3.0), [Suspect("a", 5, 3.0)])
        (suspect,) = suspects(self.dog, 3.0)
        self.dog.tried(suspect, 3.0)
        self.assertEqual(suspects(self.dog, 13.0), [])
        self.assertEqual(self.dog.silent(), ["a"])
        self.dog.observe("a", 1, 13.0)  # a restarted lipsd numbers from 1 again
        self.assertEqual(self.dog.silent(), [])
        self.assertEqual(suspects(self.dog, 16.0), [Suspect("a", 1, 3.0)])

    def test_suspects_in_node_order(self) -> None:
        """Several suspects come in the order of the watched nodes."""
        self.dog.observe("b", 1, 0.0)
        self.dog.observe("a", 1, 0.5)
        self.assertEqual([s.name for s in suspects(self.dog, 4.0)], ["a", "b"])

    def test_no_timers(self) -> None:
        """The watchdog starts no timers: being told one is due is a programming error."""
        self.assertEqual(Watchdog.emits, frozenset({Deliver}))
        with self.assertRaises(ValueError):
            self.dog.timer(Tick.ANY, 0.0)

    def test_through_driver(self) -> None:
        """Run by the kernel's driver on a clock, as lipsd runs it: observations and
        checks take the clock's time, suspects reach the Deliver handler, and no
        delayed call is ever made."""
        clock = Clock()
        found: list[Suspect] = []
        driver = Driver(self.dog, clock, {Deliver: lambda e: found.append(e.item)})
        driver.input(self.dog.observe, "a", 1)
        clock.advance(2.9)
        driver.input(self.dog.check)
        self.assertEqual(found, [Suspect("a", 1, 2.9)])
        driver.input(self.dog.tried, found[0])
        driver.input(self.dog.check)
        self.assertEqual(len(found), 1)
        self.assertEqual(clock.getDelayedCalls(), [])
        driver.stop()

    def test_bad_arguments(self) -> None:
        """Zero misses, a non-positive interval or a node watched twice are refused."""
        with self.assertRaises(ValueError):
            Watchdog(["a"], misses=0)
        with self.assertRaises(ValueError):
            Watchdog(["a"], interval=0.0)
        with self.assertRaises(ValueError):
            Watchdog(["a", "a"])


class Tick(enum.Enum):
    ANY = "any"


def _state(name: str, seq: int) -> Any:
    monitor = NodeMonitor(name, FakeSampler(), Clock())
    monitor.seq = seq - 1
    return monitor.report()


class PublishTests(SynchronousTestCase):
    def test_replaces_state(self) -> None:
        """Every report replaces the node's previous one: one state tuple, the newest."""
        space = TupleSpace()
        client = FakeClient(space)
        for seq in (1, 2, 3):
            self.successResultOf(
                defer.ensureDeferred(publish(client, _state("n1", seq), joining=seq == 1))
            )
        states = matching(space, state_template("n1"))
        self.assertEqual([s[2] for s in states], [3])
        self.assertEqual(matching(space, up_template("n1")), [(UP_TAG, "n1", 1)])

    def test_new_report_before_old_ones_go(self) -> None:
        """
        The new report is stored before the old ones are taken, so a reader never finds
        none, and every older one goes, an earlier run's of a higher number too.
        """
        space = TupleSpace()
        client = FakeClient(space, hold=True)
        space.out(99, 1, make_tuple(_state("n1", 57).as_tuple()))  # an earlier run's
        d = defer.ensureDeferred(publish(client, _state("n1", 1), joining=True))
        while client.held:
            client.release()
            self.assertNotEqual(matching(space, state_template("n1")), [])
        self.successResultOf(d)
        self.assertEqual([s[2] for s in matching(space, state_template("n1"))], [1])

    def test_taken_in_again(self) -> None:
        """A node that finds itself declared down removes the down tuple and says it is
        up, replacing its earlier node-up tuple."""
        space = TupleSpace()
        client = FakeClient(space)
        self.successResultOf(defer.ensureDeferred(publish(client, _state("n1", 1), joining=True)))
        space.out(99, 1, make_tuple((DOWN_TAG, "n1", 1, "w")))
        took = self.successResultOf(
            defer.ensureDeferred(publish(client, _state("n1", 2), joining=False))
        )
        self.assertTrue(took)
        self.assertEqual(matching(space, down_template("n1")), [])
        self.assertEqual(matching(space, up_template("n1")), [(UP_TAG, "n1", 2)])


class DeclareDownTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.space = TupleSpace()
        node = FakeClient(self.space)
        self.successResultOf(defer.ensureDeferred(publish(node, _state("n1", 7), joining=True)))

    def test_declares(self) -> None:
        """A silent node's stale report is taken and a down tuple written instead of its
        node-up tuple."""
        won = self.successResultOf(
            defer.ensureDeferred(declare_down(FakeClient(self.space), Suspect("n1", 7, 3.0), "w1"))
        )
        self.assertTrue(won)
        self.assertEqual(matching(self.space, down_template("n1")), [(DOWN_TAG, "n1", 7, "w1")])
        self.assertEqual(matching(self.space, state_template("n1")), [])
        self.assertEqual(matching(self.space, up_template("n1")), [])

    def test_live_node_not_declared(self) -> None:
        """A suspect whose report has changed in the meantime is not declared down."""
        won = self.successResultOf(
            defer.ensureDeferred(declare_down(FakeClient(self.space), Suspect("n1", 6, 3.0), "w1"))
        )
        self.assertFalse(won)
        self.assertEqual(matching(self.space, down_template("n1")), [])

    def test_two_watchdogs_one_down(self) -> None:
        """Two watchdogs declaring the same node at the same time, their operations
        interleaved one by one: exactly one wins, and there is one down tuple."""
        w1, w2 = FakeClient(self.space, hold=True), FakeClient(self.space, hold=True)
        suspect = Suspect("n1", 7, 3.0)
        d1 = defer.ensureDeferred(declare_down(w1, suspect, "w1"))
        d2 = defer.ensureDeferred(declare_down(w2, suspect, "w2"))
        while w1.held or w2.held:
            for w in (w1, w2):
                if w.held:
                    w.release()
        results = [self.successResultOf(d1), self.successResultOf(d2)]
        self.assertEqual(sorted(results), [False, True])
        self.assertEqual(len(matching(self.space, down_template("n1"))), 1)


class NodeServiceTests(SynchronousTestCase):
    """lipsd services on a fake clock, each with its own fake client of one space."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.space = TupleSpace()
        self.services: list[NodeService] = []
        self.clients: list[FakeClient] = []

    def start(self, name: str, watch: Sequence[str] = ()) -> NodeService:
        monitor = NodeMonitor(name, FakeSampler(), self.clock, interval=1.0)
        dog = Watchdog(watch, interval=1.0, misses=3) if watch else None

        def connect() -> defer.Deferred[Any]:
            client = FakeClient(self.space)
            self.clients.append(client)
            return defer.succeed(client)

        s = NodeService(monitor, connect, dog)
        s.startService()
        self.services.append(s)
        return s

    def kill(self, s: NodeService) -> None:
        """Stop a lipsd as SIGKILL would: nothing more from it, nothing said."""
        assert s._loop is not None
        s._loop.stop()
        s._loop = None
        s._client = None

    def tearDown(self) -> None:
        for s in self.services:
            if s.running:
                self.successResultOf(s.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_states_published(self) -> None:
        """Each lipsd publishes one state tuple per interval, always just the newest."""
        self.start("a")
        self.start("b", watch=["a"])
        self.clock.pump([1.0] * 5)
        for name in ("a", "b"):
            (state,) = matching(self.space, state_template(name))
            self.assertEqual(state[2], 6)
            self.assertEqual(matching(self.space, up_template(name)), [(UP_TAG, name, 1)])

    def test_down_after_misses_and_back(self) -> None:
        """A killed lipsd is declared down after the configured intervals (not before);
        restarted, it takes itself in again: its down tuple is gone, one node-up."""
        a = self.start("a")
        self.start("b", watch=["a"])
        self.clock.pump([1.0] * 3)
        self.kill(a)  # its last report, 4, came at t=3
        self.clock.pump([1.0] * 2)
        self.assertEqual(matching(self.space, down_template("a")), [])
        self.clock.advance(1.0)
        self.assertEqual(matching(self.space, down_template("a")), [(DOWN_TAG, "a", 4, "b")])
        self.clock.pump([1.0] * 5)
        self.assertEqual(len(matching(self.space, down_template("a"))), 1)
        again = self.start("a")
        self.assertEqual(matching(self.space, down_template("a")), [])
        self.assertEqual(matching(self.space, up_template("a")), [(UP_TAG, "a", 1)])
        self.assertEqual(again.taken_in, 1)
        self.clock.pump([1.0] * 6)
        self.assertEqual(matching(self.space, down_template("a")), [])
        self.assertEqual(len(matching(self.space, state_template("a"))), 1)

    def test_two_watchdogs_no_duplicate(self) -> None:
        """Two lipsd watching the same node declare it down once between them."""
        a = self.start("a")
        b = self.start("b", watch=["a"])
        c = self.start("c", watch=["a"])
        self.clock.pump([1.0] * 2)
        self.kill(a)
        self.clock.pump([1.0] * 10)
        self.assertEqual(len(matching(self.space, down_template("a"))), 1)
        self.assertEqual(len(b.declared) + len(c.declared), 1)

    def test_reconnects_after_failed_client(self) -> None:
        """A round that fails with the client given up is logged; the next connects anew."""
        s = self.start("a")
        first = self.clients[0]
        first.state = "failed"

        def broken(values: Sequence[Any]) -> defer.Deferred[None]:
            return defer.fail(RuntimeError("no server"))

        first.out = broken  # type: ignore[method-assign]
        self.clock.advance(1.0)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.clock.advance(1.0)
        self.assertEqual(len(self.clients), 2)
        self.assertEqual(s.rounds, 2)


class OptionsTests(SynchronousTestCase):
    def cluster(self) -> Path:
        return write_cluster(
            Path(self.mktemp()),
            [ClusterMember("f1", 1, 7201, 7021, role="fixserver")],
        )

    def parse(self, *argv: str) -> node_tap.Options:
        o = node_tap.Options()
        o.parseOptions(list(argv))
        return o

    def test_defaults(self) -> None:
        """With only --config and --name: 0.2 s interval, 3 misses, nothing watched."""
        o = self.parse("--config", str(self.cluster()), "--name", "n1")
        self.assertEqual((o["interval"], o["misses"], o["watch"]), (0.2, 3, ()))
        self.assertEqual(o["policy"], IdlePolicy())

    def test_all(self) -> None:
        """Every option is converted and checked."""
        o = self.parse(
            "--config",
            str(self.cluster()),
            "--name",
            "n1",
            "--interval",
            "0.25",
            "--misses",
            "4",
            "--watch",
            "n2, n3",
            "--max-load",
            "2",
            "--min-cpu-idle",
            "20",
            "--min-free-memory",
            "1000",
        )
        self.assertEqual((o["interval"], o["misses"], o["watch"]), (0.25, 4, ("n2", "n3")))
        self.assertEqual(o["policy"], IdlePolicy(2.0, 20.0, 1000))

    def test_refused(self) -> None:
        """Missing or bad options are usage errors."""
        path = str(self.cluster())
        for argv in [
            ("--name", "n1"),
            ("--config", path),
            ("--config", path, "--name", "bad name"),
            ("--config", path, "--name", "n1", "--interval", "0"),
            ("--config", path, "--name", "n1", "--misses", "0"),
            ("--config", path, "--name", "n1", "--misses", "1"),
            ("--config", path, "--name", "n1", "--watch", "n1"),
            ("--config", path, "--name", "n1", "--watch", "n2,n2"),
            ("--config", path, "--name", "n1", "--min-cpu-idle", "101"),
            ("--config", str(Path(self.mktemp())), "--name", "n1"),
        ]:
            with self.assertRaises(UsageError, msg=str(argv)):
                self.parse(*argv)

    def test_bad_app_endpoints(self) -> None:
        """An --app endpoint the processes could not use is refused at startup, with the
        reason in one line; a good one is kept as given."""
        path = str(self.cluster())
        for endpoint, reason in [
            ("tcp:99999", "bad client endpoint"),
            ("tcp:host=127.0.0.1:port=99999", "port must be 1-65535"),
            ("bogus:1", "Unknown endpoint type"),
            ("ssl:host=h:port=1:certKey=/nonexistent.pem", "No such file"),
        ]:
            with self.assertRaises(UsageError, msg=endpoint) as e:
                self.parse("--config", path, "--name", "n1", "--app", endpoint)
            self.assertIn(reason, str(e.exception))
            self.assertTrue(str(e.exception).startswith("--app: "), str(e.exception))
            self.assertNotIn("\n", str(e.exception))
        o = self.parse("--config", path, "--name", "n1", "--app", "tcp:host=127.0.0.1:port=7011")
        self.assertEqual(o["app"], ("tcp:host=127.0.0.1:port=7011",))

    def test_no_fixservers(self) -> None:
        """A cluster file without FixServers has nowhere to report to."""
        path = write_cluster(Path(self.mktemp()), [ClusterMember("m1", 1, 7101, 7011)])
        with self.assertRaises(UsageError):
            self.parse("--config", str(path), "--name", "n1")

    def test_make_service(self) -> None:
        """makeService builds one NodeService reporting to the file's FixServers."""
        o = self.parse("--config", str(self.cluster()), "--name", "n1", "--watch", "n2")
        top = node_tap.makeService(o, reactor=Clock())
        (s,) = [s for s in top if isinstance(s, NodeService)]
        self.assertEqual(s.monitor.name, "n1")
        assert s.watchdog is not None
        self.assertEqual(s.watchdog.nodes, ("n2",))
