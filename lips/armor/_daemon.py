"""
The daemon core: a node's daemon in Chameleon's sense (the paper's section 4.3), sans-IO
on the core contract (C{docs/design/core.md}).  lipsd hosts one per node
(L{lips.node.DaemonService}), as ARMOR C{daemon.<node>}.

It installs ARMORs on its node as processes of their own and watches them (an exit is a
crash, missed pings a hang: it kills the process), tells each ARMOR's manager what
became of it, answers heartbeats, and is the gateway of every ARMOR message: a message
from a local ARMOR goes to the ARMOR it names if that one lives here, else to the daemon
of the node it lives on; a message from a peer daemon goes to the local ARMOR it names,
and one for an ARMOR that does not live here is answered with an L{UNDELIVERABLE}
message to its source and counted (C{messages.absent}, and by node in L{Daemon.absent}:
the paper's sign of a node that is wrong without being silent).

Where an ARMOR lives is the ARMOR table, tuples of the System Tuple Space written by the
daemon that installed it (L{ArmorRow}: C{("armor", id, type, manager, node, incarnation,
application)}); the core asks it through the L{TABLE} peer and caches the answers (at
most C{cache_size}, least recently used first out), dropping an entry when a peer
daemon answers that the ARMOR is not there.  A daemon's own id names its node
(C{daemon.n3}), so messages for daemons need no lookup.  Messages waiting for a lookup,
a connection or an ARMOR that is starting wait in queues of at most C{queue_limit}
each; what does not fit is dropped, counted, and answered with L{UNDELIVERABLE}.

Only registered ARMOR types are installed (C{types}, the names of the
L{IArmorType<lips.armor.IArmorType>} plugins), and an install whose configuration
names application code as its C{target} option only if that target matches one of the
node's C{allow} patterns (lipsd's C{--allow}, as for eval): nothing executable travels.
An install must come from the manager it names, over a link that authenticated its
sender (the adapters': a peer daemon that proved it holds the cluster key, or a local
ARMOR process that presented its token).

Peers (the C{to} of a L{Send}), and what is sent to each:

  - L{LocalPeer}C{(armor, incarnation)}, the local link of an ARMOR process: a
    L{Message} for it, a L{Ping}.
  - L{NodePeer}C{(node)}, the daemon link to another node: a L{Message} for an ARMOR
    there, L{Dial} (connect: the adapter finds the node's endpoint, and answers with
    L{Daemon.peer_up} or L{Daemon.peer_down}).
  - L{TABLE}, the ARMOR table: L{Lookup} (answered by L{Daemon.located}),
    L{Register} (answered by L{Daemon.registered}), L{Unregister} (not answered).
  - L{SpacePeer}C{(space)}, a tuple space (C{system}, or an application's):
    L{SpaceCall}C{(call, request)} (answered by L{Daemon.space_answered}), for a local
    ARMOR's C{space-request} or the daemon's own reads of the FTM's tables.

Inputs (each takes the current time, C{now}, last):

  - L{Daemon.local_hello}C{(armor, incarnation, token, now) -> bool}: an ARMOR process
    connected and named itself; whether it is the one started (else the adapter hangs
    up).  Emits L{Register}.
  - L{Daemon.local_message}C{(armor, incarnation, message, now)}: from a local ARMOR.
  - L{Daemon.local_pong}C{(armor, incarnation, seq, now)}: it answered ping C{seq}.
  - L{Daemon.local_failed}C{(armor, incarnation, reason, now)}: it says it cannot run
    (its type refused its configuration); it is stopped, the install failed.
  - L{Daemon.local_lost}C{(armor, incarnation, now)}: its link is gone: it is killed.
  - L{Daemon.ended}C{(handle, how, now)}: an ARMOR process ended (C{how} describes
    it: C{"signal 9 (SIGKILL)"}); unless it was uninstalled or replaced, a crash.
  - L{Daemon.peer_up}C{(node, now)} / L{Daemon.peer_down}C{(node, reason, now)}: the
    daemon link to C{node} is up (dialed or accepted), or gone / could not be made.
  - L{Daemon.peer_message}C{(node, message, now)}: from the daemon of C{node}.
  - L{Daemon.located}C{(armor, node, now)}: where the table says C{armor} lives (None:
    nowhere).
  - L{Daemon.registered}C{(armor, incarnation, ok, reason, now)}: its row is in the
    table (or not, and why).
  - L{Daemon.space_answered}C{(call, reply, now)}: what came of a L{SpaceCall}.
  - L{Daemon.start}C{(now)}: lipsd runs: the join and sweep rounds begin.
  - L{Daemon.stop}C{(now)}: lipsd stops: every local ARMOR is killed.
  - L{Daemon.timer}C{(key, now)}: one of L{DaemonTimer}.

Messages it takes (addressed to C{daemon.<node>}): L{INSTALL}, L{UNINSTALL} (from the
ARMOR's manager only), L{HEARTBEAT} (answered at once by L{HEARTBEAT_ACK}: the
heartbeat's body, with the daemon's C{node} and C{boot} added when it is a map, which
is the C{HeartbeatAck} of L{lips.armor.ftm}), L{UNDELIVERABLE} (its own message
bounced: the cache entry goes).  The FTM's (C{docs/design/armor.md}, "The FTM's side"):
L{FENCED} envelopes, unwrapped through an L{EpochFence} (an older epoch is refused,
counted C{commands.fenced}; a newer one redirects the reports of what older FTMs
managed), L{WELCOME} (fenced: joined), L{FTM_CHANGED} (fenced); it sends L{JOIN} to the
FTM the epoch tuples name until welcomed, and again after C{rejoin_after} without a
heartbeat; under an FTM it installs only what the FTM's ARMOR table (the C{ftm-armor}
entries: its intent) places here, and, once welcomed, sweeps out what it no longer
does.  Messages it sends its ARMORs' managers: L{INSTALLED}
(once the process connected and its row is in the table), L{INSTALL_FAILED},
L{UNINSTALLED}, L{ARMOR_DEAD} (with the incarnation and how it died).

Effects:

  - L{Send}C{(peer, ...)}: as above.
  - L{Spawn}C{(ArmorSpec, handle)}: start an ARMOR process; its end comes back as
    L{Daemon.ended}C{(handle, ...)}.
  - L{Kill}C{(handle)}: end it.  The first Kill of a handle asks (SIGTERM); a second,
    emitted C{kill_grace} seconds later if it has not ended, forces it (SIGKILL: a
    stopped or hung process does not handle SIGTERM).
  - L{StartTimer} / L{CancelTimer}: keys of L{DaemonTimer}.
  - L{Log}: installs, deaths and hangs (info, warn), refused installs and frames for
    absent ARMORs (warn), spoofed messages (warn).

Queries: L{Daemon.residents}, L{Daemon.link_state}, L{Daemon.cached},
L{Daemon.counters} (names in L{DAEMON_COUNTERS}), L{Daemon.absent}.
"""

from __future__ import annotations

import enum
import fnmatch
import hmac
import itertools
import random
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any, ClassVar, Final

import attrs
from twisted.logger import LogLevel

from lips.armor._bodies import (
    ArmorDead,
    Install,
    Installed,
    InstallFailed,
    Uninstall,
    Uninstalled,
)
from lips.armor._link import TOKEN_SIZE
from lips.armor._messages import (
    ARMOR_DEAD,
    INSTALL,
    INSTALL_FAILED,
    INSTALLED,
    UNINSTALL,
    UNINSTALLED,
    Body,
    Message,
    name,
    plain_map,
    text,
)
from lips.armor._names import (
    DAEMON_KIND,
    ArmorId,
    MessageError,
    armor_id,
    check_label,
    daemon_id,
    id_labels,
)
from lips.armor.ftm import (
    EPOCH_TAG,
    FENCED,
    FTM_CHANGED,
    FTM_KIND,
    JOIN,
    SUBMITTER_KIND,
    WELCOME,
    ArmorEntry,
    EpochFence,
    Join,
    Welcome,
    current_ftm,
    is_ftm,
)
from lips.armor.space import (
    SPACE_KIND,
    SPACE_REPLY,
    SYSTEM_SPACE,
    SpaceOp,
    SpaceReply,
    SpaceRequest,
    space_id,
)
from lips.kernel import CancelTimer, Effect, Kill, Log, Outbox, Send, Spawn, StartTimer, TimerKey
from lips.tuples import ANY, LTuple
from lips.validate import at_least, non_negative, positive

__all__ = [
    "ARMOR_TAG",
    "DAEMON_COUNTERS",
    "HEARTBEAT",
    "HEARTBEAT_ACK",
    "TABLE",
    "UNDELIVERABLE",
    "ArmorRow",
    "ArmorSpec",
    "Daemon",
    "DaemonPolicy",
    "DaemonTimer",
    "Dial",
    "LinkState",
    "LocalPeer",
    "Lookup",
    "NodePeer",
    "Ping",
    "Register",
    "SpaceCall",
    "SpacePeer",
    "Resident",
    "ResidentState",
    "Table",
    "Undeliverable",
    "Unregister",
    "application_of",
    "armor_template",
]

# -- messages -----------------------------------------------------------------------------------

#: To a daemon: are you (and your node) alive?  Answered by L{HEARTBEAT_ACK} (the names
#: are L{lips.armor.ftm}'s too).
HEARTBEAT: Final = "heartbeat"
#: A daemon's answer to a L{HEARTBEAT}: its body, plus C{node} and C{boot} if a map.
HEARTBEAT_ACK: Final = "heartbeat-ack"
#: A daemon to a message's source: it could not be delivered (L{Undeliverable}).
UNDELIVERABLE: Final = "undeliverable"

#: The first field of an ARMOR table tuple.
ARMOR_TAG: Final = "armor"

#: The kinds of ARMOR whose processes may attach themselves to a daemon
#: (L{Daemon.local_attach}), and the type of each: an FTM (C{twistd lips-ftm}) and a
#: submitter (C{lips submit}).
ATTACH_KINDS: Final[Mapping[str, str]] = MappingProxyType(
    {FTM_KIND: FTM_KIND, SUBMITTER_KIND: "submitter"}
)

#: The counters a daemon keeps (in L{Daemon.counters}).
DAEMON_COUNTERS: Final[tuple[str, ...]] = (
    "messages.local",  # from local ARMORs
    "messages.peer",  # from peer daemons
    "messages.delivered",  # to local ARMORs
    "messages.forwarded",  # to peer daemons
    "messages.absent",  # from a peer, for an ARMOR that does not live here
    "messages.unknown",  # for an ARMOR the table does not know (or not where it says)
    "messages.spoofed",  # a source its link may not speak for
    "messages.stale",  # from an ARMOR process that is not the current one
    "messages.unhandled",  # addressed to the daemon, of a type it does not take
    "messages.refused",  # addressed to the daemon, with a malformed body
    "messages.dropped",  # a queue was full, a lookup unanswered, a node unreachable
    "messages.bounced",  # an UNDELIVERABLE came back
    "installs.refused",
    "installs.failed",  # the process did not come up
    "armors.installed",
    "armors.dead",  # crashed (exited) or killed as hung
    "armors.hung",
    "armors.uninstalled",
    "links.refused",  # a local hello that is not the process started
    "armors.attached",  # processes that attached themselves (an FTM, a submitter)
    "armors.detached",  # ... and whose links then closed
    "heartbeats.answered",
    "lookups",
    "cache.hits",
    "cache.dropped",
    "commands.fenced",  # an FTM's command of an older epoch (or another FTM's, same epoch)
    "commands.unfenced",  # an FTM's command without its epoch, once an epoch is known
    "ftm.changes",  # a newer FTM became known: reports go to it
    "joins.sent",
    "joins.welcomed",
    "installs.stale",  # the FTM's ARMOR table does not place that incarnation here
    "armors.swept",  # stopped: the FTM's ARMOR table no longer places it here
    "space.requests",  # carried to the host for a local ARMOR
    "space.replies",  # answered back to it
    "space.orphaned",  # an answer for an ARMOR process that is gone
)


def _armor(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    armor_id(value)


def _label(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    check_label(value, attribute.name)


@attrs.frozen
class Undeliverable(Body):
    """
    The message C{id} of type C{type} for C{destination} could not be delivered by the
    daemon of C{node}: C{reason}.
    """

    message_types: ClassVar[frozenset[str]] = frozenset({UNDELIVERABLE})

    destination: ArmorId = attrs.field(converter=armor_id)
    type: str = attrs.field(validator=name)
    id: int = attrs.field(validator=at_least(1))
    node: str = attrs.field(validator=_label)
    reason: str = attrs.field(validator=text)


# -- peers and what the core sends them ---------------------------------------------------------


@attrs.frozen
class LocalPeer:
    """The local link of the process of incarnation C{incarnation} of C{armor}."""

    armor: ArmorId = attrs.field(validator=_armor)
    incarnation: int = attrs.field(validator=at_least(1))


@attrs.frozen
class NodePeer:
    """The daemon link to the daemon of C{node}."""

    node: str = attrs.field(validator=_label)


class Table(enum.Enum):
    """The ARMOR table, in the System Tuple Space: a peer of one."""

    TABLE = "table"


#: The ARMOR table peer.
TABLE: Final = Table.TABLE


@attrs.frozen
class SpacePeer:
    """
    The tuple space C{space} (C{system} or an application's name), which the host
    reaches with a client: a peer of one per space.
    """

    space: str = attrs.field(validator=_label)

    @property
    def id(self) -> ArmorId:
        """Its pseudo-ARMOR id: C{space.<space>}."""
        return space_id(self.space)


@attrs.frozen
class SpaceCall:
    """
    To a space: carry C{request} out (as one: L{lips.armor.space}); answer with
    L{Daemon.space_answered}C{(call, reply, now)}.
    """

    call: int = attrs.field(validator=at_least(1))
    request: SpaceRequest


@attrs.frozen
class Ping:
    """To an ARMOR process: answer with C{seq} (L{Daemon.local_pong})."""

    seq: int = attrs.field(validator=at_least(1))


@attrs.frozen
class Dial:
    """To a node: connect to its daemon."""


def application_of(armor: ArmorId, manager: ArmorId | None) -> str | None:
    """
    The application an ARMOR belongs to, from the ids (C{lips.armor.Manager}'s scheme):
    a surrogate manager's own label (C{sm.job7}: C{job7}), else the first label of its
    manager's scope (managed by C{sm.job7} or C{exec.job7.t1}: C{job7}), else None (the
    FTM's own ARMORs).
    """
    labels = id_labels(armor)
    if labels[0] == "sm" and len(labels) == 2:
        return labels[1]
    if manager is not None:
        scope = id_labels(manager)[1:]
        if scope:
            return scope[0]
    return None


@attrs.frozen
class ArmorRow:
    """
    One row of the ARMOR table: incarnation C{incarnation} of C{armor}, of type
    C{type}, managed by C{manager}, runs on C{node}, for C{application} (None: none).
    """

    armor: ArmorId = attrs.field(validator=_armor)
    type: str = attrs.field(validator=name)
    manager: ArmorId | None = attrs.field()
    node: str = attrs.field(validator=_label)
    incarnation: int = attrs.field(validator=at_least(1))
    application: str | None = attrs.field(default=None)

    @manager.validator
    def _manager(self, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is not None:
            armor_id(value)

    def as_tuple(self) -> LTuple:
        """C{("armor", id, type, manager, node, incarnation, application)}."""
        return (
            ARMOR_TAG,
            self.armor,
            self.type,
            self.manager,
            self.node,
            self.incarnation,
            self.application,
        )

    @classmethod
    def from_tuple(cls, values: LTuple) -> ArmorRow:
        """
        The row C{values} holds.

        @raise ValueError: if it is not an ARMOR table tuple.
        """
        if len(values) != 7 or values[0] != ARMOR_TAG:
            raise ValueError(f"not an ARMOR table tuple: {values!r}")
        _, armor, type_, manager, node, incarnation, application = values
        if application is not None and not isinstance(application, str):
            raise MessageError(f"an application is a string, not {application!r}")
        try:
            return cls(armor, type_, manager, node, incarnation, application)
        except TypeError as e:
            raise ValueError(str(e)) from None


def armor_template(armor: str | None = None) -> tuple[Any, ...]:
    """The template of the ARMOR table's rows: every row, or those of C{armor}."""
    return (ARMOR_TAG, str if armor is None else armor, str, ANY, str, int, ANY)


@attrs.frozen
class Lookup:
    """To the table: where does C{armor} live?  Answered by L{Daemon.located}."""

    armor: ArmorId = attrs.field(validator=_armor)


@attrs.frozen
class Register:
    """
    To the table: put C{row} in, in the place of the rows of older incarnations of its
    ARMOR; refuse (C{ok} false) if a newer one is there.  Answered by
    L{Daemon.registered}.
    """

    row: ArmorRow


@attrs.frozen
class Unregister:
    """To the table: take C{row} out, exactly that one (if it is there)."""

    row: ArmorRow


@attrs.frozen
class ArmorSpec:
    """
    The process of one ARMOR to start: incarnation C{incarnation} of C{armor}, of the
    registered type C{type}, managed by C{manager}, made with C{config}; it names itself
    with C{token} when it connects (its daemon's proof that it is the one started).
    """

    armor: ArmorId = attrs.field(validator=_armor)
    type: str = attrs.field(validator=name)
    manager: ArmorId = attrs.field(validator=_armor)
    incarnation: int = attrs.field(validator=at_least(1))
    config: dict[str, Any] = attrs.field(converter=plain_map)
    token: bytes = attrs.field(repr=False, validator=attrs.validators.instance_of(bytes))


# -- the core's own state -----------------------------------------------------------------------


class DaemonTimer(enum.Enum):
    """The daemon's timers."""

    START = "start"
    """C{(START, (armor, incarnation))}: its process has had its time to connect."""
    PING = "ping"
    """C{(PING, (armor, incarnation))}: ping it (and see whether it answered)."""
    KILL = "kill"
    """C{(KILL, handle)}: it was asked to end and has not: force it."""
    LOOKUP = "lookup"
    """C{(LOOKUP, armor)}: the table has not answered where C{armor} lives."""
    REDIAL = "redial"
    """C{(REDIAL, node)}: dial C{node} again (its last dial failed)."""
    JOIN = "join"
    """C{(JOIN, node)}: join the FTM if not welcomed, or silent for C{rejoin_after}."""
    SWEEP = "sweep"
    """C{(SWEEP, node)}: check the ARMORs here against the FTM's ARMOR table."""


@attrs.frozen
class DaemonPolicy:
    """
    How a daemon watches its ARMORs and bounds what waits.

    @ivar ping_interval: seconds between pings of each ARMOR process.
    @ivar ping_misses: pings in a row unanswered after which it is hung (and killed).
    @ivar start_timeout: seconds a new ARMOR process has to connect.
    @ivar kill_grace: seconds between asking a process to end and forcing it.
    @ivar lookup_timeout: seconds the ARMOR table has to answer a lookup.
    @ivar redial_delay: seconds after a failed dial before the next one.
    @ivar queue_limit: the most messages waiting for one lookup, one node or one ARMOR.
    @ivar max_lookups: the most lookups outstanding.
    @ivar cache_size: the most locations cached.
    @ivar max_armors: the most ARMOR processes on this node.
    @ivar join_interval: seconds between L{JOIN}s while not welcomed (after L{Daemon.start}).
    @ivar rejoin_after: seconds without a heartbeat (or welcome) after which it joins again.
    @ivar sweep_interval: seconds between sweeps against the FTM's ARMOR table.
    @ivar max_space_calls: the most space requests outstanding.
    """

    ping_interval: float = attrs.field(default=1.0, converter=float, validator=positive)
    ping_misses: int = attrs.field(default=3, validator=at_least(1))
    start_timeout: float = attrs.field(default=10.0, converter=float, validator=positive)
    kill_grace: float = attrs.field(default=2.0, converter=float, validator=non_negative)
    lookup_timeout: float = attrs.field(default=5.0, converter=float, validator=positive)
    redial_delay: float = attrs.field(default=1.0, converter=float, validator=non_negative)
    queue_limit: int = attrs.field(default=64, validator=at_least(1))
    max_lookups: int = attrs.field(default=256, validator=at_least(1))
    cache_size: int = attrs.field(default=1024, validator=at_least(1))
    max_armors: int = attrs.field(default=64, validator=at_least(1))
    join_interval: float = attrs.field(default=1.0, converter=float, validator=positive)
    rejoin_after: float = attrs.field(default=3.0, converter=float, validator=positive)
    sweep_interval: float = attrs.field(default=2.0, converter=float, validator=positive)
    max_space_calls: int = attrs.field(default=256, validator=at_least(1))


class ResidentState(enum.Enum):
    """Where an ARMOR process of this node stands."""

    STARTING = "starting"
    """Spawned; it has not connected yet."""
    REGISTERING = "registering"
    """Connected; its row is being put in the ARMOR table."""
    RUNNING = "running"
    """Its manager was told it runs; it is pinged."""
    STOPPING = "stopping"
    """Asked to end (uninstalled, hung, replaced, ...); its end is awaited."""


class _Ending(enum.Enum):
    """What its manager is told when a stopping process ends."""

    DEAD = "dead"  # armor-dead
    LOST = "lost"  # armor-dead: its link went first, then it ended (how it ended is said)
    FAILED = "failed"  # install-failed
    UNINSTALLED = "uninstalled"  # uninstalled
    SUPERSEDED = "superseded"  # nothing: its manager installed a newer incarnation


@attrs.define(eq=False)
class Resident:
    """
    One ARMOR process of this node.

    @ivar ping_seq: the last ping sent; C{answered}: the last one it answered.
    @ivar kills: how many Kill effects were emitted for it.
    """

    spec: ArmorSpec
    handle: int
    state: ResidentState
    since: float
    application: str | None
    queue: deque[Message] = attrs.field(factory=deque)
    registered: bool = False
    ping_seq: int = 0
    answered: int = 0
    kills: int = 0
    ending: _Ending | None = None
    reason: str | None = None
    #: Whom its reports go to: the install's manager, until a newer FTM takes over the
    #: FTM's (None: nobody, an FTM that is the newest itself).
    manager: ArmorId | None = None
    #: Whether its process attached itself (L{Daemon.local_attach}) rather than being
    #: started by this daemon.
    attached: bool = False

    def __attrs_post_init__(self) -> None:
        if self.manager is None and not self.attached:
            self.manager = self.spec.manager

    @property
    def armor(self) -> ArmorId:
        return self.spec.armor

    @property
    def incarnation(self) -> int:
        return self.spec.incarnation

    @property
    def peer(self) -> LocalPeer:
        return LocalPeer(self.spec.armor, self.spec.incarnation)

    def row(self, node: str) -> ArmorRow:
        spec = self.spec
        return ArmorRow(
            spec.armor, spec.type, spec.manager, node, spec.incarnation, self.application
        )


class LinkState(enum.Enum):
    """Where the daemon link to a node stands."""

    DOWN = "down"
    DIALING = "dialing"
    UP = "up"


@attrs.define(eq=False)
class _Link:
    node: str
    state: LinkState = LinkState.DOWN
    queue: deque[Message] = attrs.field(factory=deque)
    failed_at: float | None = None


@attrs.frozen
class _SpaceWait:
    """A space request under way: for C{armor}'s process, or the daemon's own (C{then})."""

    space: ArmorId
    armor: ArmorId
    incarnation: int
    request: int
    then: Any = None  # Callable[[SpaceReply, float], None] for the daemon's own


def _daemon_node(id: ArmorId) -> str | None:
    labels = id_labels(id)
    if labels[0] == DAEMON_KIND and len(labels) == 2:
        return labels[1]
    return None


class Daemon:
    """
    The daemon of node C{node} (see the module docstring).

    @param types: the ARMOR types it may install (the registered ones); None: any.
    @param allow: fnmatch patterns of the C{target} an install's configuration may name.
    @param rng: where the processes' tokens come from (L{random.SystemRandom} in lipsd).
    @param boot: this run of the node's daemon, a positive number that differs from
        its earlier runs' (lipsd: its start time in microseconds), said in its joins
        and heartbeat answers: a new one tells the FTM the node restarted.
    @ivar counters: see L{DAEMON_COUNTERS}.
    @ivar absent: messages for ARMORs that do not live here, by the node that sent them.
    @ivar stopped: whether L{stop} was called.
    """

    emits: ClassVar[frozenset[type[Effect]]] = frozenset(
        {Send, Spawn, Kill, StartTimer, CancelTimer, Log}
    )

    def __init__(
        self,
        node: str,
        *,
        policy: DaemonPolicy | None = None,
        types: Iterable[str] | None = None,
        allow: Iterable[str] = (),
        rng: random.Random | None = None,
        boot: int = 1,
    ) -> None:
        self.node = check_label(node, "a node name")
        if type(boot) is not int or boot < 1:
            raise ValueError(f"boot is a positive integer, not {boot!r}")
        self.boot = boot
        self.id: ArmorId = daemon_id(node)
        self.policy = policy if policy is not None else DaemonPolicy()
        if not isinstance(self.policy, DaemonPolicy):
            raise TypeError(f"not a DaemonPolicy: {self.policy!r}")
        self.types: frozenset[str] | None = None if types is None else frozenset(types)
        self.allow: tuple[str, ...] = tuple(allow)
        self.rng = rng if rng is not None else random.SystemRandom()
        self.counters: Counter[str] = Counter()
        self.absent: Counter[str] = Counter()
        self.stopped = False
        self._outbox = Outbox(Daemon.emits)
        self._ids = itertools.count(1)
        self._handles = itertools.count(1)
        # The current process of each ARMOR id, and every process not yet ended.
        self._residents: dict[ArmorId, Resident] = {}
        self._live: dict[int, Resident] = {}
        self._links: dict[str, _Link] = {}
        self._cache: OrderedDict[ArmorId, str] = OrderedDict()
        self._awaiting: dict[ArmorId, deque[Message]] = {}
        self._registering: dict[tuple[ArmorId, int], ArmorRow] = {}
        self._timers: set[TimerKey] = set()
        #: The newest FTM heard, and its epoch: every FTM command comes fenced.
        self.fence = EpochFence()
        #: Whether the FTM welcomed this run (L{WELCOME}); when it last heard from it.
        self.joined = False
        self.started = False
        self.last_heard: float | None = None
        self._calls = itertools.count(1)
        self._space: dict[int, _SpaceWait] = {}

    def __repr__(self) -> str:
        return f"<Daemon {self.id}>"

    # -- queries --------------------------------------------------------------------------------

    @property
    def residents(self) -> dict[ArmorId, Resident]:
        """The current process of each ARMOR installed here, by id."""
        return dict(self._residents)

    def link_state(self, node: str) -> LinkState:
        """Where the daemon link to C{node} stands."""
        link = self._links.get(node)
        return LinkState.DOWN if link is None else link.state

    def cached(self, armor: str) -> str | None:
        """The node the cache says C{armor} lives on, if it says."""
        return self._cache.get(armor_id(armor))

    def drain(self) -> list[Effect]:
        """The effects emitted since the last call, in order."""
        return self._outbox.drain()

    # -- inputs: the local links -----------------------------------------------------------

    def local_hello(self, armor: ArmorId, incarnation: int, token: bytes, now: float) -> bool:
        """
        The process of incarnation C{incarnation} of C{armor} connected with C{token}.

        @return: whether it is the process this daemon started and waits for; if not,
            the adapter hangs up on it.
        """
        resident = self._residents.get(armor)
        if (
            resident is None
            or resident.incarnation != incarnation
            or resident.state is not ResidentState.STARTING
            or not hmac.compare_digest(resident.spec.token, token)
        ):
            self.counters["links.refused"] += 1
            self._outbox.log(
                LogLevel.warn,
                "Refused a local link claiming to be {armor} (incarnation {incarnation})",
                armor=armor,
                incarnation=incarnation,
            )
            return False
        self._cancel_timer((DaemonTimer.START, (armor, incarnation)))
        resident.state = ResidentState.REGISTERING
        resident.since = now
        row = resident.row(self.node)
        self._registering[(armor, incarnation)] = row
        self._outbox.send(TABLE, Register(row))
        return True

    def local_attach(self, armor: ArmorId, incarnation: int, type: str, now: float) -> int | None:
        """
        A process this daemon did not start attached itself over the local link as
        incarnation C{incarnation} of C{armor}, of type C{type}, having proved it holds
        the cluster key (the adapter checked: L{lips.armor.AttachHello}).  Only the kinds
        of L{ATTACH_KINDS} may (C{twistd lips-ftm}'s FTM, C{lips submit}'s submitter),
        and not over a live process of the same id.

        It is then a resident like any other (its row goes in the table, it is pinged, a
        hung one is ended), with no manager: nobody is told of its end.  Its process is
        the adapter's to end: a L{Kill} of the handle returned means "hang up on it", and
        the end of its link is its end (L{ended}).

        @return: its handle, or None if it is refused (the adapter hangs up).
        """
        kind = id_labels(armor)[0]
        known = self._residents.get(armor)
        reason = None
        if kind not in ATTACH_KINDS:
            reason = f"only {sorted(ATTACH_KINDS)} ARMORs attach, not a {kind!r}"
        elif type != ATTACH_KINDS[kind]:
            reason = f"a {kind!r} ARMOR is of type {ATTACH_KINDS[kind]!r}, not {type!r}"
        elif known is not None and known.state is not ResidentState.STOPPING:
            reason = f"{armor} already runs here (incarnation {known.incarnation})"
        elif self.stopped:
            reason = "the daemon is stopping"
        if reason is not None:
            self.counters["links.refused"] += 1
            self._outbox.log(
                LogLevel.warn,
                "Refused {armor} attaching itself: {reason}",
                armor=armor,
                reason=reason,
            )
            return None
        handle = next(self._handles)
        spec = ArmorSpec(armor, type, self.id, incarnation, {}, b"")
        resident = Resident(spec, handle, ResidentState.REGISTERING, now, None, attached=True)
        self._residents[armor] = resident
        self._live[handle] = resident
        self.counters["armors.attached"] += 1
        row = resident.row(self.node)
        self._registering[(armor, incarnation)] = row
        self._outbox.send(TABLE, Register(row))
        return handle

    def local_message(
        self, armor: ArmorId, incarnation: int, message: Message, now: float
    ) -> None:
        """C{message} came from the process of incarnation C{incarnation} of C{armor}."""
        resident = self._current(armor, incarnation)
        if resident is None or resident.state not in (
            ResidentState.REGISTERING,
            ResidentState.RUNNING,
        ):
            self.counters["messages.stale"] += 1
            return
        if message.source != armor:
            self.counters["messages.spoofed"] += 1
            self._outbox.log(
                LogLevel.warn,
                "{armor} sent a {type} message as {source}: dropped",
                armor=armor,
                type=message.type,
                source=message.source,
            )
            return
        self.counters["messages.local"] += 1
        self._route(message, now)

    def local_pong(self, armor: ArmorId, incarnation: int, seq: int, now: float) -> None:
        """The process of C{armor} answered ping C{seq}."""
        resident = self._current(armor, incarnation)
        if resident is not None and resident.answered < seq <= resident.ping_seq:
            resident.answered = seq

    def local_failed(self, armor: ArmorId, incarnation: int, reason: str, now: float) -> None:
        """The process of C{armor} says it cannot run, for C{reason}: the install failed."""
        resident = self._current(armor, incarnation)
        if resident is not None:
            self._stop(resident, _Ending.FAILED, f"it could not be made: {reason}", now)

    def local_lost(self, armor: ArmorId, incarnation: int, now: float) -> None:
        """The local link of C{armor}'s process is gone: the process is of no use; kill it."""
        resident = self._current(armor, incarnation)
        if resident is not None:
            self._stop(resident, _Ending.LOST, "it lost its link to the daemon", now)

    def ended(self, handle: int, how: str, now: float) -> None:
        """
        ARMOR process C{handle} ended, as C{how} says.  An end reported twice, or of a
        process this daemon never started, changes nothing.
        """
        resident = self._live.pop(handle, None)
        if resident is None:
            return
        armor, incarnation = resident.armor, resident.incarnation
        for key in (
            (DaemonTimer.START, (armor, incarnation)),
            (DaemonTimer.PING, (armor, incarnation)),
            (DaemonTimer.KILL, handle),
        ):
            self._cancel_timer(key)
        if self._residents.get(armor) is resident:
            del self._residents[armor]
        if resident.registered:
            self._outbox.send(TABLE, Unregister(resident.row(self.node)))
        manager = resident.manager
        ending, reason = resident.ending, resident.reason
        if resident.attached and ending in (None, _Ending.LOST):
            self.counters["armors.detached"] += 1
            self._outbox.log(
                LogLevel.info,
                "{armor} (incarnation {incarnation}) detached: {how}",
                armor=armor,
                incarnation=incarnation,
                how=how,
            )
            return
        if ending is None:
            if resident.state is ResidentState.STARTING:
                ending, reason = _Ending.FAILED, f"it exited before it connected: {how}"
            else:
                ending, reason = _Ending.DEAD, f"it exited: {how}"
        assert reason is not None
        if ending is _Ending.LOST:
            ending, reason = _Ending.DEAD, f"{reason}, and ended: {how}"
        if ending is _Ending.DEAD:
            self.counters["armors.dead"] += 1
            self._outbox.log(
                LogLevel.warn,
                "ARMOR {armor} (incarnation {incarnation}) is dead: {reason}",
                armor=armor,
                incarnation=incarnation,
                reason=reason,
            )
            self._tell(ARMOR_DEAD, manager, ArmorDead(armor, self.node, incarnation, reason), now)
        elif ending is _Ending.FAILED:
            self.counters["installs.failed"] += 1
            self._outbox.log(
                LogLevel.warn,
                "ARMOR {armor} (incarnation {incarnation}) did not install: {reason}",
                armor=armor,
                incarnation=incarnation,
                reason=reason,
            )
            self._tell(
                INSTALL_FAILED, manager, InstallFailed(armor, self.node, incarnation, reason), now
            )
        elif ending is _Ending.UNINSTALLED:
            self.counters["armors.uninstalled"] += 1
            self._outbox.log(LogLevel.info, "ARMOR {armor} uninstalled", armor=armor)
            self._tell(UNINSTALLED, manager, Uninstalled(armor, self.node), now)
        for message in resident.queue:
            self._bounce(message, f"{armor} ended before it took its messages", now)
        resident.queue.clear()

    # -- inputs: the daemon links ------------------------------------------------------------

    def peer_up(self, node: str, now: float) -> None:
        """The daemon link to C{node} is up: what waits for it goes."""
        link = self._link(node)
        link.state = LinkState.UP
        link.failed_at = None
        self._cancel_timer((DaemonTimer.REDIAL, node))
        queue, link.queue = link.queue, deque()
        for message in queue:
            self._forward(node, message)

    def peer_down(self, node: str, reason: str, now: float) -> None:
        """
        The daemon link to C{node} is gone, or could not be made: what waits for it is
        dropped (and bounced), and the cache forgets what it placed on C{node}; the next
        message for C{node} dials again, not before C{redial_delay}.
        """
        link = self._link(node)
        was = link.state
        link.state = LinkState.DOWN
        link.failed_at = now
        queue, link.queue = link.queue, deque()
        if queue or was is LinkState.UP:
            self._outbox.log(
                LogLevel.warn,
                "Daemon link to {node} is down ({reason}); {count} messages dropped",
                node=node,
                reason=reason,
                count=len(queue),
            )
        for message in queue:
            self._bounce(message, f"node {node} is unreachable: {reason}", now)
        # What the cache placed there is looked up afresh: an ARMOR of a node that went
        # down is installed elsewhere, and the table says where once it runs.
        stale = [armor for armor, where in self._cache.items() if where == node]
        for armor in stale:
            del self._cache[armor]
        self.counters["cache.dropped"] += len(stale)

    def peer_message(self, node: str, message: Message, now: float) -> None:
        """
        C{message} came from the daemon of C{node} (its link says so): it is for this
        daemon or for an ARMOR of this node, or it is answered with L{UNDELIVERABLE}.
        """
        check_label(node, "a node name")
        self.counters["messages.peer"] += 1
        source = message.source
        claimed = _daemon_node(source)
        if source in self._residents or (claimed is not None and claimed != node):
            self.counters["messages.spoofed"] += 1
            self._outbox.log(
                LogLevel.warn,
                "Node {node} sent a {type} message as {source}: dropped",
                node=node,
                type=message.type,
                source=source,
            )
            return
        destination = message.destination
        if destination == self.id:
            self._own(message, node, now)
            return
        resident = self._residents.get(destination)
        if resident is None or resident.state is ResidentState.STOPPING:
            self.counters["messages.absent"] += 1
            self.absent[node] += 1
            self._outbox.log(
                LogLevel.warn,
                "Node {node} sent a {type} message for {destination}, which does not live"
                " on {here}",
                node=node,
                type=message.type,
                destination=destination,
                here=self.node,
            )
            self._bounce(message, f"{destination} does not live on {self.node}", now, via=node)
            return
        if message.type == UNDELIVERABLE:
            self._bounced(message)
        self._deliver(resident, message, now)

    # -- inputs: the ARMOR table -------------------------------------------------------------

    def located(self, armor: ArmorId, node: str | None, now: float) -> None:
        """The ARMOR table says C{armor} lives on C{node} (None: it has no row)."""
        if node is not None:
            check_label(node, "a node name")
            if node != self.node:
                self._remember(armor, node)
        queue = self._awaiting.pop(armor, None)
        if queue is None:
            return  # answered after its timeout
        self._cancel_timer((DaemonTimer.LOOKUP, armor))
        for message in queue:
            if node is None:
                self.counters["messages.unknown"] += 1
                self._bounce(message, f"the ARMOR table has no {armor}", now)
            else:
                self._route(message, now, looked_up=True)

    def registered(
        self, armor: ArmorId, incarnation: int, ok: bool, reason: str, now: float
    ) -> None:
        """The row of incarnation C{incarnation} of C{armor} is in the table (C{ok}) or not."""
        row = self._registering.pop((armor, incarnation), None)
        if row is None:
            return
        resident = self._current(armor, incarnation)
        if resident is None or resident.state is not ResidentState.REGISTERING:
            if ok:  # it ended (or is ending) meanwhile: its row goes again
                self._outbox.send(TABLE, Unregister(row))
            return
        if not ok:
            self._stop(resident, _Ending.FAILED, f"the ARMOR table refused it: {reason}", now)
            return
        resident.registered = True
        resident.state = ResidentState.RUNNING
        resident.since = now
        self.counters["armors.installed"] += 1
        self._outbox.log(
            LogLevel.info,
            "ARMOR {armor} (incarnation {incarnation}, {type}) runs on {node}",
            armor=armor,
            incarnation=incarnation,
            type=resident.spec.type,
            node=self.node,
        )
        self._tell(INSTALLED, resident.manager, Installed(armor, self.node, incarnation), now)
        queue, resident.queue = resident.queue, deque()
        for message in queue:
            self._deliver(resident, message, now)
        self._start_timer(
            (DaemonTimer.PING, (armor, incarnation)), now + self.policy.ping_interval
        )

    # -- inputs: the spaces --------------------------------------------------------------------

    def space_answered(self, call: int, reply: SpaceReply, now: float) -> None:
        """
        The space answered L{SpaceCall} C{call} with C{reply} (its C{request} number is
        not read: the call names the request).  An answer for a call not under way (a
        second one) changes nothing.
        """
        wait = self._space.pop(call, None)
        if wait is None:
            return
        answer = SpaceReply(wait.request, reply.ok, reply.failed, reply.values)
        if wait.then is not None:
            wait.then(answer, now)
            return
        resident = self._current(wait.armor, wait.incarnation)
        if resident is None or resident.state is ResidentState.STOPPING:
            self.counters["space.orphaned"] += 1
            return
        self.counters["space.replies"] += 1
        self._deliver(
            resident, Message.of(SPACE_REPLY, wait.space, wait.armor, next(self._ids), answer), now
        )

    # -- inputs: the host ---------------------------------------------------------------------

    def start(self, now: float) -> None:
        """
        lipsd runs: join the FTM (every C{join_interval} until welcomed, and again after
        C{rejoin_after} without a heartbeat), and, once welcomed, sweep every
        C{sweep_interval}.
        """
        if self.started:
            return
        self.started = True
        self._join(now)
        self._start_timer((DaemonTimer.SWEEP, self.node), now + self.policy.sweep_interval)

    def stop(self, now: float) -> None:
        """lipsd stops: kill every local ARMOR (their managers are told as they end)."""
        self.stopped = True
        for resident in list(self._residents.values()):
            self._stop(resident, _Ending.DEAD, f"its daemon ({self.node}) stopped", now)

    def timer(self, key: TimerKey, now: float) -> None:
        """
        A timer of L{DaemonTimer} is due.

        @raise ValueError: for a key this daemon never starts.
        """
        if not (isinstance(key, tuple) and isinstance(key[0], DaemonTimer)):
            raise ValueError(f"not a timer of the daemon: {key!r}")
        kind, what = key
        self._timers.discard(key)
        which: Any = what
        if kind is DaemonTimer.PING:
            self._ping(which, now)
        elif kind is DaemonTimer.START:
            armor, incarnation = which
            resident = self._current(armor, incarnation)
            if resident is not None and resident.state is ResidentState.STARTING:
                reason = f"it did not connect within {self.policy.start_timeout:g} s"
                self._stop(resident, _Ending.FAILED, reason, now)
        elif kind is DaemonTimer.KILL:
            resident = self._live.get(which)
            if resident is not None:
                resident.kills += 1
                self._outbox.kill(resident.handle)
        elif kind is DaemonTimer.LOOKUP:
            queue = self._awaiting.pop(which, None)
            for message in queue or ():
                self._bounce(
                    message,
                    f"the ARMOR table did not say within {self.policy.lookup_timeout:g} s"
                    f" where {what} lives",
                    now,
                )
        elif kind is DaemonTimer.REDIAL:
            link = self._links.get(which)
            if link is not None and link.state is LinkState.DOWN and link.queue:
                link.state = LinkState.DIALING
                self._outbox.send(NodePeer(which), Dial())
        elif kind is DaemonTimer.JOIN:
            self._join(now)
        elif kind is DaemonTimer.SWEEP and not self.stopped:
            self._sweep(now)
            self._start_timer((DaemonTimer.SWEEP, self.node), now + self.policy.sweep_interval)

    # -- the FTM's side: joining, sweeping -----------------------------------------------------

    def _join(self, now: float) -> None:
        """Join the FTM the space names, if not welcomed or silent for long; again later."""
        if self.stopped:
            return
        self._start_timer((DaemonTimer.JOIN, self.node), now + self.policy.join_interval)
        silent = self.last_heard is None or now - self.last_heard >= self.policy.rejoin_after
        if self.joined and not silent:
            return
        self.joined = False

        def then(reply: SpaceReply, now: float) -> None:
            holder = current_ftm([reply.values[0]]) if reply.ok else None
            if holder is None or self.stopped:
                return
            self.counters["joins.sent"] += 1
            self._route(self._message(JOIN, holder[1], Join(self.node, self.boot)), now)

        self._own_call([SpaceOp.template("rdp", EPOCH_TAG, ANY, ANY)], then, now)

    def _sweep(self, now: float) -> None:
        """
        Stop every ARMOR running here that the FTM's ARMOR table no longer places here as
        this incarnation (a superseded one: its manager moved it, or is gone); an FTM with
        no entry at all is kept (it records itself once it holds its epoch).  Only under an
        FTM that welcomed this run, and only for the processes running when the table was
        read (one installed meanwhile is not judged on an older read).
        """
        if not self.joined or self.stopped:
            return
        running = {a: r for a, r in self._residents.items() if r.state is ResidentState.RUNNING}
        if not running:
            return
        ftms = sorted(a for a in running if is_ftm(a))
        ops = [SpaceOp.template("scan", ArmorEntry.TAG, ANY, ANY, ANY, self.node, ANY, ANY)]
        ops += [SpaceOp.template("scan", *ArmorEntry.template(a)) for a in ftms]

        def then(reply: SpaceReply, now: float) -> None:
            if not reply.ok:
                return
            here = {(row[1], row[5]) for row in reply.values[0]}
            recorded = {a for a, rows in zip(ftms, reply.values[1:], strict=True) if rows}
            for armor, resident in running.items():
                if self._residents.get(armor) is not resident:
                    continue
                if resident.state is not ResidentState.RUNNING:
                    continue
                if (armor, resident.incarnation) in here:
                    continue
                if is_ftm(armor) and armor not in recorded:
                    continue
                if resident.attached and not is_ftm(armor):
                    continue  # a submitter: the FTM's table does not place those
                self.counters["armors.swept"] += 1
                self._outbox.log(
                    LogLevel.warn,
                    "{daemon} stops {armor} (incarnation {incarnation}): the FTM's ARMOR"
                    " table no longer places it here",
                    daemon=self.id,
                    armor=armor,
                    incarnation=resident.incarnation,
                )
                self._stop(resident, _Ending.SUPERSEDED, "superseded", now)

        self._own_call(ops, then, now)

    # -- the spaces -------------------------------------------------------------------------------

    def _own_call(self, ops: list[SpaceOp], then: Any, now: float) -> None:
        """The daemon's own request of the System Tuple Space; C{then(reply, now)}."""
        if len(self._space) >= self.policy.max_space_calls:
            self.counters["messages.dropped"] += 1
            return
        call = next(self._calls)
        self._space[call] = _SpaceWait(SYSTEM_SPACE, self.id, self.boot, call, then)
        peer = SpacePeer(id_labels(SYSTEM_SPACE)[1])
        self._outbox.send(peer, SpaceCall(call, SpaceRequest(call, tuple(ops))))

    def _space_request(self, message: Message, now: float) -> None:
        """A local ARMOR's L{SpaceRequest} for C{space.<name>}: the host carries it out."""
        source = message.source
        resident = self._residents.get(source)
        if resident is None:  # only the ARMORs of this node reach the spaces through it
            self.counters["messages.unknown"] += 1
            self._bounce(message, "spaces are reached through the daemon of a local ARMOR", now)
            return
        try:
            request = SpaceRequest.from_message(message)
        except MessageError as e:
            self.counters["messages.refused"] += 1
            self._outbox.log(
                LogLevel.warn,
                "{daemon} refused a space request from {source}: {error}",
                daemon=self.id,
                source=source,
                error=str(e),
            )
            return
        if len(self._space) >= self.policy.max_space_calls:
            self._bounce(message, "too many space requests under way", now)
            return
        self.counters["space.requests"] += 1
        call = next(self._calls)
        destination = message.destination
        self._space[call] = _SpaceWait(destination, source, resident.incarnation, request.request)
        peer = SpacePeer(id_labels(destination)[1])
        self._outbox.send(peer, SpaceCall(call, SpaceRequest(call, request.ops)))

    # -- messages for the daemon itself ---------------------------------------------------------

    def _own(self, message: Message, node: str | None, now: float) -> None:
        """C{message} is for this daemon; it came from C{node} (None: a local ARMOR)."""
        kind = message.type
        try:
            fenced = False
            if kind == FENCED:
                inner, newer = self.fence.admit(message)
                if inner is None:
                    self.counters["commands.fenced"] += 1
                    self._outbox.log(
                        LogLevel.warn,
                        "{daemon} refused a command of {source} from an older epoch"
                        " (it knows epoch {epoch}, of {ftm})",
                        daemon=self.id,
                        source=message.source,
                        epoch=self.fence.epoch,
                        ftm=self.fence.ftm,
                    )
                    return
                if newer:
                    self._redirect(message.source)
                message, kind, fenced = inner, inner.type, True
            elif (
                kind in (INSTALL, UNINSTALL)
                and self.fence.epoch > 0
                and is_ftm(message.source)
                and not (kind == UNINSTALL and message.value() == {"armor": message.source})
            ):
                self.counters["commands.unfenced"] += 1
                self._outbox.log(
                    LogLevel.warn,
                    "{daemon} refused an unfenced {type} from {source}",
                    daemon=self.id,
                    type=kind,
                    source=message.source,
                )
                return
            if kind == INSTALL:
                self._install(message, Install.from_message(message), node, now)
            elif kind == UNINSTALL:
                self._uninstall(message, Uninstall.from_message(message), now, fenced=fenced)
            elif kind == WELCOME and fenced:
                self._welcome(Welcome.from_message(message), now)
            elif kind == FTM_CHANGED and fenced:
                pass  # the fence took its news: what the old FTM managed reports here now
            elif kind == HEARTBEAT:
                self.last_heard = now
                self.counters["heartbeats.answered"] += 1
                beat = message.value()
                if isinstance(beat, dict):
                    beat = {**beat, "node": self.node, "boot": self.boot}
                reply = self._message(HEARTBEAT_ACK, message.source, beat)
                self._reply(reply, node, now)
            elif kind == UNDELIVERABLE:
                self._bounced(message)
            else:
                self.counters["messages.unhandled"] += 1
                self._outbox.log(
                    LogLevel.warn,
                    "{daemon} takes no {type} messages (from {source})",
                    daemon=self.id,
                    type=kind,
                    source=message.source,
                )
        except MessageError as e:
            self.counters["messages.refused"] += 1
            self._outbox.log(
                LogLevel.warn,
                "{daemon} refused a {type} message from {source}: {error}",
                daemon=self.id,
                type=kind,
                source=message.source,
                error=str(e),
            )

    def _install(
        self,
        message: Message,
        install: Install,
        node: str | None,
        now: float,
        *,
        checked: bool = False,
    ) -> None:
        reason = self._refusal(message, install)
        current = self._residents.get(install.armor)
        if reason is None and current is not None:
            if current.incarnation == install.incarnation:
                if current.state is ResidentState.RUNNING:  # asked again: say it again
                    self._tell(
                        INSTALLED,
                        install.manager,
                        Installed(install.armor, self.node, install.incarnation),
                        now,
                    )
                return
            if current.incarnation > install.incarnation:
                reason = f"its incarnation {current.incarnation} runs here"
        if reason is None and len(self._live) >= self.policy.max_armors:
            reason = f"node {self.node} runs {len(self._live)} ARMOR processes, its most"
        if reason is None and not checked and self.fence.ftm is not None:
            # Under an FTM, every install is in its ARMOR table first (its intent): one
            # the table does not place here, as this incarnation, is stale.
            self._check_intent(message, install, node, now)
            return
        if reason is not None:
            self.counters["installs.refused"] += 1
            self._refuse(message, install, node, reason, now)
            return
        if current is not None:  # an older incarnation: its manager moved on
            self._stop(current, _Ending.SUPERSEDED, "a newer incarnation was installed", now)
            del self._residents[current.armor]
        spec = ArmorSpec(
            install.armor,
            install.type,
            install.manager,
            install.incarnation,
            install.config,
            self.rng.randbytes(TOKEN_SIZE),
        )
        handle = next(self._handles)
        resident = Resident(
            spec,
            handle,
            ResidentState.STARTING,
            now,
            application_of(install.armor, install.manager),
        )
        self._residents[spec.armor] = resident
        self._live[handle] = resident
        self._outbox.spawn(spec, handle)
        self._start_timer(
            (DaemonTimer.START, (spec.armor, spec.incarnation)), now + self.policy.start_timeout
        )

    def _refusal(self, message: Message, install: Install) -> str | None:
        """Why C{install} is not to be done, or None."""
        if self.stopped:
            return f"the daemon of {self.node} is stopping"
        if install.manager != message.source:
            return f"an install comes from the manager it names, not from {message.source}"
        if id_labels(install.armor)[0] == DAEMON_KIND:
            return "a daemon is not installed by a daemon"
        if self.types is not None and install.type not in self.types:
            return f"no ARMOR type {install.type!r} is registered on node {self.node}"
        target = install.config.get("target")
        if target is not None:
            if not isinstance(target, str):
                return "the target option is a 'package.module:function' string"
            if not any(fnmatch.fnmatchcase(target, p) for p in self.allow):
                return f"{target} is not allowed on node {self.node} (--allow)"
        return None

    def _check_intent(
        self, message: Message, install: Install, node: str | None, now: float
    ) -> None:
        placed = SpaceOp.template(
            "rdp", ArmorEntry.TAG, install.armor, ANY, ANY, self.node, install.incarnation, ANY
        )

        def then(reply: SpaceReply, now: float) -> None:
            if reply.ok:
                self._install(message, install, node, now, checked=True)
                return
            self.counters["installs.stale"] += 1
            reason = (
                f"the FTM's ARMOR table does not place incarnation {install.incarnation}"
                f" of {install.armor} on {self.node}"
            )
            self._refuse(message, install, node, reason, now)

        self._own_call([placed], then, now)

    def _refuse(
        self, message: Message, install: Install, node: str | None, reason: str, now: float
    ) -> None:
        """Say why C{install} is not done, and answer its manager INSTALL_FAILED."""
        self._outbox.log(
            LogLevel.warn,
            "Refused to install {armor} for {manager}: {reason}",
            armor=install.armor,
            manager=message.source,
            reason=reason,
        )
        failed = InstallFailed(install.armor, self.node, install.incarnation, reason)
        self._reply(self._message(INSTALL_FAILED, message.source, failed), node, now)

    def _welcome(self, welcome: Welcome, now: float) -> None:
        if welcome.node != self.node or welcome.boot != self.boot:
            return  # for another run of this node's daemon
        if not self.joined:
            self.counters["joins.welcomed"] += 1
            self._outbox.log(
                LogLevel.info,
                "{daemon} is welcomed by {ftm} (epoch {epoch})",
                daemon=self.id,
                ftm=self.fence.ftm,
                epoch=self.fence.epoch,
            )
        self.joined = True
        self.last_heard = now
        self._sweep(now)

    def _redirect(self, ftm: ArmorId) -> None:
        """A newer FTM, C{ftm}: the reports of what older FTMs managed go to it."""
        self.counters["ftm.changes"] += 1
        self._outbox.log(
            LogLevel.info,
            "{daemon}: {ftm} is the FTM from epoch {epoch} on",
            daemon=self.id,
            ftm=ftm,
            epoch=self.fence.epoch,
        )
        for resident in self._residents.values():
            if resident.armor == ftm:
                resident.manager = None
            elif resident.manager is not None and is_ftm(resident.manager):
                resident.manager = ftm

    def _uninstall(
        self, message: Message, uninstall: Uninstall, now: float, *, fenced: bool = False
    ) -> None:
        resident = self._residents.get(uninstall.armor)
        if resident is None:
            # Nothing of it here (any more): done, as far as this node goes.
            reply = self._message(
                UNINSTALLED, message.source, Uninstalled(uninstall.armor, self.node)
            )
            self._route(reply, now)
            return
        # Its manager (or the FTM that took over from it), the ARMOR itself (a fenced
        # FTM), or the current FTM (an old FTM's ARMORs: the old FTM itself, its backup).
        if not (
            fenced
            or message.source == resident.armor
            or message.source in (resident.spec.manager, resident.manager)
        ):
            raise MessageError(f"only the manager of {resident.armor} uninstalls it")
        self._stop(resident, _Ending.UNINSTALLED, "uninstalled", now)

    def _bounced(self, message: Message) -> None:
        """An UNDELIVERABLE came: the location it was sent to is wrong; forget it."""
        self.counters["messages.bounced"] += 1
        try:
            bounce = Undeliverable.from_message(message)
        except MessageError:
            return
        if self._cache.pop(bounce.destination, None) is not None:
            self.counters["cache.dropped"] += 1

    # -- the processes --------------------------------------------------------------------------

    def _current(self, armor: ArmorId, incarnation: int) -> Resident | None:
        resident = self._residents.get(armor)
        if resident is None or resident.incarnation != incarnation:
            return None
        return resident

    def _stop(self, resident: Resident, ending: _Ending, reason: str, now: float) -> None:
        """Have C{resident}'s process end; its end tells its manager as C{ending} says."""
        if resident.state is ResidentState.STOPPING:
            return
        armor, incarnation = resident.armor, resident.incarnation
        resident.state = ResidentState.STOPPING
        resident.since = now
        resident.ending = ending
        resident.reason = reason
        self._cancel_timer((DaemonTimer.START, (armor, incarnation)))
        self._cancel_timer((DaemonTimer.PING, (armor, incarnation)))
        resident.kills = 1
        self._outbox.kill(resident.handle)
        self._start_timer((DaemonTimer.KILL, resident.handle), now + self.policy.kill_grace)

    def _ping(self, what: tuple[ArmorId, int], now: float) -> None:
        resident = self._current(*what)
        if resident is None or resident.state is not ResidentState.RUNNING:
            return
        unanswered = resident.ping_seq - resident.answered
        if unanswered >= self.policy.ping_misses:
            self.counters["armors.hung"] += 1
            silent = unanswered * self.policy.ping_interval
            reason = f"it hung: {unanswered} pings unanswered for {silent:g} s"
            self._stop(resident, _Ending.DEAD, reason, now)
            return
        resident.ping_seq += 1
        self._outbox.send(resident.peer, Ping(resident.ping_seq))
        self._start_timer((DaemonTimer.PING, what), now + self.policy.ping_interval)

    # -- routing --------------------------------------------------------------------------------

    def _message(self, type: str, destination: str, body: object) -> Message:
        return Message.of(type, self.id, destination, next(self._ids), body)

    def _tell(self, type: str, manager: ArmorId | None, body: Body, now: float) -> None:
        """
        Send one of the daemon's reports to an ARMOR's manager (None: nobody); what an
        older FTM managed is reported to the newest one.
        """
        if manager is None:
            return
        if is_ftm(manager) and self.fence.ftm is not None and manager != self.fence.ftm:
            manager = self.fence.ftm
        self._route(self._message(type, manager, body), now)

    def _reply(self, reply: Message, node: str | None, now: float) -> None:
        """Answer a message that came from C{node} (None: from this node) on its way back."""
        if node is None:
            self._route(reply, now)
        else:
            self._to_node(node, reply, now)

    def _route(self, message: Message, now: float, *, looked_up: bool = False) -> None:
        """
        Take C{message} (from a local ARMOR, or this daemon's) where its destination lives.
        """
        destination = message.destination
        if destination == self.id:
            self._own(message, None, now)
            return
        resident = self._residents.get(destination)
        if resident is not None:
            self._deliver(resident, message, now)
            return
        if id_labels(destination)[0] == SPACE_KIND:
            self._space_request(message, now)
            return
        node = _daemon_node(destination)
        if node is None:
            node = self._cache.get(destination)
            if node is not None:
                self._cache.move_to_end(destination)
                self.counters["cache.hits"] += 1
        if node is not None:
            self._to_node(node, message, now)
            return
        if looked_up:  # the table says it lives here, but it does not (any more)
            self.counters["messages.unknown"] += 1
            self._bounce(message, f"{destination} does not live on {self.node}", now)
            return
        self._lookup(message, now)

    def _deliver(self, resident: Resident, message: Message, now: float) -> None:
        state = resident.state
        if state is ResidentState.RUNNING:
            self.counters["messages.delivered"] += 1
            self._outbox.send(resident.peer, message)
        elif state is ResidentState.STOPPING:
            self._bounce(message, f"{resident.armor} is being stopped", now)
        elif len(resident.queue) >= self.policy.queue_limit:
            self._bounce(message, f"too many messages wait for {resident.armor} to start", now)
        else:
            resident.queue.append(message)

    def _lookup(self, message: Message, now: float) -> None:
        destination = message.destination
        queue = self._awaiting.get(destination)
        if queue is None:
            if len(self._awaiting) >= self.policy.max_lookups:
                self._bounce(message, "too many ARMOR table lookups under way", now)
                return
            queue = self._awaiting[destination] = deque()
            self.counters["lookups"] += 1
            self._outbox.send(TABLE, Lookup(destination))
            self._start_timer((DaemonTimer.LOOKUP, destination), now + self.policy.lookup_timeout)
        if len(queue) >= self.policy.queue_limit:
            self._bounce(message, f"too many messages wait to learn where {destination} is", now)
            return
        queue.append(message)

    def _link(self, node: str) -> _Link:
        link = self._links.get(node)
        if link is None:
            link = self._links[node] = _Link(check_label(node, "a node name"))
        return link

    def _to_node(self, node: str, message: Message, now: float) -> None:
        if node == self.node:  # a daemon id of this node that is not this daemon's: none
            self.counters["messages.unknown"] += 1
            self._bounce(message, f"{message.destination} does not live on {self.node}", now)
            return
        link = self._link(node)
        if link.state is LinkState.UP:
            self._forward(node, message)
            return
        if len(link.queue) >= self.policy.queue_limit:
            self._bounce(message, f"too many messages wait for node {node}", now)
            return
        link.queue.append(message)
        if link.state is LinkState.DOWN:
            again = None if link.failed_at is None else link.failed_at + self.policy.redial_delay
            if again is not None and now < again:
                self._start_timer((DaemonTimer.REDIAL, node), again)
            else:
                link.state = LinkState.DIALING
                self._outbox.send(NodePeer(node), Dial())

    def _forward(self, node: str, message: Message) -> None:
        self.counters["messages.forwarded"] += 1
        self._outbox.send(NodePeer(node), message)

    def _bounce(self, message: Message, reason: str, now: float, via: str | None = None) -> None:
        """
        C{message} is dropped for C{reason}: tell its source (by way of node C{via}, or
        routed), unless it is itself a bounce or this daemon's own.
        """
        self.counters["messages.dropped"] += 1
        if message.type == UNDELIVERABLE or message.source == self.id:
            self._outbox.log(
                LogLevel.warn,
                "Dropped a {type} message from {source} for {destination}: {reason}",
                type=message.type,
                source=message.source,
                destination=message.destination,
                reason=reason,
            )
            return
        bounce = Undeliverable(message.destination, message.type, message.id, self.node, reason)
        error = self._message(UNDELIVERABLE, message.source, bounce)
        if via is not None:
            self._to_node(via, error, now)
        else:
            self._route(error, now)

    def _remember(self, armor: ArmorId, node: str) -> None:
        self._cache[armor] = node
        self._cache.move_to_end(armor)
        while len(self._cache) > self.policy.cache_size:
            self._cache.popitem(last=False)

    # -- timers ---------------------------------------------------------------------------------

    def _start_timer(self, key: TimerKey, at: float) -> None:
        self._timers.add(key)
        self._outbox.start_timer(key, at)

    def _cancel_timer(self, key: TimerKey) -> None:
        if key in self._timers:
            self._timers.discard(key)
            self._outbox.cancel_timer(key)
