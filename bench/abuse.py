"""
A MessageServer under abuse: one real C{twistd -n lips-msgserver} on loopback, attacked as
a careless or hostile client would, printing after each attack the server's memory and
how long a well-behaved client (from another loopback address) takes for an out+in.

    python -m bench.abuse

1. 1,100 idle connections from one address (the per-address bound is 200, the total 1,000);
2. 300 connections (three addresses) each holding 1 MiB less 4 KiB of one frame (the
   budget of incomplete frames across connections is 64 MiB, each has 30 s);
3. a client that asks C{rd} for a 512 KiB tuple as fast as it can for 8 s and never
   reads a reply (a session may leave 16 MiB unsent; then it is read from no more);
4. 20,000 waiting C{in_} on one connection (10,000 per session are accepted, then BUSY).

The attacks come from loopback addresses 127.0.0.1 to 127.0.0.8 and the well-behaved
client from 127.0.0.9 (Linux answers the whole of 127/8 on lo).  The figures are also
written as JSON to C{bench/results/}.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import struct
import subprocess
import sys
import time
from typing import Any

import psutil

from bench._common import environment, save
from lips import blocking
from lips.space import Kind
from lips.testing import free_port, twistd_command
from lips.tuples import make_template
from lips.wire import Hello, Take, encode_message

#: The frame header: magic, version, type, request id, body length, CRC.
_HEADER = struct.Struct("!2sBBIII")


class Target:
    """The server under attack, and a well-behaved client of it."""

    def __init__(self) -> None:
        self.port = free_port()
        argv = twistd_command("lips-msgserver", "--listen", f"tcp:{self.port}:interface=127.0.0.1")
        self.server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.process = psutil.Process(self.server.pid)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def endpoint(self, source: str) -> str:
        return f"tcp:host=127.0.0.1:port={self.port}:bindAddress={source}"

    def connect(self, source: str) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), 2, source_address=(source, 0))

    def rss(self) -> float:
        """The server's resident memory, MiB."""
        return float(self.process.memory_info().rss) / 2**20

    def served(self) -> float:
        """Milliseconds for a well-behaved client's connect, out and in."""
        began = time.perf_counter()
        with blocking.connect(self.endpoint("127.0.0.9")) as space:
            space.out(("probe", 1))
            space.in_(("probe", int))
        return (time.perf_counter() - began) * 1000

    def stats(self) -> dict[str, Any]:
        with blocking.connect(self.endpoint("127.0.0.9")) as space:
            return dict(space.stats())

    def stop(self) -> None:
        self.server.terminate()
        self.server.wait(10)


def idle_connections(target: Target) -> dict[str, Any]:
    conns = []
    for _ in range(1100):
        with contextlib.suppress(OSError):
            conns.append(target.connect("127.0.0.1"))
    time.sleep(1.0)
    stats = target.stats()
    row = {
        "sessions": stats.get("sessions"),
        "refused_per_address": stats.get("refused.per_peer"),
        "rss_mib": target.rss(),
        "client_ms": target.served(),
    }
    for c in conns:
        c.close()
    return row


def partial_frames(target: Target) -> dict[str, Any]:
    length = 1 << 20
    header = _HEADER.pack(b"LP", 1, 3, 2, length, 0)
    held = []
    for i in range(300):
        try:
            c = target.connect(f"127.0.0.{3 + i % 3}")
            c.sendall(encode_message(Hello(None, "attacker"), 1))
            c.sendall(header + b"x" * (length - 4096))
            held.append(c)
        except OSError:
            pass
    time.sleep(2.0)
    row = {"rss_mib": target.rss(), "client_ms": target.served()}
    for c in held:
        c.close()
    return row


def unread_replies(target: Target) -> dict[str, Any]:
    with blocking.connect(target.endpoint("127.0.0.9")) as space:
        space.out(("big", b"y" * (512 * 1024)))
    c = target.connect("127.0.0.7")
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    c.sendall(encode_message(Hello(None, "lazy"), 1))
    template = make_template(("big", bytes))
    sent = 0
    stopped = "the server stopped reading it"
    until = time.monotonic() + 8
    try:
        while time.monotonic() < until:
            c.sendall(encode_message(Take(Kind.RD, sent + 1, template, None), sent + 2))
            sent += 1
    except TimeoutError:
        pass
    except OSError:
        stopped = "the server closed it"
    row = {
        "requests_sent": sent,
        "outcome": stopped,
        "rss_mib": target.rss(),
        "client_ms": target.served(),
    }
    c.close()
    return row


def waiters(target: Target) -> dict[str, Any]:
    c = target.connect("127.0.0.8")
    c.sendall(encode_message(Hello(None, "waiter"), 1))
    template = make_template(("never", int))
    c.sendall(
        b"".join(encode_message(Take(Kind.IN, e, template, None), e + 1) for e in range(1, 20001))
    )
    time.sleep(2.0)
    stats = target.stats()
    row = {
        "waiting": stats.get("space.waiting"),
        "refused": stats.get("refused.waiting_per_session"),
        "rss_mib": target.rss(),
        "client_ms": target.served(),
    }
    c.close()
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="accepted for ./run bench (it is quick)")
    p.parse_args(argv)
    target = Target()
    try:
        time.sleep(0.3)
        base = {"rss_mib": target.rss(), "client_ms": target.served()}
        print(
            f"server up: {base['rss_mib']:.0f} MiB; a client's out+in {base['client_ms']:.1f} ms"
        )
        rows: dict[str, dict[str, Any]] = {"baseline": base}
        for name, attack, text in (
            ("idle", idle_connections, "1,100 idle connections from one address"),
            ("partial", partial_frames, "300 connections each holding most of a 1 MiB frame"),
            ("unread", unread_replies, "rd of a 512 KiB tuple, replies never read"),
            ("waiters", waiters, "20,000 waiting in_ on one connection"),
        ):
            row = rows[name] = attack(target)
            extra = ", ".join(
                f"{k} {v}" for k, v in row.items() if k not in ("rss_mib", "client_ms")
            )
            print(
                f"{text}: server at {row['rss_mib']:.0f} MiB; a client's out+in"
                f" {row['client_ms']:.1f} ms ({extra})"
            )
    finally:
        target.stop()
    saved = save({"benchmark": "abuse", **environment(), "attacks": rows}, "abuse")
    print(f"\nresults: {saved}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
