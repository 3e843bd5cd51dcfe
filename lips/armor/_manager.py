"""
Managers: the ARMORs that install, watch and recover other ARMORs (their
subordinates), and the blocks every manager is made of.

A L{Manager} hands out its subordinates' ids, installs and uninstalls them through the
daemons of their nodes, and keeps the subordinate table (L{Subordinate}: type, id,
node, state, incarnation).  Its blocks react to what the daemons report:
L{Installation} to installs and uninstalls done, L{Recovery} to a subordinate found
dead (or an install that failed).  Because these are a Manager's blocks, every kind of
manager (the FTM, a surrogate manager, a type of your own) recovers its subordinates the
same way, and a different recovery is a different block put in its C{recovery} slot:
L{ForwardRecovery} moves a dead subordinate to another node instead of reinstalling it
in place (the paper's example of a block replaced at run time).

Ids: a manager's ids are C{kind.scope.labels}, its scope being the labels of its own id
after the kind (none for C{ftm}, C{job7} for C{sm.job7}).  A manager with no scope
(the FTM) hands out C{kind.label} (C{sm.job7}, C{daemon.n3}), one with a scope
C{kind.scope.label...} (C{exec.job7.t1.r2}), so no two managers hand out the same id
as long as the FTM gives each application a name of its own.  An id is never handed
out twice by one manager.

Inputs (besides L{Armor}'s; each may also be called by a block, within an input):

  - L{Manager.install}C{(type, node, now, ...) -> id}: install a subordinate.
  - L{Manager.uninstall}C{(id, now)}: uninstall one.
  - L{Manager.mark_running}, L{Manager.mark_dead}, L{Manager.reinstall},
    L{Manager.give_up}, L{Manager.forget}C{(id, ..., now)}: the table's transitions,
    for the blocks.

Effects (besides L{Armor}'s):

  - L{Send} of L{INSTALL} and L{UNINSTALL} to C{daemon.<node>}, and of
    L{ARMOR_FAILED} to its own manager when a subordinate is given up.
  - L{Log}: a reinstall (info), a subordinate given up (warn).

Messages taken: L{INSTALLED}, L{UNINSTALLED} (L{Installation}); L{ARMOR_DEAD},
L{INSTALL_FAILED} (L{Recovery}).  A report is believed only from the daemon of the
node the subordinate was installed on and about its current incarnation; any other is
dropped and counted as C{messages.stale}.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, Final, Self

import attrs
from twisted.logger import LogLevel

from lips.armor._armor import COUNTERS, Armor, BlockContext
from lips.armor._blocks import Block
from lips.armor._bodies import (
    ArmorDead,
    ArmorFailed,
    Install,
    Installed,
    InstallFailed,
    Uninstall,
    Uninstalled,
)
from lips.armor._factory import BlockFactory
from lips.armor._messages import (
    ARMOR_DEAD,
    ARMOR_FAILED,
    INSTALL,
    INSTALL_FAILED,
    INSTALLED,
    UNINSTALL,
    UNINSTALLED,
    Message,
    plain_map,
)
from lips.armor._names import (
    FTM_ID,
    ArmorId,
    MessageError,
    armor_id,
    check_label,
    check_name,
    daemon_id,
    id_labels,
)

__all__ = [
    "MANAGER_COUNTERS",
    "SURROGATE_KIND",
    "FaultToleranceManager",
    "ForwardRecovery",
    "Installation",
    "Manager",
    "Recovery",
    "Subordinate",
    "SubordinateState",
    "SurrogateManager",
]

#: The counters a manager keeps: an ARMOR's and these.
MANAGER_COUNTERS: Final[tuple[str, ...]] = (
    *COUNTERS,
    "messages.stale",  # a report from the wrong daemon, or about an older incarnation
    "subordinates.installed",  # install requests for new subordinates
    "subordinates.reinstalled",
    "subordinates.failed",  # given up
)


class SubordinateState(enum.Enum):
    """Where a subordinate stands, as its manager knows."""

    INSTALLING = "installing"
    """Its install was asked for; its daemon has not said it runs."""
    RUNNING = "running"
    """Its daemon said it runs."""
    DEAD = "dead"
    """Its daemon said it died (or could not install it); recovery decides."""
    UNINSTALLING = "uninstalling"
    """Its uninstall was asked for; its daemon has not said it is done."""
    FAILED = "failed"
    """Given up: recovered too often (its own manager was told)."""


@attrs.define(eq=False)
class Subordinate:
    """
    One row of a manager's subordinate table.

    @ivar incarnation: how many times it was asked to be installed (1 at first).
    @ivar reinstalls: how many of those were recoveries.
    @ivar since: when it entered its state.
    @ivar reason: how it last died, if it did.
    """

    id: ArmorId
    type: str
    node: str
    config: dict[str, Any]
    state: SubordinateState
    since: float
    incarnation: int = 1
    reinstalls: int = 0
    reason: str | None = None


def _nodes(value: object) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise MessageError(f"nodes is a list of node names, not {value!r}")
    nodes = tuple(check_label(n, "a node name") for n in value)
    if len(set(nodes)) != len(nodes):
        raise MessageError(f"nodes has a node twice: {nodes}")
    return nodes


class Manager(Armor):
    """
    An ARMOR that manages others (see the module docstring).

    @param nodes: the nodes it may place subordinates on (L{ForwardRecovery} picks
        from them); the FTM's host table will say this, later.
    @ivar subordinates: the subordinate table, by id.
    @ivar scope: the labels it puts after the kind in the ids it hands out.
    """

    type_name = "manager"
    default_blocks = {
        **Armor.default_blocks,
        "installation": "installation",
        "recovery": "recovery",
    }

    def __init__(
        self,
        id: str,
        manager: str | None,
        *,
        nodes: Iterable[str] = (),
        blocks: BlockFactory | None = None,
        composition: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(id, manager, blocks=blocks, composition=composition)
        self.nodes: tuple[str, ...] = _nodes(nodes)
        self.scope: tuple[str, ...] = id_labels(self.id)[1:]
        self.subordinates: dict[ArmorId, Subordinate] = {}
        self._issued: set[ArmorId] = set()
        self._numbers: Counter[str] = Counter()

    @classmethod
    def options(cls, config: dict[str, object]) -> dict[str, Any]:
        """Besides C{blocks}: C{nodes}, a list of node names."""
        kwargs = super().options(config)
        if "nodes" in config:
            kwargs["nodes"] = _nodes(config.pop("nodes"))
        return kwargs

    # -- queries --------------------------------------------------------------------------

    def subordinate(self, id: str) -> Subordinate:
        """
        The table's row for C{id}.

        @raise KeyError: if it is not a subordinate (any more).
        """
        return self.subordinates[armor_id(id)]

    def check_report(
        self,
        id: ArmorId,
        source: ArmorId,
        incarnation: int | None,
        states: Collection[SubordinateState],
    ) -> Subordinate | None:
        """
        The row a daemon's report about C{id} speaks of, if it is to be believed: from
        the daemon of the subordinate's node, about its current C{incarnation} (None:
        the report names none), while it is in one of C{states}.  Otherwise None, and
        the report is counted as C{messages.stale}.
        """
        record = self.subordinates.get(id)
        if (
            record is None
            or source != daemon_id(record.node)
            or (incarnation is not None and incarnation != record.incarnation)
            or record.state not in states
        ):
            self.counters["messages.stale"] += 1
            return None
        return record

    # -- inputs ---------------------------------------------------------------------------

    def install(
        self,
        type: str,
        node: str,
        now: float,
        *,
        kind: str | None = None,
        labels: Sequence[str] = (),
        config: Mapping[str, object] | None = None,
    ) -> ArmorId:
        """
        Install a subordinate of the registered ARMOR type C{type} on C{node}: give it
        an id (C{kind}, by default C{type}, then the scope, then C{labels}, by default a
        number), record it, and ask the node's daemon to install it (L{INSTALL}).

        @return: its id.
        @raise MessageError: if a name, a label or the configuration is not valid.
        @raise ValueError: if that id was handed out before.
        """
        check_name(type, "an ARMOR type")
        check_label(node, "a node name")
        options = plain_map(config)
        with self._input(now):
            id = self._assign_id(type if kind is None else kind, labels)
            record = Subordinate(id, type, node, options, SubordinateState.INSTALLING, now)
            self.subordinates[id] = record
            self.counters["subordinates.installed"] += 1
            self._request_install(record)
        return id

    def uninstall(self, id: str, now: float) -> None:
        """
        Uninstall subordinate C{id}: ask its daemon (L{UNINSTALL}); its row goes when
        the daemon says it is done.  One that does not run (dead, failed) is forgotten
        at once; one being uninstalled already is left to that.

        @raise KeyError: if it is not a subordinate.
        """
        record = self.subordinate(id)
        with self._input(now):
            if record.state in (SubordinateState.DEAD, SubordinateState.FAILED):
                del self.subordinates[record.id]
                return
            if record.state is SubordinateState.UNINSTALLING:
                return
            self._enter(record, SubordinateState.UNINSTALLING, now)
            self._send(UNINSTALL, daemon_id(record.node), Uninstall(record.id))

    def mark_running(self, id: ArmorId, now: float) -> None:
        """Its daemon says subordinate C{id} runs."""
        with self._input(now):
            self._enter(self.subordinate(id), SubordinateState.RUNNING, now)

    def mark_dead(self, id: ArmorId, reason: str, now: float) -> None:
        """Subordinate C{id} died (or could not be installed) as C{reason} says."""
        with self._input(now):
            record = self.subordinate(id)
            record.reason = reason
            self._enter(record, SubordinateState.DEAD, now)

    def reinstall(self, id: ArmorId, node: str, now: float) -> None:
        """
        Install dead subordinate C{id} again, on C{node}: its next incarnation.

        @raise ValueError: if it is not dead.
        """
        check_label(node, "a node name")
        with self._input(now):
            record = self.subordinate(id)
            if record.state is not SubordinateState.DEAD:
                raise ValueError(f"{id} is {record.state.value}, not dead: not reinstalled")
            record.node = node
            record.incarnation += 1
            record.reinstalls += 1
            self._enter(record, SubordinateState.INSTALLING, now)
            self.counters["subordinates.reinstalled"] += 1
            self._outbox.log(
                LogLevel.info,
                "{armor} reinstalls {id} on {node} ({reason})",
                armor=self.id,
                id=id,
                node=node,
                reason=record.reason,
            )
            self._request_install(record)

    def give_up(self, id: ArmorId, reason: str, now: float) -> None:
        """
        Give subordinate C{id} up: it is failed, and this manager's manager is told
        (L{ARMOR_FAILED}).
        """
        with self._input(now):
            record = self.subordinate(id)
            record.reason = reason
            self._enter(record, SubordinateState.FAILED, now)
            self.counters["subordinates.failed"] += 1
            self._outbox.log(
                LogLevel.warn,
                "{armor} gives {id} up: {reason}",
                armor=self.id,
                id=id,
                reason=reason,
            )
            if self.manager is not None:
                self._send(ARMOR_FAILED, self.manager, ArmorFailed(id, reason, record.reinstalls))

    def forget(self, id: ArmorId, now: float) -> None:
        """Subordinate C{id} is gone for good: delete its row."""
        with self._input(now):
            del self.subordinates[armor_id(id)]

    # -- helpers --------------------------------------------------------------------------

    def _assign_id(self, kind: str, labels: Sequence[str]) -> ArmorId:
        armor_id(kind)
        if "." in kind:
            raise MessageError(f"a kind is one label, not {kind!r}")
        if isinstance(labels, str):
            raise TypeError("labels is a sequence of labels, not one string")
        given = tuple(check_label(label) for label in labels)
        if not self.scope and len(given) > 1:
            raise ValueError(f"{self.id} hands out ids of one label after the kind, not {given}")
        if not given:
            while True:
                self._numbers[kind] += 1
                id = armor_id(".".join((kind, *self.scope, str(self._numbers[kind]))))
                if id not in self._issued and id != self.id:
                    break
        else:
            id = armor_id(".".join((kind, *self.scope, *given)))
            if id in self._issued or id == self.id:
                raise ValueError(f"{id} is handed out already")
        self._issued.add(id)
        return id

    def _request_install(self, record: Subordinate) -> None:
        self._send(
            INSTALL,
            daemon_id(record.node),
            Install(record.id, record.type, self.id, record.incarnation, record.config),
        )

    def _enter(self, record: Subordinate, state: SubordinateState, now: float) -> None:
        record.state = state
        record.since = now


# -- the blocks of a manager ----------------------------------------------------------------


class _ManagerBlock(Block):
    """A block that works in a L{Manager} only."""

    def attach(self, context: BlockContext, now: float) -> None:
        if not isinstance(context.armor, Manager):
            raise TypeError(f"a {type(self).__name__} block works in a Manager only")
        super().attach(context, now)

    @property
    def manager(self) -> Manager:
        armor = self.context.armor
        assert isinstance(armor, Manager)
        return armor


class Installation(_ManagerBlock):
    """
    Keeps the subordinate table up to date with the daemons' reports of installs and
    uninstalls done (L{INSTALLED}: it runs; L{UNINSTALLED}: its row goes).
    """

    subscriptions = frozenset({INSTALLED, UNINSTALLED})

    def process_message(self, message: Message, now: float) -> None:
        manager = self.manager
        if message.type == INSTALLED:
            installed = Installed.from_message(message)
            record = manager.check_report(
                installed.armor,
                message.source,
                installed.incarnation,
                (SubordinateState.INSTALLING,),
            )
            if record is not None:
                manager.mark_running(record.id, now)
        elif message.type == UNINSTALLED:
            uninstalled = Uninstalled.from_message(message)
            record = manager.check_report(
                uninstalled.armor, message.source, None, (SubordinateState.UNINSTALLING,)
            )
            if record is not None:
                manager.forget(record.id, now)


class Recovery(_ManagerBlock):
    """
    A manager's recovery: a subordinate its daemon reports dead (L{ARMOR_DEAD}), or
    could not install (L{INSTALL_FAILED}), is installed again where it was, up to
    C{max_reinstalls} times; after that it is given up and the manager's manager told.
    One that died while being uninstalled is just forgotten.

    It is busy (not idle) from a reinstall it asked for until the daemon answers it, so
    a replacement waits for the recovery under way to end.

    @ivar max_reinstalls: the most reinstalls of one subordinate.
    """

    subscriptions = frozenset({ARMOR_DEAD, INSTALL_FAILED})

    def __init__(self, max_reinstalls: int = 3) -> None:
        super().__init__()
        if type(max_reinstalls) is not int or max_reinstalls < 0:
            raise MessageError(f"max_reinstalls is an integer >= 0, not {max_reinstalls!r}")
        self.max_reinstalls = max_reinstalls
        self._recovering: set[ArmorId] = set()

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> Self:
        """Takes C{max_reinstalls} (default 3)."""
        options = dict(config)
        max_reinstalls = options.pop("max_reinstalls", 3)
        if options:
            raise MessageError(f"{cls.__name__} takes no option {sorted(options)[0]!r}")
        if type(max_reinstalls) is not int:
            raise MessageError(f"max_reinstalls is an integer, not {max_reinstalls!r}")
        return cls(max_reinstalls)

    @property
    def recovering(self) -> frozenset[ArmorId]:
        """The subordinates it reinstalled whose daemon has not answered yet."""
        if self._context is None:
            return frozenset()
        table = self.manager.subordinates
        return frozenset(
            id
            for id in self._recovering
            if id in table and table[id].state is SubordinateState.INSTALLING
        )

    @property
    def idle(self) -> bool:
        return not self.recovering

    def process_message(self, message: Message, now: float) -> None:
        manager = self.manager
        report: ArmorDead | InstallFailed
        if message.type == ARMOR_DEAD:
            report = ArmorDead.from_message(message)
        elif message.type == INSTALL_FAILED:
            report = InstallFailed.from_message(message)
        else:
            return
        record = manager.check_report(
            report.armor,
            message.source,
            report.incarnation,
            (SubordinateState.INSTALLING, SubordinateState.RUNNING, SubordinateState.UNINSTALLING),
        )
        if record is None:
            return
        if record.state is SubordinateState.UNINSTALLING:
            manager.forget(record.id, now)
            return
        manager.mark_dead(record.id, report.reason, now)
        self.recover(record, now)

    def recover(self, record: Subordinate, now: float) -> None:
        """Recover dead subordinate C{record}: reinstall it, or give it up."""
        self._recovering = set(self.recovering)
        if record.reinstalls >= self.max_reinstalls:
            self.manager.give_up(
                record.id,
                f"{record.reason} (after {record.reinstalls} reinstalls)",
                now,
            )
            return
        self.manager.reinstall(record.id, self.choose_node(record), now)
        self._recovering.add(record.id)

    def choose_node(self, record: Subordinate) -> str:
        """Where to reinstall C{record}: where it was."""
        return record.node


class ForwardRecovery(Recovery):
    """
    Recovery that moves on: a dead subordinate is installed again on the next of the
    manager's nodes after the one it died on (where it was, if the manager knows no
    other node).
    """

    def choose_node(self, record: Subordinate) -> str:
        nodes = self.manager.nodes
        if record.node in nodes:
            i = nodes.index(record.node)
            others = nodes[i + 1 :] + nodes[:i]
        else:
            others = nodes
        return others[0] if others else record.node


# -- the kinds of manager -------------------------------------------------------------------


class FaultToleranceManager(Manager):
    """
    The Fault Tolerance Manager: the highest manager, with no manager of its own (the
    Backup FTM watches it).  It manages the daemons and the surrogate managers.

    A skeleton: what it has is the manager base (ids of one label after the kind,
    install, the subordinate table, recovery).  Taking applications, strategies, the
    host table, heartbeats and the Backup FTM are not built yet.
    """

    type_name = "ftm"
    needs_manager = False

    def __init__(
        self,
        id: str = FTM_ID,
        manager: str | None = None,
        *,
        nodes: Iterable[str] = (),
        blocks: BlockFactory | None = None,
        composition: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(id, manager, nodes=nodes, blocks=blocks, composition=composition)


#: The kind of a surrogate manager's id: C{sm.<application>}.
SURROGATE_KIND: Final = "sm"


class SurrogateManager(Manager):
    """
    A surrogate manager: runs one application under one strategy, installed by the FTM
    as C{sm.<application>}; the ids it hands out are in its application's scope
    (C{exec.job7.t1.r2}).

    A skeleton: what it has is the manager base.  Strategies, results and reporting to
    the FTM are not built yet.
    """

    type_name = "surrogate-manager"

    def __init__(
        self,
        id: str,
        manager: str | None,
        *,
        nodes: Iterable[str] = (),
        blocks: BlockFactory | None = None,
        composition: Mapping[str, str] | None = None,
    ) -> None:
        labels = id_labels(armor_id(id))
        if len(labels) != 2 or labels[0] != SURROGATE_KIND:
            raise MessageError(f"a surrogate manager's id is 'sm.<application>', not {id!r}")
        super().__init__(id, manager, nodes=nodes, blocks=blocks, composition=composition)

    @property
    def application(self) -> str:
        """The application it runs (the label after C{sm}): its scope."""
        return self.scope[0]
