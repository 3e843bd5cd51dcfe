"""
Replays against running ring members (issue 10): captured datagrams of a member, dead,
restarted or live, sent again to the others from the member's own address, are dropped
and counted by the sealer's anti-replay window, and start no membership round.

The members are the ring protocol tests' (L{tests.unit.test_ring_protocol}): real
engines and adapters over the in-memory network of L{lips.testing.world}.
"""

from __future__ import annotations

from collections import Counter

from twisted.trial.unittest import SynchronousTestCase

from lips.ring import Opened, RingId, Sealer, State, decode
from tests.unit.test_ring_protocol import CLUSTER, KEY, Address, Node, Ring, address

#: What the replays are counted as, by the receiving adapter.
FRESHNESS = ("dropped.replayed", "dropped.too_old", "dropped.stale_boot")

Captured = list[tuple[bytes, Address | None]]


def kinds(captured: Captured) -> set[str]:
    """The message types among C{captured} datagrams."""
    found = set()
    for datagram, _ in captured:
        opened = Sealer(KEY, CLUSTER).open(datagram)
        assert isinstance(opened, Opened)
        found.add(type(decode(opened.type, opened.body)).__name__)
    return found


class ReplayTests(SynchronousTestCase):
    """A member's captured datagrams, replayed at the others, change nothing."""

    def setUp(self) -> None:
        self.ring = Ring(3)
        self.ring.run(0.3)
        self.assertTrue(self.ring.formed())
        self.traffic("before")

    def traffic(self, tag: str, members: tuple[int, ...] = (1, 2, 3)) -> None:
        """Each of C{members} broadcasts a few payloads, and the ring runs them through."""
        for i in range(12):
            n = members[i % len(members)]
            self.assertTrue(self.ring.nodes[n].protocol.submit(f"{tag}:{n}:{i}".encode()))
        self.ring.run(0.3)

    def snapshot(self, members: tuple[int, ...]) -> dict[int, tuple[int, RingId, Counter[str]]]:
        """Each member's gather.entered, ring id and adapter counters, to compare later."""
        return {
            n: (
                self.ring.nodes[n].engine.counters["gather.entered"],
                self.ring.nodes[n].engine.ring,
                Counter(self.ring.nodes[n].counters),
            )
            for n in members
        }

    def replay(
        self, captured: Captured, source: int, members: tuple[int, ...], passes: int = 10
    ) -> dict[int, list[int]]:
        """
        Send every C{captured} datagram again to each of C{members}, as from C{source}'s
        ring address, C{passes} times, the ring running between passes.

        @return: for each member, how many replays its sealer let through in each pass.
        """
        through: dict[int, list[int]] = {n: [] for n in members}
        for _ in range(passes):
            before = {n: Counter(self.ring.nodes[n].counters) for n in members}
            for datagram, _ in captured:
                for n in members:
                    self.ring.nodes[n].protocol.datagramReceived(datagram, address(source))
            for n in members:
                counters = self.ring.nodes[n].counters
                dropped = sum(counters[c] - before[n][c] for c in FRESHNESS)
                through[n].append(len(captured) - dropped)
            self.ring.run(0.05)
        return through

    def assertUnmoved(
        self, before: dict[int, tuple[int, RingId, Counter[str]]], members: tuple[int, ...]
    ) -> None:
        """No new membership round, the same ring, no internal error, and it delivers."""
        for n, (gathers, ring, _) in before.items():
            engine = self.ring.nodes[n].engine
            self.assertEqual(engine.counters["gather.entered"], gathers, n)
            self.assertEqual(engine.ring, ring, n)
            self.assertIs(engine.state, State.OPERATIONAL, n)
            self.assertEqual(engine.members, members, n)
            self.assertEqual(self.ring.nodes[n].counters["errors.internal"], 0, n)
        self.traffic("after", members)
        for n in members:
            delivered = self.ring.nodes[n].delivered()
            self.assertEqual(len(set(delivered)), len(delivered), n)
        after = [
            [p for p in self.ring.nodes[n].delivered() if p.startswith(b"after:")] for n in members
        ]
        self.assertEqual(len(after[0]), 12)
        for other in after[1:]:
            self.assertEqual(other, after[0])

    def test_dead_member(self) -> None:
        """
        Every datagram a member sent in its life (joins, commit tokens, tokens,
        broadcasts), replayed ten times at the survivors after it stopped and they
        formed their ring, is dropped and counted; the survivors stay in their ring.
        A survivor may let through, once, a datagram the dead member sent to the other
        survivor only (the window is per sender, not per receiver): never again, and
        it starts no round either.
        """
        dead = self.ring.nodes[3]
        dead.protocol.stop()
        self.ring.run(3.0)
        survivors = (1, 2)
        for n in survivors:
            self.assertEqual(self.ring.nodes[n].engine.members, survivors)
        captured = list(dead.transport.written)
        self.assertTrue({"Join", "Commit", "Token", "Mcast"} <= kinds(captured), kinds(captured))
        before = self.snapshot(survivors)
        through = self.replay(captured, 3, survivors)
        self.assertUnmoved(before, survivors)
        for n in survivors:
            elsewhere = sum(1 for _, to in captured if to is not None and to != address(n))
            self.assertLessEqual(through[n][0], elsewhere, n)
            self.assertEqual(through[n][1:], [0] * 9, n)
            counters = self.ring.nodes[n].counters
            dropped = sum(counters[c] - before[n][2][c] for c in FRESHNESS)
            self.assertEqual(dropped, 10 * len(captured) - through[n][0])
            self.assertGreater(counters["dropped.replayed"] - before[n][2]["dropped.replayed"], 0)

    def test_addressee_drops_every_replay(self) -> None:
        """
        At the member a datagram was written to (or every member, for a broadcast),
        none of the dead member's replays gets through, not even once.
        """
        dead = self.ring.nodes[3]
        dead.protocol.stop()
        self.ring.run(3.0)
        captured = list(dead.transport.written)
        for n in (1, 2):
            mine: Captured = [(d, to) for d, to in captured if to == address(n)]
            self.assertTrue(mine)
            before = self.snapshot((n,))
            self.assertEqual(self.replay(mine, 3, (n,), passes=3)[n], [0, 0, 0])
            self.assertEqual(self.snapshot((n,))[n][:2], before[n][:2])

    def test_restarted_member(self) -> None:
        """
        A member that restarted (a later boot) rejoins; the datagrams of its earlier
        boot, replayed at the others, are all dropped as of a stale boot.
        """
        old = self.ring.nodes[3]
        captured = list(old.transport.written)
        old.protocol.stop()
        self.ring.run(3.0)
        new = Node(3, [1, 2, 3], self.ring.network)
        new.protocol.sealer = Sealer(KEY, CLUSTER, boot=old.protocol.sealer.boot + 1)
        self.ring.nodes[3] = new
        new.protocol.makeConnection(new.transport)
        self.ring.run(3.0)
        self.assertTrue(self.ring.formed())
        before = self.snapshot((1, 2))
        through = self.replay(captured, 3, (1, 2), passes=5)
        self.assertEqual(through, {1: [0] * 5, 2: [0] * 5})
        for n in (1, 2):
            stale = self.ring.nodes[n].counters["dropped.stale_boot"]
            self.assertEqual(stale - before[n][2]["dropped.stale_boot"], 5 * len(captured))
        self.assertUnmoved(before, (1, 2, 3))

    def test_live_member(self) -> None:
        """
        Datagrams of a live member, captured while the ring ran and replayed ten times
        at the other two while it goes on, are dropped and counted (a token it wrote
        to one of them may pass once at the other); the ring neither gathers nor
        delivers anything twice.
        """
        live = self.ring.nodes[2]
        live.transport.written.clear()
        self.traffic("captured")
        captured = list(live.transport.written)
        self.assertTrue({"Token", "Mcast"} <= kinds(captured), kinds(captured))
        self.traffic("later")
        others = (1, 3)
        before = self.snapshot((1, 2, 3))
        through = self.replay(captured, 2, others)
        for n in others:
            elsewhere = sum(1 for _, to in captured if to is not None and to != address(n))
            self.assertLessEqual(through[n][0], elsewhere, n)
            self.assertEqual(through[n][1:], [0] * 9, n)
        self.assertUnmoved(before, (1, 2, 3))
