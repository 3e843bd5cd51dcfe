"""
A deterministic simulator for the token ring: engines in the simulated world
(L{lips.testing.world}), each on a L{Host} under the world's clock, their datagrams on
its L{Datagrams} network with this simulator's fault model, every choice from its one
seeded random.

Faults: loss, duplication, delay with jitter (hence reordering), partitions, crashes and
restarts, graceful leaves, nodes deaf to broadcasts (they fail to receive), and paused
nodes (a process stopped and continued: it does nothing for a while, then sees every
timer that came due and the datagrams its socket buffer kept, all at once).  After
every step the simulator checks the ring's invariants and raises L{InvariantViolation}
with the seed, so any failure replays from its seed alone.

Returns: when a node comes back (a paused node resumes, a crashed or departed one
restarts, a partition heals) the members that were serving without it must take it in
with at most one new configuration each (see L{Return}).
"""

from __future__ import annotations

import itertools
import random
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, TypeAlias

import attrs

from lips.kernel import Deliver, Effect, Log, Persist, Send
from lips.ring import (
    NO_RING,
    Configuration,
    Delivered,
    Delivery,
    RingConfig,
    RingEngine,
    RingId,
    RingMessage,
    Safe,
    State,
)
from lips.testing.world import Handler, Host, Name, World

__all__ = [
    "BACKLOG_MAX",
    "Faults",
    "InvariantViolation",
    "Return",
    "RingSimulation",
    "Scenario",
    "replay_command",
]

#: Datagrams a paused node's socket buffer keeps; later ones are dropped.
BACKLOG_MAX = 256

EngineEvent: TypeAlias = Send[RingMessage] | Persist[int] | Delivery
"""What the simulator's C{_handle} is given of an engine's effects: a L{Send}, a
L{Persist}, or the item of a L{Deliver} (the engine's timers go to its L{TimerTable})."""


class InvariantViolation(AssertionError):
    """A ring invariant failed; the message names the seed that replays it."""


def replay_command(seed: int, replicated: bool = False) -> str:
    return f"lips sim {'--replicated ' if replicated else ''}--seed {seed}"


@attrs.frozen
class Faults:
    """How unkind the network and the machines are while faults are on."""

    loss: float = 0.0
    duplicate: float = 0.0
    delay: tuple[float, float] = (0.0001, 0.001)
    crashes: int = 0
    partitions: int = 0
    leaves: int = 0
    """Nodes that leave the ring gracefully, and come back later as new incarnations."""
    deaf: int = 0
    """Episodes in which one node loses every broadcast sent to it while what is sent to
    it alone (the token, the commit token) still arrives: it fails to receive."""
    pauses: int = 0
    """Episodes in which one node's process is stopped for 0.5 to 4 s (SIGSTOP, a VM
    migrating, a long garbage collection) and then continued: meanwhile it processes
    nothing and its socket buffer keeps up to L{BACKLOG_MAX} datagrams; on resuming it
    fires every timer that came due and reads the backlog, in either order."""


@attrs.frozen
class Scenario:
    """One simulated run: who, how long, how much traffic, which faults."""

    nodes: int = 3
    fault_time: float = 3.0
    heal_time: float = 4.0
    messages: int = 60
    faults: Faults = Faults()

    @classmethod
    def random(cls, rng: random.Random) -> Scenario:
        """A scenario drawn from a mix of fault kinds."""
        mix = rng.choice(
            ["clean", "lossy", "crashes", "partitions", "leaves", "deaf", "pauses", "everything"]
        )
        faults = Faults(
            loss=rng.choice([0.0, 0.02, 0.1]) if mix in ("lossy", "everything") else 0.0,
            duplicate=rng.choice([0.0, 0.05]) if mix in ("lossy", "everything") else 0.0,
            delay=(0.0001, rng.choice([0.0005, 0.002, 0.01])),
            crashes=rng.randint(1, 3) if mix in ("crashes", "everything") else 0,
            partitions=rng.randint(1, 2) if mix in ("partitions", "everything") else 0,
            leaves=rng.randint(1, 3) if mix in ("leaves", "everything") else 0,
            deaf=rng.randint(1, 2) if mix in ("deaf", "everything") else 0,
            pauses=rng.randint(1, 2) if mix in ("pauses", "everything") else 0,
        )
        return cls(nodes=rng.randint(2, 5), messages=rng.randint(10, 80), faults=faults)


@attrs.define(eq=False)
class Return:
    """
    One return: C{nodes} came back at C{time} by C{kind} (C{"resume"} of a paused node,
    C{"restart"} of a crashed or departed one, C{"heal"} of a partition, or C{"calm"},
    when the faults stop and all of those may happen at once), while the members in
    C{serving} were serving in rings without them.

    The return is over (C{merged_at}) once every serving member is operational in one
    installed ring with every returned node that is still up.  C{installs} then says,
    per serving member, how many regular configurations it installed from the return to
    that moment, and C{returned_installs} the same for the returned nodes.  C{checked}:
    no datagram could be lost meanwhile, so at most one install per serving member is
    required (with loss, a lost join can cost a consensus timeout and another round, and
    the figures are only reported).  A return interrupted by another fault (a crash, a
    partition, a pause, another return...) is C{abandoned}, with the reason.
    """

    kind: str
    nodes: frozenset[int]
    time: float
    serving: dict[int, int]
    """Each serving member, with the regular configurations it had installed before."""
    returned: dict[int, int]
    """The same for each returned node that was up when it came back."""
    checked: bool = True
    merged_at: float | None = None
    installs: dict[int, int] = attrs.Factory(dict)
    returned_installs: dict[int, int] = attrs.Factory(dict)
    abandoned: str = ""

    @property
    def most(self) -> int:
        """The most configurations any serving member installed for this return."""
        return max(self.installs.values(), default=0)

    def __str__(self) -> str:
        nodes = ",".join(map(str, sorted(self.nodes)))
        what = f"{self.kind} of {nodes} at t={self.time:.3f}"
        if self.abandoned:
            return f"{what}: interrupted by {self.abandoned}"
        if self.merged_at is None:
            return f"{what}: not merged"
        lossy = "" if self.checked else " (lossy, not checked)"
        return (
            f"{what}: merged in {self.merged_at - self.time:.3f} s; serving members"
            f" installed {self.installs}, returned {self.returned_installs}{lossy}"
        )


#: Actions that start or end a fault, and so interrupt a return in progress.
_FAULT_ACTIONS = frozenset(
    {"crash", "restart", "leave", "partition", "heal", "deafen", "hear", "pause", "resume"}
)


@attrs.define(eq=False)
class _NodeRecord:
    # Per ring, the positions (sequence number, index in the message) delivered, in order.
    deliveries: dict[RingId, list[tuple[int, int]]] = attrs.Factory(lambda: defaultdict(list))
    members: dict[RingId, tuple[int, ...]] = attrs.Factory(dict)
    installed_at: dict[RingId, float] = attrs.Factory(dict)
    evs: dict[tuple[RingId, RingId, tuple[int, ...]], tuple[tuple[int, int], ...]] = attrs.Factory(
        dict
    )
    crashed_ever: bool = False
    left_ever: bool = False
    last_installed: RingId = NO_RING
    safe: dict[RingId, int] = attrs.Factory(dict)
    # Every regular configuration installed, in order: (time, ring).
    regulars: list[tuple[float, RingId]] = attrs.Factory(list)


class RingSimulation:
    """
    Runs one L{Scenario} from one seed, in a L{World}: the world's clock, its seeded
    random, its agenda for the scenario's actions, its L{Datagrams} for the ring's
    network (with this simulator's fault model, L{_fault}), and one L{Host} per engine,
    which keeps the engine's timers in its L{TimerTable} and hands its other effects to
    L{_handle}.
    """

    replicated = False
    #: Whether a broadcast is carried out as L{lips.protocols.RingProtocol.submit} does
    #: it, the engine's effects before it returns (L{_broadcast}): a server holding an
    #: idle ring's token then delivers its own payload before its broadcast returns.
    #: Off, the payload waits in the engine until the server's next drain.
    reentrant = True
    #: Whether a return that makes a serving member install more than one configuration
    #: on a calm network fails the run (off: only measured, in L{returns}).
    check_returns = True

    def __init__(self, seed: int, scenario: Scenario | None = None) -> None:
        self.seed = seed
        self.world = World(seed, backlog=BACKLOG_MAX)
        self.rng = self.world.rng
        self.scenario = scenario if scenario is not None else Scenario.random(self.rng)
        # Simulated hops take up to 10 ms, far longer than on loopback, so the ring turns
        # fewer times a second: fail a deaf node after fewer rotations, within its episode.
        self.config = attrs.evolve(RingConfig.loopback(), fail_recv_rotations=50)
        self.ids = list(range(1, self.scenario.nodes + 1))
        self.engines: dict[int, RingEngine] = {}
        #: Each live engine's host: its pending timers (its L{StartTimer} and
        #: L{CancelTimer} effects) in C{host.timers}, fired under the world's clock.
        self.hosts: dict[int, Host[RingEngine]] = {}
        self.persisted: dict[int, int] = defaultdict(int)
        self.records: dict[int, _NodeRecord] = {n: _NodeRecord() for n in self.ids}
        self._faults_on = True
        # Engines that left, with their hosts, kept to check that they stay silent.
        self._left: dict[int, Host[RingEngine]] = {}
        # What was delivered where: (ring, seq) -> payload, for agreement.
        self._at: dict[tuple[RingId, tuple[int, int]], bytes] = {}
        self.submitted: dict[bytes, tuple[int, float]] = {}
        #: Every return so far (see L{Return}); the ones in progress are in C{_open}.
        self.returns: list[Return] = []
        self._open: list[Return] = []
        self.net = self.world.datagrams
        self.net.fault = self._fault
        self.world.check(self._check_step)

    @property
    def now(self) -> float:
        """The world's time."""
        return self.world.now

    @now.setter
    def now(self, value: float) -> None:
        self.world.now = value

    @property
    def steps(self) -> int:
        return self.world.steps

    @property
    def backlog_dropped(self) -> int:
        """Datagrams dropped by the full socket buffers of paused nodes."""
        return self.net.counts["backlog.dropped"]

    def _paused(self, n: int) -> bool:
        """Whether node C{n} is paused (a stopped process)."""
        return self.net.paused(n)

    # -- running ----------------------------------------------------------------------------

    def run(self) -> RingSimulation:
        """Run the whole scenario, checking invariants throughout and at the end."""
        sc = self.scenario
        for n in self.ids:
            self._plan(self.rng.uniform(0, 0.05), "start", n)
        end_traffic = sc.fault_time + sc.heal_time * 0.5
        for i in range(sc.messages):
            self._plan(self.rng.uniform(0.1, end_traffic), "submit", i)
        for _ in range(sc.faults.crashes):
            t = self.rng.uniform(0.2, sc.fault_time)
            n = self.rng.choice(self.ids)
            self._plan(t, "crash", n)
            self._plan(min(sc.fault_time, t + self.rng.uniform(0.1, 1.0)), "restart", n)
        for _ in range(sc.faults.partitions):
            t = self.rng.uniform(0.2, sc.fault_time)
            self._plan(t, "partition", None)
            self._plan(min(sc.fault_time, t + self.rng.uniform(0.2, 1.5)), "heal", None)
        for _ in range(sc.faults.leaves):
            t = self.rng.uniform(0.2, sc.fault_time)
            n = self.rng.choice(self.ids)
            self._plan(t, "leave", n)
            self._plan(min(sc.fault_time, t + self.rng.uniform(0.1, 1.0)), "restart", n)
        for _ in range(sc.faults.deaf):
            t = self.rng.uniform(0.2, max(0.2, sc.fault_time - 1.0))
            n = self.rng.choice(self.ids)
            self._plan(t, "deafen", n)
            self._plan(min(sc.fault_time, t + self.rng.uniform(1.0, 2.5)), "hear", n)
        for _ in range(sc.faults.pauses):
            t = self.rng.uniform(0.2, sc.fault_time)
            n = self.rng.choice(self.ids)
            self._plan(t, "pause", n)
            # A pause may outlast the faults (it is the process, not the network), but
            # ends in time for the ring to take the node back before the run does.
            resume = min(t + self.rng.uniform(0.5, 4.0), sc.fault_time + sc.heal_time - 1.5)
            self._plan(resume, "resume", n)
        self._plan(sc.fault_time, "calm", None)
        self.world.run(until=sc.fault_time + sc.heal_time)
        self._check_end()
        return self

    def _plan(self, t: float, action: str, arg: Any) -> None:
        """Do C{action} (a C{_do_} method) with C{arg} at C{t}, on the world's agenda."""
        self.world.plan(t, lambda: self._act(action, arg))

    def _act(self, action: str, arg: Any) -> None:
        if action in _FAULT_ACTIONS:
            self._interrupt_returns(f"{action} {arg}")
        getattr(self, f"_do_{action}")(arg)

    def _fire(self, n: int) -> None:
        """
        Fire node C{n}'s timers due now, earliest first, carrying out what each causes
        before the next (L{TimerTable.due}: a timer started meanwhile waits for the next
        step, even if due).
        """
        self.hosts[n].fire()

    # -- actions ----------------------------------------------------------------------------

    def _host(self, n: int, engine: RingEngine) -> Host[RingEngine]:
        """A host for node C{n}'s new incarnation C{engine}, its timers fired by the world."""
        return self.world.host(n, engine, self._handlers(n), queue_nested=True)

    def _handlers(self, n: int) -> dict[type[Effect], Handler]:
        def handle(host: Host[Any], effect: Send[RingMessage] | Persist[int]) -> None:
            self._handle(n, effect)

        def deliver(host: Host[Any], effect: Deliver[Delivery]) -> None:
            self._handle(n, effect.item)

        return {Send: handle, Persist: handle, Deliver: deliver, Log: lambda host, effect: None}

    def _do_start(self, n: int) -> None:
        # A restarted node is a new incarnation: it brings no ring from before.
        self._left.pop(n, None)
        self.records[n].last_installed = NO_RING
        engine = RingEngine(n, self.ids, self.config, ring_seq=self.persisted[n])
        self.engines[n] = engine
        self.hosts[n] = self._host(n, engine)
        self.net.attach(n, lambda src, message: self._datagram(n, message))
        engine.start(self.now)
        self._drain(n)

    def _datagram(self, n: int, message: RingMessage) -> None:
        """A datagram reaches live node C{n}."""
        self.engines[n].received(message, self.now)
        self._drain(n)

    def _do_submit(self, i: int) -> None:
        alive = sorted(n for n in self.engines if not self._paused(n))
        if not alive:
            return
        n = self.rng.choice(alive)
        payload = f"m{i}@{n}".encode()
        if self.rng.random() < 0.15:
            # Larger than one message: sent as fragments, reassembled in order.
            payload += b":" + bytes(self.rng.randint(1, 255) for _ in range(3000))
        if self.engines[n].submit(payload, self.now):
            self.submitted[payload] = (n, self.now)
        self._drain(n)

    def _broadcast(self, n: int, payload: bytes) -> bool:
        """
        Submit C{payload} at node C{n} as L{lips.protocols.RingProtocol.submit} does: the
        engine's effects are carried out before it returns, so a node that holds an idle
        ring's token delivers its own payload to itself before its broadcast returns.
        Called while node C{n}'s effects are being carried out (a delivery that makes a
        broadcast), its effects come after the ones already taken (L{Host}'s
        C{queue_nested}).  Without L{reentrant}, they wait for the next drain.
        """
        engine = self.engines.get(n)
        if engine is None:
            return False  # it crashed while carrying out what it did before
        accepted = engine.submit(payload, self.now)
        if self.reentrant:
            self._drain(n)
        return accepted

    def _do_crash(self, n: int) -> None:
        if n in self.engines:
            del self.engines[n]
            del self.hosts[n]
            self.world.remove(n)
            self.records[n].crashed_ever = True

    def _do_restart(self, n: int) -> None:
        if n not in self.engines:
            self._do_start(n)
            self._open_return("restart", {n})

    def _do_leave(self, n: int) -> None:
        engine = self.engines.get(n)
        if engine is None or self._paused(n):
            # A stopped process says no goodbye.
            return
        engine.leave(self.now)
        self._drain(n)
        del self.engines[n]
        self._left[n] = self.hosts.pop(n)
        self.world.remove(n)
        self.net.attach(n, lambda src, message: self._check_left(n, message))
        self.records[n].left_ever = True

    def _do_deafen(self, n: int) -> None:
        self.net.deaf.add(n)

    def _do_hear(self, n: int) -> None:
        self.net.deaf.discard(n)

    def _do_partition(self, _: None) -> None:
        ids = list(self.ids)
        self.rng.shuffle(ids)
        cut = self.rng.randint(1, len(ids) - 1) if len(ids) > 1 else 1
        self.net.groups = [set(ids[:cut]), set(ids[cut:])]

    def _do_heal(self, _: None) -> None:
        if self.net.groups is not None:
            self.net.groups = None
            self._open_return("heal", {n for n in self.engines if not self._paused(n)}, set())

    def _do_calm(self, _: None) -> None:
        changed = self.net.groups is not None or bool(self.net.deaf)
        back = {n for n in self.ids if n not in self.engines}
        if changed or back:
            self._interrupt_returns("calm")
        self._faults_on = False
        self.net.groups = None
        self.net.deaf.clear()
        for n in sorted(back):
            self._do_start(n)
        if changed:
            self._open_return("calm", {n for n in self.engines if not self._paused(n)}, back)
        elif back:
            self._open_return("calm", back)

    def _do_pause(self, n: int) -> None:
        if n in self.engines and not self._paused(n):
            self.net.pause(n)
            self.hosts[n].paused = True

    def _do_resume(self, n: int) -> None:
        """
        Continue paused node C{n}: every timer that came due while it was stopped fires
        and its socket buffer is read, all at one instant; the timers first or the
        backlog first (a real process sees either, depending on where it was stopped).
        """
        if not self._paused(n):
            return
        backlog = self.net.resume(n)
        host = self.hosts[n]
        host.paused = False
        engine = self.engines[n]
        timers_first = self.rng.random() < 0.5
        if timers_first:
            self._fire(n)
        for _, message in backlog:
            engine.received(message, self.now)
            self._drain(n)
        if not timers_first:
            self._fire(n)
        self._open_return("resume", {n})

    # -- the network ------------------------------------------------------------------------

    def _fault(self, src: Name, dest: Name, message: Any) -> list[float]:
        """
        The ring network's fault model (L{Datagrams.fault}): while the faults are on, a
        datagram is lost or duplicated as the scenario says and delayed within its
        range; once they stop, it arrives once within 0.1 to 0.5 ms.
        """
        f = self.scenario.faults
        copies = 1
        if self._faults_on:
            if self.rng.random() < f.loss:
                return []
            if self.rng.random() < f.duplicate:
                copies = 2
        lo, hi = f.delay if self._faults_on else (0.0001, 0.0005)
        return [self.rng.uniform(lo, hi) for _ in range(copies)]

    def _drain(self, n: int) -> None:
        """Carry out node C{n}'s effects, and any effects that carrying them out causes."""
        host = self.hosts.get(n)
        if host is not None:
            host.carry_out()

    def _handle(self, n: int, effect: EngineEvent) -> None:
        record = self.records[n]
        if isinstance(effect, Send):
            to = effect.to
            assert to is None or isinstance(to, int)
            dests = [to] if to is not None else [d for d in self.ids if d != n]
            for d in dests:
                self.net.send(n, d, effect.message, broadcast=effect.to is None)
        elif isinstance(effect, Delivered):
            self._delivered(n, effect)
        elif isinstance(effect, Configuration):
            if effect.transitional:
                old = record.last_installed
                key = (effect.ring, old, effect.members)
                record.evs[key] = tuple(record.deliveries[old])
            else:
                record.installed_at[effect.ring] = self.now
                record.last_installed = effect.ring
                record.members[effect.ring] = effect.members
                record.regulars.append((self.now, effect.ring))
        elif isinstance(effect, Safe):
            record.safe[effect.ring] = max(record.safe.get(effect.ring, 0), effect.upto)
        elif isinstance(effect, Persist):
            self.persisted[n] = max(self.persisted[n], effect.value)

    def _delivered(self, n: int, d: Delivered) -> None:
        position = (d.seq, d.index)
        key = (d.ring, position)
        seen = self._at.setdefault(key, d.payload)
        if seen != d.payload:
            self._fail(f"agreement: {key} is {seen!r} at one node and {d.payload!r} at {n}")
        done = self.records[n].deliveries[d.ring]
        if done and done[-1] >= position:
            self._fail(f"order: node {n} delivered {d.ring}{position} after {done[-1]}")
        done.append(position)

    # -- returns ----------------------------------------------------------------------------

    def _serving(self, n: int) -> bool:
        """Node C{n} is up and serving in a ring it installed, every member of it up."""
        e = self.engines.get(n)
        return (
            e is not None
            and not self._paused(n)
            and e.state is State.OPERATIONAL
            and e.installed == e.ring
            and all(m in self.engines and not self._paused(m) for m in e.members)
        )

    def _open_return(self, kind: str, nodes: set[int], back: set[int] | None = None) -> None:
        """
        C{back} (C{nodes} by default) came back: measure how the members serving
        without C{nodes} take them in.  Measured only from a settled state: every other
        node up serving, no partition, no node deaf (otherwise another change is due
        anyway, or the return cannot complete).
        """
        fresh = set(nodes) if back is None else back
        up = {n for n in self.engines if not self._paused(n)}
        if self.net.groups is not None or self.net.deaf:
            return
        if not all(self._serving(n) for n in up - fresh):
            return
        want = frozenset(nodes)
        serving = {
            n: len(self.records[n].regulars)
            for n in sorted(up - fresh)
            if not want <= set(self.engines[n].members)
        }
        if not serving:
            return
        returned = {n: len(self.records[n].regulars) for n in sorted(fresh)}
        lossy = self._faults_on and self.scenario.faults.loss > 0
        self._open.append(Return(kind, want, self.now, serving, returned, checked=not lossy))

    def _interrupt_returns(self, why: str) -> None:
        for r in self._open:
            r.abandoned = why
            self.returns.append(r)
        self._open.clear()

    def _check_returns(self) -> None:
        """Close the returns that are over; fail one that took more than one change."""
        for r in list(self._open):
            up = [n for n in r.nodes if n in self.engines]
            if any(n not in self.engines for n in r.serving):
                r.abandoned = "a serving member went down"
            else:
                rings = {self.engines[n].ring for n in [*r.serving, *up]}
                if len(rings) != 1 or not all(self._serving(n) for n in [*r.serving, *up]):
                    continue
                members = set(self.engines[next(iter(r.serving))].members)
                if not set(up) <= members:
                    continue
                r.merged_at = self.now
                r.installs = {n: len(self.records[n].regulars) - c for n, c in r.serving.items()}
                r.returned_installs = {
                    n: len(self.records[n].regulars) - c for n, c in r.returned.items()
                }
            self._open.remove(r)
            self.returns.append(r)
            if r.merged_at is not None and r.checked and self.check_returns and r.most > 1:
                worst = max(r.installs, key=lambda n: r.installs[n])
                rings_seen = [
                    f"{ring}{self.records[worst].members[ring]}"
                    for t, ring in self.records[worst].regulars
                    if t >= r.time
                ]
                self._fail(
                    f"return: after the {r.kind} of {sorted(r.nodes)} at t={r.time:.4f},"
                    f" serving node {worst} installed {r.most} configurations"
                    f" {rings_seen} before they were back in its ring (at most 1 allowed);"
                    f" installs per serving member {r.installs}"
                )

    # -- invariants -------------------------------------------------------------------------

    def _fail(self, what: str) -> None:
        raise InvariantViolation(
            f"seed {self.seed} at t={self.now:.4f} step {self.steps}: {what}\n"
            f"  scenario: {self.scenario}\n  replay: {replay_command(self.seed, self.replicated)}"
        )

    def _check_left(self, n: int, message: RingMessage) -> None:
        """A node that left ignores what still reaches it: it sends and delivers nothing."""
        host = self._left[n]
        host.core.received(message, self.now)
        if host.core.drain() or len(host.timers):
            self._fail(f"leave: node {n} acted on {message!r} after it left")

    def _check_step(self) -> None:
        if self._open:
            self._check_returns()
        # Extended virtual synchrony: nodes that install the same ring from the same old
        # ring with the same transitional members delivered the same old-ring messages.
        seen: dict[tuple[RingId, RingId, tuple[int, ...]], tuple[int, tuple[Any, ...]]] = {}
        for n, record in self.records.items():
            for key, delivered in record.evs.items():
                other = seen.setdefault(key, (n, delivered))
                if other[1] != delivered:
                    self._fail(
                        f"virtual synchrony: installing {key[0]} from {key[1]} node {other[0]} "
                        f"delivered {other[1]} but node {n} delivered {delivered}"
                    )

    def _check_end(self) -> None:
        live = sorted(self.engines)
        states = {n: self.engines[n].state for n in live}
        if any(s is not State.OPERATIONAL for s in states.values()):
            self._fail(f"progress: not every node is operational at the end: {states}")
        rings = {self.engines[n].ring for n in live}
        if len(rings) != 1:
            self._fail(f"progress: the nodes ended in different rings {rings}")
        members = set(self.engines[live[0]].members)
        if members != set(live):
            self._fail(f"progress: ring {rings} has members {members}, not {live}")
        # Every payload submitted once the faults stopped is delivered everywhere.
        delivered_by: dict[int, set[bytes]] = {}
        for n in live:
            delivered_by[n] = {
                self._at[(ring, s)]
                for ring, seqs in self.records[n].deliveries.items()
                for s in seqs
            }
        # Every payload submitted once the final ring was installed everywhere is
        # delivered everywhere; every payload of a node that never crashed nor left is
        # delivered at least by its sender.  (A payload delivered in one partition's ring
        # before the partitions merged is, rightly, never delivered in the other.)
        final = self.engines[live[0]].ring
        settled = max(self.records[n].installed_at[final] for n in live)
        late = [p for p, (_, t) in self.submitted.items() if t > settled]
        for p, (n, _) in self.submitted.items():
            record = self.records[n]
            alive_throughout = n in self.engines and not (record.crashed_ever or record.left_ever)
            if alive_throughout and p not in delivered_by[n]:
                self._fail(f"progress: node {n} never delivered its own {p!r}")
        for n in live:
            missing = [p for p in late if p not in delivered_by[n]]
            if missing:
                self._fail(f"progress: node {n} never delivered {missing[:5]}")
        # No loss: a message safe at any node of a ring (its client would have been
        # answered) is delivered by every member of that ring that never crashed.
        for m in self.ids:
            rec_m = self.records[m]
            for ring, upto in rec_m.safe.items():
                safe_seqs = [s for s in rec_m.deliveries.get(ring, []) if s[0] <= upto]
                for k in rec_m.members.get(ring, ()):
                    rec_n = self.records[k]
                    if rec_n.crashed_ever or k not in self.engines:
                        continue
                    mine = set(rec_n.deliveries.get(ring, []))
                    lost = [s for s in safe_seqs if s not in mine]
                    if lost:
                        self._fail(f"no loss: {ring} #{lost[:5]} safe at {m}, never at {k}")

    def summary(self) -> Iterator[str]:
        for n in sorted(self.engines):
            e = self.engines[n]
            yield f"node {n}: {e.state.value} ring {e.ring} members {e.members}"
        for r in self.returns:
            yield f"return: {r}"
        if self.backlog_dropped:
            yield f"{self.backlog_dropped} datagrams dropped by full socket buffers"


_CHECKPOINTER = 7
#: Processes making random operations at once; one that says goodbye is replaced.
_PROCESSES = 6
#: The chance, in L{ReplicatedSimulation.random}'s runs, that a process told every
#: answer says goodbye instead of making its next operation.
GOODBYE = 0.15

#: How long a byte takes between a client and a server, at least and at most.
_TCP_DELAY = (0.0001, 0.001)

if TYPE_CHECKING:
    from lips.client import ClientCore, Link


@attrs.define(eq=False)
class _Pipe:
    """
    One connection of a simulated client to server C{node}: in order each way, through
    the simulator's agenda.  C{accepted} once the server took it; C{dead} once the
    server is gone; C{requests}: what the server was asked on it and has not answered,
    by request id.
    """

    client: _SimClient
    link: Link
    node: int
    accepted: bool = False
    dead: bool = False
    c2s: float = 0.0
    s2c: float = 0.0
    requests: dict[int, tuple[int, int]] = attrs.Factory(dict)


@attrs.define(eq=False)
class _SimClient:
    """
    One process's client: the real client core (L{lips.client._core.ClientCore}) on its
    L{Host}, which keeps its timers (fired by a planned C{wake}, not by the world), and
    what the process waits for: C{handles} (the core's request handles, to operation
    keys) and C{held} (operations made while it connects).
    """

    pid: int
    host: Host[ClientCore]
    links: dict[Link, _Pipe] = attrs.Factory(dict)
    handles: dict[int, tuple[int, int]] = attrs.Factory(dict)
    held: list[tuple[int, int]] = attrs.Factory(list)
    wake: float | None = None

    @property
    def core(self) -> ClientCore:
        return self.host.core


def _request_message(op: Any) -> Any:
    """The request a client sends for the operation C{op}."""
    from lips.space import Kind
    from lips.wire import CheckpointRequest, Goodbye, Out, Take

    if op.kind is Kind.OUT:
        return Out(op.event, op.payload)
    if op.kind is Kind.FORGET:
        return Goodbye(op.event)
    if op.kind is Kind.CHECKPOINT:
        return CheckpointRequest(op.event, op.payload)
    return Take(op.kind, op.event, op.payload)


def _operation(pid: int, message: Any) -> Any:
    """The operation a server makes of a client's request (as a MessageServer does)."""
    from lips.server import Operation
    from lips.space import Kind
    from lips.wire import CheckpointRequest, Goodbye, Out

    if isinstance(message, Out):
        return Operation(Kind.OUT, pid, message.event, message.tuple)
    if isinstance(message, Goodbye):
        return Operation(Kind.FORGET, pid, message.event, b"")
    if isinstance(message, CheckpointRequest):
        return Operation(Kind.CHECKPOINT, pid, message.event, message.state)
    return Operation(message.kind, pid, message.event, message.template)


def _answer_message(c: Any, goodbye: bool = False) -> Any:
    """
    The answer a server writes for the completion C{c} (as a MessageServer does), of a
    C{goodbye} or of another request.
    """
    from lips.server import Refusal, Refused
    from lips.space import Status
    from lips.wire import Cancelled, Error, ErrorCode, Gone, Matched, NoMatch, Stored, TimedOut

    if isinstance(c, Refused):
        if c.reason is Refusal.BUSY:
            return Error(ErrorCode.BUSY, "the server is busy; retry")
        return Error(ErrorCode.UNAVAILABLE, "this server cannot serve now; use another")
    status = c.status
    if status is Status.MATCHED:
        return Matched(c.value)
    if status is Status.STORED:
        return Gone() if goodbye else Stored()
    if status is Status.NO_MATCH:
        return NoMatch()
    if status is Status.TIMED_OUT:
        return TimedOut()
    if status in (Status.CANCELLED, Status.WITHDRAWN):
        return Cancelled()
    return Error(ErrorCode.STALE_EVENT, f"event {c.event} is older than the log remembers")


class ReplicatedSimulation(RingSimulation):
    """
    The ring carrying a replicated tuple space: every node runs a L{Replica}; processes
    make C{out}, C{in} and C{inp} operations (and one process checkpoints), each through
    the real client core (L{lips.client._core.ClientCore}, its timers on the virtual
    clock) over simulated connections, from a random first server: the client fails
    over by its own rules (same process id and event number) when its server crashes,
    answers UNAVAILABLE or falls silent, and a server reading a connection's end
    withdraws what waits there, as a MessageServer does.  A BUSY answer, or a client
    that gave up, reaches the process, which makes the same operation again later.  A
    process told every answer may say goodbye (C{goodbye}, its chance each time; its
    log is forgotten everywhere: nothing can dedupe its events from then on) and a new
    process takes its place.  A broadcast is delivered before it returns when its
    server holds the token, as through L{lips.protocols.RingProtocol} (L{reentrant}).

    Crashed servers restart empty and receive the state by transfer; partitions leave
    only a primary component serving; paused servers (C{pauses}, which L{random} does
    not draw) refuse new connections and read nothing while stopped.  After every step:
    no operation gets two different answers, what a process is told is what the servers
    answered, no tuple is taken by two answered operations.  At the end: every server
    serves in one ring with one digest, every out, inp, checkpoint and goodbye was
    answered and its answer told to its process, no tuple is stored twice (each is put
    by one out), every answered out is stored or was taken, and every answered take of
    a process still known is in the surviving log.  Answers given before a moment when
    no live server held a state (every holder had crashed: "the last server") are
    exempt from the end checks: they are lost by design of an in-memory space.
    """

    replicated = True

    def __init__(
        self,
        seed: int,
        nodes: int = 3,
        operations: int = 60,
        *,
        loss: float = 0.0,
        crashes: int = 0,
        partitions: int = 0,
        pauses: int = 0,
        goodbye: float = 0.0,
    ) -> None:
        faults = Faults(
            loss=loss,
            duplicate=loss / 2,
            delay=(0.0001, 0.002),
            crashes=crashes,
            partitions=partitions,
            pauses=pauses,
        )
        super().__init__(seed, Scenario(nodes=nodes, messages=0, faults=faults))
        self.operations = operations
        #: The chance that a process, told every answer, says goodbye instead of making
        #: its next operation (its log is forgotten everywhere: nothing can dedupe its
        #: events from then on), a new process taking its place.
        self.goodbye = goodbye
        # The process in each of the _PROCESSES places, and the next new process id.
        self._pids = list(range(1, _PROCESSES + 1))
        self._next_pid = 100
        self.replicas: dict[int, Any] = {}
        self.answers: dict[tuple[int, int], tuple[Any, float]] = {}
        self.ops: dict[tuple[int, int], Any] = {}
        self.at: dict[tuple[int, int], int] = {}
        self.retries = 0
        self.wiped_at = -1.0
        self._taken: dict[Any, tuple[tuple[int, int], float]] = {}
        self._events: dict[int, int] = defaultdict(int)
        #: Each process's client, and what each process was told, by operation.
        self.clients: dict[int, _SimClient] = {}
        self.told: dict[tuple[int, int], tuple[Any, float]] = {}
        self._handles = itertools.count(1)
        # The servers' side: connections, where each answer goes, what a paused one keeps.
        self._pipes: dict[int, list[_Pipe]] = defaultdict(list)
        self._routes: dict[tuple[int, tuple[int, int]], tuple[_Pipe, int]] = {}
        self._unread: dict[int, list[Any]] = defaultdict(list)
        #: Goodbyes whose client gave up on them (their outcome unknown).
        self.given_up: set[tuple[int, int]] = set()
        # Replicas whose effects are being carried out (see L{_carry_out}).
        self._carrying: set[int] = set()

    @classmethod
    def random(cls, seed: int) -> ReplicatedSimulation:
        """A run drawn from a mix of sizes and faults, all decided by C{seed}."""
        rng = random.Random(seed ^ 0x5EED)
        return cls(
            seed,
            nodes=rng.randint(3, 5),
            operations=rng.randint(30, 90),
            loss=rng.choice([0.0, 0.0, 0.02, 0.1]),
            crashes=rng.choice([0, 1, 2, 3]),
            partitions=rng.choice([0, 0, 1, 2]),
            goodbye=GOODBYE,
        )

    def run(self) -> ReplicatedSimulation:
        end_ops = self.scenario.fault_time + self.scenario.heal_time * 0.4
        for i in range(self.operations):
            self._plan(self.rng.uniform(0.2, end_ops), "operate", i)
        super().run()
        self._check_replicas()
        return self

    # -- servers ----------------------------------------------------------------------------

    def _do_start(self, n: int) -> None:
        from lips.replica import Replica

        super()._do_start(n)
        self.replicas[n] = Replica(n, self.ids)

    def _carry_out(self, n: int) -> None:
        """Carry out what replica C{n} emitted: to its engine, answers to its clients."""
        from lips.testing._replicahost import carry_out

        # As a Driver: fed again while at it (the ring delivered its broadcast before it
        # returned), the replica's new effects come after the ones already taken.
        if n in self._carrying:
            return
        self._carrying.add(n)
        try:
            carry_out(
                self.replicas[n],
                self.now,
                lambda payload: self._broadcast(n, payload),
                lambda c: self._answered(n, c),
            )
        finally:
            self._carrying.discard(n)

    def _do_crash(self, n: int) -> None:
        had = n in self.engines
        super()._do_crash(n)
        if not had:
            return
        latest = max(r.last_primary for r in self.replicas.values())
        del self.replicas[n]
        if not any(r.has_state and r.last_primary == latest for r in self.replicas.values()):
            # Every server holding the latest primary's state is gone: its answers are
            # lost by design (an older state may serve again once a majority is back).
            self.wiped_at = self.now
        self._server_gone(n)

    def _handle(self, n: int, effect: EngineEvent) -> None:
        replica = self.replicas.get(n)
        if replica is not None:
            now = self.now
            if isinstance(effect, Delivered):
                replica.delivered(
                    effect.ring, effect.seq, effect.payload, effect.origin, effect.index, now
                )
            elif isinstance(effect, Safe):
                replica.safe(effect.ring, effect.upto, now)
            elif isinstance(effect, Configuration):
                replica.configuration(effect.ring, effect.members, effect.transitional, now)
            self._carry_out(n)
        super()._handle(n, effect)

    # -- clients ----------------------------------------------------------------------------

    def _do_operate(self, i: int) -> None:
        from lips.server import Operation
        from lips.space import Kind
        from lips.tuples import make_template

        if self.rng.random() < 0.1:
            # Process 7 keeps checkpointing (and storing tuples nobody takes): its
            # checkpoints must survive like any answered operation.  Like a real
            # process it waits for each answer before its next operation (a checkpoint
            # discards the log of the events before it).
            last = (_CHECKPOINTER, self._events[_CHECKPOINTER])
            if last in self.ops and last not in self.told:
                return
            self._events[_CHECKPOINTER] += 1
            key = (_CHECKPOINTER, self._events[_CHECKPOINTER])
            if self.rng.random() < 0.5:
                op = Operation(Kind.OUT, *key, ("ck", i))
            else:
                op = Operation(Kind.CHECKPOINT, *key, b"state-%d" % key[1])
            self.ops[key] = op
            self._do_send(key)
            return
        place = self.rng.randint(1, _PROCESSES) - 1
        pid = self._pids[place]
        made = self._events[pid]
        if (
            self.goodbye
            and made
            and all((pid, e) in self.told for e in range(1, made + 1))
            and self.rng.random() < self.goodbye
        ):
            # It is done: a goodbye (every replica forgets its log), and a new process
            # takes its place.
            self._pids[place] = self._next_pid
            self._next_pid += 1
            self._events[pid] += 1
            key = (pid, self._events[pid])
            self.ops[key] = Operation(Kind.FORGET, *key, b"")
            self._do_send(key)
            return
        self._events[pid] += 1
        key = (pid, self._events[pid])
        choice = self.rng.random()
        if choice < 0.5:
            op = Operation(Kind.OUT, *key, ("job", i))
        elif choice < 0.85:
            op = Operation(Kind.IN, *key, make_template(("job", int)))
        else:
            op = Operation(Kind.INP, *key, make_template(("job", int)))
        self.ops[key] = op
        self._do_send(key)

    def _do_send(self, key: tuple[int, int]) -> None:
        """Process C{key[0]} makes the operation C{key} (again), through its client."""
        from lips.client import ClientState

        if key in self.told:
            return
        client = self._client(key[0])
        if client.core.phase in (ClientState.NEW, ClientState.CONNECTING):
            client.held.append(key)
            return
        handle = next(self._handles)
        client.handles[handle] = key
        self._feed(client, client.core.request, handle, _request_message(self.ops[key]))

    def _goodbye(self, key: tuple[int, int]) -> bool:
        """Whether the operation C{key} is its process's goodbye."""
        from lips.space import Kind

        op = self.ops.get(key)
        return op is not None and op.kind is Kind.FORGET

    def _retry(self, key: tuple[int, int]) -> None:
        """The process makes C{key} again a little later (BUSY, or its client gave up)."""
        self.retries += 1
        self._plan(self.now + self.rng.uniform(0.05, 0.3), "send", key)

    def _client(self, pid: int) -> _SimClient:
        """Process C{pid}'s client; a new one, connecting, if it has none or it gave up."""
        from lips.client import ClientCore, ClientState

        client = self.clients.get(pid)
        if client is not None and client.core.phase is not ClientState.FAILED:
            return client
        core = ClientCore(
            [f"m{n}" for n in self.ids],
            pid=pid,
            name=f"c{pid}",
            reconnect=True,
            start=self.rng.randrange(len(self.ids)),
        )
        host = Host(self.world, f"c{pid}", core, self._client_handlers(pid))
        client = self.clients[pid] = _SimClient(pid, host)
        self._feed(client, core.start)
        return client

    def _feed(self, client: _SimClient, method: Any, *args: Any) -> None:
        """Call an input of C{client}'s core at the simulation's time; carry its effects out."""
        method(*args, self.now)
        self._carry_out_client(client)

    def _client_handlers(self, pid: int) -> dict[type[Effect], Handler]:
        """
        What carrying out process C{pid}'s client's effects does: what it says to its
        links goes over the simulated connections, what it delivers to the process.
        None of them feeds the core at once: whatever comes back is planned.
        """
        from lips.client import Link

        def says(host: Host[Any], effect: Send[Any]) -> None:
            if not isinstance(effect.to, Link):
                raise TypeError(f"client {pid} emitted {effect!r}")
            self._client_says(self.clients[pid], effect.to, effect.message)

        def tells(host: Host[Any], effect: Deliver[Any]) -> None:
            self._client_tells(self.clients[pid], effect.item)

        return {Send: says, Deliver: tells, Log: lambda host, effect: None}

    def _carry_out_client(self, client: _SimClient) -> None:
        """
        Carry out C{client}'s effects (its host's handlers, L{_client_handlers}), its
        timers to its table, woken by a planned event.
        """
        client.host.carry_out()
        deadline = client.host.timers.next_deadline()
        if deadline is not None and (client.wake is None or deadline < client.wake):
            client.wake = deadline
            self._plan(deadline, "wake", client)

    def _do_wake(self, client: _SimClient) -> None:
        """C{client}'s timers that are due fire."""
        if client.wake is not None and client.wake <= self.now:
            client.wake = None
        for key in client.host.timers.due(self.now):
            client.core.timer(key, self.now)
            self._carry_out_client(client)
        self._carry_out_client(client)

    def _client_says(self, client: _SimClient, link: Link, what: object) -> None:
        from lips.client import Dial, Hangup, Outgoing

        if isinstance(what, Dial):
            pipe = client.links[link] = _Pipe(client, link, self.ids[link.endpoint])
            self._to_server(pipe, lambda: self._accept(pipe))
        elif isinstance(what, Outgoing):
            pipe = client.links[link]
            self._to_server(pipe, lambda: self._server_reads(pipe, what.request_id, what.message))
        elif isinstance(what, Hangup):
            pipe = client.links.pop(link)
            self._to_server(pipe, lambda: self._server_closes(pipe))

    def _client_tells(self, client: _SimClient, item: Any) -> None:
        """What the client core delivers to its process."""
        from lips.client import Answered, Failed, NotConnected, PutBack, Welcomed
        from lips.server import Operation
        from lips.space import Kind
        from lips.wire import Cancelled, Error, ErrorCode

        if isinstance(item, Welcomed | NotConnected):
            held, client.held = client.held, []
            for key in held:
                if isinstance(item, Welcomed):
                    self._plan(self.now, "send", key)
                else:
                    self._retry(key)
        elif isinstance(item, Failed):
            key = client.handles.pop(item.handle)
            if self._goodbye(key):
                # Its client gave up on the goodbye (no answer in time): the process is
                # gone all the same, and whether the space forgot it is unknown.
                self.told[key] = (item.error, self.now)
                self.given_up.add(key)
                return
            self._retry(key)
        elif isinstance(item, Answered):
            key = client.handles.pop(item.handle)
            message = item.message
            if isinstance(message, Cancelled) or (
                isinstance(message, Error) and message.code is ErrorCode.BUSY
            ):
                self._retry(key)  # refused for now: the same operation again
                return
            self.told[key] = (message, self.now)
            first = self.answers.get(key)
            if first is None or _answer_message(first[0], self._goodbye(key)) != message:
                self._fail(f"exactly once: {key} told {message}, the servers answered {first}")
        elif isinstance(item, PutBack):
            self._events[client.pid] += 1
            key = (client.pid, self._events[client.pid])
            self.ops[key] = Operation(Kind.OUT, *key, item.tuple)
            self._plan(self.now, "send", key)

    # -- connections between clients and servers --------------------------------------------

    def _to_server(self, pipe: _Pipe, event: Any) -> None:
        pipe.c2s = max(pipe.c2s, self.now + self.rng.uniform(*_TCP_DELAY))
        self._plan(pipe.c2s, "pipe", event)

    def _to_client(self, pipe: _Pipe, event: Any) -> None:
        pipe.s2c = max(pipe.s2c, self.now + self.rng.uniform(*_TCP_DELAY))
        self._plan(pipe.s2c, "pipe", event)

    def _do_pipe(self, event: Any) -> None:
        event()

    def _client_open(self, pipe: _Pipe) -> bool:
        return pipe.client.links.get(pipe.link) is pipe

    def _accept(self, pipe: _Pipe) -> None:
        """A connection reaches its server: a server down, or paused, refuses it."""
        n = pipe.node
        if not self._client_open(pipe):
            return
        if n in self.replicas and not self._paused(n):
            pipe.accepted = True
            self._pipes[n].append(pipe)
        else:
            pipe.dead = True
            self._to_client(pipe, lambda: self._reset(pipe, f"m{n} refused the connection"))

    def _reset(self, pipe: _Pipe, why: str) -> None:
        if self._client_open(pipe):
            del pipe.client.links[pipe.link]
            self._feed(pipe.client, pipe.client.core.lost, pipe.link, ConnectionResetError(why))

    def _arrive(self, pipe: _Pipe, rid: int, message: Any) -> None:
        if self._client_open(pipe):
            self._feed(pipe.client, pipe.client.core.received, pipe.link, rid, message)

    def _server_reads(self, pipe: _Pipe, rid: int, message: Any) -> None:
        """Server C{pipe.node} reads a frame (as a MessageServer does); paused, it waits."""
        from lips.space import Status
        from lips.tuples import DEFAULT_LIMITS
        from lips.wire import Cancel, Hello, Ping, Pong, Welcome

        n, pid = pipe.node, pipe.client.pid
        if pipe.dead or not pipe.accepted:
            return
        if self._paused(n):
            self._unread[n].append(lambda: self._server_reads(pipe, rid, message))
            return
        if isinstance(message, Hello):
            welcome = Welcome(pid, f"m{n}", DEFAULT_LIMITS.max_size)
            self._to_client(pipe, lambda: self._arrive(pipe, rid, welcome))
            return
        if isinstance(message, Ping):
            self._to_client(pipe, lambda: self._arrive(pipe, 0, Pong()))
            return
        if isinstance(message, Cancel):
            key = pipe.requests.get(message.target)
            if key is not None:
                self.replicas[n].withdraw(*key, Status.WITHDRAWN, self.now)
                self._carry_out(n)
                self._drain(n)
            return
        op = _operation(pid, message)
        key = (pid, op.event)
        old = self._routes.get((n, key))
        if old is not None:
            old[0].requests.pop(old[1], None)  # the same operation again: answered here
        self._routes[(n, key)] = (pipe, rid)
        pipe.requests[rid] = key
        self.at[key] = n
        self.replicas[n].submit(op, self.now)
        self._carry_out(n)
        self._drain(n)

    def _server_closes(self, pipe: _Pipe) -> None:
        """The server sees its client close: it withdraws what still waits there."""
        from lips.space import Status

        n = pipe.node
        if pipe.dead or not pipe.accepted:
            return
        if self._paused(n):
            self._unread[n].append(lambda: self._server_closes(pipe))
            return
        pipe.dead = True
        self._pipes[n].remove(pipe)
        for rid, key in pipe.requests.items():
            if self._routes.get((n, key)) == (pipe, rid):
                del self._routes[(n, key)]
            self.replicas[n].withdraw(*key, Status.CANCELLED, self.now)
        pipe.requests.clear()
        self._carry_out(n)
        self._drain(n)

    def _server_gone(self, n: int) -> None:
        """Server C{n} crashed: its clients' connections are reset."""
        for pipe in self._pipes.pop(n, []):
            pipe.dead = True
            self._to_client(pipe, lambda pipe=pipe: self._reset(pipe, f"m{n} crashed"))
        for route in [k for k in self._routes if k[0] == n]:
            del self._routes[route]
        self._unread.pop(n, None)

    def _do_resume(self, n: int) -> None:
        super()._do_resume(n)
        for event in self._unread.pop(n, []):
            event()

    def _answered(self, n: int, c: Any) -> None:
        from lips.server import Refused
        from lips.space import Kind, Status

        key = (c.pid, c.event)
        if not isinstance(c, Refused) and c.status is Status.PENDING:
            return
        route = self._routes.pop((n, key), None)
        if route is not None:
            pipe, rid = route
            pipe.requests.pop(rid, None)
            answer = _answer_message(c, self._goodbye(key))
            self._to_client(pipe, lambda: self._arrive(pipe, rid, answer))
        if key not in self.ops or isinstance(c, Refused) or c.status is Status.CANCELLED:
            return
        first = self.answers.setdefault(key, (c, self.now))[0]
        self.at.pop(key, None)
        if first != c:
            self._fail(f"exactly once: {key} answered {first} and then {c}")
        if c is first and c.status is Status.MATCHED and self.ops[key].kind is not Kind.RD:
            other, when = self._taken.setdefault(c.value, (key, self.now))
            if other != key and when >= self.wiped_at:
                self._fail(f"exactly once: {c.value} taken by {other} and by {key}")
            self._taken[c.value] = (key, self.now)

    # -- the end ----------------------------------------------------------------------------

    def _check_replicas(self) -> None:
        from lips.replica import Mode
        from lips.space import Kind, Status

        modes = {n: r.mode for n, r in self.replicas.items()}
        if any(m is not Mode.SERVING for m in modes.values()):
            self._fail(f"progress: not every replica serves at the end: {modes}")
        digests = {n: r.space.digest() for n, r in self.replicas.items()}
        if len(set(digests.values())) != 1:
            self._fail(f"determinism: replica digests differ: {digests}")
        space = next(iter(self.replicas.values())).space
        held = Counter(space.tuples())
        twice = sorted(t for t, k in held.items() if k > 1)
        if twice:
            self._fail(f"exactly once: {twice[:5]} stored twice (each was put once)")
        remaining = set(held)
        final = (Kind.OUT, Kind.INP, Kind.CHECKPOINT, Kind.FORGET)
        for key, op in self.ops.items():
            if key not in self.answers and op.kind in final and key not in self.given_up:
                self._fail(f"progress: {op.kind.name} {key} was never answered")
            if key not in self.told and op.kind in final:
                self._fail(f"progress: {op.kind.name} {key} was never told to its process")
        # Processes that said goodbye: the space has no log of them any more (or may
        # have none, if their client gave up on the goodbye).
        gone = {
            k[0]
            for k, op in self.ops.items()
            if op.kind is Kind.FORGET
            and (
                k in self.given_up
                or (k in self.answers and self.answers[k][0].status is Status.STORED)
            )
        }
        stored = [
            key[1]
            for key, (c, when) in self.answers.items()
            if self.ops[key].kind is Kind.CHECKPOINT and when >= self.wiped_at
        ]
        if stored:
            last = space.recovered(_CHECKPOINTER)
            if last is None or last[0] < max(stored) or last[1] != b"state-%d" % last[0]:
                self._fail(f"no loss: checkpoint {max(stored)} answered, the space has {last}")
        taken = set()
        for key, op in self.ops.items():
            logged = space.answered(*key)
            if key[0] in gone:
                # What its takes took, as they were answered.
                logged = self.answers.get(key, (None, 0.0))[0]
            if op.kind is not Kind.OUT and logged is not None and logged.status is Status.MATCHED:
                taken.add(logged.value)
        for key, (c, when) in self.answers.items():
            if when < self.wiped_at:
                continue
            op = self.ops[key]
            if op.kind is Kind.OUT and op.payload not in remaining | taken:
                self._fail(f"no loss: the answered out {key} {op.payload} is gone")
            if c.status is Status.MATCHED and key[0] not in gone and space.answered(*key) != c:
                self._fail(f"no loss: {key} was answered {c}, the log says {space.answered(*key)}")
        both = remaining & taken
        if both:
            self._fail(f"exactly once: {sorted(both)[:5]} are both stored and taken")
