"""
Tests for L{lips.armor.surrogate} and L{lips.strategy}: a surrogate manager running its
application under the simplex strategy, driven directly with explicit C{now}, its space
reads answered by a L{TableSpace}: Execution ARMORs registered before they are
installed (Fig. 6a), results collected, the outcome recorded, the ARMORs uninstalled and
their entries deleted (Fig. 6b), a task moved when its Execution ARMOR gives up or its
node goes down, a reinstalled surrogate taking its ARMORs over, the FTM's epoch, the
FTM flagged to the backup when it cannot acknowledge a deletion; and the strategy
room's jobs, registry and selection.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from lips.armor import (
    ARMOR_DEAD,
    INSTALL,
    INSTALLED,
    UNINSTALL,
    UNINSTALLED,
    ArmorDead,
    ArmorFactory,
    ArmorId,
    ArmorType,
    Install,
    Installed,
    Message,
    SubordinateState,
    SurrogateManager,
    Uninstalled,
    armor_id,
)
from lips.armor.execution import (
    EXEC_FAILED,
    EXEC_STATUS,
    REPORT_STATUS,
    TASK_RESULT,
    TASK_RESULT_ACK,
    ExecFailed,
    ExecStatus,
    TaskResult,
)
from lips.armor.ftm import (
    APP_DONE,
    APP_DONE_ACK,
    APP_OUTCOME,
    APP_OUTCOME_ACK,
    ARMOR_UPDATE,
    ARMOR_UPDATED,
    BACKUP_TAG,
    ENTRY_MISSING,
    FTM_CHANGED,
    FTM_CHANGED_ACK,
    FTM_ERRONEOUS,
    NODE_DOWN,
    AppDone,
    AppRef,
    AppRow,
    AppState,
    ArmorEntry,
    ArmorRef,
    EntryMissing,
    FtmChanged,
    NodeDown,
)
from lips.armor.space import SpaceOp, SpaceRequest, TableSpace
from lips.armor.surrogate import Phase, Surrogate
from lips.strategy import (
    Job,
    JobError,
    Outcome,
    Provides,
    Requirements,
    StrategyFactory,
    StrategyType,
    UnknownStrategy,
    default_strategies,
    select,
)
from lips.strategy.simplex import PROVIDES, Simplex
from tests.unit.test_ftm import BLOCKS, STRATEGIES, Host, fenced, msg, of_type, one, opened

APP = "job7"
SM = armor_id("sm.job7")
NODES = ("n2", "n3", "n4")


def task(name: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "target": "app.tasks:square", "args": [2], **kw}


JOB = {"tasks": [task("t1"), task("t2", checkpoint=True)]}


def surrogate(space: TableSpace | None = None, job: dict[str, Any] = JOB, **kw: Any) -> Host:
    """A started surrogate manager sm.job7 under the FTM of epoch 1, its start settled."""
    space = space if space is not None else TableSpace()
    row = AppRow(APP, armor_id("submitter.c1"), "simplex", AppState.SUBMITTED, job)
    if not space.scan(*AppRow.template(APP)):
        space.apply(SpaceRequest(1, (SpaceOp.out(*row.to_tuple()),)))
    sm = Surrogate(
        SM,
        "ftm",
        job=job,
        epoch=1,
        node="n2",
        nodes=NODES,
        retry=1.0,
        verify=2.0,
        linger=3.0,
        strategies=STRATEGIES,
        blocks=BLOCKS,
        **kw,
    )
    host = Host(sm, space)
    host.start(0.0)
    return host


def registered(host: Host, now: float) -> list[Message]:
    """The FTM records every row the surrogate asked for; the installs that follow."""
    out: list[Message] = []
    for update in of_type(host.sent, ARMOR_UPDATE):
        row = ArmorEntry.from_message(update)
        if (row.armor, row.incarnation) in host.acked:  # type: ignore[attr-defined]
            continue
        host.acked.add((row.armor, row.incarnation))  # type: ignore[attr-defined]
        host.space.apply(
            SpaceRequest(
                1,
                (
                    SpaceOp.template("delete", *ArmorEntry.template(row.armor)),
                    SpaceOp.out(*row.to_tuple()),
                ),
            )
        )
        out += host.receive(
            fenced(ARMOR_UPDATED, "ftm", SM, ArmorRef(row.armor, row.incarnation), 1), now
        )
    return out


def running(host: Host, now: float = 0.1) -> dict[ArmorId, Install]:
    """Register and install every ARMOR asked for; the installs by id."""
    host.acked = set()  # type: ignore[attr-defined]
    installs = {}
    for m in of_type(registered(host, now), INSTALL):
        body = Install.from_message(m)
        installs[body.armor] = body
        node = m.destination.split(".", 1)[1]
        host.receive(
            msg(INSTALLED, m.destination, SM, Installed(body.armor, node, body.incarnation)), now
        )
    return installs


def result(host: Host, id: str, value: Any, now: float) -> list[Message]:
    record = host.armor.subordinate(id)
    t = record.config["task"]
    return host.receive(
        msg(TASK_RESULT, id, SM, TaskResult(t, value, record.node, record.incarnation)), now
    )


class RunTests(SynchronousTestCase):
    def test_registered_before_installed(self) -> None:
        """Fig. 6a: each Execution ARMOR's row goes to the FTM; only then its install."""
        host = surrogate()
        sm = host.armor
        self.assertIs(sm.phase, Phase.RUNNING)
        updates = [ArmorEntry.from_message(m) for m in of_type(host.sent, ARMOR_UPDATE)]
        self.assertEqual(
            [(r.armor, r.manager, r.node, r.application, r.incarnation) for r in updates],
            [("exec.job7.t1", SM, "n2", APP, 1), ("exec.job7.t2", SM, "n3", APP, 1)],
        )
        self.assertEqual(of_type(host.sent, INSTALL), [])
        installs = running(host)
        self.assertEqual(sorted(installs), ["exec.job7.t1", "exec.job7.t2"])
        t2 = installs[armor_id("exec.job7.t2")]
        self.assertEqual(
            (t2.type, t2.config["task"], t2.config["node"]), ("execution", "t2", "n3")
        )
        self.assertEqual(t2.config["blocks"], {"checkpoint": "checkpoint"})
        self.assertEqual(sm.rows, {"exec.job7.t1": 1, "exec.job7.t2": 1})
        # Registrations not acknowledged are sent again at the next round.
        host2 = surrogate()
        self.assertEqual(len(of_type(host2.fire("tick", 1.0), ARMOR_UPDATE)), 2)

    def test_results_outcome_cleanup(self) -> None:
        """Results acknowledged; all in: outcome recorded, ARMORs uninstalled, entries deleted."""
        host = surrogate()
        sm = host.armor
        running(host)
        out = result(host, "exec.job7.t1", 4, 1.0)
        self.assertEqual(opened(one(out, TASK_RESULT_ACK)).destination, "exec.job7.t1")
        self.assertIs(sm.phase, Phase.RUNNING)
        out = result(host, "exec.job7.t2", 9, 1.5)
        outcome = one(out, APP_OUTCOME)
        self.assertEqual(
            outcome.value(), {"app": APP, "ok": True, "result": {"t1": 4, "t2": 9}, "reason": ""}
        )
        self.assertIs(sm.phase, Phase.RECORDING)
        self.assertEqual(
            len(of_type(host.fire("tick", 2.0), APP_OUTCOME)), 1
        )  # again, until acknowledged
        out = host.receive(fenced(APP_OUTCOME_ACK, "ftm", SM, AppRef(APP), 1), 2.1)
        self.assertEqual(
            sorted(m.destination for m in of_type(out, UNINSTALL)), ["daemon.n2", "daemon.n3"]
        )
        for node, id in (("n2", "exec.job7.t1"), ("n3", "exec.job7.t2")):
            out = host.receive(msg(UNINSTALLED, f"daemon.{node}", SM, Uninstalled(id, node)), 2.2)
        done = one(out, APP_DONE)
        self.assertEqual(AppDone.from_message(done).entries, ("exec.job7.t1", "exec.job7.t2"))
        host.receive(fenced(APP_DONE_ACK, "ftm", SM, AppRef(APP), 1), 2.3)
        self.assertIs(sm.phase, Phase.DONE)
        self.assertEqual(host.fire("tick", 3.0), [])

    def test_a_result_twice(self) -> None:
        """A second result for a task (a zombie's, a resend) is acknowledged and ignored."""
        host = surrogate()
        running(host)
        result(host, "exec.job7.t1", 4, 1.0)
        out = result(host, "exec.job7.t1", 5, 1.1)
        one(out, TASK_RESULT_ACK)
        self.assertEqual(host.armor.results, {"t1": 4})

    def test_escalation_moves_the_task(self) -> None:
        """An Execution ARMOR that gave up: the task goes to a node it has not failed on."""
        host = surrogate()
        sm = host.armor
        running(host)
        out = host.receive(
            msg(EXEC_FAILED, "exec.job7.t1", SM, ExecFailed("t1", "crashed", "n2", 1)), 1.0
        )
        self.assertEqual(opened(one(out, UNINSTALL)).destination, "daemon.n2")
        update = ArmorEntry.from_message(one(out, ARMOR_UPDATE))
        self.assertEqual((update.node, update.incarnation), ("n3", 2))
        # A stale report (the old incarnation) changes nothing.
        stale = host.receive(
            msg(EXEC_FAILED, "exec.job7.t1", SM, ExecFailed("t1", "x", "n2", 1)), 1.1
        )
        self.assertEqual(stale, [])
        running(host, 1.2)
        out = host.receive(
            msg(EXEC_FAILED, "exec.job7.t1", SM, ExecFailed("t1", "crashed", "n3", 2)), 2.0
        )
        self.assertEqual(ArmorEntry.from_message(one(out, ARMOR_UPDATE)).node, "n4")
        running(host, 2.1)
        self.assertEqual(sm.failed_on["t1"], ["n2", "n3"])
        out = host.receive(
            msg(EXEC_FAILED, "exec.job7.t1", SM, ExecFailed("t1", "crashed", "n4", 3)), 3.0
        )
        outcome = one(out, APP_OUTCOME).value()
        self.assertFalse(outcome["ok"])
        self.assertIn("t1 failed on every node tried", outcome["reason"])

    def test_node_down(self) -> None:
        """The FTM says a node is down: what ran there is installed elsewhere."""
        host = surrogate()
        sm = host.armor
        running(host)
        out = host.receive(fenced(NODE_DOWN, "ftm", SM, NodeDown("n3"), 1), 1.0)
        update = ArmorEntry.from_message(one(out, ARMOR_UPDATE))
        self.assertEqual(
            (update.armor, update.node, update.incarnation), ("exec.job7.t2", "n2", 2)
        )
        self.assertEqual(sm.nodes, ("n2", "n4"))

    def test_daemon_reports_death(self) -> None:
        """A dead Execution ARMOR is reinstalled where it was (the manager base's recovery)."""
        host = surrogate()
        running(host)
        out = host.receive(
            msg(ARMOR_DEAD, "daemon.n2", SM, ArmorDead("exec.job7.t1", "n2", 1, "killed")), 1.0
        )
        update = ArmorEntry.from_message(one(out, ARMOR_UPDATE))
        self.assertEqual((update.node, update.incarnation), ("n2", 2))

    def test_job_timeout(self) -> None:
        """The job's timeout passes: it fails."""
        host = surrogate(job={**JOB, "timeout": 5.0})
        running(host)
        self.assertEqual(of_type(host.fire("tick", 4.0), APP_OUTCOME), [])
        outcome = one(host.fire("tick", 5.0), APP_OUTCOME).value()
        self.assertEqual((outcome["ok"], outcome["reason"]), (False, "the job's timeout passed"))


class TakeOverTests(SynchronousTestCase):
    def _rows(self, space: TableSpace) -> None:
        for t in ("t1", "t2"):
            row = ArmorEntry(f"exec.job7.{t}", "execution", SM, "n3", APP, 2)
            space.apply(SpaceRequest(1, (SpaceOp.out(*row.to_tuple()),)))

    def test_takes_over_its_armors(self) -> None:
        """A reinstalled surrogate adopts its rows, asks each ARMOR; an answer confirms it."""
        space = TableSpace()
        self._rows(space)
        host = surrogate(space)
        sm = host.armor
        self.assertEqual(of_type(host.sent, ARMOR_UPDATE), [])
        self.assertEqual(
            sorted(m.destination for m in of_type(host.sent, REPORT_STATUS)),
            ["exec.job7.t1", "exec.job7.t2"],
        )
        self.assertEqual(sm.subordinate("exec.job7.t1").state, SubordinateState.RUNNING)
        host.receive(
            msg(EXEC_STATUS, "exec.job7.t1", SM, ExecStatus("t1", "finished", "n3", 2)), 0.5
        )
        result(host, "exec.job7.t1", 4, 0.6)
        # t2 never answers: recovered, as its next incarnation.
        out = host.fire("tick", 3.0)
        update = ArmorEntry.from_message(one(out, ARMOR_UPDATE))
        self.assertEqual(
            (update.armor, update.node, update.incarnation), ("exec.job7.t2", "n3", 3)
        )
        self.assertEqual(sm.results, {"t1": 4})

    def test_outcome_recorded_before(self) -> None:
        """A surrogate whose application's outcome is recorded cleans up and deletes entries."""
        space = TableSpace()
        self._rows(space)
        row = AppRow(
            APP,
            armor_id("submitter.c1"),
            "simplex",
            AppState.FINISHING,
            JOB,
            {"ok": True, "result": 1},
        )
        space.apply(SpaceRequest(1, (SpaceOp.out(*row.to_tuple()),)))
        host = surrogate(space)
        self.assertIs(host.armor.phase, Phase.CLEANING)
        self.assertEqual(len(of_type(host.sent, UNINSTALL)), 2)
        self.assertEqual(host.armor.outcome, Outcome(True, 1, ""))


class EpochTests(SynchronousTestCase):
    def test_older_epoch_refused(self) -> None:
        """A command from an older epoch is refused and counted."""
        host = surrogate()
        host.armor.fence.epoch = 3
        self.assertEqual(host.receive(fenced(NODE_DOWN, "ftm", SM, NodeDown("n3"), 2), 1.0), [])
        self.assertEqual(host.armor.counters["messages.fenced"], 1)

    def test_new_ftm(self) -> None:
        """A new FTM becomes the manager: the change is acknowledged, pending work resent."""
        host = surrogate()
        sm = host.armor
        out = host.receive(
            fenced(FTM_CHANGED, "ftm.b-e1-1", SM, FtmChanged("ftm.b-e1-1", 2, "ftm"), 2), 1.0
        )
        self.assertEqual(sm.manager, "ftm.b-e1-1")
        ack = one(out, FTM_CHANGED_ACK)
        self.assertEqual(
            (ack.destination, ack.value()["epoch"], ack.value()["node"]), ("ftm.b-e1-1", 2, "n2")
        )
        self.assertEqual([m.destination for m in of_type(out, ARMOR_UPDATE)], ["ftm.b-e1-1"] * 2)
        # The old FTM is not heard any more.
        self.assertEqual(host.receive(fenced(NODE_DOWN, "ftm", SM, NodeDown("n3"), 1), 1.1), [])

    def test_flags_an_erroneous_ftm(self) -> None:
        """
        The Byzantine example, the surrogate's side: the FTM cannot acknowledge the
        deletion of an entry; the surrogate flags it to the backup it finds in the space.
        """
        space = TableSpace()
        space.apply(SpaceRequest(1, (SpaceOp.out(BACKUP_TAG, 1, "ftm.b-e1-3"),)))
        host = surrogate(space, job={"tasks": [task("t1")]})
        running(host)
        result(host, "exec.job7.t1", 4, 1.0)
        host.receive(fenced(APP_OUTCOME_ACK, "ftm", SM, AppRef(APP), 1), 1.1)
        out = host.receive(
            msg(UNINSTALLED, "daemon.n2", SM, Uninstalled("exec.job7.t1", "n2")), 1.2
        )
        one(out, APP_DONE)
        out = host.receive(
            fenced(ENTRY_MISSING, "ftm", SM, EntryMissing(APP, "exec.job7.t1"), 1), 1.3
        )
        flag = one(out, FTM_ERRONEOUS)
        self.assertEqual(flag.destination, "ftm.b-e1-3")
        self.assertEqual(flag.value()["ftm"], "ftm")
        self.assertIs(host.armor.phase, Phase.DELETING)
        # It goes on asking (the new FTM will answer).
        self.assertEqual(len(of_type(host.fire("tick", 2.0), APP_DONE)), 1)


class SkeletonTests(SynchronousTestCase):
    def test_no_job(self) -> None:
        """With no job it is the manager base only, as the factory's tests make it."""
        armors = ArmorFactory(
            [ArmorType("surrogate-manager", "lips.armor.surrogate:Surrogate.from_config", "")],
            blocks=BLOCKS,
        )
        sm = armors.create("surrogate-manager", "sm.job7", "ftm", {"nodes": ["n1"]})
        self.assertIsInstance(sm, SurrogateManager)
        sm.start(0.0)
        self.assertEqual(sm.drain(), [])
        assert isinstance(sm, Surrogate)
        self.assertIs(sm.phase, Phase.IDLE)


class StrategyTests(SynchronousTestCase):
    def test_job_from_value(self) -> None:
        """A job's plain map is read strictly; an error names the field."""
        job = Job.from_value({"tasks": [task("t1", timeout=3, checkpoint=True)], "timeout": 60})
        self.assertEqual(
            (job.tasks[0].timeout, job.tasks[0].checkpoint, job.timeout), (3.0, True, 60.0)
        )
        self.assertEqual(Job.from_value(job.to_value()), job)
        for bad, where in (
            ({}, "'tasks'"),
            ({"tasks": []}, "1 to 64"),
            ({"tasks": [task("t1", target="x")]}, "task 1's target"),
            ({"tasks": [task("t1"), task("t1")]}, "differ"),
            ({"tasks": [task("t1", timeout=-1)]}, "task 1's timeout"),
            ({"tasks": [task("t1", colour=1)]}, "'colour'"),
            ({"tasks": [task("t1")], "strategy": "x", "requirements": {}}, "not both"),
            ({"tasks": [task("t1")], "requirements": {"errors": "fix"}}, "errors"),
        ):
            with self.assertRaises(JobError) as caught:
                Job.from_value(bad)
            self.assertIn(where, str(caught.exception))

    def test_selection_is_data(self) -> None:
        """The cheapest registered strategy whose description meets the requirements."""
        job = Job.from_value({"tasks": [task("t1")]})
        self.assertEqual(select(job, STRATEGIES), "simplex")
        tmr = StrategyType(
            "tmr",
            "lips.strategy.simplex:Simplex",
            "",
            Provides(frozenset({"crash", "hang", "node"}), "mask", 3, 3.0),
        )
        more = StrategyFactory([*[STRATEGIES.type("simplex")], tmr])
        masked = Job.from_value({"tasks": [task("t1")], "requirements": {"errors": "mask"}})
        self.assertEqual(select(masked, more), "tmr")
        self.assertEqual(select(job, more), "simplex")
        self.assertRaises(UnknownStrategy, select, masked, STRATEGIES)
        named = Job.from_value({"tasks": [task("t1")], "strategy": "tmr"})
        self.assertEqual(select(named, more), "tmr")
        self.assertRaises(UnknownStrategy, select, named, STRATEGIES)
        self.assertTrue(PROVIDES.meets(Requirements()))

    def test_plugins(self) -> None:
        """Simplex is found through the plugin system, like ARMOR types."""
        self.assertIn("simplex", default_strategies().names())
        strategy = default_strategies().create("simplex", Job.from_value({"tasks": [task("t1")]}))
        self.assertIsInstance(strategy, Simplex)

    def test_simplex(self) -> None:
        """One Execution ARMOR per task, round the nodes; moved off failed nodes; all results."""
        job = Job.from_value({"tasks": [task("t1"), task("t2"), task("t3")]})
        simplex = Simplex(job)
        plans = simplex.placements("job7", ["n1", "n2"])
        self.assertEqual(
            [(p.labels, p.node) for p in plans],
            [(("t1",), "n1"), (("t2",), "n2"), (("t3",), "n1")],
        )
        self.assertEqual(simplex.replace(plans[0], ("n1",), ["n1", "n2", "n3"], 1), "n2")
        self.assertEqual(simplex.replace(plans[0], ("n1", "n2"), ["n1", "n2"], 2), "n1")
        self.assertIsNone(simplex.replace(plans[0], ("n1",), ["n1", "n2"], 3))
        self.assertIsNone(simplex.outcome({"t1": 1}))
        self.assertEqual(
            simplex.outcome({"t1": 1, "t2": 2, "t3": 3}),
            Outcome(True, {"t1": 1, "t2": 2, "t3": 3}),
        )
