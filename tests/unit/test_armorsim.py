"""
The ARMOR simulator (L{lips.testing.armorsim}): 300 seeded runs of the FTM, its backup,
surrogate managers, common ARMORs, the daemons (the real core, L{lips.armor.Daemon})
and tasks under kills and hangs of any of them, each checked after every step and once
the faults stop; one run per kind of fault on its own; a run replays from its seed; the
daemons are the core lipsd runs; and C{lips sim --armor}.
"""

from __future__ import annotations

import contextlib
import io

from twisted.trial.unittest import SynchronousTestCase

from lips.armor import Daemon, ResidentState
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
        hung = 0
        for seed in range(SEEDS):
            try:
                sim = ArmorSimulation(seed).run()
            except InvariantViolation as e:
                failures.append(str(e))
                continue
            faults += sum(sim.injected.values())
            promoted += sim.current_epoch() > 1
            hung += sim.stats["daemons: armors.hung"]
        self.assertEqual(failures, [])
        # The faults happened, some of them made the backup the FTM, and the daemons
        # found hung ARMORs by their missed pings.
        self.assertGreater(faults, SEEDS)
        self.assertGreater(promoted, SEEDS // 10)
        self.assertGreater(hung, SEEDS // 30)

    def test_each_fault_alone(self) -> None:
        """Each kind of fault, injected on its own, is recovered from."""
        for kind in FAULT_KINDS:
            injected = 0
            for seed in range(4):
                sim = ArmorSimulation(seed, apps=2, faults=3, kinds=(kind,)).run()
                injected += sim.injected[kind]
            self.assertGreater(injected, 0, kind)

    def test_seeds_that_found_bugs(self) -> None:
        """
        Seeds that failed once the simulator ran the real daemon core: an Initialization
        ARMOR left in the table by a node that restarted before its survey (550, 796,
        1218, 1527), a superseded surrogate manager's updates believed (372, 1338, 1671).
        """
        for seed in (550, 796, 1218, 1527, 372, 1338, 1671):
            ArmorSimulation(seed).run()

    def test_replays(self) -> None:
        """A seed replays exactly."""
        one, two = ArmorSimulation(17).run(), ArmorSimulation(17).run()
        self.assertEqual(
            (one.steps, one.stats, one.injected), (two.steps, two.stats, two.injected)
        )
        self.assertEqual(one.summary(), two.summary())

    def test_replays_from_a_fresh_start(self) -> None:
        """A seed replays exactly however many runs came before it in the process."""
        ArmorSimulation(3).run()
        one = ArmorSimulation(23).run()
        two = ArmorSimulation(23).run()
        self.assertEqual((one.steps, one.summary()), (two.steps, two.summary()))

    def test_a_failure_names_its_seed(self) -> None:
        """An invariant that fails says which seed replays it."""
        sim = ArmorSimulation(5)
        with self.assertRaises(InvariantViolation) as caught:
            sim._fail("broken")
        self.assertIn("seed 5 (lips sim --armor --seed 5)", str(caught.exception))


class DaemonTests(SynchronousTestCase):
    def test_the_real_core(self) -> None:
        """
        Every node's daemon is the core lipsd runs; once a run settles, each live
        one's residents are exactly the processes of its node, running, and the boot FTM
        and the submitter attached themselves to theirs.
        """
        sim = ArmorSimulation(11, apps=2, faults=0).run()
        self.assertEqual(sim.injected, {})
        for node in sim.nodes.values():
            self.assertIsInstance(node.daemon, Daemon)
            self.assertEqual(node.problems(), [])
            for resident in node.daemon.residents.values():
                self.assertIs(resident.state, ResidentState.RUNNING)
        first = sim.booted[0]
        self.assertEqual(first.node, "n1")
        self.assertEqual(first.daemon.counters["armors.attached"], 1)
        client = sim.nodes["client"].daemon
        self.assertEqual(list(client.residents), ["submit.c1"])
        self.assertEqual(client.counters["armors.attached"], 1)
        # The client's daemon does not join: the FTM places nothing there.
        self.assertEqual(client.counters["joins.sent"], 0)
        for name in sim.node_names:
            self.assertGreater(sim.nodes[name].daemon.counters["joins.welcomed"], 0)

    def test_hangs_found_by_pings(self) -> None:
        """A hung ARMOR is found by its daemon's missed pings, killed and recovered."""
        hung = 0
        for seed in range(6):
            sim = ArmorSimulation(seed, apps=2, faults=3, kinds=("exec-hang", "ftm-hang")).run()
            hung += sim.stats["daemons: armors.hung"]
        self.assertGreater(hung, 0)


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
