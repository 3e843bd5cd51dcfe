"""
Tests for L{lips.replica.Replica}: the tuple space replicated through the ring.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator

from twisted.trial.unittest import SynchronousTestCase

from lips.replica import Mode, Replica, ReplicaPayloadError
from lips.replica import _replica as replica_module
from lips.replica._replica import (
    _Status,
    decode,
    encode_claim,
    encode_out,
    encode_snapshot,
    encode_status,
)
from lips.ring import RingId
from lips.server import Operation
from lips.space import Completion, Kind, Status, TupleSpace
from lips.testing.ringsim import InvariantViolation, ReplicatedSimulation
from lips.tuples import make_template, packb

SEEDS = int(os.environ.get("LIPS_REPLICA_SEEDS", "60"))
R = RingId(8, 1)


class _OneReplica(SynchronousTestCase):
    """One replica, its ring played by the test."""

    def setUp(self) -> None:
        self.sent: list[bytes] = []
        self.answers: list[Completion] = []
        self.replica = Replica(1, self.broadcast, [1])
        self.replica.on_complete = self.answers.append
        self.accept = True
        self.seq = 0
        # A one-server ring: its status decides a cold start, and it serves.
        self.replica.configuration(R, (1,), transitional=False)
        self.deliver_all()
        self.assertIs(self.replica.mode, Mode.SERVING)

    def broadcast(self, payload: bytes) -> bool:
        if self.accept:
            self.sent.append(payload)
        return self.accept

    def deliver_all(self) -> None:
        sent, self.sent = self.sent, []
        for payload in sent:
            self.seq += 1
            self.replica.delivered(R, self.seq, payload, origin=1)


class ReplicaTests(_OneReplica):
    """One replica, its ring played by the test."""

    def test_out_answered_when_safe(self) -> None:
        """An out is applied at delivery but answered only once it is safe."""
        self.replica.submit(Operation(Kind.OUT, 5, 1, ("job", 1)))
        self.deliver_all()
        self.assertEqual(len(self.replica.space), 1)
        self.assertEqual(self.answers, [])
        self.replica.safe(R, self.seq)
        self.assertEqual(self.answers, [Completion(5, 1, Status.STORED)])

    def test_inp_without_match_is_decided_in_the_order(self) -> None:
        """
        An inp with no local match is answered NO_MATCH only once that is decided in
        the order and safe: a claim of the same event already on its way (from a
        server its client left) would win over it.
        """
        self.replica.submit(Operation(Kind.INP, 5, 1, make_template(("job", int))))
        self.assertEqual(decode(self.sent[-1]), ("withdraw", 5, 1, Status.NO_MATCH))
        self.assertEqual(self.answers, [])
        self.deliver_all()
        self.replica.safe(R, self.seq)
        self.assertEqual(self.answers, [Completion(5, 1, Status.NO_MATCH)])

    def test_claim_from_elsewhere_beats_a_later_none(self) -> None:
        """
        The loss the served simulator found: an inp finds nothing here, while a tuple
        stored elsewhere is already claimed for the same event by the server its client
        left (ordered, but not yet delivered here).  The claim comes first in the
        order, so the answer is the tuple, never "none" with the tuple gone.
        """
        self.replica.submit(Operation(Kind.INP, 5, 1, make_template(("job", int))))
        for payload in (encode_out(6, 1, ("job", 1)), encode_claim(5, 1, Kind.INP, 1, 2)):
            self.seq += 1
            self.replica.delivered(R, self.seq, payload, origin=2)
        self.deliver_all()  # this server's "none" comes after them
        self.replica.safe(R, self.seq)
        self.assertEqual(self.answers, [Completion(5, 1, Status.MATCHED, ("job", 1))])
        self.assertEqual(len(self.replica.space), 0)

    def test_retry_while_the_claim_is_in_flight(self) -> None:
        """A request sent again while its claim is in flight here waits for that claim."""
        self.replica.space.out(6, 1, ("job", 1))
        self.replica.submit(Operation(Kind.INP, 5, 1, make_template(("job", int))))
        self.replica.submit(Operation(Kind.INP, 5, 1, make_template(("job", int))))
        self.assertEqual([decode(p)[0] for p in self.sent], ["claim"])
        self.deliver_all()
        self.replica.safe(R, self.seq)
        self.assertEqual(self.answers, [Completion(5, 1, Status.MATCHED, ("job", 1))])

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
        self.replica.delivered(R, 1, encode_claim(7, 1, Kind.IN, 1, 2), origin=2)
        self.replica.delivered(R, 2, mine, origin=1)  # loses, and claims tuple 2 instead
        self.assertEqual(decode(self.sent[0])[4], 2)
        self.deliver_all()
        self.replica.safe(R, self.seq)
        self.assertIn(Completion(5, 1, Status.MATCHED, ("job", 2)), self.answers)

    def test_no_two_claims_on_one_tuple(self) -> None:
        """Two waiting ins of this server claim two different tuples, not the oldest twice."""
        space = self.replica.space
        space.out(9, 1, ("job", 1))
        space.out(9, 2, ("job", 2))
        self.replica.submit(Operation(Kind.IN, 5, 1, make_template(("job", int))))
        self.replica.submit(Operation(Kind.IN, 6, 1, make_template(("job", int))))
        self.assertEqual([decode(p)[4] for p in self.sent], [1, 2])
        self.deliver_all()
        self.replica.safe(R, self.seq)
        self.assertEqual(self.replica.counters["claims.lost"], 0)
        self.assertEqual(len(self.replica.space), 0)

    def test_other_servers_tuple_waits_until_safe(self) -> None:
        """
        A tuple another server just stored is left to that server's waiters: an in
        waiting here claims it only once the out is safe here.
        """
        self.replica.submit(Operation(Kind.IN, 5, 1, make_template(("job", int))))
        self.seq += 1
        self.replica.delivered(R, self.seq, encode_out(7, 1, ("job", 1)), origin=2)
        self.assertEqual(self.sent, [])  # not yet: server 2's waiters go first
        self.replica.safe(R, self.seq)
        self.assertEqual(decode(self.sent[0])[:5], ("claim", 5, 1, Kind.IN, 1))

    def test_other_servers_tuple_taken_if_still_there(self) -> None:
        """An inp takes another server's fresh tuple rather than answer "none"."""
        self.seq += 1
        self.replica.delivered(R, self.seq, encode_out(7, 1, ("job", 1)), origin=2)
        self.replica.submit(Operation(Kind.INP, 5, 1, make_template(("job", int))))
        self.assertEqual(decode(self.sent[0])[:5], ("claim", 5, 1, Kind.INP, 1))

    def test_stale_claim_of_a_request_is_not_its_current_one(self) -> None:
        """
        A claim sent before a configuration change that arrives after the request
        claimed again does not count as the current claim losing.
        """
        space = self.replica.space
        space.out(9, 1, ("job", 1))
        self.replica.submit(Operation(Kind.INP, 5, 1, make_template(("job", int))))
        [old] = self.sent
        self.sent = []
        # The request claims again (as after a configuration change) tuple 2.
        space.out(9, 2, ("job", 2))
        self.replica._claiming[(5, 1)] = (self.replica._claiming[(5, 1)][0], 2)
        self.replica.delivered(R, 90, encode_claim(8, 1, Kind.IN, 1, 2), origin=2)
        self.replica.delivered(R, 91, old, origin=1)  # the old claim loses tuple 1
        self.assertEqual(self.replica.counters["claims.lost"], 0)
        self.assertNotIn(Completion(5, 1, Status.NO_MATCH), self.answers)

    def test_retry_answered_from_the_log(self) -> None:
        """A retried operation already answered gets its first answer, nothing travels."""
        self.replica.submit(Operation(Kind.OUT, 5, 1, ("job", 1)))
        self.deliver_all()
        self.replica.safe(R, self.seq)
        self.replica.submit(Operation(Kind.OUT, 5, 1, ("job", 1)))
        self.assertEqual(self.sent, [])
        self.assertEqual(self.answers, [Completion(5, 1, Status.STORED)] * 2)

    def test_back_pressure(self) -> None:
        """When the ring's queue is full the operation is refused BUSY, not lost."""
        self.accept = False
        self.replica.submit(Operation(Kind.OUT, 5, 1, ("job", 1)))
        self.assertEqual(self.answers, [Completion(5, 1, Status.BUSY)])
        self.assertEqual(self.replica.space.answered(5, 1), None)

    def test_malformed_payloads_skipped_alike(self) -> None:
        """Payloads that are not replica operations are counted and skipped."""
        for payload in (
            b"\xc1",
            packb([9, 1, 1]),
            packb([1, 1, 1, ()]),
            packb([2, 1, 1, 1, 1, 1]),
        ):
            self.replica.delivered(R, 1, payload)
        self.assertEqual(self.replica.counters["malformed"], 4)
        self.assertEqual(self.replica.space.digest(), TupleSpace().digest())
        self.assertEqual(decode(encode_out(1, 2, ("x",))), ("out", 1, 2, ("x",)))


class _Ring:
    """A played ring: every broadcast of a member is delivered to every member, in order."""

    def __init__(self, configured: tuple[int, ...]) -> None:
        self.configured = configured
        self.replicas: dict[int, Replica] = {}
        self.answers: dict[int, list[Completion]] = {}
        self.queue: list[tuple[int, bytes]] = []
        self.ring = R
        self.members: tuple[int, ...] = ()
        self.seq = 0

    def start(self, node: int) -> Replica:
        replica = Replica(node, lambda payload: self._submit(node, payload), self.configured)
        self.answers[node] = []
        replica.on_complete = self.answers[node].append
        self.replicas[node] = replica
        return replica

    def _submit(self, node: int, payload: bytes) -> bool:
        self.queue.append((node, payload))
        return True

    def install(self, members: tuple[int, ...]) -> None:
        self.ring = RingId(self.ring.seq + 4, min(members))
        self.members = members
        self.seq = 0
        for m in members:
            self.replicas[m].configuration(self.ring, members, transitional=True)
            self.replicas[m].configuration(self.ring, members, transitional=False)
        self.run()

    def run(self, safe: bool = True) -> None:
        """Deliver what was broadcast, in order; then, if C{safe}, report it safe."""
        while self.queue:
            node, payload = self.queue.pop(0)
            if node not in self.members:
                continue
            self.seq += 1
            for m in self.members:
                self.replicas[m].delivered(self.ring, self.seq, payload, origin=node)
        if safe:
            for m in self.members:
                self.replicas[m].safe(self.ring, self.seq)

    def configure(self, members: tuple[int, ...]) -> None:
        """Install a new configuration and stop before its statuses are delivered."""
        self.ring = RingId(self.ring.seq + 4, min(members))
        self.members = members
        self.seq = 0
        for m in members:
            self.replicas[m].configuration(self.ring, members, transitional=False)


class MembershipTests(SynchronousTestCase):
    """The primary component and state transfer, with the ring played by the test."""

    def cluster(self, n: int = 3) -> _Ring:
        ring = _Ring(tuple(range(1, n + 1)))
        for node in ring.configured:
            ring.start(node)
        ring.install(ring.configured)
        return ring

    def test_cold_start_with_everyone(self) -> None:
        """With every configured server present and none holding a state, all serve."""
        ring = self.cluster()
        self.assertEqual({r.mode for r in ring.replicas.values()}, {Mode.SERVING})
        self.assertEqual(ring.replicas[1].counters["cold_starts"], 1)

    def test_no_cold_start_without_everyone(self) -> None:
        """A majority of servers with no state does not start empty: one may be away."""
        ring = _Ring((1, 2, 3))
        for node in (1, 2):
            ring.start(node)
        ring.install((1, 2))
        self.assertEqual({r.mode for r in ring.replicas.values()}, {Mode.UNAVAILABLE})

    def test_requests_wait_for_the_decision(self) -> None:
        """Requests made before the configuration is decided are served after it."""
        ring = _Ring((1, 2))
        r1 = ring.start(1)
        ring.start(2)
        r1.submit(Operation(Kind.OUT, 5, 1, ("job", 1)))
        self.assertEqual(ring.answers[1], [])
        self.assertEqual(r1.gauges()["queued"], 1)
        ring.install((1, 2))
        ring.run()
        self.assertEqual(ring.answers[1], [Completion(5, 1, Status.STORED)])

    def test_restarted_server_receives_the_state(self) -> None:
        """A restarted server restores the source's snapshot: equal digests."""
        ring = self.cluster()
        r1 = ring.replicas[1]
        for i in range(20):
            r1.submit(Operation(Kind.OUT, 5, i + 1, ("job", i)))
        ring.run()
        r1.submit(Operation(Kind.IN, 6, 1, make_template(("job", int))))
        ring.run()
        ring.run()
        fresh = ring.start(3)  # server 3 crashed and came back empty
        ring.install((1, 2, 3))
        ring.run()
        self.assertIs(fresh.mode, Mode.SERVING)
        self.assertEqual(fresh.counters["snapshots.restored"], 1)
        self.assertEqual(r1.counters["snapshots.sent"], 1)
        self.assertEqual(fresh.space.digest(), r1.space.digest())
        self.assertEqual(len(fresh.space), 19)
        # The retried take, at the restarted server, gets its first answer.
        fresh.submit(Operation(Kind.IN, 6, 1, make_template(("job", int))))
        self.assertEqual(ring.answers[3], [Completion(6, 1, Status.MATCHED, ("job", 0))])

    def test_restore_in_steps(self) -> None:
        """
        A snapshot is restored a step at a time by the replica's background runner;
        the replica serves once the last step is done, not before.
        """
        ring = self.cluster()
        r1 = ring.replicas[1]
        for i in range(2500):
            r1.space.out(5, i + 1, ("job", i))
        fresh = ring.start(3)
        steps: list[Iterator[None]] = []
        fresh.background = steps.append
        ring.install((1, 2, 3))
        ring.run()
        [work] = steps
        self.assertIs(fresh.mode, Mode.SYNCING)
        next(work)  # one chunk: not yet done
        self.assertIs(fresh.mode, Mode.SYNCING)
        for _ in work:
            pass
        self.assertIs(fresh.mode, Mode.SERVING)
        self.assertEqual(len(fresh.space), 2500)

    def test_restore_outlived_by_its_configuration(self) -> None:
        """A restore still running when the configuration changes is dropped."""
        ring = self.cluster()
        fresh = ring.start(3)
        steps: list[Iterator[None]] = []
        fresh.background = steps.append
        ring.install((1, 2, 3))
        ring.run()
        ring.install((1, 2, 3))  # a new configuration before the restore ran
        for _ in steps[0]:
            pass
        self.assertEqual(fresh.counters["snapshots.restored"], 0)
        self.assertEqual(len(steps), 2)  # the new configuration transfers again

    def test_minority_is_unavailable(self) -> None:
        """A minority answers UNAVAILABLE; the majority goes on without a transfer."""
        ring = self.cluster()
        ring.install((1, 2))
        r3 = ring.replicas[3]
        ring.members = (3,)  # the minority's own ring, played separately
        r3.configuration(RingId(99, 3), (3,), transitional=False)
        ring.ring = RingId(99, 3)
        ring.run()
        self.assertIs(r3.mode, Mode.UNAVAILABLE)
        r3.submit(Operation(Kind.OUT, 5, 1, ("job", 1)))
        self.assertEqual(ring.answers[3], [Completion(5, 1, Status.UNAVAILABLE)])
        self.assertEqual(len(r3.space), 0)
        self.assertEqual(ring.replicas[1].counters["snapshots.sent"], 0)

    def test_stale_member_is_brought_up_to_date(self) -> None:
        """A member back from a minority holds an old state: it receives the new one."""
        ring = self.cluster()
        ring.install((1, 2))
        ring.replicas[1].submit(Operation(Kind.OUT, 5, 1, ("job", 1)))
        ring.run()
        ring.install((1, 2, 3))
        ring.run()
        r3 = ring.replicas[3]
        self.assertEqual(r3.counters["snapshots.restored"], 1)
        self.assertEqual(r3.space.digest(), ring.replicas[1].space.digest())

    def test_stale_and_empty_majority_is_no_primary(self) -> None:
        """
        A server behind the times and a restarted empty one are a majority of members
        but not of state holders: they do not serve, and when the server with the newest
        state is back, its state wins.
        """
        ring = self.cluster()
        ring.install((2, 3))  # server 1 is cut off
        ring.replicas[2].submit(Operation(Kind.OUT, 5, 1, ("job", 1)))
        ring.run()
        self.assertEqual(ring.answers[2], [Completion(5, 1, Status.STORED)])
        ring.start(3)  # server 3 crashed and came back empty; server 2 is cut off now
        ring.install((1, 3))
        self.assertEqual({ring.replicas[n].mode for n in (1, 3)}, {Mode.UNAVAILABLE})
        ring.install((1, 2, 3))
        ring.run()
        for n in (1, 2, 3):
            self.assertEqual(list(ring.replicas[n].space.tuples()), [("job", 1)])

    def test_half_with_the_lowest_id_is_primary(self) -> None:
        """Of two halves, the one holding the lowest configured id serves."""
        ring = self.cluster(4)
        ring.install((3, 4))
        self.assertEqual({ring.replicas[n].mode for n in (3, 4)}, {Mode.UNAVAILABLE})
        ring.install((1, 2))
        self.assertEqual({ring.replicas[n].mode for n in (1, 2)}, {Mode.SERVING})

    def test_in_flight_request_sent_again(self) -> None:
        """A request lost with its ring is sent again once the next one serves."""
        ring = self.cluster()
        r1 = ring.replicas[1]
        r1.submit(Operation(Kind.OUT, 5, 1, ("job", 1)))
        ring.queue.clear()  # the ring broke before anyone received it
        ring.install((1, 2))
        ring.run()
        self.assertEqual(ring.answers[1], [Completion(5, 1, Status.STORED)])
        self.assertEqual(len(ring.replicas[2].space), 1)

    def test_status_codec(self) -> None:
        """Statuses and snapshots round-trip; malformed ones are refused."""
        status = decode(encode_status(R, _Status(2, True, RingId(4, 1), 7, b"f" * 16)))
        self.assertEqual(status, ("status", R, _Status(2, True, RingId(4, 1), 7, b"f" * 16)))
        snap = decode(encode_snapshot(R, 2, 7, b"f", b"blob"))
        self.assertEqual(snap, ("snapshot", R, 2, 7, b"f", b"blob"))
        for bad in (
            packb([3, 1, 2, 3, 1, 4, 1, 7, b""]),  # has_state not a bool
            packb([4, 1, 2, 3, 4, "f", b""]),
            packb([3, 1]),
        ):
            self.assertRaises(ReplicaPayloadError, decode, bad)


class ReplicatedSimulationTests(SynchronousTestCase):
    def test_seeds(self) -> None:
        """
        Seeded runs of three to five replicas with message loss, duplication,
        reordering, crashes with restarts and partitions: equal digests, no tuple taken
        twice, no answered operation lost, every out and inp answered.
        """
        for seed in range(SEEDS):
            ReplicatedSimulation.random(seed).run()

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

    def test_checker_catches_a_lost_checkpoint(self) -> None:
        """A state transfer that drops the checkpoints is caught."""
        original = TupleSpace.restoring

        def forgetful(
            cls: type[TupleSpace], data: bytes, *args: object
        ) -> Generator[None, None, TupleSpace]:
            space = yield from original(data)
            space._checkpoints.clear()
            return space

        self.patch(TupleSpace, "restoring", classmethod(forgetful))
        caught = 0
        for seed in range(60):
            try:
                ReplicatedSimulation.random(seed).run()
            except InvariantViolation:
                caught += 1
        self.assertGreater(caught, 0)

    def test_checker_catches_a_failed_transfer(self) -> None:
        """A state transfer that restores nothing is caught."""
        original = TupleSpace.restoring

        def empty(
            cls: type[TupleSpace], data: bytes, *args: object
        ) -> Generator[None, None, TupleSpace]:
            yield from original(data)
            return TupleSpace()

        self.patch(TupleSpace, "restoring", classmethod(empty))
        caught = 0
        for seed in range(30):
            try:
                ReplicatedSimulation.random(seed).run()
            except InvariantViolation:
                caught += 1
        self.assertGreater(caught, 0)


JOB = make_template(("job", int))


class WithdrawalTests(_OneReplica):
    """
    Timeouts and cancels of one replica's requests: decided in the total order, so a
    request that took a tuple is never answered as timed out.
    """

    def test_timeout_is_decided_in_the_order(self) -> None:
        """
        A waiting in that times out sends a WITHDRAW; once it is applied and safe the
        answer is TIMED_OUT, which the log keeps: a retry gets it again and a tuple
        stored afterwards is not taken by it.
        """
        self.replica.submit(Operation(Kind.IN, 5, 1, JOB))
        self.assertEqual(self.answers, [Completion(5, 1, Status.PENDING)])
        self.replica.withdraw(5, 1, Status.TIMED_OUT)
        self.assertEqual(decode(self.sent[-1]), ("withdraw", 5, 1, Status.TIMED_OUT))
        self.assertEqual(self.replica.gauges()["withdrawing"], 1)
        self.deliver_all()
        self.assertEqual(len(self.answers), 1)  # not before it is safe
        self.replica.safe(R, self.seq)
        self.assertEqual(self.answers[-1], Completion(5, 1, Status.TIMED_OUT))
        self.replica.submit(Operation(Kind.OUT, 6, 1, ("job", 1)))
        self.deliver_all()
        self.replica.safe(R, self.seq)
        self.replica.submit(Operation(Kind.IN, 5, 1, JOB))
        self.assertEqual(self.answers[-1], Completion(5, 1, Status.TIMED_OUT))
        self.assertEqual(len(self.replica.space), 1)
        self.assertEqual(self.replica.gauges()["withdrawing"], 0)

    def test_claim_sent_before_the_timeout_wins(self) -> None:
        """A claim already on its way when the timeout comes is applied first: the tuple."""
        self.replica.space.out(6, 1, ("job", 1))
        self.replica.submit(Operation(Kind.IN, 5, 1, JOB))
        self.replica.withdraw(5, 1, Status.TIMED_OUT)
        self.assertEqual([decode(p)[0] for p in self.sent], ["claim", "withdraw"])
        self.deliver_all()
        self.replica.safe(R, self.seq)
        self.assertEqual(self.answers, [Completion(5, 1, Status.MATCHED, ("job", 1))])
        self.assertEqual(len(self.replica.space), 0)

    def test_claim_after_the_timeout_takes_nothing(self) -> None:
        """
        A claim of the same event from elsewhere (a copy of the request at a server the
        client left) that is ordered after the timeout takes nothing: the tuple stays.
        """
        self.replica.space.out(6, 1, ("job", 1))
        self.replica.withdraw(5, 1, Status.TIMED_OUT)  # a retry whose time is up
        self.deliver_all()
        self.seq += 1
        self.replica.delivered(R, self.seq, encode_claim(5, 1, Kind.IN, 1, 2), origin=2)
        self.replica.safe(R, self.seq)
        self.assertEqual(self.answers, [Completion(5, 1, Status.TIMED_OUT)])
        self.assertEqual(len(self.replica.space), 1)

    def test_cancel_is_decided_like_a_timeout(self) -> None:
        """A client's cancel is ordered too and ends as WITHDRAWN."""
        self.replica.submit(Operation(Kind.RD, 5, 1, JOB))
        self.replica.withdraw(5, 1, Status.WITHDRAWN)
        self.deliver_all()
        self.replica.safe(R, self.seq)
        self.assertEqual(self.answers[-1], Completion(5, 1, Status.WITHDRAWN))

    def test_lost_connection_withdraws_without_deciding(self) -> None:
        """
        A lost connection stops the request waiting here; nothing travels, nothing is
        logged, and the same event sent again is applied afresh.
        """
        self.replica.submit(Operation(Kind.IN, 5, 1, JOB))
        self.replica.withdraw(5, 1, Status.CANCELLED)
        self.assertEqual((self.sent, self.replica.gauges()["waiting"]), ([], 0))
        self.replica.space.out(6, 1, ("job", 1))
        self.replica.submit(Operation(Kind.IN, 5, 1, JOB))
        self.deliver_all()
        self.replica.safe(R, self.seq)
        self.assertEqual(self.answers[-1], Completion(5, 1, Status.MATCHED, ("job", 1)))

    def test_withdrawal_refused_by_a_full_queue_is_sent_again(self) -> None:
        """A WITHDRAW the ring's full queue refuses is sent at the next safe, not dropped."""
        self.replica.submit(Operation(Kind.IN, 5, 1, JOB))
        self.accept = False
        self.replica.withdraw(5, 1, Status.TIMED_OUT)
        self.accept = True
        self.assertEqual(self.sent, [])
        self.replica.safe(R, self.seq)
        self.assertEqual(decode(self.sent[-1]), ("withdraw", 5, 1, Status.TIMED_OUT))
        self.deliver_all()
        self.replica.safe(R, self.seq)
        self.assertEqual(self.answers[-1], Completion(5, 1, Status.TIMED_OUT))

    def test_withdraw_after_the_answer_is_held_changes_nothing(self) -> None:
        """A timeout that comes once the request is applied (held until safe) is moot."""
        self.replica.space.out(6, 1, ("job", 1))
        self.replica.submit(Operation(Kind.IN, 5, 1, JOB))
        self.deliver_all()
        self.replica.withdraw(5, 1, Status.TIMED_OUT)
        self.assertEqual(self.sent, [])
        self.replica.safe(R, self.seq)
        self.assertEqual(self.answers, [Completion(5, 1, Status.MATCHED, ("job", 1))])

    def test_withdrawal_codec(self) -> None:
        """Only a timeout or a cancel is a withdrawal on the wire."""
        payload = packb([6, 5, 1, int(Status.MATCHED)])
        self.assertRaises(ReplicaPayloadError, decode, payload)
        self.assertEqual(decode(packb([6, 5, 1, 9])), ("withdraw", 5, 1, Status.WITHDRAWN))


class FailoverAnswerTests(SynchronousTestCase):
    """
    A request sent again to another server, after its first server went away, whatever
    that server is doing: answered from the log, never lost and never invented.
    """

    def setUp(self) -> None:
        self.ring = _Ring((1, 2, 3))
        for node in self.ring.configured:
            self.ring.start(node)
        self.ring.install((1, 2, 3))
        self.r1, self.r3 = self.ring.replicas[1], self.ring.replicas[3]
        self.r1.submit(Operation(Kind.OUT, 6, 1, ("job", 1)))
        self.ring.run()
        self.ring.answers[1].clear()

    def test_taken_then_timed_out_while_syncing(self) -> None:
        """
        The loss found under pauses: a take applied everywhere but held at server 3
        (not yet safe) when 3 stops; its client sends it again to server 1, still
        syncing, with no time left.  The timeout waits for the decision, finds the
        claim applied, and the answer is the tuple.
        """
        self.r3.submit(Operation(Kind.IN, 5, 1, JOB))
        self.ring.run(safe=False)
        self.assertEqual(self.ring.answers[3], [])
        self.assertEqual(len(self.r1.space), 0)
        self.ring.configure((1, 2))  # 3 is gone; the others sync
        self.r1.submit(Operation(Kind.IN, 5, 1, JOB))
        self.r1.withdraw(5, 1, Status.TIMED_OUT)
        self.assertEqual(self.ring.answers[1], [])
        self.ring.run()
        self.assertEqual(self.ring.answers[1], [Completion(5, 1, Status.MATCHED, ("job", 1))])

    def test_timed_out_while_syncing_with_no_answer(self) -> None:
        """A timeout that comes while syncing, for a request never applied, is TIMED_OUT."""
        self.ring.configure((1, 2, 3))
        self.r1.submit(Operation(Kind.IN, 5, 1, make_template(("other", int))))
        self.r1.withdraw(5, 1, Status.TIMED_OUT)
        self.ring.run()
        self.assertEqual(self.ring.answers[1], [Completion(5, 1, Status.TIMED_OUT)])
        self.assertEqual(self.ring.replicas[2].space.answered(5, 1), self.ring.answers[1][0])

    def test_safe_answer_given_while_syncing(self) -> None:
        """A retry whose answer is in the log and safe is answered at once while syncing."""
        self.r3.submit(Operation(Kind.IN, 5, 1, JOB))
        self.ring.run()
        self.ring.configure((1, 2))
        self.r1.submit(Operation(Kind.IN, 5, 1, JOB))
        self.assertEqual(self.ring.answers[1], [Completion(5, 1, Status.MATCHED, ("job", 1))])

    def test_unsafe_answer_waits_until_safe(self) -> None:
        """
        A retry of a take another server applied that is not yet safe here is answered
        only once it is: an answer not every server holds could be undone.
        """
        self.r3.submit(Operation(Kind.IN, 5, 1, JOB))
        self.ring.run(safe=False)
        self.r1.submit(Operation(Kind.IN, 5, 1, JOB))
        self.assertEqual(self.ring.answers[1], [])
        self.r1.safe(self.ring.ring, self.ring.seq)
        self.assertEqual(self.ring.answers[1], [Completion(5, 1, Status.MATCHED, ("job", 1))])

    def test_outside_the_primary(self) -> None:
        """
        Outside the primary a retry is answered from the log if its answer is safe, and
        UNAVAILABLE otherwise; a timeout there decides nothing.
        """
        self.r3.submit(Operation(Kind.IN, 5, 1, JOB))
        self.ring.run()
        self.ring.install((1, 2))
        r3 = self.r3
        self.ring.members = (3,)
        r3.configuration(RingId(99, 3), (3,), transitional=False)
        self.ring.ring = RingId(99, 3)
        self.ring.run()
        self.assertIs(r3.mode, Mode.UNAVAILABLE)
        answers = self.ring.answers[3]
        answers.clear()
        r3.submit(Operation(Kind.IN, 5, 1, JOB))
        r3.submit(Operation(Kind.IN, 5, 2, JOB))
        r3.withdraw(5, 2, Status.TIMED_OUT)
        self.assertEqual(
            answers,
            [Completion(5, 1, Status.MATCHED, ("job", 1)), Completion(5, 2, Status.UNAVAILABLE)],
        )

    def test_pending_withdrawal_answered_unavailable_when_outside(self) -> None:
        """A timeout waiting for the decision is answered UNAVAILABLE if none comes."""
        self.ring.configure((1,))
        self.r1.submit(Operation(Kind.IN, 5, 1, make_template(("other", int))))
        self.r1.withdraw(5, 1, Status.TIMED_OUT)
        self.ring.run()
        self.assertIs(self.r1.mode, Mode.UNAVAILABLE)
        self.assertEqual(self.ring.answers[1], [Completion(5, 1, Status.UNAVAILABLE)])

    def test_full_queue_while_syncing_is_busy(self) -> None:
        """
        While syncing, requests wait in a bounded queue; past its bound they are
        refused BUSY (never applied, so the client may retry), the others served.
        """
        self.patch(replica_module, "MAX_QUEUED", 2)
        self.ring.configure((1, 2, 3))
        for event in (1, 2, 3):
            self.r1.submit(Operation(Kind.OUT, 5, event, ("job", 10 + event)))
        self.assertEqual(self.ring.answers[1], [Completion(5, 3, Status.BUSY)])
        self.ring.run()
        self.assertEqual(
            self.ring.answers[1][1:],
            [Completion(5, 1, Status.STORED), Completion(5, 2, Status.STORED)],
        )
        self.assertIsNone(self.r1.space.answered(5, 3))


class GoodbyeTests(SynchronousTestCase):
    """A goodbye travels in the order: every replica forgets the process at one point."""

    def test_forget_is_replicated(self) -> None:
        """Every replica drops the process's log and checkpoint; the origin answers once safe."""
        ring = _Ring((1, 2))
        for node in (1, 2):
            ring.start(node)
        ring.install((1, 2))
        r1, r2 = ring.replicas[1], ring.replicas[2]
        r1.submit(Operation(Kind.CHECKPOINT, 5, 1, b"state"))
        ring.run()
        self.assertEqual(r2.space.recovered(5), (1, b"state"))
        ring.answers[1].clear()
        r1.submit(Operation(Kind.FORGET, 5, 2, b""))
        self.assertEqual(decode(ring.queue[-1][1]), ("forget", 5, 2, None))
        ring.run(safe=False)
        self.assertEqual(ring.answers[1], [])
        self.assertEqual([r.space.processes for r in (r1, r2)], [0, 0])
        self.assertEqual(r1.space.digest(), r2.space.digest())
        ring.run()
        self.assertEqual(ring.answers[1], [Completion(5, 2, Status.STORED)])

    def test_vanished_forget_is_decided_in_the_order(self) -> None:
        """
        A forget of a vanished process names the last event its server saw: every
        replica forgets it if it did nothing since, and none does if it went on
        (at another server) before the forget was ordered.
        """
        ring = _Ring((1, 2))
        for node in (1, 2):
            ring.start(node)
        ring.install((1, 2))
        r1, r2 = ring.replicas[1], ring.replicas[2]
        r1.submit(Operation(Kind.OUT, 5, 1, ("a",)))
        r1.submit(Operation(Kind.OUT, 6, 1, ("b",)))
        ring.run()
        r2.submit(Operation(Kind.OUT, 6, 2, ("c",)))  # process 6 went on, at server 2
        r1.submit(Operation(Kind.FORGET, 5, 0, packb(1)))
        r1.submit(Operation(Kind.FORGET, 6, 0, packb(1)))
        ring.run()
        for r in (r1, r2):
            self.assertIsNone(r.space.answered(5, 1))
            self.assertIsNotNone(r.space.answered(6, 1))
        self.assertEqual(r1.space.digest(), r2.space.digest())
