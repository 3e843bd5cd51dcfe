"""
The floor for C{bench/throughput.py}: a Twisted request/response server over the LiPS
framing and nothing else.

It reads frames with L{lips.wire.FrameDecoder} (header, length and CRC-32 checked, as
the MessageServer reads them) and answers each one at once with a small frame built by
L{lips.wire.encode_frame}: the frame a STORED answer is (type 20, an empty msgpack array
as body), echoing the request id.  The body of a request is never decoded and there is
no tuple space, no session, no counters: what is left is what any Twisted server of this
protocol pays for the reactor, the socket and the framing.

    python bench/minimal_server.py --port 7011

It serves until it is sent SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory, Protocol

from lips.wire import HEADER, Frame, FrameDecoder, Stored, encode_frame, encode_message

#: The largest body accepted, as the MessageServer's default (1 MiB tuples + 4 KiB).
MAX_BODY = (1 << 20) + 4096
#: The answer to every frame: a STORED frame's type and body.
REPLY_TYPE = Stored.TYPE
REPLY_BODY = encode_message(Stored(), 0)[HEADER:]


class ReplyProtocol(Protocol):
    """Answers every frame it reads with a small frame of the same request id."""

    def __init__(self) -> None:
        self.decoder = FrameDecoder(MAX_BODY)

    def dataReceived(self, data: bytes) -> None:
        transport = self.transport
        assert transport is not None
        for item in self.decoder.feed(data):
            if type(item) is Frame:
                transport.write(encode_frame(REPLY_TYPE, item.request_id, REPLY_BODY))
            elif not isinstance(item, Frame) and item.fatal:
                transport.loseConnection()
                return


class ReplyFactory(Factory):
    def buildProtocol(self, addr: IAddress | None) -> ReplyProtocol:
        return ReplyProtocol()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--port", type=int, required=True, help="loopback TCP port to listen on")
    args = p.parse_args(argv)

    from twisted.internet import reactor

    endpoint = serverFromString(reactor, f"tcp:{args.port}:interface=127.0.0.1")
    failed: list[Any] = []

    def listen() -> None:
        def fail(f: Any) -> None:
            failed.append(f)
            print(f"minimal_server: cannot listen: {f.getErrorMessage()}", file=sys.stderr)
            reactor.stop()

        endpoint.listen(ReplyFactory()).addErrback(fail)

    reactor.callWhenRunning(listen)
    reactor.run()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
