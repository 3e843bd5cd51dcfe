"""
The surrogate manager (the paper's section 4.1.2): runs one application under its
strategy, installed by the FTM as C{sm.<application>}.

L{Surrogate} builds on the L{SurrogateManager} skeleton (the manager base: ids in the
application's scope, the subordinate table, Installation and Recovery) and adds the
application's life, driven by a strategy (L{lips.strategy.IStrategy}, found by name
among the registered ones):

  1. B{Reading}: it reads its application's row and its ARMORs' rows from the System
     Tuple Space (one L{SPACE_REQUEST}).  A fresh surrogate finds none; one reinstalled
     after a crash takes over the ARMORs it finds (each asked L{REPORT_STATUS}; one that
     does not answer in C{verify} seconds is recovered), and one whose application's
     outcome is already recorded goes straight to cleaning up.
  2. B{Running}: it installs the strategy's placements (one Execution ARMOR per task for
     simplex), each I{registered first} (Fig. 6a: L{ARMOR_UPDATE} to the FTM, and only
     once the FTM answers L{ARMOR_UPDATED} the L{INSTALL} to the daemon), collects the
     results (L{TASK_RESULT}, acknowledged), moves a task its Execution ARMOR gave up on
     (L{EXEC_FAILED}) to another node as the strategy says, and moves whatever ran on a
     node the FTM reports down (L{NODE_DOWN}).
  3. B{Recording}: once the strategy has the outcome (or gives up, or the job's timeout
     passes), it sends it to the FTM (L{APP_OUTCOME}) until acknowledged.
  4. B{Cleaning}: it uninstalls its ARMORs (one whose daemon does not answer within
     C{linger} seconds is forgotten).
  5. B{Deleting} (Fig. 6b): it asks the FTM to delete their entries (L{APP_DONE}, naming
     every row it registered) until acknowledged.  An FTM that answers
     L{ENTRY_MISSING} cannot acknowledge an entry it should hold: the surrogate flags it
     to the Backup FTM (L{FTM_ERRONEOUS}, the backup read from the space), which
     promotes itself, and goes on asking the new FTM.
  6. B{Done}: the FTM uninstalls it.

Its messages from the FTM come in the FTM's epoch (L{lips.armor.ftm.EpochFence}): an
older epoch's are refused, a newer FTM becomes its manager (L{FTM_CHANGED}, answered).

Inputs: L{Armor}'s and L{Manager}'s.  Effects: L{Send} (to daemons, its ARMORs, the FTM,
the backup, C{space.system}), L{StartTimer}/L{CancelTimer} (its block's C{tick}), L{Log}.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Any, Final

from twisted.logger import LogLevel

from lips.armor._blocks import OwnBlock
from lips.armor._bodies import Uninstall
from lips.armor._factory import BlockFactory
from lips.armor._manager import Recovery, Subordinate, SubordinateState, SurrogateManager
from lips.armor._messages import UNINSTALL, Message, plain_map, seconds
from lips.armor._names import ArmorId, MessageError, armor_id, check_name, daemon_id
from lips.armor.execution import (
    EXEC_FAILED,
    EXEC_STATUS,
    REPORT_STATUS,
    TASK_RESULT,
    TASK_RESULT_ACK,
    ExecFailed,
    ExecStatus,
    TaskRef,
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
    HOSTS,
    NODE_DOWN,
    AppDone,
    AppOutcome,
    AppRef,
    AppRow,
    AppState,
    ArmorEntry,
    ArmorRef,
    EntryMissing,
    EpochFence,
    FtmChanged,
    FtmChangedAck,
    FtmErroneous,
    Hosts,
    NodeDown,
    admit_fenced,
    placed_options,
)
from lips.armor.space import SPACE_REPLY, SYSTEM_SPACE, SpaceCalls, SpaceOp, SpaceReply
from lips.strategy import (
    IStrategy,
    Job,
    Outcome,
    Placement,
    StrategyFactory,
    default_strategies,
)
from lips.tuples import ANY

__all__ = ["Phase", "Surrogate"]

_TICK: Final = "tick"


class Phase(enum.Enum):
    """Where a surrogate manager's application stands."""

    IDLE = "idle"
    """No job: the manager base only."""
    READING = "reading"
    """Reading its rows from the space."""
    RUNNING = "running"
    """Its ARMORs run; results come in."""
    RECORDING = "recording"
    """The outcome is known; the FTM is recording it."""
    CLEANING = "cleaning"
    """Its ARMORs are being uninstalled."""
    DELETING = "deleting"
    """The FTM is deleting their entries."""
    DONE = "done"
    """All done; the FTM uninstalls it."""


_SUBSCRIPTIONS: Final = frozenset(
    {
        TASK_RESULT,
        EXEC_FAILED,
        EXEC_STATUS,
        ARMOR_UPDATED,
        APP_OUTCOME_ACK,
        APP_DONE_ACK,
        ENTRY_MISSING,
        NODE_DOWN,
        HOSTS,
        FTM_CHANGED,
        SPACE_REPLY,
    }
)


class _Application(OwnBlock):
    """The surrogate manager's own block: hands it its messages and its tick."""

    subscriptions = _SUBSCRIPTIONS


class Surrogate(SurrogateManager):
    """
    A surrogate manager running its application (see the module docstring).

    @param job: the application's job (a L{Job}'s plain map); none, and it is the
        manager base only.
    @param strategy: the registered strategy it runs the job under.
    @param epoch: the FTM's epoch when it was installed.
    @param retry: seconds between its rounds (resending what is not acknowledged).
    @param verify: seconds an ARMOR it takes over has to answer.
    @param linger: seconds it waits for an uninstall before it forgets the ARMOR.
    @param max_reinstalls: its recovery block's limit.
    """

    type_name = "surrogate-manager"

    def __init__(
        self,
        id: str,
        manager: str | None,
        *,
        job: Mapping[str, object] | None = None,
        strategy: str = "simplex",
        epoch: int = 0,
        node: str | None = None,
        incarnation: int = 1,
        retry: float = 0.5,
        verify: float = 2.0,
        linger: float = 5.0,
        max_reinstalls: int = 10,
        strategies: StrategyFactory | None = None,
        nodes: Iterable[str] = (),
        blocks: BlockFactory | None = None,
        composition: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(id, manager, nodes=nodes, blocks=blocks, composition=composition)
        self.node = node
        self.incarnation = incarnation
        self.retry = retry
        self.verify = verify
        self.linger = linger
        self.job: Job | None = None if job is None else Job.from_value(job)
        self.strategy_name = check_name(strategy, "a strategy")
        factory = strategies if strategies is not None else default_strategies()
        self.strategy: IStrategy | None = (
            None if self.job is None else factory.create(self.strategy_name, self.job)
        )
        self.fence = EpochFence(epoch, self.manager)
        self.space = SpaceCalls(self._send)
        self.phase = Phase.IDLE
        self.results: dict[str, Any] = {}
        self.outcome: Outcome | None = None
        self.placements: dict[ArmorId, Placement] = {}
        self.tried: dict[str, int] = {}
        #: The nodes each task failed on beyond its local recovery, in order.
        self.failed_on: dict[str, list[str]] = {}
        #: The rows it registered (and the FTM acknowledged), by id: their incarnation.
        self.rows: dict[ArmorId, int] = {}
        self.flagged: set[int] = set()
        self.deadline: float | None = None
        self._block: _Application | None = None
        self._registering: dict[ArmorId, Subordinate] = {}
        self._verifying: dict[ArmorId, float] = {}
        if "application" not in self.slots():
            self.controller.put("application", "surrogate-application", _Application())
        if "recovery" in self.slots():
            block = self.block("recovery")
            if isinstance(block, Recovery):
                block.max_reinstalls = max_reinstalls

    @classmethod
    def options(cls, config: dict[str, object]) -> dict[str, Any]:
        """
        Besides a manager's: C{job}, C{strategy}, C{epoch}, C{application} (checked
        against its id), C{node}, C{incarnation}, C{retry}, C{verify}, C{linger},
        C{max_reinstalls}.
        """
        kwargs = super().options(config)
        kwargs.update(placed_options(config))
        config.pop("application", None)
        if "job" in config:
            kwargs["job"] = plain_map(config.pop("job"))
        if "strategy" in config:
            kwargs["strategy"] = check_name(config.pop("strategy"), "a strategy")
        for key in ("epoch", "max_reinstalls"):
            if key in config:
                value = config.pop(key)
                if type(value) is not int or value < 0:
                    raise MessageError(f"{key} is an integer >= 0, not {value!r}")
                kwargs[key] = value
        for key in ("retry", "verify", "linger"):
            if key in config:
                kwargs[key] = seconds(config.pop(key), key)
        return kwargs

    # -- the FTM's epoch ------------------------------------------------------------------

    def receive(self, message: Message, now: float) -> None:
        inner = admit_fenced(self, self.fence, message)
        if inner is not None:
            super().receive(inner, now)

    # -- registering before installing (Fig. 6a) ------------------------------------------

    def _request_install(self, record: Subordinate) -> None:
        record.config["node"] = record.node
        record.config["incarnation"] = record.incarnation
        self._registering[record.id] = record
        self._register(record)

    def _register(self, record: Subordinate) -> None:
        assert self.manager is not None
        row = ArmorEntry(
            record.id,
            record.type,
            self.id,
            record.node,
            self.application,
            record.incarnation,
            by=self.incarnation,
        )
        self._send(ARMOR_UPDATE, self.manager, row)

    def reinstall(self, id: ArmorId, node: str, now: float) -> None:
        """Install a dead ARMOR again: on C{node} if it is still a node to use, else another."""
        chosen = node if node in self.nodes else next(iter(self.nodes), None)
        if chosen is None:
            with self._input(now):
                self._outbox.log(LogLevel.warn, "{armor}: no node for {id}", armor=self.id, id=id)
            return
        super().reinstall(id, chosen, now)

    def give_up(self, id: ArmorId, reason: str, now: float) -> None:
        with self._input(now):
            super().give_up(id, reason, now)
            self._finish(Outcome(False, reason=f"{id} was given up: {reason}"[:1000]), now)

    def forget(self, id: ArmorId, now: float) -> None:
        with self._input(now):
            super().forget(id, now)
            self._verifying.pop(armor_id(id), None)
            self._registering.pop(armor_id(id), None)
            self._cleaned()

    # -- the application's life -------------------------------------------------------------

    def _attached(self, block: _Application, now: float) -> None:
        self._block = block
        if self.job is None:
            return
        self.phase = Phase.READING
        self.space.call(
            SYSTEM_SPACE,
            [
                SpaceOp.template("scan", *AppRow.template(self.application)),
                SpaceOp.template("scan", *ArmorEntry.template(application=self.application)),
            ],
            self._read,
        )
        block.context.start_timer(_TICK, now + self.retry)

    def _read(self, reply: SpaceReply, now: float) -> None:
        assert self.job is not None and self.strategy is not None
        apps = [AppRow.from_tuple(t) for t in reply.values[0]] if reply.ok else []
        rows = [ArmorEntry.from_tuple(t) for t in reply.values[1]] if reply.ok else []
        rows = [r for r in rows if r.manager == self.id and r.armor != self.id]
        plans = {self._id_of(p): p for p in self.strategy.placements(self.application, self.nodes)}
        for row in sorted(rows, key=lambda r: r.armor):
            plan = plans.get(row.armor)
            record = Subordinate(
                row.armor,
                row.type,
                row.node,
                dict(plan.config) if plan is not None else {},
                SubordinateState.RUNNING,
                now,
                incarnation=row.incarnation,
            )
            self.subordinates[row.armor] = record
            self._issued.add(row.armor)
            self.rows[row.armor] = row.incarnation
            if plan is not None:
                self.placements[row.armor] = plan
        app = apps[0] if apps else None
        if app is not None and app.state is not AppState.SUBMITTED:
            outcome = app.outcome or {}
            self.outcome = Outcome(
                bool(outcome.get("ok")), outcome.get("result"), str(outcome.get("reason", ""))
            )
            self.phase = Phase.CLEANING
            self._clean(now)
            return
        self.phase = Phase.RUNNING
        if self.job.timeout is not None:
            self.deadline = now + self.job.timeout
        for id in self.subordinates:
            plan = self.placements.get(id)
            if plan is not None and plan.task is not None:
                self._verifying[id] = now + self.verify
                self._send(REPORT_STATUS, id, TaskRef(plan.task))
        for id, plan in plans.items():
            if id not in self.subordinates:
                self.placements[id] = plan
                self.tried[plan.task or id] = 1
                self.install(
                    plan.type,
                    plan.node,
                    now,
                    kind=plan.kind,
                    labels=plan.labels,
                    config=plan.config,
                )
            else:
                self.tried.setdefault(plan.task or id, 1)

    def _id_of(self, placement: Placement) -> ArmorId:
        return armor_id(".".join((placement.kind, *self.scope, *placement.labels)))

    def _finish(self, outcome: Outcome, now: float) -> None:
        """The outcome is known: have the FTM record it."""
        if self.phase is not Phase.RUNNING:
            return
        self.outcome = outcome
        self.phase = Phase.RECORDING
        self._outbox.log(
            LogLevel.info,
            "{armor}: application {app} ended ({ok})",
            armor=self.id,
            app=self.application,
            ok="ok" if outcome.ok else outcome.reason,
        )
        self._record_outcome()

    def _record_outcome(self) -> None:
        assert self.outcome is not None and self.manager is not None
        self._send(
            APP_OUTCOME,
            self.manager,
            AppOutcome(
                self.application, self.outcome.ok, self.outcome.result, self.outcome.reason
            ),
        )

    def _clean(self, now: float) -> None:
        """Uninstall what is left; once nothing is, ask the FTM to delete the entries."""
        if self.phase is not Phase.CLEANING:
            return
        for record in list(self.subordinates.values()):
            if record.id not in self.subordinates:
                continue
            if record.state is not SubordinateState.UNINSTALLING:
                self.uninstall(record.id, now)
            elif now - record.since >= self.linger:
                self.forget(record.id, now)
        self._cleaned()

    def _cleaned(self) -> None:
        if self.phase is Phase.CLEANING and not self.subordinates:
            self.phase = Phase.DELETING
            self._ask_deletion()

    def _ask_deletion(self) -> None:
        assert self.manager is not None
        self._send(APP_DONE, self.manager, AppDone(self.application, tuple(sorted(self.rows))))

    def _tick(self, now: float) -> None:
        assert self._block is not None
        phase = self.phase
        if phase is Phase.RECORDING:
            self._record_outcome()
        elif phase is Phase.CLEANING:
            self._clean(now)
        elif phase is Phase.DELETING:
            self._ask_deletion()
        for record in list(self._registering.values()):
            self._register(record)
        for id, deadline in list(self._verifying.items()):
            if now >= deadline:
                del self._verifying[id]
                found = self.subordinates.get(id)
                if found is not None and found.state is SubordinateState.RUNNING:
                    self.mark_dead(id, "it did not answer its new manager", now)
                    self.reinstall(id, found.node, now)
        if self.phase is Phase.RUNNING:
            for record in list(self.subordinates.values()):
                if record.state is SubordinateState.DEAD:
                    self.reinstall(record.id, record.node, now)
            if self.deadline is not None and now >= self.deadline:
                self._finish(Outcome(False, reason="the job's timeout passed"), now)
        if self.phase is not Phase.DONE:
            self._block.context.start_timer(_TICK, now + self.retry)

    # -- messages -------------------------------------------------------------------------

    def _handle(self, message: Message, now: float) -> None:
        kind = message.type
        source = message.source
        if kind == SPACE_REPLY:
            if source == SYSTEM_SPACE:
                self.space.answer(message, now)
        elif kind == TASK_RESULT:
            result = TaskResult.from_message(message)
            self._send(TASK_RESULT_ACK, source, TaskRef(result.task))
            self._confirmed(source, result.node, result.incarnation, now)
            if self.phase is Phase.RUNNING and result.task not in self.results:
                self.results[result.task] = result.result
                assert self.strategy is not None
                outcome = self.strategy.outcome(self.results)
                if outcome is not None:
                    self._finish(outcome, now)
        elif kind == EXEC_FAILED:
            failed = ExecFailed.from_message(message)
            record = self._current(source, failed.node, failed.incarnation)
            if record is not None:
                self._escalate(record, failed.reason, now)
        elif kind == EXEC_STATUS:
            status = ExecStatus.from_message(message)
            record = self._confirmed(source, status.node, status.incarnation, now)
            if record is not None and status.state == "failed":
                self._escalate(record, "its local recovery gave up", now)
        elif kind == ARMOR_UPDATED:
            ref = ArmorRef.from_message(message)
            record = self._registering.get(ref.armor)
            if record is not None and record.incarnation == ref.incarnation:
                del self._registering[ref.armor]
                self.rows[ref.armor] = ref.incarnation
                current = self.subordinates.get(ref.armor)
                if current is record and record.state is SubordinateState.INSTALLING:
                    super()._request_install(record)
        elif kind == APP_OUTCOME_ACK:
            if (
                AppRef.from_message(message).app == self.application
                and self.phase is Phase.RECORDING
            ):
                self.phase = Phase.CLEANING
                self._clean(now)
        elif kind == APP_DONE_ACK:
            if (
                AppRef.from_message(message).app == self.application
                and self.phase is Phase.DELETING
            ):
                self.phase = Phase.DONE
        elif kind == ENTRY_MISSING:
            missing = EntryMissing.from_message(message)
            if self.phase is Phase.DELETING and missing.app == self.application:
                self._flag_ftm(f"it holds no entry for {missing.armor}")
        elif kind == NODE_DOWN:
            down = NodeDown.from_message(message)
            self._node_down(down.node, now)
        elif kind == HOSTS:
            self.nodes = Hosts.from_message(message).nodes
        elif kind == FTM_CHANGED:
            changed = FtmChanged.from_message(message)
            self._send(
                FTM_CHANGED_ACK,
                source,
                FtmChangedAck(self.id, changed.epoch, self.node or "local", self.incarnation),
            )
            for record in list(self._registering.values()):
                self._register(record)
            if self.phase is Phase.RECORDING:
                self._record_outcome()
            elif self.phase is Phase.DELETING:
                self._ask_deletion()

    def _current(self, source: ArmorId, node: str, incarnation: int) -> Subordinate | None:
        record = self.subordinates.get(source)
        if record is None or record.node != node or record.incarnation != incarnation:
            self.counters["messages.stale"] += 1
            return None
        return record

    def _confirmed(
        self, source: ArmorId, node: str, incarnation: int, now: float
    ) -> Subordinate | None:
        record = self.subordinates.get(source)
        if record is None or record.node != node or record.incarnation != incarnation:
            return None
        self._verifying.pop(source, None)
        if record.state is SubordinateState.INSTALLING:
            self.mark_running(source, now)
        return record

    def _escalate(self, record: Subordinate, reason: str, now: float) -> None:
        """Its Execution ARMOR gave up: move the task as the strategy says, or fail."""
        if self.phase is not Phase.RUNNING or record.state is not SubordinateState.RUNNING:
            return
        assert self.strategy is not None
        plan = self.placements.get(record.id)
        if plan is None:
            return
        key = plan.task or record.id
        if key in self.results:
            return
        failed = self.failed_on.setdefault(key, [])
        failed.append(record.node)
        node = self.strategy.replace(plan, tuple(failed), self.nodes, self.tried.get(key, 1))
        if node is None:
            self._finish(
                Outcome(False, reason=f"{key} failed on every node tried: {reason}"[:1000]), now
            )
            return
        self.tried[key] = self.tried.get(key, 1) + 1
        old = record.node
        self.mark_dead(record.id, reason, now)
        self.reinstall(record.id, node, now)
        if record.node != old:
            self._send(UNINSTALL, daemon_id(old), Uninstall(record.id))

    def _node_down(self, node: str, now: float) -> None:
        self.nodes = tuple(n for n in self.nodes if n != node)
        for record in list(self.subordinates.values()):
            if record.node != node:
                continue
            if record.state is SubordinateState.UNINSTALLING:
                self.forget(record.id, now)
            elif record.state in (SubordinateState.INSTALLING, SubordinateState.RUNNING):
                self.mark_dead(record.id, f"node {node} down", now)
                if self.phase is Phase.RUNNING:
                    self.reinstall(record.id, node, now)
                else:
                    self.forget(record.id, now)

    def _flag_ftm(self, reason: str) -> None:
        """
        Tell the Backup FTM the FTM is erroneous (at every refusal: a flag sent while
        the backup was being replaced is not lost for good).
        """
        epoch = self.fence.epoch
        if self.manager is None:
            return
        self.flagged.add(epoch)
        ftm = self.manager
        self._outbox.log(
            LogLevel.warn,
            "{armor}: the FTM {ftm} is erroneous: {why}",
            armor=self.id,
            ftm=ftm,
            why=reason,
        )

        def found(reply: SpaceReply, now: float) -> None:
            backups = [t for t in (reply.values[0] if reply.ok else ()) if t[1] == epoch]
            if backups:
                self._send(
                    FTM_ERRONEOUS, armor_id(backups[-1][2]), FtmErroneous(ftm, epoch, reason)
                )

        self.space.call(SYSTEM_SPACE, [SpaceOp.template("scan", BACKUP_TAG, ANY, ANY)], found)


_Application.armor_type = Surrogate
