"""
Tests for L{lips.replica.Replica}: the tuple space replicated through the ring.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from lips.replica import Replica
from lips.replica._replica import decode, encode_claim, encode_out
from lips.ring import RingId
from lips.server import Operation
from lips.space import Completion, Kind, Status, TupleSpace
from lips.testing.ringsim import InvariantViolation, ReplicatedSimulation
from lips.tuples import make_template, packb

SEEDS = int(os.environ.get("LIPS_REPLICA_SEEDS", "60"))
R = RingId(8, 1)


class ReplicaTests(SynchronousTestCase):
    """One replica, its ring played by the test."""

    def setUp(self) -> None:
        self.sent: list[bytes] = []
        self.answers: list[Completion] = []
        self.replica = Replica(1, self.broadcast)
        self.replica.on_complete = self.answers.append
        self.accept = True
        self.seq = 0

    def broadcast(self, payload: bytes) -> bool:
        if self.accept:
            self.sent.append(payload)
        return self.accept

    def deliver_all(self) -> None:
        sent, self.sent = self.sent, []
        for payload in sent:
            self.seq += 1
            self.replica.delivered(R, self.seq, payload)

    def test_out_answered_when_safe(self) -> None:
        """An out is applied at delivery but answered only once it is safe."""
        self.replica.submit(Operation(Kind.OUT, 5, 1, ("job", 1)))
        self.deliver_all()
        self.assertEqual(len(self.replica.space), 1)
        self.assertEqual(self.answers, [])
        self.replica.safe(R, 1)
        self.assertEqual(self.answers, [Completion(5, 1, Status.STORED)])

    def test_inp_without_match_never_travels(self) -> None:
        """inp with no local match answers NO_MATCH at once and sends nothing."""
        self.replica.submit(Operation(Kind.INP, 5, 1, make_template(("job", int))))
        self.assertEqual(self.sent, [])
        self.assertEqual(self.answers, [Completion(5, 1, Status.NO_MATCH)])

    def test_waiting_in_claims_a_new_tuple(self) -> None:
        """An in waits locally, claims the next matching tuple, and gets it when safe."""
        self.replica.submit(Operation(Kind.IN, 5, 1, make_template(("job", int))))
        self.assertEqual(self.answers, [Completion(5, 1, Status.PENDING)])
        self.replica.submit(Operation(Kind.OUT, 6, 1, ("job", 7)))
        self.deliver_all()  # the out; the waiter claims it
        self.deliver_all()  # the claim
        self.replica.safe(R, self.seq)
        self.assertIn(Completion(5, 1, Status.MATCHED, ("job", 7)), self.answers)
        self.assertEqual(len(self.replica.space), 0)

    def test_lost_claim_matches_again(self) -> None:
        """When another server's claim takes the tuple first, the origin matches again."""
        space = self.replica.space
        space.out(9, 1, ("job", 1))
        space.out(9, 2, ("job", 2))
        self.replica.submit(Operation(Kind.IN, 5, 1, make_template(("job", int))))
        [mine] = self.sent
        self.sent = []
        # Another server's claim of tuple 1 is ordered before this one.
        self.replica.delivered(R, 1, encode_claim(7, 1, Kind.IN, 1, 2))
        self.replica.delivered(R, 2, mine)  # loses, and claims tuple 2 instead
        self.assertEqual(decode(self.sent[0])[4], 2)
        self.deliver_all()
        self.replica.safe(R, self.seq)
        self.assertIn(Completion(5, 1, Status.MATCHED, ("job", 2)), self.answers)

    def test_retry_answered_from_the_log(self) -> None:
        """A retried operation already answered gets its first answer, nothing travels."""
        self.replica.submit(Operation(Kind.OUT, 5, 1, ("job", 1)))
        self.deliver_all()
        self.replica.safe(R, 1)
        self.replica.submit(Operation(Kind.OUT, 5, 1, ("job", 1)))
        self.assertEqual(self.sent, [])
        self.assertEqual(self.answers, [Completion(5, 1, Status.STORED)] * 2)

    def test_back_pressure(self) -> None:
        """When the ring's queue is full the operation is refused BUSY, not lost."""
        self.accept = False
        self.replica.submit(Operation(Kind.OUT, 5, 1, ("job", 1)))
        self.assertEqual(self.answers, [Completion(5, 1, Status.BUSY)])
        self.assertEqual(self.replica.space.answered(5, 1), None)

    def test_withdraw(self) -> None:
        """A waiting in withdrawn (timeout, cancel) is answered CANCELLED."""
        self.replica.submit(Operation(Kind.IN, 5, 1, make_template(("job", int))))
        self.replica.withdraw(5, 1)
        self.assertEqual(self.answers[-1], Completion(5, 1, Status.CANCELLED))
        self.assertEqual(self.replica.gauges()["waiting"], 0)

    def test_malformed_payloads_skipped_alike(self) -> None:
        """Payloads that are not replica operations are counted and skipped."""
        for payload in (
            b"\xc1",
            packb([9, 1, 1]),
            packb([1, 1, 1, ()]),
            packb([2, 1, 1, 1, 1, 1]),
        ):
            self.replica.delivered(R, 1, payload)
        self.assertEqual(self.replica.malformed, 4)
        self.assertEqual(self.replica.space.digest(), TupleSpace().digest())
        self.assertEqual(decode(encode_out(1, 2, ("x",))), ("out", 1, 2, ("x",)))


class ReplicatedSimulationTests(SynchronousTestCase):
    def test_seeds(self) -> None:
        """
        Seeded runs of three to five replicas with message loss, duplication and
        reordering: equal digests, no tuple taken twice, no answered out lost.
        """
        for seed in range(SEEDS):
            ReplicatedSimulation(seed, nodes=3 + seed % 3, loss=(0.0, 0.02, 0.1)[seed % 3]).run()

    def test_checker_catches_double_take(self) -> None:
        """A claim that does not remove its tuple is caught as a double take."""
        original = TupleSpace.claim

        def leaky(
            self: TupleSpace, pid: int, event: int, kind: Kind, seq: int
        ) -> Completion | None:
            return original(self, pid, event, Kind.RD if kind is Kind.IN else kind, seq)

        self.patch(TupleSpace, "claim", leaky)
        caught = 0
        for seed in range(10):
            try:
                ReplicatedSimulation(seed).run()
            except InvariantViolation:
                caught += 1
        self.assertGreater(caught, 0)
