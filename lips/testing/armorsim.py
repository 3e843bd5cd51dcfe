"""
The ARMOR simulator (C{lips sim --armor}): Chameleon's FTM, Backup FTM, surrogate
managers, common ARMORs and fake tasks, run as the real sans-IO objects in the
simulated world (L{lips.testing.world}), with seeded kills and hangs of any of them.

What is real: every ARMOR (L{FTM}, L{Surrogate}, L{Execution}, L{HeartbeatArmor},
L{InitializationArmor}, the checkpoint service), made by name by an L{ArmorFactory}
from the installs their managers send, every message encoded and decoded on the way
between nodes, the simplex strategy, and each node's daemon: the core lipsd runs,
L{lips.armor.Daemon}, as a world host (L{SimNode}) whose effects are carried out as
lipsd's adapter (L{lips.node.DaemonService}) and the ARMOR processes would:

  - a L{Spawn} is an ARMOR process: it makes its ARMOR with the factory after
    C{SPAWN_DELAY} and says hello with its token (or that it cannot run); a L{Kill}
    is SIGTERM the first time (a stopped process keeps it until it runs again) and
    SIGKILL the second; every end is fed back as C{ended}.  The boot FTM and the
    submitter (C{submit.c1}, on a client node whose daemon does not join) attach
    themselves (C{local_attach}), as C{twistd lips-ftm} and C{lips submit} do;
  - C{LocalPeer}: a message goes to the process, a ping is answered with
    C{local_pong}, both after C{LOCAL_DELAY} and only while it runs (a hung process's
    link keeps them until it runs again: so the core finds hangs by missed pings);
  - C{NodePeer}: a message goes, encoded, over the world's streams to that node's
    daemon (C{peer_message}); a L{Dial} is answered C{peer_up} (on both sides) if that
    node's daemon runs and can be reached, else C{peer_down}; a link is reset (and
    C{peer_down} said) when either end's node dies;
  - C{TABLE}: the location rows (L{ArmorRow}) in the simulated System Tuple Space,
    read (C{Lookup}), replaced (C{Register}: a newer incarnation's row refuses it) and
    taken (C{Unregister}) as lipsd does, answered after C{SPACE_DELAY};
  - C{SpacePeer}: the request is carried out on the space's L{TableSpace} model and
    answered (C{space_answered}) after C{SPACE_DELAY}.

What the daemon is fed while its node is hung waits, in order, until it runs again.
What is modelled:

  - B{The System Tuple Space} and the applications' spaces: L{TableSpace} models, which
    survive everything (the replicated space's own faults are the ring simulator's).
  - B{What an ARMOR process feeds its ARMOR}: an Initialization ARMOR's survey, and an
    Execution ARMOR's tasks: a fake task sums C{i * i + salt} over C{n} steps,
    signalling progress at each and checkpointing every third step when it
    checkpoints; killed, it is restarted by its Execution ARMOR; hung, it stops
    signalling.
  - B{The submitter}: submits the applications to whichever FTM holds the epoch (read
    from the space) until accepted, and takes each result.

Faults (seeded, C{FAULT_GAP} seconds apart, never the FTM while it has no live backup:
that is beyond the fault model): a task killed, hung, or made to crash on its node from
then on (so that its Execution ARMOR escalates); an Execution ARMOR, a surrogate
manager, the FTM or the backup killed or hung; a node killed (it reboots later), hung
(it resumes, its daemon or its ARMORs first, as the seed says), or its daemon crashed
(its ARMORs with it); the FTM deleting an entry of its ARMOR table (the paper's
Byzantine example).

Invariants, after every step: every result the submitter receives is the correct one
and none conflicts with another; no two FTMs act (send commands) in one epoch; no two
acting FTMs hold one epoch; no component is claimed by two live managers.  Once the
faults have stopped and every result is in, within a settling time: every application
reported exactly once, with its correct result; every live component has exactly one
live manager (the FTM's is its backup; a daemon's is the FTM, which holds its node up);
exactly one FTM acts, in the space's epoch; the FTM's ARMOR table in the space is
exactly what runs (id, node, incarnation), every process runs where the daemons'
location table says, and each daemon core's residents are the processes of its node,
each running, its links up the ones that are; every application row is C{reported}.
A superseded incarnation (the location table names a newer one, or none) and an FTM of
an older epoch are not live: they cannot be reached, and their commands are refused.
Any failure raises L{InvariantViolation} naming the seed (C{lips sim --armor --seed N}
replays it).
"""

from __future__ import annotations

import collections
import enum
import functools
import random
from collections.abc import Callable, Iterator
from typing import Any, Final

import attrs

from lips.armor import (
    TABLE,
    UNINSTALL,
    Armor,
    ArmorFactory,
    ArmorId,
    ArmorRow,
    ArmorSpec,
    ArmorType,
    BlockFactory,
    BlockType,
    Daemon,
    DaemonPolicy,
    Dial,
    LinkState,
    LocalPeer,
    Lookup,
    Manager,
    Message,
    MessageError,
    NodePeer,
    Ping,
    Register,
    SpaceCall,
    SpacePeer,
    SubordinateState,
    Unregister,
    armor_template,
    decode,
    encode,
)
from lips.armor.execution import EXEC_FAILED, REPORT_STATUS, Execution, TaskRecovered
from lips.armor.ftm import (
    ENTRY_MISSING,
    EPOCH_TAG,
    FENCED,
    FTM,
    FTM_CHANGED,
    FTM_ERRONEOUS,
    JOB_ACCEPTED,
    JOB_REFUSED,
    JOB_RESULT,
    JOB_RESULT_ACK,
    NODE_DOWN,
    SUBMIT,
    AppRow,
    ArmorEntry,
    EpochFence,
    Fenced,
    JobRef,
    JobRefused,
    JobResult,
    Role,
    Submit,
    Survey,
    current_ftm,
    is_ftm,
)
from lips.armor.initialization import InitializationArmor
from lips.armor.space import SpaceOp, SpaceRequest, TableSpace
from lips.armor.surrogate import Surrogate
from lips.kernel import (
    CancelTimer,
    Deliver,
    Effect,
    Kill,
    Log,
    Outbox,
    Send,
    Spawn,
    StartTimer,
    TimerKey,
)
from lips.strategy import StrategyFactory, StrategyType
from lips.strategy.simplex import PROVIDES
from lips.supervisor import Exit, ProcessSpec
from lips.testing.ringsim import InvariantViolation
from lips.testing.world import Host, Stream, World
from lips.tuples import ANY, make_template, packb, unpackb

__all__ = ["ArmorSimulation", "SimNode", "Submitter", "expected_result"]

#: Seconds a message takes from an ARMOR process to its daemon, or back.
LOCAL_DELAY: Final = 0.0002
#: Seconds an ARMOR process takes to start and connect to its daemon.
SPAWN_DELAY: Final = 0.01
#: Seconds the System Tuple Space takes to answer a daemon (the table, a request).
SPACE_DELAY: Final = 0.002
#: How the daemons watch their ARMORs: pings every half second, three missed and it is
#: hung (so most of the hangs injected are found); joins, rejoins and sweeps as lipsd's
#: defaults.
DAEMON_POLICY: Final = DaemonPolicy(
    ping_interval=0.5,
    ping_misses=3,
    start_timeout=5.0,
    kill_grace=1.0,
    lookup_timeout=2.0,
    redial_delay=0.5,
    join_interval=1.0,
    rejoin_after=3.0,
    sweep_interval=2.0,
)
#: The application code a daemon may install (the fake tasks' target).
ALLOW: Final = ("lips.testing.armorsim:*",)
#: A fake task's step; its livelock timeout.
STEP: Final = 1.0
LIVELOCK: Final = 2.5
#: The FTM's and backup's round, and the misses before a promotion; the heartbeats.
TICK: Final = 1.0
MISSES: Final = 2
#: The submitter's round.
SUBMIT_RETRY: Final = 1.0
#: The faults' spacing (more than the longest hang and its recovery).
FAULT_GAP: Final = 5.0
#: How long after the last result and the last fault the end invariants may take.
SETTLE: Final = 30.0
#: Give up on a run at this virtual time.
HORIZON: Final = 400.0

FAULT_KINDS: Final = (
    "task-kill",
    "task-hang",
    "task-poison",
    "exec-kill",
    "exec-hang",
    "sm-kill",
    "sm-hang",
    "node-kill",
    "node-hang",
    "daemon-kill",
    "ftm-kill",
    "ftm-hang",
    "backup-kill",
    "backup-hang",
    "ftm-byzantine",
)

_CLIENT: Final = "client"
_COUNTED: Final = frozenset(
    {EXEC_FAILED, ENTRY_MISSING, FTM_ERRONEOUS, NODE_DOWN, FTM_CHANGED, UNINSTALL, REPORT_STATUS}
)
_EPOCHS: Final = make_template((EPOCH_TAG, ANY, ANY))
_ROWS: Final = make_template(ArmorEntry.template())
_LOCATIONS: Final = make_template(armor_template())
#: The daemon counters a run adds up in its figures.
_DAEMON_STATS: Final = frozenset(
    {
        "armors.hung",
        "armors.dead",
        "armors.swept",
        "armors.detached",
        "installs.stale",
        "installs.failed",
        "commands.fenced",
        "commands.unfenced",
        "ftm.changes",
        "joins.welcomed",
        "messages.absent",
        "messages.dropped",
        "lookups",
    }
)
_SUBMITTER: Final = "submit.c1"


def expected_result(n: int, salt: int) -> int:
    """What a fake task of C{n} steps and C{salt} returns."""
    return sum(i * i + salt for i in range(n))


def _types() -> tuple[list[ArmorType], list[BlockType]]:
    armors = [
        ArmorType("ftm", "lips.armor.ftm:FTM.from_config", ""),
        ArmorType("surrogate-manager", "lips.armor.surrogate:Surrogate.from_config", ""),
        ArmorType("execution", "lips.armor.execution:Execution.from_config", ""),
        ArmorType("checkpoint", "lips.armor.checkpoint:CheckpointArmor.from_config", ""),
        ArmorType("heartbeat", "lips.armor.heartbeat:HeartbeatArmor.from_config", ""),
        ArmorType(
            "initialization", "lips.armor.initialization:InitializationArmor.from_config", ""
        ),
    ]
    blocks = [
        BlockType("installation", "lips.armor:Installation.from_config", ""),
        BlockType("recovery", "lips.armor:Recovery.from_config", ""),
        BlockType("forward-recovery", "lips.armor:ForwardRecovery.from_config", ""),
        BlockType("execution", "lips.armor.execution:TaskRunner.from_config", ""),
        BlockType("checkpoint", "lips.armor.checkpoint:CheckpointService.from_config", ""),
        BlockType("heartbeat", "lips.armor.heartbeat:HeartbeatMonitor.from_config", ""),
        BlockType("initialization", "lips.armor.initialization:NodeSurvey.from_config", ""),
    ]
    return armors, blocks


#: The closed world of types every simulation uses (no plugin scan).
_ARMOR_TYPES, _BLOCK_TYPES = _types()
BLOCKS: Final = BlockFactory(_BLOCK_TYPES)
ARMORS: Final = ArmorFactory(_ARMOR_TYPES, blocks=BLOCKS)
STRATEGIES: Final = StrategyFactory(
    [StrategyType("simplex", "lips.strategy.simplex:Simplex", "", PROVIDES)]
)


# -- the submitter ------------------------------------------------------------------------------


class _Timer(enum.Enum):
    SUBMIT = "submit"


class Submitter:
    """
    A submitter (what C{lips submit} will be), as a core: submits each job to the FTM
    holding the epoch until it is accepted, takes each result, and acknowledges it.

    Inputs: C{start(now)}, C{receive(message, now)}, C{timer(key, now)}.  Effects:
    L{Send} (to the FTM), L{StartTimer}.

    @ivar results: each application's result, as first received.
    @ivar received: how many results arrived, duplicates included.
    """

    emits: Final = frozenset({Send, StartTimer, CancelTimer})

    def __init__(
        self, jobs: dict[str, dict[str, Any]], find_ftm: Callable[[], ArmorId | None]
    ) -> None:
        self.id = ArmorId(_SUBMITTER)
        self.jobs = jobs
        self.find_ftm = find_ftm
        self.accepted: dict[str, str] = {}
        self.refused: dict[str, str] = {}
        self.results: dict[str, JobResult] = {}
        self.received = 0
        self.submissions = 0
        self.fence = EpochFence()
        self.due: dict[str, float] = {}
        self._ids = iter(range(1, 2**62))
        self._outbox = Outbox(self.emits)
        self.on_result: Callable[[JobResult], None] | None = None

    def drain(self) -> list[Effect]:
        return self._outbox.drain()

    def submit_at(self, name: str, now: float) -> None:
        self.due[name] = now

    def timer(self, key: TimerKey, now: float) -> None:
        for name, at in list(self.due.items()):
            if at <= now and name not in self.accepted and name not in self.refused:
                ftm = self.find_ftm()
                if ftm is not None:
                    self.submissions += 1
                    self._send(SUBMIT, ftm, Submit(name, self.jobs[name]))
                self.due[name] = now + SUBMIT_RETRY
        pending = [
            at for n, at in self.due.items() if n not in self.accepted and n not in self.refused
        ]
        if pending:
            self._outbox.start_timer(_Timer.SUBMIT, max(now + 0.01, min(pending)))

    def receive(self, message: Message, now: float) -> None:
        try:
            inner, _ = self.fence.admit(message)
        except MessageError:
            return
        if inner is None:
            return
        if inner.type == JOB_ACCEPTED:
            self.accepted[inner.value()["name"]] = inner.value()["strategy"]
        elif inner.type == JOB_REFUSED:
            refused = JobRefused.from_message(inner)
            self.refused[refused.name] = refused.reason
        elif inner.type == JOB_RESULT:
            result = JobResult.from_message(inner)
            self.received += 1
            self._send(JOB_RESULT_ACK, inner.source, JobRef(result.name))
            if self.on_result is not None:
                self.on_result(result)
            self.results.setdefault(result.name, result)

    def _send(self, type: str, to: str, body: object) -> None:
        message = Message.of(type, self.id, to, next(self._ids), body)
        self._outbox.send(message.destination, message)


# -- fake tasks ---------------------------------------------------------------------------------


@attrs.define(eq=False)
class FakeTask:
    """A fake task run by an Execution ARMOR (see the module docstring)."""

    sim: ArmorSimulation
    node: SimNode
    hosted: Hosted
    handle: int
    n: int
    salt: int
    checkpoint: bool
    step: int = 0
    acc: int = 0
    state: str = "starting"
    waiting: bool = False

    def start(self) -> None:
        if (self.node.node, self.execution.id) in self.sim.poisoned:
            self.sim.world.after(0.05, lambda: self.end(Exit(code=1)))
            return
        if self.checkpoint:
            self.feed(self.execution.recover, self.handle)
        else:
            self.state = "running"
            self.next()

    @property
    def execution(self) -> Execution:
        armor = self.hosted.armor
        assert isinstance(armor, Execution)
        return armor

    @property
    def alive(self) -> bool:
        return self.state in ("starting", "running", "hung") and self.hosted.alive

    def feed(self, method: Callable[..., Any], *args: Any) -> None:
        if self.hosted.alive:
            self.hosted.host.feed(method, *args)

    def recovered(self, state: bytes | None) -> None:
        if self.state != "starting":
            return
        if state is not None:
            self.step, self.acc = unpackb(state)
            self.sim.stats["checkpoint recoveries"] += 1
        self.state = "running"
        self.next()

    def next(self) -> None:
        self.sim.world.after(STEP, self._step)

    def _step(self) -> None:
        if self.state != "running" or not self.hosted.alive:
            return
        if self.hosted.stopped:
            self.waiting = True
            return
        self.acc += self.step * self.step + self.salt
        self.step += 1
        self.feed(self.execution.progress, self.handle)
        if self.state != "running":
            return
        if self.checkpoint and self.step % 3 == 0 and self.step < self.n:
            self.feed(self.execution.take_checkpoint, self.handle, packb([self.step, self.acc]))
        if self.step >= self.n:
            self.feed(self.execution.result, self.handle, self.acc)
            self.end(Exit(code=0))
            return
        self.next()

    def resume(self) -> None:
        if self.waiting and self.state == "running":
            self.waiting = False
            self.next()

    def end(self, exit: Exit) -> None:
        if self.state == "ended":
            return
        self.state = "ended"
        self.hosted.tasks.pop(self.handle, None)
        self.feed(self.execution.ended, self.handle, exit)


# -- nodes: the real daemon core, and the ARMOR processes it runs ------------------------------


@attrs.define(eq=False)
class Hosted:
    """
    An ARMOR process of a node: its core (an ARMOR, or the submitter), its world host,
    the handle its daemon knows it by, and what the install said.

    @ivar paused: whether it is stopped (SIGSTOP: a hang); its host is paused too while
        its node is.
    @ivar terminating: a SIGTERM waits for it to run again.
    @ivar backlog: what its daemon sent it while it was stopped (its socket's buffer).
    """

    core: Armor | Submitter
    host: Host[Any]
    type: str
    incarnation: int
    node: str
    name: str
    handle: int
    attached: bool = False
    paused: bool = False
    alive: bool = True
    terminating: bool = False
    backlog: list[Message | Ping] = attrs.Factory(list)
    tasks: dict[int, FakeTask] = attrs.Factory(dict)

    @property
    def id(self) -> ArmorId:
        return self.core.id

    @property
    def armor(self) -> Armor:
        """Its ARMOR (every process but the submitter's)."""
        assert isinstance(self.core, Armor)
        return self.core

    @property
    def stopped(self) -> bool:
        """Whether it runs nothing now: hung, or its node is."""
        return self.host.paused


class SimNode:
    """
    One node of the simulation: its daemon, the real core L{lips.armor.Daemon}, as a
    world host whose effects are carried out here (see the module docstring), and the
    ARMOR processes it started or that attached themselves to it.

    What the daemon core is fed while the node is hung waits, in order, until it runs
    again (a stopped process's sockets keep what arrives).
    """

    def __init__(
        self, sim: ArmorSimulation, node: str, boot: int = 1, worker: bool = True
    ) -> None:
        self.sim = sim
        self.world = sim.world
        self.node = node
        self.boot = boot
        self.worker = worker
        self.alive = True
        self.paused = False
        self.catching_up = False
        self.daemon = Daemon(
            node,
            policy=DAEMON_POLICY,
            types=[t.name for t in _ARMOR_TYPES],
            allow=ALLOW,
            rng=random.Random(sim.rng.getrandbits(64)),
            boot=boot,
        )
        self.name = f"{node}/daemon#{boot}"
        self.host: Host[Daemon] = self.world.host(
            self.name,
            self.daemon,
            {Send: self._send, Spawn: self._spawn, Kill: self._kill, Log: lambda h, e: None},
            queue_nested=True,
        )
        self.processes: dict[int, Hosted] = {}
        self.starting: dict[int, ArmorSpec] = {}
        self.streams: dict[str, Stream] = {}
        self.backlog: list[Callable[[], None]] = []
        self._serial = 0

    def __repr__(self) -> str:
        return f"<SimNode {self.node} boot {self.boot}>"

    @property
    def id(self) -> ArmorId:
        return self.daemon.id

    def input(self, method: Callable[..., Any], *args: Any) -> None:
        """Feed the daemon core C{method(*args)}, now or once its node runs again."""
        if not self.alive:
            return
        if self.paused or self.catching_up:
            self.backlog.append(lambda: self.input(method, *args))
            return
        self.host.feed(method, *args)

    def later(self, method: Callable[..., Any], *args: Any, delay: float = LOCAL_DELAY) -> None:
        self.world.after(delay, lambda: self.input(method, *args))

    # -- life -------------------------------------------------------------------------------

    def start(self) -> None:
        """lipsd runs: a worker's daemon joins the FTM (a client's does not)."""
        if self.worker:
            self.input(self.daemon.start)

    def kill(self) -> None:
        """The node (or its daemon) dies: every ARMOR process on it with it."""
        self.alive = False
        self.backlog.clear()
        self.world.remove(self.name)
        for hosted in list(self.processes.values()):
            self._gone(hosted)
        self.starting.clear()
        self.sim.cut(self.node)

    def pause(self) -> None:
        self.paused = True
        self.host.paused = True
        for hosted in self.processes.values():
            hosted.host.paused = True

    def resume(self) -> None:
        """
        The node runs again.  Its daemon and its ARMORs go on in an order the seed picks:
        the daemon first (its timers and what waited for it), or the ARMORs first (a
        zombie acts on what it knew a moment before its daemon catches up: the case
        fencing is for).
        """
        if not self.alive:
            return
        self.paused = False
        if self.sim.rng.random() < 0.5:
            self._catch_up()
            self._wake()
        else:
            self.catching_up = True
            self._wake()
            self.world.after(0.05, self._catch_up)

    def _catch_up(self) -> None:
        if not self.alive or self.paused:
            return
        self.catching_up = False
        self.host.paused = False
        backlog, self.backlog = self.backlog, []
        for event in backlog:
            event()

    def _wake(self) -> None:
        for hosted in list(self.processes.values()):
            if not hosted.paused:
                self._run_again(hosted)

    # -- ARMOR processes --------------------------------------------------------------------

    def host_armor(
        self,
        core: Armor | Submitter,
        kind: str,
        incarnation: int,
        handle: int,
        attached: bool = False,
    ) -> Hosted:
        """Run C{core} as a process of this node, its daemon's C{handle}."""
        self._serial += 1
        name = f"{self.node}/{core.id}#{incarnation}.{self._serial}"
        handlers: dict[type[Effect], Callable[[Host[Any], Any], None]] = {
            Send: lambda h, e: self._out(hosted, e.message),
            Log: lambda h, e: None,
        }
        if isinstance(core, Execution):
            handlers[Spawn] = lambda h, e: self._spawn_task(hosted, e)
            handlers[Kill] = lambda h, e: self._kill_task(hosted, e)
            handlers[Deliver] = lambda h, e: self._deliver_task(hosted, e)
        host = self.world.host(name, core, handlers)
        hosted = Hosted(core, host, kind, incarnation, self.node, name, handle, attached)
        self.processes[handle] = hosted
        if isinstance(core, Armor):
            self.sim.hosted[name] = hosted
            if isinstance(core, Manager):
                self.sim.managers[name] = hosted
        if self.paused:
            host.paused = True
        return hosted

    def attach(self, core: Armor | Submitter, kind: str) -> Hosted:
        """A process that attaches itself (the boot FTM, the submitter): C{local_attach}."""
        handle = self.host.feed(self.daemon.local_attach, core.id, 1, kind)
        assert handle is not None, f"{self.id} refused {core.id} attaching itself"
        hosted = self.host_armor(core, kind, 1, handle, attached=True)
        if isinstance(core, Armor):
            hosted.host.feed(core.start)
        return hosted

    def _spawn(self, host: Host[Daemon], effect: Spawn[ArmorSpec]) -> None:
        """Start an ARMOR process: it makes its ARMOR and says hello with its token."""
        self.starting[effect.handle] = effect.spec
        self.world.after(SPAWN_DELAY, functools.partial(self._started, effect.handle))

    def _started(self, handle: int) -> None:
        spec = self.starting.pop(handle, None)
        if spec is None or not self.alive:
            return  # killed (or its node gone) before it ran
        self.sim.stats["ARMOR processes started"] += 1
        try:
            armor = ARMORS.create(spec.type, spec.armor, spec.manager, spec.config)
        except Exception as e:
            # It connects, says it cannot run (CLOSE with the reason), and exits.
            self.input(self.daemon.local_hello, spec.armor, spec.incarnation, spec.token)
            self.input(self.daemon.local_failed, spec.armor, spec.incarnation, str(e)[:900])
            self.later(self.daemon.ended, handle, Exit(code=1).describe())
            return
        hosted = self.host_armor(armor, spec.type, spec.incarnation, handle)

        def hello() -> None:
            if not hosted.alive:
                return
            daemon = self.daemon
            if not self.host.feed(daemon.local_hello, spec.armor, spec.incarnation, spec.token):
                self.end(hosted, Exit(code=1))  # hung up on: it exits
                return
            self._started_armor(hosted)

        if self.paused or self.catching_up:
            self.backlog.append(hello)
        else:
            hello()

    def _started_armor(self, hosted: Hosted) -> None:
        """It connected: it runs (as its process does once its daemon took its hello)."""
        armor = hosted.armor
        hosted.host.feed(armor.start)
        if isinstance(armor, InitializationArmor):
            node = self.node
            survey = Survey(node, "SimOS 1", "sim64", 2 + len(node) % 3, 1 << 30)
            hosted.host.feed(armor.surveyed, survey)

    def _kill(self, host: Host[Daemon], effect: Kill) -> None:
        """
        The daemon ends a process: SIGTERM the first time (which a stopped process keeps
        until it runs again), SIGKILL the second; hang up on one that attached itself.
        """
        handle = effect.handle
        if self.starting.pop(handle, None) is not None:
            self.later(self.daemon.ended, handle, Exit(signal=15).describe())
            return
        hosted = self.processes.get(handle)
        if hosted is None or not hosted.alive:
            return
        if hosted.attached:
            self.end(hosted, None)
        elif hosted.terminating or not hosted.stopped:
            self.end(hosted, Exit(signal=9 if hosted.terminating else 15))
        else:
            hosted.terminating = True

    def _gone(self, hosted: Hosted) -> None:
        hosted.alive = False
        for task in list(hosted.tasks.values()):
            task.state = "ended"
        hosted.tasks.clear()
        hosted.backlog.clear()
        self.world.remove(hosted.name)
        self.sim.hosted.pop(hosted.name, None)
        self.sim.managers.pop(hosted.name, None)
        self.processes.pop(hosted.handle, None)

    def end(self, hosted: Hosted, exit: Exit | None) -> None:
        """
        Process C{hosted} ends, as C{exit} says (None: the link of one that attached
        itself was closed); its daemon learns of it.
        """
        if not hosted.alive:
            return
        self._gone(hosted)
        how = "its link was closed" if exit is None else exit.describe()
        self.later(self.daemon.ended, hosted.handle, how)

    def pause_armor(self, hosted: Hosted) -> None:
        hosted.paused = True
        hosted.host.paused = True

    def resume_armor(self, hosted: Hosted) -> None:
        if not hosted.alive:
            return
        hosted.paused = False
        if not self.paused:
            self._run_again(hosted)

    def _run_again(self, hosted: Hosted) -> None:
        """A stopped process runs again: a pending SIGTERM ends it, else it reads on."""
        if not hosted.alive:
            return
        hosted.host.paused = False
        if hosted.terminating:
            self.end(hosted, Exit(signal=15))
            return
        backlog, hosted.backlog = hosted.backlog, []
        for item in backlog:
            self._take(hosted, item)
        for task in list(hosted.tasks.values()):
            task.resume()

    def problems(self) -> list[str]:
        """
        Where the daemon core and what runs on this node differ (empty: nowhere): its
        residents are the processes here, each running; its links up are the streams.
        """
        problems = []
        residents = {
            (armor, r.incarnation): r.state.value for armor, r in self.daemon.residents.items()
        }
        running = {(h.id, h.incarnation): "running" for h in self.processes.values()}
        if residents != running:
            problems.append(
                f"{self.id} has residents {sorted(residents.items())}, but runs {sorted(running)}"
            )
        for node in self.sim.nodes:
            up = self.daemon.link_state(node) is LinkState.UP
            stream = self.streams.get(node)
            if up and (stream is None or not stream.open):
                problems.append(f"{self.id} holds its link to {node} up, but it is gone")
        return problems

    # -- the local links --------------------------------------------------------------------

    def _to_process(self, hosted: Hosted, item: Message | Ping) -> None:
        def arrive() -> None:
            if not hosted.alive:
                return
            if hosted.stopped:
                hosted.backlog.append(item)
            else:
                self._take(hosted, item)

        self.world.after(LOCAL_DELAY, arrive)

    def _take(self, hosted: Hosted, item: Message | Ping) -> None:
        """A process reads C{item} from its link: a ping it answers at once."""
        if isinstance(item, Ping):
            self.later(self.daemon.local_pong, hosted.id, hosted.incarnation, item.seq)
        else:
            hosted.host.feed(hosted.core.receive, item)

    def _out(self, hosted: Hosted, message: Message) -> None:
        """A process of this node sends C{message}, over its link to its daemon."""
        if not hosted.alive:
            return
        kind = message.type
        if kind == FENCED and is_ftm(message.source):
            kind = self.sim.acted(message)
        if kind in _COUNTED:
            self.sim.stats[f"{kind} sent"] += 1
        if kind == UNINSTALL and message.value() == {"armor": message.source}:
            self.sim.stats["fenced FTMs"] += 1
        self.later(self.daemon.local_message, hosted.id, hosted.incarnation, message)

    # -- what the daemon core sends ---------------------------------------------------------

    def _send(self, host: Host[Daemon], effect: Send[Any]) -> None:
        to, what = effect.to, effect.message
        if isinstance(to, LocalPeer):
            hosted = self._process(to)
            if hosted is not None:
                self._to_process(hosted, what)
        elif isinstance(to, NodePeer):
            if isinstance(what, Dial):
                self._dial(to.node)
            else:
                stream = self.streams.get(to.node)
                if stream is not None and stream.open:
                    stream.write(encode(what))
        elif to is TABLE:
            self._table(what)
        elif isinstance(to, SpacePeer):
            assert isinstance(what, SpaceCall)
            reply = self.sim.space_of(to.id).apply(what.request)
            self.later(self.daemon.space_answered, what.call, reply, delay=SPACE_DELAY)
        else:
            raise TypeError(f"{self.id} sends to no such peer: {to!r}")

    def _process(self, peer: LocalPeer) -> Hosted | None:
        for hosted in self.processes.values():
            if hosted.id == peer.armor and hosted.incarnation == peer.incarnation:
                return hosted
        return None

    def _table(self, what: object) -> None:
        """The ARMOR table, as lipsd keeps it in the System Tuple Space (one request each)."""
        space = self.sim.space
        if isinstance(what, Lookup):
            found = space.matching(make_template(armor_template(what.armor)))
            node = ArmorRow.from_tuple(found[0]).node if found else None
            self.later(self.daemon.located, what.armor, node, delay=SPACE_DELAY)
        elif isinstance(what, Register):
            row = what.row
            rows = space.matching(make_template(armor_template(row.armor)))
            newer = [r for r in rows if r[5] > row.incarnation]
            ok, reason = not newer, ""
            if ok:
                ops = [SpaceOp.template("inp", *r) for r in rows]
                space.apply(SpaceRequest(1, (*ops, SpaceOp.out(*row.as_tuple()))))
            else:
                reason = f"incarnation {max(r[5] for r in newer)} runs"
            self.later(
                self.daemon.registered, row.armor, row.incarnation, ok, reason, delay=SPACE_DELAY
            )
        elif isinstance(what, Unregister):
            space.apply(SpaceRequest(1, (SpaceOp.template("inp", *what.row.as_tuple()),)))
        else:
            raise TypeError(f"not for the ARMOR table: {what!r}")

    # -- the daemon links -------------------------------------------------------------------

    def _dial(self, node: str) -> None:
        def answer() -> None:
            if not self.alive:
                return
            peer = self.sim.nodes.get(node)
            if peer is None or not peer.alive or not self.world.streams.reachable(self.node, node):
                self.input(self.daemon.peer_down, node, "connection refused")
                return
            stream = self.streams.get(node)
            if stream is None or not stream.open:
                self.sim.connect(self, peer)
            self.input(self.daemon.peer_up, node)

        self.world.after(2 * self.world.streams.delay(), answer)

    def frame(self, node: str, data: bytes) -> None:
        """Bytes from the daemon of C{node}."""
        self.input(self.daemon.peer_message, node, decode(data))

    def link_closed(self, node: str, stream: Stream, why: str) -> None:
        if self.streams.get(node) is stream:
            del self.streams[node]
            self.input(self.daemon.peer_down, node, why)

    # -- tasks ------------------------------------------------------------------------------

    def _spawn_task(self, hosted: Hosted, effect: Spawn[ProcessSpec]) -> None:
        armor = hosted.armor
        assert isinstance(armor, Execution)
        n, salt = unpackb(effect.spec.args)
        task = FakeTask(self.sim, self, hosted, effect.handle, n, salt, armor.checkpointing)
        hosted.tasks[effect.handle] = task
        self.sim.stats["task starts"] += 1
        self.world.after(0.001, task.start)

    def _kill_task(self, hosted: Hosted, effect: Kill) -> None:
        task = hosted.tasks.get(effect.handle)
        if task is not None:
            self.world.after(0.001, lambda: task.end(Exit(signal=15)))

    def _deliver_task(self, hosted: Hosted, effect: Deliver[Any]) -> None:
        item = effect.item
        if isinstance(item, TaskRecovered):
            task = hosted.tasks.get(item.handle)
            if task is not None:
                state = item.state
                self.world.after(0.001, lambda: task.recovered(state))


# -- the simulation -----------------------------------------------------------------------------


@attrs.frozen
class Fault:
    at: float
    kind: str


class ArmorSimulation:
    """
    One seeded run (see the module docstring).

    @param nodes: how many worker nodes.
    @param apps: how many applications (None: 1 to 3, seeded).
    @param faults: how many faults (None: 0 to 4, seeded).
    @param kinds: the fault kinds to draw from.
    """

    def __init__(
        self,
        seed: int,
        nodes: int = 4,
        apps: int | None = None,
        faults: int | None = None,
        kinds: tuple[str, ...] = FAULT_KINDS,
    ) -> None:
        self.seed = seed
        self.world = World(seed)
        self.rng = self.world.rng
        self.space = TableSpace()
        self.app_spaces: dict[str, TableSpace] = {}
        self.hosted: dict[str, Hosted] = {}
        self.nodes: dict[str, SimNode] = {}
        #: Every node's daemon that ever ran, in the order they booted.
        self.booted: list[SimNode] = []
        self.boots: collections.Counter[str] = collections.Counter()
        self.stats: collections.Counter[str] = collections.Counter()
        self.acts: dict[int, set[ArmorId]] = {}
        self.node_names = [f"n{i + 1}" for i in range(nodes)]
        self.managers: dict[str, Hosted] = {}
        self._epoch: tuple[int, tuple[int, ArmorId] | None] = (-1, None)
        self._rows: tuple[int, dict[ArmorId, tuple[str, int]]] = (-1, {})
        self._located: tuple[int, dict[ArmorId, tuple[str, int]]] = (-1, {})
        rng = self.rng
        count = rng.randint(1, 3) if apps is None else apps
        self.jobs: dict[str, dict[str, Any]] = {}
        self.expected: dict[str, dict[str, int]] = {}
        for a in range(count):
            tasks = []
            expect = {}
            for t in range(rng.randint(1, 3)):
                n, salt = rng.randint(2, 12), rng.randrange(100)
                checkpoint = rng.random() < 0.5
                tasks.append(
                    {
                        "name": f"t{t + 1}",
                        "target": "lips.testing.armorsim:expected_result",
                        "args": [n, salt],
                        "timeout": LIVELOCK,
                        "restarts": 2,
                        "checkpoint": checkpoint,
                    }
                )
                expect[f"t{t + 1}"] = expected_result(n, salt)
            name = f"job{a + 1}"
            self.jobs[name] = {"tasks": tasks}
            self.expected[name] = expect
        self.n_faults = rng.randint(0, 4) if faults is None else faults
        self.kinds = kinds
        self.plan: list[Fault] = []
        at = 0.5
        for _ in range(self.n_faults):
            at += rng.uniform(0.5, 2.5)
            self.plan.append(Fault(at, rng.choice(kinds)))
            at += FAULT_GAP
        self.faults_end = at
        self.injected: collections.Counter[str] = collections.Counter()
        self.poisoned: set[tuple[str, ArmorId]] = set()
        self.poisoned_tasks: set[ArmorId] = set()
        self.submitter = Submitter(self.jobs, self.current_ftm)
        self.submitter.on_result = self._result
        self.steps = 0
        self.settled_at: float | None = None

    # -- what the daemons share -------------------------------------------------------------

    def _holder(self) -> tuple[int, ArmorId] | None:
        version, found = self._epoch
        if version != self.space.version:
            found = current_ftm(self.space.matching(_EPOCHS))
            self._epoch = (self.space.version, found)
        return found

    def current_ftm(self) -> ArmorId | None:
        found = self._holder()
        return None if found is None else found[1]

    def current_epoch(self) -> int:
        found = self._holder()
        return 0 if found is None else found[0]

    def rows(self) -> dict[ArmorId, tuple[str, int]]:
        """The ARMOR table: where each ARMOR is, as which incarnation."""
        version, rows = self._rows
        if version != self.space.version:
            rows = {t[1]: (t[4], t[5]) for t in self.space.matching(_ROWS)}
            self._rows = (self.space.version, rows)
        return rows

    def locations(self) -> dict[ArmorId, tuple[str, int]]:
        """
        The daemons' ARMOR table (the location rows): where each ARMOR runs, as which
        incarnation.  The incarnation it names is the current one; an older one still
        running somewhere is superseded.
        """
        version, rows = self._located
        if version != self.space.version:
            rows = {t[1]: (t[4], t[5]) for t in self.space.matching(_LOCATIONS)}
            self._located = (self.space.version, rows)
        return rows

    def space_of(self, destination: str) -> TableSpace:
        name = destination.split(".", 1)[1]
        if name == "system":
            return self.space
        return self.app_spaces.setdefault(name, TableSpace())

    def connect(self, a: SimNode, b: SimNode) -> None:
        """A daemon link from C{a} to C{b}: up on both sides (C{b} accepted it)."""
        ab, ba = self.world.streams.connect(a.node, b.node)
        ab.receive = functools.partial(b.frame, a.node)
        ba.receive = functools.partial(a.frame, b.node)
        ab.closed = functools.partial(a.link_closed, b.node, ab)
        ba.closed = functools.partial(b.link_closed, a.node, ba)
        for side, peer, stream in ((a, b.node, ab), (b, a.node, ba)):
            old = side.streams.get(peer)
            side.streams[peer] = stream
            if old is not None:
                old.cut("replaced")
        b.input(b.daemon.peer_up, a.node)

    def cut(self, node: str) -> None:
        """C{node} is gone: every daemon link to it is reset."""
        gone = self.nodes.get(node)
        if gone is not None:
            for stream in list(gone.streams.values()):
                stream.cut("node down")
            gone.streams.clear()
        for other in self.nodes.values():
            link = other.streams.get(node)
            if link is not None:
                link.cut("peer down")

    def acted(self, message: Message) -> str:
        """An FTM sent a command: no two FTMs act in one epoch.  Its type."""
        fenced = Fenced.from_message(message)
        actors = self.acts.setdefault(fenced.epoch, set())
        actors.add(message.source)
        if len(actors) > 1:
            self._fail(f"two FTMs acted in epoch {fenced.epoch}: {sorted(actors)}")
        return fenced.type

    # -- running ----------------------------------------------------------------------------

    def run(self) -> ArmorSimulation:
        world = self.world
        for node in self.node_names:
            self._boot(node)
        client = self._boot(_CLIENT, worker=False)
        submitter_host = client.attach(self.submitter, "submitter").host
        boot_ftm = FTM(
            "ftm",
            None,
            role="primary",
            node=self.node_names[0],
            epoch=0,
            tick=TICK,
            misses=MISSES,
            verify=3.0,
            heartbeat={"interval": TICK, "misses": MISSES},
            surrogate={"retry": TICK, "verify": 3.0, "linger": 3.0},
            strategies=STRATEGIES,
            blocks=BLOCKS,
        )
        # The boot FTM attaches itself to its node's daemon, as twistd lips-ftm does.
        self.nodes[self.node_names[0]].attach(boot_ftm, "ftm")
        for i, name in enumerate(self.jobs):
            at = 0.5 + i * self.rng.uniform(0.5, 5.0)
            self.submitter.submit_at(name, at)
        world.plan(0.5, lambda: submitter_host.feed(self.submitter.timer, _Timer.SUBMIT))
        for fault in self.plan:
            world.plan(fault.at, functools.partial(self._inject, fault.kind))
        world.check(self._check)
        done_at: float | None = None
        while world.now < HORIZON:
            world.run(until=world.now + 0.5)
            complete = len(self.submitter.results) == len(self.jobs)
            if complete and world.now >= self.faults_end:
                if done_at is None:
                    done_at = world.now
                problems = self.end_problems()
                if not problems:
                    self.settled_at = world.now
                    break
                if world.now - done_at > SETTLE:
                    self._fail("did not settle: " + "; ".join(problems[:4]))
        else:
            missing = sorted(set(self.jobs) - set(self.submitter.results))
            self._fail(f"no result for {missing} by {HORIZON:g} s")
        self.steps = world.steps
        for booted in self.booted:
            for key, value in booted.daemon.counters.items():
                if value and key in _DAEMON_STATS:
                    self.stats[f"daemons: {key}"] += value
        return self

    def _reboot(self, node: str) -> None:
        self._boot(node)

    def _boot(self, node: str, worker: bool = True) -> SimNode:
        self.boots[node] += 1
        booted = SimNode(self, node, self.boots[node], worker)
        self.nodes[node] = booted
        self.booted.append(booted)
        booted.start()
        return booted

    def _result(self, result: JobResult) -> None:
        expected = self.expected.get(result.name)
        if expected is None:
            self._fail(f"a result for an unknown application {result.name}")
        if not result.ok:
            self._fail(f"{result.name} failed: {result.reason}")
        if result.result != expected:
            self._fail(f"{result.name}'s result is {result.result}, not {expected}")
        first = self.submitter.results.get(result.name)
        if first is not None:
            self.stats["duplicate results received"] += 1
            if first != result:
                self._fail(f"two different results for {result.name}: {first} and {result}")

    # -- faults -----------------------------------------------------------------------------

    def _live(self, predicate: Callable[[Hosted], bool]) -> list[Hosted]:
        return [
            h
            for h in self.hosted.values()
            if h.alive and not h.stopped and predicate(h) and not self.nodes[h.node].paused
        ]

    def _primary(self) -> Hosted | None:
        ftm = self.current_ftm()
        for h in self.hosted.values():
            if h.alive and h.armor.id == ftm:
                return h
        return None

    def _backup_ready(self) -> bool:
        """Whether the FTM has a live backup (the FTM may fail only then: the fault model)."""
        ftm = self.current_ftm()
        return any(
            isinstance(h.armor, FTM) and h.armor.role is Role.BACKUP and h.armor.primary == ftm
            for h in self._live(lambda h: True)
        )

    def _inject(self, kind: str) -> None:
        rng = self.rng
        world = self.world
        target: Hosted | None = None
        if kind in ("task-kill", "task-hang", "task-poison"):
            tasks = [
                t
                for h in self._live(lambda h: isinstance(h.armor, Execution))
                for t in h.tasks.values()
                if t.state == "running"
                and not (kind == "task-poison" and t.execution.id in self.poisoned_tasks)
            ]
            if not tasks:
                return
            task = rng.choice(tasks)
            self.injected[kind] += 1
            if kind == "task-kill":
                task.end(Exit(signal=9))
            elif kind == "task-hang":
                task.state = "hung"
            else:
                # The task crashes on this node from now on: local restarts cannot help.
                self.poisoned.add((task.node.node, task.execution.id))
                self.poisoned_tasks.add(task.execution.id)
                task.end(Exit(code=1))
            return
        elif kind in ("exec-kill", "exec-hang", "sm-kill", "sm-hang"):
            cls = Execution if kind.startswith("exec") else Surrogate
            choices = self._live(lambda h: isinstance(h.armor, cls))
            if not choices:
                return
            target = rng.choice(choices)
        elif kind in ("ftm-kill", "ftm-hang", "ftm-byzantine"):
            target = self._primary()
            if target is None or target.paused or not self._backup_ready():
                return
            if kind == "ftm-byzantine":
                ftm = target.armor
                assert isinstance(ftm, FTM)
                rows = [r for r in ftm.armors.values() if r.type == "execution"]
                if not rows:
                    return
                del ftm.armors[rng.choice(rows).armor]
                self.injected[kind] += 1
                return
        elif kind in ("backup-kill", "backup-hang"):
            choices = self._live(
                lambda h: isinstance(h.armor, FTM) and h.armor.role is Role.BACKUP
            )
            if not choices:
                return
            target = choices[0]
        elif kind in ("node-kill", "node-hang", "daemon-kill"):
            up = [d for d in self.nodes.values() if d.worker and d.alive and not d.paused]
            primary = self._primary()
            if primary is not None and not self._backup_ready():
                up = [d for d in up if d.node != primary.node]
            if len(up) < 3:
                return
            daemon = rng.choice(up)
            if kind == "node-hang":
                daemon.pause()
                world.after(rng.uniform(0.5, 3.5), daemon.resume)
            else:
                daemon.kill()
                delay = rng.uniform(2.0, 5.0) if kind == "node-kill" else rng.uniform(0.3, 1.0)
                world.after(delay, functools.partial(self._reboot, daemon.node))
            self.injected[kind] += 1
            return
        if target is None:
            return
        self.injected[kind] += 1
        daemon = self.nodes[target.node]
        if kind.endswith("-kill"):
            daemon.end(target, Exit(signal=9))
        else:
            daemon.pause_armor(target)
            hosted = target
            world.after(rng.uniform(0.5, 3.5), lambda: daemon.resume_armor(hosted))

    # -- invariants -------------------------------------------------------------------------

    def _fail(self, what: str) -> None:
        raise InvariantViolation(
            f"ARMOR simulation, seed {self.seed} (lips sim --armor --seed {self.seed}),"
            f" t={self.world.now:.3f}: {what}"
        )

    def live_armors(self) -> Iterator[Hosted]:
        """
        The ARMORs that run and are current: not stopped, the incarnation the location
        table names.
        """
        located = self.locations()
        for h in self.hosted.values():
            if h.alive and not h.stopped and located.get(h.armor.id) == (h.node, h.incarnation):
                yield h

    def _acting(self, h: Hosted, epoch: int) -> bool:
        armor = h.armor
        if isinstance(armor, FTM):
            return armor.role is Role.PRIMARY and armor.epoch == epoch
        return isinstance(armor, Manager)

    def _check(self) -> None:
        epoch = self.current_epoch()
        claims: dict[ArmorId, ArmorId] = {}
        primaries: dict[int, ArmorId] = {}
        located = self.locations()
        for h in self.managers.values():
            if h.stopped or located.get(h.armor.id) != (h.node, h.incarnation):
                continue
            armor = h.armor
            if isinstance(armor, FTM) and armor.role is Role.PRIMARY:
                other = primaries.setdefault(armor.epoch, armor.id)
                if other != armor.id:
                    self._fail(
                        f"{other} and {armor.id} both act as the FTM of epoch {armor.epoch}"
                    )
            if not isinstance(armor, Manager) or not self._acting(h, epoch):
                continue
            for id, record in armor.subordinates.items():
                if record.state not in (SubordinateState.INSTALLING, SubordinateState.RUNNING):
                    continue
                other_manager = claims.setdefault(id, armor.id)
                if other_manager != armor.id:
                    self._fail(f"{id} has two live managers: {other_manager} and {armor.id}")

    def end_problems(self) -> list[str]:
        """What keeps the end invariants from holding now (empty: they hold)."""
        problems: list[str] = []
        epoch = self.current_epoch()
        ftm = self.current_ftm()
        live = list(self.live_armors())
        primaries = [h for h in live if isinstance(h.armor, FTM) and h.armor.role is Role.PRIMARY]
        if [h.armor.id for h in primaries] != [ftm]:
            problems.append(f"acting FTMs {[h.armor.id for h in primaries]}, epoch holder {ftm}")
            return problems
        primary = primaries[0].armor
        assert isinstance(primary, FTM)
        if primary.epoch != epoch:
            problems.append(f"the FTM acts in epoch {primary.epoch}, the space's is {epoch}")
        # Every live component has exactly one live manager.
        managers: dict[ArmorId, list[ArmorId]] = collections.defaultdict(list)
        for h in live:
            armor = h.armor
            if isinstance(armor, Manager) and self._acting(h, epoch):
                for id, record in armor.subordinates.items():
                    if record.state is SubordinateState.RUNNING:
                        managers[id].append(armor.id)
        for h in live:
            armor = h.armor
            if armor.id == ftm:
                backups = [
                    b.armor.id
                    for b in live
                    if isinstance(b.armor, FTM)
                    and b.armor.role is Role.BACKUP
                    and b.armor.primary == ftm
                ]
                if len(backups) != 1:
                    problems.append(f"the FTM has backups {backups}")
                continue
            if managers.get(armor.id, []) != [armor.manager]:
                problems.append(
                    f"{armor.id} has live managers {managers.get(armor.id, [])}"
                    f" (it answers to {armor.manager})"
                )
        for node, daemon in self.nodes.items():
            if daemon.worker and daemon.alive and not daemon.paused:
                host = primary.hosts.get(node)
                if host is None or not host.up or host.boot != daemon.boot:
                    problems.append(f"the FTM does not hold {node} (boot {daemon.boot}) up")
            if daemon.alive and not daemon.paused:
                problems += daemon.problems()
        # The ARMOR table is what runs.
        rows = {(t[1], t[4], t[5]) for t in self.space.scan(*ArmorEntry.template())}
        running = {(h.armor.id, h.node, h.incarnation) for h in self.hosted.values() if h.alive}
        if rows != running:
            problems.append(
                f"the ARMOR table is not what runs: only in the table {sorted(rows - running)},"
                f" only running {sorted(running - rows)}"
            )
        # ... and every process runs as the daemons' location table says.
        located = self.locations()
        unlocated = sorted(r for r in running if located.get(r[0]) != r[1:])
        if unlocated:
            problems.append(f"running, but not where the location table says: {unlocated}")
        for t in self.space.scan(*AppRow.template()):
            app = AppRow.from_tuple(t)
            if app.state.value != "reported":
                problems.append(f"{app.name} is {app.state.value}")
        for name in self.jobs:
            if name not in self.submitter.results:
                problems.append(f"no result for {name}")
        return problems

    # -- what it found ----------------------------------------------------------------------

    def summary(self) -> list[str]:
        epoch = self.current_epoch()
        lines = [
            f"{len(self.jobs)} applications, {sum(len(j['tasks']) for j in self.jobs.values())}"
            f" tasks; faults: {dict(self.injected) or 'none'}",
            f"settled at {self.settled_at or self.world.now:.2f} s (virtual), epoch {epoch},"
            f" {self.submitter.received} results received for {len(self.submitter.results)}"
            " applications",
        ]
        for key, value in sorted(self.stats.items()):
            lines.append(f"  {key}: {value}")
        return lines
