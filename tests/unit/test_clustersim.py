"""
Tests for L{lips.testing.clustersim}: served servers (ring engine, replica and the real
MessageServer core, each on its own clock) and real clients failing over between them,
under paused, crashed and partitioned servers and a lossy ring, checked against what
every caller was told and what the space's log says happened.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
from collections import Counter

import attrs
from twisted.trial.unittest import SynchronousTestCase

from lips import cli
from lips.server import Answer, MessageServer
from lips.space import Completion, Kind, Status, TupleSpace
from lips.testing import clustersim
from lips.testing.clustersim import (
    Call,
    ClusterScenario,
    ClusterSimulation,
    Fault,
    InvariantViolation,
)

SEEDS = int(os.environ.get("LIPS_SERVED_SEEDS", "10"))


def incident() -> ClusterScenario:
    """
    The loss found with real processes, scripted: two consumers on m3 wait in C{in_}
    with a 1 s timeout; a producer on m1 stores two tuples; the consumers' claims are
    applied on all three servers and m3 holds the answers until they are safe, when it
    is paused for 1.4 s.  The consumers' keepalive gives up on it and they fail over
    to m1, which is still syncing: m2 was paused the moment it installed the new
    configuration, so m1 waits for its status.  They send their requests again with
    what is left of their timeout: nothing.
    """
    return ClusterScenario(
        nodes=3,
        processes=0,
        keepalive=0.5,
        homes=(3, 3, 1),
        script=(
            Call(0.6, 0, Kind.IN, timeout=1.0),
            Call(0.6, 1, Kind.IN, timeout=1.0),
            Call(0.7, 2, Kind.OUT, ("ks", 3, 1)),
            Call(0.7, 2, Kind.OUT, ("ks", 3, 2)),
        ),
        faults=(
            Fault(0.65, 3, 1.4, trigger="unsafe"),
            Fault(0.8, 2, 1.0, trigger="syncing"),
        ),
    )


def with_goodbyes(seed: int, goodbye: float = 0.05) -> ClusterScenario:
    """Seed C{seed}'s scenario (as L{ClusterSimulation} draws it), its processes saying goodbye."""
    return attrs.evolve(ClusterScenario.random(random.Random(seed ^ 0xC1A5)), goodbye=goodbye)


class ClusterSimulationTests(SynchronousTestCase):
    def tearDown(self) -> None:
        # A client logs (with its failure) a tuple it could not put back to a space it
        # gave up on: part of a run, not an error of the test.
        self.flushLoggedErrors()

    def test_seeds(self) -> None:
        """
        Seeded runs of three to five servers and their clients, with paused, crashed
        and partitioned servers and a lossy ring: no request answered two ways, no
        tuple taken twice or invented, every caller answered, one ring and one digest
        at the end, and no tuple lost except to a caller told its outcome is unknown.
        Between them the runs pause servers holding answers not yet safe and send
        requests again with no time left.
        """
        counts: Counter[str] = Counter()
        for seed in range(SEEDS):
            counts.update(ClusterSimulation(seed).run().counts)
        self.assertGreater(counts["pauses"], 0)
        self.assertGreater(counts["eager pauses struck (unsafe)"], 0)
        self.assertGreater(counts["requests sent again"], 0)
        self.assertGreater(counts["sent again with no time left"], 0)

    def test_seeds_with_goodbyes(self) -> None:
        """
        The same runs with processes that say goodbye as they go (and new ones in their
        place): the space forgets a process's log, so from then on nothing dedupes its
        events, and a request a server sends again after the goodbye is stored or takes
        a tuple twice.  Seeds 2, 3, 4, 6 and 8 caught it (an out the survivors stored
        again after a crash; an in that took a second tuple) while the replica recorded
        a request in flight only after its broadcast returned.
        """
        goodbyes = 0
        for seed in range(SEEDS):
            sim = ClusterSimulation(seed, with_goodbyes(seed)).run()
            goodbyes += sum(1 for _, text, _ in sim.trace if text.endswith("says goodbye"))
        self.assertGreater(goodbyes, 0)

    def test_request_after_its_goodbye(self) -> None:
        """
        A request that waited in a paused server's socket while its client failed over,
        was answered elsewhere and said goodbye, is answered STALE when the server
        resumes, not applied as new: the space remembers the last event of a process it
        forgot (seeds 61 and 65 stored an out twice before it did, and 65 took both).
        """
        for seed in (61, 65):
            ClusterSimulation(seed, with_goodbyes(seed)).run()

    def test_paused_server_and_no_time_left(self) -> None:
        """
        The incident (L{incident}) on the fixed code: the consumers' requests reach a
        syncing m1 with 0 s left, and each consumer still gets the tuple its claim
        took, not a Timeout; nothing is left in the space.
        """
        sim = ClusterSimulation(0, incident()).run()
        texts = [text for _, text, _ in sim.trace]
        self.assertIn("m3 paused for 1.40 s (holding answers not yet safe)", texts)
        self.assertIn("m2 paused for 1.00 s (syncing)", texts)
        self.assertTrue(any(t.startswith("m3 resumes, its clock 1.40 s behind") for t in texts))
        consumers = [op for op in sim.ops.values() if op.kind is Kind.IN]
        self.assertEqual(len(consumers), 2)
        for op in consumers:
            self.assertEqual(op.sends[0], (3, 1.0, "serving"))
            self.assertIn((1, 0.0, "syncing"), op.sends)
            self.assertEqual(op.outcome, "matched")
        self.assertEqual({op.value for op in consumers}, {("ks", 3, 1), ("ks", 3, 2)})
        self.assertEqual(len(sim.servers[1].replica.space), 0)

    def test_checker_catches_a_planted_loss(self) -> None:
        """
        A server core that answers TimedOut for a take whose claim won is caught: the
        failure names the lost tuple, the seed and the replay command, and traces the
        take from its call to its answer.
        """
        original = MessageServer.completed

        def lossy(self: MessageServer, c: Answer) -> None:
            if isinstance(c, Completion) and c.status is Status.MATCHED:
                c = Completion(c.pid, c.event, Status.TIMED_OUT)
            original(self, c)

        self.patch(MessageServer, "completed", lossy)
        e = self.assertRaises(InvariantViolation, ClusterSimulation(0, incident()).run)
        text = str(e)
        self.assertIn("lost tuple: IN (1, 1) (timeout 1.00 s) ended in Timeout", text)
        self.assertIn("but the space's log says it took ('ks', 3, ", text)
        self.assertIn("replay: lips sim --served --seed 0", text)
        self.assertIn("trace of", text)
        self.assertIn("c1 calls IN (1, 1) (timeout 1.00 s)", text)

    def test_checker_catches_a_claim_that_keeps_its_tuple(self) -> None:
        """A claim that reads instead of taking is caught: the tuple is still there."""
        original = TupleSpace.claim

        def reading(
            self: TupleSpace, pid: int, event: int, kind: Kind, seq: int
        ) -> Completion | None:
            return original(self, pid, event, Kind.RD if kind is Kind.IN else kind, seq)

        self.patch(TupleSpace, "claim", reading)
        e = self.assertRaises(InvariantViolation, ClusterSimulation(0, incident()).run)
        self.assertIn("which the space still holds", str(e))

    def test_deterministic(self) -> None:
        """The same seed runs the same way, event for event."""
        first = ClusterSimulation(2).run()
        again = ClusterSimulation(2).run()
        self.assertEqual(first.trace, again.trace)
        self.assertEqual(first.steps, again.steps)

    def test_exports(self) -> None:
        """Every name in the module's __all__ is defined there."""
        for name in clustersim.__all__:
            self.assertTrue(hasattr(clustersim, name), name)


class CommandLineTests(SynchronousTestCase):
    def tearDown(self) -> None:
        self.flushLoggedErrors()

    def _main(self, *words: str) -> tuple[int, str]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            status = cli.main(["sim", "--served", *words])
        return status, out.getvalue()

    def test_seeds(self) -> None:
        """C{lips sim --served} runs seeds and sums them up, mix by mix."""
        status, out = self._main("--seeds", "1", "--start", "2")
        self.assertEqual(status, 0)
        self.assertIn("served cluster seeds 2..2: 1 passed, 0 failed", out)
        self.assertIn(ClusterSimulation(2).cluster.mix, out)

    def test_one_seed(self) -> None:
        """C{lips sim --served --seed N} replays one seed and says what happened."""
        status, out = self._main("--seed", "2")
        self.assertEqual(status, 0)
        self.assertIn("seed 2: ClusterScenario(", out)
        self.assertIn("operations:", out)

    def test_failure(self) -> None:
        """A failing seed is reported with its replay command, and the status is 1."""
        self.patch(ClusterSimulation, "_check_served", lambda self: self._fail("planted"))
        status, out = self._main("--seeds", "1", "--start", "2")
        self.assertEqual(status, 1)
        self.assertIn("seed 2 failed: seed 2 at t=", out)
        self.assertIn("replay: lips sim --served --seed 2", out)
        self.assertIn("served cluster seeds 2..2: 0 passed, 1 failed", out)
