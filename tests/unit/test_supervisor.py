"""
Tests for lipsd's processes: the L{Supervisor} core driven directly with C{now} (a
virtual clock and a timer table, no reactor), the chooser and L{eval_request} against
the real tuple-space core, the L{ProcessService} that runs the supervisor through the
kernel's driver on a fake clock with a fake spawner, and the child's input.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar, TypeVarTuple

import attrs
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import LogLevel
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from lips.kernel import (
    CancelTimer,
    Deliver,
    Effect,
    Kill,
    Log,
    Spawn,
    StartTimer,
    TimerTable,
)
from lips.node import (
    DOWN_TAG,
    EVAL_TAG,
    FAILED_TAG,
    PROCESS_TAG,
    EvalRequest,
    Exit,
    IChild,
    ISpawner,
    NodeMonitor,
    NodeReport,
    NodeService,
    NoNodeAvailable,
    ProcessFailed,
    ProcessFinished,
    ProcessService,
    ProcessSpec,
    ProcessState,
    RestartPolicy,
    Supervisor,
    SupervisorTimer,
    Watchdog,
    child_input,
    decode_args,
    eval_request,
    eval_template,
    failed_template,
    least_loaded,
    new_pid,
    process_template,
    replace_processes,
)
from lips.node.child import load, read_input
from lips.space import Completion, Kind, Status, TupleSpace
from lips.tap import node as node_tap
from lips.testing import ClusterMember, write_cluster
from lips.tuples import make_template, packb
from tests.unit.test_node import BUSY, FakeClient, FakeSampler, Killed, matching

R = TypeVar("R")
Ts = TypeVarTuple("Ts")

SPEC = ProcessSpec(7, "evalapp:square", ("sq", 7), packb([7]), ("tcp:host=127.0.0.1:port=1",))


@implementer(IChild)
class FakeChild:
    def __init__(self, spec: ProcessSpec, ended: Callable[[Exit], None], os_pid: int) -> None:
        self.spec = spec
        self.ended = ended
        self.os_pid = os_pid
        self.terminated = False

    def terminate(self) -> None:
        self.terminated = True


@implementer(ISpawner)
class FakeSpawner:
    """Records every child it is asked for; a test ends them with exit()."""

    def __init__(self) -> None:
        self.children: list[FakeChild] = []
        self.broken = False

    def spawn(self, spec: ProcessSpec, ended: Callable[[Exit], None]) -> IChild:
        if self.broken:
            raise OSError("no such executable")
        child = FakeChild(spec, ended, 1000 + len(self.children))
        self.children.append(child)
        return child

    @property
    def last(self) -> FakeChild:
        return self.children[-1]


class Host:
    """
    The supervisor core hosted with no reactor, as a simulator would host it: a
    virtual clock (C{now}), a L{TimerTable}, and fake children for its L{Spawn}
    effects.  With C{broken}, a spawn fails and its end is fed back at once, as
    L{ProcessService} does.
    """

    def __init__(self, core: Supervisor) -> None:
        self.core = core
        self.now = 0.0
        self.timers = TimerTable()
        self.children: list[CoreChild] = []
        self.finished: list[ProcessSpec] = []
        self.failed: list[ProcessFailed] = []
        self.effects: list[Effect] = []
        self.broken = False

    @property
    def last(self) -> CoreChild:
        return self.children[-1]

    def feed(self, method: Callable[[*Ts, float], R], *args: *Ts) -> R:
        """Call an input at C{now}, then carry out what it emitted."""
        result = method(*args, self.now)
        self.carry_out()
        return result

    def end(self, child: CoreChild, exit: Exit) -> None:
        self.feed(self.core.ended, child.handle, exit)

    def advance(self, seconds: float) -> None:
        """Move the virtual clock on and fire the timers due."""
        self.now += seconds
        for key in self.timers.due(self.now):
            self.core.timer(key, self.now)
            self.carry_out()

    def new_timers(self) -> list[StartTimer]:
        """The timers started since the last call."""
        started = [e for e in self.effects[self._seen :] if isinstance(e, StartTimer)]
        self._seen = len(self.effects)
        return started

    _seen = 0

    def carry_out(self) -> None:
        while effects := self.core.drain():
            for effect in effects:
                self.effects.append(effect)
                if isinstance(effect, StartTimer | CancelTimer):
                    self.timers.apply(effect)
                elif isinstance(effect, Spawn):
                    if self.broken:
                        error = Exit(error="OSError: no such executable")
                        self.core.ended(effect.handle, error, self.now)
                    else:
                        self.children.append(CoreChild(effect.spec, effect.handle))
                elif isinstance(effect, Kill):
                    (child,) = [c for c in self.children if c.handle == effect.handle]
                    child.killed = True
                elif isinstance(effect, Deliver):
                    if isinstance(effect.item, ProcessFinished):
                        self.finished.append(effect.item.spec)
                    else:
                        self.failed.append(effect.item)


@attrs.define
class CoreChild:
    """A child the host started for a Spawn effect."""

    spec: ProcessSpec
    handle: int
    killed: bool = False


class SupervisorTests(SynchronousTestCase):
    """The Supervisor core, driven directly with C{now} (no clock, no reactor)."""

    def setUp(self) -> None:
        self.policy = RestartPolicy(delay=0.1, factor=2.0, max_delay=0.5, max_restarts=3)
        self.supervisor = Supervisor("n1", policy=self.policy)
        self.host = Host(self.supervisor)

    def tearDown(self) -> None:
        self.assertEqual(len(self.host.timers), 0)

    def test_clean_exit_final(self) -> None:
        """A child that exits 0 is finished: delivered once, never restarted."""
        self.assertTrue(self.host.feed(self.supervisor.start, SPEC))
        self.host.end(self.host.last, Exit(code=0))
        self.host.advance(100)
        self.assertEqual(len(self.host.children), 1)
        self.assertEqual(self.host.finished, [SPEC])
        self.assertEqual(
            self.host.effects, [Spawn(SPEC, self.host.last.handle), Deliver(ProcessFinished(SPEC))]
        )
        self.assertIs(self.supervisor.processes[7].state, ProcessState.FINISHED)
        self.assertEqual(self.supervisor.running, [])

    def test_restart_same_pid(self) -> None:
        """A child killed by a signal is started again at once (its restart timer is
        due at the moment of the crash), with the same spec (so the same process id),
        and its later clean exit finishes it."""
        self.host.feed(self.supervisor.start, SPEC)
        self.host.end(self.host.last, Exit(signal=9))
        self.assertEqual(len(self.host.children), 1)
        self.assertIs(self.supervisor.processes[7].state, ProcessState.WAITING)
        self.assertEqual(
            self.host.new_timers(), [StartTimer((SupervisorTimer.RESTART, 7), self.host.now)]
        )
        self.host.advance(0)
        self.assertEqual(len(self.host.children), 2)
        self.assertEqual(self.host.last.spec, SPEC)
        self.assertNotEqual(self.host.children[0].handle, self.host.last.handle)
        self.assertEqual(self.supervisor.processes[7].restarts, 1)
        self.host.end(self.host.last, Exit(code=0))
        self.assertEqual(self.host.finished, [SPEC])
        self.assertEqual(self.host.failed, [])

    def test_backoff_doubles_to_cap(self) -> None:
        """The first crash restarts at once; the next wait 0.1, 0.2, 0.4, then 0.5 s."""
        policy = RestartPolicy(delay=0.1, factor=2.0, max_delay=0.5, max_restarts=10)
        supervisor = Supervisor("n1", policy=policy)
        host = self.host = Host(supervisor)
        host.feed(supervisor.start, SPEC)
        delays = []
        for _ in range(5):
            host.end(host.last, Exit(code=1))
            (timer,) = host.new_timers()
            delays.append(round(timer.at - host.now, 9))
            host.advance(timer.at - host.now)
        self.assertEqual(delays, [0.0, 0.1, 0.2, 0.4, 0.5])
        self.assertEqual(len(host.children), 6)
        host.feed(supervisor.stop)

    def test_fails_past_threshold(self) -> None:
        """The crash after max_restarts restarts within the window fails the process:
        one record with the node, the reason and the restarts; no more starts."""
        self.host.feed(self.supervisor.start, SPEC)
        for _ in range(3):
            self.host.end(self.host.last, Exit(code=3))
            self.host.advance(1.0)
        self.assertEqual(len(self.host.children), 4)
        self.host.end(self.host.last, Exit(code=3))
        self.host.advance(100)
        self.assertEqual(len(self.host.children), 4)
        (record,) = self.host.failed
        self.assertEqual((record.pid, record.node, record.restarts), (7, "n1", 3))
        self.assertIn("exit code 3", record.reason)
        self.assertIn("4 crashes", record.reason)
        self.assertEqual(record.as_tuple(), (FAILED_TAG, 7, "n1", record.reason, 3))
        self.assertTrue(make_template(failed_template(7)).matches(record.as_tuple()))
        self.assertIs(self.supervisor.processes[7].state, ProcessState.FAILED)

    def test_old_crashes_forgotten(self) -> None:
        """Crashes older than the window do not count toward failing, nor the delay."""
        policy = RestartPolicy(delay=0.1, max_restarts=1, window=10.0)
        supervisor = Supervisor("n1", policy=policy)
        host = self.host = Host(supervisor)
        host.feed(supervisor.start, SPEC)
        for _ in range(4):
            host.end(host.last, Exit(signal=9))
            (timer,) = host.new_timers()
            self.assertAlmostEqual(timer.at - host.now, 0.0)  # a first crash each time
            host.advance(11.0)
        self.assertEqual((host.failed, len(host.children)), ([], 5))
        host.feed(supervisor.stop)

    def test_spawn_error_is_a_crash(self) -> None:
        """A child that cannot be started counts as a crash, and fails in the end."""
        self.host.broken = True
        self.host.feed(self.supervisor.start, SPEC)
        for _ in range(5):
            self.host.advance(1.0)
        (record,) = self.host.failed
        self.assertIn("not started: OSError", record.reason)
        self.assertEqual(self.supervisor.processes[7].starts, 4)

    def test_duplicate_start(self) -> None:
        """A process id already running is not started twice."""
        self.assertTrue(self.host.feed(self.supervisor.start, SPEC))
        self.assertFalse(self.host.feed(self.supervisor.start, SPEC))
        self.assertEqual(len(self.host.children), 1)
        self.host.feed(self.supervisor.stop)

    def test_stop(self) -> None:
        """Stopping kills running children, cancels pending restarts, and ignores
        their later ends."""
        other = ProcessSpec(8, "evalapp:square", ("sq", 8), packb([8]), ("tcp:host=h:port=1",))
        self.host.feed(self.supervisor.start, SPEC)
        self.host.feed(self.supervisor.start, other)
        self.host.end(self.host.children[1], Exit(code=1))
        self.assertEqual(len(self.host.timers), 1)
        running = self.host.children[0]
        self.host.feed(self.supervisor.stop)
        self.assertTrue(running.killed)
        self.assertIn(Kill(running.handle), self.host.effects)
        self.assertIn(CancelTimer((SupervisorTimer.RESTART, 8)), self.host.effects)
        self.host.end(running, Exit(signal=15))
        self.host.advance(10)
        self.assertEqual(
            (self.host.finished, self.host.failed, len(self.host.children)), ([], [], 2)
        )
        with self.assertRaises(RuntimeError):
            self.host.feed(self.supervisor.start, SPEC)

    def test_fence_never_two_children(self) -> None:
        """A fenced process's child is killed and its restart cancelled; started
        again, it waits for the killed child to end before a new one is spawned."""
        self.host.feed(self.supervisor.start, SPEC)
        old = self.host.last
        self.assertEqual(self.host.feed(self.supervisor.fence), [7])
        self.assertTrue(old.killed)
        self.assertTrue(self.supervisor.terminating(7))
        self.assertIs(self.supervisor.processes[7].state, ProcessState.STOPPED)
        self.assertTrue(self.host.feed(self.supervisor.start, SPEC))
        self.assertEqual(len(self.host.children), 1)
        self.host.end(old, Exit(signal=15))
        self.assertFalse(self.supervisor.terminating(7))
        self.assertEqual(len(self.host.children), 2)
        self.assertIs(self.supervisor.processes[7].state, ProcessState.RUNNING)
        self.host.end(self.host.last, Exit(code=0))
        self.assertEqual((self.host.finished, self.host.failed), ([SPEC], []))

    def test_fence_cancels_restart(self) -> None:
        """A fence while a restart waits cancels its timer: no child is spawned."""
        self.host.feed(self.supervisor.start, SPEC)
        self.host.end(self.host.last, Exit(code=1))
        self.assertEqual(self.host.feed(self.supervisor.fence), [7])
        self.assertEqual(self.host.effects[-1], CancelTimer((SupervisorTimer.RESTART, 7)))
        self.host.advance(10)
        self.assertEqual(len(self.host.children), 1)

    def test_stale_end_ignored(self) -> None:
        """An end reported twice (or by an older child) is counted once."""
        self.host.feed(self.supervisor.start, SPEC)
        first = self.host.last
        self.host.end(first, Exit(code=1))
        self.host.advance(0.1)
        self.host.end(first, Exit(code=1))
        self.assertIs(self.supervisor.processes[7].state, ProcessState.RUNNING)
        self.host.end(self.host.last, Exit(code=0))

    def test_logs(self) -> None:
        """A scheduled restart is logged at info, a failure at warn, as Log effects."""
        supervisor = Supervisor("n1", policy=RestartPolicy(max_restarts=1))
        host = self.host = Host(supervisor)
        host.feed(supervisor.start, SPEC)
        host.end(host.last, Exit(code=2))
        host.advance(0)
        host.end(host.last, Exit(code=2))
        logs = [e for e in host.effects if isinstance(e, Log)]
        self.assertEqual([e.level for e in logs], [LogLevel.info, LogLevel.warn])
        self.assertEqual(dict(logs[0].fields)["pid"], 7)
        self.assertIn("2 crashes", str(dict(logs[1].fields)["reason"]))

    def test_foreign_timer_refused(self) -> None:
        """A timer key the supervisor never starts is a programming error."""
        with self.assertRaises(ValueError):
            self.supervisor.timer(SupervisorTimer.RESTART, 0.0)
        with self.assertRaises(ValueError):
            self.supervisor.timer((Tick.OTHER, 7), 0.0)

    def test_exit_describe(self) -> None:
        """Exits say how the child ended."""
        self.assertEqual(Exit(code=2).describe(), "exit code 2")
        self.assertEqual(Exit(signal=9).describe(), "signal 9 (SIGKILL)")
        self.assertTrue(Exit(code=0).clean)
        self.assertFalse(Exit(code=0, signal=9).clean)

    def test_bad_values(self) -> None:
        """Specs and policies check what they are given."""
        with self.assertRaises(ValueError):
            ProcessSpec(0, "m:f", ("x",), b"\x90", ())
        with self.assertRaises(ValueError):
            ProcessSpec(1, "os.system('x')", ("x",), b"\x90", ())
        with self.assertRaises(TypeError):
            ProcessSpec(1, "m:f", ("x",), b"\x90", "tcp:host=h:port=1")
        with self.assertRaises(ValueError):
            RestartPolicy(max_restarts=-1)
        with self.assertRaises(ValueError):
            RestartPolicy(window=0)
        with self.assertRaises(TypeError):
            self.supervisor.start(("not", "a", "spec"), 0.0)  # type: ignore[arg-type]


class Tick(enum.Enum):
    OTHER = "other"


def report(name: str, load1: float, idle: bool = True, processes: int = 0) -> NodeReport:
    return NodeReport(name, 1, load1, 80.0, 1 << 30, processes, idle)


class ChooserTests(SynchronousTestCase):
    def test_least_loaded_idle(self) -> None:
        """The least loaded of the idle nodes wins; a busier idle node and a less
        loaded node that is not idle lose."""
        reports = [report("a", 0.5), report("b", 0.2), report("c", 0.1, idle=False)]
        self.assertEqual(least_loaded(reports), "b")

    def test_ties(self) -> None:
        """Equal load: fewer processes, then the name, decide."""
        self.assertEqual(least_loaded([report("b", 0.2), report("a", 0.2, processes=1)]), "b")
        self.assertEqual(least_loaded([report("b", 0.2), report("a", 0.2)]), "a")

    def test_none_idle(self) -> None:
        """No idle node, or no report at all: no choice."""
        self.assertIsNone(least_loaded([report("a", 0.1, idle=False)]))
        self.assertIsNone(least_loaded([]))

    def test_report_from_tuple(self) -> None:
        """A state tuple reads into a report; anything else is refused."""
        values = ("node", "a", 3, 0.5, 90.0, 100, 2, True)
        self.assertEqual(
            NodeReport.from_tuple(values), NodeReport("a", 3, 0.5, 90.0, 100, 2, True)
        )
        with self.assertRaises(ValueError):
            NodeReport.from_tuple(("node", "a", 3, 0.5, 90.0, 100, 2, 1))


def publish_state(space: TupleSpace, name: str, load1: float, idle: bool = True) -> None:
    FakeClient(space).out(("node", name, 1, load1, 80.0, 1 << 30, 0, idle))


class EvalRequestTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.space = TupleSpace()
        self.client = FakeClient(self.space)

    def test_places_on_least_loaded(self) -> None:
        """The request goes to the least loaded idle node, with its process record."""
        publish_state(self.space, "n1", 0.9)
        publish_state(self.space, "n2", 0.1)
        placed = self.successResultOf(
            defer.ensureDeferred(
                eval_request(
                    self.client, ("sq", 7), "evalapp:square", 7, nodes=["n1", "n2"], pid=42
                )
            )
        )
        self.assertEqual((placed.pid, placed.node), (42, "n2"))
        (request,) = matching(self.space, eval_template("n2"))
        self.assertEqual(
            request, (EVAL_TAG, "n2", 42, ("sq", 7), "evalapp:square", packb([7]), ())
        )
        (record,) = matching(self.space, process_template(42))
        self.assertEqual(record[:3], (PROCESS_TAG, 42, "n2"))
        self.assertEqual(EvalRequest.from_tuple(request).spec.pid, 42)

    def test_down_node_passed_over(self) -> None:
        """A node without a state tuple (down, or never up) is not chosen."""
        publish_state(self.space, "n2", 0.5)
        placed = self.successResultOf(
            defer.ensureDeferred(
                eval_request(self.client, ("x",), "evalapp:square", 1, nodes=["n1", "n2"])
            )
        )
        self.assertEqual(placed.node, "n2")

    def test_pluggable_chooser(self) -> None:
        """A chooser given replaces the default."""
        publish_state(self.space, "n1", 0.9)
        publish_state(self.space, "n2", 0.1)
        placed = self.successResultOf(
            defer.ensureDeferred(
                eval_request(
                    self.client,
                    ("x",),
                    "evalapp:square",
                    1,
                    nodes=["n1", "n2"],
                    chooser=lambda reports: max(reports, key=lambda r: r.load1).name,
                )
            )
        )
        self.assertEqual(placed.node, "n1")

    def test_no_node(self) -> None:
        """No idle node: NoNodeAvailable, and nothing is written."""
        publish_state(self.space, "n1", 3.0, idle=False)
        d = defer.ensureDeferred(eval_request(self.client, ("x",), "m:f", nodes=["n1"]))
        self.failureResultOf(d, NoNodeAvailable)
        self.assertEqual(matching(self.space, eval_template("n1")), [])

    def test_bad_request(self) -> None:
        """Bad targets and arguments that are not LiPS values are refused before any
        operation."""
        for target, args in [("not a target", (1,)), ("m:f", (object(),))]:
            d = defer.ensureDeferred(eval_request(self.client, ("x",), target, *args, nodes=[]))
            self.failureResultOf(d, ValueError, TypeError)
        self.assertEqual(self.client.event, 0)

    def test_request_decoder(self) -> None:
        """A taken request is checked field by field."""
        good = (EVAL_TAG, "n1", 5, ("x",), "m:f", packb([1]), ())
        self.assertEqual(EvalRequest.from_tuple(good).as_tuple(), good)
        for bad in [
            good[:6],
            (EVAL_TAG, "n1", -5, *good[3:]),
            (EVAL_TAG, "n1", 5, ("x",), "eval('1')", packb([1]), ()),
            (EVAL_TAG, "n1", 5, ("x",), "m:f", b"\xc1", ()),
            (EVAL_TAG, "n1", 5, ("x",), "m:f", packb({"a": 1}), ()),
            (EVAL_TAG, "n1", 5, ("x",), "m:f", packb([1]), (3,)),
        ]:
            with self.assertRaises(ValueError, msg=repr(bad)):
                EvalRequest.from_tuple(bad)

    def test_new_pid(self) -> None:
        """Process ids are positive 62-bit numbers; a seeded random repeats them."""
        pids = [new_pid(random.Random(1)), new_pid(random.Random(1)), new_pid()]
        self.assertEqual(pids[0], pids[1])
        self.assertTrue(all(0 < p <= 2**62 for p in pids))


class _ServiceCase(SynchronousTestCase):
    """
    The service on a fake clock, a fake spawner and a fake client of one space: the
    supervisor core run through the kernel's driver, its Spawn and Kill effects
    carried out with the spawner.
    """

    policy = RestartPolicy(max_restarts=1)

    def setUp(self) -> None:
        self.clock = Clock()
        self.space = NotifyingSpace()
        self.spawner = FakeSpawner()
        self.supervisor = Supervisor("n1", policy=self.policy)
        self.said: list[int] = []  # the processes lipsd said goodbye for
        self.service = ProcessService(
            self.supervisor,
            self.spawner,
            lambda: defer.succeed(BlockingFake(self.space)),
            self.clock,
            endpoints=("tcp:host=127.0.0.1:port=9",),
            farewell=self._farewell,
        )
        self.service.startService()
        self.requester = FakeClient(self.space)

    def tearDown(self) -> None:
        self.successResultOf(self.service.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def _farewell(self, spec: ProcessSpec) -> defer.Deferred[None]:
        self.said.append(spec.pid)
        return defer.succeed(None)

    def place(self, target: str = "evalapp:square", pid: int = 11) -> None:
        self.successResultOf(
            defer.ensureDeferred(
                eval_request(self.requester, ("sq", 3), target, 3, nodes=["n1"], pid=pid)
            )
        )


class ProcessServiceTests(_ServiceCase):
    """Requests taken, run under the supervisor, and their records written back."""

    def test_runs_request_and_takes_record(self) -> None:
        """A request for this node starts a child with lipsd's endpoints; its clean exit
        takes the process record."""
        publish_state(self.space, "n1", 0.1)
        self.place()
        (child,) = self.spawner.children
        self.assertEqual(child.spec.pid, 11)
        self.assertEqual(child.spec.endpoints, ("tcp:host=127.0.0.1:port=9",))
        self.assertEqual(self.service.started, [11])
        self.assertEqual(len(matching(self.space, process_template(11))), 1)
        child.ended(Exit(code=0))
        self.assertEqual(matching(self.space, process_template(11)), [])
        self.assertEqual(matching(self.space, eval_template("n1")), [])

    def test_finished_process_is_forgotten_by_its_space(self) -> None:
        """
        Once a process's record is taken after its clean exit, lipsd says goodbye for
        it to its own space; a crashed one, restarted, is not forgotten.
        """
        said = self.said
        publish_state(self.space, "n1", 0.1)
        self.place()
        self.spawner.last.ended(Exit(code=1))
        self.clock.advance(0)
        self.assertEqual(said, [])
        self.spawner.last.ended(Exit(code=0))
        self.assertEqual(said, [11])
        self.assertEqual(matching(self.space, process_template(11)), [])

    def test_failure_recorded(self) -> None:
        """A process that keeps crashing leaves a process-failed record, not a process
        record."""
        publish_state(self.space, "n1", 0.1)
        self.place()
        self.spawner.last.ended(Exit(code=1))
        self.clock.advance(1)
        self.spawner.last.ended(Exit(signal=9))
        (failed,) = matching(self.space, failed_template(11))
        self.assertEqual(failed[:3], (FAILED_TAG, 11, "n1"))
        self.assertEqual(failed[4], 1)
        self.assertEqual(matching(self.space, process_template(11)), [])

    def test_bad_request_dropped(self) -> None:
        """A malformed request is logged and dropped; the next one still runs."""
        self.requester.out((EVAL_TAG, "n1", 5, ("x",), "m:f", b"\xc1", ()))
        self.assertEqual(self.spawner.children, [])
        self.assertEqual(len(self.flushLoggedErrors()), 0)
        publish_state(self.space, "n1", 0.1)
        self.place()
        self.assertEqual(len(self.spawner.children), 1)

    def test_wiring_checked(self) -> None:
        """A spawner that is not an ISpawner, or a supervisor that is not one, is
        refused when the service is built."""
        connect = lambda: defer.succeed(BlockingFake(self.space))  # noqa: E731
        with self.assertRaises(TypeError):
            ProcessService(self.supervisor, object(), connect, self.clock)  # type: ignore[arg-type]
        with self.assertRaises(TypeError):
            ProcessService(self.spawner, self.spawner, connect, self.clock)  # type: ignore[arg-type]


class SupervisorDriverTests(_ServiceCase):
    """
    The supervisor's timers and children through the driver on the fake clock: what
    the core decides (see L{SupervisorTests}) happens on the reactor as it did.
    """

    policy = RestartPolicy(delay=0.1, factor=2.0, max_delay=0.5, max_restarts=10)

    def setUp(self) -> None:
        super().setUp()
        publish_state(self.space, "n1", 0.1)

    def test_restart_on_next_turn(self) -> None:
        """A crashed child is restarted at once: on the reactor's next turn, with the
        same process id, from the one delayed call the driver keeps."""
        self.place()
        self.spawner.last.ended(Exit(signal=9))
        self.assertEqual(len(self.spawner.children), 1)
        (call,) = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), self.clock.seconds())
        self.clock.advance(0)
        self.assertEqual([c.spec.pid for c in self.spawner.children], [11, 11])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_backoff_on_the_clock(self) -> None:
        """The restarts' delays on the reactor are the core's: at once, then 0.1, 0.2,
        0.4 and 0.5 s, never with more than one delayed call pending."""
        self.place()
        delays = []
        for _ in range(5):
            self.spawner.last.ended(Exit(code=1))
            (call,) = self.clock.getDelayedCalls()
            delays.append(round(call.getTime() - self.clock.seconds(), 9))
            self.clock.advance(call.getTime() - self.clock.seconds())
        self.assertEqual(delays, [0.0, 0.1, 0.2, 0.4, 0.5])
        self.assertEqual(len(self.spawner.children), 6)

    def test_two_processes_one_delayed_call(self) -> None:
        """Two processes waiting to be restarted share the driver's one delayed call,
        due at the earlier restart."""
        self.place(pid=11)
        self.place(pid=12)
        first, second = self.spawner.children
        first.ended(Exit(code=1))
        self.clock.advance(0)  # its first restart, at once
        self.spawner.last.ended(Exit(code=1))  # 11 waits 0.1 s
        self.clock.advance(0.05)
        second.ended(Exit(code=1))  # 12 restarts at once
        (call,) = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), 0.05)
        self.clock.advance(0)
        (call,) = self.clock.getDelayedCalls()
        self.assertAlmostEqual(call.getTime(), 0.1)
        self.clock.advance(0.05)
        self.assertEqual([c.spec.pid for c in self.spawner.children], [11, 12, 11, 12, 11])

    def test_spawn_error_is_a_crash(self) -> None:
        """A spawner that cannot start the child: the adapter feeds the failure back as
        the child's end, it counts as a crash, and the process fails in the end."""
        self.spawner.broken = True
        self.place()
        self.clock.pump([1.0] * 11)
        (failed,) = matching(self.space, failed_template(11))
        self.assertIn("not started: OSError: no such executable", failed[3])
        self.assertEqual(self.supervisor.processes[11].starts, 11)
        self.assertEqual(self.service.driver.stats()["errors.handler"], 0)

    def test_stop_kills_and_cancels(self) -> None:
        """Stopping the service terminates the running child, cancels a waiting
        restart and leaves no delayed call; the children's later ends change nothing."""
        self.place(pid=11)
        self.place(pid=12)
        running, crashed = self.spawner.children
        crashed.ended(Exit(code=1))
        self.successResultOf(self.service.stopService())
        self.assertTrue(running.terminated)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        running.ended(Exit(signal=15))
        self.clock.advance(10)
        self.assertEqual(len(self.spawner.children), 2)


def place_on(space: TupleSpace, node: str, pid: int) -> None:
    """Put out process C{pid}'s record and request for C{node}, as eval_request does."""
    request = EvalRequest(node, ProcessSpec(pid, "evalapp:square", ("sq", pid), packb([pid]), ()))
    client = FakeClient(space)
    client.out(request.record())
    client.out(request.as_tuple())


class ReplaceProcessesTests(SynchronousTestCase):
    """replace_processes against the real tuple-space core."""

    def setUp(self) -> None:
        self.space = TupleSpace()
        place_on(self.space, "n1", 5)
        place_on(self.space, "n1", 6)
        place_on(self.space, "n9", 7)
        # Processes are moved only while their node is declared down.
        FakeClient(self.space).out((DOWN_TAG, "n1", 3, "n2"))

    def test_moved_once_by_two_lipsd(self) -> None:
        """Two lipsd moving the processes of one down node at once, their operations
        interleaved one by one: each process gets one new record and one request, on
        an idle node; the down node's records and requests are gone; others untouched."""
        publish_state(self.space, "n2", 0.1)
        publish_state(self.space, "n3", 0.5)
        w1, w2 = FakeClient(self.space, hold=True), FakeClient(self.space, hold=True)
        d1 = defer.ensureDeferred(replace_processes(w1, "n1", ["n1", "n2", "n3"]))
        d2 = defer.ensureDeferred(replace_processes(w2, "n1", ["n2", "n3"]))
        while w1.held or w2.held:
            for w in (w1, w2):
                if w.held:
                    w.release()
        r1, r2 = self.successResultOf(d1), self.successResultOf(d2)
        self.assertEqual(sorted(p.pid for p in r1.moved + r2.moved), [5, 6])
        self.assertFalse(r1.waiting or r2.waiting)
        self.assertEqual(matching(self.space, process_template(node="n1")), [])
        self.assertEqual(matching(self.space, eval_template("n1")), [])
        records = matching(self.space, process_template(node="n2"))
        self.assertEqual(sorted(r[1] for r in records), [5, 6])
        requests = matching(self.space, eval_template("n2"))
        self.assertEqual(sorted(r[2] for r in requests), [5, 6])
        self.assertEqual(len(matching(self.space, process_template(7, "n9"))), 1)

    def test_wait_for_idle_node(self) -> None:
        """With no idle node nothing is taken and the records wait; once a node is
        idle they are moved to it."""
        publish_state(self.space, "n2", 3.0, idle=False)
        client = FakeClient(self.space)
        result = self.successResultOf(
            defer.ensureDeferred(replace_processes(client, "n1", ["n1", "n2"]))
        )
        self.assertEqual((result.moved, result.waiting), ((), True))
        self.assertEqual(len(matching(self.space, process_template(node="n1"))), 2)
        self.assertEqual(len(matching(self.space, eval_template("n1"))), 2)
        client.inp(("node", "n2", int, float, float, int, int, bool))
        publish_state(self.space, "n2", 0.1)
        result = self.successResultOf(
            defer.ensureDeferred(replace_processes(client, "n1", ["n1", "n2"]))
        )
        self.assertEqual(sorted(p.pid for p in result.moved), [5, 6])
        self.assertEqual({p.node for p in result.moved}, {"n2"})


class Lipsd:
    """One node's lipsd on the fake clock: NodeService and ProcessService, a fake
    spawner, fake clients of one shared space."""

    def __init__(
        self,
        space: NotifyingSpace,
        clock: Clock,
        name: str,
        watch: list[str],
        fence_after: float | None = None,
    ) -> None:
        self.name = name
        self.space = space
        self.sampler = FakeSampler()
        self.spawner = FakeSpawner()
        self.supervisor = Supervisor(name, policy=RestartPolicy())
        self.processes = ProcessService(
            self.supervisor,
            self.spawner,
            lambda: defer.succeed(BlockingFake(space)),
            clock,
            endpoints=("tcp:host=127.0.0.1:port=9",),
            fenced=True,
        )
        monitor = NodeMonitor(name, self.sampler, clock, interval=1.0)
        dog = Watchdog(watch, interval=1.0, misses=3)
        self.node = NodeService(
            monitor,
            lambda: defer.succeed(FakeClient(space)),
            dog,
            self.processes,
            fence_after=fence_after,
            connect_as=lambda pid: defer.succeed(FakeClient(space, pid=pid)),
        )
        self.processes.startService()
        self.node.startService()
        self.cut: FakeClient | None = None

    def pids(self) -> list[int]:
        """The process ids of the children not told to end."""
        return [c.spec.pid for c in self.spawner.children if not c.terminated]

    def kill(self) -> None:
        """SIGKILL: lipsd says nothing more; its children end with it (orphaned)."""
        node = self.node
        assert node._loop is not None and node._guard is None
        node._loop.stop()
        node._loop = None
        node._client = None
        children = [c for c in self.spawner.children if not c.terminated]
        self.processes.fenced = False
        assert self.processes._loop is not None
        self.processes._loop.cancel()
        self.processes.stopService()
        for c in children:
            c.ended(Exit(code=75))

    def partition(self) -> None:
        """lipsd's reports stop going in (its operations are held), its children run."""
        self.cut = FakeClient(self.space, hold=True)
        self.node._client = self.cut

    def heal(self) -> None:
        """The held operations go in, in order, and the round finishes."""
        cut = self.cut
        assert cut is not None
        while cut.held:
            cut.release()
        cut.hold = False

    def stop(self) -> list[defer.Deferred[Any]]:
        done = []
        if self.node.running:
            done.append(self.node.stopService())
        if self.processes.running:
            done.append(self.processes.stopService())
        return done


class FailoverTests(SynchronousTestCase):
    """Down nodes' processes restarted elsewhere by lipsd services on a fake clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.space = NotifyingSpace()
        self.nodes: list[Lipsd] = []

    def start(self, name: str, watch: list[str], fence_after: float | None = None) -> Lipsd:
        node = Lipsd(self.space, self.clock, name, watch, fence_after)
        self.nodes.append(node)
        return node

    def tearDown(self) -> None:
        for n in self.nodes:
            for d in n.stop():
                self.successResultOf(d)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def place(self, node: str, pid: int) -> None:
        self.successResultOf(
            defer.ensureDeferred(
                eval_request(
                    FakeClient(self.space), ("sq", 3), "evalapp:square", 3, nodes=[node], pid=pid
                )
            )
        )

    def test_down_node_processes_restarted_once(self) -> None:
        """n1 dies with two processes; n2 and n3 both watch it: each process is
        restarted exactly once, with its process id, on one of them, and its record
        names that node."""
        n1 = self.start("n1", ["n2", "n3"])
        n2 = self.start("n2", ["n1", "n3"])
        n3 = self.start("n3", ["n1", "n2"])
        self.place("n1", 21)
        self.place("n1", 22)
        self.assertEqual(sorted(n1.pids()), [21, 22])
        n1.kill()
        self.clock.pump([0.5] * 20)
        self.assertEqual(sorted(n2.pids() + n3.pids()), [21, 22])
        self.assertEqual(len(n2.node.moved) + len(n3.node.moved), 2)
        for pid in (21, 22):
            (record,) = matching(self.space, process_template(pid))
            self.assertIn(pid, {"n2": n2, "n3": n3}[record[2]].pids())
        self.assertEqual(matching(self.space, eval_template("n1")), [])

    def test_waits_for_idle_node(self) -> None:
        """With no idle node the down node's processes wait (their records still name
        it); once a node is idle they are restarted there."""
        n1 = self.start("n1", ["n2"])
        n2 = self.start("n2", ["n1"])
        self.place("n1", 31)
        n2.sampler.current = BUSY
        self.clock.advance(1.0)
        n1.kill()
        self.clock.pump([0.5] * 20)
        self.assertEqual(n2.pids(), [])
        self.assertEqual(len(matching(self.space, process_template(31, "n1"))), 1)
        self.assertIn("n1", n2.node._waiting)
        n2.sampler.current = FakeSampler().current
        self.clock.pump([0.5] * 4)
        self.assertEqual(n2.pids(), [31])
        self.assertEqual(len(matching(self.space, process_template(31, "n2"))), 1)

    def test_fenced_node_does_not_run_moved_processes(self) -> None:
        """A node whose reports stop going in stops its children before it can be
        declared down; its process is restarted on n2; when its reports go in again
        it runs nothing (the record names n2): never two children of one id at once."""
        n1 = self.start("n1", ["n2"], fence_after=2.5)
        n2 = self.start("n2", ["n1"], fence_after=2.5)
        self.place("n1", 41)
        (child,) = n1.spawner.children
        n1.partition()
        running_together = []
        for _ in range(12):
            self.clock.advance(0.5)
            if n2.pids() and n1.pids():
                running_together.append(self.clock.seconds())
            if child.terminated and n1.supervisor.terminating(child.spec.pid):
                child.ended(Exit(signal=15))
        self.assertTrue(child.terminated)
        self.assertEqual(running_together, [])
        self.assertEqual(n2.pids(), [41])
        n1.heal()
        self.clock.pump([0.5] * 6)
        self.assertEqual(n1.pids(), [])
        self.assertEqual(len(n1.spawner.children), 1)
        self.assertEqual(n2.pids(), [41])
        self.assertEqual(n1.node.taken_in, 1)
        (record,) = matching(self.space, process_template(41))
        self.assertEqual(record[2], "n2")

    def test_fence_does_not_wait_for_a_slow_reply(self) -> None:
        """The fence counts from when the last report was sent, not from when its
        reply came: a report applied at once but answered 1.2 s later, then a cut, and
        the node still stops its child before a watchdog can declare it down."""
        n1 = self.start("n1", ["n2"], fence_after=2.5)
        n2 = self.start("n2", ["n1"], fence_after=2.5)
        self.place("n1", 81)
        (child,) = n1.spawner.children
        self.clock.advance(0.5)
        lagging = n1.node._client = LaggingThenCut(self.space, self.clock, lag=1.2, ops=5)
        running_together = []
        for _ in range(100):
            self.clock.advance(0.1)
            if lagging.reported is not None and lagging.left == 0:
                # The round's report is in: the lease it gave starts no later than it.
                self.assertLessEqual(n1.node._last_report, lagging.reported)
            if n2.pids() and n1.pids():
                running_together.append(self.clock.seconds())
            if child.terminated and n1.supervisor.terminating(child.spec.pid):
                child.ended(Exit(signal=15))
        self.assertTrue(child.terminated)
        self.assertEqual(running_together, [])
        self.assertEqual(n2.pids(), [81])

    def test_declared_down_node_stops_moved_processes(self) -> None:
        """Without the fence, a node that finds itself declared down stops the
        children whose processes were moved, and does not start them again."""
        n1 = self.start("n1", ["n2"])
        n2 = self.start("n2", ["n1"])
        self.place("n1", 51)
        n1.partition()
        self.clock.pump([0.5] * 12)
        self.assertEqual(n2.pids(), [51])
        n1.heal()
        self.assertEqual(n1.pids(), [])
        self.assertEqual(len(n1.spawner.children), 1)
        n1.spawner.last.ended(Exit(signal=15))
        self.clock.pump([0.5] * 4)
        self.assertEqual(n1.pids(), [])
        self.assertEqual(n2.pids(), [51])

    def test_lipsd_killed_while_moving(self) -> None:
        """The lipsd moving a down node's processes is killed part-way (at each step
        in turn; a process it had moved already may have started): started again, it
        finishes the move before anything else, and each process runs once, on it,
        with one record."""
        for at in range(1, 12):
            self.space = NotifyingSpace()
            self.nodes = []
            n1 = self.start("n1", ["n2"])
            n2 = self.start("n2", ["n1"])
            self.place("n1", 71)
            self.place("n1", 72)
            before = n2.node._sections
            assert isinstance(before, FakeClient)
            dying = Killed(self.space, before.pid, at=at, applied=at % 2 == 0)
            dying.event = before.event
            n2.node._sections = dying
            n1.kill()
            self.clock.pump([0.5] * 20)
            self.assertTrue(dying.dead, f"killed at {at}")
            n2.kill()
            again = self.start("n2", ["n1"])
            self.clock.pump([0.5] * 4)
            self.assertEqual(sorted(again.pids()), [71, 72], f"killed at {at}")
            for pid in (71, 72):
                records = matching(self.space, process_template(pid))
                self.assertEqual([r[2] for r in records], ["n2"], f"killed at {at}")
            self.assertEqual(matching(self.space, eval_template("n1")), [])
            for n in self.nodes:
                for d in n.stop():
                    self.successResultOf(d)

    def test_records_still_naming_node_run_again(self) -> None:
        """A lipsd restarted before it was declared down runs again the processes
        whose records still name its node, once each, and takes their requests."""
        n1 = self.start("n1", [])
        self.place("n1", 61)
        n1.kill()
        place_on(self.space, "n1", 62)
        again = self.start("n1", [])
        self.assertEqual(sorted(again.pids()), [61, 62])
        self.assertEqual(matching(self.space, eval_template("n1")), [])
        self.assertEqual(sorted(again.processes.adopted), [61, 62])


class NotifyingSpace(TupleSpace):
    """A tuple space that answers the waiting takes of L{BlockingFake} clients."""

    def __init__(self) -> None:
        super().__init__()
        self.answering: dict[tuple[int, int], defer.Deferred[Any]] = {}

    def out(self, pid: int, event: int, values: Any) -> list[Completion]:
        done = super().out(pid, event, values)
        for c in done[1:]:
            d = self.answering.pop((c.pid, c.event), None)
            if d is not None and c.status is Status.MATCHED:
                d.callback(c.value)
        return done


class LaggingThenCut(FakeClient):
    """
    A client whose next C{ops} operations are applied at once, the answer to an
    C{out} (a report) coming only C{lag} seconds later, and whose later operations never
    reach the space (a cut).
    """

    def __init__(self, space: TupleSpace, clock: Clock, lag: float, ops: int) -> None:
        super().__init__(space)
        self.clock = clock
        self.lag = lag
        self.left = ops
        self.lagging = False
        self.reported: float | None = None

    def _op(self, apply: Callable[[int], Any]) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        if self.left == 0:
            return d
        self.left -= 1
        self.event += 1
        result = apply(self.event)
        if self.lagging:
            self.clock.callLater(self.lag, d.callback, result)
        else:
            d.callback(result)
        return d

    def out(self, values: Sequence[Any]) -> defer.Deferred[None]:
        self.lagging = True
        self.reported = self.clock.seconds()
        try:
            return super().out(values)
        finally:
            self.lagging = False


class BlockingFake(FakeClient):
    """A fake client with a blocking in_, answered by later outs."""

    space: NotifyingSpace

    def in_(self, template: Any, timeout: float | None = None) -> defer.Deferred[Any]:
        self.event += 1
        key = (self.pid, self.event)
        done = self.space.take(self.pid, self.event, Kind.IN, make_template(template))
        if done.status is Status.MATCHED:
            return defer.succeed(done.value)

        def cancel(d: defer.Deferred[Any]) -> None:
            self.space.answering.pop(key, None)
            self.space.cancel(*key)

        d: defer.Deferred[Any] = defer.Deferred(cancel)
        self.space.answering[key] = d
        return d


class ChildTests(SynchronousTestCase):
    def test_load(self) -> None:
        """Targets are imported by name; malformed names and non-callables are refused."""
        self.assertIs(load("os.path:join"), __import__("os").path.join)
        with self.assertRaises(ValueError):
            load("os.path:sep")
        with self.assertRaises(ValueError):
            load("__import__('os').system")

    def test_input(self) -> None:
        """The child reads the fields and the decoded arguments from what lipsd writes."""
        self.assertEqual(read_input(child_input(SPEC)), (("sq", 7), (7,)))
        self.assertEqual(decode_args(packb([])), ())
        with self.assertRaises(ValueError):
            read_input(packb([1, 2, 3]))


class OptionsTests(SynchronousTestCase):
    def cluster(self, role: str = "fixserver") -> Path:
        return write_cluster(Path(self.mktemp()), [ClusterMember("s1", 1, 7201, 7021, role=role)])

    def test_process_options(self) -> None:
        """The application endpoints come from --app-config and --app; the restart
        thresholds make the restart policy."""
        o = node_tap.Options()
        o.parseOptions(
            [
                "--config",
                str(self.cluster()),
                "--name",
                "n1",
                "--app",
                "tcp:host=10.0.0.1:port=7010",
                "--app-config",
                str(self.cluster("msgserver")),
                "--max-restarts",
                "2",
                "--restart-delay",
                "0.05",
                "--restart-window",
                "30",
                "--pythonpath",
                "/a:/b",
            ]
        )
        self.assertEqual(o["app"][0], "tcp:host=10.0.0.1:port=7010")
        self.assertEqual(len(o["app"]), 2)
        self.assertEqual(o["restart"], RestartPolicy(delay=0.05, max_restarts=2, window=30.0))
        self.assertEqual(o["pythonpath"], ("/a", "/b"))

    def test_refused(self) -> None:
        """Bad thresholds are usage errors."""
        for extra in (["--max-restarts", "-1"], ["--restart-window", "0"]):
            with self.assertRaises(UsageError):
                node_tap.Options().parseOptions(
                    ["--config", str(self.cluster()), "--name", "n1", *extra]
                )

    def test_make_service(self) -> None:
        """makeService runs a ProcessService beside the NodeService."""
        o = node_tap.Options()
        o.parseOptions(["--config", str(self.cluster()), "--name", "n1"])
        services = list(node_tap.makeService(o, reactor=Clock()))
        (proc,) = [s for s in services if isinstance(s, ProcessService)]
        self.assertEqual(proc.supervisor.node, "n1")


class AllowListTests(_ServiceCase):
    """Only the targets the operator allowed run; a refusal is on record for the submitter."""

    def setUp(self) -> None:
        super().setUp()
        self.service.allow = ("evalapp:*",)

    def test_target_not_allowed_is_refused_on_record(self) -> None:
        """A request for a target outside the list starts nothing and leaves its reason."""
        publish_state(self.space, "n1", 0.1)
        self.place(target="os:system", pid=12)
        self.assertEqual(self.spawner.children, [])
        (failed,) = matching(self.space, failed_template(12))
        self.assertEqual(failed[3], "os:system is not allowed on node n1 (--allow)")
        self.assertEqual(matching(self.space, process_template(12)), [])
        self.place(pid=13)
        self.assertEqual([c.spec.pid for c in self.spawner.children], [13])
