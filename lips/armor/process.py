"""
One ARMOR process: C{python -m lips.armor.process}, started by its node's daemon
(lipsd's L{DaemonService<lips.node.DaemonService>}), never by hand.

It makes one L{Armor<lips.armor.Armor>} with L{ArmorFactory<lips.armor.ArmorFactory>}
from the registered type and the configuration its daemon gives it, connects to the
daemon's local link (a UNIX socket), names itself (L{ArmorHello<lips.armor.ArmorHello>}:
ARMOR id, incarnation, token) and, once welcomed, runs the ARMOR under a
L{lips.kernel.Driver} on the reactor: messages from the link go to the ARMOR's
C{receive}, its L{Send} effects go out on the link, its timers run on the driver.  It
answers the daemon's pings as soon as it reads them, so a process that does not read
(hung in a block, stopped) stops answering, and its daemon kills it.

It ends when its link is lost (its daemon is gone: an ARMOR is never orphaned), with
status 0.  An ARMOR its type refuses to make (a bad configuration) is said to the
daemon with a CLOSE frame after the hello, which fails the install with that reason,
and the process exits with L{CANNOT_MAKE}.  A block that raises anything but a
L{MessageError<lips.armor.MessageError>} is a bug: the process exits with L{CRASHED},
which its daemon reports to the ARMOR's manager as a crash.

What it is given (by L{environment} and L{stdin_input}, which the daemon's spawner uses):

  - C{LIPS_ARMOR_ID}, C{LIPS_ARMOR_TYPE}, C{LIPS_ARMOR_MANAGER},
    C{LIPS_ARMOR_INCARNATION}: what to make (readable with C{ps e}: nothing secret);
  - C{LIPS_ARMOR_SOCKET}: the path of the daemon's local link;
  - standard input: a msgpack map C{{"config": {...}, "token": bytes}}, the
    configuration and the token, which stays out of the environment.

This module is the one host in L{lips.armor}: it uses the reactor it is handed by
L{twisted.internet.task.react}, and imports no reactor itself.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import msgpack
from twisted.internet import defer
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import react
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver
from twisted.python.failure import Failure

from lips.armor._armor import Armor
from lips.armor._daemon import ArmorSpec
from lips.armor._factory import ArmorFactory
from lips.armor._link import (
    HANDSHAKE_BODY,
    MAX_FRAME_BODY,
    NONCE_SIZE,
    ArmorHello,
    AttachHello,
    Auth,
    DaemonHello,
    Frame,
    FrameDecoder,
    FrameError,
    FrameKind,
    HandshakeError,
    close_reason,
    encode_frame,
    proof,
)
from lips.armor._messages import Message
from lips.armor._names import MessageError, armor_id, daemon_id
from lips.armor._tasks import TaskHost
from lips.armor.execution import Execution
from lips.armor.initialization import InitializationArmor, local_survey
from lips.kernel import Driver, Send

__all__ = [
    "CANNOT_MAKE",
    "CRASHED",
    "ID_VAR",
    "INCARNATION_VAR",
    "SOCKET_NAME",
    "TITLE_PREFIX",
    "MANAGER_VAR",
    "SOCKET_VAR",
    "TYPE_VAR",
    "ArmorHost",
    "daemon_socket",
    "default_runtime",
    "environment",
    "main",
    "read_spec",
    "run",
    "stdin_input",
    "title",
]

ID_VAR: Final = "LIPS_ARMOR_ID"
TYPE_VAR: Final = "LIPS_ARMOR_TYPE"
MANAGER_VAR: Final = "LIPS_ARMOR_MANAGER"
INCARNATION_VAR: Final = "LIPS_ARMOR_INCARNATION"
SOCKET_VAR: Final = "LIPS_ARMOR_SOCKET"

#: Exit status: bad arguments (not started by a daemon).
USAGE: Final = 2
#: Exit status: its type refused to make the ARMOR.
CANNOT_MAKE: Final = 3
#: Exit status: the daemon did not welcome it.
NOT_WELCOMED: Final = 4
#: Exit status: a block raised (a bug).
CRASHED: Final = 70

#: Seconds it waits for the daemon's socket to accept it.
CONNECT_TIMEOUT: Final = 10
#: How an ARMOR process's title starts (L{title}).
TITLE_PREFIX: Final = "lips-armor"
#: The name of a daemon's socket in its runtime directory.
SOCKET_NAME: Final = "daemon.sock"


def default_runtime(node: str) -> str:
    """The runtime directory of node C{node}'s daemon when lipsd is given none."""
    base = os.environ.get("XDG_RUNTIME_DIR") or os.path.join(
        tempfile.gettempdir(), f"lips-{os.getuid()}"
    )
    return os.path.join(base, "lips-armor", node)


def daemon_socket(node: str, runtime: str | None = None) -> str:
    """The socket of node C{node}'s daemon: in C{runtime}, or in lipsd's default."""
    return os.path.join(runtime or default_runtime(node), SOCKET_NAME)


_log = Logger(namespace="lips.armor.process")


def environment(spec: ArmorSpec, socket: str) -> dict[str, str]:
    """The variables the process of C{spec} is given, besides its daemon's environment."""
    return {
        ID_VAR: spec.armor,
        TYPE_VAR: spec.type,
        MANAGER_VAR: spec.manager,
        INCARNATION_VAR: str(spec.incarnation),
        SOCKET_VAR: socket,
    }


def stdin_input(spec: ArmorSpec) -> bytes:
    """What the process of C{spec} reads on standard input."""
    data: bytes = msgpack.packb({"config": spec.config, "token": spec.token}, use_bin_type=True)
    return data


def read_spec(environ: Mapping[str, str], data: bytes) -> tuple[ArmorSpec, str]:
    """
    The spec and the socket path the daemon gave: C{environ} and standard input's bytes.

    @raise ValueError: if anything is missing or malformed.
    """
    try:
        armor, type_, manager = environ[ID_VAR], environ[TYPE_VAR], environ[MANAGER_VAR]
        incarnation, socket = environ[INCARNATION_VAR], environ[SOCKET_VAR]
    except KeyError as e:
        raise ValueError(
            f"{e.args[0]} is not set: only a daemon starts an ARMOR process"
        ) from None
    try:
        given = msgpack.unpackb(
            data, raw=False, use_list=False, strict_map_key=True, max_ext_len=0
        )
    except Exception as e:
        raise ValueError(f"standard input is not msgpack: {e}") from None
    if type(given) is not dict or set(given) != {"config", "token"}:
        raise ValueError("standard input is a msgpack map of config and token")
    if not incarnation.isdigit():
        raise ValueError(f"{INCARNATION_VAR} is a positive integer, not {incarnation!r}")
    try:
        spec = ArmorSpec(
            armor_id(armor),
            type_,
            armor_id(manager),
            int(incarnation),
            given["config"],
            given["token"],
        )
    except (TypeError, ValueError) as e:
        raise ValueError(str(e)) from None
    return spec, socket


class _ArmorLink(Protocol):
    """The ARMOR process's end of the local link."""

    def __init__(self, host: ArmorHost) -> None:
        self.host = host
        self.decoder = FrameDecoder(HANDSHAKE_BODY)
        self.welcomed = False
        self.proved = False
        self.nonce = b""
        self.lost: defer.Deferred[str] = defer.Deferred()

    def connectionMade(self) -> None:
        host = self.host
        spec = host.spec
        if host.key is not None:
            self.nonce = os.urandom(NONCE_SIZE)
            self.write(AttachHello(spec.armor, spec.incarnation, spec.type, self.nonce).frame())
            return
        self.write(ArmorHello(spec.armor, spec.incarnation, spec.token).frame())
        if host.failure is not None:
            self.write(Frame.control(FrameKind.CLOSE, host.failure[:1000]))
            self.close()

    def write(self, frame: Frame) -> None:
        if self.transport is not None:
            self.transport.write(encode_frame(frame))

    def close(self, abort: bool = False) -> None:
        transport = self.transport
        if transport is not None:
            if abort:
                transport.abortConnection()  # type: ignore[attr-defined]
            else:
                transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        for item in self.decoder.feed(data):
            if isinstance(item, FrameError):
                _log.error("Bad frame from the daemon: {error}; hanging up", error=str(item))
                self.close(abort=True)
                return
            kind = item.kind
            if kind is FrameKind.HELLO and self.host.key is not None and not self.proved:
                try:
                    self._prove(DaemonHello.from_frame(item))
                except HandshakeError as e:
                    _log.error("The daemon's hello is wrong: {error}; hanging up", error=str(e))
                    self.close(abort=True)
                    return
            elif kind is FrameKind.PING:
                self.write(Frame(FrameKind.PONG, body=item.body))
            elif kind is FrameKind.WELCOME and not self.welcomed:
                self.welcomed = True
                self.decoder.limit(MAX_FRAME_BODY)
                self.host.welcome()
            elif kind is FrameKind.MESSAGE and self.welcomed:
                self.host.receive(item.message())
            elif kind is FrameKind.CLOSE:
                _log.info("The daemon hung up: {reason}", reason=close_reason(item))
                self.close()
                return
            else:
                _log.error("Unexpected {kind} frame from the daemon; hanging up", kind=kind.name)
                self.close(abort=True)
                return

    def _prove(self, hello: DaemonHello) -> None:
        """Attaching: prove to the daemon of C{hello} that this process holds the key."""
        host = self.host
        assert host.key is not None
        if host.node is not None and hello.node != host.node:
            raise HandshakeError(f"expected the daemon of {host.node}, not of {hello.node}")
        self.proved = True
        mine = proof(
            host.key,
            dialer=True,
            own=host.spec.armor,
            peer=daemon_id(hello.node),
            dialer_nonce=self.nonce,
            acceptor_nonce=hello.nonce,
        )
        self.write(Auth(mine).frame())

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.callback(reason.getErrorMessage())


class ArmorHost:
    """
    Runs the ARMOR of C{spec} on C{reactor}, linked to the daemon at C{socket}.

    @param factory: makes the ARMOR (the installed plugins' by default).
    @ivar armor: the ARMOR, unless its type refused to make it (C{failure} says why).
    @ivar code: the exit status, once known.
    @ivar tasks: the host of its task's children, if it is an Execution ARMOR.
    """

    tasks: TaskHost | None = None

    def __init__(
        self, reactor: Any, spec: ArmorSpec, socket: str, factory: ArmorFactory | None = None
    ) -> None:
        self.reactor = reactor
        self.spec = spec
        self.socket = socket
        self.failure: str | None = None
        self.armor: Armor | None = None
        self.driver: Driver[Armor] | None = None
        self.code = 0
        #: Attaching (L{attaching}): the link key, and the node whose daemon is expected.
        self.key: bytes | None = None
        self.node: str | None = None
        #: Called with each effect the driver has no handler of its own for (attaching).
        self.handlers: dict[type[Any], Callable[[Any], None]] = {}
        try:
            factory = factory if factory is not None else ArmorFactory()
            self.armor = factory.create(spec.type, spec.armor, spec.manager, spec.config)
        except Exception as e:
            self.failure = f"{type(e).__name__}: {e}"
        self.link = _ArmorLink(self)

    @classmethod
    def attaching(
        cls,
        reactor: Any,
        armor: Armor,
        socket: str,
        key: bytes,
        *,
        type: str,
        incarnation: int = 1,
        node: str | None = None,
        handlers: Mapping[type[Any], Callable[[Any], None]] | None = None,
    ) -> ArmorHost:
        """
        A host of C{armor}, made here rather than by a daemon, that attaches itself to
        the daemon at C{socket} (L{lips.armor.AttachHello}): it proves it holds C{key}
        (the cluster's link key, L{lips.armor.link_key}) and, if C{node} is given, that
        the daemon is C{node}'s.  C{handlers} carry out the ARMOR's effects other than
        L{Send} and timers (a submitter's L{Deliver}).
        """
        host = cls.__new__(cls)
        host.reactor = reactor
        host.spec = ArmorSpec(armor.id, type, armor.id, incarnation, {}, b"")
        host.socket = socket
        host.failure = None
        host.armor = armor
        host.driver = None
        host.code = 0
        host.key = key
        host.node = node
        host.handlers = dict(handlers or {})
        host.link = _ArmorLink(host)
        return host

    def stop(self) -> None:
        """Hang up on the daemon (the ARMOR ends with its link)."""
        self.link.close()

    async def run(self) -> int:
        """Connect, run until the link is lost; the exit status."""
        endpoint = UNIXClientEndpoint(self.reactor, self.socket, timeout=CONNECT_TIMEOUT)
        await connectProtocol(endpoint, self.link)
        reason = await self.link.lost
        if self.tasks is not None:  # an Execution ARMOR's task ends with it
            self.tasks.stop()
        if self.driver is not None:
            self.driver.stop()
        if self.failure is not None:
            _log.error(
                "ARMOR {armor} could not be made: {why}", armor=self.spec.armor, why=self.failure
            )
            return CANNOT_MAKE
        if not self.link.welcomed:
            _log.error(
                "The daemon did not welcome {armor}: {reason}",
                armor=self.spec.armor,
                reason=reason,
            )
            return NOT_WELCOMED
        return self.code

    def welcome(self) -> None:
        """The daemon accepted this process: start the ARMOR."""
        armor = self.armor
        assert armor is not None
        handlers: dict[type[Any], Callable[[Any], None]] = {Send: self._send}
        if isinstance(armor, Execution):  # its task runs as a child of this process
            self.tasks = TaskHost(self.reactor, armor, self._input)
            handlers.update(self.tasks.handlers)
        self.driver = Driver(armor, self.reactor, {**handlers, **self.handlers})
        self._input(armor.start)
        if isinstance(armor, InitializationArmor) and armor.node is not None:
            # The survey is of the machine this process runs on: its node's.
            self._input(armor.surveyed, local_survey(armor.node))

    def receive(self, message: Message) -> None:
        """A message from the daemon."""
        assert self.armor is not None
        self._input(self.armor.receive, message)

    def _input(self, method: Any, *args: Any) -> None:
        driver = self.driver
        assert driver is not None
        try:
            driver.input(method, *args)
        except MessageError as e:  # a message the ARMOR refuses (it counted it)
            _log.warn("ARMOR {armor} refused a message: {error}", armor=self.spec.armor, error=e)
        except Exception:
            _log.failure("ARMOR {armor} crashed", armor=self.spec.armor)
            self.code = CRASHED
            self.link.close(abort=True)

    def _send(self, effect: Send[Message]) -> None:
        self.link.write(Frame.of_message(effect.message))


def title(spec: ArmorSpec) -> str:
    """The process title of C{spec}'s process, as C{ps} shows it."""
    return f"{TITLE_PREFIX} {spec.armor}#{spec.incarnation} ({spec.type})"


def set_title(spec: ArmorSpec) -> None:
    """Name this process C{title(spec)} (a forked one's argv is its zygote's)."""
    try:
        import setproctitle
    except ImportError:  # pragma: no cover - a dependency; ps then shows the argv
        return
    setproctitle.setproctitle(title(spec))


def run(environ: Mapping[str, str], data: bytes) -> int:
    """
    Be the ARMOR process that C{environ} and the standard-input bytes C{data} describe
    (logging to standard error), until its link is lost; its exit status.  What
    C{main} does, and what a process forked by the zygote (L{lips.armor.zygote}) does.
    """
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    try:
        spec, socket = read_spec(environ, data)
    except ValueError as e:
        print(f"lips.armor.process: {e}", file=sys.stderr)
        return USAGE
    set_title(spec)
    status: list[int] = []

    async def body(reactor: Any) -> None:
        host = ArmorHost(reactor, spec, socket)
        status.append(await host.run())

    with contextlib.suppress(SystemExit):  # react ends with sys.exit
        react(lambda reactor: defer.Deferred.fromCoroutine(body(reactor)))
    return status[0] if status else CRASHED


def main(argv: Sequence[str] | None = None) -> None:
    """Run the ARMOR process the environment and standard input describe, then exit."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv:
        print("usage: python -m lips.armor.process (started by a daemon)", file=sys.stderr)
        raise SystemExit(USAGE)
    raise SystemExit(run(os.environ, sys.stdin.buffer.read()))


if __name__ == "__main__":
    main()
