"""
lipsd's work in the System Tuple Space, and the thin Twisted service that runs it.

The exchanges (L{publish}, L{poll}, L{declare_down}, and
L{lips.node.replace_processes}) are written against any
L{SystemSpace} (a L{lips.client.TupleSpaceClient}, or a fake); the decisions are made by
the sans-IO cores L{NodeMonitor} and L{Watchdog}, the watchdog run through a
L{lips.kernel.Driver} on the monitor's clock.  Why the exchanges are exactly-once is
explained in C{docs/node.md}.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Protocol, TypeVar

from twisted.application import service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from lips.kernel import Deliver, Driver
from lips.node._eval import Chooser, Placed, least_loaded
from lips.node._sections import (
    RecoverableSpace,
    Replaced,
    lipsd_pid,
    recover,
    replace_processes,
    take_over,
)
from lips.node._state import (
    DOWN_TAG,
    UP_TAG,
    NodeMonitor,
    NodeState,
    SystemSpace,
    down_template,
    state_template,
    up_template,
)
from lips.node._watchdog import Suspect, Watchdog

__all__ = ["NodeService", "Processes", "SystemSpace", "declare_down", "poll", "publish"]


async def publish(space: SystemSpace, state: NodeState, *, joining: bool) -> bool:
    """
    Replace the node's state tuple by C{state}, and take the node in again if it was
    declared down.  Only the node itself writes its state and its C{node-up} tuple.

    @param joining: the first report of this lipsd run: (re)write its C{node-up}.
    @return: whether a C{node-down} tuple of the node was taken.
    """
    name = state.name
    down = await space.inp(down_template(name))
    # The new report goes in before the old ones come out, so a reader (eval placing a
    # process, a watchdog) always finds one; reads return the oldest, so they see the
    # previous report until it is gone, which is harmless.
    await space.out(state.as_tuple())
    while True:
        oldest = await space.rdp(state_template(name))
        if oldest is None or oldest[2] == state.seq:
            break
        await space.inp(state_template(name, oldest[2]))
    if down is not None or joining:
        await space.inp(up_template(name))
        await space.out((UP_TAG, name, state.seq))
    return down is not None


async def poll(
    space: SystemSpace, nodes: Iterable[str], observe: Callable[[str, int | None], None]
) -> None:
    """
    Read the state tuple of each of C{nodes}, in order, and tell C{observe} (the
    watchdog's input) its report number, or None, as soon as it is read.
    """
    for name in nodes:
        found = await space.rdp(state_template(name))
        seq = found[2] if found is not None else None
        observe(name, seq if isinstance(seq, int) else None)


async def declare_down(space: SystemSpace, suspect: Suspect, watcher: str) -> bool:
    """
    Declare C{suspect} down by taking its unchanged report: of all the watchdogs that
    try, exactly one takes it, and only that one writes C{("node-down", name, seq,
    watcher)} (and takes the node's C{node-up} tuple).

    @return: whether this watchdog declared it.
    """
    stale = await space.inp(state_template(suspect.name, suspect.seq))
    if stale is None:
        return False
    if await space.rdp(down_template(suspect.name)) is None:
        await space.inp(up_template(suspect.name))
        await space.out((DOWN_TAG, suspect.name, suspect.seq, watcher))
    return True


class Processes(Protocol):
    """What L{NodeService} needs of the node's L{lips.node.ProcessService}."""

    @property
    def fenced(self) -> bool: ...

    def fence(self) -> None: ...

    async def adopt(self, client: SystemSpace, sections: RecoverableSpace) -> list[int]: ...


class _Client(SystemSpace, Protocol):
    @property
    def state(self) -> str: ...

    def close(self) -> defer.Deferred[None]: ...


class _SectionsClient(RecoverableSpace, _Client, Protocol):
    pass


Connect = Callable[[], defer.Deferred[Any]]
T = TypeVar("T")
#: Connects to the System Tuple Space as the process id given (a lipsd's own).
ConnectAs = Callable[[int], defer.Deferred[Any]]


class NodeService(service.Service):
    """
    lipsd on the network: every C{monitor.interval} seconds, connected to the
    FixServers (by C{connect}, with failover), it publishes the node's state and runs
    the watchdog's round.  A round that is still waiting (a failover) delays the next.

    With C{processes} (the node's L{lips.node.ProcessService}), it also restarts the
    processes of the nodes its watchdog found down on other nodes (chosen by
    C{chooser}), fences its own processes when no report of its own has gone in for
    C{fence_after} seconds, and runs again the processes whose records still name
    this node when it joins, comes back from a fence, or finds itself declared down.
    Moving and re-adopting records are critical sections (L{lips.node.Move},
    L{lips.node.Adopt}) run by a second client connected by C{connect_as} as this
    lipsd's own process (L{lipsd_pid}): before anything else a starting lipsd finishes
    the section a killed run of it left open, and before moving a down node's
    processes it finishes the section that node's lipsd left open.

    While the service runs, the watchdog is driven by a L{Driver} on C{monitor.clock}:
    each round feeds it what it read, then asks for its verdict (its L{Suspect}s come
    as L{Deliver} effects).

    @ivar declared: the suspects this lipsd declared down.
    @ivar taken_in: how many times this node took itself in again.
    @ivar moved: the processes this lipsd restarted elsewhere, as L{Placed}.
    """

    log = Logger()

    def __init__(
        self,
        monitor: NodeMonitor,
        connect: Connect,
        watchdog: Watchdog | None = None,
        processes: Processes | None = None,
        *,
        chooser: Chooser = least_loaded,
        fence_after: float | None = None,
        connect_as: ConnectAs | None = None,
    ) -> None:
        if processes is not None and connect_as is None:
            raise TypeError("a NodeService with processes needs connect_as for its sections")
        self.monitor = monitor
        self.watchdog = watchdog
        self.processes = processes
        self.chooser = chooser
        self.fence_after = fence_after
        self._connect = connect
        self._connect_as = connect_as
        self._sections: _SectionsClient | None = None
        self._taken_over: set[str] = set()
        self._watch: Driver[Watchdog] | None = None
        self._found: list[Suspect] = []
        self._client: _Client | None = None
        self._watching: defer.Deferred[None] | None = None
        self._sections_lock = defer.DeferredLock()
        self._loop: LoopingCall | None = None
        self._guard: LoopingCall | None = None
        self._joining = True
        self._last_report = 0.0
        self._waiting: set[str] = set()
        self.declared: list[Suspect] = []
        self.moved: list[Placed] = []
        self.taken_in = 0
        self.rounds = 0

    def startService(self) -> None:
        service.Service.startService(self)
        clock = self.monitor.clock
        if self.watchdog is not None:
            self._watch = Driver(self.watchdog, clock, {Deliver: self._suspected})
        self._last_report = clock.seconds()
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock
        self._loop.start(self.monitor.interval, now=True)
        if self.processes is not None and self.fence_after is not None:
            self._guard = LoopingCall(self._check_fence)
            self._guard.clock = clock
            self._guard.start(min(self.fence_after, self.monitor.interval) / 4, now=False)

    def stopService(self) -> defer.Deferred[None]:
        service.Service.stopService(self)
        for loop in (self._loop, self._guard):
            if loop is not None and loop.running:
                loop.stop()
        self._loop = self._guard = None
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.stop()
        watching, self._watching = self._watching, None
        if watching is not None:
            watching.cancel()
        clients = [c for c in (self._client, self._sections) if c is not None]
        self._client = self._sections = None
        return defer.DeferredList([c.close() for c in clients], consumeErrors=True).addCallback(
            lambda _: None
        )

    def _check_fence(self) -> None:
        processes, limit = self.processes, self.fence_after
        if processes is None or limit is None or processes.fenced:
            return
        silent = self.monitor.clock.seconds() - self._last_report
        if silent >= limit:
            self.log.warn(
                "No report of {node} for {silent:.2f} s: fencing its processes",
                node=self.monitor.name,
                silent=silent,
            )
            processes.fence()

    def _tick(self) -> defer.Deferred[None]:
        d = defer.Deferred.fromCoroutine(self._round())
        d.addErrback(self._failed)
        return d

    def _failed(self, failure: Any) -> None:
        self.log.failure("lipsd round failed", failure)
        client = self._client
        if client is not None and client.state in ("failed", "closed"):
            self._client = None
        sections = self._sections
        if sections is not None and sections.state in ("failed", "closed"):
            self._sections = None

    async def _connect_sections(self) -> _SectionsClient:
        """This lipsd's sections client, the section a killed run left open finished."""
        if self._sections is None:
            assert self._connect_as is not None
            sections = await self._connect_as(lipsd_pid(self.monitor.name))
            section = await recover(sections)
            if section is not None:
                self.log.warn(
                    "Finished the {kind} section a killed run of this lipsd left open",
                    kind=section.kind,
                )
            self._sections = sections
        return self._sections

    async def _round(self) -> None:
        if self._client is None:
            self._client = await self._connect()
        client = self._client
        if self.processes is not None:
            await self._connect_sections()
        state = self.monitor.report()
        # The lease a report gives runs from before it was sent: no watchdog can have
        # seen it earlier, however long its reply takes, so the fence (fence_after from
        # here) always falls before a watchdog's verdict.
        sent = self.monitor.clock.seconds()
        taken_in = await publish(client, state, joining=self._joining)
        self._last_report = sent
        if taken_in:
            self.taken_in += 1
            self.log.info("Node {name} taken in again", name=state.name)
        processes = self.processes
        if processes is not None and (taken_in or self._joining or processes.fenced):
            sections = await self._connect_sections()
            await self._one_section(lambda: processes.adopt(client, sections))
        self._joining = False
        self.rounds += 1
        watchdog, watch = self.watchdog, self._watch
        if watchdog is None or watch is None or self._watching is not None:
            return
        # The watchdog's work (reads, verdicts, moves) runs beside the next reports, one
        # round of it at a time: a slow one must not hold this node's own report back,
        # or the node fences itself for nothing.
        watching = defer.Deferred.fromCoroutine(self._watch_round(client, watchdog, watch))
        self._watching = watching

        def done(result: object) -> object:
            if self._watching is watching:
                self._watching = None
            return result

        watching.addBoth(done).addErrback(self._watch_failed)

    def _watch_failed(self, failure: Any) -> None:
        if failure.check(defer.CancelledError) and not self.running:
            return  # stopped part-way
        self._failed(failure)

    async def _watch_round(
        self, client: _Client, watchdog: Watchdog, watch: Driver[Watchdog]
    ) -> None:
        processes = self.processes

        def observe(name: str, seq: int | None) -> None:
            watch.input(watchdog.observe, name, seq)

        await poll(client, watchdog.nodes, observe)
        watch.input(watchdog.check)
        found, self._found = self._found, []
        for suspect in found:
            if await declare_down(client, suspect, self.monitor.name):
                self.declared.append(suspect)
                self.log.warn(
                    "Node {node} declared down: report {seq} unchanged for {silent:.2f} s",
                    node=suspect.name,
                    seq=suspect.seq,
                    silent=suspect.silent_for,
                )
            watch.input(watchdog.tried, suspect)
        if processes is not None:
            await self._replace(client, watchdog)

    async def _one_section(self, section: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run C{section}, one at a time: a lipsd's sections share its checkpoint."""
        await self._sections_lock.acquire()
        try:
            return await section()
        finally:
            self._sections_lock.release()

    async def _take_over(self, down: str) -> None:
        """Finish the section the lipsd of C{down} (declared down) left open, if any."""
        assert self._connect_as is not None
        theirs: _SectionsClient = await self._connect_as(lipsd_pid(down))
        try:
            await take_over(theirs, down)
        finally:
            await theirs.close()

    def _suspected(self, effect: Deliver[Suspect]) -> None:
        self._found.append(effect.item)

    async def _replace(self, client: SystemSpace, watchdog: Watchdog) -> None:
        """Restart the processes of every watched node declared down elsewhere."""
        for name in watchdog.silent():
            if await client.rdp(down_template(name)) is None:
                self._waiting.discard(name)
                self._taken_over.discard(name)
                continue
            if name not in self._taken_over:
                await self._take_over(name)
                self._taken_over.add(name)
            nodes = [n for n in (self.monitor.name, *watchdog.nodes) if n != name]
            sections = await self._connect_sections()
            result: Replaced = await self._one_section(
                functools.partial(replace_processes, client, name, nodes, self.chooser, sections)
            )
            for placed in result.moved:
                self.log.warn(
                    "Process {pid} of down node {down} restarted on {node}",
                    pid=placed.pid,
                    down=name,
                    node=placed.node,
                )
            self.moved.extend(result.moved)
            if result.waiting and name not in self._waiting:
                self.log.warn(
                    "Processes of down node {down} wait: no idle node among {nodes}",
                    down=name,
                    nodes=nodes,
                )
            if result.waiting:
                self._waiting.add(name)
            else:
                self._waiting.discard(name)
