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

import os
import sys
from collections.abc import Mapping, Sequence
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
    ArmorHello,
    Frame,
    FrameDecoder,
    FrameError,
    FrameKind,
    close_reason,
    encode_frame,
)
from lips.armor._messages import Message
from lips.armor._names import MessageError, armor_id
from lips.kernel import Driver, Send

__all__ = [
    "CANNOT_MAKE",
    "CRASHED",
    "ID_VAR",
    "INCARNATION_VAR",
    "MANAGER_VAR",
    "SOCKET_VAR",
    "TYPE_VAR",
    "ArmorHost",
    "environment",
    "main",
    "read_spec",
    "stdin_input",
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
        self.lost: defer.Deferred[str] = defer.Deferred()

    def connectionMade(self) -> None:
        host = self.host
        spec = host.spec
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
            if kind is FrameKind.PING:
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

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.callback(reason.getErrorMessage())


class ArmorHost:
    """
    Runs the ARMOR of C{spec} on C{reactor}, linked to the daemon at C{socket}.

    @param factory: makes the ARMOR (the installed plugins' by default).
    @ivar armor: the ARMOR, unless its type refused to make it (C{failure} says why).
    @ivar code: the exit status, once known.
    """

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
        try:
            factory = factory if factory is not None else ArmorFactory()
            self.armor = factory.create(spec.type, spec.armor, spec.manager, spec.config)
        except Exception as e:
            self.failure = f"{type(e).__name__}: {e}"
        self.link = _ArmorLink(self)

    async def run(self) -> int:
        """Connect, run until the link is lost; the exit status."""
        endpoint = UNIXClientEndpoint(self.reactor, self.socket, timeout=CONNECT_TIMEOUT)
        await connectProtocol(endpoint, self.link)
        reason = await self.link.lost
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
        self.driver = Driver(armor, self.reactor, {Send: self._send})
        self._input(armor.start)

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


def main(argv: Sequence[str] | None = None) -> None:
    """Run the ARMOR process the environment and standard input describe, then exit."""
    argv = sys.argv[1:] if argv is None else list(argv)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    if argv:
        print("usage: python -m lips.armor.process (started by a daemon)", file=sys.stderr)
        raise SystemExit(USAGE)
    try:
        spec, socket = read_spec(os.environ, sys.stdin.buffer.read())
    except ValueError as e:
        print(f"lips.armor.process: {e}", file=sys.stderr)
        raise SystemExit(USAGE) from None

    async def run(reactor: Any) -> None:
        host = ArmorHost(reactor, spec, socket)
        raise SystemExit(await host.run())

    react(lambda reactor: defer.Deferred.fromCoroutine(run(reactor)))


if __name__ == "__main__":
    main()
