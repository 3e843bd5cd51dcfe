"""
Tests for L{lips.ring.RingEngine}, driven directly and through the deterministic
simulator L{lips.testing.ringsim}.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from lips.ring import (
    Commit,
    Configuration,
    Deliver,
    Kind,
    Mcast,
    RingConfig,
    RingEngine,
    RingId,
    Safe,
    Send,
    State,
    Token,
)
from lips.testing.ringsim import (
    Faults,
    InvariantViolation,
    RingSimulation,
    Scenario,
    replay_command,
)

#: Seeds the default suite runs; LIPS_SIM_SEEDS raises it for a soak run.
SEEDS = int(os.environ.get("LIPS_SIM_SEEDS", "300"))


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


class SingleNodeTests(SynchronousTestCase):
    """A lone node forms a ring of its own and delivers what it sends."""

    def setUp(self) -> None:
        self.engine = RingEngine(1, [1], RingConfig.loopback())
        self.now = 0.0
        self.engine.start(self.now)
        self.effects: list[object] = []
        self.spin(0.05)

    def spin(self, until: float) -> None:
        """Run the engine alone, looping its own token back, until C{until}."""
        e = self.engine
        while True:
            self.effects += e.take_effects()
            loops = [x for x in self.effects if isinstance(x, Send) and x.to == 1]
            for x in loops:
                self.effects.remove(x)
                e.received(x.message, self.now)
            if loops:
                continue
            deadline = e.next_deadline()
            if deadline is None or deadline > until:
                return
            self.now = deadline
            e.tick(self.now)

    def test_forms_and_delivers(self) -> None:
        """It installs a one-member ring and delivers its payloads in order, safe."""
        self.assertIs(self.engine.state, State.OPERATIONAL)
        configs = [x for x in self.effects if isinstance(x, Configuration)]
        self.assertEqual([c.members for c in configs], [(1,), (1,)])
        for p in (b"a", b"b", b"c"):
            self.assertTrue(self.engine.submit(p, self.now))
        self.spin(self.now + 0.1)
        delivered = [x.payload for x in self.effects if isinstance(x, Deliver)]
        self.assertEqual(delivered, [b"a", b"b", b"c"])
        safe = max(x.upto for x in self.effects if isinstance(x, Safe))
        last = max(x.seq for x in self.effects if isinstance(x, Deliver))
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
        delivered = [x.payload for x in self.effects if isinstance(x, Deliver)]
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
        # A payload whose fragments would not all fit is refused whole.
        roomy = RingEngine(1, [1], RingConfig(max_queue=3, max_payload=64))
        self.assertFalse(roomy.submit(bytes(500), 0))
        self.assertEqual(roomy.backlog, 0)

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

    def test_many_seeds(self) -> None:
        """
        Seeded runs across fault mixes (loss, duplication, reordering, partitions,
        crashes and restarts) keep agreement, virtual synchrony, no loss of safe messages,
        and make progress once the faults stop.
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
            kept = [r for r in self._recovery if r[0] is not Kind.RECOVERED]
            self._recovery.clear()
            self._recovery.extend(kept)

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
