"""
The simulated world every LiPS simulator runs in: a virtual clock, one seeded random,
an agenda of planned events, hosts running cores on the kernel contract, and a network
of datagrams and of byte streams.  No reactor, no sockets, no threads: a run is a
function of its seed.

    world = World(seed=7)
    net = world.datagrams
    a = world.host("a", PingCore(), {Send: lambda h, e: net.send("a", e.to, e.message)})
    net.attach("a", lambda src, message: a.feed(a.core.received, src, message))
    world.plan(0.5, lambda: a.feed(a.core.start))
    world.check(lambda: invariants_hold(world))   # after every step
    world.run(until=10.0)

One step is one of, in this order among those due at the earliest time: the next planned
event; the next datagram arriving; or the timers of every host (not paused) that are due,
host by host in the order they were added, each host's in its table's order.  Events at
the same time keep the order they were planned or sent in, and every random choice comes
from C{world.rng}, so a seed replays exactly.  After every step the world calls its
checks; a check raises to fail the run.

A host carries out its core's effects as C{docs/design/core.md} describes: C{StartTimer}
and C{CancelTimer} go to its own L{TimerTable}, every other effect to the handler the
simulator gave for its class (a core emitting an effect with no handler is an error of
the simulator, and raises).  A paused host (a stopped process) fires no timers and its
datagrams wait in a bounded backlog until it resumes; a host that crashed is removed,
and what is sent to it is lost.

Simulators that need more than that have it here too, each off unless asked for:

  - a per-datagram fault model of their own (L{Datagrams.fault}) in place of the
    L{Link}'s;
  - hosts that carry out their core's effects as the L{Driver<lips.kernel.Driver>}
    does (C{queue_nested}): an input fed while the effects of an earlier one are being
    carried out has its effects carried out after those, never before (a ring that
    delivers a payload before the broadcast that handed it over returns);
  - hosts whose timers an outside clock fires (a host made with C{Host(world, ...)}
    and not added with L{World.host} is never fired by the world; L{Host.fire} takes
    the time the timers were armed for);
  - outside clocks (L{World.add_clock}): a Twisted C{Clock} behind a real core that
    needs an C{IReactorTime}, run to the world's time at the start of every step.

The ring simulator (L{lips.testing.ringsim}), the served-cluster simulator
(L{lips.testing.clustersim}), the recovery simulator (L{lips.testing.appsim}) and the
ARMOR simulator (L{lips.testing.armorsim}) are configurations of this world.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from typing import Any, Generic, TypeVar

import attrs

from lips.kernel import CancelTimer, Effect, StartTimer, TimerTable

__all__ = [
    "Datagrams",
    "Host",
    "Link",
    "Stream",
    "Streams",
    "World",
]

C = TypeVar("C")
Name = Hashable
Handler = Callable[["Host[Any]", Any], None]


class _Agenda:
    """Events in time order; ties in the order they were added."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._counter = 0

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, at: float, event: Callable[[], None]) -> None:
        if not math.isfinite(at):
            raise ValueError(f"an event needs a finite time, not {at!r}")
        self._counter += 1
        heapq.heappush(self._heap, (at, self._counter, event))

    def next_time(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def pop(self) -> Callable[[], None]:
        return heapq.heappop(self._heap)[2]


class Host(Generic[C]):
    """
    One core in the world: the core, its timer table and the handlers of its effects.

    Feed it inputs with L{feed}, which calls the input at the world's time and carries
    out what the core emitted, and what carrying that out caused, before it returns.

    With C{queue_nested}, a L{carry_out} called while one is under way (a handler that
    feeds the core again) returns at once, and the one under way carries out the new
    effects after those it has already taken, in order, as the
    L{Driver<lips.kernel.Driver>} does.  Without it (the default) the nested call
    carries them out itself, before the rest of the batch under way.
    """

    def __init__(
        self,
        world: World,
        name: Name,
        core: C,
        handlers: Mapping[type[Effect], Handler],
        *,
        queue_nested: bool = False,
    ) -> None:
        for kind in handlers:
            if kind in (StartTimer, CancelTimer):
                raise TypeError("a host keeps its core's timers itself")
        self.world = world
        self.name = name
        self.core = core
        self.handlers = dict(handlers)
        self.timers = TimerTable()
        self.paused = False
        self.effects = 0
        self.queue_nested = queue_nested
        self._carrying = False

    def __repr__(self) -> str:
        return f"<Host {self.name!r}>"

    def feed(self, method: Callable[..., Any], *args: Any) -> Any:
        """Call the input C{method(*args, now)}, then carry out the effects."""
        result = method(*args, self.world.now)
        self.carry_out()
        return result

    def carry_out(self) -> None:
        """Carry out the core's effects until it has none left."""
        if not self.queue_nested:
            self._carry_out()
            return
        if self._carrying:
            return  # the carry_out under way takes them, after what it already took
        self._carrying = True
        try:
            self._carry_out()
        finally:
            self._carrying = False

    def _carry_out(self) -> None:
        drain: Callable[[], list[Effect]] = self.core.drain  # type: ignore[attr-defined]
        while effects := drain():
            for effect in effects:
                self.effects += 1
                if isinstance(effect, StartTimer):
                    self.timers.start(effect.key, effect.at)
                elif isinstance(effect, CancelTimer):
                    self.timers.cancel(effect.key)
                else:
                    handler = self.handlers.get(type(effect))
                    if handler is None:
                        raise TypeError(f"{self!r} has no handler for {effect!r}")
                    handler(self, effect)

    def next_deadline(self) -> float | None:
        return None if self.paused else self.timers.next_deadline()

    def fire(self, now: float | None = None) -> bool:
        """
        Fire the timers due at C{now} (by default the world's time), each at C{now},
        carrying out what each caused before the next; whether any was due.
        """
        fired = False
        if now is None:
            now = self.world.now
        timer = self.core.timer  # type: ignore[attr-defined]
        for key in self.timers.due(now):
            fired = True
            timer(key, now)
            self.carry_out()
        return fired


@attrs.define
class Link:
    """
    How the network treats a datagram: lost with probability C{loss}, sent twice with
    probability C{duplicate}, delayed by a uniform time in [C{delay_min}, C{delay_max}]
    (so that datagrams overtake each other).
    """

    loss: float = 0.0
    duplicate: float = 0.0
    delay_min: float = 0.0005
    delay_max: float = 0.002


class Datagrams:
    """
    The world's datagram network: unreliable, unordered, between named endpoints.

    An endpoint is attached with the callable that receives its datagrams. Partitions
    split the endpoints into groups that hear only each other; C{deaf} endpoints miss
    broadcasts; a paused endpoint's datagrams wait in a backlog of at most C{backlog}
    (more are dropped and counted) and are handed over, in order, on L{resume}.

    @ivar fault: a simulator's own fault model, or None for the L{Link}'s.  For each
        datagram that is not partitioned away or missed by a deaf endpoint, it is called
        as C{fault(src, dst, message)} and answers the delays of the copies to send: none
        (the datagram is lost), one, or more (duplicates).  It takes its chances from
        C{world.rng}, and L{faults} does not apply to it.
    """

    def __init__(self, world: World, link: Link | None = None, backlog: int = 256) -> None:
        self.world = world
        self.link = link if link is not None else Link()
        self.backlog = backlog
        self.faults = True
        self.fault: Callable[[Name, Name, Any], Sequence[float]] | None = None
        self.groups: list[set[Name]] | None = None
        self.deaf: set[Name] = set()
        self._endpoints: dict[Name, Callable[[Name, Any], None]] = {}
        self._paused: dict[Name, list[tuple[Name, Any]]] = {}
        self._flight: list[tuple[float, int, Name, Name, Any]] = []
        self._counter = 0
        self.counts: dict[str, int] = {
            "sent": 0,
            "lost": 0,
            "duplicated": 0,
            "partitioned": 0,
            "unattached": 0,
            "backlog.dropped": 0,
        }

    # -- endpoints --------------------------------------------------------------------------

    def attach(self, name: Name, receive: Callable[[Name, Any], None]) -> None:
        self._endpoints[name] = receive

    def detach(self, name: Name) -> None:
        """C{name} is gone (crashed): what is sent to it, or on its way, is lost."""
        self._endpoints.pop(name, None)
        self._paused.pop(name, None)

    def attached(self, name: Name) -> bool:
        return name in self._endpoints

    def pause(self, name: Name) -> None:
        self._paused.setdefault(name, [])

    def paused(self, name: Name) -> bool:
        return name in self._paused

    def resume(self, name: Name) -> list[tuple[Name, Any]]:
        """End C{name}'s pause; the datagrams its backlog kept, oldest first."""
        return self._paused.pop(name, [])

    # -- moving datagrams -------------------------------------------------------------------

    def reachable(self, src: Name, dst: Name) -> bool:
        if self.groups is None:
            return True
        return any(src in g and dst in g for g in self.groups)

    def send(self, src: Name, dst: Name, message: Any, broadcast: bool = False) -> None:
        """Send C{message} from C{src} to C{dst}, through the link's faults."""
        rng = self.world.rng
        self.counts["sent"] += 1
        if not self.reachable(src, dst):
            self.counts["partitioned"] += 1
            return
        if broadcast and dst in self.deaf:
            self.counts["lost"] += 1
            return
        if self.fault is not None:
            delays = self.fault(src, dst, message)
            if not delays:
                self.counts["lost"] += 1
            elif len(delays) > 1:
                self.counts["duplicated"] += 1
            for delay in delays:
                self._counter += 1
                heapq.heappush(
                    self._flight, (self.world.now + delay, self._counter, src, dst, message)
                )
            return
        link = self.link
        if self.faults and link.loss and rng.random() < link.loss:
            self.counts["lost"] += 1
            return
        copies = 1
        if self.faults and link.duplicate and rng.random() < link.duplicate:
            copies = 2
            self.counts["duplicated"] += 1
        for _ in range(copies):
            delay = rng.uniform(link.delay_min, link.delay_max)
            self._counter += 1
            heapq.heappush(
                self._flight, (self.world.now + delay, self._counter, src, dst, message)
            )

    def next_time(self) -> float | None:
        return self._flight[0][0] if self._flight else None

    def deliver_next(self) -> None:
        """Hand the next datagram in flight to its endpoint (or its backlog)."""
        _, _, src, dst, message = heapq.heappop(self._flight)
        if dst in self._paused:
            backlog = self._paused[dst]
            if len(backlog) < self.backlog:
                backlog.append((src, message))
            else:
                self.counts["backlog.dropped"] += 1
            return
        receive = self._endpoints.get(dst)
        if receive is None:
            self.counts["unattached"] += 1
            return
        receive(src, message)

    def in_flight(self) -> Iterator[tuple[Name, Name, Any]]:
        return ((src, dst, m) for _, _, src, dst, m in sorted(self._flight))


class Stream:
    """
    One direction of a connection: bytes arrive in order, each write after a delay no
    shorter than the one before it, until the stream is closed or cut.
    """

    def __init__(self, streams: Streams, src: Name, dst: Name) -> None:
        self.streams = streams
        self.src = src
        self.dst = dst
        self.open = True
        self._last = 0.0
        self.receive: Callable[[bytes], None] | None = None
        self.closed: Callable[[str], None] | None = None

    def __repr__(self) -> str:
        return f"<Stream {self.src!r}->{self.dst!r}{'' if self.open else ' closed'}>"

    def write(self, data: bytes) -> None:
        if not self.open:
            return
        world = self.streams.world
        at = max(self._last, world.now + self.streams.delay())
        self._last = at
        world.plan(at, lambda: self._arrive(data))

    def _arrive(self, data: bytes) -> None:
        if self.open and self.receive is not None and self.streams.reachable(self.src, self.dst):
            self.receive(data)

    def close(self, why: str = "closed") -> None:
        """End the stream after the bytes on their way (a FIN)."""
        if not self.open:
            return
        world = self.streams.world
        at = max(self._last, world.now + self.streams.delay())
        world.plan(at, lambda: self._end(why))

    def cut(self, why: str = "reset") -> None:
        """End the stream now: the bytes on their way are lost (a reset)."""
        self._end(why)

    def _end(self, why: str) -> None:
        if not self.open:
            return
        self.open = False
        if self.closed is not None:
            self.closed(why)


class Streams:
    """
    The world's stream network: ordered, reliable connections, made of two L{Stream}s,
    with a seeded delay.  A partition holds nothing back by itself: bytes across it are
    lost as they arrive (a cut cable), and the simulator decides when each side notices.
    """

    def __init__(self, world: World, delay_min: float = 0.0002, delay_max: float = 0.001) -> None:
        self.world = world
        self.delay_min = delay_min
        self.delay_max = delay_max
        self.connections: list[tuple[Stream, Stream]] = []

    def delay(self) -> float:
        return self.world.rng.uniform(self.delay_min, self.delay_max)

    def reachable(self, src: Name, dst: Name) -> bool:
        return self.world.datagrams.reachable(src, dst)

    def connect(self, a: Name, b: Name) -> tuple[Stream, Stream]:
        """A connection from C{a} to C{b}: (a's sending stream, b's sending stream)."""
        pair = (Stream(self, a, b), Stream(self, b, a))
        self.connections.append(pair)
        return pair


class World:
    """Virtual time, one seeded random, the agenda, the hosts and the networks."""

    def __init__(self, seed: int, link: Link | None = None, backlog: int = 256) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.now = 0.0
        self.steps = 0
        self.agenda = _Agenda()
        self.hosts: dict[Name, Host[Any]] = {}
        self.datagrams = Datagrams(self, link, backlog)
        self.streams = Streams(self)
        self._checks: list[Callable[[], None]] = []
        self._clocks: list[tuple[Callable[[], float | None], Callable[[], None]]] = []

    # -- populating -------------------------------------------------------------------------

    def host(
        self,
        name: Name,
        core: C,
        handlers: Mapping[type[Effect], Handler],
        *,
        queue_nested: bool = False,
    ) -> Host[C]:
        """Add (or replace, for a restart) the host C{name} running C{core} (see L{Host})."""
        host: Host[C] = Host(self, name, core, handlers, queue_nested=queue_nested)
        self.hosts.pop(name, None)
        self.hosts[name] = host
        return host

    def remove(self, name: Name) -> Host[Any] | None:
        """C{name} crashed: its host and its timers are gone, its datagrams lost."""
        self.datagrams.detach(name)
        return self.hosts.pop(name, None)

    def check(self, check: Callable[[], None]) -> None:
        """Call C{check} after every step."""
        self._checks.append(check)

    def add_clock(
        self, next_time: Callable[[], float | None], catch_up: Callable[[], None]
    ) -> None:
        """
        Run an outside clock at the world's time: the world steps to C{next_time()}
        (when its next call is due, None for never) like to any other deadline, and
        every step, once the world's time has moved, starts with C{catch_up()} (which
        runs the clock to C{world.now}) before the step's own event, if one is due.
        Clocks are caught up in the order they were added.
        """
        self._clocks.append((next_time, catch_up))

    def plan(self, at: float, event: Callable[[], None]) -> None:
        """Run C{event} at C{at} (or now, if that is past)."""
        self.agenda.add(max(at, self.now), event)

    def after(self, delay: float, event: Callable[[], None]) -> None:
        self.plan(self.now + delay, event)

    # -- running ----------------------------------------------------------------------------

    def next_time(self) -> float | None:
        times = [h.next_deadline() for h in self.hosts.values()]
        times += [self.agenda.next_time(), self.datagrams.next_time()]
        times += [next_time() for next_time, _ in self._clocks]
        due = [t for t in times if t is not None]
        return min(due) if due else None

    def step(self) -> bool:
        """Take one step (see the module docstring); False if nothing is left to do."""
        t = self.next_time()
        if t is None:
            return False
        self._step(t)
        return True

    def _step(self, t: float) -> None:
        """The step due at C{t}, the earliest time anything is due."""
        self.now = max(self.now, t)
        self.steps += 1
        for _, catch_up in self._clocks:
            catch_up()
        planned = self.agenda.next_time()
        arriving = self.datagrams.next_time()
        if planned is not None and planned <= t:
            self.agenda.pop()()
        elif arriving is not None and arriving <= t:
            self.datagrams.deliver_next()
        else:
            for host in list(self.hosts.values()):
                deadline = host.next_deadline()
                if deadline is not None and deadline <= t and host.name in self.hosts:
                    host.fire()
        for check in self._checks:
            check()

    def run(self, until: float | None = None) -> None:
        """
        Step until nothing is due before C{until}, the clock then reading C{until}; or,
        with no C{until}, until nothing is left to do at all.
        """
        if until is None:
            while self.step():
                pass
            return
        while (t := self.next_time()) is not None and t <= until:
            self._step(t)
        self.now = max(self.now, until)
