"""
What a MessageServer lets its clients make it hold, and for how long.

Every resource a peer can make a server hold has a bound here: connections (in all and
per peer address), a session that never says HELLO, a connection idle with nothing
waiting, bytes of frames received in part (in all, and for how long one may stay
incomplete), replies a client does not read, and requests waiting for an answer (per
session and in all).  Past a bound the server answers with a clear error (BUSY, naming
the bound) or closes the one connection at fault, and counts it; nothing it has
accepted is lost.
"""

from __future__ import annotations

from typing import Final

import attrs

from lips.validate import at_least, non_negative

__all__ = ["ServerLimits"]

_MiB: Final = 1 << 20
_AT_LEAST_ONE: Final = at_least(1)


@attrs.frozen
class ServerLimits:
    """
    The bounds of one server.  Times are seconds, 0 meaning "never".

    @ivar max_connections: client connections at once; one more is refused BUSY.
    @ivar max_per_peer: client connections at once from one peer address.
    @ivar hello_timeout: how long a new connection may take to say HELLO.
    @ivar idle_timeout: how long a connection with no request waiting may stay silent.
        A client with requests waiting is never idle (and its keepalive probes count as
        words), so this closes only connections that nobody uses.
    @ivar max_partial_bytes: bytes of incomplete frames held across every connection;
        the connection whose bytes would pass it is closed.
    @ivar partial_timeout: how long one frame may stay incomplete.
    @ivar max_unsent_bytes: bytes of replies a connection that does not read may have
        waiting to be sent; it is read from no more while its replies wait, and closed
        past this.
    @ivar max_waiting_per_session: requests of one session waiting for their answer.
    @ivar max_waiting: requests of every session waiting for their answer.
    @ivar forget_after: how long after its last connection closed, without a goodbye,
        the space forgets a process whose id the server gave it (a script that died,
        an old client): unless it was heard from again meanwhile, at any server.  A
        process with an id of its own (one that may restart and recover) is never
        forgotten this way.  0: never.
    @ivar max_vanished: processes waiting to be forgotten so; past this the oldest is
        forgotten at once.
    """

    max_connections: int = attrs.field(default=1000, validator=_AT_LEAST_ONE)
    max_per_peer: int = attrs.field(default=200, validator=_AT_LEAST_ONE)
    hello_timeout: float = attrs.field(default=10.0, validator=non_negative)
    idle_timeout: float = attrs.field(default=900.0, validator=non_negative)
    max_partial_bytes: int = attrs.field(default=64 * _MiB, validator=_AT_LEAST_ONE)
    partial_timeout: float = attrs.field(default=30.0, validator=non_negative)
    max_unsent_bytes: int = attrs.field(default=16 * _MiB, validator=_AT_LEAST_ONE)
    max_waiting_per_session: int = attrs.field(default=10_000, validator=_AT_LEAST_ONE)
    max_waiting: int = attrs.field(default=100_000, validator=_AT_LEAST_ONE)
    forget_after: float = attrs.field(default=3600.0, validator=non_negative)
    max_vanished: int = attrs.field(default=100_000, validator=_AT_LEAST_ONE)
