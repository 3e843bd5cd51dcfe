"""
L{MessageServer}: the server core on a reactor's clock.

A L{ServerCore} decides and a L{Driver<lips.kernel.Driver>} keeps its timers: one delayed
call on the injected L{IReactorTime} (the reactor, or a L{task.Clock
<twisted.internet.task.Clock>} in tests and simulations), never later than the core's
earliest deadline.  Each method below is one input of the core, fed through the driver
with C{now} from the clock, and the backend's answers are fed the same way; the
MessageServer holds no logic of its own.  The TCP adapter
(L{lips.protocols.MessageServerProtocol}) and the tap talk to it.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

from twisted.internet.interfaces import IReactorTime

from lips.kernel import Driver
from lips.server._core import Answer, ISpaceBackend, ServerCore, Session
from lips.server._limits import ServerLimits
from lips.tuples import DEFAULT_LIMITS, Limits
from lips.wire import Message

__all__ = ["MessageServer"]


def _nothing() -> None:
    pass


class MessageServer:
    """
    Serves client sessions from an L{ISpaceBackend}: a L{ServerCore} (C{core}) run by a
    L{Driver} (C{driver}) on C{clock}.

    @param clock: the clock its timeouts run on.
    @param rng: for process ids given to clients that do not bring one.
    @param probes: more figures for L{stats}, by name (the ring's, say).
    @param bounds: what the server's clients may make it hold (L{ServerLimits}).
    """

    def __init__(
        self,
        backend: ISpaceBackend,
        clock: IReactorTime,
        *,
        name: str = "lips",
        limits: Limits = DEFAULT_LIMITS,
        rng: random.Random | None = None,
        probes: Sequence[Callable[[], Mapping[str, int | float | str]]] = (),
        bounds: ServerLimits | None = None,
    ) -> None:
        if not ISpaceBackend.providedBy(backend):
            raise TypeError(f"a MessageServer serves from an ISpaceBackend, not {backend!r}")
        self.core = ServerCore(
            backend, name=name, limits=limits, rng=rng, probes=probes, bounds=bounds
        )
        self.driver: Driver[ServerCore] = Driver(self.core, clock, {})
        backend.on_complete = self.completed

    # -- the core's state --------------------------------------------------------------------

    @property
    def backend(self) -> ISpaceBackend:
        return self.core.backend

    @property
    def bounds(self) -> ServerLimits:
        return self.core.bounds

    @property
    def limits(self) -> Limits:
        return self.core.limits

    @property
    def name(self) -> str:
        return self.core.name

    @property
    def counters(self) -> Counter[str]:
        return self.core.counters

    @property
    def sessions(self) -> set[Session]:
        return self.core.sessions

    def stats(self) -> dict[str, int | float | str]:
        """Counters and gauges, by name."""
        return self.core.stats()

    # -- from the transport ------------------------------------------------------------------

    def admit(self, host: str | None) -> str | None:
        """
        Whether a new connection from C{host} may open a session: C{None} if so, else
        why not (it is refused BUSY with that reason, and counted).
        """
        return self.driver.input(self.core.admit, host)

    def open_session(
        self,
        send: Callable[[bytes], None],
        peer: str = "?",
        *,
        host: str | None = None,
        abort: Callable[[], None] = _nothing,
    ) -> Session:
        """
        A session for a new connection (once L{admit}ted): it must say HELLO within the
        HELLO timeout, and is closed (C{abort}) once idle for the idle timeout.

        @param send: writes bytes to the client.
        @param peer: how to name the client in logs.
        @param host: the client's address, for the per-peer connection bound.
        """
        return self.driver.input(self.core.open_session, send, peer, host, abort)

    def received(self, session: Session, message: Message, request_id: int) -> None:
        """Handle one decoded request of C{session}."""
        self.driver.input(self.core.received, session, message, request_id)

    def buffered(self, session: Session, held: int, fresh: bool) -> bool:
        """
        C{session}'s connection holds C{held} bytes of an incomplete frame (C{fresh}: one
        begun by the latest read).

        @return: False if that passed the shared budget (the connection is told so and
            aborted).
        """
        return self.driver.input(self.core.buffered, session, held, fresh)

    def session_closed(self, session: Session) -> None:
        """The connection of C{session} is gone."""
        self.driver.input(self.core.session_closed, session)

    # -- from the backend --------------------------------------------------------------------

    def completed(self, completion: Answer) -> None:
        """The backend answered an operation (or it now waits)."""
        self.driver.input(self.core.completed, completion)

    def stop(self) -> None:
        """Stop the server's timers: nothing it holds is left on the clock."""
        self.driver.input(self.core.stop)
        self.driver.stop()
