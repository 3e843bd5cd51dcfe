"""
lipsd's processes on the network: L{ReactorSpawner} starts children with
C{reactor.spawnProcess}; L{ProcessService} takes the eval requests addressed to its
node from the System Tuple Space, runs them under a L{Supervisor} and writes what
becomes of them back.

The supervisor is a sans-IO core; L{ProcessService} is its adapter: it drives it with a
L{lips.kernel.Driver}, whose handlers turn its L{Spawn} and L{Kill} effects into
children of an L{ISpawner} (each child's end fed back as the supervisor's C{ended}
input) and its L{Deliver}ed outcomes into writes to the System Tuple Space.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from twisted.application import service
from twisted.internet import defer, error
from twisted.internet.interfaces import IProcessTransport, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from lips.kernel import Deliver, Driver, Kill, Spawn
from lips.node._eval import EvalRequest, eval_template, process_template
from lips.node._lipsd import SystemSpace
from lips.node._sections import Adopt, RecoverableSpace, run
from lips.node.child import ENDPOINTS_VAR, PID_VAR
from lips.supervisor import (
    Exit,
    Outcome,
    ProcessFailed,
    ProcessFinished,
    ProcessSpec,
    Supervisor,
)
from lips.tuples import LTuple, packb

__all__ = ["IChild", "ISpawner", "ProcessService", "ReactorSpawner", "child_input"]

#: How long the request loop waits before connecting again after a failure.
RETRY_DELAY = 1.0


class IChild(Interface):
    """A running child process."""

    os_pid = Attribute("The operating system's id of the process, or None if unknown.")

    def terminate() -> None:
        """Ask the process to end (SIGTERM); its end is still reported."""


class ISpawner(Interface):
    """Starts child processes: what carries out the supervisor's L{Spawn} effects."""

    def spawn(spec: ProcessSpec, ended: Callable[[Exit], None]) -> IChild:
        """
        Start C{spec}'s process; call C{ended} once, later, when it ends.

        @raise Exception: if it cannot be started (the supervisor counts it as a crash).
        """


def child_input(spec: ProcessSpec) -> bytes:
    """What a child reads on standard input: the msgpack array C{[fields, args]}."""
    return packb([spec.fields, spec.args])


class _ChildProtocol(ProcessProtocol):
    def __init__(self, ended: Callable[[Exit], None]) -> None:
        self._ended = ended

    def processEnded(self, reason: Failure) -> None:
        value = reason.value
        if isinstance(value, error.ProcessTerminated):
            self._ended(Exit(code=value.exitCode, signal=value.signal))
        else:
            self._ended(Exit(code=0))


@implementer(IChild)
class _Child:
    def __init__(self, transport: IProcessTransport) -> None:
        self._transport = transport

    @property
    def os_pid(self) -> int | None:
        pid = self._transport.pid
        return pid if isinstance(pid, int) else None

    def terminate(self) -> None:
        with contextlib.suppress(error.ProcessExitedAlready):
            self._transport.signalProcess("TERM")


@implementer(ISpawner)
class ReactorSpawner:
    """
    Starts C{python -m lips.node.child TARGET} children with C{reactor.spawnProcess}:
    the process id and endpoints in the environment, fields and arguments on standard
    input, standard output and error shared with lipsd.

    @param pythonpath: directories put first on the children's C{PYTHONPATH} (where
        the application's modules are).
    @param cwd: the children's working directory (lipsd's by default).
    """

    def __init__(
        self,
        reactor: Any,
        *,
        executable: str = sys.executable,
        pythonpath: Sequence[str] = (),
        cwd: str | None = None,
    ) -> None:
        self._reactor = reactor
        self._executable = executable
        self._pythonpath = tuple(pythonpath)
        self._cwd = cwd

    def environment(self, spec: ProcessSpec) -> dict[str, str]:
        """The environment of C{spec}'s child."""
        env = dict(os.environ)
        env[PID_VAR] = str(spec.pid)
        env[ENDPOINTS_VAR] = json.dumps(list(spec.endpoints))
        path = [*self._pythonpath, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
        if path:
            env["PYTHONPATH"] = os.pathsep.join(path)
        return env

    def spawn(self, spec: ProcessSpec, ended: Callable[[Exit], None]) -> IChild:
        transport = self.start(
            ["lips.node.child", spec.target], self.environment(spec), child_input(spec), ended
        )
        return _Child(transport)

    def start(
        self,
        module: Sequence[str],
        env: dict[str, str],
        stdin: bytes,
        ended: Callable[[Exit], None],
    ) -> IProcessTransport:
        """Run C{python -m MODULE ARGS...} with C{env}, write C{stdin} and close it."""
        exe = self._executable
        transport: IProcessTransport = self._reactor.spawnProcess(
            _ChildProtocol(ended),
            exe,
            [exe, "-m", *module],
            env=env,
            path=self._cwd,
            childFDs={0: "w", 1: 1, 2: 2},
        )
        transport.write(stdin)
        transport.closeStdin()
        return transport


class _Client(SystemSpace, Protocol):
    @property
    def state(self) -> str: ...

    def in_(self, template: Sequence[Any], timeout: float | None = None) -> Any: ...

    def close(self) -> defer.Deferred[None]: ...


Connect = Callable[[], defer.Deferred[Any]]
Farewell = Callable[[ProcessSpec], defer.Deferred[Any]]
"""Says goodbye for a finished process to its tuple space (see L{say_goodbye})."""


def say_goodbye(reactor: Any) -> Farewell:
    """
    A L{Farewell} that connects to the process's own MessageServers as the process and
    says goodbye: they forget its log and checkpoint (it will never run again).
    """

    async def farewell(spec: ProcessSpec) -> None:
        import lips.client

        space = await lips.client.connect(
            reactor, list(spec.endpoints), pid=spec.pid, name=f"goodbye-{spec.pid}"
        )
        await space.close(goodbye=True)

    return lambda spec: defer.Deferred.fromCoroutine(farewell(spec))


class ProcessService(service.Service):
    """
    Takes the eval requests addressed to node C{supervisor.node} (a blocking C{in}
    on the System Tuple Space, through C{connect}) and starts them under
    C{supervisor}, whose children C{spawner} starts.  When a process finishes, its
    C{process} record is taken; when it fails, the record is replaced by
    C{("process-failed", pid, node, reason, restarts)}.

    @param endpoints: the application's MessageServers, for requests that name none.
    @param farewell: says goodbye for a finished process (L{say_goodbye}; none: the
        servers keep its log and checkpoint).
    @param allow: the targets this node may run, as fnmatch patterns of
        C{package.module:function}; a request for any other is refused with a
        process-failed record saying so.  C{None}: any target (lipsd always gives a
        list, empty by default: no eval'd process at all).
    With C{fenced}, requests taken are held, not started, until L{adopt} runs (lipsd
    calls it once its first report is in, and whenever it finds itself declared
    down); L{fence} stops every child and holds requests again.  See "Restarting a
    down node's processes" in C{docs/node.md}.

    @ivar started: the process ids started here from requests, in order.
    @ivar adopted: the process ids started (again) here by L{adopt}, in order.
    """

    log = Logger()

    def __init__(
        self,
        supervisor: Supervisor,
        spawner: ISpawner,
        connect: Connect,
        clock: IReactorTime,
        endpoints: Sequence[str] = (),
        *,
        fenced: bool = False,
        farewell: Farewell | None = None,
        allow: Sequence[str] | None = None,
    ) -> None:
        if not isinstance(supervisor, Supervisor):
            raise TypeError(f"not a Supervisor: {supervisor!r}")
        if not ISpawner.providedBy(spawner):
            raise TypeError(f"not an ISpawner: {spawner!r}")
        self.supervisor = supervisor
        self.spawner = spawner
        self.clock = clock
        self.driver = Driver(
            supervisor,
            clock,
            {Spawn: self._spawn, Kill: self._kill, Deliver: self._outcome},
        )
        # The children spawned and not yet ended, by handle (None while spawning).
        self._children: dict[int, IChild | None] = {}
        self.endpoints = tuple(endpoints)
        self._connect = connect
        self._farewell = farewell
        self.allow = None if allow is None else tuple(allow)
        self._client: _Client | None = None
        self._loop: defer.Deferred[None] | None = None
        self._writes: list[defer.Deferred[None]] = []
        self._held: list[EvalRequest] = []
        self.fenced = fenced
        self.started: list[int] = []
        self.adopted: list[int] = []

    def startService(self) -> None:
        service.Service.startService(self)
        if self.allow == ():
            self.log.warn(
                "Node {node} runs no eval'd process: no target is allowed (lipsd --allow)",
                node=self.supervisor.node,
            )
        self._loop = defer.Deferred.fromCoroutine(self._take())
        self._loop.addErrback(lambda f: self.log.failure("eval request loop ended", f))

    def stopService(self) -> defer.Deferred[None]:
        service.Service.stopService(self)
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self.driver.input(self.supervisor.stop)
        self.driver.stop()
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.cancel()
            with contextlib.suppress(defer.CancelledError):
                await loop
        writes = list(self._writes)
        if writes:
            await defer.DeferredList(writes, consumeErrors=True)
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def _client_(self) -> _Client:
        if self._client is None:
            self._client = await self._connect()
        return self._client

    async def _take(self) -> None:
        node = self.supervisor.node
        while self.running:
            try:
                client = await self._client_()
                values = await client.in_(eval_template(node))
            except defer.CancelledError:
                return
            except Exception:
                self.log.failure("Taking eval requests for {node} failed", node=node)
                client_ = self._client
                if client_ is not None and client_.state in ("failed", "closed"):
                    self._client = None
                await deferLater(self.clock, RETRY_DELAY)
                continue
            self._request(values)

    def fence(self) -> None:
        """
        Stop every child (they may be restarted on another node) and hold the requests
        taken until L{adopt}.
        """
        stopped = self.driver.input(self.supervisor.fence)
        if stopped and not self.fenced:
            self.log.warn(
                "Node {node} fenced: stopped processes {pids}",
                node=self.supervisor.node,
                pids=stopped,
            )
        self.fenced = True

    async def adopt(self, client: SystemSpace, sections: RecoverableSpace) -> list[int]:
        """
        Fence, then run (again) every process whose record still names this node: the
        records are taken back in an L{Adopt} section of this lipsd (C{sections}: its
        own client, so a lipsd killed part-way loses no record), and the processes
        started.  Then the held requests whose records still name this node are
        started.

        @return: the process ids adopted.
        """
        node = self.supervisor.node
        self.fence()
        writes = list(self._writes)
        if writes:
            await defer.DeferredList(writes, consumeErrors=True)
        requests: list[EvalRequest] = await run(sections, Adopt(node))
        held, self._held = self._held, []
        self.fenced = False
        adopted = []
        for request in requests:
            if self._start(request):
                adopted.append(request.spec.pid)
        self.adopted.extend(adopted)
        for request in held:
            pid = request.spec.pid
            known = self.supervisor.processes.get(pid)
            if known is not None and not known.state.final:
                continue
            if await client.rdp(process_template(pid, node)) is not None and self._start(request):
                self.started.append(pid)
        if adopted:
            self.log.info("Node {node} runs processes {pids} again", node=node, pids=adopted)
        return adopted

    def _request(self, values: LTuple) -> None:
        try:
            request = EvalRequest.from_tuple(values)
        except ValueError as e:
            self.log.error("Dropped a bad eval request: {error}", error=str(e))
            return
        if self.fenced:
            self._held.append(request)
            return
        if self._start(request):
            self.started.append(request.spec.pid)
            self.log.info(
                "Started process {pid}: {target}",
                pid=request.spec.pid,
                target=request.spec.target,
            )

    def allowed(self, target: str) -> bool:
        """Whether this node may run C{target} (see C{allow})."""
        return self.allow is None or any(fnmatch.fnmatchcase(target, p) for p in self.allow)

    def _start(self, request: EvalRequest) -> bool:
        spec = request.spec
        if not self.allowed(spec.target):
            # Whoever can write the System Tuple Space could run any importable function
            # here: only the targets the operator allowed run.  The refusal is recorded
            # where the submitter looks for the process (its process-failed record).
            node = self.supervisor.node
            self.log.warn(
                "Refused process {pid}: {target} is not allowed on node {node} (--allow)",
                pid=spec.pid,
                target=spec.target,
                node=node,
            )
            self._failed(
                ProcessFailed(
                    spec.pid, node, f"{spec.target} is not allowed on node {node} (--allow)", 0
                )
            )
            return False
        if not spec.endpoints:
            if not self.endpoints:
                self._failed(
                    ProcessFailed(spec.pid, self.supervisor.node, "no application endpoints", 0)
                )
                return False
            spec = ProcessSpec(spec.pid, spec.target, spec.fields, spec.args, self.endpoints)
        return self.driver.input(self.supervisor.start, spec)

    # -- the supervisor's effects ---------------------------------------------------------

    def _spawn(self, effect: Spawn[ProcessSpec]) -> None:
        handle = effect.handle

        def ended(exit: Exit) -> None:
            self._children.pop(handle, None)
            self.driver.input(self.supervisor.ended, handle, exit)

        self._children[handle] = None
        try:
            child = self.spawner.spawn(effect.spec, ended)
        except Exception as e:
            self._children.pop(handle, None)
            ended(Exit(error=f"{type(e).__name__}: {e}"))
            return
        if handle in self._children:  # it may have ended already
            self._children[handle] = child

    def _kill(self, effect: Kill) -> None:
        child = self._children.get(effect.handle)
        if child is not None:
            child.terminate()

    def _outcome(self, effect: Deliver[Outcome]) -> None:
        outcome = effect.item
        if isinstance(outcome, ProcessFinished):
            self._finished(outcome.spec)
        else:
            self._failed(outcome)

    def _write(self, work: Callable[[_Client], Any]) -> None:
        async def run() -> None:
            client = await self._client_()
            await work(client)

        d = defer.Deferred.fromCoroutine(run())
        self._writes.append(d)

        def done(result: object) -> None:
            self._writes.remove(d)
            if isinstance(result, Failure):
                self.log.failure("Writing a process record failed", result)

        d.addBoth(done)

    def _finished(self, spec: ProcessSpec) -> None:
        self.log.info("Process {pid} finished", pid=spec.pid)

        async def work(client: _Client) -> None:
            await client.inp(process_template(spec.pid, self.supervisor.node))
            # It ended cleanly and is never started again: its space may forget it.
            if self._farewell is not None:
                await self._farewell(spec)

        self._write(work)

    def _failed(self, record: ProcessFailed) -> None:
        async def work(client: _Client) -> None:
            if await client.inp(process_template(record.pid, record.node)) is not None:
                await client.out(record.as_tuple())

        self._write(work)
