"""
Tests for an Execution ARMOR's real task children: the task API and its control
channel's codec (L{lips.armor.task}), the task host (L{lips.armor._tasks.TaskHost})
running real C{python -m lips.armor.task} children of the test targets in
C{tests.unit._tasktargets} for a real L{Execution} under a L{Driver} on the reactor,
and an ARMOR process (C{python -m lips.armor.process}) that runs one against a fake
daemon's socket.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgpack
from twisted.internet import defer
from twisted.internet import reactor as global_reactor
from twisted.internet.error import ProcessTerminated
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

import tests
from lips.armor import (
    TOKEN_SIZE,
    ArmorHello,
    ArmorSpec,
    Frame,
    FrameDecoder,
    FrameKind,
    Message,
    armor_id,
    encode_frame,
    task,
)
from lips.armor import process as armor_process
from lips.armor._tasks import TaskHost
from lips.armor.execution import EXEC_FAILED, TASK_RESULT, Execution
from lips.armor.space import SPACE_KIND, SPACE_REPLY, SpaceRequest, TableSpace
from lips.kernel import Driver, Kill, Send
from lips.supervisor import Exit
from lips.tuples import packb
from tests.unit.test_ftm import BLOCKS

reactor: Any = global_reactor

EXEC = armor_id("exec.job7.t1")
SM = armor_id("sm.job7")
TARGETS = "tests.unit._tasktargets"
#: Where the test targets are imported from, in the children.
ROOT = str(Path(tests.__file__).resolve().parent.parent)
#: The longest a test waits for its children.
PATIENCE = 20.0


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    path = [ROOT, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(path)
    return env


async def until(what: Callable[[], object], timeout: float = PATIENCE) -> None:
    """Wait (on the reactor) until C{what()} is true."""
    deadline = time.monotonic() + timeout
    while not what():
        if time.monotonic() > deadline:
            raise AssertionError(f"not so within {timeout} s")
        await deferLater(reactor, 0.02, lambda: None)


# -- the task API and its codec -------------------------------------------------------------


class TaskAPITests(SynchronousTestCase):
    def test_outside_a_task_child(self) -> None:
        """The task API raises a clear RuntimeError outside a task child."""
        for call in (task.progress, lambda: task.take_checkpoint(b"s"), task.recover):
            e = self.assertRaises(RuntimeError, call)
            self.assertIn("not in a task child", str(e))

    def test_child_refuses_to_run_by_hand(self) -> None:
        """Run by hand (no control channel), the child says why and exits USAGE."""
        done = subprocess.run(
            [sys.executable, "-m", "lips.armor.task"],
            check=False,
            input=b"",
            capture_output=True,
            env=child_env(),
            timeout=PATIENCE,
        )
        self.assertEqual(done.returncode, task.USAGE)
        self.assertIn(b"not started by an ARMOR", done.stderr)


class ControlCodecTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        """What one side encodes the other decodes, however the bytes are split."""
        sent = [
            ("result", {"a": [1, 2], "b": b"x"}),
            ("progress",),
            ("checkpoint", b"\x00state"),
            ("recover",),
        ]
        data = b"".join(task.encode_control(*m) for m in sent)
        whole = task.ControlDecoder(task.FROM_TASK).feed(data)
        self.assertEqual(whole, [("result", {"a": (1, 2), "b": b"x"}), *sent[1:]])
        decoder = task.ControlDecoder(task.FROM_TASK)
        bytewise = [m for i in range(len(data)) for m in decoder.feed(data[i : i + 1])]
        self.assertEqual(bytewise, whole)
        answers = task.ControlDecoder(task.FROM_HOST)
        self.assertEqual(
            answers.feed(
                task.encode_control("recovered", b"s") + task.encode_control("recovered", None)
            ),
            [("recovered", b"s"), ("recovered", None)],
        )

    def test_size_bound(self) -> None:
        """Neither side sends nor accepts a message over MAX_CONTROL_SIZE."""
        big = b"x" * task.MAX_CONTROL_SIZE
        self.assertRaises(task.ControlError, task.encode_control, "checkpoint", big)
        decoder = task.ControlDecoder(task.FROM_TASK)
        header = (task.MAX_CONTROL_SIZE + 1).to_bytes(4, "big")
        e = self.assertRaises(task.ControlError, decoder.feed, header)
        self.assertIn("over", str(e))
        # It refuses everything after, even a good message.
        self.assertRaises(task.ControlError, decoder.feed, task.encode_control("progress"))
        just = task.encode_control("checkpoint", b"x" * (task.MAX_CONTROL_SIZE - 32))
        self.assertEqual(len(task.ControlDecoder(task.FROM_TASK).feed(just)), 1)

    def test_malformed(self) -> None:
        """Malformed, unexpected or ill-typed messages are refused, each clearly."""

        def framed(body: bytes) -> bytes:
            return len(body).to_bytes(4, "big") + body

        def pack(value: object) -> bytes:
            return framed(msgpack.packb(value, use_bin_type=True))

        for data, why in [
            (framed(b"\xc1"), "not msgpack"),
            (framed(packb(["progress"]) + b"\x00"), "not msgpack"),
            (pack({"progress": 1}), "starts with its name"),
            (pack([]), "starts with its name"),
            (pack(["launch"]), "unexpected"),
            (pack(["recovered", None]), "unexpected"),
            (pack(["progress", 1]), "takes 0 arguments"),
            (pack(["checkpoint", "text"]), "bad argument"),
            (framed(msgpack.packb(["result", msgpack.ExtType(1, b"x")])), "ext"),
        ]:
            e = self.assertRaises(
                task.ControlError, task.ControlDecoder(task.FROM_TASK).feed, data
            )
            self.assertIn(why, str(e))
        self.assertRaises(task.ControlError, task.encode_control, "result", object())
        self.assertRaises(
            task.ControlError, task.ControlDecoder(task.FROM_HOST).feed, pack(["recover"])
        )

    def test_input(self) -> None:
        """The child's input round-trips; a malformed one is refused."""
        data = task.task_input(f"{TARGETS}:answer", packb([1, "a"]))
        self.assertEqual(task.read_input(data), (f"{TARGETS}:answer", (1, "a")))
        for bad in [
            b"\xc1",
            msgpack.packb({"target": "a.b:c"}),
            msgpack.packb({"target": "a.b:c", "args": [1]}),
            task.task_input("a.b:c", packb({"x": 1})),
            task.task_input("os.system; rm", packb([])),
            task.task_input("a.b:c", b"\xc1"),
        ]:
            self.assertRaises(ValueError, task.read_input, bad)
        self.assertTrue(callable(task.load(f"{TARGETS}:answer")))
        self.assertRaises(ValueError, task.load, "os:sep")


# -- real children, for a real Execution ARMOR ------------------------------------------------


class Rig:
    """
    A real Execution ARMOR for task C{target} under a L{Driver} on the reactor, its
    children run by a L{TaskHost}; its application's space answered from a
    L{TableSpace}; what else it sends is kept in C{sent}, and the inputs its children
    cause in C{inputs}.
    """

    def __init__(
        self,
        case: TestCase,
        target: str,
        args: Sequence[Any] = (),
        *,
        checkpoint: bool = False,
        timeout: float = 30.0,
        restarts: int = 0,
    ) -> None:
        self.armor = Execution(
            EXEC,
            SM,
            application="job7",
            task="t1",
            target=f"{TARGETS}:{target}",
            args=args,
            timeout=timeout,
            restarts=restarts,
            delay=0.05,
            checkpoint=checkpoint,
            node="n2",
            blocks=BLOCKS,
            composition={"checkpoint": "checkpoint"} if checkpoint else None,
        )
        self.space = TableSpace()
        self.sent: list[Message] = []
        self.inputs: list[tuple[Any, ...]] = []
        self.tasks = TaskHost(reactor, self.armor, self.feed, env=child_env())
        self.driver = Driver(self.armor, reactor, {Send: self.send, **self.tasks.handlers})
        self._ids = iter(range(1, 10**9))
        case.addCleanup(self.close)

    def start(self) -> None:
        self.driver.input(self.armor.start)

    def feed(self, method: Any, *args: Any) -> None:
        self.inputs.append((method.__name__, *args))
        self.driver.input(method, *args)

    def send(self, effect: Send[Message]) -> None:
        message = effect.message
        if message.destination.split(".")[0] == SPACE_KIND:
            reply = self.space.apply(SpaceRequest.from_message(message))
            answer = Message.of(
                SPACE_REPLY, message.destination, message.source, next(self._ids), reply
            )
            self.driver.input(self.armor.receive, answer)
        else:
            self.sent.append(message)

    def of_type(self, type: str) -> list[Message]:
        return [m for m in self.sent if m.type == type]

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [i[1:] for i in self.inputs if i[0] == name]

    async def close(self) -> None:
        self.tasks.stop()
        await until(lambda: not self.tasks.children)
        self.driver.stop()


class TaskHostTests(TestCase):
    timeout = 60

    async def test_result(self) -> None:
        """A task that returns: its result, its clean end, TASK_RESULT to the manager."""
        rig = Rig(self, "answer", [4])
        rig.start()
        await until(lambda: rig.of_type(TASK_RESULT))
        [(handle, value)] = rig.named("result")
        self.assertEqual(value, {"answer": 5, "items": (4, "x", b"b")})
        self.assertEqual(rig.named("ended"), [(handle, Exit(code=0))])
        self.assertEqual(
            rig.of_type(TASK_RESULT)[0].value(),
            {"task": "t1", "result": value, "node": "n2", "incarnation": 1},
        )
        self.assertEqual(rig.tasks.children, {})
        self.assertEqual(rig.tasks.counters["tasks.spawned"], 1)

    async def test_raises(self) -> None:
        """A task that raises exits non-zero: a crash, restarted, then failed."""
        rig = Rig(self, "fail", restarts=1)
        rig.start()
        await until(lambda: rig.of_type(EXEC_FAILED))
        ends = rig.named("ended")
        self.assertEqual([exit for _, exit in ends], [Exit(code=1), Exit(code=1)])
        self.assertNotEqual(ends[0][0], ends[1][0])
        self.assertEqual(rig.named("result"), [])

    async def test_progress(self) -> None:
        """Its progress signals reach the ARMOR, before its result."""
        rig = Rig(self, "busy", [3])
        rig.start()
        await until(lambda: rig.of_type(TASK_RESULT))
        self.assertEqual([i[0] for i in rig.inputs], ["progress"] * 3 + ["result", "ended"])
        self.assertEqual(rig.of_type(TASK_RESULT)[0].value()["result"], 3)

    async def test_checkpoint_and_recover(self) -> None:
        """A task checkpoints and crashes; restarted, it recovers that checkpoint."""
        rig = Rig(self, "checkpointed", checkpoint=True, restarts=1)
        rig.start()
        await until(lambda: rig.of_type(TASK_RESULT))
        self.assertEqual(rig.of_type(TASK_RESULT)[0].value()["result"], "half-done")
        first, second = rig.named("recover")
        self.assertEqual(rig.named("take_checkpoint"), [(first[0], b"half")])
        self.assertNotEqual(first, second)
        self.assertEqual([exit for _, exit in rig.named("ended")], [Exit(code=1), Exit(code=0)])

    async def test_recover_without_checkpoints(self) -> None:
        """A task that does not checkpoint is told to start afresh."""
        rig = Rig(self, "recovers_nothing")
        rig.start()
        await until(lambda: rig.of_type(TASK_RESULT))
        self.assertIs(rig.of_type(TASK_RESULT)[0].value()["result"], True)

    async def test_livelock_kill(self) -> None:
        """A silent task is killed at its livelock deadline (SIGTERM), then failed."""
        rig = Rig(self, "forever", timeout=1.0)
        rig.start()
        await until(lambda: rig.of_type(EXEC_FAILED))
        self.assertEqual(rig.armor.livelocks, 1)
        [(_, exit)] = rig.named("ended")
        self.assertEqual(exit, Exit(signal=15))

    async def test_second_kill(self) -> None:
        """A child that ignores SIGTERM is killed by the second Kill, with SIGKILL."""
        rig = Rig(self, "stubborn")
        rig.start()
        await until(lambda: rig.named("progress"))
        [(handle,)] = rig.named("progress")
        rig.tasks.kill(Kill(handle))
        await deferLater(reactor, 0.3, lambda: None)
        self.assertEqual(rig.named("ended"), [])
        rig.tasks.kill(Kill(handle))
        await until(lambda: rig.named("ended"))
        self.assertEqual(rig.named("ended"), [(handle, Exit(signal=9))])

    async def test_kill_escalates(self) -> None:
        """A child still running its grace period after SIGTERM is killed with SIGKILL."""
        rig = Rig(self, "stubborn")
        rig.tasks.grace = 0.3
        rig.start()
        await until(lambda: rig.named("progress"))
        [(handle,)] = rig.named("progress")
        rig.tasks.kill(Kill(handle))
        await until(lambda: rig.named("ended"))
        self.assertEqual(rig.named("ended"), [(handle, Exit(signal=9))])

    async def test_malformed_message(self) -> None:
        """A child that sends garbage on its control channel is killed, and it is counted."""
        rig = Rig(self, "garbage")
        rig.start()
        await until(lambda: rig.named("ended"))
        [(_, exit)] = rig.named("ended")
        self.assertEqual(exit, Exit(signal=9))
        self.assertEqual(rig.tasks.counters["control.malformed"], 1)
        self.flushLoggedErrors()

    async def test_not_a_plain_result(self) -> None:
        """A task that returns something not plain exits BAD_RESULT (a crash)."""
        rig = Rig(self, "not_plain")
        rig.start()
        await until(lambda: rig.of_type(EXEC_FAILED))
        [(_, exit)] = rig.named("ended")
        self.assertEqual(exit, Exit(code=task.BAD_RESULT))

    async def test_orphaned(self) -> None:
        """A child whose control input reaches its end (its parent gone) ends itself."""
        rig = Rig(self, "progress_then_wait")
        rig.start()
        await until(lambda: rig.named("progress"))
        [(handle,)] = rig.named("progress")
        transport = rig.tasks.children[handle].transport
        assert transport is not None
        transport.closeChildFD(task.FROM_PARENT)
        await until(lambda: rig.named("ended"))
        self.assertEqual(rig.named("ended"), [(handle, Exit(code=task.ORPHANED))])

    async def test_cannot_spawn(self) -> None:
        """A child that cannot be started ends at once, with the error."""
        rig = Rig(self, "answer", [1])
        rig.tasks.executable = "/nonexistent/python"
        rig.tasks.env = None

        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise OSError("no such python")

        rig.tasks.reactor = type("R", (), {"spawnProcess": staticmethod(refuse)})()
        rig.start()
        [(_, exit)] = rig.named("ended")
        self.assertEqual(exit, Exit(error="OSError: no such python"))
        self.assertEqual(rig.tasks.counters["tasks.spawn_failed"], 1)
        self.flushLoggedErrors()

    def test_checks_its_collaborators(self) -> None:
        """It hosts an Execution ARMOR's tasks only, and needs a feed."""
        armor = Rig(self, "answer").armor
        self.assertRaises(TypeError, TaskHost, reactor, object(), lambda *a: None)
        self.assertRaises(TypeError, TaskHost, reactor, armor, None)


# -- an ARMOR process, end to end -------------------------------------------------------------


class _FakeDaemon(Protocol):
    """The daemon's end of one ARMOR process's local link: welcomes it, keeps its messages."""

    def __init__(self, got: list[Any]) -> None:
        self.got = got
        self.decoder = FrameDecoder()

    def dataReceived(self, data: bytes) -> None:
        for frame in self.decoder.feed(data):
            assert isinstance(frame, Frame), frame
            if frame.kind is FrameKind.HELLO:
                self.got.append(ArmorHello.from_frame(frame))
                assert self.transport is not None
                self.transport.write(encode_frame(Frame(FrameKind.WELCOME)))
            elif frame.kind is FrameKind.MESSAGE:
                self.got.append(frame.message())


class _Watch(ProcessProtocol):
    def __init__(self) -> None:
        self.ended: defer.Deferred[int] = defer.Deferred()

    def processEnded(self, reason: Failure) -> None:
        value = reason.value
        self.ended.callback(value.exitCode if isinstance(value, ProcessTerminated) else 0)


class ArmorProcessTests(TestCase):
    timeout = 60

    async def test_execution_armor_process(self) -> None:
        """
        An ARMOR process of an Execution ARMOR runs its task as its child and sends its
        result to its manager as TASK_RESULT; it exits 0 once its link is lost.
        """
        directory = tempfile.mkdtemp(prefix="lips-t")
        self.addCleanup(shutil.rmtree, directory, True)
        socket = os.path.join(directory, "d.sock")
        got: list[Any] = []
        links: list[_FakeDaemon] = []

        def build() -> _FakeDaemon:
            links.append(_FakeDaemon(got))
            return links[-1]

        port = reactor.listenUNIX(socket, Factory.forProtocol(build))
        self.addCleanup(port.stopListening)
        config = {
            "application": "job7",
            "task": "t1",
            "target": f"{TARGETS}:answer",
            "args": [41],
            "node": "n2",
        }
        spec = ArmorSpec(EXEC, "execution", SM, 1, config, b"t" * TOKEN_SIZE)
        env = {**child_env(), **armor_process.environment(spec, socket)}
        watch = _Watch()
        process = reactor.spawnProcess(
            watch,
            sys.executable,
            [sys.executable, "-m", "lips.armor.process"],
            env=env,
            childFDs={0: "w", 1: 1, 2: 2},
        )
        process.write(armor_process.stdin_input(spec))
        process.closeStdin()
        try:
            await until(lambda: any(isinstance(m, Message) for m in got))
        finally:
            for link in links:
                assert link.transport is not None
                link.transport.loseConnection()
        self.assertEqual(got[0], ArmorHello(EXEC, 1, b"t" * TOKEN_SIZE))
        result = next(m for m in got if isinstance(m, Message))
        self.assertEqual(
            (result.type, result.source, result.destination, result.value()),
            (
                TASK_RESULT,
                EXEC,
                SM,
                {
                    "task": "t1",
                    "result": {"answer": 42, "items": (41, "x", b"b")},
                    "node": "n2",
                    "incarnation": 1,
                },
            ),
        )
        self.assertEqual(await watch.ended, 0)
