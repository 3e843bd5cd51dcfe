"""
A deterministic simulation of an application that recovers its processes from
checkpoints: a master and workers coordinating through one tuple space, workers killed
at random and restarted from their last checkpoint (or from scratch), every operation
after the restart answered from the space's per-process log until the process passes
the point where it died.

Processes are generators that yield tuple-space operations; a scheduler in the simulated
world (L{lips.testing.world}), one step a tick of its clock, drawing from its seeded
random, runs them a step at a time, delivers answers (parking a blocked C{in}
until a tuple comes), and kills and restarts workers.  After every step it checks that
the space never holds two copies of one output, and at the end that the application's
answer equals the fault-free one.  Any failure names its seed.
"""

from __future__ import annotations

import random
from collections.abc import Generator
from typing import Any

import attrs
import msgpack

from lips.space import Completion, Kind, Status, TupleSpace
from lips.testing.ringsim import InvariantViolation
from lips.testing.world import World
from lips.tuples import make_template, make_tuple

__all__ = ["RecoverySimulation"]

#: What a process yields: an operation, and what it sends back is its answer.
Op = tuple[Kind, Any]
Program = Generator[Op, Any, Any]

_MASTER = 1
#: The virtual time between two scheduling steps.
_TICK = 0.001


@attrs.define(eq=False)
class _Process:
    pid: int
    program: Program
    event: int = 0
    waiting: Op | None = None
    restarts: int = 0
    done: bool = False
    result: Any = None


def worker(pid: int, state: Any, every: int) -> Program:
    """
    A worker: takes ("task", i), puts ("result", i, i * i + salt, salt), the salt drawn
    from a random generator whose seed is in the checkpointed state (so a replay draws
    the same numbers), and checkpoints after every C{every} tasks.  Stops at a task of
    number -1.
    """
    done, seed = (0, pid) if state is None else state
    rng = random.Random(seed)
    while True:
        task = yield (Kind.IN, make_template(("task", int)))
        if task[1] < 0:
            return done
        salt = rng.randrange(3)
        yield (Kind.OUT, ("result", task[1], task[1] * task[1] + salt, salt))
        done += 1
        if done % every == 0:
            seed = rng.randrange(2**31)
            yield (Kind.CHECKPOINT, [done, seed])
            rng = random.Random(seed)


def master(tasks: int, workers: int) -> Program:
    """Puts the tasks, collects every result, stops the workers, returns the sum."""
    for i in range(tasks):
        yield (Kind.OUT, ("task", i))
    total = 0
    for _ in range(tasks):
        r = yield (Kind.IN, make_template(("result", int, int, int)))
        total += r[2] - r[3]
    for _ in range(workers):
        yield (Kind.OUT, ("task", -1))
    return total


class RecoverySimulation:
    """
    One seeded run: C{workers} workers (on two nodes) over C{tasks} tasks, with C{kills}
    kills at random steps, a quarter of them of a whole node (all its workers); each
    killed worker restarts from its last checkpoint.
    """

    def __init__(
        self, seed: int, tasks: int = 40, workers: int = 4, kills: int = 6, every: int = 3
    ) -> None:
        self.seed = seed
        self.world = World(seed)
        self.rng = self.world.rng
        self.tasks, self.workers, self.kills, self.every = tasks, workers, kills, every
        self.space = TupleSpace()
        self.procs: dict[int, _Process] = {}
        self.steps = 0
        self.killed = 0
        self.node_kills = 0
        self.replayed = 0

    def run(self) -> int:
        """Run to the end; the master's answer (checked against the fault-free one)."""
        world = self.world
        self.procs[_MASTER] = _Process(_MASTER, master(self.tasks, self.workers))
        for w in range(self.workers):
            pid = 100 + w
            self.procs[pid] = _Process(pid, worker(pid, None, self.every))
        for p in self.procs.values():
            self._advance(p, None)
        # The scheduler runs one process step every tick of the world's clock; a kill
        # falls half a tick before the step it precedes.
        for step in sorted(self.rng.sample(range(1, self.tasks * 6), self.kills)):
            world.plan((step - 0.5) * _TICK, self._kill_some)
        world.plan(_TICK, self._schedule)
        world.check(self._check)
        world.run()
        expected = sum(i * i for i in range(self.tasks))
        if self.procs[_MASTER].result != expected:
            self._fail(f"the answer is {self.procs[_MASTER].result}, not {expected}")
        return int(self.procs[_MASTER].result)

    def _schedule(self) -> None:
        """One step of one runnable process, chosen at random; then the next tick."""
        self.steps += 1
        if self.steps > 100_000:
            self._fail("no progress after 100,000 steps")
        runnable = [p for p in self.procs.values() if not p.done and p.waiting is not None]
        if not runnable:
            self._fail("every process is blocked")
        self._step(self.rng.choice(runnable))
        if not self.procs[_MASTER].done:
            self.world.plan(self.world.now + _TICK, self._schedule)

    def _kill_some(self) -> None:
        """Kill a worker, or a quarter of the time a whole node's (if the run goes on)."""
        if self.procs[_MASTER].done:
            return
        workers = [p for p in self.procs if p != _MASTER]
        if self.rng.random() < 0.25:
            # A whole node dies: every worker on it (workers alternate nodes).
            node = self.rng.randrange(2)
            self.node_kills += 1
            for pid in workers:
                if pid % 2 == node:
                    self._kill(pid)
        else:
            self._kill(self.rng.choice(workers))

    # -- processes ----------------------------------------------------------------------

    def _step(self, p: _Process) -> None:
        """Apply C{p}'s pending operation as its next event; advance it if answered."""
        assert p.waiting is not None
        kind, arg = p.waiting
        event = p.event + 1
        answer = self._apply(p.pid, event, kind, arg)
        if answer is None:
            return  # blocked: an in with nothing to take yet
        p.event = event
        self._advance(p, answer)

    def _apply(self, pid: int, event: int, kind: Kind, arg: Any) -> Any:
        space = self.space
        logged = space.answered(pid, event)
        if logged is not None and logged.status is not Status.CANCELLED:
            self.replayed += 1  # answered from the log: a restarted process replaying
        if kind is Kind.OUT:
            space.out(pid, event, make_tuple(arg))
            return True
        if kind is Kind.CHECKPOINT:
            space.checkpoint(pid, event, msgpack.packb(arg))
            return True
        c: Completion = space.take(pid, event, kind, arg)
        if c.status is Status.PENDING:
            # Withdraw it again: the scheduler retries the same event later (a real
            # client's waiting in is the same thing, held at the server).
            space.cancel(pid, event)
            return None
        if c.status is not Status.MATCHED:
            self._fail(f"process {pid} event {event}: {c}")
        return c.value

    def _advance(self, p: _Process, answer: Any) -> None:
        try:
            p.waiting = p.program.send(answer)
        except StopIteration as stop:
            p.done, p.waiting, p.result = True, None, stop.value

    def _kill(self, pid: int) -> None:
        """Kill worker C{pid} and restart it from its last checkpoint (or from scratch)."""
        old = self.procs[pid]
        if old.done:
            return
        self.killed += 1
        recovered = self.space.recovered(pid)
        if recovered is None:
            event, state = 0, None
        else:
            event = recovered[0]
            state = tuple(msgpack.unpackb(recovered[1]))
        p = _Process(pid, worker(pid, state, self.every), event, restarts=old.restarts + 1)
        self.procs[pid] = p
        self._advance(p, None)

    # -- invariants ---------------------------------------------------------------------

    def _check(self) -> None:
        seen: set[int] = set()
        for t in self.space.tuples():
            if t[0] == "result":
                if t[1] in seen:
                    self._fail(f"two results for task {t[1]}: an output was not suppressed")
                seen.add(t[1])

    def _fail(self, what: str) -> None:
        raise InvariantViolation(f"recovery simulation, seed {self.seed}: {what}")
