"""
The tuple space: a deterministic, sans-IO state machine.

Every operation carries its caller's C{(pid, event)}: the process id and that process's
event number, which grows with every operation the process makes.  The space keeps, per
process, the last event it applied and a bounded log of the answers it gave, so an
operation that arrives twice (a client retrying after a lost connection, or the same
request reaching two replicas) is applied once and answered the same way both times.

Stored tuples are numbered by a sequence counter.  Matching always chooses the oldest
matching tuple, and waiters are served first come, first served, so the same operations
in the same order give the same answers and the same state on every replica.

Tuples are indexed by arity and by the key of every field at every position; a template
is looked up in the smallest bucket among its actual fields, so a template with an actual
field never scans tuples that differ in that field.
"""

from __future__ import annotations

import enum
import hashlib
import heapq
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any, Final

import attrs

from lips.tuples import (
    DEFAULT_LIMITS,
    MAX_SCAN,
    MAX_STEPS,
    AbortReason,
    Kind,
    Limits,
    LTuple,
    Step,
    StepOp,
    StepResult,
    Template,
    TupleError,
    Tuples,
    make_tuple,
    packb,
    tuple_keys,
    unpackb,
)

__all__ = [
    "Completion",
    "Kind",
    "SnapshotError",
    "Status",
    "TupleSpace",
]

_SNAPSHOT_VERSION: Final = 4

#: How many forgotten processes the space remembers the last event of (L{TupleSpace.forget}).
GONE_LIMIT: Final = 65_536


class Status(enum.IntEnum):
    """How an operation ended (or that it has not yet)."""

    STORED = 0
    """An C{out} was applied."""
    MATCHED = 1
    """A template operation found a tuple (in C{Completion.value})."""
    NO_MATCH = 2
    """An C{inp}/C{rdp} found nothing."""
    PENDING = 3
    """An C{in}/C{rd} is waiting for a tuple."""
    CANCELLED = 4
    """A waiting operation was withdrawn because its connection was lost.  It had no
    effect, and is not final: the same event sent again is applied afresh."""
    STALE = 5
    """A retried event is older than what the process log still remembers."""
    # 6 and 7 were BUSY and UNAVAILABLE: a server's refusals, not ends of an operation
    # in the space (see lips.server.Refused); the numbers stay unused.
    TIMED_OUT = 8
    """A waiting operation's timeout was decided before any tuple answered it (see
    L{TupleSpace.decide}): nothing was taken.  Final and logged: the same event sent
    again gets this answer again, and a later claim for it takes nothing."""
    WITHDRAWN = 9
    """A waiting operation was cancelled by its caller before any tuple answered it:
    nothing was taken.  Final and logged, like L{TIMED_OUT}."""
    COMMITTED = 10
    """An atomic request was applied, every step in order (C{Completion.results})."""
    ABORTED = 11
    """An atomic request was not applied at all: one of its steps failed
    (C{Completion.aborted})."""

    @property
    def final(self) -> bool:
        return self is not Status.PENDING


@attrs.frozen
class Completion:
    """The answer to the operation C{(pid, event)}."""

    pid: int
    event: int
    status: Status
    value: LTuple | None = None
    results: tuple[StepResult, ...] | None = None
    """For a L{COMMITTED<Status.COMMITTED>} atomic request: each step's result, in
    order: the tuple an C{inp} or C{rdp} step found, the L{Tuples} a C{scan} or
    C{delete} step read or took, C{None} for the other steps."""
    aborted: tuple[int, AbortReason] | None = None
    """For an L{ABORTED<Status.ABORTED>} atomic request: the step that failed (its
    index, from 0) and why."""


class SnapshotError(ValueError):
    """A snapshot could not be decoded or is inconsistent."""


@attrs.define(eq=False)
class _Process:
    """
    What the space remembers of one process.

    @ivar last: the highest event applied.
    @ivar floor: the highest event whose answer was dropped from the log (by the log
        limit or by L{TupleSpace.trim}); a retry of a missing event at or below it is
        STALE, a retry of a missing event above it never completed and is applied.
    @ivar log: the answers given, in the order they were given.
    """

    last: int = -1
    floor: int = -1
    log: OrderedDict[int, Completion] = attrs.Factory(OrderedDict)

    def drop_oldest(self) -> None:
        event, _ = self.log.popitem(last=False)
        self.floor = max(self.floor, event)


@attrs.define(eq=False)
class _Waiter:
    serial: int
    pid: int
    event: int
    kind: Kind
    template: Template


class TupleSpace:
    """
    A Linda tuple space.

    @param limits: bounds for tuples accepted by L{out}.
    @param log_limit: how many answers the space remembers per process for retries.
    """

    def __init__(self, limits: Limits = DEFAULT_LIMITS, log_limit: int = 4096) -> None:
        if log_limit < 1:
            raise ValueError("log_limit must be at least 1")
        self.limits = limits
        self.log_limit = log_limit
        self._seq = 0
        self._store: dict[int, tuple[LTuple, tuple[Any, ...]]] = {}
        # Index buckets: plain dicts, which keep insertion order (oldest first) and are
        # cheaper to make than OrderedDicts; a space has one per distinct field value.
        self._by_arity: dict[int, dict[int, None]] = {}
        self._by_field: dict[tuple[int, int, Any], dict[int, None]] = {}
        self._procs: dict[int, _Process] = {}
        # Forgotten processes, oldest first: the last event each had made.  A request
        # of one at or below it is a late copy of an answered event (STALE), never new.
        self._gone: OrderedDict[int, int] = OrderedDict()
        # Each process's latest checkpoint: (its event number, the state it stored).
        self._checkpoints: dict[int, tuple[int, bytes]] = {}
        self._waiter_serial = 0
        self._waiters: dict[tuple[int, int], _Waiter] = {}
        # Waiters by (arity, key of first field) and, for a non-actual first field, by
        # arity alone; each bucket is in arrival order.
        self._waiting_keyed: dict[tuple[int, Any], OrderedDict[tuple[int, int], _Waiter]] = {}
        self._waiting_wild: dict[int, OrderedDict[tuple[int, int], _Waiter]] = {}

    # -- queries ---------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._store)

    @property
    def waiting(self) -> int:
        """How many C{in}/C{rd} operations are waiting."""
        return len(self._waiters)

    @property
    def processes(self) -> int:
        """How many processes the space keeps a log for."""
        return len(self._procs)

    @property
    def sequence(self) -> int:
        """The sequence number the next stored tuple will get, less one."""
        return self._seq

    def tuples(self) -> Iterator[LTuple]:
        """The stored tuples, oldest first."""
        for values, _ in self._store.values():
            yield values

    def is_pending(self, pid: int, event: int) -> bool:
        return (pid, event) in self._waiters

    # -- operations ------------------------------------------------------------------

    def out(self, pid: int, event: int, values: LTuple) -> list[Completion]:
        """
        Store C{values} (a tuple already validated by L{make_tuple}), or hand it to the
        first waiters that match.  Returns the C{out}'s own completion first, then the
        completions of the waiters it satisfied, in the order they were satisfied.
        """
        replay = self._replayed(pid, event)
        if replay is not None:
            return [replay]
        done = Completion(pid, event, Status.STORED)
        self._record(pid, event, done)
        answers = [done]
        keys = tuple_keys(values)
        if self._waiters and self._serve_waiters(values, keys, answers):
            return answers
        self._store_tuple(values, keys)
        return answers

    def take(self, pid: int, event: int, kind: Kind, template: Template) -> Completion:
        """
        Apply a template operation (C{IN}, C{RD}, C{INP}, C{RDP}).  For C{IN}/C{RD} with no
        match the answer is C{PENDING} and the operation waits; it completes later in the
        answers of an L{out} or ends through L{cancel}.
        """
        if kind is Kind.OUT:
            raise ValueError("take() does not apply OUT")
        replay = self._replayed(pid, event)
        if replay is not None:
            return replay
        seq = self._find(template)
        if seq is not None:
            values = self._store[seq][0]
            if kind.removes:
                self._remove(seq)
            done = Completion(pid, event, Status.MATCHED, values)
        elif kind.blocks:
            self._wait(pid, event, kind, template)
            proc = self._process(pid)
            proc.last = max(proc.last, event)
            return Completion(pid, event, Status.PENDING)
        else:
            done = Completion(pid, event, Status.NO_MATCH)
        self._record(pid, event, done)
        return done

    def atomic(self, pid: int, event: int, steps: Sequence[Step]) -> list[Completion]:
        """
        Apply an atomic request: C{steps} as one event of the process, all or none.

        The steps are checked in order against the space as the earlier steps leave it
        (an C{inp} can take a tuple an earlier C{out} of the request stored, and a
        tuple an earlier C{inp} or C{delete} took is no longer there for a later
        step).  If one fails -- an C{inp}, C{rdp} or C{present} step finds no matching
        tuple, an C{absent} step finds one, a C{scan} or C{delete} step matches more
        than L{MAX_SCAN} tuples, or the tuples taken and read so far would together
        encode to more than C{limits.max_size} (the answer could not be sent) --
        nothing is applied and the answer is C{ABORTED}, naming the first step that
        failed and why.  Otherwise every step is applied and the answer is
        C{COMMITTED}, with each step's result.  Matching is as for single operations:
        the oldest matching tuple, stored tuples before those the request stores; a
        C{scan} reads and a C{delete} takes every matching tuple, in that order
        (L{Tuples}, possibly empty).

        The tuples the request stores and leaves in the space go to waiters only once
        the whole request is applied, as the C{out}s of one event in step order: the
        first matching waiters take them as L{out} hands them.  Returns the request's
        own completion first, then those of the waiters it satisfied.  Logged like
        any event: a retry gets the same answer and changes nothing.

        @raise ValueError: if there are no steps, or more than L{MAX_STEPS}.
        """
        if not steps or len(steps) > MAX_STEPS:
            raise ValueError(f"an atomic request has 1 to {MAX_STEPS} steps, not {len(steps)}")
        replay = self._replayed(pid, event)
        if replay is not None:
            return [replay]
        removed: set[int] = set()
        added: list[LTuple | None] = []
        results: list[StepResult] = []
        budget = self.limits.max_size
        failure: tuple[int, AbortReason] | None = None
        for i, step in enumerate(steps):
            op = step.op
            if op is StepOp.OUT:
                assert isinstance(step.arg, tuple)
                added.append(step.arg)
                results.append(None)
                continue
            template = step.template
            if op.lists:
                accept = (lambda s: s not in removed) if removed else None
                seqs = list(self._find_all(template, accept, MAX_SCAN + 1))
                own = [j for j, v in enumerate(added) if v is not None and template.matches(v)]
                if len(seqs) + len(own) > MAX_SCAN:
                    failure = (i, AbortReason.TOO_LARGE)
                    break
                listed = [self._store[s][0] for s in seqs]
                listed += [v for j in own if (v := added[j]) is not None]
                budget -= sum(len(packb(v)) for v in listed)
                if budget < 0:
                    failure = (i, AbortReason.TOO_LARGE)
                    break
                if op is StepOp.DELETE:
                    removed.update(seqs)
                    for j in own:
                        added[j] = None
                results.append(Tuples(tuple(listed)))
                continue
            seq = self._find(template, (lambda s: s not in removed) if removed else None)
            found = None if seq is None else self._store[seq][0]
            mine = -1
            if found is None:
                for j, values in enumerate(added):
                    if values is not None and template.matches(values):
                        found, mine = values, j
                        break
            if op is StepOp.ABSENT:
                if found is not None:
                    failure = (i, AbortReason.MATCHED)
                    break
                results.append(None)
                continue
            if found is None:
                failure = (i, AbortReason.NO_MATCH)
                break
            if op is StepOp.PRESENT:
                results.append(None)
                continue
            budget -= len(packb(found))
            if budget < 0:
                failure = (i, AbortReason.TOO_LARGE)
                break
            if op is StepOp.INP:
                if seq is not None:
                    removed.add(seq)
                else:
                    added[mine] = None
            results.append(found)
        if failure is not None:
            done = Completion(pid, event, Status.ABORTED, aborted=failure)
            self._record(pid, event, done)
            return [done]
        for seq in removed:
            self._remove(seq)
        done = Completion(pid, event, Status.COMMITTED, results=tuple(results))
        self._record(pid, event, done)
        answers = [done]
        for values in added:
            if values is None:
                continue
            keys = tuple_keys(values)
            if not (self._waiters and self._serve_waiters(values, keys, answers)):
                self._store_tuple(values, keys)
        return answers

    # -- for a replica: local matching, claims applied in the total order -----------------

    def find(
        self, template: Template, accept: Callable[[int], bool] | None = None
    ) -> tuple[int, LTuple] | None:
        """
        The oldest stored tuple matching C{template} (and whose sequence number
        C{accept}s, if given), with its sequence number, changing nothing.  A replica
        matches locally with this, then claims the tuple through the total order
        (L{claim}).
        """
        seq = self._find(template, accept)
        return None if seq is None else (seq, self._store[seq][0])

    def stored(self, seq: int) -> LTuple | None:
        """The stored tuple number C{seq}, if it is still stored."""
        entry = self._store.get(seq)
        return None if entry is None else entry[0]

    def answered(self, pid: int, event: int) -> Completion | None:
        """The logged answer to C{(pid, event)}, if the space has one (a retry's answer)."""
        proc = self._procs.get(pid)
        if proc is None:
            return self._late(pid, event)
        done = proc.log.get(event)
        if done is None and event <= proc.floor:
            return Completion(pid, event, Status.STALE)
        return done

    def claim(self, pid: int, event: int, kind: Kind, seq: int) -> Completion | None:
        """
        Apply a claim of the stored tuple number C{seq} by a template operation of kind
        C{kind} (IN/INP remove it, RD/RDP read it).  The claim wins if the tuple is still
        there: the answer is logged and returned.  It loses (C{None}, nothing changes) if
        an earlier claim took the tuple; its origin then matches again with the same
        event.  A claim of an event already answered returns that answer.
        """
        if kind is Kind.OUT:
            raise ValueError("claim() applies template operations only")
        done = self.answered(pid, event)
        if done is not None and done.status is not Status.CANCELLED:
            return done
        entry = self._store.get(seq)
        if entry is None:
            return None
        values = entry[0]
        if kind.removes:
            self._remove(seq)
        done = Completion(pid, event, Status.MATCHED, values)
        self._record(pid, event, done)
        return done

    def cancel(self, pid: int, event: int) -> Completion | None:
        """
        Withdraw the waiting operation C{(pid, event)}.  Returns its C{CANCELLED}
        completion, or C{None} if it was not waiting (it already completed, or never
        existed).
        """
        w = self._waiters.pop((pid, event), None)
        if w is None:
            return None
        self._unlink_waiter(w)
        done = Completion(pid, event, Status.CANCELLED)
        self._record(pid, event, done)
        return done

    def decide(self, pid: int, event: int, status: Status) -> Completion:
        """
        End the operation C{(pid, event)} with C{status} (L{Status.TIMED_OUT},
        L{Status.WITHDRAWN}, or L{Status.NO_MATCH} for an C{inp}/C{rdp} that found
        nothing) unless it has an answer already, which is then returned and stands.
        A waiting operation here stops waiting.  The decision is logged like any
        answer, so a retry of the event gets it again and a claim for the event that
        comes later takes nothing.  A replica applies it in the total order,
        so a timeout and a claim of the same event are decided alike everywhere.
        """
        if status not in (Status.TIMED_OUT, Status.WITHDRAWN, Status.NO_MATCH):
            raise ValueError(
                f"decide() ends an operation as timed out, withdrawn or unmatched, not {status}"
            )
        done = self.answered(pid, event)
        if done is not None and done.status is not Status.CANCELLED:
            return done
        w = self._waiters.pop((pid, event), None)
        if w is not None:
            self._unlink_waiter(w)
        done = Completion(pid, event, status)
        self._record(pid, event, done)
        return done

    def withdraw(self, pid: int, event: int, status: Status) -> Completion | None:
        """
        End the waiting operation C{(pid, event)}: L{cancel} it for C{CANCELLED} (its
        connection is gone), L{decide} it otherwise.  C{None} if it is not waiting.
        """
        if not self.is_pending(pid, event):
            return None
        if status is Status.CANCELLED:
            return self.cancel(pid, event)
        return self.decide(pid, event, status)

    def forget(self, pid: int, unless_after: int | None = None) -> list[Completion]:
        """
        Drop everything the space remembers of process C{pid}: its log, its checkpoint
        and its waiting operations (which are returned as cancelled).  For a process
        that said goodbye: it will never retry an event nor recover.  With
        C{unless_after}, only if the process made no event after that one (a process
        that vanished is forgotten, one that came back and went on is not).

        The last event the process made is remembered (for the L{GONE_LIMIT} processes
        forgotten last, in snapshots too): a late copy of one of its requests, at or
        below that event, is answered C{STALE} instead of being applied a second time.
        An event above it (a vanished process that comes back after all) is applied.
        """
        if unless_after is not None:
            proc = self._procs.get(pid)
            if proc is None or proc.last > unless_after:
                return []
        self._checkpoints.pop(pid, None)
        cancelled = [
            c
            for (p, e) in [k for k in self._waiters if k[0] == pid]
            if (c := self.cancel(p, e)) is not None
        ]
        proc = self._procs.pop(pid, None)
        if proc is not None and proc.last >= 0:
            gone = self._gone
            gone[pid] = max(proc.last, gone.pop(pid, -1))
            while len(gone) > GONE_LIMIT:
                gone.popitem(last=False)
        return cancelled

    @property
    def forgotten(self) -> int:
        """How many forgotten processes the space remembers the last event of."""
        return len(self._gone)

    def checkpoint(self, pid: int, event: int, state: bytes) -> Completion:
        """
        Process C{pid}'s checkpoint, as its event C{event}: C{state} replaces its
        previous one, and its logged answers of earlier events are discarded (a process
        restarted from this checkpoint continues after C{event}, and never asks for
        them again).  A repeated event gets its first answer and changes nothing.
        """
        replay = self._replayed(pid, event)
        if replay is not None:
            return replay
        previous = self._checkpoints.get(pid)
        if previous is None or previous[0] < event:
            self._checkpoints[pid] = (event, state)
            self.trim(pid, event - 1)
        done = Completion(pid, event, Status.STORED)
        self._record(pid, event, done)
        return done

    def recovered(self, pid: int) -> tuple[int, bytes] | None:
        """Process C{pid}'s latest checkpoint: its event number and state, if it has one."""
        return self._checkpoints.get(pid)

    def trim(self, pid: int, upto: int) -> None:
        """Forget the logged answers of process C{pid} for events up to C{upto}."""
        proc = self._procs.get(pid)
        if proc is None:
            return
        log = proc.log
        # The log is in the order answers were given, not in event order: a waiter can
        # be answered after later events of its process.
        for event in [e for e in log if e <= upto]:
            del log[event]
        proc.floor = max(proc.floor, upto)

    # -- internals -------------------------------------------------------------------

    def _process(self, pid: int) -> _Process:
        proc = self._procs.get(pid)
        if proc is None:
            proc = self._procs[pid] = _Process()
        return proc

    def _late(self, pid: int, event: int) -> Completion | None:
        """
        C{STALE} for an event of a forgotten process at or below the last it made: a
        copy of an answered request that arrives late (it waited in a paused server's
        socket while its client went elsewhere and then said goodbye), which applied
        afresh would store or take a second time.
        """
        last = self._gone.get(pid)
        if last is not None and event <= last:
            return Completion(pid, event, Status.STALE)
        return None

    def _replayed(self, pid: int, event: int) -> Completion | None:
        proc = self._procs.get(pid)
        if proc is None:
            return self._late(pid, event)
        if event > proc.last:
            return None
        if (pid, event) in self._waiters:
            # Checked first: a withdrawn operation applied afresh may be waiting again.
            return Completion(pid, event, Status.PENDING)
        done = proc.log.get(event)
        if done is not None:
            # A withdrawn operation had no effect on the space, so a retry of it (the
            # client reconnected and sent it again) is applied afresh.
            return done if done.status is not Status.CANCELLED else None
        if event <= proc.floor:
            return Completion(pid, event, Status.STALE)
        # Applied but never answered: it was waiting when its server's waiters were lost
        # (a restore from a snapshot, which holds no waiters).  It had no effect yet.
        return None

    def _record(self, pid: int, event: int, done: Completion) -> None:
        proc = self._process(pid)
        proc.last = max(proc.last, event)
        log = proc.log
        log[event] = done
        if len(log) > self.log_limit:
            proc.drop_oldest()

    def _store_tuple(self, values: LTuple, keys: tuple[Any, ...]) -> None:
        self._seq += 1
        seq = self._seq
        arity = len(values)
        self._store[seq] = (values, keys)
        bucket = self._by_arity.get(arity)
        if bucket is None:
            bucket = self._by_arity[arity] = {}
        bucket[seq] = None
        by_field = self._by_field
        for pos, key in enumerate(keys):
            fk = (arity, pos, key)
            bucket = by_field.get(fk)
            if bucket is None:
                bucket = by_field[fk] = {}
            bucket[seq] = None

    def _remove(self, seq: int) -> None:
        values, keys = self._store.pop(seq)
        arity = len(values)
        bucket = self._by_arity[arity]
        del bucket[seq]
        if not bucket:
            del self._by_arity[arity]
        by_field = self._by_field
        for pos, key in enumerate(keys):
            fk = (arity, pos, key)
            bucket = by_field[fk]
            del bucket[seq]
            if not bucket:
                del by_field[fk]

    def _find(self, template: Template, accept: Callable[[int], bool] | None = None) -> int | None:
        arity = template.arity
        best: dict[int, None] | None = None
        for pos, key in template.index_keys:
            bucket = self._by_field.get((arity, pos, key))
            if bucket is None:
                return None
            if best is None or len(bucket) < len(best):
                best = bucket
        if best is None:
            best = self._by_arity.get(arity)
            if best is None:
                return None
        store = self._store
        for seq in best:
            values, keys = store[seq]
            if template.matches(values, keys) and (accept is None or accept(seq)):
                return seq
        return None

    def _find_all(
        self, template: Template, accept: Callable[[int], bool] | None, limit: int
    ) -> Iterator[int]:
        """The sequence numbers of up to C{limit} matching tuples, oldest first."""
        arity = template.arity
        best: dict[int, None] | None = None
        for pos, key in template.index_keys:
            bucket = self._by_field.get((arity, pos, key))
            if bucket is None:
                return
            if best is None or len(bucket) < len(best):
                best = bucket
        if best is None:
            best = self._by_arity.get(arity)
            if best is None:
                return
        store = self._store
        for seq in best:
            if limit <= 0:
                return
            values, keys = store[seq]
            if template.matches(values, keys) and (accept is None or accept(seq)):
                limit -= 1
                yield seq

    def _wait(self, pid: int, event: int, kind: Kind, template: Template) -> None:
        self._waiter_serial += 1
        w = _Waiter(self._waiter_serial, pid, event, kind, template)
        self._waiters[(pid, event)] = w
        bucket = self._waiter_bucket(w, create=True)
        assert bucket is not None
        bucket[(pid, event)] = w

    def _waiter_bucket(
        self, w: _Waiter, create: bool = False
    ) -> OrderedDict[tuple[int, int], _Waiter] | None:
        t = w.template
        first = t.index_keys[0] if t.index_keys else None
        bucket: OrderedDict[tuple[int, int], _Waiter] | None
        if first is not None and first[0] == 0:
            k = (t.arity, first[1])
            bucket = self._waiting_keyed.get(k)
            if bucket is None and create:
                bucket = self._waiting_keyed[k] = OrderedDict()
        else:
            bucket = self._waiting_wild.get(t.arity)
            if bucket is None and create:
                bucket = self._waiting_wild[t.arity] = OrderedDict()
        return bucket

    def _unlink_waiter(self, w: _Waiter) -> None:
        bucket = self._waiter_bucket(w)
        assert bucket is not None
        del bucket[(w.pid, w.event)]
        if not bucket:
            t = w.template
            if t.index_keys and t.index_keys[0][0] == 0:
                del self._waiting_keyed[(t.arity, t.index_keys[0][1])]
            else:
                del self._waiting_wild[t.arity]

    def _serve_waiters(
        self, values: LTuple, keys: tuple[Any, ...], answers: list[Completion]
    ) -> bool:
        """
        Hand a new tuple to matching waiters in arrival order: every C{rd} on the way
        gets it; the first C{in} takes it.  Returns whether it was taken.
        """
        arity = len(values)
        keyed = self._waiting_keyed.get((arity, keys[0]))
        wild = self._waiting_wild.get(arity)
        if keyed is None and wild is None:
            return False
        if keyed is None or wild is None:
            candidates: Any = list((keyed or wild).values())  # type: ignore[union-attr]
        else:
            candidates = heapq.merge(
                list(keyed.values()), list(wild.values()), key=lambda w: w.serial
            )
        for w in candidates:
            if not w.template.matches(values, keys):
                continue
            del self._waiters[(w.pid, w.event)]
            self._unlink_waiter(w)
            done = Completion(w.pid, w.event, Status.MATCHED, values)
            self._record(w.pid, w.event, done)
            answers.append(done)
            if w.kind.removes:
                return True
        return False

    # -- snapshots -------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """
        The replicated state, canonically encoded: the sequence counter, the stored
        tuples with their sequence numbers, and every process's last event and logged
        answers.  Waiting operations are not part of it: they belong to the live
        connection that made them and are re-sent by their client.
        """
        procs = [
            [pid, p.last, p.floor, [[e, int(c.status), *_logged(c)] for e, c in p.log.items()]]
            for pid, p in sorted(self._procs.items())
        ]
        body = [
            _SNAPSHOT_VERSION,
            self._seq,
            [[seq, values] for seq, (values, _) in self._store.items()],
            procs,
            [[pid, e, state] for pid, (e, state) in sorted(self._checkpoints.items())],
            [[pid, last] for pid, last in self._gone.items()],
        ]
        return packb(body)

    def digest(self) -> str:
        """A SHA-256 hex digest of L{snapshot}: equal on replicas with equal state."""
        return hashlib.sha256(self.snapshot()).hexdigest()

    @classmethod
    def restore(
        cls, data: bytes, limits: Limits = DEFAULT_LIMITS, log_limit: int = 4096
    ) -> TupleSpace:
        """
        Build a space from a L{snapshot}.

        @raise SnapshotError: if C{data} is not a valid snapshot.
        """
        steps = cls.restoring(data, limits, log_limit)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                space: TupleSpace = done.value
                return space

    @classmethod
    def restoring(
        cls,
        data: bytes,
        limits: Limits = DEFAULT_LIMITS,
        log_limit: int = 4096,
        chunk: int = 1000,
    ) -> Generator[None, None, TupleSpace]:
        """
        L{restore} in steps: a generator that yields after every C{chunk} tuples and
        processes, and returns the space.  A server restoring a large snapshot runs it
        a step at a time, between its other work (its ring's token, say).

        @raise SnapshotError: from the generator, if C{data} is not a valid snapshot.
        """
        try:
            body = unpackb(data)
            if type(body) is not tuple or not body or body[0] not in (2, 3, _SNAPSHOT_VERSION):
                version = body[0] if type(body) is tuple and body else body
                raise SnapshotError(f"unsupported snapshot version {version!r}")
            # Version 2 had no checkpoints, version 3 no forgotten processes.
            padded = {2: (*body, (), ()), 3: (*body, ())}.get(body[0], body)
            version, seq, stored, procs, checkpoints, gone = padded
            space = cls(limits, log_limit)
            for pid, last in gone:
                if type(pid) is not int or type(last) is not int:
                    raise SnapshotError(f"forgotten process entry {pid!r} is malformed")
                space._gone[pid] = last
            for pid, e, state in checkpoints:
                if type(pid) is not int or type(e) is not int or type(state) is not bytes:
                    raise SnapshotError(f"checkpoint entry {pid!r} is malformed")
                space._checkpoints[pid] = (e, state)
            last_seq = 0
            for n, (s, values) in enumerate(stored, 1):
                if type(s) is not int or s <= last_seq or s > seq:
                    raise SnapshotError(f"tuple sequence number {s!r} out of order")
                last_seq = s
                space._seq = s - 1
                space._store_tuple(make_tuple(values, limits), tuple_keys(values))
                if n % chunk == 0:
                    yield
            space._seq = seq
            for n, (pid, last, floor, log) in enumerate(procs, 1):
                if not all(type(x) is int for x in (pid, last, floor)):
                    raise SnapshotError(f"process entry {pid!r} is malformed")
                proc = space._process(pid)
                proc.last = last
                proc.floor = floor
                for e, status, value, *lists in log:
                    proc.log[e] = _completion(pid, e, Status(status), value, lists)
                while len(proc.log) > log_limit:
                    proc.drop_oldest()
                if n % chunk == 0:
                    yield
        except SnapshotError:
            raise
        except (ValueError, TypeError, TupleError) as e:
            raise SnapshotError(f"malformed snapshot: {e}") from e
        return space


def _logged(c: Completion) -> list[Any]:
    """
    What a snapshot keeps of a logged answer, after its event and status: its value;
    for a committed atomic request, its results, C{nil} for a C{scan} or C{delete}
    step, followed (if it has such steps) by their tuples as C{[[step, [tuple, ...]],
    ...]}, as COMMITTED carries them (a snapshot without them reads as before).
    """
    if c.status is Status.COMMITTED:
        assert c.results is not None
        plain = [None if type(r) is Tuples else r for r in c.results]
        lists = [[i, list(r.tuples)] for i, r in enumerate(c.results) if type(r) is Tuples]
        return [plain, lists] if lists else [plain]
    if c.status is Status.ABORTED:
        assert c.aborted is not None
        return [[c.aborted[0], int(c.aborted[1])]]
    return [c.value]


def _completion(
    pid: int, event: int, status: Status, value: Any, extra: Sequence[Any] = ()
) -> Completion:
    """A logged answer from a snapshot (the inverse of L{_logged})."""
    malformed = SnapshotError(f"the answer to event {event} of process {pid} is malformed")
    if extra and (status is not Status.COMMITTED or len(extra) != 1):
        raise malformed
    if status is Status.COMMITTED:
        if type(value) is not tuple or not all(v is None or type(v) is tuple for v in value):
            raise malformed
        results: list[StepResult] = list(value)
        last = -1
        for pair in extra[0] if extra else ():
            if type(pair) is not tuple or len(pair) != 2 or type(pair[1]) is not tuple:
                raise malformed
            i, tuples = pair
            if type(i) is not int or not last < i < len(results) or results[i] is not None:
                raise malformed
            if not all(type(t) is tuple for t in tuples):
                raise malformed
            results[i] = Tuples(tuples)
            last = i
        if extra and last < 0:
            raise malformed
        return Completion(pid, event, status, results=tuple(results))
    if status is Status.ABORTED:
        if type(value) is not tuple or len(value) != 2 or type(value[0]) is not int:
            raise SnapshotError(f"the answer to event {event} of process {pid} is malformed")
        return Completion(pid, event, status, aborted=(value[0], AbortReason(value[1])))
    return Completion(pid, event, status, value)
