"""
Tests for a member's return to the ring (L{lips.ring.RingEngine}): after a pause (its
process stopped and continued, its timers overdue and its socket full of stale
datagrams), after a restart, and after a leave, the members that were serving take it
back with one new configuration, not a string of them.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from lips.kernel import Send
from lips.ring import (
    Configuration,
    Join,
    RingConfig,
    RingEngine,
    RingMessage,
    State,
)
from lips.testing.ringsim import (
    BACKLOG_MAX,
    Faults,
    InvariantViolation,
    RingSimulation,
    Scenario,
)
from tests.unit.test_ring_engine import Host, Network
from tests.unit.test_ring_protocol import LogRecorder, Ring, address


class PausableNetwork(Network):
    """
    L{Network}, where a node can be paused: it processes nothing, what is sent to it
    waits in its socket buffer, and on resuming it fires its overdue timers and reads
    that backlog at one instant, in the order a test chooses.
    """

    def __init__(self, nodes: int, config: RingConfig, delay: float = 0.001) -> None:
        self.paused: dict[int, list[RingMessage]] = {}
        super().__init__(nodes, config, delay)

    def pause(self, n: int) -> None:
        self.paused[n] = []

    def resume(self, n: int, timers_first: bool) -> None:
        backlog = self.paused.pop(n)
        engine = self.engines[n]
        if timers_first:
            self.fire(n)
        for message in backlog:
            engine.received(message, self.now)
            self.flush(n)
        if not timers_first:
            self.fire(n)

    def run(self, until: float, stop: Callable[[], bool] = lambda: False) -> bool:
        while True:
            times = [
                t
                for n, h in self.hosts.items()
                if n not in self.paused and (t := h.next_deadline()) is not None
            ]
            if self._queue:
                times.append(self._queue[0][0])
            if not times or min(times) > until:
                self.now = until
                return False
            self.now = min(times)
            if self._queue and self._queue[0][0] <= self.now:
                _, _, dest, message = heapq.heappop(self._queue)
                if dest in self.paused:
                    self.paused[dest].append(message)
                else:
                    self.engines[dest].received(message, self.now)
                    self.flush(dest)
            else:
                for n, host in list(self.hosts.items()):
                    deadline = host.next_deadline()
                    if n not in self.paused and deadline is not None and deadline <= self.now:
                        self.fire(n)
            if stop():
                return True

    def regulars(self, n: int) -> list[Configuration]:
        """The regular configurations node C{n} has installed, in order."""
        return [e for e in self.effects[n] if isinstance(e, Configuration) and not e.transitional]


def joins_sent(effects: Sequence[object]) -> list[Join]:
    return [e.message for e in effects if isinstance(e, Send) and isinstance(e.message, Join)]


class PauseTests(SynchronousTestCase):
    """A member paused long enough to be dropped is taken back in one round."""

    def setUp(self) -> None:
        self.config = RingConfig.loopback()
        self.net = PausableNetwork(3, self.config)
        self.assertTrue(self.net.run(1.0, lambda: self.net.formed(1, 2, 3)))
        self.net.run(self.net.now + 0.1)

    def pause_and_resume(self, timers_first: bool) -> None:
        net = self.net
        net.pause(3)
        stopped_at = net.now
        self.assertTrue(net.run(net.now + 2.0, lambda: net.formed(1, 2)))
        # The others go on serving, and sending: it all waits in the paused socket.
        self.assertTrue(net.engines[1].submit(b"while away", net.now))
        net.flush(1)
        net.run(stopped_at + 1.5)
        self.assertGreater(len(net.paused[3]), 10)
        before = {n: len(net.regulars(n)) for n in (1, 2)}
        timeouts = {n: net.engines[n].counters["consensus.timeout"] for n in (1, 2)}
        net.resume(3, timers_first)
        self.assertTrue(net.run(net.now + 2.0, lambda: net.formed(1, 2, 3)))
        net.run(net.now + 1.0)
        self.assertTrue(net.formed(1, 2, 3), "the ring did not stay formed")
        for n in (1, 2):
            self.assertEqual(len(net.regulars(n)) - before[n], 1)
            self.assertEqual(net.engines[n].counters["consensus.timeout"], timeouts[n])
        back = net.engines[3]
        self.assertEqual(back.counters["paused"], 1)
        self.assertGreater(back.counters["flushed"], 0)
        # Taken back straight into the others' ring: no ring of its own first.
        self.assertEqual([c.members for c in net.regulars(3)][-2:], [(1, 2, 3), (1, 2, 3)])
        self.assertTrue(net.engines[2].submit(b"after", net.now))
        net.flush(2)
        net.run(net.now + 0.5)
        for n in (1, 2, 3):
            self.assertEqual(net.delivered(n)[-1], b"after")

    def test_backlog_first(self) -> None:
        """
        Resumed with the backlog read before its overdue timers fire (a process
        stopped while waiting for input): one new configuration at each of the others,
        none of them runs into a consensus timeout, and the resumed node drops the stale
        joins it reads.
        """
        self.pause_and_resume(timers_first=False)

    def test_timers_first(self) -> None:
        """The same, with its overdue timers firing before it reads the backlog."""
        self.pause_and_resume(timers_first=True)

    def test_short_pause_keeps_the_ring(self) -> None:
        """
        A pause shorter than the token-loss timeout changes nothing: the resumed
        member takes the token waiting in its socket and the ring goes on as it was.
        """
        net = PausableNetwork(3, RingConfig())
        self.assertTrue(net.run(5.0, lambda: net.formed(1, 2, 3)))
        net.run(net.now + 0.5)
        configs = {n: len(net.regulars(n)) for n in (1, 2, 3)}
        ring = net.engines[1].ring
        net.pause(3)
        net.run(net.now + 0.8)
        net.resume(3, timers_first=False)
        net.run(net.now + 3.0)
        self.assertTrue(net.formed(1, 2, 3))
        self.assertEqual(net.engines[3].ring, ring)
        self.assertEqual({n: len(net.regulars(n)) for n in (1, 2, 3)}, configs)
        self.assertEqual(sum(e.counters["token.lost"] for e in net.engines.values()), 0)


class StraddlingPayloadTests(SynchronousTestCase):
    """A fragmented payload under way when a member comes back."""

    def test_sent_again_whole(self) -> None:
        """
        A payload whose first fragments went out in the ring without the returning
        member, and the rest after it is back, is delivered by every member, once: the
        members drop the part they assembled and its sender broadcasts it again, whole,
        in the new configuration.  (Completed only where the first fragments had
        arrived, it would be delivered by some members of the new configuration and not
        by the one that came back.)
        """
        config = attrs.evolve(RingConfig.loopback(), max_messages=1)
        net = PausableNetwork(3, config)
        self.assertTrue(net.run(1.0, lambda: net.formed(1, 2, 3)))
        net.pause(3)
        self.assertTrue(net.run(net.now + 2.0, lambda: net.formed(1, 2)))
        big = bytes(range(256)) * 800
        self.assertTrue(net.engines[1].submit(big, net.now))
        net.flush(1)
        sent = net.engines[1].counters["sent.mcast"]
        self.assertTrue(
            net.run(net.now + 1.0, lambda: net.engines[1].counters["sent.mcast"] > sent + 3)
        )
        self.assertGreater(net.engines[1].backlog, 10)
        net.resume(3, timers_first=False)
        self.assertTrue(net.run(net.now + 1.0, lambda: net.formed(1, 2, 3)))
        net.run(net.now + 2.0)
        for n in (1, 2, 3):
            self.assertEqual(net.delivered(n).count(big), 1, f"node {n}")
        self.assertEqual(net.engines[1].counters["fragments.resent"], 1)


class _Socket:
    """A paused member's socket: it keeps what arrives."""

    def __init__(self) -> None:
        self.backlog: list[tuple[bytes, Any]] = []

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.backlog.append((datagram, addr))


class PausableRing(Ring):
    """L{Ring}, where one member can be paused: its clock stands still, its socket fills."""

    def __init__(self) -> None:
        super().__init__(3)
        self.sockets: dict[int, _Socket] = {}

    def pause(self, n: int) -> None:
        self.sockets[n] = _Socket()
        self.network.nodes[address(n)] = self.sockets[n]  # type: ignore[assignment]

    def resume(self, n: int) -> None:
        """As a reactor does after SIGCONT: its clock jumps, it reads, then runs timers."""
        node = self.nodes[n]
        self.network.nodes[address(n)] = node.protocol
        node.clock.rightNow = self.nodes[1 if n != 1 else 2].clock.seconds()
        for datagram, addr in self.sockets.pop(n).backlog:
            node.protocol.datagramReceived(datagram, addr)
        node.clock.advance(0)

    def run(self, seconds: float) -> None:
        for _ in range(round(seconds / self.STEP)):
            self.network.hop()
            for n, node in self.nodes.items():
                if n not in self.sockets:
                    node.clock.advance(self.STEP)


class AdapterPauseTests(SynchronousTestCase):
    """A pause seen through the UDP adapter, with the clock jump a real process sees."""

    def test_one_change_and_logged(self) -> None:
        """
        Three members on UDP adapters; one's clock stands still for 1.5 s while its
        socket fills, then jumps: the other two install one configuration without it
        and one with it again, and the resumed member logs the pause it detected.
        """
        ring = PausableRing()
        ring.run(1.0)
        self.assertTrue(ring.formed())
        logged = LogRecorder()
        ring.nodes[3].protocol.log = Logger(namespace="ring", observer=logged)

        def regulars(n: int) -> int:
            return sum(not c.transitional for c in ring.nodes[n].configurations())

        before = {n: regulars(n) for n in (1, 2)}
        ring.pause(3)
        ring.run(1.5)
        self.assertEqual(ring.nodes[1].engine.members, (1, 2))
        self.assertGreater(len(ring.sockets[3].backlog), 10)
        ring.resume(3)
        ring.run(1.0)
        self.assertTrue(ring.formed())
        self.assertEqual({n: regulars(n) - before[n] for n in (1, 2)}, {1: 2, 2: 2})
        [warning] = logged.warnings()
        self.assertIn("Process pause detected", warning["log_format"])
        self.assertGreater(warning["ms"], 1000)


class ResumedEngineTests(SynchronousTestCase):
    """What one engine does with its overdue timers and its backlog."""

    def test_stale_joins_flushed(self) -> None:
        """
        A join read right after a pause is dropped, even one that names the node as
        failed; the node gathers again with its last ring's members, none failed, and a
        newer ring sequence number; once it has ticked, joins count again.
        """
        net = PausableNetwork(3, RingConfig.loopback())
        self.assertTrue(net.run(1.0, lambda: net.formed(1, 2, 3)))
        engine, host = net.engines[3], net.hosts[3]
        seq = engine._ring_seq_max
        now = net.now + 2.0
        engine.received(Join(1, frozenset({1, 2, 3}), frozenset({3}), seq), now)
        self.assertEqual(engine.counters["paused"], 1)
        self.assertEqual(engine.counters["flushed"], 1)
        self.assertIs(engine.state, State.GATHER)
        [join] = joins_sent(host.take())
        self.assertEqual((join.procs, join.failed), (frozenset({1, 2, 3}), frozenset()))
        self.assertGreater(join.ring_seq, seq)
        # The flush ends at the next round of timers: due at once.
        self.assertEqual(host.next_deadline(), now)
        self.assertEqual(joins_sent(host.fire(now)), [])
        engine.received(Join(1, frozenset({1, 2, 3, 4}), frozenset(), join.ring_seq), now)
        [merged] = joins_sent(host.take())
        self.assertEqual(merged.procs, frozenset({1, 2, 3, 4}))
        self.assertEqual(engine.counters["flushed"], 1)

    def test_consensus_timeout_not_fired_by_pause(self) -> None:
        """
        A consensus timer that came due only because the node was paused does not
        fail anyone: the gather starts afresh, with its full timeout.
        """
        config = RingConfig.loopback()
        host = Host(RingEngine(1, [1, 2], config))
        engine = host.engine
        engine.start(0.0)
        host.take()
        host.fire(5.0)
        self.assertEqual(engine.counters["consensus.timeout"], 0)
        self.assertIs(engine.state, State.GATHER)
        host.fire(5.0)
        self.assertEqual(engine.counters["consensus.timeout"], 0)
        self.assertEqual(engine.counters["paused"], 1)
        while engine.counters["consensus.timeout"] == 0:
            deadline = host.next_deadline()
            assert deadline is not None
            host.fire(deadline)
        self.assertAlmostEqual(deadline, 5.0 + config.consensus_timeout)
        self.assertEqual(engine.counters["paused"], 1)

    def test_late_timer_is_not_a_pause(self) -> None:
        """A timer firing a little late (a busy reactor) is an ordinary tick."""
        config = RingConfig.loopback()
        host = Host(RingEngine(1, [1, 2], config))
        engine = host.engine
        engine.start(0.0)
        host.take()
        host.fire(config.join_interval + config.pause_after * 0.9)
        self.assertEqual(engine.counters["paused"], 0)
        self.assertEqual(engine.counters["sent.join"], 2)

    def test_restarted_node_ignores_joins_about_its_old_incarnation(self) -> None:
        """
        A join that named the node's previous incarnation as failed, sent before its
        sender heard of the restart, does not make the restarted node fail the sender.
        """
        host = Host(RingEngine(3, [1, 2, 3], RingConfig.loopback(), ring_seq=20))
        engine = host.engine
        engine.start(0.0)
        host.take()
        engine.received(Join(1, frozenset({1, 2, 3}), frozenset({3}), 20), 0.001)
        self.assertEqual(engine.counters["join.stale"], 1)
        self.assertEqual(joins_sent(host.take()), [])
        # Once its sender has heard of the new incarnation, its joins count.
        engine.received(Join(1, frozenset({1, 2, 3}), frozenset(), 24), 0.002)
        self.assertEqual(engine.counters["join.stale"], 1)
        [join] = joins_sent(host.take() + host.fire(0.03))
        self.assertEqual(join.failed, frozenset())


class DepartedNodeReturnTests(SynchronousTestCase):
    """A node that left and restarts is not failed as gone by a member that lags."""

    def setUp(self) -> None:
        self.net = Network(4, RingConfig.loopback())
        self.assertTrue(self.net.run(1.0, lambda: self.net.formed(1, 2, 3, 4)))
        self.net.engines[4].leave(self.net.now)
        self.net.flush(4)

    def test_vouched(self) -> None:
        """
        A member that has seen the restarted node (its join carries a ring sequence
        number as high as the new incarnation's) vouches for it: a member whose join
        from the node is still on its way gathers with it, not failed.
        """
        net = self.net
        self.assertTrue(net.run(net.now + 1.0, lambda: net.formed(1, 2, 3)))
        engine = net.engines[1]
        seq = max(engine._gone[4] + 4, engine.ring.seq)
        net.hosts[1].take()
        engine.received(Join(3, frozenset({1, 2, 3, 4}), frozenset(), seq), net.now)
        [join] = joins_sent(net.hosts[1].take())
        self.assertEqual((join.procs, join.failed), (frozenset({1, 2, 3, 4}), frozenset()))
        self.assertEqual(engine.counters["gone.vouched"], 1)

    def test_not_vouched(self) -> None:
        """
        A join no newer than the leave (sent in the round the leave started, before
        its sender heard of it) is no news of a return: the node stays gone.
        """
        net = self.net
        engine = net.engines[1]
        self.assertTrue(net.run(net.now + 1.0, lambda: engine.counters["leave.received"] > 0))
        gone = engine._gone[4]
        engine.received(Join(3, frozenset({1, 2, 3, 4}), frozenset(), gone), net.now)
        self.assertEqual(engine._gone, {4: gone})
        self.assertEqual(engine.counters["gone.vouched"], 0)
        self.assertTrue(net.run(net.now + 1.0, lambda: net.formed(1, 2, 3)))


#: Seeds of pause scenarios the suite runs.
PAUSE_SEEDS = 12


def pause_scenario(seed: int) -> Scenario:
    return Scenario(nodes=3 + seed % 3, messages=30, faults=Faults(pauses=2))


class SimulatedReturnTests(SynchronousTestCase):
    """The simulator's paused nodes, and its count of configurations per return."""

    def test_pauses(self) -> None:
        """
        Paused nodes of 3 to 5 node rings are taken back with at most one new
        configuration at every serving member (the simulator fails the run otherwise),
        and the check was exercised: returns were measured and merged.
        """
        merged = 0
        for seed in range(PAUSE_SEEDS):
            sim = RingSimulation(seed, pause_scenario(seed)).run()
            for r in sim.returns:
                if r.merged_at is not None:
                    merged += 1
                    self.assertLessEqual(r.most, 1, f"seed {seed}: {r}")
        self.assertGreater(merged, PAUSE_SEEDS // 2)

    def test_backlog_bounded(self) -> None:
        """A paused node's socket keeps at most L{BACKLOG_MAX} datagrams."""
        scenario = Scenario(nodes=5, messages=80, faults=Faults(pauses=3))
        dropped = 0
        for seed in range(20):
            sim = RingSimulation(seed, scenario).run()
            dropped += sim.backlog_dropped
            if dropped:
                break
        self.assertGreater(dropped, 0)
        self.assertEqual(BACKLOG_MAX, 256)

    def test_checker_catches_scattered_returns(self) -> None:
        """
        The return check is not vacuous: an engine that does not notice its pauses
        (its overdue timers fire in a burst, it acts on the stale joins of its backlog)
        makes serving members install ring after ring, and the check fails the run
        with the seed and what was installed.
        """

        def unaware(self: RingEngine, now: float) -> bool:
            self._now = now
            return False

        self.patch(RingEngine, "_clock", unaware)
        for seed in range(40):
            try:
                RingSimulation(seed, pause_scenario(seed)).run()
            except InvariantViolation as e:
                self.assertIn("return: after the resume of", str(e))
                self.assertIn(f"seed {seed}", str(e))
                return
        self.fail("no seed caught the scattered returns")

    def test_lossy_returns_not_checked(self) -> None:
        """With loss, returns are measured but not held to one configuration."""
        scenario = Scenario(nodes=4, messages=30, faults=Faults(loss=0.05, pauses=2))
        returns = [r for seed in range(6) for r in RingSimulation(seed, scenario).run().returns]
        lossy = [r for r in returns if r.merged_at is not None and not r.checked]
        self.assertTrue(lossy)
