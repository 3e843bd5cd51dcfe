"""
The supervisor core: lipsd's level-1 fault tolerance, with no I/O.

A L{Supervisor} runs L{ProcessSpec}s through an injected L{ISpawner} and restarts a
child that dies (a non-zero exit or a signal) with the same LiPS process id, after a
delay that doubles with each crash.  Past L{RestartPolicy.max_restarts} crashes within
L{RestartPolicy.window} seconds the process is failed: the supervisor hands a
L{ProcessFailed} record to its C{on_failed} callback (lipsd writes it into the System
Tuple Space).  A clean exit (status 0) is final: C{on_finished} is called and the
process is never started again.

Time comes from an injected C{IReactorTime}; the spawner is faked in the unit tests and
is L{lips.node.ReactorSpawner} in lipsd.
"""

from __future__ import annotations

import collections
import enum
import itertools
import math
import re
import signal as signals
from collections.abc import Callable
from typing import Any, Final

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import Attribute, Interface

from lips.tuples import LTuple, make_tuple

__all__ = [
    "FAILED_TAG",
    "Exit",
    "IChild",
    "ISpawner",
    "ProcessFailed",
    "ProcessSpec",
    "ProcessState",
    "RestartPolicy",
    "Supervised",
    "Supervisor",
    "check_target",
]

#: The first field of the record of a process failed for good.
FAILED_TAG: Final = "process-failed"

#: C{package.module:function} (the function may be an attribute path: C{Class.method}).
_TARGET: Final = re.compile(
    r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
)

#: The highest LiPS process id (ids are positive 64-bit signed integers).
PID_MAX: Final = 2**63 - 1


def check_target(target: object) -> str:
    """
    C{target} if it names an importable callable as C{"package.module:function"}.

    @raise ValueError: if it does not.
    """
    if not isinstance(target, str) or not _TARGET.fullmatch(target):
        raise ValueError(f"not a 'package.module:function' name: {target!r}")
    return target


def _pid(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= PID_MAX:
        raise ValueError(f"{attribute.name} must be a positive 64-bit integer, not {value!r}")


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

    pid: int = attrs.field(validator=_pid)
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


class IChild(Interface):
    """A running child process."""

    os_pid = Attribute("The operating system's id of the process, or None if unknown.")

    def terminate() -> None:
        """Ask the process to end (SIGTERM); its end is still reported."""


class ISpawner(Interface):
    """Starts child processes."""

    def spawn(spec: ProcessSpec, ended: Callable[[Exit], None]) -> IChild:
        """
        Start C{spec}'s process; call C{ended} once, later, when it ends.

        @raise Exception: if it cannot be started (the supervisor counts it as a crash).
        """


def _non_negative(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{attribute.name} must be finite and not negative, not {value!r}")


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{attribute.name} must be positive and finite, not {value!r}")


def _count(instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{attribute.name} must be an integer of at least 0, not {value!r}")


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

    delay: float = attrs.field(default=0.1, converter=float, validator=_non_negative)
    factor: float = attrs.field(default=2.0, converter=float, validator=_positive)
    max_delay: float = attrs.field(default=5.0, converter=float, validator=_non_negative)
    max_restarts: int = attrs.field(default=5, validator=_count)
    window: float = attrs.field(default=60.0, converter=float, validator=_positive)

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
    """It crashed; a restart is scheduled after the backoff delay."""
    FINISHED = "finished"
    """It exited cleanly: final."""
    FAILED = "failed"
    """It crashed too often: final, a L{ProcessFailed} record was handed on."""
    STOPPED = "stopped"
    """The supervisor was stopped while it ran or waited."""

    @property
    def final(self) -> bool:
        return self in (ProcessState.FINISHED, ProcessState.FAILED, ProcessState.STOPPED)


@attrs.define(eq=False)
class Supervised:
    """
    One process under the supervisor.

    @ivar restarts: how many times it was started again after a crash.
    @ivar crashes: when it crashed, within the policy's window.
    @ivar starts: how many children were spawned for it in all.
    """

    spec: ProcessSpec
    state: ProcessState = ProcessState.RUNNING
    restarts: int = 0
    starts: int = 0
    crashes: collections.deque[float] = attrs.field(factory=collections.deque)
    child: IChild | None = None
    last_exit: Exit | None = None
    generation: int = 0
    call: IDelayedCall | None = None


_log = Logger()


def _ignore(value: object) -> None:
    pass


@attrs.define(eq=False)
class Supervisor:
    """
    Runs processes on node C{node} with C{spawner} and restarts them per C{policy}.

    @ivar on_finished: called with the L{ProcessSpec} of a process that exited cleanly.
    @ivar on_failed: called with the L{ProcessFailed} record of a process given up.
    """

    node: str = attrs.field(validator=attrs.validators.instance_of(str))
    spawner: ISpawner = attrs.field()
    clock: IReactorTime = attrs.field()
    policy: RestartPolicy = attrs.field(
        factory=RestartPolicy, validator=attrs.validators.instance_of(RestartPolicy)
    )
    on_finished: Callable[[ProcessSpec], None] = attrs.field(default=_ignore)
    on_failed: Callable[[ProcessFailed], None] = attrs.field(default=_ignore)
    processes: dict[int, Supervised] = attrs.field(init=False, factory=dict)
    stopped: bool = attrs.field(init=False, default=False)
    _generations: Any = attrs.field(init=False, factory=lambda: itertools.count(1))
    _dying: dict[int, int] = attrs.field(init=False, factory=dict)

    @property
    def running(self) -> list[Supervised]:
        """The processes not yet final (running, or waiting to be restarted)."""
        return [p for p in self.processes.values() if not p.state.final]

    def start(self, spec: ProcessSpec) -> bool:
        """
        Run C{spec}.  A process id already supervised and not final is not started
        twice (the request came again); a final one is started afresh.

        @return: whether it was started.
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

    def stop(self) -> None:
        """Stop supervising: cancel pending restarts and terminate the running children."""
        self.stopped = True
        self.fence()

    def fence(self) -> list[int]:
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
            if proc.call is not None and proc.call.active():
                proc.call.cancel()
            proc.call = None
            if proc.child is not None:
                proc.child.terminate()
                self._dying[proc.spec.pid] = proc.generation
            proc.state = ProcessState.STOPPED
            stopped.append(proc.spec.pid)
        return stopped

    def _launch(self, proc: Supervised) -> None:
        proc.generation = next(self._generations)
        proc.starts += 1
        proc.state = ProcessState.RUNNING
        generation, pid = proc.generation, proc.spec.pid

        def ended(exit: Exit) -> None:
            self._ended(pid, generation, exit)

        try:
            proc.child = self.spawner.spawn(proc.spec, ended)
        except Exception as e:
            self._ended(pid, generation, Exit(error=f"{type(e).__name__}: {e}"))

    def _ended(self, pid: int, generation: int, exit: Exit) -> None:
        if self._dying.get(pid) == generation:
            del self._dying[pid]
            waiting = self.processes.get(pid)
            if (
                waiting is not None
                and waiting.state is ProcessState.WAITING
                and waiting.call is None
                and not self.stopped
            ):
                self._launch(waiting)
            return
        proc = self.processes.get(pid)
        if proc is None or proc.generation != generation or proc.state is not ProcessState.RUNNING:
            return  # an older child of the process, or a process stopped meanwhile
        proc.child = None
        proc.last_exit = exit
        if exit.clean:
            proc.state = ProcessState.FINISHED
            self.on_finished(proc.spec)
            return
        now = self.clock.seconds()
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
            _log.warn("Process {pid} failed: {reason}", pid=pid, reason=reason)
            self.on_failed(ProcessFailed(pid, self.node, reason, proc.restarts))
            return
        delay = self.policy.backoff(crashes)
        _log.info(
            "Process {pid} ended with {how}; restarting in {delay:.3f} s",
            pid=pid,
            how=exit.describe(),
            delay=delay,
        )
        proc.state = ProcessState.WAITING
        proc.call = self.clock.callLater(delay, self._restart, proc)

    def _restart(self, proc: Supervised) -> None:
        proc.call = None
        proc.restarts += 1
        self._launch(proc)
