"""
A blocking facade over L{lips.client} for plain scripts and worker processes.

    from lips import blocking
    with blocking.connect("tcp:host=127.0.0.1:port=7010") as space:
        space.out(("job", 1))
        job = space.in_(("job", int), timeout=5)

The calls are those of L{lips.client.TupleSpaceClient}, returning values instead of
Deferreds.  The Twisted reactor runs in a daemon thread started on first use; every call
is handed to it and the caller waits for the answer.  Do not call this module from code
already running in the reactor thread: use L{lips.client} there.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, TypeVar

from twisted.internet import defer, threads

from lips.client import ATTEMPT_TIMEOUT, FAILOVER_TIMEOUT, KEEPALIVE, TupleSpaceClient
from lips.client import connect as connect_async
from lips.tuples import LTuple, Step, StepResult, Template

__all__ = ["BlockingSpace", "connect"]

T = TypeVar("T")

_lock = threading.Lock()
_thread: threading.Thread | None = None


def _reactor() -> Any:
    """The global reactor, running in a daemon thread (started here if need be)."""
    global _thread
    from twisted.internet import reactor

    with _lock:
        if _thread is None:
            if reactor.running:
                raise RuntimeError(
                    "the reactor is already running in this process; use lips.client"
                )
            _thread = threading.Thread(
                target=reactor.run,
                kwargs={"installSignalHandlers": False},
                name="lips-reactor",
                daemon=True,
            )
            _thread.start()
            atexit.register(_stop)
        elif threading.current_thread() is _thread:
            raise RuntimeError("lips.blocking called from the reactor thread; use lips.client")
    return reactor


def _stop() -> None:
    from twisted.internet import reactor

    if reactor.running:
        reactor.callFromThread(reactor.stop)  # type: ignore[attr-defined]


def _call(f: Callable[..., defer.Deferred[T]], *args: Any, **kwargs: Any) -> T:
    reactor = _reactor()
    result: T = threads.blockingCallFromThread(reactor, f, *args, **kwargs)  # type: ignore[arg-type]
    return result


class BlockingSpace:
    """A tuple space connection whose calls block until the server answers."""

    def __init__(self, client: TupleSpaceClient) -> None:
        self._client = client

    @property
    def pid(self) -> int:
        """This process's id in the tuple space."""
        return self._client.pid

    @property
    def server(self) -> str:
        """The name of the server it is on."""
        return self._client.server

    @property
    def endpoint(self) -> str | None:
        """The endpoint of the server it is on; C{None} while failing over."""
        return self._client.endpoint

    @property
    def state(self) -> str:
        """
        C{"connected"}, C{"failing over"}, C{"failed"} (no server could be reached
        within the failover timeout: every call fails with
        L{lips.client.NoServerAvailable}) or C{"closed"}.
        """
        return self._client.state

    @property
    def failovers(self) -> int:
        """How many times it moved to another server."""
        return self._client.failovers

    def out(self, values: Sequence[Any]) -> None:
        """Store a tuple."""
        _call(self._client.out, values)

    def in_(self, template: Sequence[Any] | Template, timeout: float | None = None) -> LTuple:
        """Take the oldest matching tuple, waiting for one (up to C{timeout} seconds)."""
        return _call(self._client.in_, template, timeout)

    def rd(self, template: Sequence[Any] | Template, timeout: float | None = None) -> LTuple:
        """Read the oldest matching tuple, waiting for one (up to C{timeout} seconds)."""
        return _call(self._client.rd, template, timeout)

    def inp(self, template: Sequence[Any] | Template) -> LTuple | None:
        """Take the oldest matching tuple, or return C{None} if there is none."""
        return _call(self._client.inp, template)

    def rdp(self, template: Sequence[Any] | Template) -> LTuple | None:
        """Read the oldest matching tuple, or return C{None} if there is none."""
        return _call(self._client.rdp, template)

    def atomic(self, steps: Sequence[Step]) -> tuple[StepResult, ...]:
        """
        Apply C{steps} as one event, all or none: each step's result (a tuple for an
        C{inp} or C{rdp}, L{Tuples<lips.tuples.Tuples>} for a C{scan} or C{delete},
        C{None} otherwise), or
        L{AtomicAborted<lips.tuples.AtomicAborted>} naming the step that failed (see
        L{TupleSpaceClient.atomic}).
        """
        return _call(self._client.atomic, steps)

    def checkpoint(self, state: Any, files: Sequence[str] = ()) -> None:
        """
        Store C{state} (and C{files} of the working directory) as this process's
        checkpoint (see L{TupleSpaceClient.checkpoint}).
        """
        _call(self._client.checkpoint, state, files)

    def recover(self) -> Any:
        """
        This process's last checkpoint state, or C{None}, its files restored into the
        working directory; call it first.
        """
        return _call(self._client.recover)

    def stats(self) -> dict[str, int | float | str]:
        """The server's counters and gauges."""
        return _call(self._client.stats)

    def close(self, goodbye: bool | None = None) -> None:
        """
        Close the connection, first saying goodbye (the space forgets this process's
        log and checkpoint) if C{goodbye}, or by default if the server gave this
        process its id (see L{lips.client.TupleSpaceClient.close}).
        """
        _call(self._client.close, goodbye)

    def __enter__(self) -> BlockingSpace:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def connect(
    endpoints: str | Sequence[str],
    *,
    pid: int | None = None,
    name: str = "",
    reconnect: bool | None = None,
    failover_timeout: float = FAILOVER_TIMEOUT,
    attempt_timeout: float = ATTEMPT_TIMEOUT,
    start: int = 0,
    keepalive: float | None = KEEPALIVE,
) -> BlockingSpace:
    """
    Connect to a MessageServer, or to the first reachable of several (the servers of one
    replicated space, failed over between); see L{lips.client.connect} for the arguments.
    """
    reactor = _reactor()
    client = _call(
        connect_async,
        reactor,
        endpoints,
        pid=pid,
        name=name,
        reconnect=reconnect,
        failover_timeout=failover_timeout,
        attempt_timeout=attempt_timeout,
        start=start,
        keepalive=keepalive,
    )
    return BlockingSpace(client)
