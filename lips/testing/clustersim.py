"""
A deterministic simulator of a served cluster: MessageServers on a token ring, and the
real Deferred clients failing over between them.

Each server is a L{RingEngine}, a L{Replica} and the real L{MessageServer} core, with its
own L{Clock}: the engine's timer and the core's request timeouts are calls on it, and it
is advanced to the simulation's time while the server runs.  Each client is a real
L{TupleSpaceClient} made by L{lips.client.connect} with every server as an endpoint, on
its own clock too.  Endpoints make in-memory connections (the client's protocol on one
side, L{MessageServerProtocol} on the other) whose bytes travel through the simulator's
event queue with a seeded delay, in order; a connection to a server that is down is
refused.  Ring datagrams travel through L{RingSimulation}'s network, with its loss,
duplication, delay and partitions.  Everything is drawn from the one seed.  It all runs
in the simulated world (L{lips.testing.world}): its agenda carries the connections'
bytes and the faults, its L{Datagrams<lips.testing.world.Datagrams>} the ring's
datagrams, each engine sits on a L{Host<lips.testing.world.Host>} (fired by its
server's clock, not by the world), and the servers' and the processes' clocks are the
world's outside clocks (L{World.add_clock<lips.testing.world.World.add_clock>}).

Faults: loss, duplication and delay of datagrams; partitions of the ring; crashes and
restarts of servers (their connections are reset); and I{paused} servers (SIGSTOP, then
SIGCONT): a paused server processes nothing -- its engine, its core's timers (its clock
is not advanced), its connections (what reaches it waits in its socket buffers, up to
L{SOCKET_BACKLOG} datagrams) -- for 0.5 to 4 s, then resumes with its state: its clock
jumps, so every timer that came due fires in a burst, and what its sockets kept is
handed to it, the timers first or the sockets first.  Most pauses and crashes are
I{eager} (L{Fault}, L{TRIGGERS}): armed at a random time, they strike at the first
moment their server holds answers not yet safe (claims applied, answers held back), or
starts syncing (it has installed a configuration and waits for the others' statuses),
when a server's clients have the most to lose.  Clients' C{in_} and C{rd} have short
timeouts, some shorter than a failover (0 to 1.5 s), so requests are sent again with
what is left of their timeout, often nothing; processes also C{inp} and C{out}, and one
may checkpoint as it goes, and processes may say goodbye and be replaced by new ones
(L{ClusterScenario.goodbye}).  A broadcast is carried out as L{lips.protocols.RingProtocol}
does it: a server that holds an idle ring's token delivers its own payload to itself
before the broadcast returns.  A scenario can also be scripted (L{ClusterScenario.script},
L{ClusterScenario.faults}) to replay a known history.

The checker reads the requests servers receive and the answers they write and clients
receive, and what every caller is finally told:

  - as it goes: an answer that reaches a client and differs from an earlier one to the
    same request fails the run (answers written into connections already closed are
    only counted), and so do a tuple given to two removing takes (unless put twice) and
    a tuple given that no process ever put;
  - at the end, after the faults stop and the cluster is calm: every server serves in
    one ring with one digest; every caller has its answer; every answered C{out}'s tuple
    is still in the space or was taken by a take that the space's log records (for a
    process that said goodbye, the log as it was when the space forgot it); no tuple is
    stored and taken more often than it was put; every take told a tuple is the one the
    log records, and a removing one left no copy in the space; every answered checkpoint
    is the process's latest or older; and every tuple a take removed (the log says which
    event took what: C{TupleSpace.answered}) reached its caller, except when the caller
    was told L{lips.OutcomeUnknown} (before that class existed, L{lips.ConnectionLost})
    or put the tuple back: then it may be gone.  A take that ended in L{lips.Timeout} (or
    any answer but the tuple) must have taken nothing.

As in L{ReplicatedSimulation}, answers given before a moment when no live server held
the latest primary's state (every holder had crashed) are exempt from the end checks.
A failure raises L{InvariantViolation} with the seed, the command that replays it and a
trace of the events around the request or tuple at fault.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final, NoReturn

import attrs
from twisted.internet import defer
from twisted.internet import error as neterror
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IDelayedCall,
    IProducer,
    IProtocol,
    IProtocolFactory,
    IPushProducer,
    IStreamClientEndpoint,
    ITransport,
)
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

import lips.errors
from lips.client import TupleSpaceClient, _checkpoint, connect
from lips.errors import RequestError, Timeout
from lips.protocols import MessageServerFactory, MessageServerProtocol
from lips.replica import Mode, Replica, ReplicaPayloadError, decode_payload
from lips.ring import Configuration, Delivered, RingEngine, RingMessage, Safe
from lips.server import MessageServer
from lips.space import Completion, Kind, Status
from lips.testing._replicahost import ReplicaBackend
from lips.testing.ringsim import (
    EngineEvent,
    Faults,
    InvariantViolation,
    RingSimulation,
    Scenario,
)
from lips.testing.world import Host
from lips.tuples import DEFAULT_LIMITS, LTuple
from lips.wire import (
    CheckpointRequest,
    Error,
    Frame,
    FrameDecoder,
    Matched,
    Message,
    MessageError,
    NoMatch,
    Out,
    Stored,
    Take,
    TimedOut,
    decode_message,
)

__all__ = [
    "Call",
    "ClusterScenario",
    "ClusterSimulation",
    "Fault",
    "InvariantViolation",
    "TRIGGERS",
    "replay_command",
]

#: What a caller is told when the outcome of its request cannot be known.
OUTCOME_UNKNOWN: Final[type[Exception]] = lips.errors.OutcomeUnknown

#: Datagrams a paused server's socket buffer keeps; later ones are dropped.
SOCKET_BACKLOG: Final = 256

#: The template every take uses, and the tuples it matches: C{("ks", pid, n)}.
TEMPLATE: Final = ("ks", int, int)

#: How long an eager fault waits for its moment before it strikes anyway.
EAGER_WINDOW: Final = 1.0

#: How long after the end of the run the clients may take to hear their last answers.
SETTLE_LIMIT: Final = 40.0

_MAX_BODY: Final = DEFAULT_LIMITS.max_size + 4096


def replay_command(seed: int) -> str:
    return f"lips sim --served --seed {seed}"


@attrs.frozen
class Call:
    """
    One operation of a scripted process: at C{at} seconds, process C{process} (an index
    into L{ClusterScenario.homes}) makes C{kind} -- C{OUT} of C{values}, or C{IN}, C{RD}
    or C{INP} of L{TEMPLATE} with C{timeout} -- without waiting for its earlier ones.
    """

    at: float
    process: int
    kind: Kind = attrs.field(
        validator=attrs.validators.in_((Kind.OUT, Kind.IN, Kind.RD, Kind.INP))
    )
    values: tuple[Any, ...] = ()
    timeout: float | None = None


#: When an eager fault strikes: the first moment its server holds answers not yet safe
#: (claims applied, answers held back), or starts syncing (it installs a configuration
#: and waits for the others' statuses).
TRIGGERS: Final = ("unsafe", "syncing")


@attrs.frozen
class Fault:
    """
    A pause (C{"pause"}) or crash (C{"crash"}) of server C{node} for C{length} seconds,
    armed at C{at}: it strikes at once (C{trigger} None) or at the first moment within
    L{EAGER_WINDOW} that C{trigger} (one of L{TRIGGERS}) holds, else at the window's end.
    C{timers_first}: a paused server, on resuming, fires its due timers before it reads
    its sockets (None: drawn then).
    """

    at: float
    node: int
    length: float
    kind: str = attrs.field(default="pause", validator=attrs.validators.in_(("pause", "crash")))
    trigger: str | None = attrs.field(default="unsafe")
    timers_first: bool | None = None

    @trigger.validator
    def _check_trigger(self, attribute: attrs.Attribute[str | None], value: str | None) -> None:
        if value is not None and value not in TRIGGERS:
            raise ValueError(f"trigger must be None or one of {TRIGGERS}, not {value!r}")


@attrs.frozen
class ClusterScenario:
    """One served run: servers, clients, the ring's network, and the faults."""

    nodes: int = 3
    processes: int = 4
    """Processes making random operations in a loop (each waits for its last answer)."""
    checkpointer: bool = False
    """One more process that stores tuples nobody takes and checkpoints as it goes."""
    ring: Faults = attrs.field(factory=Faults)
    """The ring network's loss, duplication and delay, and its partitions."""
    pauses: int = 0
    crashes: int = 0
    eager: float = 0.7
    """The share of pauses and crashes that wait for their moment (see the module)."""
    timeouts: tuple[float, float] = (0.0, 1.5)
    tcp_delay: tuple[float, float] = (0.0002, 0.002)
    failover_timeout: float = 10.0
    keepalive: float | None = None
    """The clients' keepalive interval; None: the client library's default."""
    goodbye: float = 0.0
    """The chance that a process, its last operation answered, says goodbye instead of
    making its next one (the space forgets its log; a new process takes its place).
    Not drawn by L{random} yet: a request that reaches a server after its process said
    goodbye elsewhere (it waited in a paused server's socket) is applied as new, since
    nothing is left to dedupe it."""
    fault_time: float = 5.0
    heal_time: float = 7.0
    traffic: float = 6.5
    """Processes make no new operation after this time."""
    homes: tuple[int, ...] = ()
    """Scripted processes, by the server each connects to first."""
    script: tuple[Call, ...] = ()
    faults: tuple[Fault, ...] = ()
    """Scripted pauses and crashes, besides the random ones."""

    @classmethod
    def random(cls, rng: random.Random) -> ClusterScenario:
        """A scenario drawn from a mix of fault kinds, pauses the most common."""
        mix = rng.choice(
            ["pauses", "pauses", "pauses", "crashes", "partitions", "lossy", "everything"]
        )
        lossy = mix in ("lossy", "everything")
        ring = Faults(
            loss=rng.choice([0.02, 0.1]) if lossy else 0.0,
            duplicate=rng.choice([0.0, 0.05]) if lossy else 0.0,
            delay=(0.0001, rng.choice([0.0005, 0.002, 0.005])),
            partitions=rng.randint(1, 2) if mix in ("partitions", "everything") else 0,
        )
        return cls(
            nodes=rng.randint(3, 5),
            processes=rng.randint(2, 6),
            checkpointer=rng.random() < 0.4,
            ring=ring,
            pauses=rng.randint(1, 3) if mix in ("pauses", "everything") else 0,
            crashes=rng.randint(1, 2) if mix in ("crashes", "everything") else 0,
            failover_timeout=rng.choice([3.0, 10.0]),
            # The library's default, or a keepalive long enough to outlast most pauses.
            keepalive=rng.choice([None, None, 2.0]),
        )

    @property
    def mix(self) -> str:
        """The faults of this scenario, for a summary: C{"pauses+lossy"}, say."""
        kinds = [
            ("pauses", self.pauses or any(f.kind == "pause" for f in self.faults)),
            ("crashes", self.crashes or any(f.kind == "crash" for f in self.faults)),
            ("partitions", self.ring.partitions),
            ("lossy", self.ring.loss or self.ring.duplicate),
        ]
        return "+".join(name for name, on in kinds if on) or "reordering only"


# -- what happened ----------------------------------------------------------------------


@attrs.define(eq=False)
class _Op:
    """One operation a process made, and how it ended for its caller."""

    key: tuple[int, int]
    kind: Kind
    values: tuple[Any, ...] | None
    timeout: float | None
    issued: float
    process: str
    ended: float | None = None
    outcome: str = ""
    """C{stored}, C{matched}, C{none}, C{timeout}, C{unknown} or C{refused}."""
    value: LTuple | None = None
    error: str = ""
    sends: list[tuple[int, float | None, str]] = attrs.Factory(list)
    """Where it was sent: the server, the timeout asked for, and the server's mode."""

    def describe(self) -> str:
        what = f"{self.kind.name} {self.key}"
        if self.kind is Kind.OUT:
            return f"{what} of {self.values}"
        if self.timeout is not None:
            what += f" (timeout {self.timeout:.2f} s)"
        return what


@attrs.define(eq=False)
class _Answer:
    """A final answer to a request: what it said, which server gave it, and when."""

    outcome: str
    value: LTuple | None
    node: int
    at: float


# -- servers ----------------------------------------------------------------------------


class _Backend(ReplicaBackend):
    """
    The replica behind a server's core, its effects carried out as a
    L{Driver<lips.kernel.Driver>} does: fed again while it is at it (the ring delivered
    a payload before the broadcast that handed it over returned), it returns at once,
    and the new effects are carried out after the ones already taken.
    """

    _carrying = False

    def carry_out(self) -> None:
        if self._carrying:
            return
        self._carrying = True
        try:
            super().carry_out()
        finally:
            self._carrying = False


@attrs.define(eq=False)
class _Server:
    """One incarnation of a server: its replica, its core, its clock."""

    node: int
    clock: Clock
    replica: Replica
    core: MessageServer
    factory: MessageServerFactory
    backend: _Backend
    timer: IDelayedCall | None = None
    timer_at: float = 0.0
    stopped: tuple[float, bool] | None = None
    """While paused: when it resumes, and whether its timers fire first then."""
    armed: Fault | None = None
    """An eager fault waiting for its moment."""
    inbox: list[tuple[RingMessage | None, Callable[[], None] | None]] = attrs.Factory(list)
    """What reached it while paused, in order: a datagram, or a connection's event."""
    backlog: int = 0
    pipes: list[_Pipe] = attrs.Factory(list)
    mode: Mode | None = None


# -- clients ----------------------------------------------------------------------------


@attrs.define(eq=False)
class _Process:
    """A client process: one L{TupleSpaceClient} at a time, on its own clock."""

    index: int
    pid: int
    clock: Clock
    home: int
    checkpointer: bool = False
    scripted: bool = False
    client: TupleSpaceClient | None = None
    connecting: bool = False
    made: int = 0
    done: bool = False
    failovers: int = 0

    @property
    def name(self) -> str:
        return f"c{self.pid}"


@implementer(ITransport, IConsumer, IPushProducer)
class _End:
    """
    One side of an in-memory connection: its transport, a consumer of what its protocol
    writes (which never pushes back: the connection buffers without bound) and a
    producer of what it reads (which the protocol may pause).
    """

    def __init__(self, pipe: _Pipe, server_side: bool) -> None:
        self.pipe = pipe
        self.server_side = server_side
        self.producer: IProducer | None = None

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def pauseProducing(self) -> None:
        self.pipe.reading(self.server_side, False)

    def resumeProducing(self) -> None:
        self.pipe.reading(self.server_side, True)

    def stopProducing(self) -> None:
        self.pipe.close(self.server_side, abort=True)

    def write(self, data: bytes) -> None:
        self.pipe.write(self.server_side, data)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        self.pipe.close(self.server_side, abort=False)

    def abortConnection(self) -> None:
        self.pipe.close(self.server_side, abort=True)

    def getPeer(self) -> IAddress:
        return self.pipe.address(not self.server_side)

    def getHost(self) -> IAddress:
        return self.pipe.address(self.server_side)


class _Pipe:
    """
    An in-memory TCP connection between a process and a server incarnation.  Bytes go
    through the simulator's event queue, in order in each direction, and the checker
    reads them on the way (L{ClusterSimulation.request_arrived},
    L{ClusterSimulation.answer_written}, L{ClusterSimulation.answer_arrived}).
    """

    def __init__(self, sim: ClusterSimulation, process: _Process, node: int, number: int) -> None:
        self.sim = sim
        self.process = process
        self.pid = process.pid
        self.node = node
        self.number = number
        self.server: _Server | None = None
        self.client: IProtocol | None = None
        self.server_protocol: MessageServerProtocol | None = None
        # Whether each side may still write, and whether it has seen the connection end.
        self.client_open = True
        self.server_open = True
        self.client_gone = False
        self.server_gone = False
        self.abandoned = False
        self._c2s = 0.0
        self._s2c = 0.0
        self._requests: dict[int, Message] = {}
        self._decoders = (FrameDecoder(_MAX_BODY), FrameDecoder(_MAX_BODY))
        # What the server side's protocol would not read yet (it paused its transport).
        self._unread: list[Callable[[], None]] | None = None

    def __repr__(self) -> str:
        return f"c{self.pid}~m{self.node}#{self.number}"

    def address(self, server_side: bool) -> IAddress:
        if server_side:
            return IPv4Address("TCP", f"10.0.0.{self.node}", 7010)
        return IPv4Address("TCP", f"10.0.1.{self.process.index}", 40000 + self.number)

    # -- moving bytes -----------------------------------------------------------------------

    def to_server(self, event: Callable[[], None]) -> None:
        sim = self.sim
        self._c2s = max(self._c2s, sim.now + sim.tcp_delay())
        sim.schedule(self._c2s, lambda: sim.server_event(self, event))

    def to_client(self, event: Callable[[], None]) -> None:
        sim = self.sim
        self._s2c = max(self._s2c, sim.now + sim.tcp_delay())
        sim.schedule(self._s2c, event)

    def write(self, server_side: bool, data: bytes) -> None:
        if server_side:
            if not self.server_open or self.server_gone:
                return
            answers = self._read(data, server_side=True)
            self.to_client(lambda: self._client_data(data, answers))
        else:
            if not self.client_open or self.client_gone:
                return
            requests = [request for request, _ in self._read(data, server_side=False)]
            self.to_server(lambda: self._server_data(data, requests))

    def _client_data(self, data: bytes, answers: list[tuple[Message, Message]]) -> None:
        if not self.client_gone and self.client is not None:
            for request, reply in answers:
                self.sim.answer_arrived(self, request, reply)
            self.client.dataReceived(data)

    def _server_data(self, data: bytes, requests: list[Message]) -> None:
        if self._unread is not None:
            self._unread.append(lambda: self._server_data(data, requests))
            return
        if not self.server_gone and self.server_protocol is not None:
            for request in requests:
                self.sim.request_arrived(self, request)
            self.server_protocol.dataReceived(data)

    def reading(self, server_side: bool, on: bool) -> None:
        """A protocol pauses or resumes reading (only the server's does)."""
        if not server_side:
            return
        if not on:
            if self._unread is None:
                self._unread = []
            return
        unread, self._unread = self._unread, None
        for event in unread or ():
            event()  # in order; one that pauses again sends the rest back to _unread

    # -- ending -----------------------------------------------------------------------------

    def close(self, server_side: bool, abort: bool) -> None:
        """A side closes (after its bytes in flight) or aborts (a reset) the connection."""
        if server_side:
            if not self.server_open:
                return
            self.server_open = False
            self.to_client(lambda: self.client_lost(neterror.ConnectionDone("closed")))
            self.sim.schedule(
                self.sim.now, lambda: self.sim.server_event(self, self._server_closed)
            )
        else:
            if not self.client_open:
                return
            self.client_open = False
            reason: Exception = (
                neterror.ConnectionLost("reset") if abort else neterror.ConnectionDone()
            )
            self.to_server(lambda: self.server_lost(reason))
            self.sim.schedule(self.sim.now, lambda: self.client_lost(reason))

    def _server_closed(self) -> None:
        self.server_lost(neterror.ConnectionDone())

    def client_lost(self, reason: Exception) -> None:
        self.client_open = False
        if self.client_gone:
            return
        self.client_gone = True
        if self.client is not None:
            self.client.connectionLost(Failure(reason))

    def server_lost(self, reason: Exception) -> None:
        self.server_open = False
        if self.server_gone:
            return
        self.server_gone = True
        if self.server_protocol is not None:
            self.server_protocol.connectionLost(Failure(reason))

    def crashed(self) -> None:
        """The server process is gone: its side says nothing more; the client is reset."""
        self.server_open = False
        self.server_gone = True
        self.to_client(lambda: self.client_lost(neterror.ConnectionLost("reset by peer")))

    # -- the checker's view -----------------------------------------------------------------

    def _read(self, data: bytes, server_side: bool) -> list[tuple[Message, Message]]:
        """The requests (client side) or the (request, answer) pairs (server side) in C{data}."""
        answers = []
        for frame in self._decoders[server_side].feed(data):
            if type(frame) is not Frame:
                continue
            assert isinstance(frame, Frame)
            try:
                message = decode_message(frame, DEFAULT_LIMITS)
            except MessageError:
                continue
            if server_side:
                request = self._requests.pop(frame.request_id, None)
                if request is not None:
                    self.sim.answer_written(self, request, message)
                    answers.append((request, message))
            elif isinstance(message, Out | Take | CheckpointRequest):
                self._requests[frame.request_id] = message
                answers.append((message, message))
        return answers


@implementer(IStreamClientEndpoint)
class _Endpoint:
    """A process's endpoint for one server: connections through the simulator."""

    def __init__(self, sim: ClusterSimulation, process: _Process, node: int) -> None:
        self.sim = sim
        self.process = process
        self.node = node

    def __repr__(self) -> str:
        return f"m{self.node}"

    def connect(self, protocolFactory: IProtocolFactory) -> defer.Deferred[IProtocol]:
        return self.sim.open_pipe(self.process, self.node, protocolFactory)


# -- the simulation ---------------------------------------------------------------------


class ClusterSimulation(RingSimulation):
    """Runs one L{ClusterScenario} from one seed (see the module docstring)."""

    # How many configurations a return costs the ring is the ring simulator's concern.
    check_returns = False

    def __init__(self, seed: int, cluster: ClusterScenario | None = None) -> None:
        if cluster is None:
            cluster = ClusterScenario.random(random.Random(seed ^ 0xC1A5))
        self.cluster = cluster
        super().__init__(
            seed,
            Scenario(
                nodes=cluster.nodes,
                fault_time=cluster.fault_time,
                heal_time=cluster.heal_time,
                messages=0,
                faults=cluster.ring,
            ),
        )
        self.servers: dict[int, _Server] = {}
        self.processes: list[_Process] = []
        self.ops: dict[tuple[int, int], _Op] = {}
        self.answers: dict[tuple[int, int], _Answer] = {}
        self._written: dict[tuple[int, int], _Answer] = {}
        self.counts: Counter[str] = Counter()
        self.wiped_at = -1.0
        self.trace: list[tuple[float, str, tuple[object, ...]]] = []
        self._pipes = 0
        self._next_pid = 100
        # Tuples put (by tracked outs, or put back by a client), taken by a removing take
        # (as servers answered them), and where each request was last sent.
        self._put: Counter[LTuple] = Counter()
        self._put_back: dict[LTuple, list[tuple[int, int]]] = {}
        self._taken: dict[LTuple, list[tuple[tuple[int, int], float]]] = {}
        self._sent_to: dict[tuple[int, int], int] = {}
        self._checkpoints: dict[int, tuple[int, Any]] = {}
        # The logs of processes that said goodbye, as they were when the space forgot
        # them (their events' answers), and when.
        self._forgotten: dict[int, tuple[float, dict[int, Completion | None]]] = {}
        self._unknown_forgotten_takes = False
        self.world.add_clock(self._next_call, self._catch_up)

    # -- running ----------------------------------------------------------------------------

    def run(self) -> ClusterSimulation:
        """Run the scenario, checking as it goes, then let the clients settle and check."""
        cl = self.cluster
        for _ in range(cl.processes):
            self._add_process(self.rng.choice(self.ids), start=self.rng.uniform(0.0, 0.3))
        if cl.checkpointer:
            self._add_process(self.rng.choice(self.ids), start=0.2, checkpointer=True)
        scripted = [self._add_process(home, 0.1, scripted=True) for home in cl.homes]
        for call in cl.script:
            self._plan(call.at, "scripted", (scripted[call.process], call))
        latest = cl.fault_time + cl.heal_time - 2.5
        for kind, count in (("pause", cl.pauses), ("crash", cl.crashes)):
            for _ in range(count):
                t = self.rng.uniform(0.3, max(0.3, cl.fault_time - 0.5))
                n = self.rng.choice(self.ids)
                if kind == "pause":
                    length = min(self.rng.uniform(0.5, 4.0), latest - t - EAGER_WINDOW)
                else:
                    length = self.rng.uniform(0.1, 1.0)
                trigger = None
                if self.rng.random() < cl.eager:
                    trigger = "unsafe" if self.rng.random() < 0.7 else "syncing"
                self._plan(t, "arm", Fault(t, n, length, kind, trigger))
        for fault in cl.faults:
            self._plan(fault.at, "arm", fault)
        super().run()
        self._settle()
        self._check_served()
        return self

    def _settle(self) -> None:
        """Run on until every operation has its answer (or fail for lack of progress)."""
        limit = self.now + SETTLE_LIMIT
        while any(op.ended is None for op in self.ops.values()) or self._busy():
            when = self.world.next_time()
            if when is None or when > limit:
                waiting = [op.key for op in self.ops.values() if op.ended is None]
                self._fail(f"progress: operations never answered: {waiting[:5]}", *waiting)
            self.world.step()

    def _busy(self) -> bool:
        return any(p.connecting for p in self.processes)

    def _next_call(self) -> float | None:
        """When the next call on a running server's or a process's clock is due."""
        candidates = []
        for clock in self._clocks():
            calls = clock.getDelayedCalls()
            if calls:
                candidates.append(min(c.getTime() for c in calls))
        return min(candidates) if candidates else None

    def _clocks(self) -> Iterator[Clock]:
        for s in self.servers.values():
            if s.stopped is None:
                yield s.clock
        for p in self.processes:
            yield p.clock

    def _catch_up(self) -> None:
        """At every step, first: the running servers' and the processes' clocks run."""
        for s in list(self.servers.values()):
            if s.stopped is None and self.servers.get(s.node) is s:
                self._run_clock(s)
        for p in self.processes:
            _advance(p.clock, self.now)

    def _host(self, n: int, engine: RingEngine) -> Host[RingEngine]:
        """
        A host for the engine of server C{n}'s new incarnation, not added to the world:
        its timers fire by a call on the server's clock (L{_rearm}, L{_tick}), as a
        L{Driver<lips.kernel.Driver>} on the server's reactor fires them.
        """
        return Host(self.world, n, engine, self._handlers(n), queue_nested=True)

    def _run_clock(self, s: _Server) -> None:
        if _advance(s.clock, self.now):
            self._drain(s.node)

    def schedule(self, when: float, event: Callable[[], None]) -> None:
        self._plan(when, "call", event)

    def _do_call(self, event: Callable[[], None]) -> None:
        event()

    def tcp_delay(self) -> float:
        return self.rng.uniform(*self.cluster.tcp_delay)

    def _note(self, text: str, *tags: object) -> None:
        self.trace.append((self.now, text, tags))

    # -- servers ----------------------------------------------------------------------------

    def _do_start(self, n: int) -> None:
        clock = Clock()
        clock.rightNow = self.now
        replica = Replica(n, self.ids)
        backend = _Backend(replica, lambda: self.now, lambda p: self._broadcast(n, p))
        core = MessageServer(backend, clock, name=f"m{n}", rng=self.rng)
        self.servers[n] = _Server(n, clock, replica, core, MessageServerFactory(core), backend)
        self._note(f"m{n} starts")
        super()._do_start(n)

    def _drain(self, n: int) -> None:
        super()._drain(n)
        s = self.servers.get(n)
        if s is None or n not in self.engines:
            return
        self._rearm(s)
        mode = s.replica.mode
        changed = mode is not s.mode
        if changed:
            s.mode = mode
            r = s.replica
            self._note(f"m{n} {mode.value} in ring {r.ring} {r.members}")
        armed = s.armed
        if armed is None or s.stopped is not None:
            return
        if (armed.trigger == "unsafe" and s.replica.gauges()["unsafe_answers"]) or (
            armed.trigger == "syncing" and mode is Mode.SYNCING and changed
        ):
            s.armed = None
            kinds = "crashes" if armed.kind == "crash" else "pauses"
            self.counts[f"eager {kinds} struck ({armed.trigger})"] += 1
            self._strike(s, armed, True)

    def _rearm(self, s: _Server) -> None:
        """
        Keep one call on the server's clock, due no later than the earliest of its
        engine's timers (its L{TimerTable<lips.kernel.TimerTable>}).
        """
        deadline = self.hosts[s.node].timers.next_deadline()
        timer = s.timer
        if deadline is None:
            if timer is not None and timer.active():
                timer.cancel()
            s.timer = None
            return
        if timer is not None and timer.active():
            if deadline >= s.timer_at:
                return  # it fires early, finds nothing due, and is set again
            timer.cancel()
        s.timer_at = deadline
        s.timer = s.clock.callLater(max(0.0, deadline - s.clock.seconds()), self._tick, s)

    def _tick(self, s: _Server) -> None:
        """Fire the engine's due timers, one at a time, as a L{Driver<lips.kernel.Driver>}."""
        s.timer = None
        if self.servers.get(s.node) is not s:
            return
        now = max(s.clock.seconds(), s.timer_at)
        # The server's other calls due at this instant may have fed the engine (a
        # request's timeout withdrawn through the ring submits a payload), and their
        # effects wait for the drain after the clock has run: carry them out first, so
        # that the timer table knows what the engine has moved or cancelled.
        self._drain(s.node)
        if self.servers.get(s.node) is not s:
            return  # it crashed meanwhile
        engine = self.engines[s.node]
        for key in self.hosts[s.node].timers.due(now):
            engine.timer(key, now)
            self._drain(s.node)
            if self.servers.get(s.node) is not s:
                return  # it crashed meanwhile: its timers are gone with it
        self._drain(s.node)

    def _handle(self, n: int, effect: EngineEvent) -> None:
        s = self.servers.get(n)
        if s is not None:
            replica = s.replica
            now = self.now
            if isinstance(effect, Delivered):
                applied = self._applying(s, effect.payload)
                replica.delivered(
                    effect.ring, effect.seq, effect.payload, effect.origin, effect.index, now
                )
                s.backend.carry_out()
                if applied is not None:
                    self._applied(s, *applied)
            elif isinstance(effect, Safe):
                replica.safe(effect.ring, effect.upto, now)
            elif isinstance(effect, Configuration):
                replica.configuration(effect.ring, effect.members, effect.transitional, now)
            s.backend.carry_out()
        super()._handle(n, effect)

    def _applying(self, s: _Server, payload: bytes) -> tuple[Any, ...] | None:
        """For the trace: the operation a delivered payload applies, if it is one."""
        try:
            op = decode_payload(payload)
        except ReplicaPayloadError:
            return None
        if s.replica.mode is not Mode.SERVING:
            return None
        if op[0] == "forget":
            self._remember_log(op[1], s)
            self._note(f"m{s.node} forgets c{op[1]}")
        if op[0] == "claim":
            return (op[0], (op[1], op[2]), op[3], s.replica.space.stored(op[4]))
        if op[0] in ("out", "withdraw"):
            return (op[0], (op[1], op[2]), *op[3:])
        return None

    def _applied(self, s: _Server, what: str, key: tuple[int, int], *args: Any) -> None:
        logged = s.replica.space.answered(*key)
        result = "nothing" if logged is None else logged.status.name
        if what == "claim":
            kind, values = args
            won = logged is not None and logged.status is Status.MATCHED
            if won and logged is not None:
                values = logged.value
            outcome = "won" if won else f"lost ({result})"
            self._note(
                f"m{s.node} applies the {kind.name} claim of {key} on {values}: {outcome}",
                key,
                values,
            )
        elif what == "out":
            self._note(f"m{s.node} applies the out {key} of {args[0]}", key, args[0])
        else:
            self._note(f"m{s.node} applies the {args[0].name} of {key}: {result}", key)

    def _remember_log(self, pid: int, s: _Server) -> None:
        """Keep what server C{s}'s space logs of process C{pid}, if anything, for the end."""
        space = s.replica.space
        log = {k[1]: space.answered(*k) for k in self.ops if k[0] == pid}
        if any(c is not None for c in log.values()):
            self._forgotten[pid] = (self.now, log)

    def _datagram(self, dest: int, message: RingMessage) -> None:
        s = self.servers.get(dest)
        engine = self.engines.get(dest)
        if s is None or engine is None:
            if dest in self._left:
                self._check_left(dest, message)
            return
        if s.stopped is not None:
            if s.backlog < SOCKET_BACKLOG:
                s.backlog += 1
                s.inbox.append((message, None))
            else:
                self.counts["datagrams dropped by a full socket buffer"] += 1
            return
        engine.received(message, s.clock.seconds())
        self._drain(dest)

    def server_event(self, pipe: _Pipe, event: Callable[[], None]) -> None:
        """Something reaches a connection's server side: now, or once it resumes."""
        s = pipe.server
        if s is None or self.servers.get(s.node) is not s or pipe.server_gone:
            return
        if s.stopped is not None:
            s.inbox.append((None, event))
            return
        event()
        self._drain(s.node)

    # -- faults -----------------------------------------------------------------------------

    def _do_arm(self, fault: Fault) -> None:
        s = self.servers.get(fault.node)
        if s is None or s.stopped is not None or s.armed is not None or not self._faults_on:
            return
        if fault.trigger is None:
            self._strike(s, fault, False)
            return
        s.armed = fault
        self._plan(self.now + EAGER_WINDOW, "strike", (s, fault))

    def _do_strike(self, arg: tuple[_Server, Fault]) -> None:
        s, fault = arg
        if s.armed is not fault or self.servers.get(s.node) is not s:
            return
        s.armed = None
        self._strike(s, fault, False)

    def _strike(self, s: _Server, fault: Fault, triggered: bool) -> None:
        why = ""
        if triggered:
            why = " (holding answers not yet safe)" if fault.trigger == "unsafe" else " (syncing)"
        length = fault.length
        if fault.kind == "crash":
            self._crash(s.node, f"{why}, back in {length:.2f} s")
            self._plan(self.now + length, "restart", s.node)
            return
        timers_first = fault.timers_first
        if timers_first is None:
            timers_first = self.rng.random() < 0.5
        s.stopped = (self.now + length, timers_first)
        self.counts["pauses"] += 1
        self._note(f"m{s.node} paused for {length:.2f} s{why}")
        self._plan(self.now + length, "sigcont", s)

    def _do_sigcont(self, s: _Server) -> None:
        """The paused server continues: due timers and buffered input, all at once."""
        if s.stopped is None or self.servers.get(s.node) is not s:
            return
        _, timers_first = s.stopped
        s.stopped = None
        inbox, s.inbox = s.inbox, []
        s.backlog = 0
        late = self.now - s.clock.seconds()
        order = "timers first" if timers_first else "sockets first"
        self._note(f"m{s.node} resumes, its clock {late:.2f} s behind, {order}")
        s.clock.rightNow = max(s.clock.rightNow, self.now)
        if timers_first:
            self._run_clock(s)
        for message, event in inbox:
            if self.servers.get(s.node) is not s or s.stopped is not None:
                return  # it crashed meanwhile (an effect cannot pause it)
            if message is not None:
                self.engines[s.node].received(message, self.now)
            elif event is not None:
                event()
            self._drain(s.node)
        if not timers_first:
            s.clock.advance(0)
            self._drain(s.node)

    def _do_crash(self, n: int) -> None:
        self._crash(n)

    def _crash(self, n: int, why: str = "") -> None:
        s = self.servers.get(n)
        had = n in self.engines
        super()._do_crash(n)
        if s is None or not had:
            return
        self._note(f"m{n} crashes{why}")
        if s.timer is not None and s.timer.active():
            s.timer.cancel()
        latest = max(x.replica.last_primary for x in self.servers.values())
        del self.servers[n]
        self.counts["crashes"] += 1
        if not any(
            x.replica.has_state and x.replica.last_primary == latest for x in self.servers.values()
        ):
            # Every server holding the latest primary's state is gone: its answers are
            # lost by design (an older state may serve again once a majority is back).
            self.wiped_at = self.now
            self._note("every holder of the latest state is gone")
        for pipe in s.pipes:
            pipe.crashed()

    def _do_partition(self, arg: None) -> None:
        super()._do_partition(arg)
        self._note(f"partition {self.net.groups}")

    def _do_heal(self, arg: None) -> None:
        super()._do_heal(arg)
        self._note("partition healed")

    def _do_calm(self, arg: None) -> None:
        for s in self.servers.values():
            s.armed = None
        super()._do_calm(arg)
        self._note("calm: no more faults")

    # -- connections ------------------------------------------------------------------------

    def open_pipe(
        self, process: _Process, node: int, factory: IProtocolFactory
    ) -> defer.Deferred[IProtocol]:
        """
        Connect C{process} to server C{node}: refused if the server is down when the
        connection request reaches it; accepted by its process when it runs.
        """
        self._pipes += 1
        pipe = _Pipe(self, process, node, self._pipes)

        def cancel(d: defer.Deferred[IProtocol]) -> None:
            pipe.abandoned = True

        d: defer.Deferred[IProtocol] = defer.Deferred(cancel)

        def syn() -> None:
            s = self.servers.get(node)
            if s is None or pipe.abandoned:
                self.schedule(self.now + self.tcp_delay(), refused)
                return
            pipe.server = s
            s.pipes.append(pipe)
            pipe._c2s = self.now
            self.server_event(pipe, lambda: accept(s))
            self.schedule(self.now + self.tcp_delay(), established)

        def accept(s: _Server) -> None:
            protocol = s.factory.buildProtocol(pipe.address(server_side=False))
            pipe.server_protocol = protocol
            protocol.makeConnection(_End(pipe, server_side=True))  # type: ignore[no-untyped-call]

        def refused() -> None:
            if not d.called:
                d.errback(neterror.ConnectionRefusedError(f"m{node} is down"))

        def established() -> None:
            if pipe.abandoned or d.called:
                pipe.close(server_side=False, abort=True)
                return
            if pipe.server_gone:
                d.errback(neterror.ConnectionRefusedError(f"m{node} went down"))
                return
            client = factory.buildProtocol(pipe.address(server_side=True))
            assert client is not None
            pipe.client = client
            client.makeConnection(_End(pipe, server_side=False))
            d.callback(client)

        self.schedule(self.now + self.tcp_delay(), syn)
        return d

    # -- processes --------------------------------------------------------------------------

    def _add_process(
        self, home: int, start: float, checkpointer: bool = False, scripted: bool = False
    ) -> _Process:
        index = len(self.processes) + 1
        pid = 1000 + index if checkpointer else index
        clock = Clock()
        clock.rightNow = self.now
        p = _Process(index, pid, clock, home, checkpointer=checkpointer, scripted=scripted)
        self.processes.append(p)
        self._plan(start, "begin", p)
        return p

    def _do_begin(self, p: _Process) -> None:
        """The process connects (the real connect: the first server that welcomes it)."""
        endpoints = [_Endpoint(self, p, n) for n in self.ids]
        options: dict[str, Any] = {}
        if self.cluster.keepalive is not None:
            options["keepalive"] = self.cluster.keepalive
        p.connecting = True
        d = connect(
            p.clock,
            endpoints,
            pid=p.pid,
            name=p.name,
            failover_timeout=self.cluster.failover_timeout,
            start=self.ids.index(p.home),
            **options,
        )
        d.addCallbacks(self._connected, self._not_connected, callbackArgs=(p,), errbackArgs=(p,))

    def _connected(self, client: TupleSpaceClient, p: _Process) -> None:
        p.connecting = False
        p.client = client
        self._note(f"{p.name} connected to {client.server}")
        if not p.scripted:
            self._plan(self.now + self.rng.uniform(0.0, 0.2), "operate", p)

    def _not_connected(self, f: Failure, p: _Process) -> None:
        p.connecting = False
        self._note(f"{p.name} could not connect: {f.getErrorMessage()}")
        if self.now < self.cluster.traffic or p.scripted:
            self._plan(self.now + 0.5, "begin", p)
        else:
            p.done = True

    def _do_operate(self, p: _Process) -> None:
        client = p.client
        assert client is not None
        if self.now >= self.cluster.traffic:
            p.done = True
            return
        if client.state == "failed":
            # It gave up failing over: the process starts again as a new process.
            p.failovers += client.failovers
            p.client = None
            self._next_pid += 1
            old, p.pid = p.pid, self._next_pid
            self._note(f"c{old} gave up; it starts again as {p.name}")
            self._do_begin(p)
            return
        goodbye = self.cluster.goodbye
        if goodbye and not p.checkpointer and p.made and self.rng.random() < goodbye:
            # It is done: it says goodbye (the space forgets its log) and a new process
            # takes its place.
            p.client = None
            p.failovers += client.failovers
            p.connecting = True  # busy until it is back
            self._note(f"{p.name} says goodbye")
            # Its answers are all safe, so every serving server logs them now; kept
            # again when the goodbye is applied (see _applying).
            serving = [x for x in self.servers.values() if x.replica.mode is Mode.SERVING]
            if serving:
                self._remember_log(p.pid, serving[0])
            client.close(goodbye=True).addBoth(self._said_goodbye, p)
            return
        r = self.rng.random()
        p.made += 1
        if p.checkpointer:
            if r < 0.5:
                self._issue(p, Kind.CHECKPOINT, ("state", p.made), None)
            else:
                self._issue(p, Kind.OUT, ("ck", p.pid, p.made), None)
        elif r < 0.4:
            self._issue(p, Kind.OUT, ("ks", p.pid, p.made), None)
        elif r < 0.85:
            kind = Kind.IN if r < 0.75 else Kind.RD
            timeout = 0.0 if self.rng.random() < 0.1 else self.rng.uniform(*self.cluster.timeouts)
            self._issue(p, kind, None, timeout)
        else:
            self._issue(p, Kind.INP, None, None)

    def _said_goodbye(self, result: object, p: _Process) -> None:
        p.connecting = False
        if self.now >= self.cluster.traffic:
            p.done = True
            return
        self._next_pid += 1
        old, p.pid, p.made = p.pid, self._next_pid, 0
        self._note(f"c{old} is gone; {p.name} takes its place")
        self._do_begin(p)

    def _do_scripted(self, arg: tuple[_Process, Call]) -> None:
        p, call = arg
        if p.client is None:
            self._fail(f"script: {p.name} is not connected at t={call.at}")
        self._issue(p, call.kind, call.values or None, call.timeout)

    def _issue(
        self, p: _Process, kind: Kind, values: tuple[Any, ...] | None, timeout: float | None
    ) -> None:
        client = p.client
        assert client is not None
        key = (client.pid, client.event + 1)
        op = _Op(key, kind, values, timeout, self.now, p.name)
        self.ops[key] = op
        d: defer.Deferred[Any]
        if kind is Kind.OUT:
            assert values is not None
            self._put[values] += 1
            d = client.out(values)
        elif kind is Kind.CHECKPOINT:
            d = client.checkpoint(values)
        elif kind is Kind.IN:
            d = client.in_(TEMPLATE, timeout=timeout)
        elif kind is Kind.RD:
            d = client.rd(TEMPLATE, timeout=timeout)
        else:
            d = client.inp(TEMPLATE)
        assert client.event == key[1], (client.event, key)
        self._note(f"{p.name} calls {op.describe()}", key, *([values] if values else []))
        d.addBoth(self._ended, op, p)

    def _ended(self, result: Any, op: _Op, p: _Process) -> None:
        """A caller has its answer: record it, check it, and go on."""
        op.ended = self.now
        if isinstance(result, Failure):
            f = result
            op.error = f"{getattr(f.type, '__name__', f.type)}: {f.getErrorMessage()}"
            if f.check(OUTCOME_UNKNOWN):
                op.outcome = "unknown"
            elif f.check(Timeout):
                op.outcome = "timeout"
            elif f.check(RequestError):
                op.outcome = "refused"
            else:
                self._fail(f"client: {op.describe()} failed with {op.error}", op.key)
        elif op.kind in (Kind.OUT, Kind.CHECKPOINT):
            op.outcome = "stored"
            if op.kind is Kind.CHECKPOINT:
                self._checkpoints[op.key[0]] = (op.key[1], op.values)
        elif result is None:
            op.outcome = "none"
        else:
            op.outcome, op.value = "matched", result
        self.counts[f"{op.kind.name.lower()} {op.outcome}"] += 1
        told = op.error or (op.outcome if op.value is None else f"{op.value}")
        tags: tuple[object, ...] = (op.key,) if op.value is None else (op.key, op.value)
        self._note(f"{op.process} is told {op.describe()}: {told}", *tags)
        if not p.scripted and not p.done and p.client is not None:
            self._plan(self.now + self.rng.uniform(0.0, 0.2), "operate", p)

    # -- what crosses the wire --------------------------------------------------------------

    def request_arrived(self, pipe: _Pipe, message: Message) -> None:
        """A server reads a request (after a pause, when it resumes)."""
        assert isinstance(message, Out | Take | CheckpointRequest)
        key = (pipe.pid, message.event)
        where = self._sent_to.get(key)
        self._sent_to[key] = pipe.node
        s = self.servers.get(pipe.node)
        state = "" if s is None else f" ({s.replica.mode.value})"
        op = self.ops.get(key)
        if op is not None:
            timeout = message.timeout if isinstance(message, Take) else None
            op.sends.append((pipe.node, timeout, "down" if s is None else s.replica.mode.value))
        if isinstance(message, Take):
            what = f"{message.kind.name} {key}"
            if message.timeout is not None:
                what += f" timeout {message.timeout:.2f}"
        else:
            what = f"{type(message).__name__} {key}"
        if isinstance(message, Out) and key not in self.ops and where is None:
            # A tuple the client puts back: a cancelled or given-up take got it late.
            self._put[message.tuple] += 1
            self._put_back.setdefault(message.tuple, []).append(key)
            self._note(f"c{pipe.pid} puts back {message.tuple}", key, message.tuple)
        if where is not None:
            self.counts["requests sent again"] += 1
            asked = message.timeout if isinstance(message, Take) else None
            if asked == 0 and op is not None and op.timeout:
                self.counts["sent again with no time left"] += 1
            what += f", again (last to m{where})"
        self._note(f"m{pipe.node}{state} gets {what} from c{pipe.pid}", key)

    def answer_written(self, pipe: _Pipe, request: Message, reply: Message) -> None:
        """
        A server answered a request: a tuple it gives must have been put, and a tuple
        given to two removing takes must have been put twice.
        """
        assert isinstance(request, Out | Take | CheckpointRequest)
        key = (pipe.pid, request.event)
        outcome, value = _final(reply)
        if outcome is None:
            what = reply.code.name if isinstance(reply, Error) else type(reply).__name__
            self._note(f"m{pipe.node} -> c{pipe.pid}: {key} {what}", key)
            return
        tags: tuple[object, ...] = (key,) if value is None else (key, value)
        told = outcome if value is None else f"{value}"
        self._note(f"m{pipe.node} -> c{pipe.pid}: {key} {told}", *tags)
        first = self._written.setdefault(key, _Answer(outcome, value, pipe.node, self.now))
        if (first.outcome, first.value) != (outcome, value):
            self.counts["conflicting answers written"] += 1
            return
        if value is None or first.at != self.now or first.node != pipe.node:
            return
        if not self._put[value]:
            self._fail(f"invented: {key} answered {value}, which no process ever put", *tags)
        if isinstance(request, Take) and request.kind.removes:
            takers = self._taken.setdefault(value, [])
            takers.append((key, self.now))
            valid = [k for k, when in takers if when >= self.wiped_at]
            if len(valid) > self._put[value]:
                self._fail(
                    f"exactly once: {value} taken by {[k for k, _ in takers]} (put"
                    f" {self._put[value]} time(s))",
                    *tags,
                    *(k for k, _ in takers),
                )

    def answer_arrived(self, pipe: _Pipe, request: Message, reply: Message) -> None:
        """An answer reached its client: one request, one answer, whichever server."""
        assert isinstance(request, Out | Take | CheckpointRequest)
        key = (pipe.pid, request.event)
        outcome, value = _final(reply)
        if outcome is None:
            return
        first = self.answers.setdefault(key, _Answer(outcome, value, pipe.node, self.now))
        if (first.outcome, first.value) != (outcome, value):
            tags = (key, *(v for v in (first.value, value) if v is not None))
            self._fail(
                f"exactly once: {key} answered {first.outcome} {first.value or ''} by"
                f" m{first.node} at t={first.at:.4f}, then {outcome} {value or ''} by"
                f" m{pipe.node}",
                *tags,
            )

    # -- the end ----------------------------------------------------------------------------

    def _check_served(self) -> None:
        modes = {n: s.replica.mode for n, s in self.servers.items()}
        if any(m is not Mode.SERVING for m in modes.values()):
            self._fail(f"progress: not every replica serves at the end: {modes}")
        digests = {n: s.replica.space.digest() for n, s in self.servers.items()}
        if len(set(digests.values())) != 1:
            self._fail(f"determinism: replica digests differ: {digests}")
        space = self.servers[min(self.servers)].replica.space
        held: Counter[LTuple] = Counter(space.tuples())
        # What the log says every take did (for a process that said goodbye, the log
        # as it was when the space forgot it).
        took: dict[tuple[int, int], Completion] = {}
        removed: dict[LTuple, list[tuple[int, int]]] = {}
        # Removals that a state served later may not hold (logs forgotten before the
        # last moment no live server held the latest state).
        unsure: Counter[LTuple] = Counter()
        for key, op in self.ops.items():
            if op.kind in (Kind.OUT, Kind.CHECKPOINT):
                continue
            logged = space.answered(*key)
            forgot_at = -1.0
            # A forgotten process's events are STALE in the space (it keeps their
            # bound, not their answers): what they did is in the log as it was forgotten.
            stale = logged is not None and logged.status is Status.STALE
            if (logged is None or stale) and key[0] in self._forgotten:
                forgot_at, log = self._forgotten[key[0]]
                logged = log.get(key[1])
            if logged is not None and logged.status is Status.MATCHED:
                took[key] = logged
                if op.kind.removes:
                    assert logged.value is not None
                    removed.setdefault(logged.value, []).append(key)
                    if forgot_at >= 0 and forgot_at < self.wiped_at:
                        unsure[logged.value] += 1
        self._unknown_forgotten_takes = any(
            op.outcome == "unknown" and op.kind.removes and op.key[0] in self._forgotten
            for op in self.ops.values()
        )
        for key, op in sorted(self.ops.items()):
            self._check_op(op, took.get(key), held, removed)
        # Each tuple is stored and taken at most as often as it was put.
        for values, times in self._put.items():
            found = held[values] + len(removed.get(values, [])) - unsure[values]
            if found > times:
                self._fail(
                    f"exactly once: {values} put {times} time(s), but the space holds"
                    f" {held[values]} and its log says {removed.get(values, [])} took it",
                    values,
                    *removed.get(values, []),
                )
        for pid, (event, state) in sorted(self._checkpoints.items()):
            op = self.ops[(pid, event)]
            if op.ended is None or op.ended < self.wiped_at:
                continue
            last = space.recovered(pid)
            if last is None or last[0] < event:
                self._fail(f"no loss: checkpoint {(pid, event)} answered, the space has {last}")
            if last[0] == event and _checkpoint.unpack(last[1], restore=False) != list(state):
                self._fail(f"no loss: checkpoint {(pid, event)} holds {last}, not {state}")

    def _check_op(
        self,
        op: _Op,
        logged: Completion | None,
        held: Counter[LTuple],
        removed: dict[LTuple, list[tuple[int, int]]],
    ) -> None:
        key = op.key
        exempt = op.ended is not None and op.ended < self.wiped_at
        if op.kind is Kind.OUT:
            values = op.values
            assert values is not None
            gone = not held[values] and values not in removed
            if gone and self._unknown_forgotten_takes:
                # A take of unknown outcome by a process the space has forgotten may
                # have taken it, with no log left to say so.
                self.counts["outs gone, maybe taken by a forgotten take"] += 1
                return
            if op.outcome == "stored" and not exempt and gone:
                self._fail(f"no loss: the answered {op.describe()} is gone", key, values)
            return
        if op.kind is Kind.CHECKPOINT:
            return
        if logged is not None:
            value = logged.value
            assert value is not None
            if op.outcome == "matched":
                if op.value != value:
                    self._fail(
                        f"exactly once: {op.describe()} was told {op.value}, the log says"
                        f" it took {value}",
                        key,
                        value,
                        op.value,
                    )
            elif op.outcome == "unknown":
                self.counts["outcomes unknown, a tuple taken"] += 1
            elif not op.kind.removes:
                self.counts[f"rd told {op.outcome} though it read"] += 1
            elif self._put_back.get(value):
                self.counts["tuples put back"] += 1
            else:
                told = "Timeout" if op.outcome == "timeout" else op.error or op.outcome
                sends = ", ".join(
                    f"m{n} ({mode}{'' if t is None else f', timeout {t:.2f}'})"
                    for n, t, mode in op.sends
                )
                self._fail(
                    f"lost tuple: {op.describe()} ended in {told} at t={op.ended:.4f}, but"
                    f" the space's log says it took {value}; it was sent to {sends}",
                    key,
                    value,
                )
            if op.kind.removes and held[value] and not self._put_back.get(value):
                self._fail(
                    f"invented: {op.describe()} took {value}, which the space still holds",
                    key,
                    value,
                )
        elif op.outcome == "matched" and not exempt:
            self._fail(
                f"no loss: {op.describe()} was told {op.value}, the log says"
                f" {None if logged is None else logged.status.name}",
                key,
                op.value,
            )

    # -- reporting --------------------------------------------------------------------------

    def _fail(self, what: str, *tags: object) -> NoReturn:
        raise InvariantViolation(
            f"seed {self.seed} at t={self.now:.4f} step {self.steps}: {what}\n"
            f"  scenario: {self.cluster}\n  replay: {replay_command(self.seed)}"
            + "".join(f"\n    {line}" for line in self.excerpt(tags))
        )

    def excerpt(self, tags: Iterable[object], most: int = 40) -> list[str]:
        """The trace around C{tags}: their events, and every fault and mode change near."""
        wanted = set(tags)
        mine = [i for i, (_, _, t) in enumerate(self.trace) if wanted.intersection(t)]
        chosen = set(mine)
        if not mine:
            lines = self.trace[-most:]
        else:
            lo, hi = self.trace[mine[0]][0] - 0.5, self.trace[mine[-1]][0] + 0.2
            lines = [
                entry
                for i, entry in enumerate(self.trace)
                if i in chosen or (not entry[2] and lo <= entry[0] <= hi)
            ][-most:]
        header = ["trace:"] if not mine else [f"trace of {', '.join(map(str, wanted))}:"]
        return header + [f"  {t:8.4f}  {text}" for t, text, _ in lines]

    def summary(self) -> Iterator[str]:
        yield from super().summary()
        outcomes = Counter(op.outcome or "unanswered" for op in self.ops.values())
        yield f"{len(self.ops)} operations: " + ", ".join(
            f"{n} {o}" for o, n in sorted(outcomes.items())
        )
        for name, n in sorted(self.counts.items()):
            yield f"  {n:5} {name}"
        failovers = sum(
            p.failovers + (p.client.failovers if p.client is not None else 0)
            for p in self.processes
        )
        yield f"{failovers} failovers, {self._pipes} connections"


def _final(reply: Message) -> tuple[str | None, LTuple | None]:
    """A final answer as (outcome, tuple); (None, None) for any other reply."""
    if isinstance(reply, Matched):
        return "matched", reply.tuple
    if isinstance(reply, NoMatch):
        return "none", None
    if isinstance(reply, Stored):
        return "stored", None
    if isinstance(reply, TimedOut):
        return "timeout", None
    return None, None


def _advance(clock: Clock, now: float) -> bool:
    """Bring C{clock} to C{now}, firing what came due; whether anything was due."""
    clock.rightNow = max(clock.rightNow, now)
    calls = clock.getDelayedCalls()
    if calls and min(c.getTime() for c in calls) <= clock.rightNow:
        clock.advance(0)
        return True
    return False
