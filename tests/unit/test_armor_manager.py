"""
Tests for L{lips.armor}'s managers: id assignment, the subordinate table kept from the
daemons' reports, recovery of a subordinate its daemon reports dead, the class
hierarchy (the FTM and a surrogate manager recover the same way), and the paper's
example of a Recovery block replaced at run time by ForwardRecovery, through a message
to the CompositionController.  All driven directly with explicit C{now}.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from lips.armor import (
    ARMOR_DEAD,
    ARMOR_FAILED,
    COMPOSE,
    COMPOSED,
    FTM_ID,
    INSTALL,
    INSTALL_FAILED,
    INSTALLED,
    UNINSTALL,
    UNINSTALLED,
    Armor,
    ArmorDead,
    ArmorFailed,
    ArmorId,
    Compose,
    ComposeResult,
    FaultToleranceManager,
    ForwardRecovery,
    Install,
    Installed,
    InstallFailed,
    Manager,
    Message,
    MessageError,
    Recovery,
    SubordinateState,
    SurrogateManager,
    Uninstall,
    Uninstalled,
    armor_id,
    daemon_id,
)
from lips.kernel import Effect
from tests.unit.test_armor import FACTORY, sends

SM = armor_id("sm.job7")
NODES = ("n1", "n2", "n3")

_ids = iter(range(1, 10**9))


def surrogate(now: float = 0.0, **kwargs: Any) -> SurrogateManager:
    """A started surrogate manager sm.job7 under the FTM, over nodes n1 to n3."""
    sm = SurrogateManager(SM, FTM_ID, nodes=NODES, blocks=FACTORY, **kwargs)
    sm.start(now)
    sm.drain()
    return sm


def report(manager: Armor, type: str, body: object, node: str, now: float) -> list[Effect]:
    """The daemon of C{node} tells C{manager} something; what it does about it."""
    manager.receive(Message.of(type, daemon_id(node), manager.id, next(_ids), body), now)
    return manager.drain()


def installed(manager: Manager, id: ArmorId, now: float = 1.0) -> None:
    record = manager.subordinate(id)
    report(manager, INSTALLED, Installed(id, record.node, record.incarnation), record.node, now)
    assert record.state is SubordinateState.RUNNING


def dead(manager: Armor, id: str, node: str, incarnation: int, now: float) -> list[Effect]:
    return report(manager, ARMOR_DEAD, ArmorDead(id, node, incarnation, "exit code 1"), node, now)


def running(manager: Manager, type: str = "execution", node: str = "n1", **kw: Any) -> ArmorId:
    id = manager.install(type, node, 0.5, **kw)
    manager.drain()
    installed(manager, id)
    return id


class IdAssignmentTests(SynchronousTestCase):
    def test_ftm_ids(self) -> None:
        """The FTM hands out kind.label ids, numbering them when no label is given."""
        ftm = FaultToleranceManager(blocks=FACTORY)
        ftm.start(0.0)
        self.assertEqual(ftm.id, "ftm")
        self.assertEqual(ftm.scope, ())
        self.assertEqual(
            ftm.install("surrogate-manager", "n1", 1.0, kind="sm", labels=["job7"]), "sm.job7"
        )
        self.assertEqual(ftm.install("heartbeat", "n1", 1.0), "heartbeat.1")
        self.assertEqual(ftm.install("heartbeat", "n2", 1.0), "heartbeat.2")
        self.assertRaises(ValueError, ftm.install, "x", "n1", 1.0, kind="sm", labels=["job7"])
        self.assertRaises(ValueError, ftm.install, "x", "n1", 1.0, labels=["a", "b"])
        self.assertEqual(set(ftm.subordinates), {"sm.job7", "heartbeat.1", "heartbeat.2"})

    def test_surrogate_ids(self) -> None:
        """A surrogate manager's ids are in its application's scope."""
        sm = surrogate()
        self.assertEqual((sm.application, sm.scope), ("job7", ("job7",)))
        self.assertEqual(
            sm.install("execution", "n1", 1.0, kind="exec", labels=("t1", "r2")),
            "exec.job7.t1.r2",
        )
        self.assertEqual(sm.install("execution", "n2", 1.0, kind="exec"), "exec.job7.1")
        self.assertEqual(sm.install("voter", "n2", 1.0), "voter.job7.1")
        self.assertRaises(
            ValueError, sm.install, "execution", "n1", 1.0, kind="exec", labels=("t1", "r2")
        )

    def test_bad_requests(self) -> None:
        """Bad kinds, labels, types, nodes and configurations are refused."""
        sm = surrogate()
        cases: list[dict[str, Any]] = [
            {"kind": "Exec"},
            {"kind": "a.b"},
            {"labels": ("T1",)},
            {"config": {1: 2}},
        ]
        for kwargs in cases:
            self.assertRaises(MessageError, sm.install, "execution", "n1", 1.0, **kwargs)
        self.assertRaises(TypeError, sm.install, "execution", "n1", 1.0, labels="t1")
        self.assertRaises(MessageError, sm.install, "Execution", "n1", 1.0)
        self.assertRaises(MessageError, sm.install, "execution", "N1", 1.0)
        self.assertEqual(sm.subordinates, {})
        self.assertEqual(sm.drain(), [])

    def test_who_may_be_what(self) -> None:
        """A surrogate manager is sm.<application> under a manager; the FTM needs none."""
        self.assertRaises(MessageError, SurrogateManager, "exec.job7", FTM_ID, blocks=FACTORY)
        self.assertRaises(MessageError, SurrogateManager, "sm.job7.x", FTM_ID, blocks=FACTORY)
        self.assertRaises(ValueError, SurrogateManager, SM, None, blocks=FACTORY)
        self.assertIsNone(FaultToleranceManager(blocks=FACTORY).manager)
        self.assertRaises(MessageError, Manager, "mgr.x", FTM_ID, nodes=["n1", "n1"])


class TableTests(SynchronousTestCase):
    def test_install(self) -> None:
        """An install is recorded and asked of the node's daemon; its report makes it run."""
        sm = surrogate()
        id = sm.install("execution", "n2", 1.0, kind="exec", labels=["t1"], config={"k": 1})
        record = sm.subordinate(id)
        self.assertEqual(
            (record.type, record.node, record.state, record.incarnation, record.since),
            ("execution", "n2", SubordinateState.INSTALLING, 1, 1.0),
        )
        [request] = sends(sm.drain())
        self.assertEqual((request.type, request.destination), (INSTALL, "daemon.n2"))
        self.assertEqual(Install.from_message(request), Install(id, "execution", SM, 1, {"k": 1}))
        report(sm, INSTALLED, Installed(id, "n2", 1), "n2", 2.0)
        self.assertEqual((record.state, record.since), (SubordinateState.RUNNING, 2.0))

    def test_reports_checked(self) -> None:
        """
        Only the daemon of the subordinate's node, about its current incarnation, is
        believed: other reports are dropped and counted as stale.
        """
        sm = surrogate()
        id = sm.install("execution", "n1", 1.0)
        sm.drain()
        for body, node in [
            (Installed(id, "n1", 1), "n2"),  # from another node's daemon
            (Installed(id, "n1", 2), "n1"),  # about another incarnation
            (Installed("exec.job7.9", "n1", 1), "n1"),  # about no subordinate
            (Uninstalled(id, "n1"), "n1"),  # not being uninstalled
        ]:
            self.assertEqual(sends(report(sm, body_type(body), body, node, 2.0)), [])
        self.assertEqual(sm.counters["messages.stale"], 4)
        self.assertIs(sm.subordinate(id).state, SubordinateState.INSTALLING)
        report(sm, INSTALLED, {"armor": id}, "n1", 3.0)  # malformed
        self.assertEqual(sm.counters["messages.refused"], 1)

    def test_uninstall(self) -> None:
        """An uninstall is asked of the daemon; the row goes when it says it is done."""
        sm = surrogate()
        id = running(sm)
        sm.uninstall(id, 2.0)
        self.assertIs(sm.subordinate(id).state, SubordinateState.UNINSTALLING)
        [request] = sends(sm.drain())
        self.assertEqual((request.type, request.destination), (UNINSTALL, "daemon.n1"))
        self.assertEqual(Uninstall.from_message(request).armor, id)
        sm.uninstall(id, 2.5)
        self.assertEqual(sm.drain(), [])
        report(sm, UNINSTALLED, Uninstalled(id, "n1"), "n1", 3.0)
        self.assertNotIn(id, sm.subordinates)
        self.assertRaises(KeyError, sm.uninstall, id, 4.0)

    def test_died_while_uninstalled(self) -> None:
        """A subordinate that dies while it is uninstalled is just forgotten."""
        sm = surrogate()
        id = running(sm)
        sm.uninstall(id, 2.0)
        sm.drain()
        self.assertEqual(sends(dead(sm, id, "n1", 1, 3.0)), [])
        self.assertNotIn(id, sm.subordinates)

    def test_configured_by_name(self) -> None:
        """A manager is made from its type's options: nodes, and blocks."""
        sm = SurrogateManager.from_config(
            SM,
            FTM_ID,
            {"nodes": ["n1", "n2"], "blocks": {"recovery": "forward-recovery"}},
            FACTORY,
        )
        self.assertEqual(sm.nodes, ("n1", "n2"))
        self.assertIsInstance(sm.block("recovery"), ForwardRecovery)
        for bad in [{"nodes": "n1"}, {"nodes": ["N1"]}, {"nodes": 3}, {"color": "red"}]:
            self.assertRaises(MessageError, SurrogateManager.from_config, SM, FTM_ID, bad, FACTORY)


def body_type(body: object) -> str:
    return {Installed: INSTALLED, Uninstalled: UNINSTALLED}[type(body)]


class RecoveryTests(SynchronousTestCase):
    def test_dead_is_reinstalled_in_place(self) -> None:
        """A subordinate reported dead is installed again where it was: its next incarnation."""
        sm = surrogate()
        id = running(sm, node="n2")
        effects = dead(sm, id, "n2", 1, 5.0)
        [request] = sends(effects)
        self.assertEqual((request.type, request.destination), (INSTALL, "daemon.n2"))
        self.assertEqual(Install.from_message(request).incarnation, 2)
        record = sm.subordinate(id)
        self.assertEqual(
            (record.state, record.incarnation, record.reinstalls, record.reason),
            (SubordinateState.INSTALLING, 2, 1, "exit code 1"),
        )
        recovery = sm.block("recovery")
        assert isinstance(recovery, Recovery)
        self.assertEqual(recovery.recovering, {id})
        self.assertFalse(recovery.idle)
        report(sm, INSTALLED, Installed(id, "n2", 2), "n2", 6.0)
        self.assertTrue(recovery.idle)
        self.assertEqual(sm.counters["subordinates.reinstalled"], 1)

    def test_late_or_foreign_notices(self) -> None:
        """A notice about an older incarnation, or from another daemon, changes nothing."""
        sm = surrogate()
        id = running(sm)
        dead(sm, id, "n1", 1, 2.0)
        installed(sm, id, 3.0)
        self.assertEqual(sends(dead(sm, id, "n1", 1, 4.0)), [])  # the first death, again
        self.assertEqual(sends(report(sm, ARMOR_DEAD, ArmorDead(id, "n1", 2, "x"), "n3", 4.0)), [])
        self.assertIs(sm.subordinate(id).state, SubordinateState.RUNNING)
        self.assertEqual(sm.counters["messages.stale"], 2)

    def test_failed_install_recovered(self) -> None:
        """An install its daemon could not carry out is recovered as a death."""
        sm = surrogate()
        id = sm.install("execution", "n3", 1.0)
        sm.drain()
        body = InstallFailed(id, "n3", 1, "no such target")
        [request] = sends(report(sm, INSTALL_FAILED, body, "n3", 2.0))
        self.assertEqual(Install.from_message(request).incarnation, 2)
        self.assertEqual(sm.subordinate(id).reason, "no such target")

    def test_given_up(self) -> None:
        """Past max_reinstalls a subordinate is failed and the manager's manager told."""
        sm = surrogate(composition={"recovery": "recovery"})
        recovery = sm.block("recovery")
        assert isinstance(recovery, Recovery)
        self.assertEqual(recovery.max_reinstalls, 3)
        id = running(sm)
        for incarnation in (1, 2, 3):
            [install] = sends(dead(sm, id, "n1", incarnation, float(incarnation)))
            self.assertEqual(install.type, INSTALL)
            installed(sm, id, incarnation + 0.5)
        [failed] = sends(dead(sm, id, "n1", 4, 5.0))
        self.assertEqual((failed.type, failed.destination), (ARMOR_FAILED, FTM_ID))
        self.assertEqual(
            ArmorFailed.from_message(failed),
            ArmorFailed(id, "exit code 1 (after 3 reinstalls)", 3),
        )
        self.assertIs(sm.subordinate(id).state, SubordinateState.FAILED)
        sm.uninstall(id, 6.0)
        self.assertNotIn(id, sm.subordinates)
        self.assertEqual(sm.drain(), [])

    def test_max_reinstalls_configured(self) -> None:
        """Recovery takes max_reinstalls from its configuration, and nothing else."""
        self.assertEqual(Recovery.from_config({"max_reinstalls": 0}).max_reinstalls, 0)
        for bad in [{"max_reinstalls": -1}, {"max_reinstalls": "3"}, {"other": 1}]:
            self.assertRaises(MessageError, Recovery.from_config, bad)

    def test_every_manager_alike(self) -> None:
        """
        A daemon's notice of a dead subordinate reaches any kind of manager the same
        way: the FTM, a surrogate manager and a plain Manager reinstall alike.
        """
        ftm = FaultToleranceManager(nodes=NODES, blocks=FACTORY)
        plain = Manager("mgr.x", FTM_ID, nodes=NODES, blocks=FACTORY)
        for manager in (ftm, plain, surrogate()):
            if not manager.started:
                manager.start(0.0)
            id = running(manager, labels=["w"])
            [request] = sends(dead(manager, id, "n1", 1, 2.0))
            self.assertEqual(
                Install.from_message(request), Install(id, "execution", manager.id, 2)
            )
        # The FTM has no manager to tell when it gives up.
        ftm_recovery = ftm.block("recovery")
        assert isinstance(ftm_recovery, Recovery)
        ftm_recovery.max_reinstalls = 1
        id = armor_id("execution.w")
        installed(ftm, id, 3.0)
        self.assertEqual(sends(dead(ftm, id, "n1", 2, 4.0)), [])
        self.assertIs(ftm.subordinate(id).state, SubordinateState.FAILED)


class ReplaceRecoveryTests(SynchronousTestCase):
    def test_forward_recovery(self) -> None:
        """ForwardRecovery installs a dead subordinate on the next node instead."""
        sm = surrogate(composition={"recovery": "forward-recovery"})
        id = running(sm, node="n3")
        [request] = sends(dead(sm, id, "n3", 1, 2.0))
        self.assertEqual(request.destination, "daemon.n1")
        self.assertEqual(sm.subordinate(id).node, "n1")
        installed(sm, id, 3.0)
        [request] = sends(dead(sm, id, "n1", 2, 4.0))
        self.assertEqual(request.destination, "daemon.n2")
        # With no other node known, it stays where it was.
        alone = Manager(
            "mgr.x",
            FTM_ID,
            nodes=["n1"],
            blocks=FACTORY,
            composition={"recovery": "forward-recovery"},
        )
        alone.start(0.0)
        other = running(alone)
        [request] = sends(dead(alone, other, "n1", 1, 2.0))
        self.assertEqual(request.destination, "daemon.n1")

    def test_recovery_replaced_by_message(self) -> None:
        """
        The paper's example: the FTM sends the surrogate manager's CompositionController
        a message replacing its Recovery block with ForwardRecovery.  Asked while a
        recovery is under way, the replacement waits until that recovery ends; from then
        on a dead subordinate moves to another node instead of being reinstalled in place.
        """
        sm = surrogate()
        id = running(sm, node="n1", kind="exec", labels=["t1", "r1"])
        old = sm.block("recovery")
        self.assertIs(type(old), Recovery)
        dead(sm, id, "n1", 1, 2.0)  # the recovery under way: reinstalled on n1
        request = Message.of(
            COMPOSE, FTM_ID, SM, 77, Compose("replace", "recovery", "forward-recovery")
        )
        sm.receive(request, 2.5)
        self.assertEqual([m for m in sends(sm.drain()) if m.type == COMPOSED], [])
        self.assertIs(sm.block("recovery"), old)
        self.assertEqual([c.type for c in sm.pending], ["forward-recovery"])
        # The reinstall is answered: the old Recovery is idle, and is replaced at once.
        effects = report(sm, INSTALLED, Installed(id, "n1", 2), "n1", 3.0)
        [answer] = sends(effects)
        self.assertEqual((answer.type, answer.destination), (COMPOSED, FTM_ID))
        self.assertEqual(ComposeResult.from_message(answer), ComposeResult(77, "recovery"))
        new = sm.block("recovery")
        self.assertIsInstance(new, ForwardRecovery)
        self.assertEqual(sm.dispatch.subscribers(ARMOR_DEAD), ["recovery"])
        self.assertEqual(sm.slots()["recovery"], "forward-recovery")
        # The next death is handled by the new block: the ARMOR moves to n2.
        [install] = sends(dead(sm, id, "n1", 2, 4.0))
        self.assertEqual(
            (install.destination, Install.from_message(install).incarnation), ("daemon.n2", 3)
        )
        self.assertEqual(sm.subordinate(id).reinstalls, 2)
