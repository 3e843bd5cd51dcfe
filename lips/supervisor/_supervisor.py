"""
The supervisor core: lipsd's level-1 fault tolerance, sans-IO (the core contract of
L{lips.kernel}, C{docs/design/core.md}).

A L{Supervisor} runs L{ProcessSpec}s and restarts a child that dies (a non-zero exit, a
signal, or no start at all) with the same LiPS process id: at once the first time, then
after a delay that doubles with each crash (L{RestartPolicy}).  Past
L{RestartPolicy.max_restarts} crashes within L{RestartPolicy.window} seconds the process
is failed: the supervisor delivers a L{ProcessFailed} record (lipsd writes it into the
System Tuple Space).  A clean exit (status 0) is final: it delivers L{ProcessFinished}
and never starts the process again.  Two children of one process id never run at once.

Inputs (each takes the current time, C{now}, last):

  - L{Supervisor.start}C{(spec, now) -> bool}: run a process (not twice while it is not
    final).
  - L{Supervisor.ended}C{(handle, exit, now)}: child C{handle} ended as C{exit}; a
    child that could not be started ends at once with C{Exit(error=...)}.
  - L{Supervisor.fence}C{(now) -> list[int]}: stop every process, go on supervising.
  - L{Supervisor.stop}C{(now)}: stop every process and supervising.
  - L{Supervisor.timer}C{((SupervisorTimer.RESTART, pid), now)}: a restart is due.

Effects:

  - L{Spawn}C{(spec, handle)}: start a child for C{spec}; every child gets a new
    handle, by which its end is fed back to L{Supervisor.ended}.
  - L{Kill}C{(handle)}: terminate that child (fencing, stopping); its end is still fed
    back, and no other child of its process id is spawned before it.
  - L{StartTimer} / L{CancelTimer} C{((SupervisorTimer.RESTART, pid), at)}: the
    delay before a restart, and its cancellation by a fence.
  - L{Deliver}C{(ProcessFinished(spec))} and L{Deliver}C{(ProcessFailed(...))}: the
    final outcomes.
  - L{Log}: a restart scheduled (info), a process failed (warn).

L{lips.node.ProcessService} drives it through L{lips.kernel.Driver}, carrying Spawn
and Kill out with an L{ISpawner<lips.node.ISpawner>} (L{lips.node.ReactorSpawner} in
lipsd, a fake in the unit tests).
"""

from __future__ import annotations

import collections
import enum
import importlib
import itertools
import re
import signal as signals
from collections.abc import Callable
from typing import Any, ClassVar, Final, TypeAlias

import attrs
from twisted.logger import LogLevel

from lips import validate
from lips.kernel import (
    CancelTimer,
    Deliver,
    Effect,
    Kill,
    Log,
    Outbox,
    Spawn,
    StartTimer,
    TimerKey,
)
from lips.tuples import LTuple, make_tuple
from lips.validate import at_least, non_negative, positive

__all__ = [
    "FAILED_TAG",
    "Exit",
    "Outcome",
    "ProcessFailed",
    "ProcessFinished",
    "ProcessSpec",
    "ProcessState",
    "RestartPolicy",
    "Supervised",
    "Supervisor",
    "SupervisorTimer",
    "check_target",
]

#: The first field of the record of a process failed for good.
FAILED_TAG: Final = "process-failed"

#: C{package.module:function} (the function may be an attribute path: C{Class.method}).
_TARGET: Final = re.compile(
    r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
)


def check_target(target: object) -> str:
    """
    C{target} if it names an importable callable as C{"package.module:function"}.

    @raise ValueError: if it does not.
    """
    if not isinstance(target, str) or not _TARGET.fullmatch(target):
        raise ValueError(f"not a 'package.module:function' name: {target!r}")
    return target


def load_target(target: str) -> Callable[..., Any]:
    """
    The callable named C{target} (C{"package.module:function"}, the function may be an
    attribute path): what an eval'd process and an Execution ARMOR's task call.  Only
    importable callables run: nothing is unpickled or evaluated.

    @raise ValueError: if C{target} is malformed or does not name a callable.
    @raise ImportError: if its module cannot be imported.
    """
    module_name, _, path = check_target(target).partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in path.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{target} is not callable")
    return obj  # type: ignore[no-any-return]


def _target(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    check_target(value)


def _fields(value: Any) -> LTuple:
    return make_tuple(value)


def _endpoints(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not all(isinstance(e, str) and e for e in value):
        raise TypeError(f"endpoints must be a sequence of endpoint strings, not {value!r}")
    return tuple(value)


@attrs.frozen
class ProcessSpec:
    """
    One process to run: C{function(space, *args)} where C{function} is C{target}
    imported, connected to C{endpoints} as LiPS process C{pid}; its result is put out
    as the passive tuple C{(*fields, result)}.

    @ivar args: the arguments, msgpack-encoded (a list), decoded by the child only.
    """

    pid: int = attrs.field(validator=validate.pid)
    target: str = attrs.field(validator=_target)
    fields: LTuple = attrs.field(converter=_fields)
    args: bytes = attrs.field(validator=attrs.validators.instance_of(bytes))
    endpoints: tuple[str, ...] = attrs.field(converter=_endpoints)


@attrs.frozen
class Exit:
    """
    How a child ended: its exit C{code}, or the C{signal} that killed it, or the
    C{error} that kept it from starting at all.
    """

    code: int | None = None
    signal: int | None = None
    error: str | None = None

    @property
    def clean(self) -> bool:
        """Whether it returned normally (exit status 0): final, never restarted."""
        return self.code == 0 and self.signal is None and self.error is None

    def describe(self) -> str:
        """C{"exit code 3"}, C{"signal 9 (SIGKILL)"} or C{"not started: ..."}."""
        if self.error is not None:
            return f"not started: {self.error}"
        if self.signal is not None:
            try:
                name = signals.Signals(self.signal).name
            except ValueError:
                return f"signal {self.signal}"
            return f"signal {self.signal} ({name})"
        return f"exit code {self.code}"


@attrs.frozen
class RestartPolicy:
    """
    When to restart a crashed process.

    The first crash within the last C{window} seconds is restarted at once (a process
    killed once should be back as soon as possible); the n-th, for n >= 2, after
    C{min(max_delay, delay * factor ** (n - 2))} seconds; crash number
    C{max_restarts + 1} within the window fails the process instead.

    @ivar delay: the delay before the second restart within the window.
    @ivar factor: what each further crash within the window multiplies it by.
    @ivar max_delay: the longest delay.
    @ivar max_restarts: the most restarts within the window (0: fail at the first crash).
    @ivar window: seconds over which crashes are counted.
    """

    delay: float = attrs.field(default=0.1, converter=float, validator=non_negative)
    factor: float = attrs.field(default=2.0, converter=float, validator=positive)
    max_delay: float = attrs.field(default=5.0, converter=float, validator=non_negative)
    max_restarts: int = attrs.field(default=5, validator=at_least(0))
    window: float = attrs.field(default=60.0, converter=float, validator=positive)

    def backoff(self, crashes: int) -> float:
        """The delay before restarting after the C{crashes}-th crash in the window."""
        if crashes < 1:
            raise ValueError("backoff follows a crash")
        if crashes == 1:
            return 0.0
        exponent = min(crashes - 2, 64)
        return min(self.max_delay, self.delay * self.factor**exponent)


@attrs.frozen
class ProcessFailed:
    """
    Process C{pid} on C{node} was given up: C{reason} says how it last ended and how
    often it crashed; C{restarts} is how many times it had been restarted in all.
    """

    pid: int
    node: str
    reason: str
    restarts: int

    def as_tuple(self) -> LTuple:
        """C{("process-failed", pid, node, reason, restarts)}."""
        return (FAILED_TAG, self.pid, self.node, self.reason, self.restarts)


class ProcessState(enum.Enum):
    """Where a supervised process stands."""

    RUNNING = "running"
    """A child runs it (or was just asked to start)."""
    WAITING = "waiting"
    """It crashed and waits out the backoff delay, or it was started again and waits
    for its terminated child to end."""
    FINISHED = "finished"
    """It exited cleanly: final."""
    FAILED = "failed"
    """It crashed too often: final, a L{ProcessFailed} record was delivered."""
    STOPPED = "stopped"
    """It was fenced, or the supervisor stopped, while it ran or waited."""

    @property
    def final(self) -> bool:
        return self in (ProcessState.FINISHED, ProcessState.FAILED, ProcessState.STOPPED)


@attrs.frozen
class ProcessFinished:
    """The process C{spec} says exited cleanly: final."""

    spec: ProcessSpec


Outcome: TypeAlias = ProcessFinished | ProcessFailed
"""What the supervisor delivers: how a process ended for good."""


class SupervisorTimer(enum.Enum):
    """The supervisor's timers, each paired with a process id."""

    RESTART = "restart"
    """The delay before restarting a crashed process is over."""


@attrs.define(eq=False)
class Supervised:
    """
    One process under the supervisor.

    @ivar restarts: how many times it was started again after a crash.
    @ivar crashes: when it crashed, within the policy's window.
    @ivar starts: how many children were spawned for it in all.
    @ivar handle: the handle of its current child, while one runs.
    @ivar restart_at: when it is to be restarted, while it waits out a crash's delay
        (None while it waits instead for a terminated child to end).
    """

    spec: ProcessSpec
    state: ProcessState = ProcessState.RUNNING
    restarts: int = 0
    starts: int = 0
    crashes: collections.deque[float] = attrs.field(factory=collections.deque)
    handle: int | None = None
    last_exit: Exit | None = None
    restart_at: float | None = None


@attrs.define(eq=False)
class Supervisor:
    """
    Runs processes on node C{node} and restarts them per C{policy}.

    @ivar processes: every process ever started here, by process id.
    @ivar stopped: whether L{stop} was called.
    """

    emits: ClassVar[frozenset[type[Effect]]] = frozenset(
        {Spawn, Kill, StartTimer, CancelTimer, Deliver, Log}
    )

    node: str = attrs.field(validator=attrs.validators.instance_of(str))
    policy: RestartPolicy = attrs.field(
        factory=RestartPolicy, validator=attrs.validators.instance_of(RestartPolicy)
    )
    processes: dict[int, Supervised] = attrs.field(init=False, factory=dict)
    stopped: bool = attrs.field(init=False, default=False)
    _handles: Any = attrs.field(init=False, factory=lambda: itertools.count(1))
    # The process id of each child spawned and not yet ended, by handle.
    _live: dict[int, int] = attrs.field(init=False, factory=dict)
    # The handle of each process's terminated child that has not ended yet, by pid.
    _dying: dict[int, int] = attrs.field(init=False, factory=dict)
    _outbox: Outbox = attrs.field(init=False, factory=lambda: Outbox(Supervisor.emits))

    @property
    def running(self) -> list[Supervised]:
        """The processes not yet final (running, or waiting to be restarted)."""
        return [p for p in self.processes.values() if not p.state.final]

    def terminating(self, pid: int) -> bool:
        """Whether a terminated child of process C{pid} has not ended yet."""
        return pid in self._dying

    def drain(self) -> list[Effect]:
        """The effects emitted since the last call, in order."""
        return self._outbox.drain()

    # -- inputs ---------------------------------------------------------------------------

    def start(self, spec: ProcessSpec, now: float) -> bool:
        """
        Run C{spec}.  A process id already supervised and not final is not started
        twice (the request came again); a final one is started afresh.

        @return: whether it was started.
        @raise TypeError: if C{spec} is not a L{ProcessSpec}.
        @raise RuntimeError: if the supervisor is stopped.
        """
        if not isinstance(spec, ProcessSpec):
            raise TypeError(f"not a ProcessSpec: {spec!r}")
        if self.stopped:
            raise RuntimeError("the supervisor is stopped")
        known = self.processes.get(spec.pid)
        if known is not None and not known.state.final:
            return False
        proc = self.processes[spec.pid] = Supervised(spec)
        if spec.pid in self._dying:
            # A terminated child of this process has not ended yet: never two at once.
            proc.state = ProcessState.WAITING
        else:
            self._launch(proc)
        return True

    def stop(self, now: float) -> None:
        """Stop supervising: cancel pending restarts and terminate the running children."""
        self.stopped = True
        self.fence(now)

    def fence(self, now: float) -> list[int]:
        """
        Stop every process (terminate its child, cancel its restart) but go on
        supervising: they may have been restarted on another node.  A process started
        again before its terminated child has ended waits for that end, so two children
        of one process id never run at once.

        @return: the ids of the processes stopped.
        """
        stopped = []
        for proc in self.processes.values():
            if proc.state.final:
                continue
            pid = proc.spec.pid
            if proc.restart_at is not None:
                proc.restart_at = None
                self._outbox.cancel_timer((SupervisorTimer.RESTART, pid))
            if proc.handle is not None:
                self._outbox.kill(proc.handle)
                self._dying[pid] = proc.handle
                proc.handle = None
            proc.state = ProcessState.STOPPED
            stopped.append(pid)
        return stopped

    def ended(self, handle: int, exit: Exit, now: float) -> None:
        """
        Child C{handle} ended as C{exit}.  An end reported twice, or of a child this
        supervisor no longer runs (stopped, fenced), changes nothing more.
        """
        pid = self._live.pop(handle, None)
        if pid is None:
            return  # reported before, or never spawned here
        if self._dying.get(pid) == handle:
            del self._dying[pid]
            waiting = self.processes.get(pid)
            if (
                waiting is not None
                and waiting.state is ProcessState.WAITING
                and waiting.restart_at is None
                and not self.stopped
            ):
                self._launch(waiting)
            return
        proc = self.processes.get(pid)
        if proc is None or proc.handle != handle or proc.state is not ProcessState.RUNNING:
            return  # an older child of the process, or a process stopped meanwhile
        proc.handle = None
        proc.last_exit = exit
        if exit.clean:
            proc.state = ProcessState.FINISHED
            self._outbox.deliver(ProcessFinished(proc.spec))
            return
        proc.crashes.append(now)
        while proc.crashes and proc.crashes[0] <= now - self.policy.window:
            proc.crashes.popleft()
        crashes = len(proc.crashes)
        if crashes > self.policy.max_restarts:
            proc.state = ProcessState.FAILED
            reason = (
                f"{exit.describe()}; {crashes} crashes within {self.policy.window:g} s"
                f" (at most {self.policy.max_restarts} restarts)"
            )
            self._outbox.log(
                LogLevel.warn, "Process {pid} failed: {reason}", pid=pid, reason=reason
            )
            self._outbox.deliver(ProcessFailed(pid, self.node, reason, proc.restarts))
            return
        delay = self.policy.backoff(crashes)
        self._outbox.log(
            LogLevel.info,
            "Process {pid} ended with {how}; restarting in {delay:.3f} s",
            pid=pid,
            how=exit.describe(),
            delay=delay,
        )
        proc.state = ProcessState.WAITING
        proc.restart_at = now + delay
        self._outbox.start_timer((SupervisorTimer.RESTART, pid), proc.restart_at)

    def timer(self, key: TimerKey, now: float) -> None:
        """
        A restart is due: C{key} is C{(SupervisorTimer.RESTART, pid)}.

        @raise ValueError: for a key this supervisor never starts.
        """
        if not (
            isinstance(key, tuple)
            and key[0] is SupervisorTimer.RESTART
            and isinstance(key[1], int)
        ):
            raise ValueError(f"not a timer of the supervisor: {key!r}")
        proc = self.processes.get(key[1])
        if proc is None or proc.state is not ProcessState.WAITING or proc.restart_at is None:
            return  # cancelled after it fell due (a host without a timer table)
        proc.restart_at = None
        proc.restarts += 1
        self._launch(proc)

    # -- helpers --------------------------------------------------------------------------

    def _launch(self, proc: Supervised) -> None:
        handle = next(self._handles)
        proc.handle = handle
        proc.starts += 1
        proc.state = ProcessState.RUNNING
        self._live[handle] = proc.spec.pid
        self._outbox.spawn(proc.spec, handle)
