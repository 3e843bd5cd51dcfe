"""
Tests for a server's durable state (L{lips.replica.Journal}): records written, synced
and read back; a torn last record cut off and a damaged one refused with the file and
offset; snapshots that replace the records they cover, whatever a crash left behind;
and a replica brought back by replaying its journal to the very state it had.  (The
ring engine's side, storing before the token goes on, is in C{test_ring_engine}.)
"""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from lips.replica import (
    RESTORE_STEP,
    Journal,
    JournalError,
    Mode,
    Replica,
    backup,
    replay,
    restore,
)
from lips.replica._replica import _Status, encode_claim, encode_out, encode_status
from lips.ring import Configuration, Delivered, RingId
from lips.server import Unavailable
from lips.space import Kind, SnapshotError

R1 = RingId(4, 1)
R2 = RingId(8, 1)


def records() -> list[Delivered | Configuration]:
    return [
        Configuration(R1, (1, 2), False),
        Delivered(R1, 1, 1, b"one", 0),
        Delivered(R1, 2, 2, b"two", 1),
        Configuration(R2, (1,), True),
    ]


class JournalFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = Path(self.mktemp())
        self.syncs: list[int] = []

    def journal(self, snapshot_after: int = 2**20) -> Journal:
        return Journal(self.directory, fsync=self.syncs.append, snapshot_after=snapshot_after)

    def written(self) -> Journal:
        j = self.journal()
        j.load()
        for r in records():
            j.append(r)
        j.append(RESTORE_STEP)
        j.close()
        return j

    def segment(self) -> Path:
        [path] = sorted(self.directory.glob("log.*"))
        return path

    def test_round_trip(self) -> None:
        """What was appended and synced is read back, in order, with its indexes."""
        self.written()
        loaded = self.journal().load()
        self.assertEqual(loaded.records, (*records(), RESTORE_STEP))
        self.assertEqual((loaded.state, loaded.snapshot_index, loaded.torn), (None, 0, 0))

    def test_sync_only_what_is_new(self) -> None:
        """A sync writes and flushes once per batch; with nothing new it does nothing."""
        j = self.journal()
        j.load()
        before = len(self.syncs)
        j.sync()
        self.assertEqual(len(self.syncs), before)
        j.append(records()[0])
        j.append(records()[1])
        j.sync()
        j.sync()
        self.assertEqual(len(self.syncs), before + 1)
        self.assertEqual(j.stats()["syncs"], 1)

    def test_unsynced_records_are_not_on_disk(self) -> None:
        """Records appended after the last sync are not written (they were never held)."""
        j = self.journal()
        j.load()
        j.append(records()[0])
        j.sync()
        j.append(records()[1])
        self.assertEqual(self.journal().load().records, (records()[0],))

    def test_torn_last_record_cut_off(self) -> None:
        """A crash in the middle of the last write: that record goes, the rest loads."""
        self.written()
        path = self.segment()
        data = path.read_bytes()
        path.write_bytes(data[:-3])
        j = self.journal()
        loaded = j.load()
        self.assertEqual(loaded.records, tuple(records()))
        self.assertGreater(loaded.torn, 0)
        # Cut off on disk, so that what comes next follows a whole record.
        j.append(Delivered(R2, 1, 1, b"after", 0))
        j.close()
        self.assertEqual(
            self.journal().load().records, (*records(), Delivered(R2, 1, 1, b"after", 0))
        )

    def test_torn_header_of_a_fresh_segment(self) -> None:
        """A segment whose header never got out is started again."""
        self.directory.mkdir()
        (self.directory / "log.000000000001").write_bytes(b"LIP")
        j = self.journal()
        self.assertEqual(j.load().records, ())
        j.append(records()[0])
        j.close()
        self.assertEqual(self.journal().load().records, (records()[0],))

    def test_damage_refused(self) -> None:
        """A record failing its checksum with more after it is damage: named, refused."""
        self.written()
        path = self.segment()
        data = bytearray(path.read_bytes())
        data[20] ^= 0x55
        path.write_bytes(bytes(data))
        e = self.assertRaises(JournalError, self.journal().load)
        self.assertIn(str(path), str(e))
        self.assertIn("damaged at byte 8", str(e))
        self.assertIn("move the directory away", str(e))

    def test_impossible_length_is_damage_even_last(self) -> None:
        """A length no writer writes, in the last segment, is damage, not a torn tail."""
        self.written()
        path = self.segment()
        data = bytearray(path.read_bytes())
        data[8:12] = (2**31).to_bytes(4, "big")  # the first record's length
        path.write_bytes(bytes(data))
        e = self.assertRaises(JournalError, self.journal().load)
        self.assertIn("damaged at byte 8: a record of 2147483648 bytes", str(e))

    def test_not_a_journal(self) -> None:
        self.directory.mkdir()
        (self.directory / "log.000000000001").write_bytes(b"something else entirely")
        e = self.assertRaises(JournalError, self.journal().load)
        self.assertIn("not a segment", str(e))

    def test_hole_refused(self) -> None:
        """Records missing between the snapshot and a segment are damage."""
        j = self.journal(snapshot_after=1)
        j.load()
        j.append(records()[0])
        j.snapshot(b"state")
        j.append(records()[1])
        j.close()
        (self.directory / "snapshot").unlink()
        e = self.assertRaises(JournalError, self.journal().load)
        self.assertIn("missing", str(e))

    def test_snapshot_replaces_the_records_it_covers(self) -> None:
        j = self.journal(snapshot_after=1)
        j.load()
        for r in records()[:2]:
            j.append(r)
        self.assertTrue(j.due)
        j.snapshot(b"state after two")
        self.assertFalse(j.due)
        for r in records()[2:]:
            j.append(r)
        j.close()
        self.assertEqual(len(list(self.directory.glob("log.*"))), 1)
        loaded = self.journal().load()
        self.assertEqual(
            (loaded.state, loaded.snapshot_index, loaded.records),
            (b"state after two", 2, tuple(records()[2:])),
        )

    def test_segments_left_by_a_crash_after_the_snapshot(self) -> None:
        """A crash before the old segment was deleted: its records are skipped."""
        j = self.journal(snapshot_after=1)
        j.load()
        for r in records()[:2]:
            j.append(r)
        j.sync()
        old = self.segment().read_bytes()
        j.snapshot(b"state")
        j.append(records()[2])
        j.close()
        (self.directory / "log.000000000001").write_bytes(old)
        loaded = self.journal().load()
        self.assertEqual((loaded.snapshot_index, loaded.records), (2, (records()[2],)))

    def test_damaged_snapshot_refused(self) -> None:
        j = self.journal()
        j.load()
        j.append(records()[0])
        j.snapshot(b"state")
        j.close()
        path = self.directory / "snapshot"
        data = bytearray(path.read_bytes())
        data[-1] ^= 1
        path.write_bytes(bytes(data))
        e = self.assertRaises(JournalError, self.journal().load)
        self.assertIn("checksum", str(e))

    def test_bad_options(self) -> None:
        """A bound that is not positive; a journal used before it is loaded."""
        self.assertRaises(ValueError, Journal, self.directory, snapshot_after=0)
        j = Journal(self.directory)
        j.append(records()[0])
        self.assertRaises(RuntimeError, j.sync)


class ReplayTests(SynchronousTestCase):
    """A replica fed its journal again comes to the very state it had."""

    @staticmethod
    def history(replica: Replica, journal: Journal) -> None:
        """Replica 1 of {1, 2}: a cold start, outs, claims, a restart of the ring."""

        def give(record: Delivered | Configuration) -> None:
            journal.append(record)
            if isinstance(record, Delivered):
                replica.delivered(
                    record.ring, record.seq, record.payload, record.origin, record.index, 1.0
                )
            else:
                replica.configuration(record.ring, record.members, record.transitional, 1.0)
            replica.drain()

        seq = 0

        def deliver(ring: RingId, payload: bytes, origin: int = 2) -> None:
            nonlocal seq
            seq += 1
            give(Delivered(ring, seq, origin, payload, 0))

        give(Configuration(R1, (1, 2), False))
        for node in (1, 2):
            deliver(R1, encode_status(R1, _Status(node, False, RingId(0, 0), 0, b"")), node)
        for i in range(5):
            deliver(R1, encode_out(7, i + 1, ("job", i)))
        deliver(R1, encode_claim(7, 6, Kind.IN, 2, 2))
        give(Configuration(R2, (1,), True))
        seq = 0
        give(Configuration(R2, (1, 2), False))
        for node in (1, 2):
            deliver(R2, encode_status(R2, _Status(node, True, R1, 6, replica.fingerprint)), node)
        deliver(R2, encode_out(8, 1, ("late", 1)))

    def replayed(self) -> tuple[Replica, Replica]:
        """A replica through L{history}, and a new one that replayed its journal."""
        directory = Path(self.mktemp())
        original = Replica(1, [1, 2])
        journal = Journal(directory, fsync=lambda fd: None)
        journal.load()
        self.history(original, journal)
        journal.close()
        again = Replica(1, [1, 2])
        replay(again, Journal(directory).load())
        return original, again

    def test_replay_equals_the_original(self) -> None:
        original, again = self.replayed()
        self.assertEqual(again.mode, Mode.SERVING)
        for name in ("has_state", "last_primary", "applied", "fingerprint", "ring", "members"):
            self.assertEqual(getattr(again, name), getattr(original, name), name)
        self.assertEqual(again.space.digest(), original.space.digest())
        self.assertEqual(len(again.space), 5)

    def test_saved_state_round_trip(self) -> None:
        """What L{Replica.saved} gives, L{Replica.load} restores, serving."""
        directory = Path(self.mktemp())
        original = Replica(1, [1, 2])
        journal = Journal(directory, fsync=lambda fd: None)
        journal.load()
        self.history(original, journal)
        state = original.saved()
        assert state is not None
        again = Replica(1, [1, 2])
        again.load(state)
        self.assertEqual(
            (again.mode, again.applied, again.fingerprint, again.last_primary, again.ring),
            (Mode.SERVING, original.applied, original.fingerprint, R2, R2),
        )
        self.assertEqual(again.space.digest(), original.space.digest())

    def test_restarted_waits_for_the_next_configuration(self) -> None:
        """
        A state brought back from disk is not served before a configuration decides:
        a checkpoint is not read from it (the cluster may have gone on meanwhile), and
        what it will state (holding a state, its last primary, applied) is kept.
        """
        original, again = self.replayed()
        again.restarted()
        self.assertEqual(again.mode, Mode.SYNCING)
        self.assertRaises(Unavailable, again.recovered, 7)
        self.assertEqual(
            (again.has_state, again.last_primary, again.applied),
            (True, original.last_primary, original.applied),
        )

    def test_saved_only_while_serving(self) -> None:
        replica = Replica(1, [1, 2])
        self.assertIsNone(replica.saved())
        replica.configuration(R1, (1, 2), False, 1.0)
        self.assertIsNone(replica.saved())

    def test_load_refuses_garbage(self) -> None:
        self.assertRaises(SnapshotError, Replica(1, [1]).load, b"\x93\x01\x02\x03")
        self.assertRaises(SnapshotError, Replica(1, [1]).load, b"\xc1")


class BackupTests(SynchronousTestCase):
    """A journal backed up into one file and restored as a new journal of it."""

    def test_backup_and_restore(self) -> None:
        source = Path(self.mktemp())
        original = Replica(1, [1, 2])
        journal = Journal(source, fsync=lambda fd: None)
        journal.load()
        ReplayTests.history(original, journal)
        journal.sync()  # still open, as a running server's journal is
        copy = Path(self.mktemp())
        backed = backup(Journal(source), copy, Replica(1, [1, 2]))
        self.assertEqual(backed.space.digest(), original.space.digest())
        target = Journal(Path(self.mktemp()))
        restore(copy, target)
        again = Replica(1, [1, 2])
        replay(again, target.load())
        self.assertEqual(again.space.digest(), original.space.digest())
        self.assertEqual(
            (again.applied, again.fingerprint, again.last_primary),
            (original.applied, original.fingerprint, original.last_primary),
        )

    def test_restore_refuses(self) -> None:
        """Over a journal that holds records, or from a file that is not a backup."""
        directory = Path(self.mktemp())
        j = Journal(directory)
        j.load()
        j.close()
        junk = Path(self.mktemp())
        junk.write_bytes(b"not a backup at all")
        e = self.assertRaises(JournalError, restore, junk, Journal(Path(self.mktemp())))
        self.assertIn("not a snapshot", str(e))
        copy = Path(self.mktemp())
        copy.write_bytes((directory / "log.000000000001").read_bytes())
        self.assertRaises(JournalError, restore, copy, Journal(directory))

    def test_nothing_to_back_up(self) -> None:
        """A journal whose replica never served cannot be backed up (yet)."""
        directory = Path(self.mktemp())
        j = Journal(directory)
        j.load()
        j.append(Configuration(R1, (1, 2), False))
        j.close()
        e = self.assertRaises(
            JournalError, backup, Journal(directory), Path(self.mktemp()), Replica(1, [1, 2])
        )
        self.assertIn("not serving", str(e))
        self.assertRaises(JournalError, backup, Journal(Path(self.mktemp())), "x", Replica(1, [1]))
