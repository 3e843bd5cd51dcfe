"""
A server's durable state: the journal of what its replica was given, and snapshots of
the replica that bound it.

With C{durable = true} in the cluster file, every server keeps, in
C{<state_dir>/<name>.journal/}, what it needs to come back with its state after it
stopped, was killed, or the whole cluster was:

    snapshot           the replica's whole state after journal record K (optional)
    log.NNNNNNNNNNNN   segments of records; NNNN is the index of the segment's first

A record is one input of the replica that its state depends on, in the order it was
given: a payload the ring delivered (L{Delivered}), a configuration change
(L{Configuration}), or a step of a snapshot being restored (L{RESTORE_STEP}, so that a
restore a later configuration cut short is cut short again).  The replica is a
deterministic core, so fed the same records from the same snapshot it comes to the
same state: its space, with every process's answer log and checkpoint, and what it
states at the next configuration (whether it holds a state, its last primary, how many
operations it applied and their fingerprint), from which the servers that come back
decide, as at any configuration, which state is the newest.

On disk, a segment is an 8-byte header (C{b"LIPSLOG"} and a version byte), then
records, each::

    length   4 bytes   of the body
    crc32    4 bytes   of the body
    body     msgpack   [index, kind, fields...]

and a snapshot file holds C{b"LIPSSNP"}, a version byte, the crc32 and length of the
body, and the body, C{[index, state]}: the replica's state after record C{index}.  It is
written to a temporary file, flushed, renamed over the old one and its directory
flushed, so a crash leaves the old snapshot or the new one; the segments it covers are
deleted after it is in place.  Integers are big-endian.

When it is stored: records are written as they come (L{Journal.append}) and flushed
to disk by L{Journal.sync}, which the server calls before its ring's token goes on
(L{lips.ring.RingStored.HELD}): the token is what tells the other members that this
one holds a message, so an operation counts as held for safe delivery, and is
answered, only once every member has it on disk.  One C{fdatasync} covers all that a
token visit delivered.

Loading trusts nothing.  A record cut short or failing its checksum at the very end
of the last segment is what a crash in the middle of a write leaves: it was never
flushed, so never counted as held; it is cut off (L{Loaded.torn} says how many bytes)
and the server goes on.  Anything else (a bad checksum with records after it, a hole
in the indexes, a snapshot that fails its checksum, a file that is not the journal's)
is damage: L{JournalError}, whose message names the file, the offset and what is
wrong, and says how to rejoin the cluster from the other servers.
"""

from __future__ import annotations

import enum
import os
import struct
import time
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeAlias

import attrs

from lips.files import fsync_directory, replace
from lips.replica._replica import Replica, ReplicaTimer
from lips.ring import Configuration, Delivered, RingId
from lips.space import SnapshotError
from lips.tuples import packb, unpackb

__all__ = [
    "RESTORE_STEP",
    "SNAPSHOT_AFTER",
    "Journal",
    "JournalError",
    "Loaded",
    "Record",
    "backup",
    "replay",
    "restore",
]


class _Step(enum.Enum):
    RESTORE = "restore"


RESTORE_STEP: Final = _Step.RESTORE
"""The record of one step of a snapshot restore (the replica's C{RESTORE} timer)."""

Record: TypeAlias = Delivered | Configuration | _Step
"""One input of the replica, as the journal keeps it."""

_FDATASYNC: Final[Callable[[int], None]] = getattr(os, "fdatasync", os.fsync)

#: Bytes of records after which the server takes a snapshot (when its replica serves).
SNAPSHOT_AFTER: Final = 64 * 2**20

_SEGMENT_MAGIC: Final = b"LIPSLOG\x01"
_SNAPSHOT_MAGIC: Final = b"LIPSSNP\x01"
_FRAME = struct.Struct("!II")
_SNAPSHOT_HEADER = struct.Struct("!8sIQ")
#: The largest record body accepted on loading (a ring payload is far smaller).
_MAX_RECORD: Final = 64 * 2**20
_DELIVERED: Final = 1
_CONFIGURATION: Final = 2
_RESTORE: Final = 3
_SEGMENT_DIGITS: Final = 12
_REJOIN: Final = (
    "to rejoin from the other servers, move the directory away and start the server"
    " again (it comes back empty and takes the state of the cluster)"
)


class JournalError(Exception):
    """The journal is damaged or is not one: the message says where and what."""


@attrs.frozen
class Loaded:
    """
    What a journal held: the snapshot's state (or C{None}), the index it was taken
    after, the records after it in order, and how many bytes of a torn last record
    were cut off.
    """

    state: bytes | None
    snapshot_index: int
    records: tuple[Record, ...]
    torn: int = 0


def encode_record(index: int, record: Record) -> bytes:
    """One record, framed."""
    if isinstance(record, Delivered):
        body: list[Any] = [
            index,
            _DELIVERED,
            record.ring.seq,
            record.ring.rep,
            record.seq,
            record.origin,
            record.index,
            record.payload,
        ]
    elif isinstance(record, Configuration):
        body = [
            index,
            _CONFIGURATION,
            record.ring.seq,
            record.ring.rep,
            list(record.members),
            record.transitional,
        ]
    elif record is RESTORE_STEP:
        body = [index, _RESTORE]
    else:
        raise TypeError(f"not a journal record: {record!r}")
    data = packb(body)
    return _FRAME.pack(len(data), zlib.crc32(data)) + data


def _int(value: Any) -> int:
    if type(value) is not int or value < 0:
        raise ValueError(f"not a count: {value!r}")
    return value


def decode_record(body: bytes) -> tuple[int, Record]:
    """
    The index and record of one record's body.

    @raise ValueError: it is not a record.
    """
    fields = unpackb(body)
    if not isinstance(fields, tuple) or len(fields) < 2:
        raise ValueError("not a record")
    index, kind = _int(fields[0]), fields[1]
    if kind == _DELIVERED and len(fields) == 8:
        payload = fields[7]
        if not isinstance(payload, bytes):
            raise ValueError("a delivered record's payload is not bytes")
        ring = RingId(_int(fields[2]), _int(fields[3]))
        return index, Delivered(ring, _int(fields[4]), _int(fields[5]), payload, _int(fields[6]))
    if kind == _CONFIGURATION and len(fields) == 6:
        members, transitional = fields[4], fields[5]
        if not isinstance(members, tuple) or not isinstance(transitional, bool):
            raise ValueError("a configuration record's members or flag are wrong")
        ring = RingId(_int(fields[2]), _int(fields[3]))
        return index, Configuration(ring, tuple(_int(m) for m in members), transitional)
    if kind == _RESTORE and len(fields) == 2:
        return index, RESTORE_STEP
    raise ValueError(f"unknown record kind {kind!r} with {len(fields)} fields")


def _encode_snapshot(index: int, state: bytes) -> bytes:
    """A snapshot file: the replica's C{state} after record C{index}."""
    body = packb([index, state])
    return _SNAPSHOT_HEADER.pack(_SNAPSHOT_MAGIC, zlib.crc32(body), len(body)) + body


def _decode_snapshot(data: bytes, path: Path, advice: str) -> tuple[bytes, int]:
    """The state and index of a snapshot file's C{data}; L{JournalError} with C{advice}."""
    size = _SNAPSHOT_HEADER.size
    if len(data) < size:
        raise JournalError(f"{path}: damaged: {len(data)} bytes, not a snapshot; {advice}")
    magic, crc, length = _SNAPSHOT_HEADER.unpack_from(data)
    body = data[size:]
    if magic != _SNAPSHOT_MAGIC:
        raise JournalError(f"{path}: not a snapshot of a LiPS journal; {advice}")
    if length != len(body) or zlib.crc32(body) != crc:
        raise JournalError(f"{path}: damaged: the checksum or length is wrong; {advice}")
    try:
        index, state = unpackb(body)
        if not isinstance(state, bytes):
            raise ValueError("no state")
        return state, _int(index)
    except (ValueError, TypeError) as e:
        raise JournalError(f"{path}: damaged: {e}; {advice}") from None


class Journal:
    """
    One server's journal, in C{directory} (created, mode 0700, when missing).

    Call L{load} once, first; then L{append} each record, L{sync} to make them durable,
    and L{snapshot} now and then (L{due} says when).  L{close} syncs and closes.

    @param snapshot_after: bytes of records after which L{due} is true.
    @param fsync: flushes a file descriptor to disk (C{os.fdatasync}; injected by tests).
    @param clock: for the time spent in C{fdatasync} (C{time.perf_counter}).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        snapshot_after: int = SNAPSHOT_AFTER,
        fsync: Callable[[int], None] = _FDATASYNC,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if snapshot_after < 1:
            raise ValueError("snapshot_after must be positive")
        self.directory = Path(directory)
        self.snapshot_after = snapshot_after
        self._fsync = fsync
        self._clock = clock
        #: The index of the last record appended (or loaded); 0 before any.
        self.index = 0
        self._fd: int | None = None
        self._buffer = bytearray()
        self._since_snapshot = 0
        self._unsynced = False
        self.counters: Counter[str] = Counter()
        self.sync_seconds = 0.0

    def __repr__(self) -> str:
        return f"Journal({str(self.directory)!r})"

    # -- loading ----------------------------------------------------------------------------

    def load(self) -> Loaded:
        """
        Read the snapshot and the records after it, cut off a torn last record, and
        open the last segment for appending.

        @raise JournalError: the journal is damaged (the message says where and how).
        """
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        loaded, last = self._scan()
        self.index = loaded.snapshot_index + len(loaded.records)
        if last is not None and last[1] < len(_SEGMENT_MAGIC):
            last[0].unlink()  # created, its header never written out: start it again
            last = None
        elif last is not None and last[1] != last[0].stat().st_size:
            with open(last[0], "r+b") as f:
                f.truncate(last[1])
                f.flush()
                os.fsync(f.fileno())
        if loaded.torn:
            self.counters["torn"] += 1
        if last is None:
            self._open_segment(self.index + 1)
        else:
            self._fd = os.open(last[0], os.O_WRONLY | os.O_APPEND)
        self._since_snapshot = sum(p.stat().st_size for _, p in self._segments())
        self.counters["loaded"] += len(loaded.records)
        return loaded

    def read(self) -> Loaded:
        """
        What the journal holds, changing nothing (a torn last record is left on disk):
        for a copy of a journal its server may be writing (L{lips.replica.backup}).

        @raise JournalError: the journal is damaged, or there is none.
        """
        if not self.directory.is_dir():
            raise JournalError(f"{self.directory}: no journal here")
        return self._scan()[0]

    def _scan(self) -> tuple[Loaded, tuple[Path, int] | None]:
        """What the files hold, and the last segment with the length of its good part."""
        state, snapshot_index = self._load_snapshot()
        segments = self._segments()
        records: list[Record] = []
        torn = 0
        last: tuple[Path, int] | None = None
        for n, (first, path) in enumerate(segments):
            good, cut = self._read_segment(
                path, n == len(segments) - 1, records, snapshot_index, first
            )
            torn += cut
            last = (path, good)
        return Loaded(state, snapshot_index, tuple(records), torn), last

    def _load_snapshot(self) -> tuple[bytes | None, int]:
        path = self.directory / "snapshot"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None, 0
        except OSError as e:
            raise JournalError(f"{path}: cannot read: {e.strerror or e}") from None
        state, index = _decode_snapshot(data, path, _REJOIN)
        return state, index

    def _segments(self) -> list[tuple[int, Path]]:
        found = []
        for path in self.directory.glob("log.*"):
            suffix = path.name[4:]
            if len(suffix) == _SEGMENT_DIGITS and suffix.isdigit():
                found.append((int(suffix), path))
        return sorted(found)

    def _read_segment(
        self,
        path: Path,
        final: bool,
        records: list[Record],
        snapshot_index: int,
        first: int,
    ) -> tuple[int, int]:
        """
        Append the records of C{path} after the snapshot to C{records}; return the
        length of its good part and how many bytes of a torn last record follow it.
        """
        data = path.read_bytes()
        if len(data) < len(_SEGMENT_MAGIC):
            if final:
                return 0, len(data)  # created, its header not yet written out
            raise JournalError(f"{path}: damaged: too short for a segment; {_REJOIN}")
        if data[: len(_SEGMENT_MAGIC)] != _SEGMENT_MAGIC:
            raise JournalError(f"{path}: not a segment of a LiPS journal; {_REJOIN}")
        offset = len(_SEGMENT_MAGIC)
        expected = first
        while offset < len(data):
            problem = None
            end = offset + _FRAME.size
            if end > len(data):
                problem = "a record header cut short"
            else:
                length, crc = _FRAME.unpack_from(data, offset)
                if length > _MAX_RECORD:
                    problem = f"a record of {length} bytes"
                elif end + length > len(data):
                    problem = "a record cut short"
                elif zlib.crc32(data[end : end + length]) != crc:
                    problem = "a record failing its checksum"
            if problem is not None:
                tail = _FRAME.size + (length if end <= len(data) else 0)
                # A length no writer writes is damage, wherever it is: taken for a torn
                # tail it would cut off the whole records after it.
                torn = end > len(data) or length <= _MAX_RECORD
                if final and torn and offset + tail >= len(data):
                    # A write the crash cut short: never synced, never counted as held.
                    return offset, len(data) - offset
                raise JournalError(f"{path}: damaged at byte {offset}: {problem}; {_REJOIN}")
            try:
                index, record = decode_record(data[end : end + length])
            except ValueError as e:
                raise JournalError(f"{path}: damaged at byte {offset}: {e}; {_REJOIN}") from None
            if index != expected:
                raise JournalError(
                    f"{path}: damaged at byte {offset}: record {index} where {expected}"
                    f" was due; {_REJOIN}"
                )
            expected += 1
            if index > snapshot_index:
                if index != snapshot_index + len(records) + 1:
                    raise JournalError(
                        f"{path}: records {snapshot_index + len(records) + 1} to"
                        f" {index - 1} are missing; {_REJOIN}"
                    )
                records.append(record)
            offset = end + length
        return offset, 0

    # -- writing ----------------------------------------------------------------------------

    def append(self, record: Record) -> None:
        """Add C{record} (written out at the next L{sync})."""
        self.index += 1
        data = encode_record(self.index, record)
        self._buffer += data
        self._since_snapshot += len(data)
        self._unsynced = True
        self.counters["records"] += 1

    def sync(self) -> None:
        """
        Write out and flush to disk every record appended so far (nothing to do if none).

        @raise OSError: the disk refused (full, failing): nothing appended since the last
            sync may be counted as stored, and the server must stop (L{ReplicaNode} does).
        """
        if not self._unsynced:
            return
        fd = self._require()
        start = self._clock()
        done = 0
        with memoryview(self._buffer) as view:
            while done < len(view):
                done += os.write(fd, view[done:])
        self._buffer.clear()
        self._fsync(fd)
        self._unsynced = False
        self.sync_seconds += self._clock() - start
        self.counters["syncs"] += 1

    @property
    def due(self) -> bool:
        """Whether enough has been appended since the last snapshot to take one."""
        return self._since_snapshot >= self.snapshot_after

    def snapshot(self, state: bytes) -> None:
        """
        Store C{state}, the replica's state after the last record appended, and drop
        the segments it covers.
        """
        self.sync()
        replace(self.directory / "snapshot", _encode_snapshot(self.index, state))
        old = self._segments()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._open_segment(self.index + 1)
        for _, path in old:
            path.unlink()
        self._since_snapshot = 0
        self.counters["snapshots"] += 1

    def close(self) -> None:
        """Sync what is left and close the segment."""
        if self._fd is None:
            return
        self.sync()
        os.close(self._fd)
        self._fd = None

    def _open_segment(self, first: int) -> None:
        path = self.directory / f"log.{first:0{_SEGMENT_DIGITS}d}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.write(fd, _SEGMENT_MAGIC)
        os.fsync(fd)
        fsync_directory(self.directory)
        self._fd = fd

    def _require(self) -> int:
        if self._fd is None:
            raise RuntimeError("the journal is not open: load it first")
        return self._fd

    def stats(self) -> dict[str, int | float]:
        """Counters (records, syncs, snapshots, torn), the index and the time in sync."""
        values: dict[str, int | float] = {
            "index": self.index,
            "records": 0,
            "syncs": 0,
            "snapshots": 0,
            "torn": 0,
        }
        values.update(self.counters)
        values["sync_ms"] = round(self.sync_seconds * 1000, 3)
        return values


def replay(replica: Replica, loaded: Loaded, now: float = 0.0) -> None:
    """
    Bring C{replica} (new, given no input yet) to the state C{loaded} holds: its
    snapshot's state, then every record fed as the host first fed it, the effects
    dropped (they were carried out the first time: answers given, messages sent).  A
    host that then serves from it calls L{Replica.restarted} first.

    @raise JournalError: the snapshot's state is not a replica's.
    """
    if loaded.state is not None:
        try:
            replica.load(loaded.state)
        except SnapshotError as e:
            raise JournalError(f"the journal's snapshot: {e}; {_REJOIN}") from None
    for record in loaded.records:
        if isinstance(record, Delivered):
            replica.delivered(
                record.ring, record.seq, record.payload, record.origin, record.index, now
            )
        elif isinstance(record, Configuration):
            replica.configuration(record.ring, record.members, record.transitional, now)
        else:
            replica.timer(ReplicaTimer.RESTORE, now)
        replica.drain()


def backup(journal: Journal, out: str | os.PathLike[str], replica: Replica) -> Replica:
    """
    Write what C{journal} holds as one snapshot file at C{out}: C{replica} (a new one
    of the server's node and configured servers) is brought to the journal's state and
    its saved state written the way a journal keeps its snapshot, so that L{restore}
    makes a journal of it.  The journal may belong to a running server: it is read,
    never changed, and what it had flushed is what the backup holds.

    @return: C{replica}, in the state backed up.
    @raise JournalError: the journal is damaged, or it ends where the replica did not
        serve (in the middle of a configuration change): nothing to back up yet.
    """
    loaded = journal.read()
    replay(replica, loaded)
    state = replica.saved()
    if state is None:
        raise JournalError(
            f"{journal.directory}: its replica was {replica.mode.value} when the journal"
            " ends, not serving: back up once it serves"
        )
    replace(Path(out), _encode_snapshot(loaded.snapshot_index + len(loaded.records), state))
    return replica


def restore(source: str | os.PathLike[str], journal: Journal) -> None:
    """
    Make C{journal}'s directory hold the backup at C{source} (as L{backup} wrote it)
    and nothing else: its server starts from that state.

    @raise JournalError: C{source} is not a backup, or the journal holds records
        already (move it away first).
    """
    path = Path(source)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise JournalError(f"{path}: cannot read: {e.strerror or e}") from None
    _decode_snapshot(data, path, "not a backup lips backup wrote")
    directory = journal.directory
    if directory.exists() and any(directory.iterdir()):
        raise JournalError(f"{directory} holds a journal already: move it away to restore over it")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    replace(directory / "snapshot", data)
