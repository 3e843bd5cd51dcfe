"""
Tests for the replica on the core contract: L{lips.replica.Replica} driven directly,
with explicit C{now} values, asserting on the effects it emits; and its Twisted host,
L{lips.protocols.ReplicaNode}, running it with a L{lips.kernel.Driver} on a
L{task.Clock}: answers reach C{on_complete}, a refused broadcast is answered BUSY, a
snapshot is restored a step at each turn of the injected clock, and nothing is left
scheduled after C{stop}.
"""

from __future__ import annotations

import attrs
from twisted.internet.task import Clock
from twisted.logger import LogLevel
from twisted.trial.unittest import SynchronousTestCase

from lips.kernel import CancelTimer, Deliver, Log, Send, StartTimer
from lips.protocols import ReplicaNode
from lips.replica import Mode, Replica, ReplicaTimer
from lips.replica._replica import (
    _Status,
    decode,
    encode_claim,
    encode_out,
    encode_snapshot,
    encode_status,
    encode_withdraw,
)
from lips.ring import NO_RING, RingConfig, RingId, Sealer
from lips.server import Answer, Operation, Refusal, Refused
from lips.space import Completion, Kind, Status, TupleSpace
from lips.tuples import make_template

R = RingId(8, 1)
JOB = make_template(("job", int))
FINGERPRINT = b"f" * 16


def status(node: int, has_state: bool = False, applied: int = 0) -> bytes:
    """Node C{node}'s status in ring C{R}."""
    fingerprint = FINGERPRINT if has_state else b""
    last = RingId(4, 1) if has_state else NO_RING
    return encode_status(R, _Status(node, has_state, last, applied, fingerprint))


def snapshot_of(tuples: int) -> bytes:
    """Node 2's snapshot, in ring C{R}, of a space of C{tuples} tuples."""
    space = TupleSpace()
    for i in range(tuples):
        space.out(5, i + 1, ("job", i))
    return encode_snapshot(R, 2, 7, FINGERPRINT, space.snapshot())


class ReplicaCoreTests(SynchronousTestCase):
    """The replica as a core: inputs with explicit times, effects drained."""

    def serving(self, node: int = 1) -> Replica:
        """A replica serving alone after a cold start, its effects drained."""
        replica = Replica(node, [node])
        replica.configuration(R, (node,), False, 1.0)
        [own] = replica.drain()
        assert isinstance(own, Send)
        replica.delivered(R, 1, own.message, node, 0, 1.0)
        replica.drain()
        self.assertIs(replica.mode, Mode.SERVING)
        return replica

    def syncing_behind(self) -> Replica:
        """Replica 1 of three, restarted empty: it waits for node 2's snapshot."""
        replica = Replica(1, [1, 2, 3])
        replica.configuration(R, (1, 2, 3), False, 1.0)
        for seq, payload in enumerate([status(1), status(2, True, 7), status(3, True, 7)], 1):
            replica.delivered(R, seq, payload, 1, 0, 1.0)
        replica.drain()
        self.assertIs(replica.mode, Mode.SYNCING)
        return replica

    def test_declares_its_effects(self) -> None:
        """The replica emits broadcasts, answers, its restore timer and log events."""
        self.assertEqual(Replica.emits, {Send, Deliver, StartTimer, CancelTimer, Log})

    def test_configuration_broadcasts_the_status(self) -> None:
        """A regular configuration: the member's status goes to the ring, nothing else."""
        replica = Replica(1, [1, 2])
        replica.configuration(R, (1, 2), True, 1.0)
        self.assertEqual(replica.drain(), [])  # a transitional one changes nothing
        replica.configuration(R, (1, 2), False, 1.0)
        self.assertEqual(replica.drain(), [Send(None, status(1))])

    def test_serving_is_logged(self) -> None:
        """Once every status is in, the decision is taken and the new mode logged."""
        replica = Replica(1, [1])
        replica.configuration(R, (1,), False, 1.0)
        replica.drain()
        replica.delivered(R, 1, status(1), 1, 0, 2.0)
        [log] = replica.drain()
        assert isinstance(log, Log)
        self.assertEqual(log.level, LogLevel.info)
        self.assertEqual(dict(log.fields)["mode"], "serving")
        self.assertEqual(replica.counters["cold_starts"], 1)

    def test_out_broadcast_then_answered_when_safe(self) -> None:
        """An out is a broadcast; its answer is delivered once it is safe, not before."""
        replica = self.serving()
        op = Operation(Kind.OUT, 5, 1, ("job", 1))
        replica.submit(op, 2.0)
        payload = encode_out(5, 1, ("job", 1))
        self.assertEqual(replica.drain(), [Send(None, payload)])
        replica.delivered(R, 2, payload, 1, 0, 2.1)
        self.assertEqual(replica.drain(), [])
        replica.safe(R, 2, 2.2)
        self.assertEqual(replica.drain(), [Deliver(Completion(5, 1, Status.STORED))])

    def test_waiting_in_is_pending(self) -> None:
        """An in with no match waits here: PENDING is delivered, nothing travels."""
        replica = self.serving()
        replica.submit(Operation(Kind.IN, 5, 1, JOB), 2.0)
        self.assertEqual(replica.drain(), [Deliver(Completion(5, 1, Status.PENDING))])

    def test_refused_out_is_busy(self) -> None:
        """
        An out the ring refuses is answered BUSY (never applied: the client may
        retry), and its retry is broadcast again.
        """
        replica = self.serving()
        op = Operation(Kind.OUT, 5, 1, ("job", 1))
        replica.submit(op, 2.0)
        [send] = replica.drain()
        assert isinstance(send, Send)
        replica.refused(send.message, 2.0)
        self.assertEqual(replica.drain(), [Deliver(Refused(5, 1, Refusal.BUSY))])
        self.assertEqual(replica.counters["refused"], 1)
        self.assertIsNone(replica.space.answered(5, 1))
        replica.submit(op, 3.0)
        self.assertEqual(replica.drain(), [send])

    def test_refused_claim_frees_its_tuple(self) -> None:
        """A claim the ring refuses is answered BUSY and leaves its tuple to others."""
        replica = self.serving()
        replica.space.out(9, 1, ("job", 1))
        replica.submit(Operation(Kind.IN, 5, 1, JOB), 2.0)
        claim = encode_claim(5, 1, Kind.IN, 1, 1)
        self.assertEqual(replica.drain(), [Send(None, claim)])
        replica.refused(claim, 2.0)
        self.assertEqual(replica.drain(), [Deliver(Refused(5, 1, Refusal.BUSY))])
        self.assertEqual(replica.gauges()["claiming"], 0)
        replica.submit(Operation(Kind.IN, 6, 1, JOB), 2.5)
        self.assertEqual(replica.drain(), [Send(None, encode_claim(6, 1, Kind.IN, 1, 1))])

    def test_refused_withdrawal_sent_at_the_next_safe(self) -> None:
        """A timeout the ring refuses is broadcast again at the next safe."""
        replica = self.serving()
        replica.submit(Operation(Kind.IN, 5, 1, JOB), 2.0)
        replica.drain()
        replica.withdraw(5, 1, Status.TIMED_OUT, 3.0)
        withdraw = encode_withdraw(5, 1, Status.TIMED_OUT)
        self.assertEqual(replica.drain(), [Send(None, withdraw)])
        replica.refused(withdraw, 3.0)
        self.assertEqual(replica.drain(), [])
        replica.safe(R, 1, 3.5)
        self.assertEqual(replica.drain(), [Send(None, withdraw)])

    def test_refused_status_is_counted(self) -> None:
        """A status the ring refuses is counted; the next configuration tries again."""
        replica = Replica(1, [1, 2])
        replica.configuration(R, (1, 2), False, 1.0)
        replica.refused(status(1), 1.0)
        self.assertEqual(replica.counters["refused"], 1)

    def test_refused_snapshot_sent_at_the_next_safe(self) -> None:
        """The source's snapshot, refused by the ring, goes out again at the next safe."""
        replica = Replica(2, [1, 2, 3])
        replica.configuration(R, (1, 2, 3), False, 1.0)
        replica.drain()
        replica.has_state, replica.fingerprint, replica.applied = True, FINGERPRINT, 7
        replica.last_primary = RingId(4, 1)
        for seq, payload in enumerate([status(1), status(2, True, 7), status(3, True, 7)], 1):
            replica.delivered(R, seq, payload, 1, 0, 1.0)
        [snapshot] = [e for e in replica.drain() if isinstance(e, Send)]
        self.assertEqual(decode(snapshot.message)[0], "snapshot")
        self.assertEqual(replica.counters["snapshots.sent"], 1)
        replica.refused(snapshot.message, 1.0)
        self.assertEqual(replica.counters["snapshots.sent"], 0)
        replica.safe(R, 3, 1.5)
        self.assertEqual([e for e in replica.drain() if isinstance(e, Send)], [snapshot])
        self.assertEqual(replica.counters["snapshots.sent"], 1)

    def test_refused_payload_of_another_kind(self) -> None:
        """A refused payload that is not the replica's is a host's mistake: it raises."""
        self.assertRaises(ValueError, self.serving().refused, b"\xc1", 1.0)

    def test_restore_one_step_per_timer(self) -> None:
        """
        A delivered snapshot starts the restore timer at the delivery's time; each
        firing restores one step and starts it again at that time; after the last the
        replica serves, and no timer is started.
        """
        replica = self.syncing_behind()
        replica.delivered(R, 4, snapshot_of(2500), 2, 0, 3.0)
        self.assertEqual(replica.drain(), [StartTimer(ReplicaTimer.RESTORE, 3.0)])
        replica.timer(ReplicaTimer.RESTORE, 3.5)
        self.assertEqual(replica.drain(), [StartTimer(ReplicaTimer.RESTORE, 3.5)])
        self.assertIs(replica.mode, Mode.SYNCING)
        replica.timer(ReplicaTimer.RESTORE, 4.0)
        self.assertEqual(replica.drain(), [StartTimer(ReplicaTimer.RESTORE, 4.0)])
        replica.timer(ReplicaTimer.RESTORE, 4.5)
        [log] = replica.drain()
        assert isinstance(log, Log)
        self.assertEqual(dict(log.fields)["mode"], "serving")
        self.assertIs(replica.mode, Mode.SERVING)
        self.assertEqual(len(replica.space), 2500)
        self.assertEqual(replica.counters["snapshots.restored"], 1)

    def test_bad_snapshot_is_counted(self) -> None:
        """A snapshot that does not restore is counted; the replica keeps waiting."""
        replica = self.syncing_behind()
        replica.delivered(R, 4, encode_snapshot(R, 2, 7, FINGERPRINT, b"\xc1"), 2, 0, 3.0)
        replica.drain()
        replica.timer(ReplicaTimer.RESTORE, 3.0)
        self.assertEqual(replica.drain(), [])
        self.assertEqual(replica.counters["snapshots.bad"], 1)
        self.assertIs(replica.mode, Mode.SYNCING)

    def test_new_configuration_cancels_the_restore(self) -> None:
        """A regular configuration during a restore cancels it: the new one decides."""
        replica = self.syncing_behind()
        replica.delivered(R, 4, snapshot_of(10), 2, 0, 3.0)
        replica.drain()
        ring = RingId(12, 1)
        replica.configuration(ring, (1, 2, 3), False, 3.1)
        own = encode_status(ring, _Status(1, False, R, 0, b""))  # R was primary
        self.assertEqual(replica.drain(), [CancelTimer(ReplicaTimer.RESTORE), Send(None, own)])
        replica.timer(ReplicaTimer.RESTORE, 3.2)  # fired anyway by a host with no table
        self.assertEqual(replica.drain(), [])
        self.assertEqual(replica.counters["snapshots.restored"], 0)

    def test_unknown_timer(self) -> None:
        """A timer key the replica never starts is a programming error."""
        self.assertRaises(ValueError, self.serving().timer, Mode.SERVING, 1.0)


class _Store:
    """The ring sequence number, in memory."""

    def __init__(self) -> None:
        self.seq = 0

    def load(self) -> int:
        return self.seq

    def save(self, seq: int) -> None:
        self.seq = seq


class _Transport:
    """A UDP port that writes nowhere (a ring of one needs no network)."""

    def write(self, packet: bytes, addr: object = None) -> None:
        pass


def peers(*nodes: int) -> dict[int, tuple[str, int]]:
    return {n: ("127.0.0.1", 7100 + n) for n in nodes}


class ReplicaNodeTests(SynchronousTestCase):
    """The replica hosted by L{ReplicaNode}'s driver on a fake clock."""

    def node(self, members: tuple[int, ...] = (1,), config: RingConfig | None = None) -> None:
        self.clock = Clock()
        self.answers: list[Answer] = []
        self.replica_node = ReplicaNode(
            node=1,
            peers=peers(*members),
            sealer=Sealer(b"k" * 32, 7),
            clock=self.clock,
            config=config if config is not None else RingConfig.loopback(),
            space=TupleSpace(),
            store=_Store(),
        )
        self.replica_node.on_complete = self.answers.append
        self.addCleanup(self.replica_node.stop)

    def advance(self, seconds: float, step: float = 0.01) -> None:
        for _ in range(round(seconds / step)):
            self.clock.advance(step)

    def feed_ring(self, *payloads: bytes) -> None:
        """Deliver C{payloads} to the replica in ring C{R}, as the ring would."""
        node = self.replica_node
        for seq, payload in enumerate(payloads, 1):
            node.driver.input(node.replica.delivered, R, seq, payload, 2, 0)

    def test_ring_of_one_answers(self) -> None:
        """
        A one-member ring forms on the clock, its replica starts cold and serves; an
        out's answer reaches C{on_complete} once it is safe; after C{stop} nothing is
        left scheduled.
        """
        self.node()
        node = self.replica_node
        node.protocol.transport = _Transport()  # type: ignore[assignment]
        node.protocol.startProtocol()
        self.advance(1.0)
        self.assertIs(node.replica.mode, Mode.SERVING)
        node.submit(Operation(Kind.OUT, 5, 1, ("job", 1)))
        node.submit(Operation(Kind.IN, 6, 1, JOB))
        self.advance(0.2)
        self.assertEqual(
            self.answers,
            [Completion(5, 1, Status.STORED), Completion(6, 1, Status.MATCHED, ("job", 1))],
        )
        self.assertEqual(node.gauges()["tuples"], 0)
        self.assertEqual(node.stats()["ring.replica.mode"], "serving")
        node.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_refused_broadcast_is_busy(self) -> None:
        """When the ring's queue is full, the request is answered BUSY at once."""
        self.node((1, 2), attrs.evolve(RingConfig.loopback(), max_queue=2))
        node = self.replica_node
        node.driver.input(node.replica.configuration, R, (1, 2), False)  # its status: queued
        self.feed_ring(status(1), status(2))  # a cold start
        self.assertIs(node.replica.mode, Mode.SERVING)
        node.submit(Operation(Kind.OUT, 5, 1, ("job", 1)))  # queued: the queue is full
        self.assertEqual(self.answers, [])
        node.submit(Operation(Kind.OUT, 5, 2, ("job", 2)))
        self.assertEqual(self.answers, [Refused(5, 2, Refusal.BUSY)])
        self.assertEqual(node.stats()["ring.replica.refused"], 1)
        self.assertEqual(node.engine.backlog, 2)

    def test_restore_in_steps_on_the_clock(self) -> None:
        """
        A snapshot is restored a step at a time, each step a call of the injected
        clock due at once (not the global cooperator): other work scheduled on the
        clock meanwhile (the ring's, say) runs between the steps.  The replica serves
        after the last step, and nothing is left scheduled.
        """
        self.node((1, 2, 3))
        node = self.replica_node
        node.driver.input(node.replica.configuration, R, (1, 2, 3), False)
        self.feed_ring(status(1), status(2, True, 7), status(3, True, 7), snapshot_of(2500))
        self.assertIs(node.replica.mode, Mode.SYNCING)  # not restored at once
        [call] = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), self.clock.seconds())
        seen: list[tuple[Mode, int]] = []

        def other_work() -> None:
            seen.append((node.replica.mode, len(self.clock.getDelayedCalls())))
            if node.replica.mode is Mode.SYNCING:
                self.clock.callLater(0, other_work)

        self.clock.callLater(0, other_work)
        self.clock.advance(0)
        # Two chunks of 1000 tuples, then the rest: the other work ran after each step,
        # with the next step pending (one call).
        self.assertEqual(seen, [(Mode.SYNCING, 1), (Mode.SYNCING, 1), (Mode.SERVING, 0)])
        self.assertEqual(node.gauges()["tuples"], 2500)
        self.assertEqual(node.stats()["ring.replica.snapshots.restored"], 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_during_a_restore(self) -> None:
        """Stopping mid-restore cancels the pending step: nothing is left scheduled."""
        self.node((1, 2, 3))
        node = self.replica_node
        node.driver.input(node.replica.configuration, R, (1, 2, 3), False)
        self.feed_ring(status(1), status(2, True, 7), status(3, True, 7), snapshot_of(2500))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        node.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertIs(node.replica.mode, Mode.SYNCING)
