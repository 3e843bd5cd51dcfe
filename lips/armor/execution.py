"""
The Execution ARMOR (the paper's section 4.2.2, Fig. 2; Table 2's application rows):
installs one task on its node, runs it as a child, watches it, restarts it, and
reports its result to its manager.

It is built on L{lips.node.Supervisor}, composed, not copied: the supervisor decides
restarts (at once, then with a doubling delay; past C{restarts} crashes within
C{window} seconds the task is failed) and this ARMOR relays its L{Spawn}, L{Kill} and
restart timers, and acts on its outcomes:

  - a clean exit: the task's result (the last L{Execution.result} of that child) goes
    to the manager as L{TASK_RESULT}, again every C{retry} seconds until it answers
    L{TASK_RESULT_ACK};
  - a failed task (abnormal terminations, or livelocks, past the threshold): escalated
    to the manager as L{EXEC_FAILED}, which places the task on another node;
  - livelock: no progress signal (L{Execution.progress}) within C{timeout} seconds of
    the child's start or last signal, and the child is killed (a crash to the
    supervisor, so it restarts).

Where the task checkpoints (C{checkpoint}, with a L{CheckpointService
<lips.armor.checkpoint.CheckpointService>} in slot C{checkpoint}), its
C{take_checkpoint()} and C{recover()} calls go to that service, and a restarted task
resumes from its last checkpoint by calling C{recover()} as it starts (Fig. 3); the
answer is delivered to it.

Inputs (besides L{Armor}'s C{start}, C{receive} and C{timer}), from the host that runs
the task's child:

  - L{Execution.ended}C{(handle, exit, now)}: the child ended (the supervisor's input).
  - L{Execution.progress}C{(handle, now)}: the task signalled progress.
  - L{Execution.result}C{(handle, value, now)}: the task returned C{value} (a plain
    value), before its clean exit.
  - L{Execution.take_checkpoint}C{(handle, state, now)}, L{Execution.recover}C{(handle,
    now)}: the task's checkpoint calls.

Effects: L{Armor}'s, and L{Spawn}C{(ProcessSpec, handle)} / L{Kill}C{(handle)} (the
supervisor's), L{StartTimer}/L{CancelTimer} of C{(SupervisorTimer.RESTART, pid)} and
C{(ExecutionTimer.LIVELOCK, handle)}, L{Deliver}C{(TaskRecovered(handle, state))} (the
answer to C{recover()}, for the child).

Messages: L{TASK_RESULT}, L{EXEC_FAILED}, L{EXEC_STATUS} to its manager;
L{TASK_RESULT_ACK} and L{REPORT_STATUS} (answered with L{EXEC_STATUS}) from it.
"""

from __future__ import annotations

import enum
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Final

import attrs
from twisted.logger import LogLevel

from lips.armor._armor import Armor
from lips.armor._blocks import Block
from lips.armor._factory import BlockFactory
from lips.armor._messages import TIMER, Body, Message, check_value, seconds
from lips.armor._names import MessageError, check_label
from lips.armor.checkpoint import (
    CHECKPOINT_TAKEN,
    RECOVER,
    RECOVERED,
    TAKE_CHECKPOINT,
    RecoverCheckpoint,
    Recovered,
    TakeCheckpoint,
)
from lips.armor.ftm import placed_options
from lips.kernel import (
    CancelTimer,
    Deliver,
    Effect,
    Kill,
    Log,
    Send,
    Spawn,
    StartTimer,
    TimerKey,
)
from lips.supervisor import (
    Exit,
    ProcessFailed,
    ProcessFinished,
    ProcessSpec,
    RestartPolicy,
    Supervisor,
    SupervisorTimer,
)
from lips.tuples import packb
from lips.validate import at_least

__all__ = [
    "EXEC_FAILED",
    "EXEC_STATUS",
    "REPORT_STATUS",
    "TASK_RESULT",
    "TASK_RESULT_ACK",
    "ExecFailed",
    "ExecStatus",
    "Execution",
    "ExecutionTimer",
    "TaskRecovered",
    "TaskRunner",
    "TaskRef",
    "TaskResult",
]

#: Execution ARMOR to manager: the task's result (L{TaskResult}), until acknowledged.
TASK_RESULT: Final = "task-result"
#: Manager to Execution ARMOR: the result arrived (L{TaskRef}).
TASK_RESULT_ACK: Final = "task-result-ack"
#: Execution ARMOR to manager: local recovery gave up (L{ExecFailed}).
EXEC_FAILED: Final = "exec-failed"
#: Manager to Execution ARMOR: how is the task? (L{TaskRef}).
REPORT_STATUS: Final = "report-status"
#: Execution ARMOR to manager: the answer (L{ExecStatus}).
EXEC_STATUS: Final = "exec-status"

#: The states an L{ExecStatus} reports.
STATES: Final = frozenset({"running", "finished", "failed"})


def _label(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    check_label(value, attribute.name)


def _plain(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    check_value(value)


def _state(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value not in STATES:
        raise MessageError(f"state is one of {sorted(STATES)}, not {value!r}")


@attrs.frozen
class TaskResult(Body):
    """C{task} returned C{result}, run by incarnation C{incarnation} on C{node}."""

    message_types: ClassVar[frozenset[str]] = frozenset({TASK_RESULT})

    task: str = attrs.field(validator=_label)
    result: Any = attrs.field(validator=_plain)
    node: str = attrs.field(validator=_label)
    incarnation: int = attrs.field(validator=at_least(1))


@attrs.frozen
class TaskRef(Body):
    """Task C{task}."""

    message_types: ClassVar[frozenset[str]] = frozenset({TASK_RESULT_ACK, REPORT_STATUS})

    task: str = attrs.field(validator=_label)


@attrs.frozen
class ExecFailed(Body):
    """Local recovery of C{task} gave up: C{reason}."""

    message_types: ClassVar[frozenset[str]] = frozenset({EXEC_FAILED})

    task: str = attrs.field(validator=_label)
    reason: str
    node: str = attrs.field(validator=_label)
    incarnation: int = attrs.field(validator=at_least(1))


@attrs.frozen
class ExecStatus(Body):
    """C{task} is C{state} (running, finished, failed) in this incarnation."""

    message_types: ClassVar[frozenset[str]] = frozenset({EXEC_STATUS})

    task: str = attrs.field(validator=_label)
    state: str = attrs.field(validator=_state)
    node: str = attrs.field(validator=_label)
    incarnation: int = attrs.field(validator=at_least(1))


@attrs.frozen
class TaskRecovered:
    """Delivered to child C{handle}: its last checkpoint's C{state} (None: start afresh)."""

    handle: int
    state: bytes | None


class ExecutionTimer(enum.Enum):
    """The Execution ARMOR's own timers (the supervisor's are relayed as they are)."""

    LIVELOCK = "livelock"
    """Paired with a child's handle: no progress from it in time."""


_RETRY: Final = "retry"


class TaskRunner(Block):
    """
    The Execution ARMOR's own block (block type C{execution}): hands it its manager's
    messages, the checkpoint service's answers and its retries.
    """

    subscriptions = frozenset({TASK_RESULT_ACK, REPORT_STATUS, RECOVERED, CHECKPOINT_TAKEN})

    def attach(self, context: Any, now: float) -> None:
        if not isinstance(context.armor, Execution):
            raise TypeError("an execution block works in an Execution ARMOR only")
        super().attach(context, now)
        context.armor._attached(self, now)

    def process_message(self, message: Message, now: float) -> None:
        armor = self.context.armor
        assert isinstance(armor, Execution)
        armor._handle(message, now)


class Execution(Armor):
    """
    The Execution ARMOR of task C{task} of application C{application} (see the module
    docstring).

    @param target: the task's callable, C{package.module:function}.
    @param args: its arguments (plain values).
    @param timeout: livelock: seconds allowed between progress signals.
    @param restarts: local restarts within C{window} before escalating.
    @param checkpoint: whether the task checkpoints.
    @param node: the node it runs on (its manager says, in the install).
    @param incarnation: which install of it this is.
    """

    type_name = "execution"
    emits: ClassVar[frozenset[type[Effect]]] = frozenset(
        {Send, StartTimer, CancelTimer, Log, Spawn, Kill, Deliver}
    )
    default_blocks = {**Armor.default_blocks, "execution": "execution"}

    def __init__(
        self,
        id: str,
        manager: str | None,
        *,
        application: str,
        task: str,
        target: str,
        args: Sequence[Any] = (),
        timeout: float = 10.0,
        restarts: int = 3,
        window: float = 60.0,
        delay: float = 0.1,
        checkpoint: bool = False,
        retry: float = 0.5,
        node: str = "local",
        incarnation: int = 1,
        blocks: BlockFactory | None = None,
        composition: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(id, manager, blocks=blocks, composition=composition)
        self.application = check_label(application, "application")
        self.task = check_label(task, "task")
        self.node = check_label(node, "node")
        self.incarnation = incarnation
        self.timeout = timeout
        self.retry = retry
        self.checkpointing = checkpoint
        self.pid = zlib.crc32(self.id.encode()) + 1
        self.spec = ProcessSpec(
            self.pid, target, ("result", self.application, self.task), packb(list(args)), ()
        )
        self.supervisor = Supervisor(
            self.node, RestartPolicy(delay=delay, max_restarts=restarts, window=window)
        )
        #: How the task ended for good: ("finished", result) or ("failed", reason).
        self.final: tuple[str, Any] | None = None
        self.acknowledged = False
        self.livelocks = 0
        self.checkpoints = 0
        self._block: TaskRunner | None = None
        self._live: int | None = None
        self._results: dict[int, Any] = {}
        self._recovering: list[int] = []
        self._ending: int | None = None

    @classmethod
    def options(cls, config: dict[str, object]) -> dict[str, Any]:
        """
        Besides C{blocks}: C{application}, C{task}, C{target}, C{args}, C{timeout},
        C{restarts}, C{window}, C{delay}, C{checkpoint}, C{retry}, C{node},
        C{incarnation}.
        """
        kwargs = super().options(config)
        kwargs.update(placed_options(config))
        for key in ("application", "task", "target"):
            if key not in config:
                raise MessageError(f"an Execution ARMOR needs its {key}")
            value = config.pop(key)
            if type(value) is not str:
                raise MessageError(f"{key} is a string, not {value!r}")
            kwargs[key] = value
        if "args" in config:
            args = config.pop("args")
            if isinstance(args, str | bytes) or not isinstance(args, Sequence):
                raise MessageError(f"args is an array, not {args!r}")
            kwargs["args"] = tuple(args)
        for key in ("timeout", "window", "delay", "retry"):
            if key in config:
                kwargs[key] = seconds(config.pop(key), key)
        if "restarts" in config:
            restarts = config.pop("restarts")
            if type(restarts) is not int or restarts < 0:
                raise MessageError(f"restarts is an integer >= 0, not {restarts!r}")
            kwargs["restarts"] = restarts
        if "checkpoint" in config:
            checkpoint = config.pop("checkpoint")
            if type(checkpoint) is not bool:
                raise MessageError(f"checkpoint is true or false, not {checkpoint!r}")
            kwargs["checkpoint"] = checkpoint
        return kwargs

    # -- queries --------------------------------------------------------------------------

    @property
    def running(self) -> int | None:
        """The handle of the task's child while one runs."""
        return self._live

    # -- inputs from the task's host --------------------------------------------------------

    def ended(self, handle: int, exit: Exit, now: float) -> None:
        """The child C{handle} ended as C{exit}."""
        with self._input(now):
            if handle == self._live:
                self._live = None
                self._outbox.cancel_timer((ExecutionTimer.LIVELOCK, handle))
            self._ending = handle
            self.supervisor.ended(handle, exit, now)
            self._relay(now)
            self._ending = None
            self._results.pop(handle, None)

    def progress(self, handle: int, now: float) -> None:
        """The task signalled progress: its livelock timer starts again."""
        with self._input(now):
            if handle == self._live:
                self._outbox.start_timer((ExecutionTimer.LIVELOCK, handle), now + self.timeout)

    def result(self, handle: int, value: object, now: float) -> None:
        """
        The task returned C{value}: its result once the child exits cleanly.

        @raise MessageError: if C{value} is not a plain value.
        """
        check_value(value)
        with self._input(now):
            if handle == self._live:
                self._results[handle] = value

    def take_checkpoint(self, handle: int, state: bytes, now: float) -> None:
        """The task takes a checkpoint of C{state} (its own bytes)."""
        with self._input(now):
            if handle != self._live or not self.checkpointing:
                return
            self.checkpoints += 1
            self._send(
                TAKE_CHECKPOINT,
                self.id,
                TakeCheckpoint(self.application, self.task, self.checkpoints, state),
            )

    def recover(self, handle: int, now: float) -> None:
        """The task asks for its last checkpoint (delivered as L{TaskRecovered})."""
        with self._input(now):
            if handle != self._live:
                return
            if not self.checkpointing:
                self._outbox.deliver(TaskRecovered(handle, None))
                return
            self._recovering.append(handle)
            self._send(RECOVER, self.id, RecoverCheckpoint(self.application, self.task))

    def timer(self, key: TimerKey, now: float) -> None:
        """Its block's timers, the supervisor's restarts, and livelock deadlines."""
        if isinstance(key, tuple) and key[0] is SupervisorTimer.RESTART:
            with self._input(now):
                self.supervisor.timer(key, now)
                self._relay(now)
            return
        if isinstance(key, tuple) and key[0] is ExecutionTimer.LIVELOCK:
            with self._input(now):
                live = self._live
                if live is not None and key[1] == live:
                    self.livelocks += 1
                    self._outbox.log(
                        LogLevel.warn,
                        "{armor}: no progress from task {task} in {timeout} s: killing it",
                        armor=self.id,
                        task=self.task,
                        timeout=self.timeout,
                    )
                    self._outbox.kill(live)
            return
        super().timer(key, now)

    # -- what the supervisor decides --------------------------------------------------------

    def _attached(self, block: TaskRunner, now: float) -> None:
        self._block = block
        self.supervisor.start(self.spec, now)
        self._relay(now)

    def _relay(self, now: float) -> None:
        for effect in self.supervisor.drain():
            if isinstance(effect, Spawn):
                self._live = effect.handle
                self._outbox.emit(effect)
                self._outbox.start_timer(
                    (ExecutionTimer.LIVELOCK, effect.handle), now + self.timeout
                )
            elif isinstance(effect, Deliver):
                self._outcome(effect.item, now)
            else:
                self._outbox.emit(effect)

    def _outcome(self, outcome: object, now: float) -> None:
        if isinstance(outcome, ProcessFinished):
            value = None if self._ending is None else self._results.get(self._ending)
            self.final = ("finished", value)
            self._report(now)
        elif isinstance(outcome, ProcessFailed):
            self.final = ("failed", outcome.reason)
            self._outbox.log(
                LogLevel.warn,
                "{armor}: task {task} failed here ({reason}); telling {manager}",
                armor=self.id,
                task=self.task,
                reason=outcome.reason,
                manager=self.manager,
            )
            assert self.manager is not None
            self._send(
                EXEC_FAILED,
                self.manager,
                ExecFailed(self.task, outcome.reason[:1000], self.node, self.incarnation),
            )

    def _report(self, now: float) -> None:
        assert self.final is not None and self.manager is not None and self._block is not None
        if self.final[0] != "finished" or self.acknowledged:
            return
        self._send(
            TASK_RESULT,
            self.manager,
            TaskResult(self.task, self.final[1], self.node, self.incarnation),
        )
        self._block.context.start_timer(_RETRY, now + self.retry)

    # -- its manager's messages -------------------------------------------------------------

    def _handle(self, message: Message, now: float) -> None:
        if message.type == TIMER:
            self._report(now)
        elif message.type == TASK_RESULT_ACK:
            if message.source == self.manager and TaskRef.from_message(message).task == self.task:
                self.acknowledged = True
                assert self._block is not None
                self._block.context.cancel_timer(_RETRY)
        elif message.type == REPORT_STATUS:
            if message.source != self.manager:
                return
            state = "running" if self.final is None else self.final[0]
            self._send(
                EXEC_STATUS,
                message.source,
                ExecStatus(self.task, state, self.node, self.incarnation),
            )
            if self.final is not None and self.final[0] == "finished":
                self.acknowledged = False
                self._report(now)
        elif message.type == CHECKPOINT_TAKEN and message.local:
            self.counters["checkpoints.stored"] += 1
        elif message.type == RECOVERED and message.local:
            answer = Recovered.from_message(message)
            waiting, self._recovering = self._recovering, []
            for handle in waiting:
                if handle == self._live:
                    self._outbox.deliver(TaskRecovered(handle, answer.state))
