"""
Tests for the common ARMORs: the Execution ARMOR (a task as a supervised child: its
start, livelock, restarts composed from L{lips.node.Supervisor}, its result reported
until acknowledged, escalation past its threshold, checkpoints), the Checkpoint
service and ARMOR, the Heartbeat ARMOR (one verdict per node, only after several
misses) and the Initialization ARMOR (a survey fed in by its host).  Driven directly
with explicit C{now}; two through L{lips.kernel.Driver} on a L{task.Clock}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from lips.armor import Message, armor_id
from lips.armor.checkpoint import (
    CHECKPOINT_TAG,
    CHECKPOINT_TAKEN,
    RECOVER,
    RECOVERED,
    TAKE_CHECKPOINT,
    CheckpointArmor,
    RecoverCheckpoint,
    TakeCheckpoint,
)
from lips.armor.execution import (
    EXEC_FAILED,
    EXEC_STATUS,
    REPORT_STATUS,
    TASK_RESULT,
    TASK_RESULT_ACK,
    Execution,
    ExecutionTimer,
    TaskRecovered,
    TaskRef,
)
from lips.armor.ftm import (
    HEARTBEAT,
    HEARTBEAT_ACK,
    NODE_DOWN,
    SURVEY,
    SURVEY_ACK,
    WATCH,
    HeartbeatAck,
    NodeRef,
    Survey,
    Watch,
)
from lips.armor.heartbeat import HeartbeatArmor, HeartbeatMonitor
from lips.armor.initialization import InitializationArmor, local_survey
from lips.kernel import CancelTimer, Deliver, Driver, Kill, Send, Spawn, StartTimer
from lips.node import Exit, ProcessSpec, SupervisorTimer
from lips.tuples import ANY, unpackb
from tests.unit.test_ftm import BLOCKS, Host, fenced, msg, of_type, one

EXEC = armor_id("exec.job7.t1")
SM = armor_id("sm.job7")


def execution(checkpoint: bool = False, **kw: Any) -> Host:
    armor = Execution(
        EXEC,
        SM,
        application="job7",
        task="t1",
        target="app.tasks:square",
        args=[3, "x"],
        timeout=2.0,
        restarts=2,
        delay=0.1,
        checkpoint=checkpoint,
        node="n2",
        incarnation=3,
        blocks=BLOCKS,
        composition={"checkpoint": "checkpoint"} if checkpoint else None,
        **kw,
    )
    return Host(armor)


def spawned(host: Host) -> list[Spawn[ProcessSpec]]:
    found = [e for e in host.effects if isinstance(e, Spawn)]
    host.effects = [e for e in host.effects if not isinstance(e, Spawn)]
    return found


def restart(host: Host) -> float:
    """Fire the supervisor's pending restart; when it was due."""
    [due] = [
        e
        for e in host.effects
        if isinstance(e, StartTimer)
        and isinstance(e.key, tuple)
        and e.key[0] is SupervisorTimer.RESTART
    ][-1:]
    host.effects.remove(due)
    feed(host, host.armor.timer, due.key, due.at)
    return due.at


def feed(host: Host, method: Any, *args: Any) -> list[Message]:
    method(*args)
    return host.settle(args[-1])


class ExecutionTests(SynchronousTestCase):
    def test_start(self) -> None:
        """It starts the task as a supervised child, with a livelock deadline."""
        host = execution()
        host.start(0.0)
        [spawn] = spawned(host)
        spec = spawn.spec
        self.assertEqual(
            (spec.target, spec.fields, unpackb(spec.args)),
            ("app.tasks:square", ("result", "job7", "t1"), (3, "x")),
        )
        self.assertEqual(spec.pid, host.armor.pid)
        self.assertIn(StartTimer((ExecutionTimer.LIVELOCK, spawn.handle), 2.0), host.effects)

    def test_livelock(self) -> None:
        """No progress within the timeout: the child is killed, and the supervisor restarts it."""
        host = execution()
        armor = host.armor
        host.start(0.0)
        [first] = spawned(host)
        feed(host, armor.progress, first.handle, 1.5)
        self.assertEqual(
            host.effects[-1], StartTimer((ExecutionTimer.LIVELOCK, first.handle), 3.5)
        )
        host.effects.clear()
        feed(host, armor.timer, (ExecutionTimer.LIVELOCK, first.handle), 3.5)
        self.assertEqual([e for e in host.effects if isinstance(e, Kill)], [Kill(first.handle)])
        self.assertEqual(armor.livelocks, 1)
        feed(host, armor.ended, first.handle, Exit(signal=15), 3.6)
        self.assertEqual(restart(host), 3.6)  # at once, the first time
        [second] = spawned(host)
        self.assertNotEqual(second.handle, first.handle)
        self.assertEqual(armor.running, second.handle)

    def test_result_until_acknowledged(self) -> None:
        """A clean exit: its result goes to the manager, again and again until acknowledged."""
        host = execution()
        armor = host.armor
        host.start(0.0)
        [child] = spawned(host)
        feed(host, armor.result, child.handle, {"v": 9}, 1.0)
        out = feed(host, armor.ended, child.handle, Exit(code=0), 1.1)
        sent = one(out, TASK_RESULT)
        self.assertEqual(
            (sent.destination, sent.value()),
            (SM, {"task": "t1", "result": {"v": 9}, "node": "n2", "incarnation": 3}),
        )
        self.assertIn(CancelTimer((ExecutionTimer.LIVELOCK, child.handle)), host.effects)
        one(host.fire("retry", 1.6), TASK_RESULT)
        host.receive(msg(TASK_RESULT_ACK, SM, EXEC, TaskRef("t1")), 1.7)
        self.assertTrue(armor.acknowledged)
        self.assertEqual(host.fire("retry", 2.5), [])
        # Asked for its status (a new manager): it says so and sends the result again.
        out = host.receive(msg(REPORT_STATUS, SM, EXEC, TaskRef("t1")), 3.0)
        self.assertEqual(one(out, EXEC_STATUS).value()["state"], "finished")
        one(out, TASK_RESULT)

    def test_escalation(self) -> None:
        """Past its threshold of local restarts, it tells its manager."""
        host = execution()
        armor = host.armor
        host.start(0.0)
        [child] = spawned(host)
        feed(host, armor.ended, child.handle, Exit(code=1), 0.5)
        self.assertEqual(restart(host), 0.5)  # at once, the first time
        [child] = spawned(host)
        feed(host, armor.ended, child.handle, Exit(code=1), 1.0)
        self.assertEqual(spawned(host), [])
        self.assertEqual(restart(host), 1.1)  # then after the policy's delay
        [child] = spawned(host)
        out = feed(host, armor.ended, child.handle, Exit(code=1), 1.5)
        failed = one(out, EXEC_FAILED)
        self.assertEqual(
            (failed.destination, failed.value()["node"], failed.value()["incarnation"]),
            (SM, "n2", 3),
        )
        self.assertIn("3 crashes", failed.value()["reason"])
        self.assertEqual(armor.final[0] if armor.final else None, "failed")
        out = host.receive(msg(REPORT_STATUS, SM, EXEC, TaskRef("t1")), 2.0)
        self.assertEqual(one(out, EXEC_STATUS).value()["state"], "failed")

    def test_checkpoint_and_recover(self) -> None:
        """The task's checkpoints go to its application's space; recover() reads the last."""
        host = execution(checkpoint=True)
        armor = host.armor
        host.start(0.0)
        [child] = spawned(host)
        feed(host, armor.recover, child.handle, 0.1)
        self.assertIn(Deliver(TaskRecovered(child.handle, None)), host.effects)
        feed(host, armor.take_checkpoint, child.handle, b"one", 0.5)
        feed(host, armor.take_checkpoint, child.handle, b"two", 0.9)
        space = host.app_spaces["job7"]
        self.assertEqual(
            space.scan(CHECKPOINT_TAG, ANY, ANY, ANY, ANY),
            [(CHECKPOINT_TAG, "job7", "t1", 2, b"two")],
        )
        self.assertEqual(armor.counters["checkpoints.stored"], 2)
        feed(host, armor.ended, child.handle, Exit(signal=9), 1.0)
        restart(host)
        [restarted] = spawned(host)
        feed(host, armor.recover, restarted.handle, 1.1)
        self.assertIn(Deliver(TaskRecovered(restarted.handle, b"two")), host.effects)

    def test_no_checkpointing(self) -> None:
        """A task that does not checkpoint recovers nothing; its checkpoints are ignored."""
        host = execution()
        armor = host.armor
        host.start(0.0)
        [child] = spawned(host)
        feed(host, armor.take_checkpoint, child.handle, b"x", 0.1)
        feed(host, armor.recover, child.handle, 0.2)
        self.assertIn(Deliver(TaskRecovered(child.handle, None)), host.effects)
        self.assertEqual(host.app_spaces, {})

    def test_configured_by_name(self) -> None:
        """It is made from an install's configuration, which is checked."""
        config = {
            "application": "job7",
            "task": "t1",
            "target": "a.b:c",
            "args": [1],
            "timeout": 5,
            "node": "n4",
            "incarnation": 2,
            "checkpoint": True,
            "blocks": {"checkpoint": "checkpoint"},
        }
        armor = Execution.from_config(EXEC, SM, config, BLOCKS)
        self.assertEqual(
            (armor.node, armor.incarnation, armor.timeout, armor.checkpointing),
            ("n4", 2, 5.0, True),
        )
        self.assertIn("checkpoint", armor.slots())
        from lips.armor import MessageError

        self.assertRaises(
            MessageError,
            Execution.from_config,
            EXEC,
            SM,
            {"task": "t1", "target": "a.b:c"},
            BLOCKS,
        )
        self.assertRaises(
            MessageError, Execution.from_config, EXEC, SM, {**config, "timeout": 0}, BLOCKS
        )
        self.assertRaises(
            MessageError, Execution.from_config, EXEC, SM, {**config, "colour": 1}, BLOCKS
        )

    def test_under_the_driver(self) -> None:
        """On a clock: a silent child is killed at its deadline and started again."""
        clock = task.Clock()
        armor = execution().armor
        children: list[int] = []
        driver = Driver(
            armor,
            clock,
            {
                Send: lambda e: None,
                Spawn: lambda e: children.append(e.handle),
                Kill: lambda e: driver.input(armor.ended, e.handle, Exit(signal=15)),
                Deliver: lambda e: None,
            },
        )
        driver.input(armor.start)
        self.assertEqual(len(children), 1)
        clock.advance(1.9)
        self.assertEqual(len(children), 1)
        clock.advance(0.2)
        self.assertEqual(len(children), 2)
        driver.stop()
        self.assertEqual(clock.getDelayedCalls(), [])


class CheckpointArmorTests(SynchronousTestCase):
    def test_serves_any_armor(self) -> None:
        """A Checkpoint ARMOR on its own takes and recovers checkpoints for whoever asks."""
        host = Host(CheckpointArmor("checkpoint.job7.1", SM, node="n2", blocks=BLOCKS))
        host.start(0.0)
        out = host.receive(
            msg(TAKE_CHECKPOINT, EXEC, "checkpoint.job7.1", TakeCheckpoint("job7", "t1", 4, b"s")),
            1.0,
        )
        taken = one(out, CHECKPOINT_TAKEN)
        self.assertEqual(
            (taken.destination, taken.value()), (EXEC, {"task": "t1", "seq": 4, "ok": True})
        )
        out = host.receive(
            msg(RECOVER, EXEC, "checkpoint.job7.1", RecoverCheckpoint("job7", "t1")), 2.0
        )
        self.assertEqual(one(out, RECOVERED).value(), {"task": "t1", "seq": 4, "state": b"s"})
        out = host.receive(
            msg(RECOVER, EXEC, "checkpoint.job7.1", RecoverCheckpoint("job7", "t9")), 2.0
        )
        self.assertEqual(one(out, RECOVERED).value(), {"task": "t9", "seq": 0, "state": None})


def heartbeat(**kw: Any) -> Host:
    config: dict[str, Any] = {
        "nodes": ("n1", "n2"),
        "interval": 1.0,
        "misses": 2,
        "epoch": 1,
        "blocks": BLOCKS,
        **kw,
    }
    host = Host(HeartbeatArmor("heartbeat.e1-1", "ftm", **config))
    host.start(0.0)
    return host


def ack(host: Host, node: str, now: float) -> None:
    host.receive(msg(HEARTBEAT_ACK, f"daemon.{node}", host.armor.id, HeartbeatAck(1, node)), now)


class HeartbeatTests(SynchronousTestCase):
    def test_beats(self) -> None:
        """Every interval, a heartbeat to each watched daemon."""
        host = heartbeat()
        out = host.fire("beat", 1.0)
        self.assertEqual(
            [(m.type, m.destination, m.value()) for m in out],
            [(HEARTBEAT, "daemon.n1", {"seq": 1}), (HEARTBEAT, "daemon.n2", {"seq": 2})],
        )
        self.assertIn(
            StartTimer(host.armor.block("heartbeat").context._key("beat"), 2.0), host.effects
        )

    def test_one_verdict_after_several_misses(self) -> None:
        """A node is down only after several misses; one verdict; answered nodes are fine."""
        host = heartbeat()
        monitor = host.armor.block("heartbeat")
        assert isinstance(monitor, HeartbeatMonitor)
        host.fire("beat", 1.0)
        ack(host, "n1", 1.1)
        self.assertEqual(of_type(host.fire("beat", 2.0), NODE_DOWN), [])
        ack(host, "n1", 2.1)
        out = host.fire("beat", 3.0)
        verdict = one(out, NODE_DOWN)
        self.assertEqual((verdict.destination, verdict.value()["node"]), ("ftm", "n2"))
        self.assertEqual([m.destination for m in of_type(out, HEARTBEAT)], ["daemon.n1"])
        ack(host, "n1", 3.1)
        for t in (4.0, 5.0, 6.0):
            out = host.fire("beat", t)
            ack(host, "n1", t)
            self.assertEqual(of_type(out, NODE_DOWN), [])
        self.assertEqual(monitor.verdicts, ["n2"])
        # Watched again (the node joined anew): heartbeated again.
        host.receive(fenced(WATCH, "ftm", host.armor.id, Watch("n2"), 1), 6.5)
        self.assertIn("daemon.n2", [m.destination for m in host.fire("beat", 7.0)])

    def test_watch_only_from_its_manager(self) -> None:
        """Only its manager says what to watch; a late answer from a forged daemon is ignored."""
        host = heartbeat()
        host.receive(msg(WATCH, "sm.job7", host.armor.id, Watch("n9")), 0.5)
        self.assertEqual(host.armor.counters["messages.refused"], 1)
        host.receive(fenced(WATCH, "ftm", host.armor.id, Watch("n1", False), 1), 0.6)
        self.assertEqual([m.destination for m in host.fire("beat", 1.0)], ["daemon.n2"])

    def test_new_ftm(self) -> None:
        """A newer FTM becomes its manager: verdicts go there; the old one's are refused."""
        host = heartbeat(nodes=("n2",))
        host.receive(fenced(WATCH, "ftm.b-e1-1", host.armor.id, Watch("n3"), 2), 0.5)
        self.assertEqual(host.armor.manager, "ftm.b-e1-1")
        host.receive(fenced(WATCH, "ftm", host.armor.id, Watch("n4"), 1), 0.6)
        self.assertEqual(host.armor.counters["messages.fenced"], 1)
        for t in (1.0, 2.0):
            host.fire("beat", t)
        verdicts = of_type(host.fire("beat", 3.0), NODE_DOWN)
        self.assertEqual(
            sorted((m.destination, m.value()["node"]) for m in verdicts),
            [("ftm.b-e1-1", "n2"), ("ftm.b-e1-1", "n3")],
        )

    def test_under_the_driver(self) -> None:
        """On a clock: heartbeats every interval, the verdict after the misses."""
        clock = task.Clock()
        armor = HeartbeatArmor(
            "heartbeat.1", "ftm", nodes=("n1",), interval=1.0, misses=2, blocks=BLOCKS
        )
        sent: list[Message] = []
        driver = Driver(armor, clock, {Send: lambda e: sent.append(e.message)})
        driver.input(armor.start)
        clock.advance(1.0)
        clock.advance(1.0)
        self.assertEqual([m.type for m in sent], [HEARTBEAT, HEARTBEAT])
        clock.advance(1.0)
        self.assertEqual(sent[-1].type, NODE_DOWN)
        driver.stop()
        self.assertEqual(clock.getDelayedCalls(), [])


class InitializationTests(SynchronousTestCase):
    def test_survey_until_acknowledged(self) -> None:
        """The host's survey goes to the FTM, again until it acknowledges it."""
        host = Host(
            InitializationArmor(
                "init.n2-e1-1", "ftm", retry=0.5, node="n2", epoch=1, blocks=BLOCKS
            )
        )
        self.assertEqual(host.start(0.0), [])
        survey = Survey("n2", "Linux 6", "x86_64", 8, 1 << 34)
        out = feed(host, host.armor.surveyed, survey, 0.1)
        sent = one(out, SURVEY)
        self.assertEqual((sent.destination, Survey.from_message(sent)), ("ftm", survey))
        one(host.fire("retry", 0.6), SURVEY)
        host.receive(fenced(SURVEY_ACK, "ftm", host.armor.id, NodeRef("n2"), 1), 0.7)
        self.assertTrue(host.armor.acknowledged)
        self.assertEqual(host.fire("retry", 1.2), [])
        self.assertRaises(TypeError, host.armor.surveyed, {"node": "n2"}, 1.3)

    def test_local_survey(self) -> None:
        """The host's side: this machine's OS, hardware, CPUs and memory."""
        survey = local_survey("n1")
        self.assertEqual(survey.node, "n1")
        self.assertTrue(survey.os)
        self.assertGreater(survey.cpus, 0)
        self.assertGreater(survey.memory, 0)
