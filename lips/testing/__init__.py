"""
Test helpers for code that uses LiPS: in-memory servers and clients under a fake clock.

    clock = task.Clock()
    server = lips.testing.memory_server(clock)
    client, pump = lips.testing.memory_client(server, clock)
    d = client.out(("job", 1))
    pump.flush()
    assert successResultOf(d) is None

No sockets and no reactor: bytes move only when the pump is flushed, so tests decide
exactly when each side sees what the other sent.

For tests, benchmarks and demonstrations of real processes: L{Cluster} writes a cluster
file (L{write_cluster}), runs its servers and lipsd nodes as twistd processes logging to
files, waits until they serve, kills, pauses and restarts them, and stops them all;
L{Process} and L{ProcessGroup} do the same for any process, L{twistd_command} and
L{free_port} are the pieces.  L{Bridge} (root only) puts servers in network namespaces
on a bridge, so that one server's link can be cut and healed.
"""

from __future__ import annotations

import random
from typing import Final

from twisted.internet.task import Clock
from twisted.test import iosim

from lips.client import ClientProtocol, TupleSpaceClient
from lips.protocols import MessageServerProtocol
from lips.server import LocalBackend, MessageServer, ServerLimits
from lips.space import TupleSpace
from lips.testing._armors import armor_process
from lips.testing._cluster import ClusterMember, write_cluster
from lips.testing._harness import (
    ANY_LOAD,
    ROLES,
    START_DEADLINE,
    STOP_DEADLINE,
    TWISTD,
    Cluster,
    PortTaken,
    Process,
    ProcessGroup,
    ServerDidNotStart,
    StatusProbe,
    fetch_stats,
    free_port,
    log_tail,
    ring_serving,
    run_directory,
    twistd_command,
)
from lips.testing._procs import Bridge, netns_subnet
from lips.tuples import DEFAULT_LIMITS, Limits
from lips.wire import Hello, Welcome

__all__ = [
    "armor_process",
    "ANY_LOAD",
    "MEMORY_BOUNDS",
    "ROLES",
    "START_DEADLINE",
    "STOP_DEADLINE",
    "TWISTD",
    "Bridge",
    "Cluster",
    "ClusterMember",
    "PortTaken",
    "Process",
    "ProcessGroup",
    "ServerDidNotStart",
    "StatusProbe",
    "fetch_stats",
    "free_port",
    "log_tail",
    "memory_client",
    "memory_server",
    "netns_subnet",
    "ring_serving",
    "run_directory",
    "twistd_command",
    "write_cluster",
]


#: The in-memory server's bounds: a real server's, but no HELLO or idle deadline and no
#: forgetting of vanished processes, so that a test's clock holds only the timers of the
#: code under test.
MEMORY_BOUNDS: Final = ServerLimits(hello_timeout=0, idle_timeout=0, forget_after=0)


def memory_server(
    clock: Clock,
    limits: Limits = DEFAULT_LIMITS,
    seed: int = 0,
    log_limit: int = 4096,
    bounds: ServerLimits = MEMORY_BOUNDS,
) -> MessageServer:
    """A MessageServer on a local tuple space, with a seeded random for process ids."""
    space = TupleSpace(limits, log_limit)
    return MessageServer(
        LocalBackend(space),
        clock,
        name="memory",
        limits=limits,
        rng=random.Random(seed),
        bounds=bounds,
    )


def memory_client(
    server: MessageServer, clock: Clock, pid: int | None = None
) -> tuple[TupleSpaceClient, iosim.IOPump]:
    """
    A client connected to C{server} through an in-memory transport, past its HELLO.

    @return: the client and the pump that moves bytes between the two.
    """
    client_protocol = ClientProtocol(clock)
    _, _, pump = iosim.connectedServerAndClient(
        lambda: MessageServerProtocol(server), lambda: client_protocol, greet=True
    )
    d = client_protocol.request(Hello(pid, "memory"))
    pump.flush()
    welcome = d.result
    if not isinstance(welcome, Welcome):
        raise RuntimeError(f"the memory server did not welcome the client: {welcome!r}")
    # As connect() does: a process whose id the server gave says goodbye when it closes.
    return TupleSpaceClient(client_protocol, welcome, says_goodbye=pid is None), pump
