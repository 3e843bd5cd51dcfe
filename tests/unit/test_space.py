"""
Tests for L{lips.space}: the deterministic tuple space, checked by examples and against
a naive reference model.
"""

from __future__ import annotations

import contextlib
import random
from typing import Any

import attrs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from twisted.trial.unittest import SynchronousTestCase

from lips.space import Completion, Kind, SnapshotError, Status, TupleSpace
from lips.space import _space as space_module
from lips.tuples import (
    ANY,
    FORMAL_TYPES,
    MAX_SCAN,
    MAX_STEPS,
    AbortReason,
    Limits,
    LTuple,
    Step,
    StepOp,
    StepResult,
    Template,
    Tuples,
    make_template,
    make_tuple,
    packb,
    unpackb,
)
from tests.unit.test_tuples import PROPERTIES, naive_match, strict_equal

TAKES = (Kind.IN, Kind.RD, Kind.INP, Kind.RDP)


def t(*fields: Any) -> Template:
    return make_template(fields)


def done(pid: int, event: int, status: Status, value: LTuple | None = None) -> Completion:
    return Completion(pid, event, status, value)


# -- the naive reference model ------------------------------------------------------


@attrs.define
class _ModelWaiter:
    pid: int
    event: int
    kind: Kind
    fields: tuple[Any, ...]


@attrs.define
class _ModelProcess:
    last: int = -1
    floor: int = -1
    log: dict[int, Completion] = attrs.Factory(dict)


class ModelSpace:
    """
    The tuple space as its documentation describes it, as plainly as possible: stored
    tuples in a list scanned from the oldest, waiters in a list in arrival order,
    matching by L{naive_match}, and per process a dict of answers (in the order they
    were given) of which only the last C{log_limit} are remembered; a retry of an event
    missing from it is STALE if its answer was dropped (at or below the highest dropped
    event), and otherwise applied, since it never completed.
    """

    def __init__(self, log_limit: int) -> None:
        self.log_limit = log_limit
        self.seq = 0
        self.stored: list[tuple[int, LTuple]] = []
        self.waiters: list[_ModelWaiter] = []
        self.procs: dict[int, _ModelProcess] = {}
        # Forgotten processes and the last event each made (fewer than GONE_LIMIT here).
        self.gone: dict[int, int] = {}

    def _pending(self, pid: int, event: int) -> _ModelWaiter | None:
        for w in self.waiters:
            if (w.pid, w.event) == (pid, event):
                return w
        return None

    def _replayed(self, pid: int, event: int) -> Completion | None:
        """The answer to a retry, or None if the operation is to be applied."""
        proc = self.procs.get(pid)
        if proc is None:
            # A late copy of a forgotten process's answered event is STALE.
            gone = self.gone.get(pid)
            return done(pid, event, Status.STALE) if gone is not None and event <= gone else None
        if event > proc.last:
            return None
        if self._pending(pid, event) is not None:
            return done(pid, event, Status.PENDING)
        answer = proc.log.get(event)
        if answer is None:
            return done(pid, event, Status.STALE) if event <= proc.floor else None
        if answer.status is Status.CANCELLED:
            return None
        return answer

    def _record(self, answer: Completion) -> None:
        proc = self.procs.setdefault(answer.pid, _ModelProcess())
        proc.last = max(proc.last, answer.event)
        proc.log[answer.event] = answer
        if len(proc.log) > self.log_limit:
            dropped = next(iter(proc.log))
            del proc.log[dropped]
            proc.floor = max(proc.floor, dropped)

    def out(self, pid: int, event: int, values: LTuple) -> list[Completion]:
        replay = self._replayed(pid, event)
        if replay is not None:
            return [replay]
        answers = [done(pid, event, Status.STORED)]
        self._record(answers[0])
        for w in list(self.waiters):
            if naive_match(w.fields, values):
                self.waiters.remove(w)
                answers.append(done(w.pid, w.event, Status.MATCHED, values))
                self._record(answers[-1])
                if w.kind in (Kind.IN, Kind.INP):
                    return answers
        self.seq += 1
        self.stored.append((self.seq, values))
        return answers

    def take(self, pid: int, event: int, kind: Kind, fields: tuple[Any, ...]) -> Completion:
        replay = self._replayed(pid, event)
        if replay is not None:
            return replay
        for i, (_, values) in enumerate(self.stored):
            if naive_match(fields, values):
                if kind in (Kind.IN, Kind.INP):
                    del self.stored[i]
                answer = done(pid, event, Status.MATCHED, values)
                break
        else:
            if kind in (Kind.IN, Kind.RD):
                self.waiters.append(_ModelWaiter(pid, event, kind, fields))
                proc = self.procs.setdefault(pid, _ModelProcess())
                proc.last = max(proc.last, event)
                return done(pid, event, Status.PENDING)
            answer = done(pid, event, Status.NO_MATCH)
        self._record(answer)
        return answer

    def cancel(self, pid: int, event: int) -> Completion | None:
        w = self._pending(pid, event)
        if w is None:
            return None
        self.waiters.remove(w)
        answer = done(pid, event, Status.CANCELLED)
        self._record(answer)
        return answer

    def forget(self, pid: int) -> list[Completion]:
        mine = [w for w in self.waiters if w.pid == pid]
        answers = [a for w in mine if (a := self.cancel(w.pid, w.event)) is not None]
        proc = self.procs.pop(pid, None)
        if proc is not None and proc.last >= 0:
            self.gone[pid] = max(proc.last, self.gone.pop(pid, -1))
        return answers

    def trim(self, pid: int, upto: int) -> None:
        proc = self.procs.get(pid)
        if proc is not None:
            proc.log = {e: a for e, a in proc.log.items() if e > upto}
            proc.floor = max(proc.floor, upto)

    def snapshot_body(self) -> tuple[Any, ...]:
        """What the space's snapshot must decode to, after its version number."""
        return (
            self.seq,
            tuple((seq, values) for seq, values in self.stored),
            tuple(
                (
                    pid,
                    p.last,
                    p.floor,
                    tuple((e, int(a.status), a.value) for e, a in p.log.items()),
                )
                for pid, p in sorted(self.procs.items())
            ),
            (),  # checkpoints: the model makes none
            tuple((pid, last) for pid, last in self.gone.items()),
        )


# -- operations, for the model and for random sequences -----------------------------

#: A small alphabet, so that random templates often match random tuples.
SMALL: list[Any] = [0, 1, True, False, 1.0, 0.0, -0.0, float("nan"), "a", b"a", None, (0,), ()]
PATTERNS: list[Any] = [*SMALL, *FORMAL_TYPES, *FORMAL_TYPES, ANY, ANY, ANY, (int,), (ANY,)]

small_tuples = st.lists(st.sampled_from(SMALL), min_size=1, max_size=3).map(tuple)
small_templates = st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=3).map(tuple)
pids = st.integers(1, 2)
# How far back from the process's next event an operation's event is: mostly 0 (a new
# event), sometimes a retry of an earlier one, sometimes -1 (skipping an event).
backs = st.one_of(st.just(0), st.integers(-1, 3))


def same_completion(a: Completion | None, b: Completion | None) -> bool:
    """Completions equal under strict matching (Completion's own == says 1 == True)."""
    if a is None or b is None:
        return a is b
    return (a.pid, a.event, a.status) == (b.pid, b.event, b.status) and strict_equal(
        a.value, b.value
    )


def same_completions(a: list[Completion], b: list[Completion]) -> bool:
    return len(a) == len(b) and all(same_completion(x, y) for x, y in zip(a, b, strict=True))


Op = tuple[Any, ...]


def random_op(rng: random.Random, next_event: dict[int, int]) -> Op:
    """One random operation, with a plausible mix of new events, retries and skips."""
    pid = rng.randint(1, 3)
    back = 0 if rng.random() < 0.6 else rng.randint(-1, 5)
    event = max(1, next_event.get(pid, 0) + 1 - back)
    next_event[pid] = max(next_event.get(pid, 0), event)
    roll = rng.random()
    if roll < 0.4:
        size = rng.randint(1, 3)
        return ("out", pid, event, tuple(rng.choice(SMALL) for _ in range(size)))
    if roll < 0.8:
        size = rng.randint(1, 3)
        fields = tuple(rng.choice(PATTERNS) for _ in range(size))
        return ("take", pid, event, rng.choice(TAKES), fields)
    if roll < 0.93:
        return ("cancel", pid, max(1, next_event[pid] - rng.randint(0, 3)))
    if roll < 0.97:
        return ("trim", pid, next_event[pid] - rng.randint(0, 4))
    return ("forget", pid)


def random_ops(seed: int, count: int) -> list[Op]:
    rng = random.Random(seed)
    next_event: dict[int, int] = {}
    return [random_op(rng, next_event) for _ in range(count)]


def apply(space: TupleSpace, op: Op) -> Any:
    """Apply C{op} to C{space}; return its answer(s)."""
    name = op[0]
    if name == "out":
        return space.out(op[1], op[2], make_tuple(op[3]))
    if name == "take":
        return [space.take(op[1], op[2], op[3], make_template(op[4]))]
    if name == "cancel":
        return [space.cancel(op[1], op[2])]
    if name == "trim":
        space.trim(op[1], op[2])
        return []
    return space.forget(op[1])


def cancel_all(space: TupleSpace, ops: list[Op]) -> None:
    """Withdraw every operation of C{ops} still waiting in C{space}."""
    for op in ops:
        if op[0] == "take":
            space.cancel(op[1], op[2])


# -- the model-based test -----------------------------------------------------------


class SpaceMachine(RuleBasedStateMachine):
    """Runs L{TupleSpace} and L{ModelSpace} side by side and compares everything."""

    LOG_LIMIT = 4

    def __init__(self) -> None:
        super().__init__()
        self.space = TupleSpace(log_limit=self.LOG_LIMIT)
        self.model = ModelSpace(self.LOG_LIMIT)
        self.next_event: dict[int, int] = {}
        self.takes: list[tuple[int, int]] = []

    def event_for(self, pid: int, back: int) -> int:
        event = max(1, self.next_event.get(pid, 0) + 1 - back)
        self.next_event[pid] = max(self.next_event.get(pid, 0), event)
        return event

    def check(self, got: Any, expected: Any, what: str) -> None:
        if isinstance(expected, list):
            ok = same_completions(got, expected)
        else:
            ok = same_completion(got, expected)
        assert ok, f"{what}: space answered {got!r}, the model {expected!r}"

    @rule(pid=pids, back=backs, values=small_tuples)
    def out(self, pid: int, back: int, values: LTuple) -> None:
        event = self.event_for(pid, back)
        got = self.space.out(pid, event, make_tuple(values))
        self.check(got, self.model.out(pid, event, values), f"out{values!r}")

    @rule(pid=pids, back=backs, kind=st.sampled_from(TAKES), fields=small_templates)
    def take(self, pid: int, back: int, kind: Kind, fields: tuple[Any, ...]) -> None:
        self.retake(pid, self.event_for(pid, back), kind, fields)

    @precondition(lambda self: self.takes)
    @rule(which=st.integers(0, 3), kind=st.sampled_from(TAKES), fields=small_templates)
    def retry_take(self, which: int, kind: Kind, fields: tuple[Any, ...]) -> None:
        """The same event as a recent take again (with the same or another template)."""
        pid, event = self.takes[-1 - which % len(self.takes)]
        self.retake(pid, event, kind, fields)

    def retake(self, pid: int, event: int, kind: Kind, fields: tuple[Any, ...]) -> None:
        self.takes = [*self.takes[-3:], (pid, event)]
        got = self.space.take(pid, event, kind, make_template(fields))
        self.check(got, self.model.take(pid, event, kind, fields), f"{kind.name}{fields!r}")

    @precondition(lambda self: self.model.waiters)
    @rule(which=st.integers(0, 20))
    def cancel_waiter(self, which: int) -> None:
        w = self.model.waiters[which % len(self.model.waiters)]
        got = self.space.cancel(w.pid, w.event)
        self.check(got, self.model.cancel(w.pid, w.event), "cancel")

    @rule(pid=pids, event=st.integers(0, 12))
    def cancel(self, pid: int, event: int) -> None:
        got = self.space.cancel(pid, event)
        self.check(got, self.model.cancel(pid, event), "cancel")

    @rule(pid=pids, back=st.integers(-1, 3))
    def trim(self, pid: int, back: int) -> None:
        upto = self.next_event.get(pid, 0) - back
        self.space.trim(pid, upto)
        self.model.trim(pid, upto)

    @rule(pid=pids)
    def forget(self, pid: int) -> None:
        self.check(self.space.forget(pid), self.model.forget(pid), "forget")

    @precondition(lambda self: not self.model.waiters)
    @rule()
    def restore(self) -> None:
        """With no waiters, a space restored from a snapshot replaces the live one."""
        before = self.space.digest()
        self.space = TupleSpace.restore(self.space.snapshot(), log_limit=self.LOG_LIMIT)
        assert self.space.digest() == before

    @invariant()
    def same_state(self) -> None:
        space, model = self.space, self.model
        stored = tuple(values for _, values in model.stored)
        assert strict_equal(tuple(space.tuples()), stored), (tuple(space.tuples()), stored)
        assert len(space) == len(model.stored)
        assert space.sequence == model.seq
        assert space.waiting == len(model.waiters)
        assert space.processes == len(model.procs)
        for w in model.waiters:
            assert space.is_pending(w.pid, w.event), w
        body = unpackb(space.snapshot())
        assert strict_equal(body[1:], model.snapshot_body()), (body[1:], model.snapshot_body())


SpaceMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


class SpaceModelTests(SynchronousTestCase):
    """L{TupleSpace} behaves as the naive L{ModelSpace}, step by step."""

    def test_against_model(self) -> None:
        """
        For random sequences of out, in, rd, inp, rdp (new events, retries and skipped
        events), cancel, trim, forget and snapshot/restore, every answer and the whole
        state after every step equal the naive model's.
        """
        run_state_machine_as_test(SpaceMachine, settings=SpaceMachine.TestCase.settings)


class DeterminismTests(SynchronousTestCase):
    """The same operations in the same order give the same state (replicas agree)."""

    @PROPERTIES
    @given(seed=st.integers(0, 2**32 - 1), count=st.integers(1, 150))
    def test_same_operations_same_digest(self, seed: int, count: int) -> None:
        """
        Two spaces fed the same random operation sequence give strictly equal answers
        and have equal digests after every step.
        """
        a, b = TupleSpace(log_limit=8), TupleSpace(log_limit=8)
        for op in random_ops(seed, count):
            got_a, got_b = apply(a, op), apply(b, op)
            self.assertTrue(
                same_completions(got_a, got_b), f"seed {seed}: {op!r}: {got_a} {got_b}"
            )
            self.assertEqual(a.digest(), b.digest(), f"seed {seed}: {op!r}")
        self.assertEqual(a.snapshot(), b.snapshot())

    @PROPERTIES
    @given(
        seed=st.integers(0, 2**32 - 1),
        prefix=st.integers(0, 100),
        suffix=st.integers(1, 60),
    )
    def test_restore_round_trip(self, seed: int, prefix: int, suffix: int) -> None:
        """
        A space restored from a snapshot has the same digest and snapshot, and then
        answers the same operations exactly as the original does.
        """
        ops = random_ops(seed, prefix + suffix)
        original = TupleSpace(log_limit=8)
        for op in ops[:prefix]:
            apply(original, op)
        # Waiting operations are not replicated state: withdraw them first.
        cancel_all(original, ops[:prefix])
        snapshot = original.snapshot()
        restored = TupleSpace.restore(snapshot, log_limit=8)
        self.assertEqual(restored.snapshot(), snapshot)
        self.assertEqual(restored.digest(), original.digest())
        for op in ops[prefix:]:
            got_o, got_r = apply(original, op), apply(restored, op)
            self.assertTrue(
                same_completions(got_o, got_r), f"seed {seed}: {op!r}: {got_o} {got_r}"
            )
            self.assertEqual(original.digest(), restored.digest(), f"seed {seed}: {op!r}")
            self.assertEqual(original.waiting, restored.waiting)

    @PROPERTIES
    @given(seed=st.integers(0, 2**32 - 1), count=st.integers(1, 100))
    def test_digest_ignores_waiters(self, seed: int, count: int) -> None:
        """A snapshot leaves waiting operations out, so a restored space has none."""
        original = TupleSpace(log_limit=8)
        for op in random_ops(seed, count):
            apply(original, op)
        restored = TupleSpace.restore(original.snapshot(), log_limit=8)
        self.assertEqual(restored.digest(), original.digest())
        self.assertEqual(restored.waiting, 0)
        self.assertTrue(strict_equal(list(restored.tuples()), list(original.tuples())))


# -- examples -----------------------------------------------------------------------


class OperationTests(SynchronousTestCase):
    """The Linda operations, one by one."""

    def setUp(self) -> None:
        self.space = TupleSpace()

    def test_out_stores(self) -> None:
        """out answers STORED and stores the tuple with the next sequence number."""
        self.assertEqual(self.space.out(1, 1, ("a", 1)), [done(1, 1, Status.STORED)])
        self.assertEqual(list(self.space.tuples()), [("a", 1)])
        self.assertEqual((len(self.space), self.space.sequence), (1, 1))

    def test_inp_removes_rdp_reads(self) -> None:
        """rdp answers a match and leaves it; inp answers it and removes it."""
        self.space.out(1, 1, ("a", 1))
        self.assertEqual(
            self.space.take(2, 1, Kind.RDP, t("a", int)), done(2, 1, Status.MATCHED, ("a", 1))
        )
        self.assertEqual(len(self.space), 1)
        self.assertEqual(
            self.space.take(2, 2, Kind.INP, t(str, 1)), done(2, 2, Status.MATCHED, ("a", 1))
        )
        self.assertEqual(len(self.space), 0)

    def test_no_match(self) -> None:
        """inp and rdp answer NO_MATCH when nothing matches, and nothing waits."""
        self.space.out(1, 1, ("a", 1))
        for event, kind in enumerate((Kind.INP, Kind.RDP), 1):
            self.assertEqual(
                self.space.take(2, event, kind, t("a", float)), done(2, event, Status.NO_MATCH)
            )
        self.assertEqual((len(self.space), self.space.waiting), (1, 0))

    def test_oldest_match_chosen(self) -> None:
        """Among matching tuples, the oldest stored one is chosen."""
        for i, values in enumerate([("a", 1), ("b", 2), ("a", 3), ("a", 4)], 1):
            self.space.out(1, i, values)
        c = self.space.take(2, 1, Kind.IN, t("a", int))
        self.assertEqual(c.value, ("a", 1))
        c = self.space.take(2, 2, Kind.RD, t(ANY, int))
        self.assertEqual(c.value, ("b", 2))
        c = self.space.take(2, 3, Kind.IN, t(str, int))
        self.assertEqual(c.value, ("b", 2))
        c = self.space.take(2, 4, Kind.IN, t(ANY, ANY))
        self.assertEqual(c.value, ("a", 3))

    def test_strict_matching_in_space(self) -> None:
        """The space matches strictly: True is not 1, 1 is not 1.0, -0.0 is not 0.0."""
        for i, values in enumerate([(True,), (1.0,), (-0.0,), (1,), (0.0,)], 1):
            self.space.out(1, i, values)
        self.assertIs(self.space.take(2, 1, Kind.INP, t(int)).value[0], 1)  # type: ignore[index]
        self.assertIs(self.space.take(2, 2, Kind.INP, t(1)).status, Status.NO_MATCH)
        self.assertIs(self.space.take(2, 3, Kind.INP, t(1.0)).status, Status.MATCHED)
        c = self.space.take(2, 4, Kind.INP, t(0.0))
        self.assertEqual(repr(c.value), "(0.0,)")
        self.assertEqual([repr(v) for v in self.space.tuples()], ["(True,)", "(-0.0,)"])

    def test_indexed_lookup_skips_other_keys(self) -> None:
        """A template with actual fields finds the one tuple with those fields."""
        for i in range(50):
            self.space.out(1, i + 1, ("k", i, i % 5))
        c = self.space.take(2, 1, Kind.IN, t("k", 37, int))
        self.assertEqual(c.value, ("k", 37, 2))
        c = self.space.take(2, 2, Kind.INP, t(ANY, 37, ANY))
        self.assertEqual(c.status, Status.NO_MATCH)
        c = self.space.take(2, 3, Kind.INP, t(ANY, ANY, 4))
        self.assertEqual(c.value, ("k", 4, 4))

    def test_take_refuses_out(self) -> None:
        """take() applies only template operations."""
        self.assertRaises(ValueError, self.space.take, 1, 1, Kind.OUT, t(ANY))

    def test_log_limit_validated(self) -> None:
        """A space must remember at least one answer per process."""
        self.assertRaises(ValueError, TupleSpace, log_limit=0)

    def test_kinds(self) -> None:
        """IN and INP remove; IN and RD block."""
        self.assertEqual([k for k in Kind if k.removes], [Kind.IN, Kind.INP])
        self.assertEqual([k for k in Kind if k.blocks], [Kind.IN, Kind.RD])
        self.assertEqual([s for s in Status if not s.final], [Status.PENDING])


class WaiterTests(SynchronousTestCase):
    """Waiting in and rd operations."""

    def setUp(self) -> None:
        self.space = TupleSpace()

    def test_in_waits_then_takes(self) -> None:
        """
        An in with no match is PENDING; a matching out answers it, after the out's own
        STORED, and the tuple is not stored.
        """
        self.assertEqual(self.space.take(1, 1, Kind.IN, t("a", int)), done(1, 1, Status.PENDING))
        self.assertTrue(self.space.is_pending(1, 1))
        self.assertEqual(self.space.out(2, 1, ("a", 2.0)), [done(2, 1, Status.STORED)])
        self.assertEqual(
            self.space.out(2, 2, ("a", 5)),
            [done(2, 2, Status.STORED), done(1, 1, Status.MATCHED, ("a", 5))],
        )
        self.assertFalse(self.space.is_pending(1, 1))
        self.assertEqual(list(self.space.tuples()), [("a", 2.0)])
        self.assertEqual(self.space.waiting, 0)

    def test_fifo_every_rd_then_first_in(self) -> None:
        """
        Waiters are served in arrival order: every rd on the way gets the tuple, the
        first in takes it, and those after that in keep waiting.
        """
        self.space.take(1, 1, Kind.RD, t("a", int))
        self.space.take(2, 1, Kind.IN, t("a", ANY))
        self.space.take(3, 1, Kind.RD, t(ANY, int))
        self.space.take(4, 1, Kind.IN, t("a", int))
        self.space.take(5, 1, Kind.RD, t("a", int))
        answers = self.space.out(9, 1, ("a", 1))
        self.assertEqual(
            answers,
            [
                done(9, 1, Status.STORED),
                done(1, 1, Status.MATCHED, ("a", 1)),
                done(2, 1, Status.MATCHED, ("a", 1)),
            ],
        )
        self.assertEqual(len(self.space), 0)
        self.assertEqual(self.space.waiting, 3)
        answers = self.space.out(9, 2, ("a", 2))
        self.assertEqual([(c.pid, c.value) for c in answers[1:]], [(3, ("a", 2)), (4, ("a", 2))])
        self.assertEqual([(c.pid, c.event) for c in answers], [(9, 2), (3, 1), (4, 1)])

    def test_only_rd_waiters_then_stored(self) -> None:
        """A tuple read by every waiting rd and taken by none is then stored."""
        self.space.take(1, 1, Kind.RD, t(int))
        self.space.take(2, 1, Kind.RD, t(ANY))
        answers = self.space.out(3, 1, (7,))
        self.assertEqual([c.pid for c in answers], [3, 1, 2])
        self.assertEqual(list(self.space.tuples()), [(7,)])

    def test_fifo_across_indexed_and_wild_waiters(self) -> None:
        """
        Arrival order holds between waiters with an actual first field and waiters
        whose first field is a formal or L{ANY}.
        """
        self.space.take(1, 1, Kind.RD, t(ANY, 1))
        self.space.take(2, 1, Kind.RD, t("a", int))
        self.space.take(3, 1, Kind.RD, t(str, ANY))
        self.space.take(4, 1, Kind.IN, t("a", 1))
        self.space.take(5, 1, Kind.IN, t(ANY, ANY))
        answers = self.space.out(9, 1, ("a", 1))
        self.assertEqual([c.pid for c in answers], [9, 1, 2, 3, 4])
        self.assertEqual(self.space.waiting, 1)

    def test_non_matching_waiters_keep_waiting(self) -> None:
        """An out serves only waiters whose template matches it."""
        self.space.take(1, 1, Kind.IN, t("a", float))
        self.space.take(2, 1, Kind.IN, t("a", int, int))
        self.space.take(3, 1, Kind.IN, t(True, int))
        self.assertEqual(len(self.space.out(9, 1, ("a", 1))), 1)
        self.assertEqual(len(self.space.out(9, 2, (1, 1))), 1)
        self.assertEqual(self.space.waiting, 3)
        self.assertEqual(len(self.space), 2)

    def test_cancel(self) -> None:
        """cancel withdraws a waiter (CANCELLED); it then gets no tuple."""
        self.space.take(1, 1, Kind.IN, t("a", int))
        self.assertEqual(self.space.cancel(1, 1), done(1, 1, Status.CANCELLED))
        self.assertEqual(self.space.waiting, 0)
        self.assertEqual(self.space.out(2, 1, ("a", 1)), [done(2, 1, Status.STORED)])
        self.assertEqual(len(self.space), 1)

    def test_cancel_of_non_waiter(self) -> None:
        """cancel of an operation that is not waiting answers None and changes nothing."""
        self.space.out(1, 1, ("a",))
        self.space.take(1, 2, Kind.IN, t(int))
        before = self.space.digest()
        self.assertIsNone(self.space.cancel(1, 1))
        self.assertIsNone(self.space.cancel(1, 3))
        self.assertIsNone(self.space.cancel(5, 1))
        self.assertEqual(self.space.digest(), before)
        self.assertEqual(self.space.waiting, 1)


class RetryTests(SynchronousTestCase):
    """The per-process log: an operation arriving twice is applied once."""

    def setUp(self) -> None:
        self.space = TupleSpace(log_limit=3)

    def test_retried_out_not_stored_twice(self) -> None:
        """A retried out answers STORED again and stores nothing more."""
        first = self.space.out(1, 1, ("a",))
        self.assertEqual(self.space.out(1, 1, ("a",)), first)
        self.assertEqual((len(self.space), self.space.sequence), (1, 1))

    def test_retried_take_gets_first_answer(self) -> None:
        """A retried in answers the tuple it took the first time, and takes no other."""
        self.space.out(1, 1, ("a", 1))
        self.space.out(1, 2, ("a", 2))
        first = self.space.take(2, 1, Kind.IN, t("a", int))
        self.assertEqual(self.space.take(2, 1, Kind.IN, t("a", int)), first)
        self.assertEqual(first.value, ("a", 1))
        self.assertEqual(list(self.space.tuples()), [("a", 2)])
        nomatch = self.space.take(2, 2, Kind.INP, t("b"))
        self.space.out(1, 3, ("b",))
        self.assertEqual(self.space.take(2, 2, Kind.INP, t("b")), nomatch)

    def test_retried_waiter_answered_later(self) -> None:
        """A retried waiting in is still PENDING, waits once, then answers its match."""
        self.space.take(1, 1, Kind.IN, t(int))
        self.assertEqual(self.space.take(1, 1, Kind.IN, t(int)), done(1, 1, Status.PENDING))
        self.assertEqual(self.space.waiting, 1)
        answers = self.space.out(2, 1, (5,))
        self.assertEqual(answers[1:], [done(1, 1, Status.MATCHED, (5,))])
        self.assertEqual(self.space.take(1, 1, Kind.IN, t(int)), answers[1])
        self.assertEqual(self.space.out(2, 2, (6,)), [done(2, 2, Status.STORED)])

    def test_retried_cancelled_is_reapplied(self) -> None:
        """An operation withdrawn had no effect, so its retry is applied afresh."""
        self.space.take(1, 1, Kind.IN, t(int))
        self.space.cancel(1, 1)
        self.space.out(2, 1, (5,))
        self.assertEqual(self.space.take(1, 1, Kind.IN, t(int)), done(1, 1, Status.MATCHED, (5,)))
        self.assertEqual(len(self.space), 0)
        self.assertEqual(self.space.take(1, 1, Kind.IN, t(int)), done(1, 1, Status.MATCHED, (5,)))

    def test_reapplied_waiter_retried_again_waits_once(self) -> None:
        """
        A cancelled in that is retried (and waits again) and then retried once more is
        PENDING, and stays one waiter, even if the second retry carries another
        template.  (Regression: the second retry was applied as a second waiter under
        the same (pid, event), and a later out raised KeyError.)
        """
        self.space.take(7, 1, Kind.IN, t(1, int))
        self.space.cancel(7, 1)
        self.assertEqual(self.space.take(7, 1, Kind.IN, t(1, int)), done(7, 1, Status.PENDING))
        self.assertEqual(self.space.take(7, 1, Kind.IN, t(2, int)), done(7, 1, Status.PENDING))
        self.assertEqual(self.space.waiting, 1)
        self.space.take(9, 1, Kind.IN, t(3))
        self.assertEqual(self.space.out(8, 1, (2, 5)), [done(8, 1, Status.STORED)])
        self.assertEqual(
            self.space.out(8, 2, (1, 5)),
            [done(8, 2, Status.STORED), done(7, 1, Status.MATCHED, (1, 5))],
        )
        self.assertEqual(self.space.waiting, 1)

    def test_event_older_than_log_is_stale(self) -> None:
        """Once an answer has left the log window, a retry of its event is STALE."""
        for event in range(1, 5):
            self.space.out(1, event, (event,))
        self.assertEqual(self.space.out(1, 1, (1,)), [done(1, 1, Status.STALE)])
        self.assertEqual(self.space.take(1, 1, Kind.INP, t(1)), done(1, 1, Status.STALE))
        self.assertEqual(self.space.out(1, 2, (2,)), [done(1, 2, Status.STORED)])
        self.assertEqual(len(self.space), 4)

    def test_late_event_is_applied(self) -> None:
        """
        An event that arrives after later events of its process, but was never applied
        and is not older than what the log forgot, is applied (once).
        """
        self.space.out(1, 5, ("a",))
        self.assertEqual(self.space.out(1, 3, ("b",)), [done(1, 3, Status.STORED)])
        self.assertEqual(self.space.out(1, 3, ("b",)), [done(1, 3, Status.STORED)])
        self.assertEqual(self.space.out(1, 6, ("c",)), [done(1, 6, Status.STORED)])
        self.assertEqual(len(self.space), 3)

    def test_processes_are_separate(self) -> None:
        """Event numbers belong to their process: the same event of another is new."""
        self.space.out(1, 1, ("a",))
        self.assertEqual(self.space.out(2, 1, ("a",)), [done(2, 1, Status.STORED)])
        self.assertEqual((len(self.space), self.space.processes), (2, 2))

    def test_trim(self) -> None:
        """trim forgets answers up to an event; their retries are then STALE."""
        for event in (1, 2, 3):
            self.space.out(1, event, (event,))
        self.space.trim(1, 2)
        self.assertEqual(self.space.out(1, 2, (2,)), [done(1, 2, Status.STALE)])
        self.assertEqual(self.space.out(1, 3, (3,)), [done(1, 3, Status.STORED)])
        self.space.trim(9, 5)
        self.assertEqual(len(self.space), 3)

    def test_trim_answers_logged_out_of_order(self) -> None:
        """
        trim forgets every answer up to the event, also one logged after a later
        event's answer (a waiter completed after the process's next operation).
        (Regression: trim stopped at the first logged event above the bound.)
        """
        self.space.take(1, 1, Kind.IN, t("a", int))
        self.space.out(1, 2, ("a", 3))
        self.space.trim(1, 1)
        self.assertEqual(self.space.take(1, 1, Kind.IN, t("a", int)), done(1, 1, Status.STALE))
        self.assertEqual(self.space.out(1, 2, ("a", 3)), [done(1, 2, Status.STORED)])

    def test_forget(self) -> None:
        """
        forget cancels the process's waiters (returning them), drops its log, and
        leaves other processes alone; a late copy of one of its events up to the last
        it made is STALE (never applied a second time), a later event is new.
        """
        self.space.out(1, 1, ("a",))
        self.space.take(1, 2, Kind.IN, t(int))
        self.space.take(1, 3, Kind.RD, t(float))
        self.space.take(2, 1, Kind.IN, t(int))
        self.assertEqual(
            self.space.forget(1),
            [done(1, 2, Status.CANCELLED), done(1, 3, Status.CANCELLED)],
        )
        self.assertEqual((self.space.waiting, self.space.processes), (1, 1))
        self.assertEqual(self.space.out(1, 1, ("a",)), [done(1, 1, Status.STALE)])
        self.assertEqual(self.space.take(1, 3, Kind.INP, t(str)), done(1, 3, Status.STALE))
        self.assertEqual(self.space.claim(1, 2, Kind.IN, 1), done(1, 2, Status.STALE))
        self.assertEqual(len(self.space), 1)
        self.assertEqual(self.space.out(1, 4, ("b",)), [done(1, 4, Status.STORED)])
        self.assertEqual(len(self.space), 2)
        self.assertEqual(self.space.forget(42), [])
        self.assertEqual(self.space.forgotten, 1)

    def test_forgotten_processes_are_bounded_and_kept_in_snapshots(self) -> None:
        """The last GONE_LIMIT forgotten processes are remembered, across a snapshot."""
        space = self.space
        for pid in range(1, 4):
            space.out(pid, 5, ("x", pid))
            space.forget(pid)
        restored = TupleSpace.restore(space.snapshot())
        self.assertEqual(restored.forgotten, 3)
        self.assertEqual(restored.out(2, 5, ("x", 2)), [done(2, 5, Status.STALE)])
        self.patch(space_module, "GONE_LIMIT", 2)
        space.out(9, 1, ("y",))
        space.forget(9)
        self.assertEqual(space.forgotten, 2)
        self.assertEqual(space.out(1, 5, ("x", 1)), [done(1, 5, Status.STORED)])


class SnapshotTests(SynchronousTestCase):
    """Snapshots, restore and digests."""

    def filled(self) -> TupleSpace:
        space = TupleSpace()
        space.out(1, 1, ("a", 1.5, (None, b"x")))
        space.out(1, 2, ("b",))
        space.out(2, 1, (float("nan"),))
        space.take(2, 2, Kind.IN, t("b"))
        space.take(3, 1, Kind.INP, t(int))
        return space

    def test_round_trip(self) -> None:
        """A restored space has the same tuples, sequence, logs and digest."""
        space = self.filled()
        restored = TupleSpace.restore(space.snapshot())
        self.assertEqual(restored.snapshot(), space.snapshot())
        self.assertEqual(restored.digest(), space.digest())
        self.assertEqual(restored.sequence, space.sequence)
        self.assertEqual(restored.processes, 3)
        self.assertEqual(repr(list(restored.tuples())), repr(list(space.tuples())))
        # The log came along: retries are answered as before.
        self.assertEqual(restored.take(2, 2, Kind.IN, t("b")), space.take(2, 2, Kind.IN, t("b")))
        self.assertEqual(restored.out(1, 3, ("c",)), [done(1, 3, Status.STORED)])
        self.assertEqual(restored.sequence, 4)

    def test_digest_differs_with_state(self) -> None:
        """Different states have different digests (and equal states equal ones)."""
        a, b = TupleSpace(), TupleSpace()
        self.assertEqual(a.digest(), b.digest())
        a.out(1, 1, (1,))
        b.out(1, 1, (True,))
        self.assertNotEqual(a.digest(), b.digest())
        c = TupleSpace()
        c.out(1, 1, (1,))
        self.assertEqual(a.digest(), c.digest())
        c.take(1, 2, Kind.RDP, t(int))
        self.assertNotEqual(a.digest(), c.digest())
        self.assertEqual(len(a.digest()), 64)

    def test_snapshot_leaves_out_waiters(self) -> None:
        """Waiting operations are not part of a snapshot."""
        space = TupleSpace()
        space.out(1, 1, ("a",))
        before = space.snapshot()
        space.take(1, 2, Kind.IN, t(int))
        restored = TupleSpace.restore(space.snapshot())
        self.assertEqual(restored.waiting, 0)
        self.assertEqual(restored.out(2, 1, (1,)), [done(2, 1, Status.STORED)])
        self.assertNotEqual(before, space.snapshot())  # the process's last event moved

    def test_waiter_resent_after_restore(self) -> None:
        """
        A client re-sends its waiting operation to a space restored from a snapshot
        (waiters are not part of snapshots), and it waits again.
        """
        space = TupleSpace()
        space.take(1, 1, Kind.IN, t(int))
        restored = TupleSpace.restore(space.snapshot())
        self.assertEqual(restored.take(1, 1, Kind.IN, t(int)), done(1, 1, Status.PENDING))

    def test_smaller_log_on_restore(self) -> None:
        """Restoring with a smaller log size keeps only the newest answers; older are STALE."""
        space = TupleSpace()
        for e in range(1, 6):
            space.out(1, e, (e,))
        restored = TupleSpace.restore(space.snapshot(), log_limit=2)
        self.assertEqual(restored.out(1, 3, (3,)), [done(1, 3, Status.STALE)])
        self.assertEqual(restored.out(1, 5, (5,)), [done(1, 5, Status.STORED)])
        self.assertEqual(len(restored), 5)

    def test_restore_keeps_limits(self) -> None:
        """restore uses the limits and log size it is given, and checks tuples by them."""
        space = self.filled()
        limits = Limits(max_arity=3)
        restored = TupleSpace.restore(space.snapshot(), limits, log_limit=9)
        self.assertEqual((restored.limits, restored.log_limit), (limits, 9))
        space.out(1, 3, (1, 2, 3, 4))
        self.assertRaises(SnapshotError, TupleSpace.restore, space.snapshot(), limits)

    def test_bad_snapshots_refused(self) -> None:
        """Anything but a well-formed snapshot raises SnapshotError."""
        for bad in (
            b"",
            b"\xc1",
            packb(1),
            packb((2, 0, ())),
            packb((1, 0, (), ())),
            packb((2, 5, ((3, (1,)), (2, (2,))), ())),
            packb((2, 5, ((6, (1,)),), ())),
            packb((2, 5, ((1, ()),), ())),
            packb((2, 5, ((1, (ANY,)),), ())),
            packb((2, 5, ((1, (1,)),), ((1, 1, -1, ((1, 99, None),)),))),
            packb((2, 5, ((1, (1,)),), ((1, 1, -1, ((1,),)),))),
            packb((2, 5, ((1, (1,)),), ((1, 1, ((1, 0, None),)),))),
            packb((2, "5", ((1, (1,)),), ())),
            packb((2, 5, ((True, (1,)),), ())),
        ):
            self.assertRaises(SnapshotError, TupleSpace.restore, bad)

    @PROPERTIES
    @given(st.binary(max_size=60))
    def test_arbitrary_bytes_refused_cleanly(self, data: bytes) -> None:
        """restore of arbitrary bytes builds a space or raises SnapshotError, only."""
        with contextlib.suppress(SnapshotError):
            TupleSpace.restore(data)


class ClaimTests(SynchronousTestCase):
    """The replica's path: match locally with find(), apply claims in the total order."""

    def setUp(self) -> None:
        self.space = TupleSpace()
        self.space.out(9, 1, ("job", 1))
        self.space.out(9, 2, ("job", 2))

    def test_find_changes_nothing(self) -> None:
        """find() returns the oldest match and its sequence number, and changes nothing."""
        before = self.space.snapshot()
        self.assertEqual(self.space.find(t("job", int)), (1, ("job", 1)))
        self.assertIsNone(self.space.find(t("nothing")))
        self.assertEqual(self.space.snapshot(), before)

    def test_first_claim_wins(self) -> None:
        """Two claims of one tuple: the first in the order takes it, the second loses."""
        won = self.space.claim(1, 1, Kind.IN, 1)
        self.assertEqual(won, done(1, 1, Status.MATCHED, ("job", 1)))
        self.assertIsNone(self.space.claim(2, 1, Kind.IN, 1))
        self.assertEqual(list(self.space.tuples()), [("job", 2)])
        # The loser matches again, with the same event, and wins the next tuple.
        self.assertEqual(
            self.space.claim(2, 1, Kind.IN, 2), done(2, 1, Status.MATCHED, ("job", 2))
        )

    def test_read_claims_leave_the_tuple(self) -> None:
        """An RD claim reads the tuple and leaves it for others."""
        self.assertEqual(
            self.space.claim(1, 1, Kind.RD, 1), done(1, 1, Status.MATCHED, ("job", 1))
        )
        self.assertEqual(
            self.space.claim(2, 1, Kind.IN, 1), done(2, 1, Status.MATCHED, ("job", 1))
        )

    def test_claim_is_exactly_once(self) -> None:
        """A claim repeated for an answered event returns the first answer, takes nothing."""
        self.space.claim(1, 1, Kind.IN, 1)
        self.assertEqual(
            self.space.claim(1, 1, Kind.IN, 2), done(1, 1, Status.MATCHED, ("job", 1))
        )
        self.assertEqual(len(self.space), 1)
        self.assertEqual(self.space.answered(1, 1), done(1, 1, Status.MATCHED, ("job", 1)))
        self.assertIsNone(self.space.answered(1, 2))

    def test_claims_are_deterministic(self) -> None:
        """Replicas applying the same claims in the same order have equal digests."""
        a, b = TupleSpace.restore(self.space.snapshot()), TupleSpace.restore(self.space.snapshot())
        for s in (a, b):
            s.claim(1, 1, Kind.IN, 2)
            s.claim(2, 1, Kind.IN, 2)
            s.claim(2, 1, Kind.RD, 1)
        self.assertEqual(a.digest(), b.digest())

    def test_claim_refuses_out(self) -> None:
        """OUT is not a claim."""
        self.assertRaises(ValueError, self.space.claim, 1, 1, Kind.OUT, 1)


class CheckpointTests(SynchronousTestCase):
    """Checkpoints, and replay from the per-process log (the LiPS paper's §7 rules)."""

    def test_checkpoint_replaces_and_discards_earlier_log(self) -> None:
        """A checkpoint replaces the last one and drops the process's earlier answers."""
        space = TupleSpace()
        space.out(1, 1, ("a",))
        space.out(1, 2, ("b",))
        self.assertEqual(space.checkpoint(1, 3, b"state-3"), Completion(1, 3, Status.STORED))
        self.assertEqual(space.recovered(1), (3, b"state-3"))
        self.assertEqual(space.answered(1, 2), Completion(1, 2, Status.STALE))
        self.assertEqual(space.answered(1, 3), Completion(1, 3, Status.STORED))
        space.out(1, 4, ("c",))
        space.checkpoint(1, 5, b"state-5")
        self.assertEqual(space.recovered(1), (5, b"state-5"))
        self.assertIsNone(space.recovered(2))

    def test_repeated_checkpoint_changes_nothing(self) -> None:
        """A checkpoint sent again (same event) is answered from the log, state kept."""
        space = TupleSpace()
        space.checkpoint(1, 1, b"first")
        space.out(1, 2, ("x",))
        self.assertEqual(space.checkpoint(1, 1, b"other"), Completion(1, 1, Status.STORED))
        self.assertEqual(space.recovered(1), (1, b"first"))

    def test_snapshot_keeps_checkpoints(self) -> None:
        """Checkpoints travel with a snapshot; a version-2 snapshot still restores."""
        space = TupleSpace()
        space.out(1, 1, ("a",))
        space.checkpoint(1, 2, b"s")
        copy = TupleSpace.restore(space.snapshot())
        self.assertEqual(copy.recovered(1), (2, b"s"))
        self.assertEqual(copy.digest(), space.digest())
        old = packb([2, 1, [[1, ("a",)]], []])
        self.assertEqual(list(TupleSpace.restore(old).tuples()), [("a",)])
        self.assertRaises(SnapshotError, TupleSpace.restore, packb([3, 0, [], [], [[1, 2]]]))

    def test_golden_scenario(self) -> None:
        """
        The scenario of the paper's Figure 4 (papers-detail §4.5 rule 5): A does rd
        (e1), out(("w", 1)) (e2) and three more operations, then crashes with no
        checkpoint; B takes A's tuple (e2) and checkpoints (e3).  B's log no longer
        holds that receive.  A restarted from scratch has e1 answered from the log, its
        out at e2 suppressed (no second ("w", 1)), e3-e5 answered from the log, and is
        active again at e6.
        """
        space = TupleSpace()
        a, b = 1, 2
        space.out(9, 1, ("cfg", 42))
        w = make_template(("w", int))
        first = [
            space.take(a, 1, Kind.RD, make_template(("cfg", int))),
            *space.out(a, 2, ("w", 1)),
            *space.out(a, 3, ("log", "a3")),
            space.take(a, 4, Kind.INP, make_template(("none",))),
            space.take(a, 5, Kind.RDP, make_template(("log", str))),
        ]
        space.take(b, 1, Kind.RDP, make_template(("cfg", int)))
        self.assertEqual(space.take(b, 2, Kind.IN, w), Completion(b, 2, Status.MATCHED, ("w", 1)))
        space.checkpoint(b, 3, b"B at e3")
        self.assertEqual(space.answered(b, 2), Completion(b, 2, Status.STALE))
        # A restarts from scratch, with the same process id and events from 1.
        again = [
            space.take(a, 1, Kind.RD, make_template(("cfg", int))),
            *space.out(a, 2, ("w", 1)),
            *space.out(a, 3, ("log", "a3")),
            space.take(a, 4, Kind.INP, make_template(("none",))),
            space.take(a, 5, Kind.RDP, make_template(("log", str))),
        ]
        self.assertEqual(again, first)
        self.assertIsNone(space.find(w))  # the out at e2 was suppressed
        self.assertEqual(sorted(space.tuples()), [("cfg", 42), ("log", "a3")])
        # At e6 A is active again: a new event is applied.
        space.out(a, 6, ("w", 2))
        self.assertEqual(space.find(w), (space.sequence, ("w", 2)))


class DecisionTests(SynchronousTestCase):
    """A timeout or a cancel decided for an operation: final, logged, and it takes nothing."""

    def setUp(self) -> None:
        self.space = TupleSpace()
        self.job = make_template(("job", int))

    def test_waiting_operation_decided(self) -> None:
        """A waiting in decided TIMED_OUT stops waiting; its retry gets the decision again."""
        self.assertEqual(self.space.take(1, 1, Kind.IN, self.job).status, Status.PENDING)
        self.assertEqual(self.space.withdraw(1, 1, Status.TIMED_OUT), done(1, 1, Status.TIMED_OUT))
        self.space.out(2, 1, ("job", 5))
        self.assertEqual(self.space.take(1, 1, Kind.IN, self.job), done(1, 1, Status.TIMED_OUT))
        self.assertEqual(len(self.space), 1)
        self.assertIsNone(self.space.withdraw(1, 1, Status.TIMED_OUT))  # not waiting now

    def test_decision_for_an_operation_never_seen(self) -> None:
        """
        Decided before it was ever applied (a replica orders the timeout of a request
        still matching at its origin), the operation's later claim takes nothing.
        """
        self.space.out(2, 1, ("job", 5))
        self.assertEqual(self.space.decide(1, 4, Status.WITHDRAWN), done(1, 4, Status.WITHDRAWN))
        self.assertEqual(self.space.claim(1, 4, Kind.IN, 1), done(1, 4, Status.WITHDRAWN))
        self.assertEqual(len(self.space), 1)

    def test_an_answer_stands(self) -> None:
        """A decision for an operation already answered returns that answer, unchanged."""
        self.space.out(2, 1, ("job", 5))
        answer = self.space.take(1, 1, Kind.IN, self.job)
        self.assertEqual(self.space.decide(1, 1, Status.TIMED_OUT), answer)

    def test_only_timeouts_and_cancels_are_decisions(self) -> None:
        """Any other status is not a decision."""
        self.assertRaises(ValueError, self.space.decide, 1, 1, Status.MATCHED)

    def test_lost_connection_is_not_a_decision(self) -> None:
        """Withdrawn for a lost connection, the operation is applied afresh when retried."""
        self.space.take(1, 1, Kind.IN, self.job)
        self.assertEqual(self.space.withdraw(1, 1, Status.CANCELLED), done(1, 1, Status.CANCELLED))
        self.space.out(2, 1, ("job", 5))
        self.assertEqual(
            self.space.take(1, 1, Kind.IN, self.job), done(1, 1, Status.MATCHED, ("job", 5))
        )


# -- atomic requests -----------------------------------------------------------------


def s_out(*fields: Any) -> Step:
    return Step.out(fields)


class AtomicTests(SynchronousTestCase):
    """L{TupleSpace.atomic}: a list of steps applied as one event, all or none."""

    def test_commit_applies_every_step_in_order(self) -> None:
        """
        Every guard holding and every inp/rdp finding a tuple, all steps apply in order
        and the answer lists each step's result.
        """
        space = TupleSpace()
        space.out(1, 1, ("ftm-epoch", 3, 7))
        space.out(1, 2, ("table", "a", 1))
        steps = [
            Step.present(("ftm-epoch", 3, 7)),
            Step.absent(("lock", ANY)),
            Step.inp(("table", "a", int)),
            s_out("table", "a", 2),
            Step.rdp(("ftm-epoch", int, int)),
        ]
        [answer] = space.atomic(2, 1, steps)
        self.assertEqual(
            answer,
            Completion(
                2,
                1,
                Status.COMMITTED,
                results=(None, None, ("table", "a", 1), None, ("ftm-epoch", 3, 7)),
            ),
        )
        self.assertEqual(list(space.tuples()), [("ftm-epoch", 3, 7), ("table", "a", 2)])

    def test_failed_inp_aborts_everything(self) -> None:
        """
        An inp that finds nothing fails the whole request, naming that step: nothing
        is applied, not even the steps before it.
        """
        space = TupleSpace()
        space.out(1, 1, ("old", 1))
        before = list(space.tuples())
        steps = [Step.inp(("old", 1)), s_out("new", 1), Step.inp(("missing",))]
        [answer] = space.atomic(2, 1, steps)
        self.assertEqual(
            answer, Completion(2, 1, Status.ABORTED, aborted=(2, AbortReason.NO_MATCH))
        )
        self.assertEqual(list(space.tuples()), before)
        self.assertEqual(space.sequence, 1)

    def test_guards(self) -> None:
        """An absent guard fails if a tuple matches; a present guard if none does."""
        space = TupleSpace()
        space.out(1, 1, ("ftm-epoch", 3, 7))
        [a] = space.atomic(
            2,
            1,
            [
                s_out(
                    "x",
                ),
                Step.absent(("ftm-epoch", int, int)),
            ],
        )
        self.assertEqual(a.aborted, (1, AbortReason.MATCHED))
        [b] = space.atomic(
            2,
            2,
            [
                Step.present(("ftm-epoch", 4, 7)),
                s_out(
                    "x",
                ),
            ],
        )
        self.assertEqual(b.aborted, (0, AbortReason.NO_MATCH))
        [c] = space.atomic(2, 3, [Step.rdp(("nothing",))])
        self.assertEqual(c.aborted, (0, AbortReason.NO_MATCH))
        self.assertEqual(list(space.tuples()), [("ftm-epoch", 3, 7)])

    def test_steps_see_earlier_steps(self) -> None:
        """
        A step sees the space as the earlier steps leave it: an inp takes a tuple an
        earlier out stored (after the stored ones), and a tuple an earlier inp took is
        gone for the later steps.
        """
        space = TupleSpace()
        space.out(1, 1, ("job", 1))
        [a] = space.atomic(2, 1, [s_out("job", 2), Step.inp(("job", int)), Step.inp(("job", int))])
        self.assertEqual(a.results, (None, ("job", 1), ("job", 2)))
        self.assertEqual(len(space), 0)
        space.out(1, 2, ("job", 3))
        [b] = space.atomic(2, 2, [Step.inp(("job", int)), Step.absent(("job", int))])
        self.assertEqual(b.status, Status.COMMITTED)
        [c] = space.atomic(2, 3, [s_out("job", 4), Step.inp(("job", 4)), Step.rdp(("job", 4))])
        self.assertEqual(c.aborted, (2, AbortReason.NO_MATCH))
        self.assertEqual(len(space), 0)

    def test_move_a_record(self) -> None:
        """lipsd's move: take the old record and write the new one, in one event."""
        space = TupleSpace()
        space.out(1, 1, ("proc", 9, "node-a"))
        [a] = space.atomic(5, 1, [Step.inp(("proc", 9, str)), s_out("proc", 9, "node-b")])
        self.assertEqual(a.results, (("proc", 9, "node-a"), None))
        self.assertEqual(list(space.tuples()), [("proc", 9, "node-b")])

    def test_retry_gets_the_same_answer(self) -> None:
        """A retried event is answered from the log and never applied twice."""
        space = TupleSpace()
        space.out(1, 1, ("token",))
        steps = [
            Step.inp(("token",)),
            s_out(
                "done",
            ),
        ]
        first = space.atomic(2, 1, steps)
        space.out(1, 2, ("token",))
        self.assertEqual(space.atomic(2, 1, steps), first)
        self.assertEqual(list(space.tuples()), [("done",), ("token",)])
        aborted = space.atomic(2, 2, [Step.inp(("none",))])
        space.out(1, 3, ("none",))
        self.assertEqual(space.atomic(2, 2, [Step.inp(("none",))]), aborted)
        self.assertEqual(space.answered(2, 2), aborted[0])

    def test_outs_serve_waiters_after_the_request(self) -> None:
        """
        The tuples a committed request leaves go to waiters once it is applied, in
        step order, after the request's own answer; one it took itself never does.
        """
        space = TupleSpace()
        space.take(3, 1, Kind.IN, t("a", int))
        space.take(4, 1, Kind.RD, t("b", int))
        answers = space.atomic(
            2, 1, [s_out("a", 1), Step.inp(("a", int)), s_out("b", 2), s_out("a", 3)]
        )
        self.assertEqual(
            answers,
            [
                Completion(2, 1, Status.COMMITTED, results=(None, ("a", 1), None, None)),
                Completion(4, 1, Status.MATCHED, ("b", 2)),
                Completion(3, 1, Status.MATCHED, ("a", 3)),
            ],
        )
        self.assertEqual(list(space.tuples()), [("b", 2)])

    def test_aborted_request_serves_no_waiter(self) -> None:
        """An aborted request's outs never reach a waiter."""
        space = TupleSpace()
        space.take(3, 1, Kind.IN, t("a", int))
        answers = space.atomic(2, 1, [s_out("a", 1), Step.present(("b",))])
        self.assertEqual([c.status for c in answers], [Status.ABORTED])
        self.assertTrue(space.is_pending(3, 1))

    def test_answer_size_is_bounded(self) -> None:
        """
        Tuples taken and read that together encode past the size limit abort the
        request at the step that passes it (its answer could not be sent).
        """
        space = TupleSpace(Limits(max_size=64))
        space.out(1, 1, ("a", "x" * 30))
        space.out(1, 2, ("b", "y" * 30))
        [a] = space.atomic(2, 1, [Step.rdp(("a", str)), Step.inp(("b", str))])
        self.assertEqual(a.aborted, (1, AbortReason.TOO_LARGE))
        self.assertEqual(len(space), 2)

    def test_step_count_is_bounded(self) -> None:
        """No steps, or more than MAX_STEPS, is refused before anything happens."""
        space = TupleSpace()
        self.assertRaises(ValueError, space.atomic, 1, 1, [])
        self.assertRaises(
            ValueError,
            space.atomic,
            1,
            1,
            [
                s_out(
                    "x",
                )
            ]
            * (MAX_STEPS + 1),
        )
        self.assertEqual(space.processes, 0)

    def test_snapshot_keeps_atomic_answers(self) -> None:
        """Committed and aborted answers survive a snapshot, so a retry gets them."""
        space = TupleSpace()
        space.out(1, 1, ("a",))
        committed = space.atomic(
            2,
            1,
            [
                Step.inp(("a",)),
                s_out(
                    "b",
                ),
            ],
        )
        aborted = space.atomic(2, 2, [Step.absent(("b",))])
        copy = TupleSpace.restore(space.snapshot())
        self.assertEqual(copy.digest(), space.digest())
        self.assertEqual(
            copy.atomic(
                2,
                1,
                [
                    s_out(
                        "z",
                    )
                ],
            ),
            committed,
        )
        self.assertEqual(
            copy.atomic(
                2,
                2,
                [
                    s_out(
                        "z",
                    )
                ],
            ),
            aborted,
        )
        self.assertEqual(list(copy.tuples()), [("b",)])

    def test_scan_reads_every_match(self) -> None:
        """
        A scan reads every matching tuple, oldest first, as the earlier steps leave
        the space: not one an earlier inp took, and, after the stored ones, those an
        earlier out stored.  It changes nothing.
        """
        space = TupleSpace()
        for n in range(1, 4):
            space.out(1, n, ("job", n))
        space.out(1, 4, ("other", 0))
        [a] = space.atomic(2, 1, [Step.inp(("job", 2)), s_out("job", 9), Step.scan(("job", int))])
        self.assertEqual(
            a.results, (("job", 2), None, Tuples((("job", 1), ("job", 3), ("job", 9))))
        )
        self.assertEqual(list(space.tuples()), [("job", 1), ("job", 3), ("other", 0), ("job", 9)])
        [b] = space.atomic(2, 2, [Step.scan(("job", ANY)), Step.scan(("none",))])
        self.assertEqual(b.results, (Tuples((("job", 1), ("job", 3), ("job", 9))), Tuples()))

    def test_empty_scan_never_fails(self) -> None:
        """A scan that matches nothing is an empty result, not a failure."""
        [a] = TupleSpace().atomic(2, 1, [Step.scan(("nothing", int))])
        self.assertEqual(a, Completion(2, 1, Status.COMMITTED, results=(Tuples(),)))

    def test_delete_takes_every_match(self) -> None:
        """
        A delete takes every matching tuple, stored ones and those the request stored,
        oldest first; later steps see none of them, and its result is what it took.
        """
        space = TupleSpace()
        space.out(1, 1, ("row", "a"))
        space.out(1, 2, ("keep", "b"))
        space.out(1, 3, ("row", "c"))
        [a] = space.atomic(
            2,
            1,
            [
                s_out("row", "d"),
                Step.delete(("row", str)),
                Step.absent(("row", ANY)),
                Step.scan((str, str)),
                Step.delete(("none",)),
            ],
        )
        self.assertEqual(
            a.results,
            (
                None,
                Tuples((("row", "a"), ("row", "c"), ("row", "d"))),
                None,
                Tuples((("keep", "b"),)),
                Tuples(),
            ),
        )
        self.assertEqual(list(space.tuples()), [("keep", "b")])
        self.assertEqual(space.sequence, 3)

    def test_deleted_outs_serve_no_waiter(self) -> None:
        """A tuple the request stored and then deleted never reaches a waiter."""
        space = TupleSpace()
        space.take(3, 1, Kind.IN, t("a", int))
        answers = space.atomic(2, 1, [s_out("a", 1), Step.delete(("a", int)), s_out("a", 2)])
        self.assertEqual(
            answers,
            [
                Completion(2, 1, Status.COMMITTED, results=(None, Tuples((("a", 1),)), None)),
                Completion(3, 1, Status.MATCHED, ("a", 2)),
            ],
        )
        self.assertEqual(len(space), 0)

    def test_aborted_delete_takes_nothing(self) -> None:
        """A request that fails after a delete leaves every tuple the delete took."""
        space = TupleSpace()
        space.out(1, 1, ("row", 1))
        space.out(1, 2, ("row", 2))
        [a] = space.atomic(2, 1, [Step.delete(("row", int)), Step.present(("row", int))])
        self.assertEqual(a.aborted, (1, AbortReason.NO_MATCH))
        self.assertEqual(list(space.tuples()), [("row", 1), ("row", 2)])

    def test_scan_and_delete_size_is_bounded(self) -> None:
        """
        The tuples a scan reads and a delete takes count against the same size budget
        as an inp's and an rdp's: past it, the request aborts at that step.
        """
        space = TupleSpace(Limits(max_size=64))
        space.out(1, 1, ("a", "x" * 20))
        space.out(1, 2, ("a", "y" * 20))
        space.out(1, 3, ("b", "z" * 20))
        [a] = space.atomic(2, 1, [Step.scan(("a", str))])
        self.assertEqual(a.status, Status.COMMITTED)
        [b] = space.atomic(2, 2, [Step.scan(("a", str)), Step.delete(("b", str))])
        self.assertEqual(b.aborted, (1, AbortReason.TOO_LARGE))
        [c] = space.atomic(2, 3, [Step.rdp(("b", str)), Step.delete(("a", str))])
        self.assertEqual(c.aborted, (1, AbortReason.TOO_LARGE))
        self.assertEqual(len(space), 3)

    def test_scan_count_is_bounded(self) -> None:
        """
        A scan or delete step may read or take at most MAX_SCAN tuples, however small:
        one more aborts the request there, too large to answer.
        """
        space = TupleSpace()
        for n in range(MAX_SCAN):
            space.out(1, n + 1, (n,))
        [a] = space.atomic(2, 1, [Step.scan((int,))])
        self.assertEqual(a.results is not None and len(a.results[0] or ()), MAX_SCAN)
        [b] = space.atomic(2, 2, [s_out(-1), Step.delete((int,))])
        self.assertEqual(b.aborted, (1, AbortReason.TOO_LARGE))
        [c] = space.atomic(2, 3, [Step.inp((0,)), Step.delete((int,))])
        self.assertEqual(c.status, Status.COMMITTED)
        self.assertEqual(len(space), 0)

    def test_snapshot_keeps_scan_results(self) -> None:
        """
        A committed answer with scan and delete results survives a snapshot (their
        tuples kept apart from the other results), so a retry gets it.
        """
        space = TupleSpace()
        space.out(1, 1, ("a", 1))
        space.out(1, 2, ("a", 2))
        committed = space.atomic(
            2, 1, [Step.scan(("a", int)), Step.delete(("a", 1)), Step.rdp(("a", 2))]
        )
        plain = space.atomic(2, 2, [Step.rdp(("a", 2))])
        copy = TupleSpace.restore(space.snapshot())
        self.assertEqual(copy.digest(), space.digest())
        self.assertEqual(copy.atomic(2, 1, [s_out("z")]), committed)
        self.assertEqual(copy.atomic(2, 2, [s_out("z")]), plain)

    def test_bad_scan_results_in_snapshot_refused(self) -> None:
        """
        A snapshot's committed answer whose list results are out of order, out of
        range, in the place of a tuple, not tuples, or on another answer is refused.
        """
        space = TupleSpace()
        space.out(1, 1, ("a",))
        space.atomic(2, 1, [Step.rdp(("a",)), Step.scan(("a",))])
        body = list(unpackb(space.snapshot()))
        entry = body[3][1][3][0]
        self.assertEqual(entry, (1, int(Status.COMMITTED), ((("a",)), None), ((1, (("a",),)),)))

        def with_entry(*entry: Any) -> bytes:
            procs = [list(body[3][0]), [*body[3][1][:3], [list(entry)]]]
            return packb([*body[:3], procs, *body[4:]])

        good = with_entry(*entry)
        self.assertEqual(TupleSpace.restore(good).digest(), space.digest())
        results = entry[2]
        for bad in [
            with_entry(1, int(Status.COMMITTED), results, ()),
            with_entry(1, int(Status.COMMITTED), results, ((2, ()),)),
            with_entry(1, int(Status.COMMITTED), results, ((0, ()),)),
            with_entry(1, int(Status.COMMITTED), (None, None), ((1, ()), (0, ()))),
            with_entry(1, int(Status.COMMITTED), results, ((1, (1,)),)),
            with_entry(1, int(Status.COMMITTED), results, ((1, ()),), ()),
            with_entry(1, int(Status.STORED), None, ((1, ()),)),
        ]:
            self.assertRaises(SnapshotError, TupleSpace.restore, bad)

    @given(
        st.lists(st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 2)), max_size=6),
        st.lists(
            st.tuples(
                st.sampled_from(list(StepOp)),
                st.sampled_from(["a", "b"]),
                st.one_of(st.integers(0, 2), st.just(int)),
            ),
            min_size=1,
            max_size=6,
        ),
    )
    @settings(max_examples=300, deadline=None)
    def test_same_as_the_steps_one_by_one(
        self, stored: list[tuple[str, int]], spec: list[tuple[StepOp, str, Any]]
    ) -> None:
        """
        A request commits exactly when its steps, applied one by one as single
        operations, would all succeed, and then leaves the same tuples with the same
        results (a scan reading every tuple the copy holds then, a delete as inps
        until none is left); when it aborts, at the first step that would fail,
        nothing changes.
        """
        space = TupleSpace()
        for n, values in enumerate(stored, 1):
            space.out(1, n, values)
        steps = [
            Step(op, (name, 0 if value is int else value))
            if op is StepOp.OUT
            else Step(op, make_template((name, value)))
            for op, name, value in spec
        ]
        reference = TupleSpace.restore(space.snapshot())
        before = space.snapshot()
        expected: list[StepResult] = []
        failure = None
        event = 100
        for i, step in enumerate(steps):
            event += 1
            if step.op is StepOp.OUT:
                assert isinstance(step.arg, tuple)
                reference.out(9, event, step.arg)
                expected.append(None)
                continue
            if step.op is StepOp.SCAN:
                expected.append(Tuples(tuple(filter(step.template.matches, reference.tuples()))))
                continue
            if step.op is StepOp.DELETE:
                taken = []
                while (got := reference.take(9, event, Kind.INP, step.template).value) is not None:
                    taken.append(got)
                    event += 1
                expected.append(Tuples(tuple(taken)))
                continue
            kind = Kind.INP if step.op is StepOp.INP else Kind.RDP
            got = reference.take(9, event, kind, step.template).value
            if step.op is StepOp.ABSENT and got is not None:
                failure = (i, AbortReason.MATCHED)
            elif step.op is not StepOp.ABSENT and got is None:
                failure = (i, AbortReason.NO_MATCH)
            if failure is not None:
                break
            expected.append(got if step.op in (StepOp.INP, StepOp.RDP) else None)
        [answer] = space.atomic(2, 1, steps)
        if failure is None:
            self.assertEqual(answer.results, tuple(expected))
            self.assertEqual(list(space.tuples()), list(reference.tuples()))
        else:
            self.assertEqual(answer.aborted, failure)
            after = TupleSpace.restore(space.snapshot())
            after.forget(2)
            # As before, but that it remembers process 2 was forgotten (the last field).
            self.assertEqual(unpackb(after.snapshot())[:-1], unpackb(before)[:-1])
            self.assertEqual(after.forgotten, 1)
