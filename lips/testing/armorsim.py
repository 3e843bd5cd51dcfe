"""
The ARMOR simulator (C{lips sim --armor}): Chameleon's FTM, Backup FTM, surrogate
managers, common ARMORs and fake tasks, run as the real sans-IO objects in the
simulated world (L{lips.testing.world}), with seeded kills and hangs of any of them.

What is real: every ARMOR (L{FTM}, L{Surrogate}, L{Execution}, L{HeartbeatArmor},
L{InitializationArmor}, the checkpoint service), made by name by an L{ArmorFactory}
from the installs their managers send, every message encoded and decoded on the way
between nodes, the simplex strategy.  What is modelled:

  - B{Daemons} (L{SimDaemon}, one per node; small, and kept here so that the real
    daemon core can replace it): they route ARMOR messages, locally or over the world's
    streams to the destination's node (found in the directory of where each ARMOR was
    last installed: the simulator's rendering of the ARMOR table lookup); install and
    uninstall ARMORs as world hosts; report an ARMOR's death to its manager
    (C{armor-dead}), a hung one after C{HANG_MISSES} missed pings (and kill it); answer
    heartbeats; join the FTM (again after long silence); take FTM commands only in the
    FTM's current epoch; answer C{space.*} from the tuple-space models; and sweep their
    ARMORs against the FTM's ARMOR table (one the table places elsewhere, or no longer
    holds, is a superseded incarnation, and is stopped), and refuse an install the
    table does not place here (a stale one).
  - B{The System Tuple Space} and the applications' spaces: L{TableSpace} models, which
    survive everything (the replicated space's own faults are the ring simulator's).
  - B{Tasks}: a fake task sums C{i * i + salt} over C{n} steps, signalling progress at
    each and checkpointing every third step when it checkpoints; killed, it is
    restarted by its Execution ARMOR; hung, it stops signalling.
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
exactly what runs (id, node, incarnation); every application row is C{reported}.  A
superseded incarnation (the directory names a newer one) and an FTM of an older epoch
are not live: they cannot be reached, and their commands are refused.  Any failure
raises L{InvariantViolation} naming the seed (C{lips sim --armor --seed N} replays it).
"""

from __future__ import annotations

import collections
import enum
import functools
from collections.abc import Callable, Iterator
from typing import Any, Final

import attrs

from lips.armor import (
    ARMOR_DEAD,
    INSTALL,
    INSTALL_FAILED,
    INSTALLED,
    UNINSTALL,
    UNINSTALLED,
    Armor,
    ArmorDead,
    ArmorFactory,
    ArmorId,
    ArmorType,
    BlockFactory,
    BlockType,
    Install,
    Installed,
    InstallFailed,
    Manager,
    Message,
    MessageError,
    SubordinateState,
    Uninstall,
    Uninstalled,
    daemon_id,
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
    HEARTBEAT,
    HEARTBEAT_ACK,
    JOB_ACCEPTED,
    JOB_REFUSED,
    JOB_RESULT,
    JOB_RESULT_ACK,
    JOIN,
    NODE_DOWN,
    SUBMIT,
    WELCOME,
    AppRow,
    ArmorEntry,
    EpochFence,
    Fenced,
    Heartbeat,
    HeartbeatAck,
    JobRef,
    JobRefused,
    JobResult,
    Join,
    Role,
    Submit,
    Survey,
    Welcome,
    current_ftm,
    is_ftm,
)
from lips.armor.initialization import InitializationArmor
from lips.armor.space import SPACE_KIND, SPACE_REPLY, SpaceRequest, TableSpace
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

__all__ = ["ArmorSimulation", "SimDaemon", "Submitter", "expected_result"]

#: Seconds a message takes from an ARMOR to its daemon and back.
LOCAL_DELAY: Final = 0.0002
#: The daemons' round: hang checks, joins, sweeps.
DAEMON_TICK: Final = 1.0
#: Missed pings (rounds) before a daemon kills a hung ARMOR.
HANG_MISSES: Final = 3
#: Seconds without a heartbeat before a daemon joins again.
REJOIN_AFTER: Final = 3.0
#: Rounds between sweeps against the ARMOR table.
SWEEP_EVERY: Final = 2
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
_SUBMITTER: Final = "submitter.c1"


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
    daemon: SimDaemon
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
        if (self.daemon.node, self.execution.id) in self.sim.poisoned:
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
        if self.hosted.paused or self.daemon.paused:
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


# -- daemons ------------------------------------------------------------------------------------


@attrs.define(eq=False)
class Hosted:
    """An ARMOR a daemon runs: its core, its world host, what the install said."""

    armor: Armor
    host: Host[Any]
    type: str
    manager: ArmorId | None
    incarnation: int
    node: str
    name: str
    paused: bool = False
    alive: bool = True
    misses: int = 0
    backlog: list[Message] = attrs.Factory(list)
    tasks: dict[int, FakeTask] = attrs.Factory(dict)


class SimDaemon:
    """
    The simulator's daemon of one node (see the module docstring): not a kernel core,
    a model driven by the world's agenda.
    """

    def __init__(
        self, sim: ArmorSimulation, node: str, boot: int = 1, worker: bool = True
    ) -> None:
        self.sim = sim
        self.world = sim.world
        self.node = node
        self.id = daemon_id(node)
        self.boot = boot
        self.worker = worker
        self.alive = True
        self.paused = False
        self.joined = not worker
        self.fence = EpochFence()
        self.armors: dict[ArmorId, Hosted] = {}
        self.streams: dict[str, Stream] = {}
        self.backlog: list[Callable[[], None]] = []
        self.last_heartbeat = self.world.now
        self.refused = 0
        self.client: tuple[ArmorId, Host[Any]] | None = None
        self.catching_up = False
        self._gen = 0
        self._round = 0
        self._ids = iter(range(1, 2**62))
        self._serial = 0

    def __repr__(self) -> str:
        return f"<SimDaemon {self.node} boot {self.boot}>"

    # -- life -------------------------------------------------------------------------------

    def start(self) -> None:
        self._gen += 1
        self._schedule(0.01)

    def _schedule(self, delay: float) -> None:
        gen = self._gen
        self.world.after(delay, lambda: self._tick(gen))

    def _tick(self, gen: int) -> None:
        if gen != self._gen or not self.alive or self.paused:
            return
        self._round += 1
        for hosted in list(self.armors.values()):
            if hosted.paused:
                hosted.misses += 1
                if hosted.misses >= HANG_MISSES:
                    self.sim.stats["hung ARMORs killed"] += 1
                    self.crash_armor(hosted, "it hung: killed by its daemon")
        if self.worker:
            silent = self.world.now - self.last_heartbeat >= REJOIN_AFTER
            if not self.joined or silent:
                self._join()
            if self._round % SWEEP_EVERY == 0:
                self.sweep()
        self._schedule(DAEMON_TICK)

    def _join(self) -> None:
        ftm = self.sim.current_ftm()
        if ftm is not None:
            self.send(Message.of(JOIN, self.id, ftm, next(self._ids), Join(self.node, self.boot)))

    def kill(self) -> None:
        """The node (or its daemon) dies: every ARMOR on it with it."""
        self.alive = False
        self._gen += 1
        for hosted in list(self.armors.values()):
            self._remove(hosted)
        for stream in self.streams.values():
            stream.cut("node down")
        self.streams.clear()
        self.sim.cut(self.node)

    def pause(self) -> None:
        self.paused = True
        self._gen += 1
        for hosted in self.armors.values():
            hosted.host.paused = True

    def resume(self) -> None:
        """
        The node runs again.  Its daemon and its ARMORs go on in an order the seed picks:
        the daemon first (it sweeps, then hands on what waited for it), or the ARMORs
        first (a zombie acts on what it knew a moment before its daemon catches up: the
        case fencing is for).
        """
        if not self.alive:
            return
        self.paused = False
        self.start()
        for hosted in self.armors.values():
            hosted.misses = 0
        if self.sim.rng.random() < 0.5:
            self._catch_up()
            self._wake()
        else:
            self.catching_up = True
            self._wake()
            self.world.after(0.05, self._catch_up)

    def _catch_up(self) -> None:
        if not self.alive:
            return
        self.catching_up = False
        self.sweep()
        backlog, self.backlog = self.backlog, []
        for event in backlog:
            event()

    def _wake(self) -> None:
        for hosted in list(self.armors.values()):
            if not hosted.paused and hosted.alive:
                hosted.host.paused = False
                self._flush(hosted)
                for task in list(hosted.tasks.values()):
                    task.resume()

    def pause_armor(self, hosted: Hosted) -> None:
        hosted.paused = True
        hosted.host.paused = True

    def resume_armor(self, hosted: Hosted) -> None:
        if not hosted.alive:
            return
        hosted.paused = False
        hosted.misses = 0
        if not self.paused:
            hosted.host.paused = False
            self._flush(hosted)
            for task in list(hosted.tasks.values()):
                task.resume()

    def _flush(self, hosted: Hosted) -> None:
        backlog, hosted.backlog = hosted.backlog, []
        for message in backlog:
            self._feed(hosted, message)

    # -- ARMORs -----------------------------------------------------------------------------

    def install(self, install: Install, now: float) -> None:
        if self.sim.rows().get(install.armor) != (self.node, install.incarnation):
            # A stale request (the table places that ARMOR elsewhere now, or gone).
            self.sim.stats["stale installs refused"] += 1
            self.report(
                install.manager,
                INSTALL_FAILED,
                InstallFailed(install.armor, self.node, install.incarnation, "not in the table"),
            )
            return
        old = self.armors.get(install.armor)
        if old is not None:
            self._remove(old)
        try:
            armor = ARMORS.create(install.type, install.armor, install.manager, install.config)
        except Exception as e:
            self.report(
                install.manager,
                INSTALL_FAILED,
                InstallFailed(install.armor, self.node, install.incarnation, str(e)[:900]),
            )
            return
        self.host_armor(armor, install.type, install.manager, install.incarnation)
        self.report(
            install.manager, INSTALLED, Installed(install.armor, self.node, install.incarnation)
        )

    def host_armor(
        self, armor: Armor, kind: str, manager: ArmorId | None, incarnation: int
    ) -> Hosted:
        self._serial += 1
        name = f"{self.node}/{armor.id}#{incarnation}.{self._serial}"
        handlers: dict[type[Effect], Callable[[Host[Any], Any], None]] = {
            Send: lambda h, e: self._out(hosted, e.message),
            Log: lambda h, e: None,
        }
        if isinstance(armor, Execution):
            handlers[Spawn] = lambda h, e: self._spawn(hosted, e)
            handlers[Kill] = lambda h, e: self._kill_task(hosted, e)
            handlers[Deliver] = lambda h, e: self._deliver_task(hosted, e)
        host = self.world.host(name, armor, handlers)
        hosted = Hosted(armor, host, kind, manager, incarnation, self.node, name)
        self.armors[armor.id] = hosted
        known = self.sim.directory.get(armor.id)
        if known is None or known[1] <= incarnation:
            self.sim.directory[armor.id] = (self.node, incarnation)
        self.sim.hosted[name] = hosted
        if isinstance(armor, Manager):
            self.sim.managers[name] = hosted
        if self.paused:
            host.paused = True
        host.feed(armor.start)
        if isinstance(armor, InitializationArmor):
            survey = Survey(self.node, "SimOS 1", "sim64", 2 + len(self.node) % 3, 1 << 30)
            host.feed(armor.surveyed, survey)
        return hosted

    def _remove(self, hosted: Hosted) -> None:
        hosted.alive = False
        for task in list(hosted.tasks.values()):
            task.state = "ended"
        hosted.tasks.clear()
        self.world.remove(hosted.name)
        self.sim.hosted.pop(hosted.name, None)
        self.sim.managers.pop(hosted.name, None)
        if self.armors.get(hosted.armor.id) is hosted:
            del self.armors[hosted.armor.id]
        if self.sim.directory.get(hosted.armor.id) == (self.node, hosted.incarnation):
            del self.sim.directory[hosted.armor.id]

    def crash_armor(self, hosted: Hosted, reason: str) -> None:
        """An ARMOR died (or hung and was killed): its manager is told."""
        self._remove(hosted)
        if hosted.manager is not None:
            self.report(
                hosted.manager,
                ARMOR_DEAD,
                ArmorDead(hosted.armor.id, self.node, hosted.incarnation, reason),
            )

    def sweep(self) -> None:
        """Stop every ARMOR the ARMOR table does not place here, as this incarnation."""
        if not self.worker:
            return
        rows = self.sim.rows()
        for hosted in list(self.armors.values()):
            row = rows.get(hosted.armor.id)
            if row is None and is_ftm(hosted.armor.id):
                continue  # an FTM records itself once it holds its epoch
            if row != (self.node, hosted.incarnation):
                self.sim.stats["superseded ARMORs swept"] += 1
                self._remove(hosted)

    def report(self, manager: ArmorId | None, type: str, body: object) -> None:
        if manager is not None:
            self.send(Message.of(type, self.id, manager, next(self._ids), body))

    # -- tasks ------------------------------------------------------------------------------

    def _spawn(self, hosted: Hosted, effect: Spawn[ProcessSpec]) -> None:
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

    # -- messages ---------------------------------------------------------------------------

    def _out(self, hosted: Hosted, message: Message) -> None:
        """An ARMOR of this node sends C{message}."""
        if not hosted.alive:
            return
        kind = message.type
        if kind == FENCED and is_ftm(message.source):
            kind = self.sim.acted(message)
        if kind in _COUNTED:
            self.sim.stats[f"{kind} sent"] += 1
        if kind == UNINSTALL and message.value() == {"armor": message.source}:
            self.sim.stats["fenced FTMs"] += 1
        self.send(message)

    def send(self, message: Message) -> None:
        destination = message.destination
        kind = destination.split(".", 1)[0]
        if kind == SPACE_KIND:
            self._space(message)
        elif destination == self.id:
            self.world.after(LOCAL_DELAY, lambda: self._arrive(message))
        elif kind == "daemon":
            self._to_node(destination.split(".", 1)[1], message)
        else:
            where = self.sim.directory.get(ArmorId(destination))
            if where is None:
                self.sim.stats["messages for no ARMOR"] += 1
            elif where[0] == self.node:
                self.world.after(LOCAL_DELAY, lambda: self._arrive(message))
            else:
                self._to_node(where[0], message)

    def _to_node(self, node: str, message: Message) -> None:
        peer = self.sim.daemons.get(node)
        if peer is None or not peer.alive:
            self.sim.stats["messages to a dead node"] += 1
            return
        stream = self.streams.get(node)
        if stream is None or not stream.open:
            stream = self.sim.connect(self, peer)
        stream.write(encode(message))

    def frame(self, data: bytes) -> None:
        """Bytes from another daemon."""
        if not self.alive:
            return
        if self.paused or self.catching_up:
            self.backlog.append(lambda: self.frame(data))
            return
        self._arrive(decode(data))

    def _space(self, message: Message) -> None:
        request = SpaceRequest.from_message(message)
        space = self.sim.space_of(message.destination)
        reply = space.apply(request)
        answer = Message.of(
            SPACE_REPLY, message.destination, message.source, next(self._ids), reply
        )
        self.world.after(LOCAL_DELAY, lambda: self._arrive(answer))

    def _arrive(self, message: Message) -> None:
        if not self.alive:
            return
        if self.paused or self.catching_up:
            self.backlog.append(lambda: self._arrive(message))
            return
        if message.destination == self.id:
            self._handle(message)
            return
        hosted = self.armors.get(message.destination)
        if hosted is None and self.client is not None and message.destination == self.client[0]:
            self.client[1].feed(self.client[1].core.receive, message)
            return
        if hosted is None:
            self.sim.stats["frames for an absent ARMOR"] += 1
            return
        if hosted.paused:
            hosted.backlog.append(message)
            return
        self._feed(hosted, message)

    def _feed(self, hosted: Hosted, message: Message) -> None:
        if hosted.alive:
            hosted.host.feed(hosted.armor.receive, message)

    def _handle(self, message: Message) -> None:
        """A message for this daemon."""
        fenced = False
        if message.type == FENCED:
            try:
                inner, newer = self.fence.admit(message)
            except MessageError:
                return
            if inner is None:
                self.refused += 1
                self.sim.stats["commands refused: older epoch"] += 1
                return
            if newer:
                self._redirect(message.source)
            message, fenced = inner, True
        elif is_ftm(message.source) and message.type == INSTALL:
            self.refused += 1
            return
        if message.type == HEARTBEAT:
            self.last_heartbeat = self.world.now
            seq = Heartbeat.from_message(message).seq
            self.send(
                Message.of(
                    HEARTBEAT_ACK,
                    self.id,
                    message.source,
                    next(self._ids),
                    HeartbeatAck(seq, self.node, self.boot),
                )
            )
        elif message.type == WELCOME and fenced:
            if Welcome.from_message(message).boot == self.boot:
                self.sweep()
                self.joined = True
                self.last_heartbeat = self.world.now
        elif message.type == INSTALL:
            self.install(Install.from_message(message), self.world.now)
        elif message.type == UNINSTALL:
            armor = Uninstall.from_message(message).armor
            hosted = self.armors.get(armor)
            if hosted is None:
                return
            if not (
                fenced
                or message.source == armor
                or (message.source == hosted.manager and not is_ftm(message.source))
            ):
                self.refused += 1
                return
            self._remove(hosted)
            self.report(hosted.manager, UNINSTALLED, Uninstalled(armor, self.node))

    def _redirect(self, ftm: ArmorId) -> None:
        """A newer FTM: the reports of what older ones managed go to it."""
        for hosted in self.armors.values():
            if hosted.armor.id == ftm:
                hosted.manager = None
            elif hosted.manager is not None and is_ftm(hosted.manager):
                hosted.manager = ftm


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
        self.directory: dict[ArmorId, tuple[str, int]] = {}
        self.hosted: dict[str, Hosted] = {}
        self.daemons: dict[str, SimDaemon] = {}
        self.boots: collections.Counter[str] = collections.Counter()
        self.stats: collections.Counter[str] = collections.Counter()
        self.acts: dict[int, set[ArmorId]] = {}
        self.node_names = [f"n{i + 1}" for i in range(nodes)]
        self.managers: dict[str, Hosted] = {}
        self._epoch: tuple[int, tuple[int, ArmorId] | None] = (-1, None)
        self._rows: tuple[int, dict[ArmorId, tuple[str, int]]] = (-1, {})
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

    def space_of(self, destination: str) -> TableSpace:
        name = destination.split(".", 1)[1]
        if name == "system":
            return self.space
        return self.app_spaces.setdefault(name, TableSpace())

    def connect(self, a: SimDaemon, b: SimDaemon) -> Stream:
        ab, ba = self.world.streams.connect(a.node, b.node)
        ab.receive = b.frame
        ba.receive = a.frame
        a.streams[b.node] = ab
        b.streams[a.node] = ba
        return ab

    def cut(self, node: str) -> None:
        for daemon in self.daemons.values():
            stream = daemon.streams.pop(node, None)
            if stream is not None:
                stream.cut("peer down")

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
        client = SimDaemon(self, _CLIENT, worker=False)
        self.daemons[_CLIENT] = client
        submitter_host = world.host(
            _SUBMITTER, self.submitter, {Send: lambda h, e: client.send(e.message)}
        )
        self.directory[self.submitter.id] = (_CLIENT, 1)
        client.client = (self.submitter.id, submitter_host)
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
        self.daemons[self.node_names[0]].host_armor(boot_ftm, "ftm", None, 1)
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
        return self

    def _reboot(self, node: str) -> None:
        self._boot(node)

    def _boot(self, node: str) -> SimDaemon:
        self.boots[node] += 1
        daemon = SimDaemon(self, node, self.boots[node])
        self.daemons[node] = daemon
        daemon.start()
        return daemon

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
            if h.alive and not h.paused and predicate(h) and not self.daemons[h.node].paused
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
                self.poisoned.add((task.daemon.node, task.execution.id))
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
            up = [d for d in self.daemons.values() if d.worker and d.alive and not d.paused]
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
        daemon = self.daemons[target.node]
        if kind.endswith("-kill"):
            daemon.crash_armor(target, "killed")
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
        """The ARMORs that run and are current: unpaused, the incarnation the directory names."""
        for h in self.hosted.values():
            if (
                h.alive
                and not h.paused
                and not self.daemons[h.node].paused
                and self.directory.get(h.armor.id) == (h.node, h.incarnation)
            ):
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
        directory = self.directory
        for h in self.managers.values():
            if h.host.paused or directory.get(h.armor.id) != (h.node, h.incarnation):
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
        for node, daemon in self.daemons.items():
            if daemon.worker and daemon.alive and not daemon.paused:
                host = primary.hosts.get(node)
                if host is None or not host.up or host.boot != daemon.boot:
                    problems.append(f"the FTM does not hold {node} (boot {daemon.boot}) up")
        # The ARMOR table is what runs.
        rows = {(t[1], t[4], t[5]) for t in self.space.scan(*ArmorEntry.template())}
        running = {(h.armor.id, h.node, h.incarnation) for h in self.hosted.values() if h.alive}
        if rows != running:
            problems.append(
                f"the ARMOR table is not what runs: only in the table {sorted(rows - running)},"
                f" only running {sorted(running - rows)}"
            )
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
