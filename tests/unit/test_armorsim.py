"""
The ARMOR simulator (L{lips.testing.armorsim}): 300 seeded runs of the FTM, its backup,
surrogate managers, common ARMORs, daemons and tasks under kills and hangs of any of
them, each checked after every step and once the faults stop; one run per kind of fault
on its own; a run replays from its seed; and C{lips sim --armor}.
"""

from __future__ import annotations

import contextlib
import io

from twisted.trial.unittest import SynchronousTestCase

from lips.cli import main
from lips.testing.armorsim import FAULT_KINDS, ArmorSimulation
from lips.testing.ringsim import InvariantViolation

#: How many seeds the suite runs (C{lips sim --armor --seeds N} runs more).
SEEDS = 300


class SeedTests(SynchronousTestCase):
    def test_seeds(self) -> None:
        """Every seed ends with every result reported once and every invariant holding."""
        failures = []
        faults = 0
        promoted = 0
        for seed in range(SEEDS):
            try:
                sim = ArmorSimulation(seed).run()
            except InvariantViolation as e:
                failures.append(str(e))
                continue
            faults += sum(sim.injected.values())
            promoted += sim.current_epoch() > 1
        self.assertEqual(failures, [])
        # The faults happened, and some of them made the backup the FTM.
        self.assertGreater(faults, SEEDS)
        self.assertGreater(promoted, SEEDS // 10)

    def test_each_fault_alone(self) -> None:
        """Each kind of fault, injected on its own, is recovered from."""
        for kind in FAULT_KINDS:
            injected = 0
            for seed in range(4):
                sim = ArmorSimulation(seed, apps=2, faults=3, kinds=(kind,)).run()
                injected += sim.injected[kind]
            self.assertGreater(injected, 0, kind)

    def test_replays(self) -> None:
        """A seed replays exactly."""
        one, two = ArmorSimulation(17).run(), ArmorSimulation(17).run()
        self.assertEqual(
            (one.steps, one.stats, one.injected), (two.steps, two.stats, two.injected)
        )
        self.assertEqual(one.summary(), two.summary())

    def test_a_failure_names_its_seed(self) -> None:
        """An invariant that fails says which seed replays it."""
        sim = ArmorSimulation(5)
        with self.assertRaises(InvariantViolation) as caught:
            sim._fail("broken")
        self.assertIn("seed 5 (lips sim --armor --seed 5)", str(caught.exception))


class CommandTests(SynchronousTestCase):
    def run_main(self, *argv: str) -> tuple[int, str]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(["sim", "--armor", *argv])
        return code, out.getvalue()

    def test_seeds(self) -> None:
        """lips sim --armor --seeds N runs them and prints the figures."""
        code, text = self.run_main("--seeds", "3", "--start", "40")
        self.assertEqual(code, 0)
        self.assertIn("ARMOR seeds 40..42: 3 passed, 0 failed", text)
        self.assertIn("faults injected", text)

    def test_one_seed(self) -> None:
        """lips sim --armor --seed N replays one, verbosely."""
        code, text = self.run_main("--seed", "7")
        self.assertEqual(code, 0)
        self.assertIn("seed 7:", text)
        self.assertIn("applications", text)
