"""
Master/worker prime counting through a LiPS tuple space.

The master cuts [2, limit) into chunks and puts one ("task", id, lo, hi) tuple per chunk
into the space; worker processes take tasks, count the primes in their chunk and put
("result", id, count, worker) tuples back; the master takes one result per task and
checks the total against a sieve it runs itself.

    python examples/primes.py                      # starts a local MessageServer too
    python examples/primes.py --server tcp:host=127.0.0.1:port=7010 --workers 8

Run as "worker" (the master does this for you) a process serves tasks until it takes a
task with id -1.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator

from lips import blocking


def count_primes(lo: int, hi: int) -> int:
    """The number of primes p with lo <= p < hi (a segmented sieve)."""
    lo = max(lo, 2)
    if hi <= lo:
        return 0
    root = math.isqrt(hi - 1)
    small = bytearray([1]) * (root + 1)
    small[0:2] = b"\x00\x00"
    for i in range(2, math.isqrt(root) + 1):
        if small[i]:
            small[i * i :: i] = bytearray(len(small[i * i :: i]))
    segment = bytearray([1]) * (hi - lo)
    for p in range(2, root + 1):
        if small[p]:
            start = max(p * p, (lo + p - 1) // p * p)
            segment[start - lo :: p] = bytearray(len(segment[start - lo :: p]))
    return sum(segment)


def worker(server: str) -> int:
    with blocking.connect(server, name="primes-worker") as space:
        space.out(("ready", os.getpid()))
        while True:
            _, task, lo, hi = space.in_(("task", int, int, int))
            if task < 0:
                return 0
            space.out(("result", task, count_primes(lo, hi), os.getpid()))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(port: int, proc: subprocess.Popen[bytes], deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the MessageServer exited with status {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError("the MessageServer did not start listening in time")


@contextlib.contextmanager
def local_server() -> Iterator[str]:
    """A MessageServer process on a free loopback port, for the duration."""
    port = _free_port()
    with tempfile.NamedTemporaryFile(prefix="lips-msgserver-", suffix=".log", delete=False) as log:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "twisted", "--log-format", "text", "lips-msgserver"),
                *("--listen", f"tcp:{port}:interface=127.0.0.1", "--name", "demo"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for(port, proc, time.monotonic() + 20)
        print(f"MessageServer on 127.0.0.1:{port} (log: {log.name})")
        yield f"tcp:host=127.0.0.1:port={port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def master(server: str, limit: int, chunk: int, workers: int) -> int:
    procs = [
        subprocess.Popen([sys.executable, os.path.abspath(__file__), "worker", "--server", server])
        for _ in range(workers)
    ]
    started = time.monotonic()
    try:
        with blocking.connect(server, name="primes-master") as space:
            for _ in procs:
                space.in_(("ready", int), timeout=60)
            bounds = [(lo, min(lo + chunk, limit)) for lo in range(2, limit, chunk)]
            for task, (lo, hi) in enumerate(bounds):
                space.out(("task", task, lo, hi))
            print(f"{len(bounds)} tasks out, {workers} workers counting primes below {limit:,}")
            total = 0
            seen: set[int] = set()
            by_worker: Counter[int] = Counter()
            for _ in bounds:
                _, task, count, who = space.in_(("result", int, int, int), timeout=600)
                if task in seen:
                    raise RuntimeError(f"task {task} answered twice")
                seen.add(task)
                total += count
                by_worker[who] += 1
            for _ in procs:
                space.out(("task", -1, 0, 0))
            for p in procs:
                p.wait(60)
            left = space.stats()["space.tuples"]
        elapsed = time.monotonic() - started
        expected = count_primes(2, limit)
        shares = ", ".join(f"{n}" for _, n in sorted(by_worker.items()))
        print(f"tasks done per worker: {shares}")
        print(f"primes below {limit:,}: {total:,} in {elapsed:.2f} s")
        verdict = "OK" if total == expected else "WRONG"
        print(f"check against a local sieve: {expected:,} -> {verdict}")
        print(f"tuples left in the space: {left}")
        return 0 if total == expected and not left else 1
    finally:
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("role", nargs="?", choices=["master", "worker"], default="master")
    p.add_argument("--server", help="client endpoint of a MessageServer (default: start one)")
    p.add_argument("--limit", type=int, default=20_000_000, help="count primes below this")
    p.add_argument("--chunk", type=int, default=100_000, help="numbers per task")
    p.add_argument("--workers", type=int, default=4, help="worker processes")
    args = p.parse_args(argv)
    if args.limit < 3 or args.chunk < 1 or args.workers < 1:
        p.error("--limit must be at least 3, --chunk and --workers at least 1")
    if args.role == "worker":
        if not args.server:
            p.error("a worker needs --server")
        return worker(args.server)
    if args.server:
        return master(args.server, args.limit, args.chunk, args.workers)
    with local_server() as server:
        return master(server, args.limit, args.chunk, args.workers)


if __name__ == "__main__":
    sys.exit(main())
