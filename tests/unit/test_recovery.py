"""
Checkpoints and replay through the client API: L{TupleSpaceClient.checkpoint} and
L{TupleSpaceClient.recover}, on a local and on a replicated space.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgpack
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lips.client import TupleSpaceClient, _checkpoint
from lips.errors import CheckpointError, RequestError
from lips.replica import Replica
from lips.ring import RingId
from lips.server import MessageServer
from lips.testing import memory_client, memory_server
from lips.testing._replicahost import ReplicaBackend
from lips.tuples import TupleTooLarge
from lips.wire import ErrorCode


class RecoveryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.server = memory_server(self.clock)
        self.pumps: list[Any] = []

    def connect(self, pid: int | None = None, server: MessageServer | None = None) -> Any:
        client, pump = memory_client(server or self.server, self.clock, pid)
        self.pumps.append(pump)
        return client

    def wait(self, d: Any) -> Any:
        for pump in self.pumps:
            pump.flush()
        return self.successResultOf(d)

    def process_a(self, space: TupleSpaceClient) -> list[Any]:
        """A's first five events: rd, out(("w", 1)), out, inp, rdp."""
        return [
            self.wait(space.rd(("cfg", int))),
            self.wait(space.out(("w", 1))),
            self.wait(space.out(("log", "a3"))),
            self.wait(space.inp(("none",))),
            self.wait(space.rdp(("log", str))),
        ]

    def test_golden_scenario(self) -> None:
        """
        The paper's Figure 4 through the client (papers-detail §4.5 rule 5): A crashes
        after five events with no checkpoint; B takes A's tuple and checkpoints; A
        restarted from scratch gets the same answers, its out is suppressed, and it is
        active again at its sixth event; B restarted continues after its checkpoint.
        """
        other = self.connect()
        self.wait(other.out(("cfg", 42)))
        a = self.connect()
        first = self.process_a(a)
        b = self.connect()
        self.assertEqual(self.wait(b.in_(("w", int))), ("w", 1))
        self.wait(b.checkpoint({"seen": ["w", 1], "rng": 12345}))
        # A restarts from scratch: same pid, no checkpoint.
        a2 = self.connect(pid=a.pid)
        self.assertIsNone(self.wait(a2.recover()))
        self.assertEqual(self.process_a(a2), first)
        self.assertIsNone(self.wait(other.inp(("w", int))))  # no second ("w", 1)
        self.wait(a2.out(("w", 2)))  # event 6: active again
        self.assertEqual(self.wait(other.inp(("w", int))), ("w", 2))
        # B restarts from its checkpoint: the state, and events after it.
        b2 = self.connect(pid=b.pid)
        self.assertEqual(self.wait(b2.recover()), {"seen": ["w", 1], "rng": 12345})
        self.assertEqual(b2.event, 2)
        self.wait(b2.out(("b", 3)))
        self.assertEqual(self.wait(other.inp(("b", int))), ("b", 3))

    def test_replay_of_a_take_gets_the_same_tuple(self) -> None:
        """A restarted process's in_ gets the tuple it got the first time, not another."""
        other = self.connect()
        for i in range(3):
            self.wait(other.out(("job", i)))
        a = self.connect()
        self.wait(a.checkpoint("start"))
        got = self.wait(a.in_(("job", int)))
        a2 = self.connect(pid=a.pid)
        self.assertEqual(self.wait(a2.recover()), "start")
        self.assertEqual(self.wait(a2.in_(("job", int))), got)
        self.assertEqual(self.wait(a2.in_(("job", int))), ("job", 1))  # active: a new take

    def test_state_must_encode_and_fit(self) -> None:
        """A state msgpack cannot encode, or larger than the server's limit, is refused."""
        a = self.connect()
        self.assertRaises(CheckpointError, a.checkpoint, object())
        self.assertRaises(TupleTooLarge, a.checkpoint, bytes(a.max_size + 1))
        self.assertEqual(a.event, 0)

    def test_recover_refused_outside_the_primary(self) -> None:
        """A replica that is not serving answers a recover UNAVAILABLE."""
        replica = Replica(1, [1, 2, 3])
        server = MessageServer(
            ReplicaBackend(replica, self.clock.seconds, lambda p: True), self.clock
        )
        a = self.connect(server=server)
        d = a.recover()
        self.pumps[-1].flush()
        f = self.failureResultOf(d, RequestError)
        self.assertEqual(f.value.code, ErrorCode.UNAVAILABLE)

    def test_checkpoint_through_a_replica(self) -> None:
        """A replica applies a checkpoint in the ring's order and answers once safe."""
        sent: list[bytes] = []

        def broadcast(payload: bytes) -> bool:
            sent.append(payload)
            return True

        replica = Replica(1, [1])
        backend = ReplicaBackend(replica, self.clock.seconds, broadcast)
        server = MessageServer(backend, self.clock)
        ring = RingId(8, 1)
        backend.feed(replica.configuration, ring, (1,), False)
        backend.feed(replica.delivered, ring, 1, sent.pop(), 1, 0)  # its status: a cold start
        a = self.connect(server=server)
        d = a.checkpoint([1, 2])
        self.pumps[-1].flush()
        backend.feed(replica.delivered, ring, 2, sent.pop(), 1, 0)
        self.assertNoResult(d)
        backend.feed(replica.safe, ring, 2)
        self.assertIsNone(self.wait(d))
        recovered = replica.space.recovered(a.pid)
        assert recovered is not None
        self.assertEqual(recovered[0], 1)
        self.assertEqual(self.wait(a.recover()), [1, 2])


class CheckpointFilesTests(SynchronousTestCase):
    """Level 3: files of the working directory kept with a checkpoint, and restored."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.server = memory_server(self.clock)
        self.here = Path(self.mktemp())
        self.here.mkdir()

    def test_files_restored_elsewhere(self) -> None:
        """Files kept with a checkpoint come back, whole, in another directory."""
        (self.here / "partial.dat").write_bytes(b"\x00" * 1000 + b"end")
        (self.here / "notes.txt").write_text("step 3\n")
        os.chmod(self.here / "notes.txt", 0o640)
        a, pump = memory_client(self.server, self.clock)
        d = a.checkpoint({"step": 3}, ["partial.dat", "notes.txt"], self.here)
        pump.flush()
        self.successResultOf(d)
        other = Path(self.mktemp())
        other.mkdir()
        (other / "notes.txt").write_text("stale")
        b, pump = memory_client(self.server, self.clock, a.pid)
        d = b.recover(other)
        pump.flush()
        self.assertEqual(self.successResultOf(d), {"step": 3})
        self.assertEqual((other / "partial.dat").read_bytes(), b"\x00" * 1000 + b"end")
        self.assertEqual((other / "notes.txt").read_text(), "step 3\n")
        self.assertEqual((other / "notes.txt").stat().st_mode & 0o777, 0o640)
        self.assertEqual(sorted(p.name for p in other.iterdir()), ["notes.txt", "partial.dat"])

    def test_names_must_be_plain(self) -> None:
        """Only plain names in the working directory: no paths, no '..'."""
        a, _ = memory_client(self.server, self.clock)
        for bad in ("../x", "/etc/passwd", "a/b", "..", ".", ""):
            self.assertRaises(CheckpointError, a.checkpoint, 1, [bad], self.here)
        self.assertRaises(CheckpointError, a.checkpoint, 1, ["missing"], self.here)

    def test_malicious_checkpoint_writes_nothing(self) -> None:
        """A checkpoint naming a path outside the directory is refused whole."""
        blob = msgpack.packb([1, "s", [["ok", 0o600, b"x"], ["../evil", 0o600, b"x"]]])
        self.assertRaises(CheckpointError, _checkpoint.unpack, blob, self.here)
        self.assertEqual(list(self.here.iterdir()), [])
        for bad in (b"\xc1", msgpack.packb([2, "s", []]), msgpack.packb([1, "s", [["a", 1]]])):
            self.assertRaises(CheckpointError, _checkpoint.unpack, bad, self.here)
