"""
lipsd's critical sections against the real tuple-space core, with the lipsd killed at
every step in turn: no process record is lost and none is doubled.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from lips.node import (
    DOWN_TAG,
    EVAL_TAG,
    Adopt,
    EvalRequest,
    Move,
    ProcessSpec,
    lipsd_pid,
    process_template,
    replace_processes,
)
from lips.node._sections import recover, run, take_over
from lips.space import TupleSpace
from lips.tuples import ANY, LTuple, packb
from lips.validate import PID_BITS, PID_MAX
from tests.unit.test_node import FakeClient, Killed, matching
from tests.unit.test_supervisor import publish_state

PIDS = (5, 6, 7)


def place(space: TupleSpace, node: str, pid: int) -> None:
    request = EvalRequest(node, ProcessSpec(pid, "evalapp:square", ("sq", pid), packb([pid]), ()))
    client = FakeClient(space)
    client.out(request.record())
    client.out(request.as_tuple())


def declare_down(space: TupleSpace, node: str) -> None:
    FakeClient(space).out((DOWN_TAG, node, 1, "watcher"))


def finish(coroutine: Coroutine[Any, Any, Any]) -> defer.Deferred[Any]:
    return defer.ensureDeferred(coroutine)


class SectionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.space = TupleSpace()
        for pid in PIDS:
            place(self.space, "n1", pid)
        publish_state(self.space, "n2", 0.1)
        publish_state(self.space, "n3", 0.5)

    def records(self, pid: int) -> list[LTuple]:
        return matching(self.space, process_template(pid))

    def assertEachOnce(self, node: str, requests: bool = True) -> None:
        """Every process has exactly one record, naming C{node}; with C{requests},
        exactly one request, to C{node}, else none."""
        for pid in PIDS:
            records = self.records(pid)
            self.assertEqual([r[2] for r in records], [node], f"records of {pid}")
            sent = matching(self.space, (EVAL_TAG, str, pid, ANY, str, bytes, ANY))
            self.assertEqual([r[1] for r in sent], [node] if requests else [], f"requests {pid}")

    def steps(self, section: Callable[[FakeClient], Coroutine[Any, Any, Any]]) -> int:
        """How many operations C{section} makes, run once to its end on a copy."""
        saved = self.space.snapshot()
        counter = Killed(self.space, lipsd_pid("n2"), at=10**9, applied=False)
        self.successResultOf(finish(section(counter)))
        self.space = TupleSpace.restore(saved)
        return counter.ops

    def test_pid(self) -> None:
        """A lipsd's process id is its own, stable, and above every random id."""
        self.assertEqual(lipsd_pid("n1"), lipsd_pid("n1"))
        self.assertNotEqual(lipsd_pid("n1"), lipsd_pid("n2"))
        for name in ["n1", "n2", "a" * 63]:
            self.assertTrue(2**PID_BITS < lipsd_pid(name) <= PID_MAX)

    def test_move_killed_at_every_step(self) -> None:
        """The lipsd moving a down node's processes, killed at each step (before or
        after the space applies it), restarts, finishes its section, and every process
        ends with exactly one record and one request, on the chosen node."""
        declare_down(self.space, "n1")
        plain = FakeClient(self.space)

        def move(sections: FakeClient) -> Coroutine[Any, Any, Any]:
            return replace_processes(plain, "n1", ["n2"], sections=sections)

        total = self.steps(move)
        self.assertEqual(total, 1 + 5 * len(PIDS) + 2 + 1)
        saved = self.space.snapshot()
        for at in range(total):
            for applied in (False, True):
                self.space = TupleSpace.restore(saved)
                plain.space = self.space
                killed = Killed(self.space, lipsd_pid("n2"), at, applied)
                self.assertNoResult(finish(move(killed)))
                # The same lipsd, started again: first its open section, then its round.
                again = FakeClient(self.space, pid=lipsd_pid("n2"))
                self.successResultOf(finish(recover(again)))
                self.successResultOf(finish(move(again)))
                self.assertEachOnce("n2")

    def test_move_taken_over(self) -> None:
        """A lipsd killed while moving, whose node goes down for good: the lipsd that
        declares it down finishes its section, then moves its processes on."""
        declare_down(self.space, "n1")
        plain = FakeClient(self.space)

        def move(sections: FakeClient) -> Coroutine[Any, Any, Any]:
            return replace_processes(plain, "n1", ["n2"], sections=sections)

        total = self.steps(move)
        saved = self.space.snapshot()
        for at in range(total):
            self.space = TupleSpace.restore(saved)
            plain.space = self.space
            self.assertNoResult(finish(move(Killed(self.space, lipsd_pid("n2"), at, True))))
            declare_down(self.space, "n2")
            theirs = FakeClient(self.space, pid=lipsd_pid("n2"))
            self.successResultOf(finish(take_over(theirs, "n2")))
            mine = FakeClient(self.space, pid=lipsd_pid("n3"))
            for down in ("n2", "n1"):
                self.successResultOf(finish(replace_processes(plain, down, ["n3"], sections=mine)))
            self.assertEachOnce("n3")

    def test_adopt_killed_at_every_step(self) -> None:
        """A node taking its processes back, its lipsd killed at each step: started
        again, it finishes the section, adopts, and every record is there once; the
        requests it took are gone."""
        adopt = Adopt("n1")

        def adopting(sections: FakeClient) -> Coroutine[Any, Any, Any]:
            return run(sections, adopt)

        total = self.steps(adopting)
        self.assertEqual(total, 2 + (len(PIDS) + 1) + 2 * len(PIDS))
        saved = self.space.snapshot()
        for at in range(total):
            for applied in (False, True):
                self.space = TupleSpace.restore(saved)
                self.assertNoResult(
                    finish(adopting(Killed(self.space, lipsd_pid("n1"), at, applied)))
                )
                again = FakeClient(self.space, pid=lipsd_pid("n1"))
                self.successResultOf(finish(recover(again)))
                requests = self.successResultOf(finish(adopting(again)))
                self.assertEqual(sorted(r.spec.pid for r in requests), list(PIDS))
                self.assertEachOnce("n1", requests=False)

    def test_concurrent_takeover(self) -> None:
        """A lipsd cut off mid-section (its operations held) while another finishes
        the section for it: when its operations go in after all, they are the same
        operations, answered from its log, and nothing is moved twice."""
        declare_down(self.space, "n1")
        plain = FakeClient(self.space)
        slow = FakeClient(self.space, hold=True, pid=lipsd_pid("n2"))
        d = finish(run(slow, Move("n1", "n2")))
        for _ in range(5):
            slow.release()
        declare_down(self.space, "n2")
        theirs = FakeClient(self.space, pid=lipsd_pid("n2"))
        self.assertEqual(self.successResultOf(finish(take_over(theirs, "n2"))), Move("n1", "n2"))
        while slow.held:
            slow.release()
        self.successResultOf(d)
        self.assertEachOnce("n2")
        mine = FakeClient(self.space, pid=lipsd_pid("n3"))
        self.successResultOf(finish(replace_processes(plain, "n2", ["n3"], sections=mine)))
        self.assertEachOnce("n3")

    def test_move_stops_when_taken_in(self) -> None:
        """A section run again long after, once the node was taken in again (no
        node-down tuple), moves nothing: the node adopts its records itself."""
        plain = FakeClient(self.space)
        mine = FakeClient(self.space, pid=lipsd_pid("n2"))
        result = self.successResultOf(
            finish(replace_processes(plain, "n1", ["n2"], sections=mine))
        )
        self.assertEqual(result.moved, ())
        self.assertEachOnce("n1")

    def test_bad_checkpoint(self) -> None:
        """A checkpoint that names no section is logged and ignored."""
        client = FakeClient(self.space, pid=lipsd_pid("n2"))
        client.checkpoint({"section": ["format-disk", "n1"]})
        again = FakeClient(self.space, pid=lipsd_pid("n2"))
        self.assertIsNone(self.successResultOf(finish(recover(again))))
        self.assertEqual(len(self.flushLoggedErrors()), 0)
