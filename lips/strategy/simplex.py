"""
The simplex strategy: single-node execution offering baseline reliability (the paper's
first FTES).  Each task runs once, under one Execution ARMOR (C{exec.<app>.<task>}),
on the FTM's nodes in turn; its Execution ARMOR restarts it locally (from its last
checkpoint when the task checkpoints), and past its threshold the surrogate manager
moves it to another node, up to L{Simplex.max_placements} placements.  The outcome is
every task's result, by task name, once all are in; no voting.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from zope.interface import implementer

from lips.strategy import IStrategy, Job, Outcome, Placement, Provides

__all__ = ["EXECUTION_TYPE", "PROVIDES", "Simplex", "execution_config"]

#: The ARMOR type a task runs under, and the kind of its id.
EXECUTION_TYPE: Final = "execution"
EXECUTION_KIND: Final = "exec"

#: What simplex provides: restarts and moves, no replicas, no voting.
PROVIDES: Final = Provides(frozenset({"crash", "hang", "node"}), "none", 1, 1.0)


def execution_config(app: str, job: Job, task: str) -> dict[str, Any]:
    """The configuration of the Execution ARMOR of C{task} (see L{lips.armor.execution})."""
    t = job.task(task)
    config: dict[str, Any] = {
        "application": app,
        "task": t.name,
        "target": t.target,
        "args": list(t.args),
        "timeout": t.timeout,
        "restarts": t.restarts,
        "checkpoint": t.checkpoint,
    }
    if t.checkpoint:
        config["blocks"] = {"checkpoint": "checkpoint"}
    return config


@implementer(IStrategy)
class Simplex:
    """
    The simplex strategy for one job.

    @ivar max_placements: the most nodes one task is tried on.
    """

    name = "simplex"

    def __init__(self, job: Job, max_placements: int = 3) -> None:
        self.job = job
        self.max_placements = max_placements

    def placements(self, app: str, nodes: Sequence[str]) -> list[Placement]:
        if not nodes:
            return []
        return [
            Placement(
                EXECUTION_TYPE,
                EXECUTION_KIND,
                (task.name,),
                nodes[i % len(nodes)],
                execution_config(app, self.job, task.name),
                task.name,
            )
            for i, task in enumerate(self.job.tasks)
        ]

    def replace(
        self, placement: Placement, failed: Sequence[str], nodes: Sequence[str], tried: int
    ) -> str | None:
        """The best node it has not failed on; else the one it failed on longest ago."""
        if tried >= self.max_placements or not nodes:
            return None
        fresh = [n for n in nodes if n not in failed]
        if fresh:
            return fresh[0]
        return min(nodes, key=lambda n: failed.index(n) if n in failed else -1)

    def outcome(self, results: Mapping[str, Any]) -> Outcome | None:
        if all(task.name in results for task in self.job.tasks):
            return Outcome(True, {task.name: results[task.name] for task in self.job.tasks})
        return None
