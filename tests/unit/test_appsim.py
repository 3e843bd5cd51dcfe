"""
Tests for L{lips.testing.appsim}: an application whose workers are killed and restarted
from their checkpoints gets the fault-free answer, and never outputs anything twice.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from lips.space import Completion, TupleSpace
from lips.testing.appsim import RecoverySimulation
from lips.testing.ringsim import InvariantViolation
from lips.tuples import LTuple

SEEDS = int(os.environ.get("LIPS_APP_SEEDS", "300"))


class RecoverySimulationTests(SynchronousTestCase):
    def test_seeds(self) -> None:
        """
        Seeded runs of a master and four workers on two nodes over 40 tasks, with six
        kills of workers or whole nodes each: the answer is the fault-free one, no
        result is ever stored twice, and restarted workers replay from the log.
        """
        killed = replayed = node_kills = 0
        for seed in range(SEEDS):
            sim = RecoverySimulation(seed)
            self.assertEqual(sim.run(), sum(i * i for i in range(40)))
            killed += sim.killed
            replayed += sim.replayed
            node_kills += sim.node_kills
        self.assertGreater(killed, SEEDS)
        self.assertGreater(replayed, SEEDS)
        self.assertGreater(node_kills, 0)

    def test_from_scratch_without_checkpoints(self) -> None:
        """Workers that never checkpoint restart from scratch and replay everything."""
        for seed in range(20):
            sim = RecoverySimulation(seed, every=10_000)
            sim.run()
            self.assertEqual(sim.space.recovered(100), None)

    def test_checker_catches_unsuppressed_outputs(self) -> None:
        """A space that stores a replayed out again is caught as a duplicate output."""
        original = TupleSpace.out

        def forgetful(self: TupleSpace, pid: int, event: int, values: LTuple) -> list[Completion]:
            if values[0] == "result" and self.answered(pid, event) is not None:
                self._store_tuple(values, ())  # stored again: not suppressed
            return original(self, pid, event, values)

        self.patch(TupleSpace, "out", forgetful)
        caught = 0
        for seed in range(20):
            try:
                RecoverySimulation(seed).run()
            except InvariantViolation:
                caught += 1
        self.assertGreater(caught, 0)
