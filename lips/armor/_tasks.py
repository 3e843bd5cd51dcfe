"""
The host of an Execution ARMOR's task children, in its ARMOR process: the thin
Twisted adapter between L{Execution<lips.armor.execution.Execution>}'s effects and
real processes (L{lips.armor.task}).

L{TaskHost} carries out:

  - L{Spawn}C{(ProcessSpec, handle)}: C{sys.executable -m lips.armor.task}, its input
    (L{task_input}) written to its standard input, which is then closed; its standard
    output and error are the ARMOR process's; its control channel is the pipe it
    writes on its fd 3 and the pipe it reads on its fd 4 (see L{lips.armor.task}).  A
    child that cannot be started ends at once, with C{Exit(error=...)};
  - L{Kill}C{(handle)}: SIGTERM; a second Kill of the same child, or the child still
    running C{grace} seconds after the first, SIGKILL (the Execution ARMOR kills a
    livelocked task once, and a task that ignores SIGTERM must still end);
  - L{Deliver}C{(TaskRecovered(handle, state))}: C{["recovered", state]} to that
    child's control input.

and feeds back, through C{feed} (C{feed(method, *args)}, which calls the ARMOR's
input C{method(*args, now)} and carries out its effects: the ARMOR host's driver),
what each child says (C{result}, C{progress}, C{take_checkpoint}, C{recover}) and its
end (C{ended(handle, Exit(code=..., signal=...))}).  A child that sends anything
malformed is killed (SIGKILL), and what it sends after is dropped; that is logged and
counted (L{TaskHost.counters}).
"""

from __future__ import annotations

import collections
import contextlib
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any, Final

from twisted.internet import error
from twisted.internet.interfaces import IDelayedCall, IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from lips.armor.execution import Execution, TaskRecovered
from lips.armor.task import (
    FROM_PARENT,
    FROM_TASK,
    TO_PARENT,
    ControlDecoder,
    ControlError,
    encode_control,
    task_input,
)
from lips.kernel import Deliver, Kill, Spawn
from lips.supervisor import Exit, ProcessSpec

__all__ = ["TASK_COUNTERS", "TaskHost"]

#: The counters of a L{TaskHost}.
TASK_COUNTERS: Final = (
    "tasks.spawned",
    "tasks.ended",
    "tasks.spawn_failed",
    "control.messages",
    "control.malformed",
)

Feed = Callable[..., Any]
"""C{feed(method, *args)}: call the ARMOR's input C{method(*args, now)}, carry out its
effects."""

_log = Logger(namespace="lips.armor.tasks")


class _TaskProtocol(ProcessProtocol):
    """One task child: its control messages and its end, to its host."""

    def __init__(self, host: TaskHost, handle: int) -> None:
        self.host = host
        self.handle = handle
        self.decoder = ControlDecoder(FROM_TASK)
        self.refused = False
        self.kills = 0
        self.escalation: IDelayedCall | None = None

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD != TO_PARENT or self.refused:
            return
        try:
            messages = self.decoder.feed(data)
        except ControlError as e:
            self.refused = True
            self.host._malformed(self, e)
            return
        for message in messages:
            self.host._message(self.handle, message)

    def signal(self, name: str) -> None:
        if self.transport is not None:
            with contextlib.suppress(error.ProcessExitedAlready, OSError):
                self.transport.signalProcess(name)

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            with contextlib.suppress(KeyError, OSError):  # its pipe is closed: it ended
                self.transport.writeToChild(FROM_PARENT, data)

    def processEnded(self, reason: Failure) -> None:
        if self.escalation is not None and self.escalation.active():
            self.escalation.cancel()
        self.escalation = None
        value = reason.value
        if isinstance(value, error.ProcessTerminated):
            exit = Exit(code=value.exitCode, signal=value.signal)
        else:
            exit = Exit(code=0)
        self.host._ended(self.handle, exit)


class TaskHost:
    """
    Runs the task children of C{execution} on C{reactor} (see the module docstring).

    @param feed: C{feed(method, *args)}: an input to C{execution}, its effects carried
        out (L{lips.kernel.Driver.input}, or the ARMOR host's wrapper of it).
    @param executable: the Python that runs the children.
    @param env: their environment (this process's by default).
    @param cwd: their working directory (this process's by default).
    @param grace: seconds a child has to end after SIGTERM, before SIGKILL.
    @ivar children: the live children, by handle.
    """

    def __init__(
        self,
        reactor: Any,
        execution: Execution,
        feed: Feed,
        *,
        executable: str = sys.executable,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        grace: float = 5.0,
    ) -> None:
        if not isinstance(execution, Execution):
            raise TypeError(f"not an Execution ARMOR: {execution!r}")
        if not callable(feed):
            raise TypeError(f"feed is not callable: {feed!r}")
        self.reactor = reactor
        self.execution = execution
        self.feed = feed
        self.executable = executable
        self.env = None if env is None else dict(env)
        self.cwd = cwd
        self.grace = grace
        self.children: dict[int, _TaskProtocol] = {}
        self.counters: collections.Counter[str] = collections.Counter()

    @property
    def handlers(self) -> dict[type[Any], Callable[[Any], None]]:
        """The driver's handlers of the effects it carries out."""
        return {Spawn: self.spawn, Kill: self.kill, Deliver: self.deliver}

    # -- effects ----------------------------------------------------------------------------

    def spawn(self, effect: Spawn[ProcessSpec]) -> None:
        """Start the task child of C{effect}."""
        handle, spec = effect.handle, effect.spec
        protocol = _TaskProtocol(self, handle)
        exe = self.executable
        try:
            transport: IProcessTransport = self.reactor.spawnProcess(
                protocol,
                exe,
                [exe, "-m", "lips.armor.task"],
                env=dict(os.environ) if self.env is None else dict(self.env),
                path=self.cwd,
                childFDs={0: "w", 1: 1, 2: 2, TO_PARENT: "r", FROM_PARENT: "w"},
            )
        except Exception as e:
            self.counters["tasks.spawn_failed"] += 1
            _log.error("Task child {handle} could not start: {error}", handle=handle, error=e)
            self.feed(self.execution.ended, handle, Exit(error=f"{type(e).__name__}: {e}"))
            return
        self.counters["tasks.spawned"] += 1
        self.children[handle] = protocol
        transport.writeToChild(0, task_input(spec.target, spec.args))
        transport.closeStdin()

    def kill(self, effect: Kill) -> None:
        """Terminate that child: SIGTERM the first time, SIGKILL after."""
        child = self.children.get(effect.handle)
        if child is None:
            return  # it ended already
        child.kills += 1
        if child.kills > 1:
            child.signal("KILL")
            return
        child.signal("TERM")
        child.escalation = self.reactor.callLater(self.grace, child.signal, "KILL")

    def deliver(self, effect: Deliver[object]) -> None:
        """Hand a L{TaskRecovered} answer to its child."""
        item = effect.item
        if not isinstance(item, TaskRecovered):
            _log.error("An Execution ARMOR delivered {item!r}: not for a task", item=item)
            return
        child = self.children.get(item.handle)
        if child is None:
            return  # it ended meanwhile
        try:
            data = encode_control("recovered", item.state)
        except ControlError as e:
            self.counters["control.malformed"] += 1
            _log.error(
                "Task child {handle}'s checkpoint cannot be sent to it ({error}): killing it",
                handle=item.handle,
                error=str(e),
            )
            child.signal("KILL")
            return
        child.write(data)

    def stop(self) -> None:
        """Kill every live child (SIGKILL): its ARMOR is gone."""
        for child in list(self.children.values()):
            if child.escalation is not None and child.escalation.active():
                child.escalation.cancel()
            child.escalation = None
            child.signal("KILL")

    # -- from the children ------------------------------------------------------------------

    def _message(self, handle: int, message: tuple[Any, ...]) -> None:
        self.counters["control.messages"] += 1
        armor = self.execution
        name = message[0]
        if name == "result":
            self.feed(armor.result, handle, message[1])
        elif name == "progress":
            self.feed(armor.progress, handle)
        elif name == "checkpoint":
            self.feed(armor.take_checkpoint, handle, message[1])
        else:
            assert name == "recover"
            self.feed(armor.recover, handle)

    def _malformed(self, child: _TaskProtocol, e: ControlError) -> None:
        self.counters["control.malformed"] += 1
        _log.error(
            "Task child {handle} sent a malformed control message ({error}): killing it",
            handle=child.handle,
            error=str(e),
        )
        child.signal("KILL")

    def _ended(self, handle: int, exit: Exit) -> None:
        self.counters["tasks.ended"] += 1
        self.children.pop(handle, None)
        self.feed(self.execution.ended, handle, exit)
