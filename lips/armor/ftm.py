"""
The Fault Tolerance Manager and the Backup FTM (the paper's sections 4.1.1, 4.1.3 and
5.3.1), sans-IO: one ARMOR type, L{FTM}, in one of two roles.

The FTM takes applications from submitters (L{SUBMIT}), maps their requirements to a
strategy (L{lips.strategy.select}), picks hosts, installs a surrogate manager per
application (C{sm.<application>}) and reports the result to the submitter once
(L{JOB_RESULT}, until acknowledged).  It manages the daemons (they L{JOIN}; an
Initialization ARMOR surveys each node into the host table), the Heartbeat ARMOR on
its own node (whose L{NODE_DOWN} verdicts it acts on: what it manages on that node is
installed elsewhere, and every surrogate manager is told) and its Backup FTM on another
node.

B{The tables are tuples in the System Tuple Space} (L{lips.armor.space}), reached by
L{SPACE_REQUEST} messages to C{space.system}:

    ("ftm-epoch", epoch, holder)       the current epoch and the FTM that holds it
    ("ftm-backup", epoch, backup)      that FTM's backup
    ("ftm-armor", id, type, manager, node, incarnation, application)  the ARMOR table
    ("app", name, submitter, strategy, state, job, outcome)         the applications
    ("host", node, boot, state, os, cpus, memory)                   the hosts
    ("failure", node, time, what)                                   failure history

The FTM's dictionaries are a cache of them, changed only once the space has applied
the change.  Every change is one request, guarded by the FTM's own epoch tuple (C{rdp}
of C{("ftm-epoch", epoch, id)} first), so an FTM that lost its epoch cannot write; and
the Backup FTM's view of the tables I{is} the space, read in the same request that
takes the next epoch.  So every update reaches both views or neither, by construction:
Fig. 6's atomic update and duplicate messages to the backup are not needed.

B{Epochs and fencing.}  A promotion is one request: C{inp} of the current epoch tuple
(naming the FTM the backup watched), C{out} of the next, and a read of every table.  The
promoted FTM has an id of its own (C{ftm.b-e1-7}), and everything an FTM sends carries its
epoch: a L{FENCED} envelope around the message.  L{EpochFence} is what every receiver
keeps: it refuses an envelope of an older epoch, and a newer one changes who the FTM is
(surrogate managers, Heartbeat and Initialization ARMORs change their manager; daemons
redirect their reports).  A promoted FTM tells every daemon and every surrogate manager
(L{FTM_CHANGED}, which they acknowledge; one that does not is recovered), asks the old
FTM's daemon to uninstall it, installs its own Heartbeat ARMOR and makes a new backup.
An FTM whose guarded write is refused, or that hears a newer epoch, is fenced: it asks
its daemon to uninstall it and does nothing more.

B{Install and uninstall} follow Fig. 6: a manager registers an ARMOR's row before it
asks a daemon to install it (the FTM for its own subordinates; a surrogate manager with
L{ARMOR_UPDATE}, acknowledged by L{ARMOR_UPDATED}), so no ARMOR runs unrecorded.  When
an application ends its surrogate manager records the outcome (L{APP_OUTCOME}),
uninstalls its ARMORs, and asks the FTM to delete their entries (L{APP_DONE}, naming
them).  An FTM that cannot acknowledge the deletion of an entry it should hold answers
L{ENTRY_MISSING}; the surrogate manager then flags the FTM as erroneous to the backup
(L{FTM_ERRONEOUS}), which promotes itself (the paper's Byzantine example).

B{The Backup FTM} heartbeats the FTM only: a L{FTM_PING} to the FTM and a L{HEARTBEAT} to
the FTM's daemon every C{tick}; C{misses} unanswered in a row of either, or an
L{FTM_ERRONEOUS} flag, and it promotes itself.

Inputs: L{Armor}'s and L{Manager}'s (C{start}, C{receive}, C{timer}, C{install},
C{uninstall}, ...).  Effects: L{Send} (of messages to daemons, managers, submitters
and C{space.system}), L{StartTimer}/L{CancelTimer} (its block's C{tick}), L{Log}.
Queries: L{FTM.role}, L{FTM.epoch}, L{FTM.armors}, L{FTM.apps}, L{FTM.hosts},
L{FTM.failures}, L{FTM.backup}.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, Final

import attrs
import msgpack
from twisted.logger import LogLevel

from lips.armor._armor import Armor
from lips.armor._blocks import OwnBlock
from lips.armor._bodies import Uninstall
from lips.armor._factory import BlockFactory
from lips.armor._manager import (
    SURROGATE_KIND,
    FaultToleranceManager,
    Recovery,
    Subordinate,
    SubordinateState,
)
from lips.armor._messages import (
    ARMOR_FAILED,
    UNINSTALL,
    Body,
    Message,
    check_value,
    name,
    pack_body,
    plain_map,
    seconds,
    text,
    unpack_body,
)
from lips.armor._names import (
    FTM_ID,
    ArmorId,
    MessageError,
    armor_id,
    check_label,
    daemon_id,
    id_labels,
)
from lips.armor.space import SPACE_KIND, SPACE_REPLY, SYSTEM_SPACE, SpaceCalls, SpaceOp, SpaceReply
from lips.strategy import (
    Job,
    JobError,
    StrategyFactory,
    UnknownStrategy,
    default_strategies,
    select,
)
from lips.tuples import ANY, LTuple
from lips.validate import at_least

__all__ = [
    "APP_DONE",
    "BACKUP_TAG",
    "EPOCH_TAG",
    "FAILURE_TAG",
    "STATS_EVERY",
    "STATS_TAG",
    "FTM_TYPE",
    "HEARTBEAT_TYPE",
    "INITIALIZATION_TYPE",
    "SURROGATE_TYPE",
    "APP_DONE_ACK",
    "APP_OUTCOME",
    "APP_OUTCOME_ACK",
    "ARMOR_UPDATE",
    "ARMOR_UPDATED",
    "ENTRY_MISSING",
    "FENCED",
    "FTM_CHANGED",
    "FTM_CHANGED_ACK",
    "FTM_ERRONEOUS",
    "FTM_KIND",
    "SUBMITTER_KIND",
    "HEARTBEAT",
    "HEARTBEAT_ACK",
    "HOSTS",
    "JOB_ACCEPTED",
    "JOB_REFUSED",
    "JOB_RESULT",
    "JOB_RESULT_ACK",
    "JOIN",
    "NODE_DOWN",
    "FTM_PING",
    "FTM_PONG",
    "SUBMIT",
    "SURVEY",
    "SURVEY_ACK",
    "WATCH",
    "WELCOME",
    "AppDone",
    "AppOutcome",
    "AppRef",
    "AppRow",
    "AppState",
    "ArmorRef",
    "ArmorEntry",
    "EntryMissing",
    "EpochFence",
    "FTM",
    "Fenced",
    "FtmChanged",
    "FtmChangedAck",
    "FtmErroneous",
    "Heartbeat",
    "HeartbeatAck",
    "HostRow",
    "Hosts",
    "JobAccepted",
    "JobRef",
    "JobRefused",
    "JobResult",
    "Join",
    "NodeDown",
    "NodeRef",
    "FtmPing",
    "FtmPong",
    "Role",
    "Submit",
    "Survey",
    "Watch",
    "Welcome",
    "admit_fenced",
    "current_ftm",
    "epoch_guard",
    "is_ftm",
    "fenced_options",
    "placed_options",
]

#: The kind of every FTM's id (the first C{ftm}; backups C{ftm.b-e<epoch>-<n>}).
FTM_KIND: Final = "ftm"
#: The kind of a submitter's id (C{lips submit}'s: C{submit.<host>-<pid>}).
SUBMITTER_KIND: Final = "submit"

# -- message types ----------------------------------------------------------------------------
#: Submitter to FTM: run this job (L{Submit}).
SUBMIT: Final = "submit"
#: FTM to submitter: the job is taken, under this strategy (L{JobAccepted}).
JOB_ACCEPTED: Final = "job-accepted"
#: FTM to submitter: the job is refused (L{JobRefused}).
JOB_REFUSED: Final = "job-refused"
#: FTM to submitter: how the job ended (L{JobResult}), sent until acknowledged.
JOB_RESULT: Final = "job-result"
#: Submitter to FTM: the result arrived (L{JobRef}).
JOB_RESULT_ACK: Final = "job-result-ack"
#: Daemon to FTM: this node takes part (L{Join}), until welcomed.
JOIN: Final = "join"
#: FTM to daemon: welcome (L{Welcome}).
WELCOME: Final = "welcome"
#: Promoted FTM to daemons and managed ARMORs: I am the FTM now (L{FtmChanged}).
FTM_CHANGED: Final = "ftm-changed"
#: Managed ARMOR to FTM: understood (L{FtmChangedAck}).
FTM_CHANGED_ACK: Final = "ftm-changed-ack"
#: FTM to surrogate managers: the nodes to place ARMORs on, best first (L{Hosts}).
HOSTS: Final = "hosts"
#: Heartbeat ARMOR to FTM, FTM to surrogate managers: a node is down (L{NodeDown}).
NODE_DOWN: Final = "node-down"
#: FTM to Heartbeat ARMOR: watch a node, or stop (L{Watch}).
WATCH: Final = "watch"
#: Heartbeat ARMOR or Backup FTM to a daemon (L{Heartbeat}).
HEARTBEAT: Final = "heartbeat"
#: Daemon to whoever heartbeats it (L{HeartbeatAck}).
HEARTBEAT_ACK: Final = "heartbeat-ack"
#: Initialization ARMOR to FTM: the node's survey (L{Survey}), until acknowledged.
SURVEY: Final = "survey"
#: FTM to Initialization ARMOR: the survey is in the host table (L{NodeRef}).
SURVEY_ACK: Final = "survey-ack"
#: Manager to FTM: record this row of the ARMOR table (L{ArmorEntry}).
ARMOR_UPDATE: Final = "armor-update"
#: FTM to manager: recorded (L{ArmorRef}).
ARMOR_UPDATED: Final = "armor-updated"
#: Surrogate manager to FTM: the application's outcome (L{AppOutcome}).
APP_OUTCOME: Final = "app-outcome"
#: FTM to surrogate manager: recorded (L{AppRef}).
APP_OUTCOME_ACK: Final = "app-outcome-ack"
#: Surrogate manager to FTM: its ARMORs are uninstalled, delete their entries (L{AppDone}).
APP_DONE: Final = "app-done"
#: FTM to surrogate manager: deleted (L{AppRef}).
APP_DONE_ACK: Final = "app-done-ack"
#: FTM to surrogate manager: it cannot acknowledge, an entry is missing (L{EntryMissing}).
ENTRY_MISSING: Final = "entry-missing"
#: A manager to the Backup FTM: the FTM is erroneous (L{FtmErroneous}).
FTM_ERRONEOUS: Final = "ftm-erroneous"
#: Backup FTM to FTM (L{FtmPing}); answered with L{FTM_PONG} (L{FtmPong}).
FTM_PING: Final = "ftm-ping"
FTM_PONG: Final = "ftm-pong"
#: An FTM's message, in its epoch (L{Fenced}).
FENCED: Final = "fenced"

#: The ARMOR types the FTM installs (names registered in C{twisted/plugins/lips_armor.py}).
SURROGATE_TYPE: Final = "surrogate-manager"
HEARTBEAT_TYPE: Final = "heartbeat"
INITIALIZATION_TYPE: Final = "initialization"
FTM_TYPE: Final = "ftm"


# -- bodies -----------------------------------------------------------------------------------


def _label(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    check_label(value, attribute.name)


_name = name


def _plain(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    check_value(value)


def _flag(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if type(value) is not bool:
        raise MessageError(f"{attribute.name} is true or false, not {value!r}")


def _labels(value: object) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise MessageError(f"a list of labels, not {value!r}")
    return tuple(check_label(v) for v in value)


def _ids(value: object) -> tuple[ArmorId, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise MessageError(f"a list of ARMOR ids, not {value!r}")
    return tuple(armor_id(v) for v in value)


def _id_or_empty(value: object) -> str:
    if value == "":
        return ""
    return armor_id(value)


def _label_or_empty(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value != "":
        check_label(value, attribute.name)


@attrs.frozen
class Fenced(Body):
    """An FTM's message of C{type} with C{body} (msgpack), sent in its C{epoch}."""

    message_types: ClassVar[frozenset[str]] = frozenset({FENCED})

    epoch: int = attrs.field(validator=at_least(1))
    type: str = attrs.field(validator=name)
    body: bytes = attrs.field(validator=attrs.validators.instance_of(bytes))

    def __attrs_post_init__(self) -> None:
        unpack_body(self.body)


@attrs.frozen
class Submit(Body):
    """Run C{job} (a L{lips.strategy.Job}'s plain map) as application C{name}."""

    message_types: ClassVar[frozenset[str]] = frozenset({SUBMIT})

    name: str = attrs.field(validator=_label)
    job: dict[str, Any] = attrs.field(converter=plain_map)


@attrs.frozen
class JobAccepted(Body):
    """Application C{name} is taken, to run under C{strategy}."""

    message_types: ClassVar[frozenset[str]] = frozenset({JOB_ACCEPTED})

    name: str = attrs.field(validator=_label)
    strategy: str = attrs.field(validator=_name)


@attrs.frozen
class JobRefused(Body):
    """Application C{name} is refused: C{reason}."""

    message_types: ClassVar[frozenset[str]] = frozenset({JOB_REFUSED})

    name: str = attrs.field(validator=_label)
    reason: str = attrs.field(validator=text)


@attrs.frozen
class JobResult(Body):
    """Application C{name} ended: C{ok} with C{result}, or not for C{reason}."""

    message_types: ClassVar[frozenset[str]] = frozenset({JOB_RESULT})

    name: str = attrs.field(validator=_label)
    ok: bool = attrs.field(validator=_flag)
    result: Any = attrs.field(default=None, validator=_plain)
    reason: str = attrs.field(default="", validator=text)


@attrs.frozen
class JobRef(Body):
    """Application C{name} (the submitter got its result)."""

    message_types: ClassVar[frozenset[str]] = frozenset({JOB_RESULT_ACK})

    name: str = attrs.field(validator=_label)


@attrs.frozen
class Join(Body):
    """The daemon of C{node}, in its C{boot}-th run, takes part."""

    message_types: ClassVar[frozenset[str]] = frozenset({JOIN})

    node: str = attrs.field(validator=_label)
    boot: int = attrs.field(validator=at_least(1))


@attrs.frozen
class Welcome(Body):
    """The FTM welcomes the daemon of C{node} in its C{boot}-th run."""

    message_types: ClassVar[frozenset[str]] = frozenset({WELCOME})

    node: str = attrs.field(validator=_label)
    boot: int = attrs.field(validator=at_least(1))


@attrs.frozen
class FtmChanged(Body):
    """C{ftm} is the FTM from C{epoch} on, after C{previous} ('' if none)."""

    message_types: ClassVar[frozenset[str]] = frozenset({FTM_CHANGED})

    ftm: ArmorId = attrs.field(converter=armor_id)
    epoch: int = attrs.field(validator=at_least(1))
    previous: str = attrs.field(default="", converter=_id_or_empty)


@attrs.frozen
class FtmChangedAck(Body):
    """C{armor}, incarnation C{incarnation} on C{node}, knows the FTM of C{epoch}."""

    message_types: ClassVar[frozenset[str]] = frozenset({FTM_CHANGED_ACK})

    armor: ArmorId = attrs.field(converter=armor_id)
    epoch: int = attrs.field(validator=at_least(1))
    node: str = attrs.field(validator=_label)
    incarnation: int = attrs.field(validator=at_least(1))


@attrs.frozen
class Hosts(Body):
    """The nodes to place ARMORs on, best first."""

    message_types: ClassVar[frozenset[str]] = frozenset({HOSTS})

    nodes: tuple[str, ...] = attrs.field(converter=_labels)


@attrs.frozen
class NodeDown(Body):
    """C{node} is down: C{reason}."""

    message_types: ClassVar[frozenset[str]] = frozenset({NODE_DOWN})

    node: str = attrs.field(validator=_label)
    reason: str = attrs.field(default="", validator=text)


@attrs.frozen
class Watch(Body):
    """Heartbeat C{node} (C{watch}), or stop."""

    message_types: ClassVar[frozenset[str]] = frozenset({WATCH})

    node: str = attrs.field(validator=_label)
    watch: bool = attrs.field(default=True, validator=_flag)


@attrs.frozen
class Heartbeat(Body):
    """Heartbeat number C{seq}."""

    message_types: ClassVar[frozenset[str]] = frozenset({HEARTBEAT})

    seq: int = attrs.field(validator=at_least(1))


@attrs.frozen
class HeartbeatAck(Body):
    """The daemon of C{node}, in its C{boot}-th run, answers heartbeat C{seq}."""

    message_types: ClassVar[frozenset[str]] = frozenset({HEARTBEAT_ACK})

    seq: int = attrs.field(validator=at_least(1))
    node: str = attrs.field(validator=_label)
    boot: int = attrs.field(default=1, validator=at_least(1))


@attrs.frozen
class Survey(Body):
    """What the Initialization ARMOR found on C{node}."""

    message_types: ClassVar[frozenset[str]] = frozenset({SURVEY})

    node: str = attrs.field(validator=_label)
    os: str = attrs.field(default="", validator=text)
    machine: str = attrs.field(default="", validator=text)
    cpus: int = attrs.field(default=1, validator=at_least(0))
    memory: int = attrs.field(default=0, validator=at_least(0))


@attrs.frozen
class NodeRef(Body):
    """Node C{node}."""

    message_types: ClassVar[frozenset[str]] = frozenset({SURVEY_ACK})

    node: str = attrs.field(validator=_label)


@attrs.frozen
class ArmorEntry(Body):
    """
    One entry of the FTM's ARMOR table: ARMOR C{armor} of type C{type}, managed by
    C{manager} ('' for none), its C{incarnation}-th install, on C{node}, for
    C{application} ('' for none).  (The daemons' location rows, tagged C{armor}, have
    the same fields; these are the FTM's, tagged C{ftm-armor}, and written by it.)
    """

    message_types: ClassVar[frozenset[str]] = frozenset({ARMOR_UPDATE})
    TAG: ClassVar[str] = "ftm-armor"

    armor: ArmorId = attrs.field(converter=armor_id)
    type: str = attrs.field(validator=_name)
    manager: str = attrs.field(converter=_id_or_empty)
    node: str = attrs.field(validator=_label)
    application: str = attrs.field(default="", validator=_label_or_empty)
    incarnation: int = attrs.field(default=1, validator=at_least(1))
    #: In an L{ARMOR_UPDATE}: the incarnation of the manager that sends it (0: not
    #: said), so that a superseded one still running is not believed.  Not in the row.
    by: int = attrs.field(default=0, validator=at_least(0), eq=False)

    def to_tuple(self) -> LTuple:
        return (
            self.TAG,
            self.armor,
            self.type,
            self.manager,
            self.node,
            self.incarnation,
            self.application,
        )

    @classmethod
    def from_tuple(cls, row: Sequence[Any]) -> ArmorEntry:
        _, armor, type, manager, node, incarnation, application = row
        return cls(armor, type, manager, node, application, incarnation)

    @staticmethod
    def template(armor: object = ANY, application: object = ANY) -> tuple[Any, ...]:
        return (ArmorEntry.TAG, armor, ANY, ANY, ANY, ANY, application)


@attrs.frozen
class ArmorRef(Body):
    """The row of C{armor}'s C{incarnation}-th install is recorded."""

    message_types: ClassVar[frozenset[str]] = frozenset({ARMOR_UPDATED})

    armor: ArmorId = attrs.field(converter=armor_id)
    incarnation: int = attrs.field(validator=at_least(1))


@attrs.frozen
class AppOutcome(Body):
    """Application C{app} ended: C{ok} with C{result}, or not for C{reason}."""

    message_types: ClassVar[frozenset[str]] = frozenset({APP_OUTCOME})

    app: str = attrs.field(validator=_label)
    ok: bool = attrs.field(validator=_flag)
    result: Any = attrs.field(default=None, validator=_plain)
    reason: str = attrs.field(default="", validator=text)


@attrs.frozen
class AppRef(Body):
    """Application C{app}."""

    message_types: ClassVar[frozenset[str]] = frozenset({APP_OUTCOME_ACK, APP_DONE_ACK})

    app: str = attrs.field(validator=_label)


@attrs.frozen
class AppDone(Body):
    """Application C{app}'s ARMORs are uninstalled: delete their entries, C{entries}."""

    message_types: ClassVar[frozenset[str]] = frozenset({APP_DONE})

    app: str = attrs.field(validator=_label)
    entries: tuple[ArmorId, ...] = attrs.field(default=(), converter=_ids)


@attrs.frozen
class EntryMissing(Body):
    """The FTM cannot acknowledge C{app}'s deletion: it holds no entry for C{armor}."""

    message_types: ClassVar[frozenset[str]] = frozenset({ENTRY_MISSING})

    app: str = attrs.field(validator=_label)
    armor: ArmorId = attrs.field(converter=armor_id)


@attrs.frozen
class FtmErroneous(Body):
    """The FTM C{ftm} of C{epoch} is erroneous: C{reason}."""

    message_types: ClassVar[frozenset[str]] = frozenset({FTM_ERRONEOUS})

    ftm: ArmorId = attrs.field(converter=armor_id)
    epoch: int = attrs.field(validator=at_least(1))
    reason: str = attrs.field(default="", validator=text)


@attrs.frozen
class FtmPing(Body):
    message_types: ClassVar[frozenset[str]] = frozenset({FTM_PING})

    seq: int = attrs.field(validator=at_least(1))


@attrs.frozen
class FtmPong(Body):
    message_types: ClassVar[frozenset[str]] = frozenset({FTM_PONG})

    seq: int = attrs.field(validator=at_least(1))
    epoch: int = attrs.field(validator=at_least(0))


# -- the other tables -------------------------------------------------------------------------


class AppState(enum.Enum):
    """Where an application stands in the application table."""

    SUBMITTED = "submitted"
    """Taken; its surrogate manager runs it (or is about to be installed)."""
    FINISHING = "finishing"
    """Its outcome is recorded; its surrogate manager uninstalls its ARMORs."""
    DONE = "done"
    """Its ARMORs' entries are deleted; the result is reported until acknowledged."""
    REPORTED = "reported"
    """The submitter has the result."""


@attrs.frozen
class AppRow:
    """One row of the application table."""

    TAG: ClassVar[str] = "app"

    name: str
    submitter: ArmorId
    strategy: str
    state: AppState
    job: dict[str, Any]
    outcome: dict[str, Any] | None = None

    def to_tuple(self) -> LTuple:
        outcome = b"" if self.outcome is None else msgpack.packb(self.outcome, use_bin_type=True)
        return (
            self.TAG,
            self.name,
            self.submitter,
            self.strategy,
            self.state.value,
            msgpack.packb(self.job, use_bin_type=True),
            outcome,
        )

    @classmethod
    def from_tuple(cls, row: Sequence[Any]) -> AppRow:
        _, app, submitter, strategy, state, job, outcome = row
        return cls(
            app,
            armor_id(submitter),
            strategy,
            AppState(state),
            msgpack.unpackb(job, raw=False),
            msgpack.unpackb(outcome, raw=False) if outcome else None,
        )

    @staticmethod
    def template(app: object = ANY) -> tuple[Any, ...]:
        return (AppRow.TAG, app, ANY, ANY, ANY, ANY, ANY)

    def result(self) -> JobResult:
        outcome = self.outcome or {}
        return JobResult(
            self.name,
            bool(outcome.get("ok", False)),
            outcome.get("result"),
            str(outcome.get("reason", "")),
        )


@attrs.frozen
class HostRow:
    """One row of the host table: C{node} in its C{boot}-th run, C{up} or not."""

    TAG: ClassVar[str] = "host"

    node: str
    boot: int
    up: bool
    os: str = ""
    cpus: int = 0
    memory: int = 0

    def to_tuple(self) -> LTuple:
        state = "up" if self.up else "down"
        return (self.TAG, self.node, self.boot, state, self.os, self.cpus, self.memory)

    @classmethod
    def from_tuple(cls, row: Sequence[Any]) -> HostRow:
        _, node, boot, state, os, cpus, memory = row
        return cls(node, boot, state == "up", os, cpus, memory)

    @staticmethod
    def template(node: object = ANY) -> tuple[Any, ...]:
        return (HostRow.TAG, node, ANY, ANY, ANY, ANY, ANY)


EPOCH_TAG: Final = "ftm-epoch"
BACKUP_TAG: Final = "ftm-backup"
FAILURE_TAG: Final = "failure"
#: The FTM's status, C{("ftm-stats", id, map)}: written every L{STATS_EVERY} rounds.
STATS_TAG: Final = "ftm-stats"
#: Rounds between two writes of the FTM's status.
STATS_EVERY: Final = 10


def epoch_guard(epoch: int, holder: str) -> SpaceOp:
    """The guard of every write of the FTM C{holder} in C{epoch}."""
    return SpaceOp.template("rdp", EPOCH_TAG, epoch, holder)


def current_ftm(tuples: Iterable[Sequence[Any]]) -> tuple[int, ArmorId] | None:
    """The current epoch and its FTM, from the epoch tuples of a scan (the highest)."""
    best: tuple[int, ArmorId] | None = None
    for t in tuples:
        if len(t) == 3 and t[0] == EPOCH_TAG and t[2] and (best is None or t[1] > best[0]):
            best = (t[1], armor_id(t[2]))
    return best


def placed_options(config: dict[str, object]) -> dict[str, Any]:
    """
    Take C{node} and C{incarnation} out of an install's configuration (managers put
    them in: an ARMOR knows where it runs and which install it is).
    """
    kwargs: dict[str, Any] = {}
    if "node" in config:
        kwargs["node"] = check_label(config.pop("node"), "node")
    if "incarnation" in config:
        incarnation = config.pop("incarnation")
        if type(incarnation) is not int or incarnation < 1:
            raise MessageError(f"incarnation is a positive integer, not {incarnation!r}")
        kwargs["incarnation"] = incarnation
    return kwargs


def fenced_options(config: dict[str, object]) -> dict[str, Any]:
    """
    L{placed_options}, and C{epoch}: the FTM's epoch a common ARMOR under it starts
    fenced at.
    """
    kwargs = placed_options(config)
    if "epoch" in config:
        epoch = config.pop("epoch")
        if type(epoch) is not int or epoch < 0:
            raise MessageError(f"epoch is an integer >= 0, not {epoch!r}")
        kwargs["epoch"] = epoch
    return kwargs


# -- the fence --------------------------------------------------------------------------------


def admit_fenced(armor: Armor, fence: EpochFence, message: Message) -> Message | None:
    """
    What an ARMOR under the FTM handles of C{message} (see L{EpochFence.admit}): None
    for one refused (counted as C{messages.fenced}, or C{messages.refused} if
    malformed).  An FTM of a newer epoch becomes C{armor}'s manager.
    """
    try:
        inner, newer = fence.admit(message)
    except MessageError:
        armor.counters["messages.refused"] += 1
        return None
    if inner is None:
        armor.counters["messages.fenced"] += 1
        return None
    if newer:
        armor.manager = message.source
    return inner


def is_ftm(id: str) -> bool:
    return id_labels(ArmorId(id))[0] == FTM_KIND


@attrs.define
class EpochFence:
    """
    What a receiver knows of the FTM: the highest C{epoch} it has heard and the FTM
    that spoke in it.  L{admit} unwraps an FTM's L{FENCED} message, or refuses it.
    """

    epoch: int = 0
    ftm: ArmorId | None = None
    refused: int = 0

    def admit(self, message: Message) -> tuple[Message | None, bool]:
        """
        The message to handle (C{message} itself if it is not fenced, the one inside
        if it is of the current epoch or a newer one), or None if it is of an older
        epoch, or of the current one from another FTM; and whether it made a newer FTM
        known.

        @raise MessageError: if the envelope is malformed.
        """
        if message.type != FENCED:
            return message, False
        fenced = Fenced.from_message(message)
        newer = fenced.epoch > self.epoch
        if not newer and (fenced.epoch < self.epoch or message.source != self.ftm):
            self.refused += 1
            return None, False
        if newer:
            self.epoch, self.ftm = fenced.epoch, message.source
        inner = Message(fenced.type, message.source, message.destination, message.id, fenced.body)
        return inner, newer


# -- the FTM ----------------------------------------------------------------------------------


class Role(enum.Enum):
    """An FTM's role."""

    STARTING = "starting"
    """Taking its epoch."""
    PRIMARY = "primary"
    """The FTM."""
    BACKUP = "backup"
    """The Backup FTM: heartbeats the FTM."""
    PROMOTING = "promoting"
    """A backup taking the next epoch."""
    FENCED = "fenced"
    """Lost (or never got) its epoch: does nothing more."""


_SUBSCRIPTIONS: Final = frozenset(
    {
        SUBMIT,
        JOB_RESULT_ACK,
        JOIN,
        SURVEY,
        NODE_DOWN,
        ARMOR_UPDATE,
        APP_OUTCOME,
        APP_DONE,
        FTM_CHANGED_ACK,
        FTM_PING,
        FTM_PONG,
        HEARTBEAT_ACK,
        FTM_ERRONEOUS,
        ARMOR_FAILED,
        FTM_CHANGED,
        SPACE_REPLY,
    }
)

_TICK: Final = "tick"


class _Role(OwnBlock):
    """The FTM's own block: hands its messages and its tick to the FTM."""

    subscriptions = _SUBSCRIPTIONS


class FTM(FaultToleranceManager):
    """
    The Fault Tolerance Manager, or its backup (see the module docstring).

    @param role: C{"primary"} (it takes the epoch after C{epoch} when it starts) or
        C{"backup"} (it watches C{primary}, of epoch C{epoch}, on C{primary_node}).
    @param node: the node it runs on.
    @param tick: seconds between its rounds (reconciling, heartbeating the FTM).
    @param misses: a backup promotes itself after this many unanswered rounds.
    @param verify: seconds an adopted subordinate has to acknowledge a new FTM.
    @param heartbeat: the Heartbeat ARMOR's configuration (C{interval}, C{misses}).
    @param surrogate: more configuration for the surrogate managers (C{retry}, ...).
    @param max_reinstalls: the recovery block's limit for its subordinates.
    @param strategies: the registered strategies (by default the plugins').
    """

    type_name = "ftm"

    def __init__(
        self,
        id: str = FTM_ID,
        manager: str | None = None,
        *,
        role: str = "primary",
        node: str | None = None,
        incarnation: int = 1,
        epoch: int = 0,
        primary: str | None = None,
        primary_node: str | None = None,
        tick: float = 0.5,
        misses: int = 3,
        verify: float = 2.0,
        heartbeat: Mapping[str, object] | None = None,
        surrogate: Mapping[str, object] | None = None,
        max_reinstalls: int = 10,
        strategies: StrategyFactory | None = None,
        nodes: Iterable[str] = (),
        blocks: BlockFactory | None = None,
        composition: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(id, manager, nodes=nodes, blocks=blocks, composition=composition)
        if role not in ("primary", "backup"):
            raise MessageError(f"an FTM's role is primary or backup, not {role!r}")
        if not is_ftm(self.id):
            raise MessageError(f"an FTM's id is of kind {FTM_KIND!r}, not {self.id!r}")
        self.scope = ()  # every FTM hands out ids of one label after the kind
        self.node = None if node is None else check_label(node, "node")
        self.incarnation = incarnation
        self.epoch = epoch
        self.role = Role.BACKUP if role == "backup" else Role.STARTING
        if self.role is Role.BACKUP and (primary is None or primary_node is None or epoch < 1):
            raise MessageError("a backup FTM needs its primary, the primary's node and epoch")
        self.primary: ArmorId | None = None if primary is None else armor_id(primary)
        self.primary_node = None if primary_node is None else check_label(primary_node)
        self.tick = tick
        self.misses = misses
        self.verify = verify
        self.heartbeat_config = dict(heartbeat or {})
        self.surrogate_config = dict(surrogate or {})
        self.strategies = strategies if strategies is not None else default_strategies()
        self.fence = EpochFence(epoch, self.primary)
        self.space = SpaceCalls(self._send)
        # The cache of the tables.
        self.armors: dict[ArmorId, ArmorEntry] = {}
        self.apps: dict[str, AppRow] = {}
        self.hosts: dict[str, HostRow] = {}
        self.failures: Counter[str] = Counter()
        self.backup: ArmorId | None = None
        self.heartbeat: ArmorId | None = None
        self.promoted_because = ""
        self._daemon_silent = False
        self._block: _Role | None = None
        self._serial = 0
        self._joining: dict[str, int] = {}
        self._verifying: dict[ArmorId, float] = {}
        self._reported: dict[str, float] = {}
        self._busy: set[tuple[str, str]] = set()
        self._seq = 0
        self._rounds = 0
        self._unanswered = 0
        self._unanswered_daemon = 0
        if "role" not in self.slots():
            self.controller.put("role", "ftm-role", _Role())
        if "recovery" in self.slots():
            block = self.block("recovery")
            if isinstance(block, Recovery):
                block.max_reinstalls = max_reinstalls

    @classmethod
    def options(cls, config: dict[str, object]) -> dict[str, Any]:
        """
        Besides a manager's: C{role}, C{node}, C{incarnation}, C{epoch}, C{primary},
        C{primary_node}, C{tick}, C{misses}, C{verify}, C{heartbeat} (a map),
        C{max_reinstalls}.
        """
        kwargs = super().options(config)
        kwargs.update(placed_options(config))
        if "role" in config:
            kwargs["role"] = config.pop("role")
        for key in ("epoch", "misses", "max_reinstalls"):
            if key in config:
                value = config.pop(key)
                if type(value) is not int or value < 0:
                    raise MessageError(f"{key} is an integer >= 0, not {value!r}")
                kwargs[key] = value
        for key in ("primary", "primary_node"):
            if key in config:
                value = config.pop(key)
                if type(value) is not str:
                    raise MessageError(f"{key} is a string, not {value!r}")
                kwargs[key] = value
        for key in ("tick", "verify"):
            if key in config:
                kwargs[key] = seconds(config.pop(key), key)
        for key in ("heartbeat", "surrogate"):
            if key in config:
                kwargs[key] = plain_map(config.pop(key))
        return kwargs

    # -- sending: every message of the FTM carries its epoch -------------------------------

    def _send(self, type: str, destination: str, body: object) -> Message:
        if (
            self.role is Role.PRIMARY
            and destination != self.id
            and id_labels(ArmorId(destination))[0] != SPACE_KIND
        ):
            return super()._send(FENCED, destination, Fenced(self.epoch, type, pack_body(body)))
        return super()._send(type, destination, body)

    def receive(self, message: Message, now: float) -> None:
        if self.role is Role.FENCED:
            self.counters["messages.fenced"] += 1
            return
        try:
            inner, newer = self.fence.admit(message)
        except MessageError:
            self.counters["messages.refused"] += 1
            return
        if inner is None:
            self.counters["messages.fenced"] += 1
            return
        if newer and self.role is Role.PRIMARY and message.source != self.id:
            with self._input(now):
                self._fenced(f"{message.source} holds epoch {self.fence.epoch}", now)
            return
        super().receive(inner, now)

    # -- the life of an FTM ----------------------------------------------------------------

    def _attached(self, block: _Role, now: float) -> None:
        self._block = block
        if self.role is Role.STARTING:
            if self.epoch == 0:
                take = [
                    SpaceOp.template("absent", EPOCH_TAG, ANY, ANY),
                    SpaceOp.out(EPOCH_TAG, 1, self.id),
                ]
            else:
                take = [
                    SpaceOp.template("inp", EPOCH_TAG, self.epoch, ANY),
                    SpaceOp.out(EPOCH_TAG, self.epoch + 1, self.id),
                ]
            self._take_epoch(take, now)
        else:
            block.context.start_timer(_TICK, now + self.tick)

    def _take_epoch(self, take: list[SpaceOp], now: float) -> None:
        ops = [
            *take,
            SpaceOp.template("scan", *ArmorEntry.template()),
            SpaceOp.template("scan", *AppRow.template()),
            SpaceOp.template("scan", *HostRow.template()),
            SpaceOp.template("scan", FAILURE_TAG, ANY, ANY, ANY),
        ]
        self.space.call(SYSTEM_SPACE, ops, self._epoch_taken)

    def _epoch_taken(self, reply: SpaceReply, now: float) -> None:
        if not reply.ok:
            self._fenced("the epoch was taken by another FTM", now)
            return
        previous, previous_node = self.primary, self.primary_node
        self.epoch += 1
        self.fence.epoch, self.fence.ftm = self.epoch, self.id
        self.role = Role.PRIMARY
        armors, apps, hosts, failures = reply.values[2:6]
        self._load(armors, apps, hosts, failures)
        self._outbox.log(
            LogLevel.info,
            "{armor} is the FTM of epoch {epoch} ({why})",
            armor=self.id,
            epoch=self.epoch,
            why=self.promoted_because or "started",
        )
        self._adopt(previous, previous_node, now)
        assert self._block is not None
        self._block.context.start_timer(_TICK, now + self.tick)
        if self._daemon_silent and previous_node is not None:
            self._node_down(previous_node, "the FTM's daemon stopped answering", now)
        self._reconcile(now)

    def _load(
        self,
        armors: Sequence[LTuple],
        apps: Sequence[LTuple],
        hosts: Sequence[LTuple],
        failures: Sequence[LTuple],
    ) -> None:
        self.armors = {}
        for t in armors:
            row = ArmorEntry.from_tuple(t)
            known = self.armors.get(row.armor)
            if known is None or known.incarnation < row.incarnation:
                self.armors[row.armor] = row
        self.apps = {row.name: row for row in map(AppRow.from_tuple, apps)}
        self.hosts = {row.node: row for row in map(HostRow.from_tuple, hosts)}
        self.failures = Counter(t[1] for t in failures)
        self._rank()

    def _adopt(self, previous: ArmorId | None, previous_node: str | None, now: float) -> None:
        """Take over what the FTMs before managed; fence the one before."""
        ops: list[SpaceOp] = []
        mine = self.armors.get(self.id)
        if self.node is not None:
            me = ArmorEntry(
                self.id,
                FTM_TYPE,
                "",
                self.node,
                "",
                mine.incarnation if mine is not None else self.incarnation,
            )
            ops += [
                SpaceOp.template("delete", *ArmorEntry.template(self.id)),
                SpaceOp.out(*me.to_tuple()),
            ]
            self.armors[self.id] = me
        for row in list(self.armors.values()):
            if row.armor == self.id:
                continue
            if row.type == FTM_TYPE or row.armor == previous:
                # An FTM before this one, or an older backup: fenced, and uninstalled.
                ops.append(SpaceOp.template("delete", *ArmorEntry.template(row.armor)))
                del self.armors[row.armor]
                if row.armor != previous and self._up(row.node):
                    self._send(UNINSTALL, daemon_id(row.node), Uninstall(row.armor))
                continue
            if not row.manager or not is_ftm(row.manager) or row.manager == self.id:
                continue
            if row.type == SURROGATE_TYPE and row.application in self.apps:
                app = self.apps[row.application]
                record = Subordinate(
                    row.armor,
                    row.type,
                    row.node,
                    self._surrogate_config(app),
                    SubordinateState.RUNNING,
                    now,
                    incarnation=row.incarnation,
                )
                self.subordinates[row.armor] = record
                self._issued.add(row.armor)
                moved = attrs.evolve(row, manager=self.id)
                self.armors[row.armor] = moved
                ops += [
                    SpaceOp.template("delete", *ArmorEntry.template(row.armor)),
                    SpaceOp.out(*moved.to_tuple()),
                ]
                self._verifying[row.armor] = now + self.verify
            else:
                # The heartbeat, the initializations: uninstalled; this FTM makes its own.
                ops.append(SpaceOp.template("delete", *ArmorEntry.template(row.armor)))
                del self.armors[row.armor]
                if self._up(row.node):
                    self._send(UNINSTALL, daemon_id(row.node), Uninstall(row.armor))
        if previous is not None and previous_node is not None:
            self._send(UNINSTALL, daemon_id(previous_node), Uninstall(previous))
        ops.append(SpaceOp.template("delete", BACKUP_TAG, ANY, ANY))
        self._write(ops, None)
        changed = FtmChanged(self.id, self.epoch, previous or "")
        for node, host in self.hosts.items():
            if host.up:
                self._send(FTM_CHANGED, daemon_id(node), changed)
        for id in self._verifying:
            self._send(FTM_CHANGED, id, changed)
        self._rank()

    def _fenced(self, why: str, now: float) -> None:
        """Lose the role: ask the daemon to uninstall this FTM; do nothing more."""
        if self.role is Role.FENCED:
            return
        self._outbox.log(LogLevel.warn, "{armor} is fenced: {why}", armor=self.id, why=why)
        self.role = Role.FENCED
        self.space.forget()
        if self._block is not None and self._block._context is not None:
            self._block.context.cancel_timer(_TICK)
        if self.node is not None:
            super()._send(UNINSTALL, daemon_id(self.node), Uninstall(self.id))

    # -- writing the tables ----------------------------------------------------------------

    def _write(
        self, ops: Sequence[SpaceOp], then: Callable[[SpaceReply, float], None] | None
    ) -> None:
        """One guarded change of the tables; C{then(reply, now)} once applied."""

        def done(reply: SpaceReply, now: float) -> None:
            if not reply.ok and reply.failed == 0:
                self._fenced("a write was refused: the epoch is not this FTM's", now)
                return
            if then is not None:
                then(reply, now)

        self.space.call(SYSTEM_SPACE, [epoch_guard(self.epoch, self.id), *ops], done)

    def _write_row(
        self, row: ArmorEntry, then: Callable[[SpaceReply, float], None] | None
    ) -> None:
        self._write(
            [
                SpaceOp.template("delete", *ArmorEntry.template(row.armor)),
                SpaceOp.out(*row.to_tuple()),
            ],
            then,
        )

    def _delete_row(self, id: ArmorId) -> None:
        self.armors.pop(id, None)
        self._write([SpaceOp.template("delete", *ArmorEntry.template(id))], None)

    def _write_app(self, row: AppRow, then: Callable[[SpaceReply, float], None] | None) -> None:
        self._write(
            [SpaceOp.template("delete", *AppRow.template(row.name)), SpaceOp.out(*row.to_tuple())],
            then,
        )

    # -- hosts -----------------------------------------------------------------------------

    def _up(self, node: str) -> bool:
        host = self.hosts.get(node)
        return host is not None and host.up

    def ranked(self, exclude: Iterable[str] = ()) -> list[str]:
        """
        The up hosts, best first: fewest ARMORs on them (the paper's load metric), then
        fewest failures in their history, then by name.
        """
        skip = set(exclude)
        load = Counter(row.node for row in self.armors.values())
        return sorted(
            (n for n, h in self.hosts.items() if h.up and n not in skip),
            key=lambda n: (load[n], self.failures[n], n),
        )

    def _rank(self) -> None:
        self.nodes = tuple(self.ranked())

    def _label(self, *prefix: str) -> str:
        self._serial += 1
        return "-".join((*prefix, f"e{self.epoch}", str(self._serial)))

    def _placement(self, record: Subordinate, preferred: str | None) -> str | None:
        """Where subordinate C{record} may go: C{preferred} if allowed, else the best."""
        exclude = set()
        if record.id == self.backup and self.node is not None:
            exclude.add(self.node)
        if record.type in (HEARTBEAT_TYPE,) and self.node is not None:
            return self.node
        if record.type == INITIALIZATION_TYPE:
            return record.node
        if preferred is not None and preferred not in exclude:
            host = self.hosts.get(preferred)
            if host is not None and host.up:
                return preferred
        ranked = self.ranked(exclude)
        return ranked[0] if ranked else None

    # -- Manager's table, with the ARMOR table kept beside it ------------------------------

    def _request_install(self, record: Subordinate) -> None:
        """Record the ARMOR's row (guarded), then ask its daemon to install it."""
        record.config["node"] = record.node
        record.config["incarnation"] = record.incarnation
        app = record.config.get("application", "") if record.type == SURROGATE_TYPE else ""
        row = ArmorEntry(record.id, record.type, self.id, record.node, app, record.incarnation)
        incarnation = record.incarnation

        def recorded(reply: SpaceReply, now: float) -> None:
            self.armors[row.armor] = row
            self._rank()
            current = self.subordinates.get(row.armor)
            if (
                current is record
                and record.state is SubordinateState.INSTALLING
                and record.incarnation == incarnation
            ):
                super(FTM, self)._request_install(record)

        self._write_row(row, recorded)

    def reinstall(self, id: ArmorId, node: str, now: float) -> None:
        """Install a dead subordinate again: where it was if that node is up, else elsewhere."""
        record = self.subordinate(id)
        chosen = self._placement(record, node)
        if chosen is None:
            with self._input(now):
                self._outbox.log(
                    LogLevel.warn, "{armor}: no node for {id} yet", armor=self.id, id=id
                )
            return
        if record.type == SURROGATE_TYPE:
            app = self.apps.get(record.config.get("application", ""))
            if app is not None:
                record.config = self._surrogate_config(app)
        super().reinstall(id, chosen, now)

    def uninstall(self, id: str, now: float) -> None:
        """Uninstall a subordinate; one that does not run is forgotten (its row deleted)."""
        record = self.subordinate(id)
        if record.state in (SubordinateState.DEAD, SubordinateState.FAILED):
            self.forget(record.id, now)
        else:
            super().uninstall(id, now)

    def forget(self, id: ArmorId, now: float) -> None:
        with self._input(now):
            record = self.subordinates.get(armor_id(id))
            super().forget(id, now)
            if self.role is Role.PRIMARY:
                self._delete_row(armor_id(id))
            if record is not None:
                self._gone(record)

    def give_up(self, id: ArmorId, reason: str, now: float) -> None:
        with self._input(now):
            super().give_up(id, reason, now)
            record = self.subordinates.pop(armor_id(id))
            if self.role is Role.PRIMARY:
                self._delete_row(record.id)
            self._gone(record)
            if record.type == SURROGATE_TYPE:
                app = self.apps.get(record.config.get("application", ""))
                if app is not None and app.state is AppState.SUBMITTED:
                    self._finish(
                        app, {"ok": False, "reason": f"its manager failed: {reason}"}, now
                    )

    def _gone(self, record: Subordinate) -> None:
        if record.id == self.backup:
            self.backup = None
        if record.id == self.heartbeat:
            self.heartbeat = None
        if record.type == INITIALIZATION_TYPE:
            self._joining.pop(record.node, None)
        self._verifying.pop(record.id, None)

    # -- messages --------------------------------------------------------------------------

    def _handle(self, message: Message, now: float) -> None:
        kind = message.type
        if kind == SPACE_REPLY:
            if message.source == SYSTEM_SPACE:
                self.space.answer(message, now)
            return
        if self.role is Role.BACKUP:
            if kind == FTM_PONG and message.source == self.primary:
                self._unanswered = 0
            elif kind == HEARTBEAT_ACK and self.primary_node is not None:
                if message.source == daemon_id(self.primary_node):
                    self._unanswered_daemon = 0
            elif kind == FTM_ERRONEOUS:
                flag = FtmErroneous.from_message(message)
                if flag.ftm == self.primary:
                    self._promote(f"flagged erroneous by {message.source}: {flag.reason}", now)
            return
        if self.role is not Role.PRIMARY:
            return
        handler = self._handlers.get(kind)
        if handler is not None:
            handler(self, message, now)

    def _on_ping(self, message: Message, now: float) -> None:
        ping = FtmPing.from_message(message)
        self._send(FTM_PONG, message.source, FtmPong(ping.seq, self.epoch))

    def _on_submit(self, message: Message, now: float) -> None:
        submit = Submit.from_message(message)
        app = self.apps.get(submit.name)
        if app is not None:
            if app.submitter != message.source:
                self._send(
                    JOB_REFUSED, message.source, JobRefused(submit.name, "the name is in use")
                )
                return
            self._send(JOB_ACCEPTED, message.source, JobAccepted(app.name, app.strategy))
            if app.state in (AppState.DONE, AppState.REPORTED):
                self._send(JOB_RESULT, app.submitter, app.result())
            return
        if ("app", submit.name) in self._busy:
            return
        try:
            job = Job.from_value(submit.job)
            strategy = select(job, self.strategies)
        except (JobError, UnknownStrategy) as e:
            self._send(JOB_REFUSED, message.source, JobRefused(submit.name, str(e)[:1000]))
            return
        row = AppRow(submit.name, message.source, strategy, AppState.SUBMITTED, job.to_value())
        self._busy.add(("app", submit.name))

        def recorded(reply: SpaceReply, now: float) -> None:
            self._busy.discard(("app", submit.name))
            self.apps[row.name] = row
            self._send(JOB_ACCEPTED, row.submitter, JobAccepted(row.name, row.strategy))
            self._start_app(row, now)

        self._write([SpaceOp.out(*row.to_tuple())], recorded)

    def _surrogate_config(self, app: AppRow) -> dict[str, Any]:
        return {
            **self.surrogate_config,
            "application": app.name,
            "job": app.job,
            "strategy": app.strategy,
            "nodes": list(self.ranked()),
            "epoch": self.epoch,
        }

    def _surrogate_of(self, app: str) -> ArmorId:
        return armor_id(f"{SURROGATE_KIND}.{app}")

    def _start_app(self, app: AppRow, now: float) -> None:
        """Install the application's surrogate manager, if it has none and a node is up."""
        id = self._surrogate_of(app.name)
        if id in self.subordinates or app.state is not AppState.SUBMITTED:
            return
        nodes = self.ranked()
        if not nodes:
            return
        if id in self._issued:
            self._issued.discard(id)  # a later FTM may name it again: it is one application
        self.install(
            SURROGATE_TYPE,
            nodes[0],
            now,
            kind=SURROGATE_KIND,
            labels=[app.name],
            config=self._surrogate_config(app),
        )

    def _on_armor_update(self, message: Message, now: float) -> None:
        row = ArmorEntry.from_message(message)
        if row.manager != message.source or is_ftm(row.armor):
            self.counters["messages.refused"] += 1
            return
        sender = self.subordinates.get(message.source)
        if sender is not None and row.by and row.by != sender.incarnation:
            # From an incarnation of the manager this FTM replaced, still running until
            # its daemon sweeps it: its word would move ARMORs the current one manages.
            self.counters["updates.superseded"] += 1
            return
        row = attrs.evolve(row, by=0)
        if self.armors.get(row.armor) == row:
            self._send(ARMOR_UPDATED, message.source, ArmorRef(row.armor, row.incarnation))
            return

        def recorded(reply: SpaceReply, now: float) -> None:
            self.armors[row.armor] = row
            self._rank()
            self._send(ARMOR_UPDATED, row.manager, ArmorRef(row.armor, row.incarnation))

        self._write_row(row, recorded)

    def _on_app_outcome(self, message: Message, now: float) -> None:
        outcome = AppOutcome.from_message(message)
        app = self.apps.get(outcome.app)
        if app is None or message.source != self._surrogate_of(outcome.app):
            self.counters["messages.refused"] += 1
            return
        if app.state is not AppState.SUBMITTED:
            self._send(APP_OUTCOME_ACK, message.source, AppRef(app.name))
            return
        value = {"ok": outcome.ok, "result": outcome.result, "reason": outcome.reason}
        self._finish(app, value, now, ack=message.source)

    def _finish(
        self, app: AppRow, outcome: dict[str, Any], now: float, ack: ArmorId | None = None
    ) -> None:
        key = ("outcome", app.name)
        if key in self._busy:
            return
        self._busy.add(key)
        finished = attrs.evolve(app, state=AppState.FINISHING, outcome=outcome)
        surrogate = self._surrogate_of(app.name)
        if surrogate not in self.subordinates and not self._rows_of(app.name):
            finished = attrs.evolve(finished, state=AppState.DONE)

        def recorded(reply: SpaceReply, now: float) -> None:
            self._busy.discard(key)
            self.apps[app.name] = finished
            if ack is not None:
                self._send(APP_OUTCOME_ACK, ack, AppRef(app.name))
            if finished.state is AppState.DONE:
                self._report(finished, now)

        self._write_app(finished, recorded)

    def _rows_of(self, app: str) -> list[ArmorEntry]:
        return [
            r for r in self.armors.values() if r.application == app and r.type != SURROGATE_TYPE
        ]

    def _on_app_done(self, message: Message, now: float) -> None:
        done = AppDone.from_message(message)
        app = self.apps.get(done.app)
        surrogate = self._surrogate_of(done.app)
        if app is None or message.source != surrogate:
            self.counters["messages.refused"] += 1
            return
        if app.state in (AppState.DONE, AppState.REPORTED):
            self._send(APP_DONE_ACK, surrogate, AppRef(app.name))
            self._end_surrogate(app, now)
            return
        if app.state is not AppState.FINISHING:
            self.counters["messages.refused"] += 1
            return
        rows = []
        for id in done.entries:
            row = self.armors.get(id)
            if row is None or row.application != app.name:
                # The Byzantine example: it cannot acknowledge the deletion.
                self.counters["entries.missing"] += 1
                self._send(ENTRY_MISSING, surrogate, EntryMissing(app.name, id))
                return
            rows.append(row)
        key = ("done", app.name)
        if key in self._busy:
            return
        self._busy.add(key)
        finished = attrs.evolve(app, state=AppState.DONE)
        ops = [SpaceOp("inp", row.to_tuple()) for row in rows]
        ops += [
            SpaceOp.template("delete", *AppRow.template(app.name)),
            SpaceOp.out(*finished.to_tuple()),
        ]

        def deleted(reply: SpaceReply, now: float) -> None:
            self._busy.discard(key)
            if not reply.ok:
                missing = rows[reply.failed - 1].armor
                self.counters["entries.missing"] += 1
                self._send(ENTRY_MISSING, surrogate, EntryMissing(app.name, missing))
                return
            for row in rows:
                self.armors.pop(row.armor, None)
            self.apps[app.name] = finished
            self._rank()
            self._send(APP_DONE_ACK, surrogate, AppRef(app.name))
            self._end_surrogate(finished, now)
            self._report(finished, now)

        self._write(ops, deleted)

    def _end_surrogate(self, app: AppRow, now: float) -> None:
        """Uninstall the application's surrogate manager (its work is done)."""
        id = self._surrogate_of(app.name)
        record = self.subordinates.get(id)
        if record is not None and record.state is not SubordinateState.UNINSTALLING:
            self.uninstall(id, now)
        elif record is None and id in self.armors:
            row = self.armors[id]
            self._send(UNINSTALL, daemon_id(row.node), Uninstall(id))
            self._delete_row(id)

    def _report(self, app: AppRow, now: float) -> None:
        self._reported[app.name] = now
        self._send(JOB_RESULT, app.submitter, app.result())

    def _on_job_result_ack(self, message: Message, now: float) -> None:
        ack = JobRef.from_message(message)
        app = self.apps.get(ack.name)
        if app is None or app.submitter != message.source or app.state is not AppState.DONE:
            return
        key = ("reported", app.name)
        if key in self._busy:
            return
        self._busy.add(key)
        reported = attrs.evolve(app, state=AppState.REPORTED)

        def recorded(reply: SpaceReply, now: float) -> None:
            self._busy.discard(key)
            self.apps[app.name] = reported
            self._reported.pop(app.name, None)

        self._write_app(reported, recorded)

    def _on_join(self, message: Message, now: float) -> None:
        join = Join.from_message(message)
        if message.source != daemon_id(join.node):
            self.counters["messages.refused"] += 1
            return
        host = self.hosts.get(join.node)
        self._send(WELCOME, message.source, Welcome(join.node, join.boot))
        if host is not None and host.up:
            if host.boot == join.boot:
                self._watch(join.node)
                return
            self._node_down(join.node, "it restarted", now)
        if self._joining.get(join.node) == join.boot:
            return
        # An Initialization ARMOR still pending for an earlier run of this node's daemon
        # went with that run: it is forgotten (its row goes), and the new run surveyed.
        for record in list(self.subordinates.values()):
            if record.type == INITIALIZATION_TYPE and record.node == join.node:
                self.forget(record.id, now)
        self._joining[join.node] = join.boot
        self.install(
            INITIALIZATION_TYPE,
            join.node,
            now,
            kind="init",
            labels=[self._label(join.node)],
            config={"epoch": self.epoch},
        )

    def _on_survey(self, message: Message, now: float) -> None:
        survey = Survey.from_message(message)
        record = self.subordinates.get(message.source)
        if record is None or record.type != INITIALIZATION_TYPE or record.node != survey.node:
            # An Initialization ARMOR no FTM wants (one from before a failover).
            self._send(UNINSTALL, daemon_id(survey.node), Uninstall(message.source))
            return
        boot = self._joining.get(survey.node)
        if boot is None:
            self._send(SURVEY_ACK, record.id, NodeRef(survey.node))
            return
        row = HostRow(survey.node, boot, True, survey.os, survey.cpus, survey.memory)
        if self.hosts.get(survey.node) == row:
            self._surveyed(record, row, now)
            return

        def recorded(reply: SpaceReply, now: float) -> None:
            self.hosts[row.node] = row
            self._rank()
            self._surveyed(record, row, now)
            self._tell_hosts()

        self._write(
            [
                SpaceOp.template("delete", *HostRow.template(row.node)),
                SpaceOp.out(*row.to_tuple()),
            ],
            recorded,
        )

    def _surveyed(self, record: Subordinate, row: HostRow, now: float) -> None:
        self._send(SURVEY_ACK, record.id, NodeRef(row.node))
        self._joining.pop(row.node, None)
        if record.id in self.subordinates and record.state is not SubordinateState.UNINSTALLING:
            self.uninstall(record.id, now)
        self._watch(row.node)

    def _watch(self, node: str) -> None:
        if self.heartbeat is not None:
            self._send(WATCH, self.heartbeat, Watch(node, True))

    def _tell_hosts(self) -> None:
        hosts = Hosts(tuple(self.ranked()))
        for record in self.subordinates.values():
            if record.type == SURROGATE_TYPE and record.state is SubordinateState.RUNNING:
                self._send(HOSTS, record.id, hosts)

    def _on_node_down(self, message: Message, now: float) -> None:
        verdict = NodeDown.from_message(message)
        if message.source != self.heartbeat:
            self.counters["messages.refused"] += 1
            return
        self._node_down(verdict.node, verdict.reason or "missed heartbeats", now)

    def _node_down(self, node: str, reason: str, now: float) -> None:
        """Node C{node} is down: record it; what ran there is installed elsewhere."""
        host = self.hosts.get(node)
        self._joining.pop(node, None)
        if host is None or not host.up:
            return
        down = attrs.evolve(host, up=False)
        self.hosts[node] = down
        self.failures[node] += 1
        self._rank()
        self._outbox.log(
            LogLevel.warn,
            "{armor}: node {node} is down ({why})",
            armor=self.id,
            node=node,
            why=reason,
        )
        self._write(
            [
                SpaceOp.template("delete", *HostRow.template(node)),
                SpaceOp.out(*down.to_tuple()),
                SpaceOp.out(FAILURE_TAG, node, now, reason[:200]),
            ],
            None,
        )
        if self.heartbeat is not None:
            self._send(WATCH, self.heartbeat, Watch(node, False))
        for record in list(self.subordinates.values()):
            if record.node != node:
                continue
            if record.state is SubordinateState.UNINSTALLING or record.type == INITIALIZATION_TYPE:
                self.forget(record.id, now)
            elif record.state in (SubordinateState.INSTALLING, SubordinateState.RUNNING):
                self.mark_dead(record.id, f"node {node} down", now)
                self.reinstall(record.id, node, now)
        for record in list(self.subordinates.values()):
            if record.type == SURROGATE_TYPE and record.state is SubordinateState.RUNNING:
                self._send(NODE_DOWN, record.id, NodeDown(node, reason[:200]))
        self._tell_hosts()

    def _on_ftm_changed_ack(self, message: Message, now: float) -> None:
        ack = FtmChangedAck.from_message(message)
        record = self.subordinates.get(message.source)
        if ack.epoch != self.epoch or record is None:
            return
        if record.node == ack.node and record.incarnation == ack.incarnation:
            self._verifying.pop(record.id, None)
            if record.state is SubordinateState.INSTALLING:
                self.mark_running(record.id, now)

    def _on_armor_failed(self, message: Message, now: float) -> None:
        self.counters["subordinates.failed-below"] += 1

    def _on_ftm_changed(self, message: Message, now: float) -> None:
        changed = FtmChanged.from_message(message)
        if changed.epoch > self.epoch:
            self._fenced(f"{changed.ftm} is the FTM of epoch {changed.epoch}", now)

    _handlers: ClassVar[dict[str, Callable[[FTM, Message, float], None]]] = {
        FTM_PING: _on_ping,
        SUBMIT: _on_submit,
        ARMOR_UPDATE: _on_armor_update,
        APP_OUTCOME: _on_app_outcome,
        APP_DONE: _on_app_done,
        JOB_RESULT_ACK: _on_job_result_ack,
        JOIN: _on_join,
        SURVEY: _on_survey,
        NODE_DOWN: _on_node_down,
        FTM_CHANGED_ACK: _on_ftm_changed_ack,
        ARMOR_FAILED: _on_armor_failed,
        FTM_CHANGED: _on_ftm_changed,
    }

    # -- rounds ----------------------------------------------------------------------------

    def _tick(self, now: float) -> None:
        if self.role is Role.BACKUP:
            self._beat(now)
        elif self.role is Role.PRIMARY:
            self._reconcile(now)
            self._rounds += 1
            if self._rounds % STATS_EVERY == 1:
                self._publish(now)
        else:
            return
        if self.role in (Role.BACKUP, Role.PRIMARY):
            assert self._block is not None
            self._block.context.start_timer(_TICK, now + self.tick)

    def status(self, now: float) -> dict[str, Any]:
        """What C{lips status} shows of this FTM (a plain map)."""
        states = Counter(app.state.value for app in self.apps.values())
        return {
            "id": self.id,
            "epoch": self.epoch,
            "node": self.node or "",
            "backup": self.backup or "",
            "time": now,
            "armors": len(self.armors),
            "hosts.up": sum(1 for h in self.hosts.values() if h.up),
            "hosts.down": sum(1 for h in self.hosts.values() if not h.up),
            "failures": sum(self.failures.values()),
            **{f"apps.{state}": n for state, n in sorted(states.items())},
            **{f"counters.{k}": v for k, v in sorted(self.counters.items())},
        }

    def _publish(self, now: float) -> None:
        """Write this FTM's status in the place of the last one (guarded, as any write)."""
        self._write(
            [
                SpaceOp.template("delete", STATS_TAG, ANY, ANY),
                SpaceOp.out(STATS_TAG, self.id, msgpack.packb(self.status(now))),
            ],
            None,
        )

    def _beat(self, now: float) -> None:
        """A backup's round: heartbeat the FTM and its daemon; promote past the misses."""
        assert self.primary is not None and self.primary_node is not None
        if self._unanswered >= self.misses:
            self._daemon_silent = self._unanswered_daemon >= self.misses
            self._promote("the FTM stopped answering", now)
            return
        if self._unanswered_daemon >= self.misses:
            self._daemon_silent = True
            self._promote("the FTM's daemon stopped answering", now)
            return
        self._seq += 1
        self._unanswered += 1
        self._unanswered_daemon += 1
        self._send(FTM_PING, self.primary, FtmPing(self._seq))
        self._send(HEARTBEAT, daemon_id(self.primary_node), Heartbeat(self._seq))

    def _promote(self, why: str, now: float) -> None:
        """Take the epoch after the FTM's, with the tables, in one request."""
        if self.role is not Role.BACKUP:
            return
        assert self.primary is not None
        self._outbox.log(LogLevel.warn, "{armor} promotes itself: {why}", armor=self.id, why=why)
        if not self.promoted_because:
            self.promoted_because = why
        self.role = Role.PROMOTING
        take = [
            SpaceOp("inp", (EPOCH_TAG, self.epoch, self.primary)),
            SpaceOp.out(EPOCH_TAG, self.epoch + 1, self.id),
        ]
        self._take_epoch(take, now)

    def _reconcile(self, now: float) -> None:
        """A primary's round: make good whatever is missing or overdue."""
        for id, deadline in list(self._verifying.items()):
            if now < deadline:
                continue
            del self._verifying[id]
            record = self.subordinates.get(id)
            if record is not None and record.state is SubordinateState.RUNNING:
                self.mark_dead(id, "it did not answer the new FTM", now)
                self.reinstall(id, record.node, now)
        for record in list(self.subordinates.values()):
            if record.state is SubordinateState.DEAD and record.id not in self._verifying:
                self.reinstall(record.id, record.node, now)
        if self.heartbeat is None and self.node is not None:
            self.heartbeat = self.install(
                HEARTBEAT_TYPE,
                self.node,
                now,
                kind="heartbeat",
                labels=[self._label()],
                config={
                    **self.heartbeat_config,
                    "nodes": sorted(n for n, h in self.hosts.items() if h.up),
                    "epoch": self.epoch,
                },
            )
        if self.backup is None and self.node is not None:
            others = self.ranked(exclude=[self.node])
            if others:
                self._make_backup(others[0], now)
        for app in list(self.apps.values()):
            if app.state in (AppState.DONE, AppState.REPORTED):
                record = self.subordinates.get(self._surrogate_of(app.name))
                if record is not None and record.state is SubordinateState.RUNNING:
                    self.uninstall(record.id, now)
            if app.state is AppState.SUBMITTED:
                self._start_app(app, now)
            elif app.state is AppState.DONE:
                last = self._reported.get(app.name)
                if last is None or now - last >= 2 * self.tick:
                    self._report(app, now)
            elif (
                app.state is AppState.FINISHING
                and self._surrogate_of(app.name) not in self.subordinates
            ):
                self._start_app_cleanup(app, now)

    def _start_app_cleanup(self, app: AppRow, now: float) -> None:
        """A finishing application whose surrogate manager is gone: reinstall it to finish."""
        if not self.ranked():
            return
        id = self._surrogate_of(app.name)
        self._issued.discard(id)
        self.install(
            SURROGATE_TYPE,
            self.ranked()[0],
            now,
            kind=SURROGATE_KIND,
            labels=[app.name],
            config=self._surrogate_config(app),
        )

    def _make_backup(self, node: str, now: float) -> None:
        config = {
            "role": "backup",
            "primary": self.id,
            "primary_node": self.node,
            "epoch": self.epoch,
            "tick": self.tick,
            "misses": self.misses,
            "verify": self.verify,
            "heartbeat": self.heartbeat_config,
            "surrogate": self.surrogate_config,
        }
        backup = self.install(
            FTM_TYPE, node, now, kind=FTM_KIND, labels=[self._label("b")], config=config
        )
        self.backup = backup
        me = attrs.evolve(self.armors[self.id], manager=backup) if self.id in self.armors else None
        ops = [
            SpaceOp.template("delete", BACKUP_TAG, ANY, ANY),
            SpaceOp.out(BACKUP_TAG, self.epoch, backup),
        ]
        if me is not None:
            self.armors[self.id] = me
            ops += [
                SpaceOp.template("delete", *ArmorEntry.template(self.id)),
                SpaceOp.out(*me.to_tuple()),
            ]
        self._write(ops, None)

    @property
    def acting(self) -> bool:
        """Whether it acts as the FTM now."""
        return self.role is Role.PRIMARY


_Role.armor_type = FTM
