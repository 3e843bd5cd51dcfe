"""
One node of the pysyncobj peer of C{bench/replicated.py}: a FIFO queue replicated by
Raft (U{pysyncobj<https://github.com/bakwc/PySyncObj>}), served to clients over TCP.

    python bench/_syncobj_queue.py --raft 127.0.0.1:9001 \\
        --partners 127.0.0.1:9002,127.0.0.1:9003 --listen 9011

L{QueueNode} is a C{SyncObj} whose state is a deque: C{put(item)} appends, C{get()}
pops the oldest item (or gives C{None}), both C{@replicated}, so each is a Raft log
entry, applied on every node in log order once a majority holds it.  A call on a
follower is forwarded to the leader; its answer comes once the entry is committed and
applied on the node called.  That is the analogue of a LiPS out and in: an out is an
C{OUT} through the ring, an in a C{CLAIM}; both are answered once safe.

Clients speak a line protocol over TCP, one request at a time per connection:

    P <int>   put ("job", <int>)                  answer: S
    G         get the oldest item                 answer: M <int>, or N when empty
    (any failure of the SyncObj call)             answer: E <reason>

The Twisted reactor runs the TCP side in the main thread; pysyncobj runs Raft in its
own thread (C{autoTick}), calls the callbacks there, and the answers are handed back to
the reactor with C{callFromThread}.  Commands are sent to the followers as soon as they
are queued (C{appendEntriesUseBatch=False}, which also wakes the Raft thread at once)
rather than on pysyncobj's default 50 ms tick: the low-latency setting, which is the
fair one against a ring that sends at once.  Nothing is written to disk (no journal,
no dump file), as LiPS keeps its space in memory.
"""

from __future__ import annotations

import argparse
import collections
import sys
from typing import Any

from twisted.internet.protocol import ServerFactory
from twisted.protocols.basic import LineReceiver

try:
    from pysyncobj import (  # type: ignore[import-untyped, import-not-found, unused-ignore]
        SyncObj,
        SyncObjConf,
        replicated,
    )
except ImportError:  # pragma: no cover - replicated.py installs it before starting a node
    sys.exit("bench/_syncobj_queue.py needs pysyncobj: pip install 'lips[bench]'")

Item = tuple[str, int]


class QueueNode(SyncObj):  # type: ignore[misc]
    """A FIFO queue, replicated by Raft over the C{partners}."""

    def __init__(self, raft: str, partners: list[str], conf: Any) -> None:
        super().__init__(raft, partners, conf)
        self._items: collections.deque[Item] = collections.deque()

    @replicated  # type: ignore[untyped-decorator]
    def put(self, item: Item) -> None:
        self._items.append(item)

    @replicated  # type: ignore[untyped-decorator]
    def get(self) -> Item | None:
        return self._items.popleft() if self._items else None


def node_conf() -> Any:
    """The SyncObj settings of every node: in memory, sending at once, loopback timeouts."""
    return SyncObjConf(
        appendEntriesUseBatch=False,
        dynamicMembershipChange=False,
        raftMinTimeout=0.15,
        raftMaxTimeout=0.45,
        appendEntriesPeriod=0.04,
        connectionRetryTime=0.2,
    )


class QueueFrontend(LineReceiver):
    """One client connection: a request line in, the SyncObj call, its answer out."""

    delimiter = b"\n"

    def __init__(self, node: QueueNode, reactor: Any) -> None:
        self.node = node
        self.reactor = reactor

    def lineReceived(self, line: bytes) -> None:
        if line.startswith(b"P "):
            try:
                item = ("job", int(line[2:]))
            except ValueError:
                self._send(b"E bad request")
                return
            self.node.put(item, callback=self._stored)
        elif line == b"G":
            self.node.get(callback=self._got)
        else:
            self._send(b"E bad request")

    # The callbacks run in pysyncobj's thread: answer from the reactor's.

    def _stored(self, result: object, error: object) -> None:
        self._answer(b"S" if error == 0 else b"E %d" % int(error))  # type: ignore[call-overload]

    def _got(self, result: Item | None, error: object) -> None:
        if error != 0:
            self._answer(b"E %d" % int(error))  # type: ignore[call-overload]
        elif result is None:
            self._answer(b"N")
        else:
            self._answer(b"M %d" % result[1])

    def _answer(self, line: bytes) -> None:
        self.reactor.callFromThread(self._send, line)

    def _send(self, line: bytes) -> None:
        if self.transport is not None:
            self.transport.write(line + self.delimiter)


class QueueFrontendFactory(ServerFactory):
    def __init__(self, node: QueueNode, reactor: Any) -> None:
        self.node = node
        self.reactor = reactor

    def buildProtocol(self, addr: Any) -> QueueFrontend:
        return QueueFrontend(self.node, self.reactor)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="A pysyncobj node serving a replicated queue.")
    p.add_argument("--raft", required=True, help="HOST:PORT of this node's Raft socket")
    p.add_argument(
        "--partners", required=True, help="comma-separated HOST:PORT of the other nodes"
    )
    p.add_argument("--listen", type=int, required=True, help="loopback TCP port for clients")
    args = p.parse_args(argv)
    from twisted.internet import reactor

    node = QueueNode(args.raft, [x for x in args.partners.split(",") if x], node_conf())
    reactor.listenTCP(args.listen, QueueFrontendFactory(node, reactor), interface="127.0.0.1")
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
