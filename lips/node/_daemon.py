"""
lipsd's daemon duties (Chameleon's daemon): the Twisted service that hosts the daemon
core (L{lips.armor.Daemon}) on a L{lips.kernel.Driver}, and owns what the core talks to.

  - The local link: a UNIX socket in a runtime directory of mode 0700 (only lipsd's
    user can connect), where the ARMOR processes connect (L{lips.protocols.LocalLink}).
  - The daemon link: a listening TCP endpoint (C{--armor-listen}) for the other nodes'
    daemons, and the links this daemon dials (L{lips.protocols.DaemonLink}), both
    authenticated with the cluster key.  Where to dial a node is the endpoint its
    daemon advertises in the System Tuple Space, C{("armor-daemon", node, endpoint)}
    (L{daemon_template}): written by that node's lipsd when it starts, in the place of
    the one of its previous run; only the node writes its own.  A wrong endpoint
    there cannot make a peer believed: the peer must still prove the cluster key and
    name the node dialed.
  - The ARMOR processes: started with L{ArmorSpawner}, lipsd's L{ReactorSpawner}
    with one more kind of child (C{python -m lips.armor.process}).
  - The ARMOR table, in the System Tuple Space, through lipsd's client: the core's
    L{Lookup}, L{Register} and L{Unregister} become an C{rdp}, one atomic request
    (L{register}) and an C{inp} of L{ArmorRow} tuples, in order.
  - The spaces (L{SpacePeer}): a L{SpaceCall} for C{space.system} (a local ARMOR's
    request, or the core's own: the epoch to join, the FTM's table to sweep against) is
    carried out on lipsd's System Tuple Space client, in order with the table work, as
    one atomic request (L{carry_out}): all or nothing at one point of the space's total
    order, so two FTMs' guarded writes never interleave.  An application's space
    (C{space.<app>}) has no client here: its requests are answered failed at once and
    counted (C{space.refused}).

Two links between the same two nodes (both dialed at once) are resolved the same way on
both sides: the one dialed by the node whose name sorts first stays.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

from twisted.application import service
from twisted.internet import defer, error
from twisted.internet.endpoints import (
    UNIXServerEndpoint,
    clientFromString,
    connectProtocol,
    serverFromString,
    wrapClientTLS,
    wrapServerTLS,
)
from twisted.internet.interfaces import IListeningPort, IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from lips.armor import (
    TABLE,
    ArmorHello,
    ArmorId,
    ArmorRow,
    ArmorSpec,
    AttachHello,
    Daemon,
    Dial,
    LocalPeer,
    Lookup,
    Message,
    NodePeer,
    Ping,
    Register,
    SpaceCall,
    SpacePeer,
    Unregister,
    armor_template,
    link_key,
)
from lips.armor.process import SOCKET_NAME, stdin_input
from lips.armor.process import environment as process_environment
from lips.armor.space import SYSTEM_SPACE, SpaceReply, SpaceRequest
from lips.armor.zygote import FrameBuffer
from lips.armor.zygote import encode_frame as encode_zygote_frame
from lips.kernel import Driver, Kill, Send, Spawn
from lips.node._process import IChild, ReactorSpawner
from lips.node._state import SystemSpace
from lips.protocols import (
    DaemonLink,
    DaemonLinkFactory,
    IDaemonLinkHost,
    ILocalLinkHost,
    LocalLink,
    LocalLinkFactory,
)
from lips.supervisor import Exit
from lips.tuples import MAX_STEPS, AtomicAborted, Step, StepOp, StepResult, TupleError, Tuples

__all__ = [
    "DAEMON_TAG",
    "ArmorSpawner",
    "DaemonService",
    "ZygoteSpawner",
    "IArmorChild",
    "IArmorSpawner",
    "daemon_template",
    "prepare_runtime",
    "register",
]

T = TypeVar("T")

#: The first field of the tuple where a node's daemon says where it listens.
DAEMON_TAG: Final = "armor-daemon"
#: Zygote ends within a minute after which lipsd starts ARMOR processes without one.
MAX_ZYGOTE_DEATHS: Final = 3
#: Seconds a dial may take to connect (the handshake has its own deadline).
DIAL_TIMEOUT: Final = 5.0
#: Seconds between tries to write this daemon's endpoint while the space is unreachable.
RETRY_DELAY: Final = 1.0


def daemon_template(node: str | None = None) -> tuple[Any, ...]:
    """The template of the daemons' endpoint tuples: all, or C{node}'s."""
    return (DAEMON_TAG, str if node is None else node, str)


#: The step of each kind of space operation (L{lips.armor.space.SpaceOp}).
_STEP_OF: Final = {
    "out": StepOp.OUT,
    "inp": StepOp.INP,
    "rdp": StepOp.RDP,
    "absent": StepOp.ABSENT,
    "scan": StepOp.SCAN,
    "delete": StepOp.DELETE,
}
#: Ends a request that must abort: stores this tuple, then fails on it.
_ABORT: Final = (Step.out(("lipsd-invalid-operation",)), Step.absent(("lipsd-invalid-operation",)))


async def register(client: _Client, row: ArmorRow) -> tuple[bool, str]:
    """
    Put C{row} in the ARMOR table in the place of the rows of its ARMOR, in one atomic
    request (delete them, put it); whether it went in, and if not why: a row of a newer
    incarnation was there, and is put back in the place of C{row} (a second request,
    which only a registration racing a newer one needs).  Malformed rows of the ARMOR go.
    """
    deleted, _ = await client.atomic(
        [Step.delete(armor_template(row.armor)), Step.out(row.as_tuple())]
    )
    assert isinstance(deleted, Tuples)
    newer = []
    for values in deleted:
        with contextlib.suppress(ValueError):  # a malformed row: it goes
            other = ArmorRow.from_tuple(values)
            if other.incarnation > row.incarnation:
                newer.append(values)
    if not newer:
        return True, ""
    await client.atomic([Step.inp(row.as_tuple()), *(Step.out(values) for values in newer)])
    best = max(map(ArmorRow.from_tuple, newer), key=lambda r: r.incarnation)
    return False, f"incarnation {best.incarnation} runs on {best.node}"


async def carry_out(client: _Client, request: SpaceRequest) -> SpaceReply:
    """
    Carry C{request} out on C{client} as one atomic request (see the module docstring):
    each operation one step, its template its fields with the positions in C{wild}
    L{ANY<lips.tuples.ANY>}.  The reply is what the simulator's model
    (L{TableSpace<lips.armor.space.TableSpace>}) answers: every value in order (the
    tuple an C{inp} or C{rdp} found, the tuples of a C{scan}, how many a C{delete}
    took, None otherwise), or, nothing applied, the number of the first operation that
    failed.  Beyond the model, an operation also fails where the space bounds it (a
    C{scan} or C{delete} of more than L{MAX_SCAN<lips.tuples.MAX_SCAN>} tuples, or the
    tuples read and taken past the size limit: its C{TOO_LARGE}), and a request whose
    tuples and templates together pass the size limit fails at its last operation.

    An operation whose fields are no tuple or template fails there, as in the model,
    after the ones before it: those are sent with a guard that always aborts, so the
    space says whether one of them fails first and nothing is applied (but for an
    invalid operation beyond the first C{MAX_STEPS - 2}, answered failed at once).

    @raise Exception: what the client raises when the space cannot be reached.
    """
    steps: list[Step] = []
    for number, op in enumerate(request.ops):
        try:
            step = (
                Step.out(op.fields) if op.kind == "out" else Step(_STEP_OF[op.kind], op.compiled())
            )
        except TupleError:
            if not steps or number > MAX_STEPS - len(_ABORT):
                return SpaceReply(request.request, False, number)
            try:
                await client.atomic([*steps, *_ABORT])
            except AtomicAborted as e:
                return SpaceReply(request.request, False, min(e.step, number))
            except TupleError:  # the steps before it pass the size limit
                return SpaceReply(request.request, False, number)
            raise RuntimeError("a request meant to abort was applied") from None
        steps.append(step)
    try:
        results = await client.atomic(steps)
    except AtomicAborted as e:
        return SpaceReply(request.request, False, e.step)
    except TupleError:  # the steps together pass the size limit: nothing was sent
        return SpaceReply(request.request, False, len(steps) - 1)
    return SpaceReply(
        request.request,
        True,
        -1,
        tuple(
            _space_value(op.kind, result) for op, result in zip(request.ops, results, strict=True)
        ),
    )


def _space_value(kind: str, result: StepResult) -> Any:
    """A reply's value for an operation of C{kind}, from its step's C{result}."""
    if kind == "scan":
        return tuple(result or ())
    if kind == "delete":
        return len(result or ())
    return result


def prepare_runtime(path: str | os.PathLike[str]) -> Path:
    """
    Make the runtime directory C{path} (mode 0700), or check the one there: a directory
    of this user's that no one else may enter.

    @return: the directory.
    @raise ValueError: if it is not such a directory.
    """
    directory = Path(path)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = directory.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise ValueError(f"{directory} is not a directory")
    if info.st_uid != os.getuid():
        raise ValueError(f"{directory} belongs to another user (uid {info.st_uid})")
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise ValueError(
            f"{directory} may be entered by others (mode {stat.S_IMODE(info.st_mode):04o}):"
            " the ARMOR processes' socket must be lipsd's user's alone; chmod 700 it"
        )
    return directory


# -- the ARMOR processes --------------------------------------------------------------------


class IArmorChild(IChild):
    """A running ARMOR process."""

    def kill() -> None:
        """Force it to end (SIGKILL): a stopped or hung process ignores SIGTERM."""


class IArmorSpawner(Interface):
    """Starts ARMOR processes: what carries out the daemon core's L{Spawn} effects."""

    def spawn_armor(spec: ArmorSpec, socket: str, ended: Callable[[Exit], None]) -> IArmorChild:
        """
        Start the process of C{spec}, linked to the daemon at C{socket}; call C{ended}
        once, later, when it ends.

        @raise Exception: if it cannot be started (the core fails its install).
        """


@implementer(IArmorChild)
class _ArmorChild:
    def __init__(self, transport: IProcessTransport) -> None:
        self._transport = transport

    @property
    def os_pid(self) -> int | None:
        pid = self._transport.pid
        return pid if isinstance(pid, int) else None

    def terminate(self) -> None:
        with contextlib.suppress(error.ProcessExitedAlready):
            self._transport.signalProcess("TERM")

    def kill(self) -> None:
        with contextlib.suppress(error.ProcessExitedAlready):
            self._transport.signalProcess("KILL")


@implementer(IArmorSpawner)
class ArmorSpawner(ReactorSpawner):
    """
    lipsd's spawner (L{ReactorSpawner}: its eval children) that also starts ARMOR
    processes: C{python -m lips.armor.process}, with the same executable, C{PYTHONPATH}
    and working directory as the eval children, the ARMOR's id, type, manager,
    incarnation and socket in the environment, its configuration and token on
    standard input (L{lips.armor.process}).
    """

    def armor_environment(self, spec: ArmorSpec, socket: str) -> dict[str, str]:
        """The environment of C{spec}'s process."""
        env = dict(os.environ)
        path = [*self._pythonpath, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
        if path:
            env["PYTHONPATH"] = os.pathsep.join(path)
        env.update(process_environment(spec, socket))
        return env

    def spawn_armor(
        self, spec: ArmorSpec, socket: str, ended: Callable[[Exit], None]
    ) -> IArmorChild:
        transport = self.start(
            ["lips.armor.process"], self.armor_environment(spec, socket), stdin_input(spec), ended
        )
        return _ArmorChild(transport)


class _Zygote(ProcessProtocol):
    """lipsd's end of one zygote (L{lips.armor.zygote}): its requests and its news."""

    log = Logger()

    def __init__(self, spawner: ZygoteSpawner) -> None:
        self.spawner = spawner
        self.children: dict[int, _ZygoteChild] = {}
        self.alive = True
        #: Fires when the zygote process has ended.
        self.ended: defer.Deferred[None] = defer.Deferred()
        self._frames = FrameBuffer()
        self._handles = iter(range(1, 1 << 62))

    def fork(
        self, env: dict[str, str], stdin: bytes, ended: Callable[[Exit], None]
    ) -> _ZygoteChild:
        assert self.transport is not None
        handle = next(self._handles)
        child = self.children[handle] = _ZygoteChild(ended)
        self.transport.write(encode_zygote_frame("fork", handle, env, stdin))
        return child

    def outReceived(self, data: bytes) -> None:
        try:
            for frame in self._frames.feed(data):
                self._news(frame)
        except (ValueError, TypeError) as e:
            self.log.error("The ARMOR zygote said something wrong ({error}): ending it", error=e)
            self.stop()

    def _news(self, frame: list[Any]) -> None:
        kind, handle = frame[0], frame[1] if len(frame) > 1 else None
        if type(handle) is not int or handle not in self.children:
            raise ValueError(f"news of no child: {frame[:2]!r}")
        child = self.children[handle]
        if kind == "forked" and len(frame) == 3 and type(frame[2]) is int:
            child.forked(frame[2])
        elif kind == "failed" and len(frame) == 3:
            del self.children[handle]
            child.end(Exit(error=f"the zygote could not fork: {frame[2]}"))
        elif kind == "ended" and len(frame) == 4:
            del self.children[handle]
            code, sig = frame[2], frame[3]
            child.end(Exit(code=code, signal=sig))
        else:
            raise ValueError(f"unknown news {kind!r}")

    def stop(self) -> None:
        if self.transport is not None:
            with contextlib.suppress(error.ProcessExitedAlready):
                self.transport.signalProcess("KILL")

    def processEnded(self, reason: Failure) -> None:
        self.alive = False
        self.spawner.zygote_ended(self, reason.getErrorMessage())
        children, self.children = self.children, {}
        for child in children.values():
            child.kill()  # one it forked and can no longer report on
            child.end(Exit(error="its zygote ended"))
        self.ended.callback(None)


@implementer(IArmorChild)
class _ZygoteChild:
    """An ARMOR process a zygote forked (or is forking: signals wait for its pid)."""

    def __init__(self, ended: Callable[[Exit], None]) -> None:
        self._ended = ended
        self.pid: int | None = None
        self._pending: int | None = None
        self._done = False

    @property
    def os_pid(self) -> int | None:
        return self.pid

    def forked(self, pid: int) -> None:
        self.pid = pid
        if self._pending is not None:
            self._signal(self._pending)

    def end(self, exit: Exit) -> None:
        if not self._done:
            self._done = True
            self._ended(exit)

    def _signal(self, number: int) -> None:
        if self._done:
            return
        if self.pid is None:
            self._pending = number if self._pending != signal.SIGKILL else self._pending
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, number)

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)


@implementer(IArmorSpawner)
class ZygoteSpawner(ArmorSpawner):
    """
    lipsd's spawner whose ARMOR processes are forked by a zygote
    (C{python -m lips.armor.zygote}), which has imported what they run: an install costs
    a fork instead of an interpreter's start and its imports.  The zygote is started
    with the first install and again after it ends (what it had forked is then killed
    and reported ended); after L{MAX_ZYGOTE_DEATHS} ends within a minute, or when it
    cannot be started at all, ARMOR processes are started as L{ArmorSpawner} starts
    them.
    """

    log = Logger()

    def __init__(self, reactor: Any, **kwargs: Any) -> None:
        super().__init__(reactor, **kwargs)
        self._zygote: _Zygote | None = None
        self._deaths: list[float] = []
        self.disabled = False

    def _zygote_(self) -> _Zygote | None:
        if self.disabled:
            return None
        if self._zygote is None or not self._zygote.alive:
            zygote = _Zygote(self)
            env = self.armor_environment_base()
            exe = self._executable
            try:
                self._reactor.spawnProcess(
                    zygote,
                    exe,
                    [exe, "-m", "lips.armor.zygote"],
                    env=env,
                    path=self._cwd,
                    childFDs={0: "w", 1: "r", 2: 2},
                )
            except OSError as e:
                self.log.warn("Cannot start the ARMOR zygote ({error})", error=e)
                self.disabled = True
                return None
            self._zygote = zygote
        return self._zygote

    def armor_environment_base(self) -> dict[str, str]:
        """The environment of the zygote: lipsd's, with the ARMORs' C{PYTHONPATH}."""
        env = dict(os.environ)
        path = [*self._pythonpath, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
        if path:
            env["PYTHONPATH"] = os.pathsep.join(path)
        return env

    def zygote_ended(self, zygote: _Zygote, reason: str) -> None:
        now = self._reactor.seconds()
        self._deaths = [t for t in self._deaths if now - t < 60.0] + [now]
        if self._zygote is zygote:
            self._zygote = None
        if len(self._deaths) >= MAX_ZYGOTE_DEATHS and not self.disabled:
            self.disabled = True
            self.log.warn(
                "The ARMOR zygote ended {count} times within a minute ({reason}):"
                " ARMOR processes are started without it from now on",
                count=len(self._deaths),
                reason=reason,
            )

    def spawn_armor(
        self, spec: ArmorSpec, socket: str, ended: Callable[[Exit], None]
    ) -> IArmorChild:
        zygote = self._zygote_()
        if zygote is None:
            return super().spawn_armor(spec, socket, ended)
        return zygote.fork(self.armor_environment(spec, socket), stdin_input(spec), ended)

    def warm(self) -> None:
        """Start the zygote now, so that it has imported everything by the first install."""
        self._zygote_()

    def stop(self) -> defer.Deferred[None]:
        """
        End the zygote: it exits at the end of its input (the processes it forked are
        not touched: they end with their links).  Fires once it has ended.
        """
        zygote, self._zygote = self._zygote, None
        if zygote is None or not zygote.alive or zygote.transport is None:
            return defer.succeed(None)
        zygote.transport.closeStdin()
        return zygote.ended


# -- the service ---------------------------------------------------------------------------


class _Client(SystemSpace, Protocol):
    @property
    def state(self) -> str: ...

    def atomic(self, steps: Sequence[Step]) -> defer.Deferred[tuple[StepResult, ...]]: ...

    def close(self) -> defer.Deferred[None]: ...


Connect = Callable[[], defer.Deferred[Any]]


def _synchronously(d: defer.Deferred[T]) -> T:
    """The result of C{d}, which a real reactor's listen fires at once; raise its failure."""
    result: list[Any] = []
    d.addBoth(result.append)
    if not result:
        raise RuntimeError("the endpoint did not listen at once")
    if isinstance(result[0], Failure):
        result[0].raiseException()
    value: T = result[0]
    return value


@implementer(IDaemonLinkHost, ILocalLinkHost)
class DaemonService(service.Service):
    """
    The daemon of node C{daemon.node} in lipsd (see the module docstring).

    @param daemon: the core.
    @param spawner: starts the ARMOR processes (L{ArmorSpawner} in lipsd).
    @param connect: a client of the System Tuple Space (the ARMOR table, the endpoints).
    @param reactor: the reactor (listening, dialing, the driver's clock).
    @param key: the cluster key (the links' proofs use a key derived from it).
    @param runtime: the runtime directory (made or checked: L{prepare_runtime}).
    @param listen: the daemon link's server endpoint (C{tcp:7301:interface=...}); None
        to listen for no other daemon (this node then only dials).
    @param advertise: the client endpoint other daemons dial (C{tcp:host=...:port=...});
        None to write none (no daemon can dial this one).
    @param tls: TLS for the daemon links, both the listening and the dialed ones (a
        L{twisted.internet.ssl.CertificateOptions} that requires the peer's
        certificate), or None for plain TCP; every daemon of a cluster must agree.
    @ivar counters: the driver's, the links' and the adapter's (C{messages.unsent},
        C{table.failed}), in one.
    """

    log = Logger()

    def __init__(
        self,
        daemon: Daemon,
        spawner: IArmorSpawner,
        connect: Connect,
        reactor: Any,
        *,
        key: bytes,
        runtime: str | os.PathLike[str],
        listen: str | None = None,
        advertise: str | None = None,
        tls: Any = None,
        max_links: int = 64,
        max_local: int = 128,
        handshake_timeout: float = 5.0,
        dial_timeout: float = DIAL_TIMEOUT,
    ) -> None:
        if not isinstance(daemon, Daemon):
            raise TypeError(f"not a Daemon: {daemon!r}")
        if not IArmorSpawner.providedBy(spawner):
            raise TypeError(f"not an IArmorSpawner: {spawner!r}")
        self.daemon = daemon
        self.spawner = spawner
        self.reactor = reactor
        self.node = daemon.node
        self.key = link_key(key)
        self.runtime = Path(runtime)
        self.socket = str(self.runtime / SOCKET_NAME)
        self.listen = listen
        self.advertise = advertise
        self.tls = tls
        self.dial_timeout = dial_timeout
        self.counters: Counter[str] = Counter()
        self.driver = Driver(
            daemon,
            reactor,
            {Send: self._send, Spawn: self._spawn, Kill: self._kill},
            counters=self.counters,
        )
        self.local_factory = LocalLinkFactory(
            self,
            self.counters,
            reactor,
            node=self.node,
            key=self.key,
            max_links=max_local,
            handshake_timeout=handshake_timeout,
        )
        self.link_factory = DaemonLinkFactory(
            self,
            self.node,
            self.key,
            self.counters,
            reactor,
            max_links=max_links,
            handshake_timeout=handshake_timeout,
        )
        self._connect = connect
        self._client: _Client | None = None
        self._ports: list[IListeningPort] = []
        self._children: dict[int, IArmorChild | None] = {}
        self._killed: set[int] = set()
        self._locals: dict[tuple[ArmorId, int], LocalLink] = {}
        # The processes that attached themselves: their handles and links, both ways.
        self._attached: dict[int, LocalLink] = {}
        self._handles: dict[LocalLink, int] = {}
        self._links: dict[str, DaemonLink] = {}
        self._dialing: dict[str, DaemonLink | None] = {}
        self._table: defer.Deferred[None] = defer.succeed(None)
        self._work: set[defer.Deferred[Any]] = set()

    # -- the service -----------------------------------------------------------------------

    def privilegedStartService(self) -> None:
        """
        Listen (as root, if twistd runs so): the socket in its runtime directory, and
        the daemon link's endpoint.  A directory that is not lipsd's user's alone, or an
        endpoint that cannot listen, ends twistd with one line saying so.
        """
        service.Service.privilegedStartService(self)
        self._listen()

    def _listen(self) -> None:
        what = self.socket
        try:
            prepare_runtime(self.runtime)
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(os.lstat(self.socket).st_mode):
                    os.unlink(self.socket)  # a previous run's
            local = UNIXServerEndpoint(self.reactor, self.socket, mode=0o600)
            self._ports.append(_synchronously(local.listen(self.local_factory)))
            if self.listen is not None:
                what = self.listen
                endpoint = serverFromString(self.reactor, self.listen)
                if self.tls is not None:
                    endpoint = wrapServerTLS(self.tls, endpoint)
                self._ports.append(_synchronously(endpoint.listen(self.link_factory)))
        except (error.CannotListenError, OverflowError, OSError, ValueError) as e:
            for port in self._ports:
                port.stopListening()
            self._ports = []
            reason = e.socketError if isinstance(e, error.CannotListenError) else e
            raise SystemExit(f"daemon {self.node}: cannot listen on {what}: {reason}") from None

    def startService(self) -> None:
        """Listen (unless it did already), then advertise where."""
        if not self._ports:
            self._listen()
        service.Service.startService(self)
        self.log.info(
            "Daemon {daemon} runs: ARMOR processes at {socket}, daemon link at {listen}",
            daemon=self.daemon.id,
            socket=self.socket,
            listen=self.listen or "(none)",
        )
        warm = getattr(self.spawner, "warm", None)
        if callable(warm):  # a ZygoteSpawner: its zygote imports while lipsd joins
            warm()
        if self.advertise is not None:
            self._spawn_work(self._advertise(self.advertise))
        self.driver.input(self.daemon.start)

    def stopService(self) -> defer.Deferred[None]:
        service.Service.stopService(self)
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self.driver.input(self.daemon.stop)
        deadline = self.reactor.seconds() + self.daemon.policy.kill_grace + 1.0
        while self._children and self.reactor.seconds() < deadline:
            await deferLater(self.reactor, 0.05)
        for port in self._ports:
            await defer.maybeDeferred(port.stopListening)
        self._ports = []
        for link in [*self._links.values(), *self._locals.values(), *self.link_factory.open]:
            link.hangup(f"daemon {self.node} stops")
        with contextlib.suppress(Exception):
            await _within(self.reactor, self._table, 2.0)
        self.driver.stop()
        for d in list(self._work):
            d.cancel()
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket)
        stop = getattr(self.spawner, "stop", None)
        if callable(stop):  # a ZygoteSpawner's zygote
            stop()

    def _spawn_work(self, work: Coroutine[Any, Any, Any]) -> None:
        d: defer.Deferred[Any] = defer.Deferred.fromCoroutine(work)
        self._work.add(d)

        def done(result: object) -> None:
            self._work.discard(d)
            if isinstance(result, Failure) and not result.check(defer.CancelledError):
                self.log.failure("Daemon {node}: work failed", result, node=self.node)

        d.addBoth(done)

    async def _client_(self) -> _Client:
        if self._client is None:
            self._client = await self._connect()
        return self._client

    def _dead_client(self) -> None:
        client = self._client
        if client is not None and client.state in ("failed", "closed"):
            self._client = None

    async def _advertise(self, endpoint: str) -> None:
        """Write this daemon's endpoint, in the place of any older one of this node."""
        while self.running:
            try:
                client = await self._client_()
                while await client.inp(daemon_template(self.node)) is not None:
                    pass
                await client.out((DAEMON_TAG, self.node, endpoint))
            except defer.CancelledError:
                return
            except Exception as e:
                self.log.warn(
                    "Daemon {node} could not advertise its endpoint yet: {error}",
                    node=self.node,
                    error=str(e),
                )
                self._dead_client()
                await deferLater(self.reactor, RETRY_DELAY)
                continue
            self.log.info("Daemon {node} listens at {endpoint}", node=self.node, endpoint=endpoint)
            return

    # -- the table -------------------------------------------------------------------------

    def _in_table(
        self, work: Callable[[_Client], Awaitable[T]], answer: Callable[[T], None]
    ) -> None:
        """Run C{work} on the space after the table work before it; C{answer} its result."""

        async def run(_: object) -> None:
            try:
                client = await self._client_()
                result = await work(client)
            except Exception as e:
                self.counters["table.failed"] += 1
                self.log.warn("Daemon {node}: ARMOR table: {error}", node=self.node, error=str(e))
                self._dead_client()
                return
            if not self.driver.stopped:
                answer(result)

        self._table = self._table.addCallback(lambda r: defer.Deferred.fromCoroutine(run(r)))

    def _lookup(self, armor: ArmorId) -> None:
        async def work(client: _Client) -> str | None:
            found = await client.rdp(armor_template(armor))
            if found is None:
                return None
            return ArmorRow.from_tuple(found).node

        self._in_table(work, lambda node: self.driver.input(self.daemon.located, armor, node))

    def _register(self, row: ArmorRow) -> None:
        self._in_table(
            lambda client: register(client, row),
            lambda result: self.driver.input(
                self.daemon.registered, row.armor, row.incarnation, *result
            ),
        )

    def _unregister(self, row: ArmorRow) -> None:
        async def work(client: _Client) -> None:
            await client.inp(row.as_tuple())

        self._in_table(work, lambda _: None)

    def _space_call(self, peer: SpacePeer, call: SpaceCall) -> None:
        """Carry out a space request: on the System Tuple Space, or refuse it."""
        request = call.request

        def answer(reply: SpaceReply) -> None:
            self.driver.input(self.daemon.space_answered, call.call, reply)

        if peer.id != SYSTEM_SPACE:
            self.counters["space.refused"] += 1
            self.log.warn(
                "Daemon {node}: no client of {space} here (only the System Tuple Space):"
                " request refused",
                node=self.node,
                space=peer.id,
            )
            answer(SpaceReply(request.request, False, 0))
            return

        async def run(_: object) -> None:
            try:
                client = await self._client_()
                reply = await carry_out(client, request)
            except Exception as e:
                # The space could not be reached: the request failed as a whole.
                self.counters["space.failed"] += 1
                self.log.warn(
                    "Daemon {node}: {space}: {error}", node=self.node, space=peer.id, error=str(e)
                )
                self._dead_client()
                reply = SpaceReply(request.request, False, 0)
            if not self.driver.stopped:
                answer(reply)

        self._table = self._table.addCallback(lambda r: defer.Deferred.fromCoroutine(run(r)))

    # -- the core's effects -------------------------------------------------------------------

    def _send(self, effect: Send[Any]) -> None:
        to, what = effect.to, effect.message
        if isinstance(to, LocalPeer):
            local = self._locals.get((to.armor, to.incarnation))
            sent = False
            if local is not None:
                if isinstance(what, Message):
                    sent = local.send_message(what)
                elif isinstance(what, Ping):
                    sent = local.send_ping(what.seq)
            if not sent:
                self.counters["messages.unsent"] += 1
        elif isinstance(to, NodePeer):
            if isinstance(what, Dial):
                self._dial(to.node)
                return
            link = self._links.get(to.node)
            if link is None or not link.send_message(what):
                self.counters["messages.unsent"] += 1
        elif isinstance(to, SpacePeer):
            if not isinstance(what, SpaceCall):
                raise TypeError(f"not for a space: {what!r}")
            self._space_call(to, what)
        elif to is TABLE:
            if isinstance(what, Lookup):
                self._lookup(what.armor)
            elif isinstance(what, Register):
                self._register(what.row)
            elif isinstance(what, Unregister):
                self._unregister(what.row)
            else:
                raise TypeError(f"not for the ARMOR table: {what!r}")
        else:
            raise TypeError(f"no such peer: {to!r}")

    def _spawn(self, effect: Spawn[ArmorSpec]) -> None:
        handle = effect.handle

        def ended(exit: Exit) -> None:
            self._children.pop(handle, None)
            self._killed.discard(handle)
            self.driver.input(self.daemon.ended, handle, exit.describe())

        self._children[handle] = None
        try:
            child = self.spawner.spawn_armor(effect.spec, self.socket, ended)
        except Exception as e:
            self._children.pop(handle, None)
            ended(Exit(error=f"{type(e).__name__}: {e}"))
            return
        if handle in self._children:  # it may have ended already
            self._children[handle] = child

    def _kill(self, effect: Kill) -> None:
        link = self._attached.get(effect.handle)
        if link is not None:  # a process that attached itself: hang up on it
            link.hangup(f"daemon {self.node} ends it")
            return
        child = self._children.get(effect.handle)
        if child is None:
            return
        if effect.handle in self._killed:
            child.kill()
        else:
            self._killed.add(effect.handle)
            child.terminate()

    # -- dialing --------------------------------------------------------------------------------

    def _dial(self, node: str) -> None:
        if node in self._links or node in self._dialing:
            if node in self._links:  # up already (it dialed us): say so again
                self.driver.input(self.daemon.peer_up, node)
            return
        self._dialing[node] = None
        self._spawn_work(self._dial_(node))

    async def _dial_(self, node: str) -> None:
        try:
            client = await self._client_()
            found = await client.rdp(daemon_template(node))
            if found is None:
                raise LookupError(f"node {node} advertises no daemon endpoint")
            endpoint = clientFromString(self.reactor, found[2])
            if self.tls is not None:  # this daemon's own TLS, never the advertiser's
                endpoint = wrapClientTLS(self.tls, endpoint)
            link = DaemonLink(
                self,
                self.node,
                self.key,
                self.counters,
                self.reactor,
                dialer=True,
                expect=node,
                handshake_timeout=self.link_factory.handshake_timeout,
            )
            self._dialing[node] = link
            await _within(self.reactor, connectProtocol(endpoint, link), self.dial_timeout)
        except defer.CancelledError:
            raise
        except Exception as e:
            self._dial_failed(node, f"{type(e).__name__}: {e}")

    def _dial_failed(self, node: str, reason: str) -> None:
        self._dialing.pop(node, None)
        if node not in self._links and not self.driver.stopped:
            self.driver.input(self.daemon.peer_down, node, reason)

    # -- IDaemonLinkHost ---------------------------------------------------------------------

    def peer_authenticated(self, link: DaemonLink) -> bool:
        node = link.peer
        assert node is not None
        if self._dialing.get(node) is link:
            del self._dialing[node]
        current = self._links.get(node)
        if current is None:
            self._links[node] = link
            self.driver.input(self.daemon.peer_up, node)
            return True
        first = min(self.node, node)
        if self._dialer(link) == first and self._dialer(current) != first:
            self._links[node] = link
            current.hangup(f"replaced by the link {first} dialed")
            return True
        return False

    def _dialer(self, link: DaemonLink) -> str | None:
        return self.node if link.dialer else link.peer

    def peer_message(self, link: DaemonLink, message: Message) -> None:
        node = link.peer
        if node is not None and self._links.get(node) is link:
            self.driver.input(self.daemon.peer_message, node, message)
        else:
            self.counters["messages.stale"] += 1

    def peer_lost(self, link: DaemonLink, reason: str) -> None:
        node = link.peer
        if node is not None and self._links.get(node) is link:
            del self._links[node]
            if not self.driver.stopped:
                self.driver.input(self.daemon.peer_down, node, reason)
            return
        if link.dialer and link.expect is not None and self._dialing.get(link.expect) is link:
            self._dial_failed(link.expect, reason)

    # -- ILocalLinkHost ----------------------------------------------------------------------

    def armor_hello(self, link: LocalLink, hello: ArmorHello) -> bool:
        key = (hello.armor, hello.incarnation)
        if key in self._locals:
            return False
        ok = self.driver.input(
            self.daemon.local_hello, hello.armor, hello.incarnation, hello.token
        )
        if ok:
            self._locals[key] = link
        return ok

    def armor_attach(self, link: LocalLink, hello: AttachHello) -> bool:
        key = (hello.armor, hello.incarnation)
        if key in self._locals:
            return False
        handle = self.driver.input(
            self.daemon.local_attach, hello.armor, hello.incarnation, hello.type
        )
        if handle is None:
            return False
        self._locals[key] = link
        self._attached[handle] = link
        self._handles[link] = handle
        return True

    def armor_message(self, link: LocalLink, message: Message) -> None:
        assert link.armor is not None
        self.driver.input(self.daemon.local_message, link.armor, link.incarnation, message)

    def armor_pong(self, link: LocalLink, seq: int) -> None:
        assert link.armor is not None
        self.driver.input(self.daemon.local_pong, link.armor, link.incarnation, seq)

    def armor_failed(self, link: LocalLink, reason: str) -> None:
        assert link.armor is not None
        self.driver.input(self.daemon.local_failed, link.armor, link.incarnation, reason)

    def armor_lost(self, link: LocalLink, reason: str) -> None:
        assert link.armor is not None
        key = (link.armor, link.incarnation)
        if self._locals.get(key) is link:
            del self._locals[key]
            handle = self._handles.pop(link, None)
            if handle is not None:  # attached: the end of its link is its end
                del self._attached[handle]
                if not self.driver.stopped:
                    self.driver.input(self.daemon.ended, handle, f"its link closed: {reason}")
            elif not self.driver.stopped:
                self.driver.input(self.daemon.local_lost, link.armor, link.incarnation)

    # -- queries -----------------------------------------------------------------------------

    def linked_nodes(self) -> Sequence[str]:
        """The nodes a daemon link is up to, sorted."""
        return sorted(self._links)


async def _within(reactor: Any, d: defer.Deferred[T], seconds: float) -> T:
    d.addTimeout(seconds, reactor)
    return await d
