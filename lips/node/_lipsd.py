"""
lipsd's work in the System Tuple Space, and the thin Twisted service that runs it.

The three exchanges (L{publish}, L{poll}, L{declare_down}) are written against any
L{SystemSpace} (a L{lips.client.TupleSpaceClient}, or a fake); the decisions are made by
the sans-IO cores L{NodeMonitor} and L{Watchdog}.  Why the exchanges are exactly-once
is explained in C{docs/node.md}.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from twisted.application import service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from lips.node._state import (
    DOWN_TAG,
    UP_TAG,
    NodeMonitor,
    NodeState,
    down_template,
    state_template,
    up_template,
)
from lips.node._watchdog import Suspect, Watchdog
from lips.tuples import LTuple

__all__ = ["NodeService", "SystemSpace", "declare_down", "poll", "publish"]


class SystemSpace(Protocol):
    """The operations lipsd uses on the System Tuple Space (a client's, structurally)."""

    def out(self, values: Sequence[Any]) -> defer.Deferred[None]: ...

    def inp(self, template: Sequence[Any]) -> defer.Deferred[LTuple | None]: ...

    def rdp(self, template: Sequence[Any]) -> defer.Deferred[LTuple | None]: ...


async def publish(space: SystemSpace, state: NodeState, *, joining: bool) -> bool:
    """
    Replace the node's state tuple by C{state}, and take the node in again if it was
    declared down.  Only the node itself writes its state and its C{node-up} tuple.

    @param joining: the first report of this lipsd run: (re)write its C{node-up}.
    @return: whether a C{node-down} tuple of the node was taken.
    """
    name = state.name
    down = await space.inp(down_template(name))
    await space.inp(state_template(name))
    await space.out(state.as_tuple())
    if down is not None or joining:
        await space.inp(up_template(name))
        await space.out((UP_TAG, name, state.seq))
    return down is not None


async def poll(space: SystemSpace, watchdog: Watchdog) -> None:
    """Read every watched node's state tuple and tell the watchdog."""
    for name in watchdog.nodes:
        found = await space.rdp(state_template(name))
        seq = found[2] if found is not None else None
        watchdog.observe(name, seq if isinstance(seq, int) else None)


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


class _Client(SystemSpace, Protocol):
    @property
    def state(self) -> str: ...

    def close(self) -> defer.Deferred[None]: ...


Connect = Callable[[], defer.Deferred[Any]]


class NodeService(service.Service):
    """
    lipsd on the network: every C{monitor.interval} seconds, connected to the
    FixServers (by C{connect}, with failover), it publishes the node's state and runs
    the watchdog's round.  A round that is still waiting (a failover) delays the next.

    @ivar declared: the suspects this lipsd declared down.
    @ivar taken_in: how many times this node took itself in again.
    """

    log = Logger()

    def __init__(
        self,
        monitor: NodeMonitor,
        connect: Connect,
        watchdog: Watchdog | None = None,
    ) -> None:
        self.monitor = monitor
        self.watchdog = watchdog
        self._connect = connect
        self._client: _Client | None = None
        self._loop: LoopingCall | None = None
        self._joining = True
        self.declared: list[Suspect] = []
        self.taken_in = 0
        self.rounds = 0

    def startService(self) -> None:
        service.Service.startService(self)
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self.monitor.clock
        self._loop.start(self.monitor.interval, now=True)

    def stopService(self) -> defer.Deferred[None]:
        service.Service.stopService(self)
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        client, self._client = self._client, None
        if client is None:
            return defer.succeed(None)
        return client.close()

    def _tick(self) -> defer.Deferred[None]:
        d = defer.Deferred.fromCoroutine(self._round())
        d.addErrback(self._failed)
        return d

    def _failed(self, failure: Any) -> None:
        self.log.failure("lipsd round failed", failure)
        client = self._client
        if client is not None and client.state in ("failed", "closed"):
            self._client = None

    async def _round(self) -> None:
        if self._client is None:
            self._client = await self._connect()
        client = self._client
        state = self.monitor.report()
        if await publish(client, state, joining=self._joining):
            self.taken_in += 1
            self.log.info("Node {name} taken in again", name=state.name)
        self._joining = False
        self.rounds += 1
        if self.watchdog is None:
            return
        await poll(client, self.watchdog)
        for suspect in self.watchdog.suspects():
            if await declare_down(client, suspect, self.monitor.name):
                self.declared.append(suspect)
                self.log.warn(
                    "Node {node} declared down: report {seq} unchanged for {silent:.2f} s",
                    node=suspect.name,
                    seq=suspect.seq,
                    silent=suspect.silent_for,
                )
            self.watchdog.tried(suspect)
