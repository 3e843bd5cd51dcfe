"""
Tests for L{lips.armor.ftm}: the FTM and the Backup FTM, driven directly with explicit
C{now}, their space requests answered by a L{TableSpace} (the System Tuple Space), the
effects drained and asserted: taking the epoch, daemons joining and surveyed, jobs
taken (or refused) and their surrogate managers installed after their rows, Fig. 6's
install and uninstall, the Byzantine example, node failures, the backup's heartbeats
and promotion, epochs and fencing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from lips.armor import (
    INSTALL,
    INSTALLED,
    UNINSTALL,
    UNINSTALLED,
    BlockFactory,
    BlockType,
    Install,
    Installed,
    Message,
    SubordinateState,
    Uninstall,
    Uninstalled,
    armor_id,
    daemon_id,
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
    EPOCH_TAG,
    FENCED,
    FTM,
    FTM_CHANGED,
    FTM_CHANGED_ACK,
    FTM_ERRONEOUS,
    FTM_PING,
    FTM_PONG,
    HEARTBEAT,
    HEARTBEAT_ACK,
    HOSTS,
    JOB_ACCEPTED,
    JOB_REFUSED,
    JOB_RESULT,
    JOB_RESULT_ACK,
    JOIN,
    NODE_DOWN,
    SUBMIT,
    SURVEY,
    SURVEY_ACK,
    WATCH,
    WELCOME,
    AppDone,
    AppOutcome,
    AppRow,
    AppState,
    ArmorEntry,
    EpochFence,
    Fenced,
    FtmChangedAck,
    FtmErroneous,
    HeartbeatAck,
    JobRef,
    Join,
    NodeDown,
    Role,
    Submit,
    Survey,
    current_ftm,
)
from lips.armor.space import SPACE_KIND, SPACE_REPLY, SpaceOp, SpaceRequest, TableSpace
from lips.kernel import Effect, Send
from lips.strategy import StrategyFactory, StrategyType
from lips.strategy.simplex import PROVIDES
from lips.tuples import ANY

BLOCKS = BlockFactory(
    [
        BlockType("installation", "lips.armor:Installation.from_config", ""),
        BlockType("recovery", "lips.armor:Recovery.from_config", ""),
        BlockType("forward-recovery", "lips.armor:ForwardRecovery.from_config", ""),
        BlockType("execution", "lips.armor.execution:TaskRunner.from_config", ""),
        BlockType("checkpoint", "lips.armor.checkpoint:CheckpointService.from_config", ""),
        BlockType("heartbeat", "lips.armor.heartbeat:HeartbeatMonitor.from_config", ""),
        BlockType("initialization", "lips.armor.initialization:NodeSurvey.from_config", ""),
    ]
)
STRATEGIES = StrategyFactory(
    [StrategyType("simplex", "lips.strategy.simplex:Simplex", "", PROVIDES)]
)
SUBMITTER = armor_id("submitter.c1")
JOB = {"tasks": [{"name": "t1", "target": "app.tasks:square", "args": [3]}]}

_ids = iter(range(1, 10**9))


def opened(message: Message) -> Message:
    """C{message}, out of its FENCED envelope if it has one."""
    if message.type != FENCED:
        return message
    fenced = Fenced.from_message(message)
    return Message(fenced.type, message.source, message.destination, message.id, fenced.body)


def epoch_of(message: Message) -> int | None:
    return Fenced.from_message(message).epoch if message.type == FENCED else None


class Host:
    """
    Runs one ARMOR with a System Tuple Space: its space requests are answered at once
    (and what the answers cause), everything else it sends is kept in C{sent}.
    """

    def __init__(self, armor: Any, space: TableSpace | None = None) -> None:
        self.armor = armor
        self.space = space if space is not None else TableSpace()
        self.app_spaces: dict[str, TableSpace] = {}
        self.sent: list[Message] = []
        self.effects: list[Effect] = []
        self.refuse_writes = False

    def start(self, now: float = 0.0) -> list[Message]:
        self.armor.start(now)
        return self.settle(now)

    def receive(self, message: Message, now: float) -> list[Message]:
        self.armor.receive(message, now)
        return self.settle(now)

    def fire(self, name: str, now: float) -> list[Message]:
        """Fire the armor's block timer C{name} (any slot)."""
        for slot in self.armor.slots():
            context = self.armor.controller.context_of(slot)
            if context is not None and name in context.timers:
                self.armor.timer(context._key(name), now)
        return self.settle(now)

    def settle(self, now: float) -> list[Message]:
        out: list[Message] = []
        while effects := self.armor.drain():
            for effect in effects:
                if not isinstance(effect, Send):
                    self.effects.append(effect)
                    continue
                message = effect.message
                assert effect.to == message.destination
                if message.destination.split(".")[0] == SPACE_KIND:
                    self._answer(message, now)
                else:
                    out.append(message)
        self.sent += out
        return out

    def _answer(self, message: Message, now: float) -> None:
        name = message.destination.split(".", 1)[1]
        space = self.space if name == "system" else self.app_spaces.setdefault(name, TableSpace())
        request = SpaceRequest.from_message(message)
        reply = space.apply(request)
        self.armor.receive(
            Message.of(SPACE_REPLY, message.destination, message.source, next(_ids), reply), now
        )


def of_type(messages: Iterable[Message], type: str) -> list[Message]:
    return [m for m in messages if opened(m).type == type]


def one(messages: Iterable[Message], type: str) -> Message:
    [found] = of_type(messages, type)
    return found


def msg(type: str, source: str, destination: str, body: object = None) -> Message:
    return Message.of(type, source, destination, next(_ids), body)


def fenced(type: str, source: str, destination: str, body: object, epoch: int) -> Message:
    from lips.armor import pack_body

    return msg(FENCED, source, destination, Fenced(epoch, type, pack_body(body)))


def primary(space: TableSpace | None = None, **kw: Any) -> Host:
    """A started FTM on n1, of epoch 1, its start settled."""
    config: dict[str, Any] = {
        "node": "n1",
        "tick": 0.5,
        "misses": 2,
        "verify": 2.0,
        "strategies": STRATEGIES,
        "blocks": BLOCKS,
        **kw,
    }
    host = Host(FTM("ftm", None, **config), space)
    host.start(0.0)
    return host


def installed(host: Host, install: Message, now: float) -> list[Message]:
    """The daemon of the install's destination reports it done."""
    body = Install.from_message(opened(install))
    node = install.destination.split(".", 1)[1]
    return host.receive(
        msg(
            INSTALLED,
            install.destination,
            host.armor.id,
            Installed(body.armor, node, body.incarnation),
        ),
        now,
    )


def join(host: Host, node: str, now: float, boot: int = 1) -> list[Message]:
    """C{node}'s daemon joins and its Initialization ARMOR reports its survey."""
    out = host.receive(msg(JOIN, daemon_id(node), host.armor.id, Join(node, boot)), now)
    install = one(out, INSTALL)
    body = Install.from_message(opened(install))
    out += installed(host, install, now)
    out += host.receive(
        msg(SURVEY, body.armor, host.armor.id, Survey(node, "SimOS", "x", 4, 1 << 30)), now
    )
    return out


def up(host: Host, *nodes: str, now: float = 0.1) -> None:
    """The FTM's heartbeat ARMOR installs, and C{nodes} join."""
    ftm = host.armor
    [hb] = [
        m
        for m in host.sent
        if opened(m).type == INSTALL and "heartbeat" in opened(m).value()["armor"]
    ]
    installed(host, hb, now)
    for node in nodes:
        for m in join(host, node, now):
            if opened(m).type == UNINSTALL:
                armor = Uninstall.from_message(opened(m)).armor
                host.receive(
                    msg(UNINSTALLED, m.destination, ftm.id, Uninstalled(armor, node)), now
                )


class EpochTests(SynchronousTestCase):
    def test_boot_takes_the_first_epoch(self) -> None:
        """A primary FTM takes epoch 1 in the space, records itself, installs its heartbeat."""
        host = primary()
        ftm = host.armor
        self.assertEqual((ftm.role, ftm.epoch), (Role.PRIMARY, 1))
        self.assertEqual(host.space.scan(EPOCH_TAG, ANY, ANY), [(EPOCH_TAG, 1, "ftm")])
        self.assertEqual(current_ftm(host.space.scan(EPOCH_TAG, ANY, ANY)), (1, "ftm"))
        [row] = [r for r in host.space.scan(*ArmorEntry.template()) if r[1] == "ftm"]
        self.assertEqual(ArmorEntry.from_tuple(row).node, "n1")
        install = one(host.sent, INSTALL)
        self.assertEqual(epoch_of(install), 1)
        body = Install.from_message(opened(install))
        self.assertEqual((install.destination, body.type), (daemon_id("n1"), "heartbeat"))
        # Its row went in before the install was asked for.
        self.assertIn(body.armor, {t[1] for t in host.space.scan(*ArmorEntry.template())})

    def test_second_boot_is_fenced(self) -> None:
        """A second primary finds the epoch taken: it is fenced and asks to be uninstalled."""
        space = TableSpace()
        primary(space)
        other = Host(FTM("ftm.x", None, node="n2", blocks=BLOCKS, strategies=STRATEGIES), space)
        out = other.start(0.0)
        self.assertIs(other.armor.role, Role.FENCED)
        [uninstall] = out
        self.assertEqual(
            (uninstall.type, uninstall.destination, uninstall.value()),
            (UNINSTALL, daemon_id("n2"), {"armor": "ftm.x"}),
        )

    def test_every_message_carries_the_epoch(self) -> None:
        """What a primary sends (but its space requests) is in its epoch's envelope."""
        host = primary()
        up(host, "n2")
        self.assertTrue(host.sent)
        self.assertEqual({epoch_of(m) for m in host.sent}, {1})

    def test_fence(self) -> None:
        """An EpochFence refuses older epochs and a second FTM in one; a newer one wins."""
        fence = EpochFence(2, armor_id("ftm"))
        inner, newer = fence.admit(fenced(WATCH, "ftm", "heartbeat.1", {"node": "n1"}, 2))
        assert inner is not None
        self.assertEqual((inner.type, newer), (WATCH, False))
        self.assertEqual(
            fence.admit(fenced(WATCH, "ftm", "heartbeat.1", {"node": "n1"}, 1)), (None, False)
        )
        self.assertEqual(
            fence.admit(fenced(WATCH, "ftm.b", "heartbeat.1", {"node": "n1"}, 2)), (None, False)
        )
        inner, newer = fence.admit(fenced(WATCH, "ftm.b", "heartbeat.1", {"node": "n1"}, 3))
        self.assertTrue(newer)
        self.assertEqual((fence.epoch, fence.ftm, fence.refused), (3, "ftm.b", 2))
        plain = msg(WATCH, "ftm", "heartbeat.1", {"node": "n1"})
        self.assertEqual(fence.admit(plain), (plain, False))

    def test_refused_write_fences(self) -> None:
        """An FTM whose guarded write is refused (its epoch tuple is gone) stops acting."""
        host = primary()
        host.space.apply(SpaceRequest(1, (SpaceOp.template("delete", EPOCH_TAG, ANY, ANY),)))
        out = host.receive(msg(JOIN, daemon_id("n2"), "ftm", Join("n2", 1)), 1.0)
        self.assertIs(host.armor.role, Role.FENCED)
        self.assertEqual(out[-1].type, UNINSTALL)
        self.assertEqual(host.receive(msg(JOIN, daemon_id("n3"), "ftm", Join("n3", 1)), 2.0), [])

    def test_newer_epoch_fences(self) -> None:
        """A primary that hears an FTM of a newer epoch is fenced."""
        host = primary()
        out = host.receive(
            fenced(FTM_CHANGED, "ftm.b-e1-1", "ftm", {"ftm": "ftm.b-e1-1", "epoch": 2}, 2), 1.0
        )
        self.assertIs(host.armor.role, Role.FENCED)
        self.assertEqual([m.type for m in out], [UNINSTALL])


class HostTests(SynchronousTestCase):
    def test_join_survey_watch(self) -> None:
        """A daemon joins: welcomed, surveyed by an Initialization ARMOR, then watched."""
        host = primary()
        ftm = host.armor
        up(host)
        out = join(host, "n2", 1.0)
        self.assertEqual(epoch_of(one(out, WELCOME)), 1)
        install = Install.from_message(opened(one(out, INSTALL)))
        self.assertEqual(
            (install.type, one(out, INSTALL).destination), ("initialization", "daemon.n2")
        )
        self.assertEqual(opened(one(out, SURVEY_ACK)).destination, install.armor)
        self.assertEqual(opened(one(out, UNINSTALL)).value(), {"armor": install.armor})
        watch = opened(one(out, WATCH))
        self.assertEqual(
            (watch.destination, watch.value()), (ftm.heartbeat, {"node": "n2", "watch": True})
        )
        host_row = [t for t in host.space.scan("host", ANY, ANY, ANY, ANY, ANY, ANY)]
        self.assertEqual(host_row, [("host", "n2", 1, "up", "SimOS", 4, 1 << 30)])
        self.assertTrue(ftm.hosts["n2"].up)

    def test_ranked(self) -> None:
        """Hosts are ranked by their ARMORs (load), then their failure history, then name."""
        host = primary()
        up(host, "n1", "n2", "n3", "n4")
        ftm = host.armor
        # n1 has the FTM and its heartbeat.
        self.assertEqual(ftm.ranked()[-1], "n1")
        ftm.failures["n2"] += 1
        self.assertEqual(ftm.ranked()[:2], ["n3", "n4"])
        self.assertEqual(ftm.ranked(exclude=["n3"])[0], "n4")

    def test_rebooted_node(self) -> None:
        """A daemon that joins in a new boot: its node was down, what ran there moves."""
        host = primary()
        up(host, "n2", "n3")
        ftm = host.armor
        out = host.receive(msg(SUBMIT, SUBMITTER, "ftm", Submit("job1", JOB)), 1.0)
        sm = one(out, INSTALL)
        self.assertEqual(sm.destination, "daemon.n2")
        installed(host, sm, 1.0)
        out = host.receive(msg(JOIN, daemon_id("n2"), "ftm", Join("n2", 2)), 2.0)
        self.assertEqual(ftm.failures["n2"], 1)
        moved = [m for m in of_type(out, INSTALL) if opened(m).value()["armor"] == "sm.job1"]
        self.assertEqual([m.destination for m in moved], ["daemon.n3"])
        self.assertEqual(opened(moved[0]).value()["incarnation"], 2)


class JobTests(SynchronousTestCase):
    def test_submit(self) -> None:
        """A job is recorded, accepted, and its surrogate manager installed after its row."""
        host = primary()
        up(host, "n2", "n3")
        out = host.receive(msg(SUBMIT, SUBMITTER, "ftm", Submit("job1", JOB)), 1.0)
        accepted = opened(one(out, JOB_ACCEPTED))
        self.assertEqual(accepted.value(), {"name": "job1", "strategy": "simplex"})
        [app] = host.space.scan(*AppRow.template())
        self.assertEqual(AppRow.from_tuple(app).state, AppState.SUBMITTED)
        install = Install.from_message(opened(one(out, INSTALL)))
        self.assertEqual((install.armor, install.type), ("sm.job1", "surrogate-manager"))
        self.assertEqual(install.config["strategy"], "simplex")
        self.assertEqual(install.config["nodes"][0], "n2")
        self.assertEqual(install.config["epoch"], 1)
        rows = {t[1]: t for t in host.space.scan(*ArmorEntry.template())}
        self.assertEqual(rows["sm.job1"][3:7], ("ftm", "n2", 1, "job1"))

    def test_refusals(self) -> None:
        """A malformed job, an unmet requirement, a name in use: refused with the reason."""
        host = primary()
        up(host, "n2")
        bad = {"tasks": [{"name": "t1", "target": "nope", "args": []}]}
        out = host.receive(msg(SUBMIT, SUBMITTER, "ftm", Submit("job1", bad)), 1.0)
        self.assertIn("target", opened(one(out, JOB_REFUSED)).value()["reason"])
        masked = {**JOB, "requirements": {"errors": "mask"}}
        out = host.receive(msg(SUBMIT, SUBMITTER, "ftm", Submit("job2", masked)), 1.0)
        self.assertIn("no registered strategy", opened(one(out, JOB_REFUSED)).value()["reason"])
        host.receive(msg(SUBMIT, SUBMITTER, "ftm", Submit("job3", JOB)), 1.0)
        out = host.receive(msg(SUBMIT, "submitter.c2", "ftm", Submit("job3", JOB)), 1.0)
        self.assertEqual(opened(one(out, JOB_REFUSED)).value()["reason"], "the name is in use")
        # The same submitter again: accepted again, nothing new installed.
        out = host.receive(msg(SUBMIT, SUBMITTER, "ftm", Submit("job3", JOB)), 1.5)
        self.assertEqual([opened(m).type for m in out], [JOB_ACCEPTED])

    def test_armor_update(self) -> None:
        """A manager's row is recorded (guarded) before the FTM acknowledges it."""
        host = primary()
        row = ArmorEntry("exec.job1.t1", "execution", "sm.job1", "n2", "job1", 1)
        out = host.receive(msg(ARMOR_UPDATE, "sm.job1", "ftm", row), 1.0)
        self.assertEqual(
            opened(one(out, ARMOR_UPDATED)).value(), {"armor": "exec.job1.t1", "incarnation": 1}
        )
        self.assertIn(row.to_tuple(), host.space.tuples())
        # A row claiming another manager is refused.
        forged = ArmorEntry("exec.job1.t2", "execution", "sm.job9", "n2", "job1", 1)
        self.assertEqual(host.receive(msg(ARMOR_UPDATE, "sm.job1", "ftm", forged), 1.0), [])

    def test_armor_update_of_a_superseded_manager(self) -> None:
        """
        An update from an incarnation of a surrogate manager the FTM has replaced (a
        zombie its daemon has not swept yet) is not believed (seeds 372, 1338, 1671 of
        the ARMOR simulator: the zombie moved the current one's ARMORs).
        """
        host = self._running()
        sm = host.armor.subordinates[armor_id("sm.job1")]
        self.assertEqual(sm.incarnation, 1)
        sm.incarnation = 2  # as after a reinstall
        before = list(host.space.tuples())
        stale = ArmorEntry("exec.job1.t1", "execution", "sm.job1", "n2", "job1", 2, by=1)
        self.assertEqual(host.receive(msg(ARMOR_UPDATE, "sm.job1", "ftm", stale), 2.0), [])
        self.assertEqual(host.armor.counters["updates.superseded"], 1)
        self.assertEqual(list(host.space.tuples()), before)
        current = ArmorEntry("exec.job1.t1", "execution", "sm.job1", "n2", "job1", 2, by=2)
        out = host.receive(msg(ARMOR_UPDATE, "sm.job1", "ftm", current), 2.1)
        self.assertEqual(opened(one(out, ARMOR_UPDATED)).value()["incarnation"], 2)

    def _running(self) -> Host:
        host = primary()
        up(host, "n2", "n3")
        out = host.receive(msg(SUBMIT, SUBMITTER, "ftm", Submit("job1", JOB)), 1.0)
        installed(host, one(out, INSTALL), 1.0)
        row = ArmorEntry("exec.job1.t1", "execution", "sm.job1", "n3", "job1", 1)
        host.receive(msg(ARMOR_UPDATE, "sm.job1", "ftm", row), 1.1)
        return host

    def test_uninstall_fig6b(self) -> None:
        """
        Fig. 6b: the outcome recorded, the entries deleted on the surrogate's word, the
        surrogate uninstalled and its row deleted, the result reported until acknowledged.
        """
        host = self._running()
        ftm = host.armor
        out = host.receive(
            msg(APP_OUTCOME, "sm.job1", "ftm", AppOutcome("job1", True, {"t1": 9})), 2.0
        )
        one(out, APP_OUTCOME_ACK)
        self.assertIs(ftm.apps["job1"].state, AppState.FINISHING)
        out = host.receive(
            msg(APP_DONE, "sm.job1", "ftm", AppDone("job1", ("exec.job1.t1",))), 3.0
        )
        one(out, APP_DONE_ACK)
        self.assertEqual(opened(one(out, UNINSTALL)).value(), {"armor": "sm.job1"})
        result = opened(one(out, JOB_RESULT))
        self.assertEqual((result.destination, result.value()["result"]), (SUBMITTER, {"t1": 9}))
        self.assertNotIn("exec.job1.t1", {t[1] for t in host.space.scan(*ArmorEntry.template())})
        host.receive(msg(UNINSTALLED, "daemon.n2", "ftm", Uninstalled("sm.job1", "n2")), 3.1)
        self.assertNotIn("sm.job1", {t[1] for t in host.space.scan(*ArmorEntry.template())})
        # Not acknowledged: sent again at a later round; acknowledged: reported, no more.
        out = host.fire("tick", 4.5)
        one(out, JOB_RESULT)
        host.receive(msg(JOB_RESULT_ACK, SUBMITTER, "ftm", JobRef("job1")), 4.6)
        self.assertIs(ftm.apps["job1"].state, AppState.REPORTED)
        self.assertEqual(of_type(host.fire("tick", 6.0), JOB_RESULT), [])
        # A late app-done is acknowledged again, and nothing more.
        out = host.receive(
            msg(APP_DONE, "sm.job1", "ftm", AppDone("job1", ("exec.job1.t1",))), 7.0
        )
        self.assertEqual([opened(m).type for m in out], [APP_DONE_ACK])

    def test_byzantine_entry_missing(self) -> None:
        """
        The paper's Byzantine example: an FTM that lost an entry of its ARMOR table
        cannot acknowledge its deletion; it answers entry-missing and deletes nothing.
        """
        host = self._running()
        ftm = host.armor
        host.receive(msg(APP_OUTCOME, "sm.job1", "ftm", AppOutcome("job1", True, {"t1": 9})), 2.0)
        del ftm.armors[armor_id("exec.job1.t1")]
        out = host.receive(
            msg(APP_DONE, "sm.job1", "ftm", AppDone("job1", ("exec.job1.t1",))), 3.0
        )
        missing = opened(one(out, ENTRY_MISSING))
        self.assertEqual(missing.value(), {"app": "job1", "armor": "exec.job1.t1"})
        self.assertEqual(of_type(out, APP_DONE_ACK), [])
        self.assertIs(ftm.apps["job1"].state, AppState.FINISHING)
        self.assertIn("exec.job1.t1", {t[1] for t in host.space.scan(*ArmorEntry.template())})
        self.assertEqual(ftm.counters["entries.missing"], 1)

    def test_node_down(self) -> None:
        """A verdict: the host is down, its failure recorded, the surrogate moved, all told."""
        host = self._running()
        ftm = host.armor
        out = host.receive(
            fenced(NODE_DOWN, ftm.heartbeat, "ftm", NodeDown("n2", "3 missed"), 1), 2.0
        )
        out = host.receive(msg(NODE_DOWN, ftm.heartbeat, "ftm", NodeDown("n2", "3 missed")), 2.0)
        self.assertFalse(ftm.hosts["n2"].up)
        self.assertEqual(ftm.failures["n2"], 1)
        self.assertEqual(len(host.space.scan("failure", "n2", ANY, ANY)), 1)
        moved = one(out, INSTALL)
        self.assertEqual(
            (moved.destination, opened(moved).value()["incarnation"]), ("daemon.n3", 2)
        )
        self.assertEqual(opened(one(out, WATCH)).value(), {"node": "n2", "watch": False})
        # One verdict: the same again changes nothing.
        self.assertEqual(
            host.receive(msg(NODE_DOWN, ftm.heartbeat, "ftm", NodeDown("n2")), 2.1), []
        )
        # Only the heartbeat ARMOR gives verdicts.
        self.assertEqual(host.receive(msg(NODE_DOWN, "sm.job1", "ftm", NodeDown("n3")), 2.2), [])
        installed(host, moved, 2.3)
        join(host, "n4", 2.3)
        out = host.receive(msg(NODE_DOWN, ftm.heartbeat, "ftm", NodeDown("n4")), 2.4)
        self.assertEqual(opened(one(out, NODE_DOWN)).destination, "sm.job1")
        self.assertEqual(opened(one(out, HOSTS)).value(), {"nodes": ("n3",)})


class BackupTests(SynchronousTestCase):
    def _pair(self) -> tuple[Host, Host]:
        """A primary on n1 with a backup on n2, the backup started from its install."""
        space = TableSpace()
        host = primary(space)
        up(host, "n2", "n3")
        host.fire("tick", 0.5)
        [made] = [
            m
            for m in host.sent
            if opened(m).type == INSTALL and opened(m).value()["type"] == "ftm"
        ]
        install = Install.from_message(opened(made))
        self.assertEqual(install.config["role"], "backup")
        backup = FTM.from_config(install.armor, install.manager, install.config, BLOCKS)
        backup.strategies = STRATEGIES
        self.assertEqual((backup.role, backup.primary, backup.epoch), (Role.BACKUP, "ftm", 1))
        self.assertEqual(space.scan(BACKUP_TAG, ANY, ANY), [(BACKUP_TAG, 1, install.armor)])
        guard = Host(backup, space)
        guard.start(1.0)
        return host, guard

    def test_backup_made_on_another_node(self) -> None:
        """The FTM makes its backup on another node, and records it as its own manager."""
        host, guard = self._pair()
        self.assertNotEqual(host.armor.subordinate(guard.armor.id).node, "n1")
        [me] = [t for t in host.space.scan(*ArmorEntry.template()) if t[1] == "ftm"]
        self.assertEqual(me[3], guard.armor.id)

    def test_heartbeats_the_ftm_only(self) -> None:
        """The backup pings the FTM and heartbeats the FTM's daemon, nothing else."""
        host, guard = self._pair()
        out = guard.fire("tick", 2.0)
        self.assertEqual(
            sorted((m.type, m.destination) for m in out),
            [(FTM_PING, "ftm"), (HEARTBEAT, "daemon.n1")],
        )
        pong = host.receive(one(out, FTM_PING), 2.0)
        self.assertEqual(epoch_of(one(pong, FTM_PONG)), 1)
        guard.receive(one(pong, FTM_PONG), 2.0)
        guard.receive(msg(HEARTBEAT_ACK, "daemon.n1", guard.armor.id, HeartbeatAck(1, "n1")), 2.0)
        for t in (3.0, 4.0, 5.0):
            out = guard.fire("tick", t)
            guard.receive(one(host.receive(one(out, FTM_PING), t), FTM_PONG), t)
            guard.receive(
                msg(HEARTBEAT_ACK, "daemon.n1", guard.armor.id, HeartbeatAck(9, "n1")), t
            )
        self.assertIs(guard.armor.role, Role.BACKUP)

    def test_promotion(self) -> None:
        """
        The FTM stops answering: the backup takes the next epoch with the tables, tells
        the daemons and the surrogate managers, fences the old FTM, makes its own
        heartbeat and backup, and recovers a surrogate that does not answer.
        """
        host, guard = self._pair()
        out = host.receive(msg(SUBMIT, SUBMITTER, "ftm", Submit("job1", JOB)), 1.5)
        sm = Install.from_message(opened(one(out, INSTALL)))
        installed(host, one(out, INSTALL), 1.5)
        for t in (2.0, 3.0):
            guard.fire("tick", t)  # unanswered
        out = guard.fire("tick", 4.0)
        new = guard.armor
        self.assertEqual((new.role, new.epoch), (Role.PRIMARY, 2))
        self.assertEqual(current_ftm(guard.space.scan(EPOCH_TAG, ANY, ANY)), (2, new.id))
        self.assertIn("job1", new.apps)
        self.assertEqual({epoch_of(m) for m in out}, {2})
        changed = [m.destination for m in of_type(out, FTM_CHANGED)]
        self.assertEqual(sorted(changed), ["daemon.n2", "daemon.n3", "sm.job1"])
        self.assertIn(
            ("daemon.n1", {"armor": "ftm"}),
            [(m.destination, opened(m).value()) for m in of_type(out, UNINSTALL)],
        )
        kinds = {opened(m).value()["type"] for m in of_type(out, INSTALL)}
        self.assertEqual(kinds, {"heartbeat", "ftm"})
        self.assertEqual(new.subordinate(sm.armor).state, SubordinateState.RUNNING)
        rows = {t[1]: t for t in guard.space.scan(*ArmorEntry.template())}
        self.assertNotIn("ftm", rows)
        self.assertEqual(rows["sm.job1"][3], new.id)
        # The old FTM's next write is refused by the space: fenced.
        host.receive(msg(JOIN, daemon_id("n4"), "ftm", Join("n4", 1)), 4.1)
        self.assertIs(host.armor.role, Role.FENCED)
        # The surrogate never answers: recovered once verify passes.
        out = guard.fire("tick", 6.5)
        again = [m for m in of_type(out, INSTALL) if opened(m).value()["armor"] == "sm.job1"]
        self.assertEqual(opened(again[0]).value()["incarnation"], 2)

    def test_adopted_surrogate_answers(self) -> None:
        """A surrogate that acknowledges the new FTM stays where it is."""
        host, guard = self._pair()
        out = host.receive(msg(SUBMIT, SUBMITTER, "ftm", Submit("job1", JOB)), 1.5)
        installed(host, one(out, INSTALL), 1.5)
        node = Install.from_message(opened(one(out, INSTALL))).config["node"]
        guard.fire("tick", 2.0)
        guard.fire("tick", 3.0)
        guard.fire("tick", 4.0)
        new = guard.armor
        guard.receive(
            fenced(FTM_CHANGED_ACK, "sm.job1", new.id, FtmChangedAck("sm.job1", 2, node, 1), 2),
            4.1,
        )
        guard.receive(
            msg(FTM_CHANGED_ACK, "sm.job1", new.id, FtmChangedAck("sm.job1", 2, node, 1)), 4.1
        )
        out = guard.fire("tick", 7.0)
        self.assertEqual(
            [m for m in of_type(out, INSTALL) if opened(m).value()["armor"] == "sm.job1"], []
        )

    def test_erroneous_ftm(self) -> None:
        """A manager flags the FTM erroneous: the backup promotes itself at once."""
        _, guard = self._pair()
        guard.receive(
            msg(FTM_ERRONEOUS, "sm.job1", guard.armor.id, FtmErroneous("ftm", 1, "no entry")), 1.5
        )
        self.assertEqual((guard.armor.role, guard.armor.epoch), (Role.PRIMARY, 2))

    def test_stale_backup_fenced(self) -> None:
        """A backup whose FTM no longer holds the epoch cannot take the next: fenced."""
        _, guard = self._pair()
        guard.space.apply(
            SpaceRequest(
                1,
                (
                    SpaceOp.template("inp", EPOCH_TAG, 1, ANY),
                    SpaceOp.out(EPOCH_TAG, 2, "ftm.other"),
                ),
            )
        )
        out = guard.receive(
            msg(FTM_ERRONEOUS, "sm.job1", guard.armor.id, FtmErroneous("ftm", 1, "x")), 1.5
        )
        self.assertIs(guard.armor.role, Role.FENCED)
        self.assertEqual([m.type for m in out], [UNINSTALL])
