"""
Tests for L{lips.ring.RingEngine}, driven directly and through the deterministic
simulator L{lips.testing.ringsim}.
"""

from __future__ import annotations

import heapq
import os
from collections import defaultdict
from collections.abc import Callable

import attrs
from twisted.logger import LogLevel
from twisted.trial.unittest import SynchronousTestCase

from lips.kernel import (
    CancelTimer,
    Deliver,
    Effect,
    Log,
    Persist,
    Send,
    StartTimer,
    TimerTable,
)
from lips.ring import (
    Commit,
    Configuration,
    Delivered,
    Join,
    Kind,
    Mcast,
    RingConfig,
    RingEngine,
    RingId,
    RingMessage,
    RingStored,
    RingTimer,
    Safe,
    State,
    Token,
)
from lips.ring._engine import FAIL_RECV_MIN, _Gather, _Recovery
from lips.testing.ringsim import (
    Faults,
    InvariantViolation,
    RingSimulation,
    Scenario,
    replay_command,
)

#: Seeds the default suite runs; LIPS_SIM_SEEDS raises it for a soak run.
SEEDS = int(os.environ.get("LIPS_SIM_SEEDS", "300"))


#: What a L{Host} hands on of an engine's effects: the item of a L{Deliver}, any other
#: effect but the timers' as it is.
Taken = Delivered | Safe | Configuration | Effect


class Host:
    """
    One engine hosted as a simulator hosts a core (C{docs/design/core.md}): its timers
    in a L{TimerTable}, fired at the times the caller gives; its other effects handed to
    the caller, the item of each L{Deliver} in its place.
    """

    def __init__(self, engine: RingEngine) -> None:
        self.engine = engine
        self.timers = TimerTable()

    def take(self) -> list[Taken]:
        """The engine's effects since the last take, its timers applied to the table."""
        taken: list[Taken] = []
        while effects := self.engine.drain():
            for effect in effects:
                if isinstance(effect, StartTimer | CancelTimer):
                    self.timers.apply(effect)
                else:
                    taken.append(effect.item if isinstance(effect, Deliver) else effect)
        return taken

    def fire(self, now: float) -> list[Taken]:
        """
        Fire the timers due at C{now}, each after what the one before caused was taken
        (L{take}); return all that was taken.
        """
        taken: list[Taken] = []
        for key in self.timers.due(now):
            self.engine.timer(key, now)
            taken += self.take()
        return taken

    def next_deadline(self) -> float | None:
        return self.timers.next_deadline()


class Network:
    """
    Engines on an in-memory network where every datagram takes C{delay}, under fake
    time: simple enough to reason about exact times.  A node in C{deaf} loses every
    broadcast sent to it (what is sent to it alone still arrives).
    """

    def __init__(self, nodes: int, config: RingConfig, delay: float = 0.001) -> None:
        self.ids = list(range(1, nodes + 1))
        self.config = config
        self.delay = delay
        self.now = 0.0
        self.deaf: set[int] = set()
        self.engines: dict[int, RingEngine] = {}
        self.hosts: dict[int, Host] = {}
        self.effects: dict[int, list[Taken]] = defaultdict(list)
        self.persisted: dict[int, int] = defaultdict(int)
        self._queue: list[tuple[float, int, int, RingMessage]] = []
        self._count = 0
        for n in self.ids:
            self.start(n)

    def start(self, n: int) -> RingEngine:
        """Start (or restart, as a new incarnation) node C{n}."""
        engine = self.engines[n] = RingEngine(n, self.ids, self.config, self.persisted[n])
        self.hosts[n] = Host(engine)
        engine.start(self.now)
        self.flush(n)
        return engine

    def flush(self, n: int) -> None:
        """Carry out node C{n}'s effects."""
        self.carry_out(n, self.hosts[n].take())

    def fire(self, n: int) -> None:
        """Fire node C{n}'s timers due now, and carry out their effects."""
        self.carry_out(n, self.hosts[n].fire(self.now))

    def carry_out(self, n: int, effects: list[Taken]) -> None:
        for effect in effects:
            self.effects[n].append(effect)
            if isinstance(effect, Persist):
                self.persisted[n] = max(self.persisted[n], effect.value)
            if not isinstance(effect, Send):
                continue
            if effect.to is not None:
                assert isinstance(effect.to, int)
                dests = [effect.to]
            else:
                dests = [d for d in self.ids if d != n and d not in self.deaf]
            for d in dests:
                self._count += 1
                item = (self.now + self.delay, self._count, d, effect.message)
                heapq.heappush(self._queue, item)

    def run(self, until: float, stop: Callable[[], bool] = lambda: False) -> bool:
        """
        Deliver datagrams and fire timers in time order up to C{until}, or until
        C{stop()} holds after an event (then return True, with C{now} at that event).
        """
        while True:
            times = [t for h in self.hosts.values() if (t := h.next_deadline()) is not None]
            if self._queue:
                times.append(self._queue[0][0])
            if not times or min(times) > until:
                self.now = until
                return False
            self.now = min(times)
            if self._queue and self._queue[0][0] <= self.now:
                _, _, dest, message = heapq.heappop(self._queue)
                self.engines[dest].received(message, self.now)
                self.flush(dest)
            else:
                for n, host in list(self.hosts.items()):
                    deadline = host.next_deadline()
                    if deadline is not None and deadline <= self.now:
                        self.fire(n)
            if stop():
                return True

    def formed(self, *members: int) -> bool:
        """Nodes C{members}, and only they, have installed one ring."""
        engines = [self.engines[n] for n in members]
        return len({e.ring for e in engines}) == 1 and all(
            e.state is State.OPERATIONAL and e.members == members and e.installed == e.ring
            for e in engines
        )

    def delivered(self, n: int) -> list[bytes]:
        """What node C{n} has delivered, in order."""
        return [e.payload for e in self.effects[n] if isinstance(e, Delivered)]


class DurableTests(SynchronousTestCase):
    """
    With C{durable}, a member stores what it delivered before it passes the token on:
    every token it sends follows a L{Persist}C{(RingStored.HELD, aru)} for the aru the
    token carries, after the delivery of every message up to it (its own broadcasts of
    that visit too), so the aru, and the L{Safe} computed from it, never counts a
    message a member holds only in memory.
    """

    def check(self, net: Network, n: int) -> int:
        """The order at node C{n}; how many tokens it checked."""
        ever: dict[RingId, set[int]] = defaultdict(set)
        for effect in net.effects[n]:
            if isinstance(effect, Delivered):
                ever[effect.ring].add(effect.seq)
        so_far: dict[RingId, set[int]] = defaultdict(set)
        held = None
        tokens = 0
        for effect in net.effects[n]:
            if isinstance(effect, Delivered):
                so_far[effect.ring].add(effect.seq)
            elif isinstance(effect, Persist) and effect.what is RingStored.HELD:
                held = effect.value
            elif isinstance(effect, Send) and isinstance(effect.message, Token):
                token = effect.message
                self.assertEqual(held, token.aru, f"node {n}: {token} not stored first")
                due = {s for s in ever[token.ring] if s <= token.aru}
                self.assertLessEqual(due, so_far[token.ring], f"node {n}: {token}")
                tokens += 1
                held = None
        return tokens

    def test_stored_before_the_token(self) -> None:
        config = attrs.evolve(RingConfig.loopback(), durable=True)
        net = Network(3, config)
        self.assertTrue(net.run(5.0, lambda: net.formed(1, 2, 3)))
        for i in range(30):
            net.engines[1 + i % 3].submit(b"m%d" % i, net.now)
            net.flush(1 + i % 3)
            net.run(net.now + 0.003)
        net.run(net.now + 1.0)
        for n in (1, 2, 3):
            self.assertEqual(len(net.delivered(n)), 30)
            self.assertGreater(self.check(net, n), 10)

    def test_not_durable_stores_nothing(self) -> None:
        net = Network(2, RingConfig.loopback())
        self.assertTrue(net.run(5.0, lambda: net.formed(1, 2)))
        net.engines[1].submit(b"x", net.now)
        net.flush(1)
        net.run(net.now + 0.5)
        held = [e for e in net.effects[1] if isinstance(e, Persist) and e.what is RingStored.HELD]
        self.assertEqual(held, [])


class RingConfigTests(SynchronousTestCase):
    def test_validation(self) -> None:
        """Timings that cannot work together are refused with a clear error."""
        for kwargs in (
            {"token_timeout": 0},
            {"token_timeout": 0.1, "token_retransmit": 0.2},
            {"token_timeout": 0.1, "token_retransmit": 0.01, "hold": 0.06},
            {"join_interval": 2.0},
            {"max_messages": 0},
        ):
            self.assertRaises(ValueError, RingConfig, **kwargs)
        RingConfig.loopback()

    def test_fail_recv_rotations(self) -> None:
        """
        The failed-to-receive threshold is a whole number of rotations, and not so few
        that ordinary loss (a lost request or retransmission) would fail a member.
        """
        for bad in (0, -1, FAIL_RECV_MIN - 1, True, float(FAIL_RECV_MIN), "100", None):
            e = self.assertRaises(ValueError, RingConfig, fail_recv_rotations=bad)
            self.assertIn("fail_recv_rotations", str(e))
        self.assertEqual(RingConfig(fail_recv_rotations=FAIL_RECV_MIN).fail_recv_rotations, 10)
        self.assertGreater(
            RingConfig().fail_recv_rotations, RingConfig.loopback().fail_recv_rotations
        )


class SingleNodeTests(SynchronousTestCase):
    """A lone node forms a ring of its own and delivers what it sends."""

    def setUp(self) -> None:
        self.engine = RingEngine(1, [1], RingConfig.loopback())
        self.host = Host(self.engine)
        self.now = 0.0
        self.engine.start(self.now)
        self.effects: list[Taken] = []
        self.spin(0.05)

    def spin(self, until: float) -> None:
        """Run the engine alone, looping its own token back, until C{until}."""
        e = self.engine
        while True:
            self.effects += self.host.take()
            loops = [x for x in self.effects if isinstance(x, Send) and x.to == 1]
            for x in loops:
                self.effects.remove(x)
                e.received(x.message, self.now)
            if loops:
                continue
            deadline = self.host.next_deadline()
            if deadline is None or deadline > until:
                return
            self.now = deadline
            self.effects += self.host.fire(self.now)

    def test_forms_and_delivers(self) -> None:
        """It installs a one-member ring and delivers its payloads in order, safe."""
        self.assertIs(self.engine.state, State.OPERATIONAL)
        configs = [x for x in self.effects if isinstance(x, Configuration)]
        self.assertEqual([c.members for c in configs], [(1,), (1,)])
        for p in (b"a", b"b", b"c"):
            self.assertTrue(self.engine.submit(p, self.now))
        self.spin(self.now + 0.1)
        delivered = [x.payload for x in self.effects if isinstance(x, Delivered)]
        self.assertEqual(delivered, [b"a", b"b", b"c"])
        safe = max(x.upto for x in self.effects if isinstance(x, Safe))
        last = max(x.seq for x in self.effects if isinstance(x, Delivered))
        self.assertGreaterEqual(safe, last)

    def test_fragments_and_packing(self) -> None:
        """
        A payload larger than one message travels as fragments and is delivered whole;
        small payloads are packed several to a message; order is kept throughout.
        """
        big = bytes(range(256)) * 20
        payloads = [b"s1", big, b"s2", b"s3", big[::-1], b"s4"]
        mcasts_before = self.engine.counters["sent.mcast"]
        for p in payloads:
            self.assertTrue(self.engine.submit(p, self.now))
        self.spin(self.now + 0.2)
        delivered = [x.payload for x in self.effects if isinstance(x, Delivered)]
        self.assertEqual(delivered, payloads)
        self.assertEqual(self.engine.counters["fragmented"], 2)
        self.assertGreater(self.engine.counters["packed"], 0)
        sent = self.engine.counters["sent.mcast"] - mcasts_before
        self.assertLess(sent, 2 + 2 * len(big) // self.engine.config.max_payload + 4)

    def test_malformed_application_message(self) -> None:
        """An application message that is not a list of pieces is counted and skipped."""
        e = self.engine
        log_seq = e._logs[e.ring].high + 1
        e.received(Mcast(e.ring, log_seq, 1, Kind.APP, b"\xc1"), self.now)
        self.assertEqual(e.counters["malformed_app"], 1)

    def test_back_pressure(self) -> None:
        """A full queue refuses payloads instead of growing without bound."""
        engine = RingEngine(1, [1], RingConfig(max_queue=2))
        self.assertTrue(engine.submit(b"1", 0))
        self.assertTrue(engine.submit(b"2", 0))
        self.assertFalse(engine.submit(b"3", 0))
        self.assertEqual(engine.counters["queue_full"], 1)
        # A payload whose fragments would not all fit is refused whole...
        roomy = RingEngine(1, [1], RingConfig(max_queue=3, max_payload=64))
        self.assertTrue(roomy.submit(b"1", 0))
        self.assertFalse(roomy.submit(bytes(500), 0))
        self.assertEqual(roomy.backlog, 1)
        # ...but into an empty queue it is taken alone, however large: a snapshot for a
        # joining server must be able to go out some time.
        empty = RingEngine(1, [1], RingConfig(max_queue=3, max_payload=64))
        self.assertTrue(empty.submit(bytes(500), 0))
        self.assertEqual(empty.backlog, 13)
        self.assertFalse(empty.submit(b"2", 0))

    def test_duplicate_token_dropped(self) -> None:
        """A token copy not newer than the last one seen is dropped and counted."""
        e = self.engine
        stale = Token(e.ring, 0, 0, 0, 0, 0, 0, ())
        e.received(stale, self.now)
        self.assertEqual(e.counters["token.duplicate"], 1)

    def test_stranger_ignored(self) -> None:
        """Messages from nodes outside the configured peers change nothing."""
        e = self.engine
        ring = e.ring
        e.received(Mcast(RingId(999, 9), 1, 9, Kind.APP, b"x"), self.now)
        self.assertEqual(e.counters["dropped.stranger"], 1)
        self.assertEqual((e.state, e.ring), (State.OPERATIONAL, ring))


class CoreContractTests(SynchronousTestCase):
    """The engine is a core of L{lips.kernel}: its effects, its timers, its inputs."""

    def test_emits(self) -> None:
        """
        It declares the effects it emits, and a driver takes it with handlers for
        those but its timers and its logs.
        """
        from twisted.internet.task import Clock

        from lips.kernel import Driver

        self.assertEqual(RingEngine.emits, {Send, Deliver, Persist, StartTimer, CancelTimer, Log})
        engine = RingEngine(1, [1, 2], RingConfig.loopback())
        Driver(engine, Clock(), dict.fromkeys((Send, Deliver, Persist), lambda effect: None))

    def test_start(self) -> None:
        """
        Starting persists a ring sequence number above the stored one (by the enum
        member of what it stores), broadcasts a join and starts its join and consensus
        timers, as L{StartTimer} effects keyed by L{RingTimer} at absolute times.
        """
        config = RingConfig.loopback()
        engine = RingEngine(1, [1, 2], config, ring_seq=8)
        engine.start(10.0)
        self.assertEqual(
            engine.drain(),
            [
                Persist(RingStored.RING_SEQ, 12),
                Send(None, Join(1, frozenset({1, 2}), frozenset(), 12)),
                StartTimer(RingTimer.JOIN, 10.0 + config.join_interval),
                StartTimer(RingTimer.CONSENSUS, 10.0 + config.consensus_timeout),
            ],
        )
        self.assertEqual(engine.drain(), [])

    def test_timer_refuses_what_is_not_due(self) -> None:
        """
        The timer input refuses a key that is not a L{RingTimer}.  A ring timer its host
        fires too early (moved an instant before, the host's table not yet told) is
        started again at its deadline, and one no longer pending is ignored, both
        counted: neither fires, and the engine and its host agree again.
        """
        engine = RingEngine(1, [1, 2], RingConfig.loopback())
        engine.start(0.0)
        join = next(
            e for e in engine.drain() if isinstance(e, StartTimer) and e.key is RingTimer.JOIN
        )
        for key in ["join", Kind.APP]:
            self.assertRaises(ValueError, engine.timer, key, 1.0)
        engine.timer(RingTimer.HOLD, 1.0)
        self.assertEqual(engine.drain(), [])
        engine.timer(RingTimer.JOIN, 0.001)
        self.assertEqual(engine.drain(), [StartTimer(RingTimer.JOIN, join.at)])
        self.assertEqual(engine.counters["timers.stale"], 2)
        self.assertEqual(engine.counters["sent.join"], 1)
        engine.timer(RingTimer.JOIN, 0.1)
        self.assertEqual(engine.counters["sent.join"], 2)

    def test_pause_restarts_timers(self) -> None:
        """
        A timer overdue by more than the pause threshold is not fired: every pending
        timer is started again later by the length of the pause, the flush timer is
        started at once, and the pause is logged.
        """
        net = Network(3, RingConfig.loopback())
        self.assertTrue(net.run(1.0, lambda: net.formed(1, 2, 3)))
        host = net.hosts[3]
        host.take()
        pending = {k: at for k in RingTimer if (at := host.timers.deadline(k)) is not None}
        key = min(pending, key=lambda k: pending[k])
        now = pending[key] + 2.0
        host.engine.timer(key, now)
        effects = host.engine.drain()
        [log] = [e for e in effects if isinstance(e, Log)]
        self.assertEqual(log.level, LogLevel.warn)
        self.assertIn("Process pause detected", log.format)
        paused_for = host.engine.last_pause
        self.assertGreater(paused_for, 2.0)
        started = {e.key: e.at for e in effects if isinstance(e, StartTimer)}
        self.assertEqual(started[RingTimer.FLUSH], now)
        for k, deadline in pending.items():
            self.assertAlmostEqual(started[k], deadline + paused_for)
        self.assertEqual(host.engine.counters["paused"], 1)


class SimulationTests(SynchronousTestCase):
    def test_clean_ring(self) -> None:
        """Three nodes, no faults: one ring, every payload delivered everywhere."""
        sim = RingSimulation(1, Scenario(nodes=3, messages=30, faults=Faults())).run()
        delivered = [sum(len(v) for v in r.deliveries.values()) for r in sim.records.values()]
        self.assertEqual(delivered, [len(sim.submitted)] * 3)

    def test_crash_forms_new_ring(self) -> None:
        """A crashed node is dropped from the ring and taken back after it restarts."""
        sim = RingSimulation(2, Scenario(nodes=3, faults=Faults(crashes=2))).run()
        self.assertTrue(any(r.crashed_ever for r in sim.records.values()))
        self.assertEqual({len(e.members) for e in sim.engines.values()}, {3})

    def test_leaves(self) -> None:
        """
        Nodes that leave are dropped by leave, not by timeout, stay silent while gone
        (the simulator checks it), and come back as new incarnations.
        """
        sim = RingSimulation(0, Scenario(nodes=4, faults=Faults(leaves=2))).run()
        self.assertEqual(sum(r.left_ever for r in sim.records.values()), 2)
        self.assertGreater(sum(e.counters["leave.received"] for e in sim.engines.values()), 0)
        self.assertEqual({len(e.members) for e in sim.engines.values()}, {4})

    def test_deaf_node(self) -> None:
        """
        A node deaf to broadcasts for a while is failed to receive, and is back in the
        ring by the end.
        """
        sim = RingSimulation(0, Scenario(nodes=3, faults=Faults(deaf=1))).run()
        self.assertGreater(sum(e.counters["fail_to_recv"] for e in sim.engines.values()), 0)
        self.assertEqual({len(e.members) for e in sim.engines.values()}, {3})

    def test_checker_catches_talking_leaver(self) -> None:
        """
        The leave invariant is not vacuous: an engine that goes on after its leave is
        caught.
        """

        def leaky(self: RingEngine, now: float) -> None:
            self._send(None, Join.leave(self.node, self._ring_seq_max))

        self.patch(RingEngine, "leave", leaky)
        scenario = Scenario(nodes=4, faults=Faults(leaves=2))
        e = self.assertRaises(InvariantViolation, RingSimulation(0, scenario).run)
        self.assertIn("after it left", str(e))

    def test_many_seeds(self) -> None:
        """
        Seeded runs across fault mixes (loss, duplication, reordering, partitions,
        crashes and restarts, leaves, deaf and paused nodes) keep agreement, virtual
        synchrony, no loss of safe messages, take every returning node back with at most
        one new configuration at each serving member while the network is calm, and make
        progress once the faults stop.
        """
        for seed in range(SEEDS):
            RingSimulation(seed).run()

    def test_checker_catches_broken_recovery(self) -> None:
        """
        The invariants are not vacuous: an engine that skips the recovery re-broadcast
        is caught, and the report names the seed and its replay command.
        """
        original = RingEngine._enter_recovery

        def broken(self: RingEngine, commit: Commit) -> None:
            original(self, commit)
            phase = self._phase
            assert isinstance(phase, _Recovery)
            kept = [r for r in phase.rebroadcast if r[0] is not Kind.RECOVERED]
            phase.rebroadcast.clear()
            phase.rebroadcast.extend(kept)

        self.patch(RingEngine, "_enter_recovery", broken)
        lossy = Scenario(nodes=4, messages=80, faults=Faults(loss=0.1, crashes=2))
        failures = []
        for seed in range(40):
            try:
                RingSimulation(seed, lossy).run()
            except InvariantViolation as e:
                failures.append(str(e))
        self.assertTrue(failures, "no seed caught the broken recovery")
        self.assertIn(replay_command(int(failures[0].split()[1])), failures[0])


class LeaveTests(SynchronousTestCase):
    """A node that leaves is dropped at once, stays silent, and may come back later."""

    def setUp(self) -> None:
        self.config = RingConfig.loopback()
        self.net = Network(3, self.config)
        self.assertTrue(self.net.run(1.0, lambda: self.net.formed(1, 2, 3)))
        self.net.run(self.net.now + 0.1)

    def test_new_ring_without_waiting(self) -> None:
        """
        The others form a ring without the leaver well within the token-loss timeout
        (the leave spares them that timeout and the consensus one after it), with no
        token loss and no consensus timeout, and install both configurations.
        """
        net = self.net
        left_at = net.now
        net.engines[3].leave(net.now)
        net.flush(3)
        self.assertTrue(net.run(left_at + 5, lambda: net.formed(1, 2)))
        self.assertLess(net.now - left_at, self.config.token_timeout / 2)
        for n in (1, 2):
            e = net.engines[n]
            self.assertEqual(e.counters["token.lost"], 0)
            self.assertEqual(e.counters["consensus.timeout"], 0)
            self.assertGreaterEqual(e.counters["leave.received"], 1)
            configs = [x for x in net.effects[n] if isinstance(x, Configuration)]
            self.assertEqual(
                configs[-2:],
                [
                    Configuration(e.ring, (1, 2), transitional=True),
                    Configuration(e.ring, (1, 2), transitional=False),
                ],
            )

    def test_leave_while_forming(self) -> None:
        """
        A second node leaving while the ring without the first is being formed does
        not bring back the first: the rest form a ring without both, still without any
        timeout.
        """
        net = Network(4, self.config)
        self.assertTrue(net.run(1.0, lambda: net.formed(1, 2, 3, 4)))
        left_at = net.now
        net.engines[4].leave(net.now)
        net.flush(4)
        forming = (State.COMMIT, State.RECOVERY)
        self.assertTrue(net.run(net.now + 1.0, lambda: net.engines[1].state in forming))
        net.engines[3].leave(net.now)
        net.flush(3)
        self.assertTrue(net.run(net.now + 1.0, lambda: net.formed(1, 2)))
        self.assertLess(net.now - left_at, self.config.token_timeout / 2)
        for n in (1, 2):
            self.assertEqual(net.engines[n].counters["consensus.timeout"], 0)
            self.assertEqual(net.engines[n].counters["token.lost"], 0)

    def test_leaver_is_silent(self) -> None:
        """
        After its leave (one broadcast, and its ring sequence number persisted) the
        leaver sends, delivers and fires nothing, refuses payloads, and ignores what
        still reaches it; leaving again changes nothing.
        """
        net = self.net
        leaver = net.engines[3]
        self.assertTrue(leaver.submit(b"never sent", net.now))
        before = len(net.effects[3])
        leaver.leave(net.now)
        net.flush(3)
        self.assertEqual(
            net.effects[3][before:],
            [
                Persist(RingStored.RING_SEQ, leaver._ring_seq_max),
                Send(None, Join.leave(3, leaver._ring_seq_max)),
            ],
        )
        self.assertIs(leaver.state, State.LEFT)
        self.assertEqual(len(net.hosts[3].timers), 0)
        self.assertEqual(leaver.backlog, 0)
        self.assertFalse(leaver.submit(b"late", net.now))
        leaver.leave(net.now)
        # The survivors go on: their joins, commit tokens and traffic reach it too.
        for p in (b"a", b"b"):
            self.assertTrue(net.engines[1].submit(p, net.now))
        net.flush(1)
        net.run(net.now + 1.0)
        self.assertTrue(net.formed(1, 2))
        self.assertEqual(net.delivered(1)[-2:], [b"a", b"b"])
        self.assertEqual(len(net.effects[3]), before + 2)
        self.assertEqual(leaver.drain(), [])
        self.assertEqual(leaver.counters["left"], 1)

    def test_last_messages_recovered(self) -> None:
        """
        A message the leaver broadcast just before leaving, which only one survivor
        received, is recovered: both survivors deliver it, in the same order.
        """
        net = self.net
        leaver = net.engines[3]
        self.assertTrue(leaver.submit(b"last words", net.now))
        net.deaf.add(2)

        def broadcast() -> bool:
            return any(
                isinstance(x, Send) and isinstance(x.message, Mcast) for x in net.effects[3]
            )

        net.effects[3].clear()
        self.assertTrue(net.run(net.now + 1.0, broadcast))
        net.deaf.clear()
        leaver.leave(net.now)
        net.flush(3)
        self.assertTrue(net.run(net.now + 1.0, lambda: net.formed(1, 2)))
        self.assertIn(b"last words", net.delivered(1))
        self.assertEqual(net.delivered(1), net.delivered(2))
        recovered = [
            x.message
            for x in net.effects[1]
            if isinstance(x, Send)
            and isinstance(x.message, Mcast)
            and x.message.kind is Kind.RECOVERED
            and x.message.old_origin == 3
        ]
        self.assertTrue(recovered, "the survivor that had it did not re-broadcast it")

    def test_comes_back(self) -> None:
        """
        A join the leaver sent before its leave, arriving after it, is stale; a new
        incarnation of the leaver is gathered into the ring again.
        """
        net = self.net
        old_join = Join(3, frozenset({1, 2, 3}), frozenset(), net.engines[3]._ring_seq_max)
        old_mcast = Mcast(net.engines[3].ring, 999, 3, Kind.APP, b"late")
        net.engines[3].leave(net.now)
        net.flush(3)
        self.assertTrue(net.run(net.now + 1.0, lambda: net.formed(1, 2)))
        survivor = net.engines[1]
        ring = survivor.ring
        survivor.received(old_join, net.now)
        survivor.received(old_mcast, net.now)
        net.flush(1)
        self.assertEqual((survivor.state, survivor.ring), (State.OPERATIONAL, ring))
        self.assertEqual(survivor.counters["join.stale"], 1)
        self.assertEqual(survivor.counters["dropped.gone"], 1)
        net.start(3)
        self.assertTrue(net.run(net.now + 1.0, lambda: net.formed(1, 2, 3)))


class FailToReceiveTests(SynchronousTestCase):
    """A member that keeps failing to receive is dropped; the others go on."""

    def setUp(self) -> None:
        self.config = attrs.evolve(RingConfig.loopback(), fail_recv_rotations=20)
        self.net = Network(3, self.config)
        self.assertTrue(self.net.run(1.0, lambda: self.net.formed(1, 2, 3)))

    def test_deaf_member_dropped(self) -> None:
        """
        A member that loses every broadcast (but still gets the token) is declared
        failed to receive after the configured rotations, counted, and the others form
        a ring without it and deliver; once it hears again it joins back.
        """
        net = self.net
        net.deaf.add(3)
        payloads = [b"p%d" % i for i in range(5)]
        for p in payloads:
            self.assertTrue(net.engines[1].submit(p, net.now))
        net.flush(1)

        def detected() -> bool:
            return any(e.counters["fail_to_recv"] for e in net.engines.values())

        self.assertTrue(net.run(net.now + 1.0, detected))
        detector = next(e for e in net.engines.values() if e.counters["fail_to_recv"])
        self.assertIn(detector.node, (1, 2))
        self.assertEqual(net.engines[3].counters["fail_to_recv"], 0)
        self.assertTrue(net.run(net.now + 2.0, lambda: net.formed(1, 2)))
        self.assertEqual(net.delivered(1), payloads)
        self.assertEqual(net.delivered(2), payloads)
        self.assertEqual(net.delivered(3), [])
        net.deaf.clear()
        self.assertTrue(net.run(net.now + 3.0, lambda: net.formed(1, 2, 3)))
        self.assertTrue(net.engines[1].submit(b"after", net.now))
        net.flush(1)
        net.run(net.now + 0.5)
        for n in (1, 2, 3):
            self.assertEqual(net.delivered(n)[-1], b"after")

    def test_rotations_counted(self) -> None:
        """
        A member is failed no sooner than the configured rotations: the token visits
        a detector that many times with the same messages missing.
        """
        net = self.net
        net.deaf.add(3)
        visits_before = net.engines[1].counters["token.received"]
        self.assertTrue(net.engines[1].submit(b"x", net.now))
        net.flush(1)
        self.assertTrue(net.run(net.now + 1.0, lambda: net.engines[1].state is State.GATHER))
        visits = net.engines[1].counters["token.received"] - visits_before
        self.assertGreaterEqual(visits, self.config.fail_recv_rotations)
        self.assertEqual(net.engines[1].counters["fail_to_recv"], 1)
        phase = net.engines[1]._phase
        assert isinstance(phase, _Gather)
        self.assertIn(3, phase.failed)

    def test_no_false_failures(self) -> None:
        """
        Ordinary loss, duplication and reordering never fail a member to receive,
        even with the simulator's lower threshold.
        """
        lossy = Scenario(nodes=4, messages=80, faults=Faults(loss=0.1, duplicate=0.05))
        for seed in range(10):
            sim = RingSimulation(seed, lossy).run()
            self.assertEqual(sum(e.counters["fail_to_recv"] for e in sim.engines.values()), 0)
