"""
Indexed matching in the tuple space: what a million unrelated tuples cost an operation.

Times, per operation and in microseconds, the sans-IO L{lips.space.TupleSpace} alone (no
network, no codec): on an empty space and on one holding N unrelated tuples
C{("data", i, 2*i)} (N = 1,000,000 unless C{--n} says otherwise), of the same arity
as the tuples the operations use, so that only the field index keeps them apart:

    out            out(("job", i, i))
    inp (take)     take(INP, ("job", ?int, ?int)), which finds and removes a job tuple
    inp, no match  take(INP, ("absent", ?int, ?int))
    rd among N     take(RD, ("data", k, ?int)) for a random k: the first field is shared
                   by all N stored tuples, the second picks one out; the "empty" space
                   holds only the tuples read
    rdp, scan      take(RDP, (?str, ?int, ?str)): no actual field, so no index applies
                   and every stored tuple of that arity is tried (the contrast)

Each figure is the median over C{--reps} repetitions of a batch of C{--ops} operations
timed with C{time.perf_counter_ns} (the scan row: fewer, so that a batch tries about
200,000 stored tuples), with the garbage collector off while timing, as C{timeit} does.
Tuples and templates are built and validated before timing.

    python -m bench.space_index              # N = 1,000,000 (about 20 s, ~1.7 GB)
    python -m bench.space_index --n 100000
    python -m bench.space_index --quick
"""

from __future__ import annotations

import argparse
import gc
import random
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from bench._common import environment, save
from lips.space import Kind, Status, TupleSpace
from lips.tuples import LTuple, Template, make_template, make_tuple

T = TypeVar("T")


class Process:
    """One caller of the space: a pid and its growing event numbers."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.event = 0

    def next(self) -> int:
        self.event += 1
        return self.event


def timed(batch: Callable[..., T], *args: Any) -> tuple[int, T]:
    """
    What one call of C{batch(*args)} returns and the nanoseconds it takes, with the
    garbage collector off.
    """
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        result = batch(*args)
        return time.perf_counter_ns() - start, result
    finally:
        gc.enable()


def outs(space: TupleSpace, pid: int, first: int, tuples: list[LTuple]) -> None:
    out = space.out
    for e, t in enumerate(tuples, first):
        out(pid, e, t)


def takes(
    space: TupleSpace, pid: int, first: int, kind: Kind, templates: list[Template]
) -> list[Status]:
    take = space.take
    return [take(pid, e, kind, t).status for e, t in enumerate(templates, first)]


def fill(space: TupleSpace, n: int) -> float:
    """Store N unrelated tuples; return the seconds it took."""
    filler = Process(1)
    start = time.perf_counter()
    gc.disable()
    try:
        out = space.out
        for i in range(n):
            out(filler.pid, filler.next(), ("data", i, i * 2))
    finally:
        gc.enable()
    # The filler's tuples are long-lived: keep the collector from walking them again.
    gc.collect()
    gc.freeze()
    return time.perf_counter() - start


class Measurements:
    """Per-operation times (microseconds) of the rows, for one space."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {}

    def add(self, row: str, ns: int, ops: int) -> None:
        self.samples.setdefault(row, []).append(ns / ops / 1000)

    def median(self, row: str) -> float:
        return statistics.median(self.samples[row])


ROWS = ("out", "inp (take)", "inp, no match", "rd among N", "rdp, scan")


def measure(
    space: TupleSpace, read_space: TupleSpace, keys: Sequence[int], ops: int, reps: int
) -> Measurements:
    """
    Time every row on C{space}; the rd row reads the tuples C{("data", k, 2k)} for
    C{k} in C{keys}, which C{read_space} holds.
    """
    m = Measurements()
    proc = Process(2)
    pid = proc.pid
    jobs: list[LTuple] = [make_tuple(("job", i, i)) for i in range(ops)]
    take_job = make_template(("job", int, int))
    absent = make_template(("absent", int, int))
    reads: list[Template] = [make_template(("data", k, int)) for k in keys]
    scan = make_template((str, int, str))

    # A scan tries every stored tuple: bound the tuples tried per batch.
    scans = max(1, min(ops, 200_000 // max(1, len(space))))
    for _ in range(reps):
        m.add("out", timed(outs, space, pid, proc.event + 1, jobs)[0], ops)
        proc.event += ops
        for row, target, kind, templates, expected in (
            ("inp (take)", space, Kind.INP, [take_job] * ops, Status.MATCHED),
            ("inp, no match", space, Kind.INP, [absent] * ops, Status.NO_MATCH),
            ("rd among N", read_space, Kind.RD, reads, Status.MATCHED),
            ("rdp, scan", space, Kind.RDP, [scan] * scans, Status.NO_MATCH),
        ):
            ns, statuses = timed(takes, target, pid, proc.event + 1, kind, templates)
            m.add(row, ns, len(templates))
            proc.event += len(templates)
            if any(s is not expected for s in statuses):
                raise RuntimeError(f"{row}: expected every operation to be {expected.name}")
    return m


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n", type=int, default=None, help="stored tuples (default 1,000,000)")
    p.add_argument("--ops", type=int, default=None, help="operations per batch (default 10,000)")
    p.add_argument("--reps", type=int, default=None, help="repetitions (default 7)")
    p.add_argument("--seed", type=int, default=None, help="seed for the tuples read")
    p.add_argument(
        "--quick", action="store_true", help="smoke run: N = 100,000, 2,000 ops, 3 repetitions"
    )
    args = p.parse_args(argv)
    n = args.n if args.n is not None else (100_000 if args.quick else 1_000_000)
    ops = args.ops if args.ops is not None else (2_000 if args.quick else 10_000)
    reps = args.reps if args.reps is not None else (3 if args.quick else 7)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    if n < 1 or ops < 1 or reps < 1:
        p.error("--n, --ops and --reps must be at least 1")

    print(f"space_index: N = {n:,}, {ops:,} ops per batch, {reps} repetitions, seed {seed}")
    rng = random.Random(seed)
    keys = [rng.randrange(n) for _ in range(ops)]

    empty = TupleSpace()
    only_read = TupleSpace()
    reader = Process(3)
    for k in sorted(set(keys)):
        only_read.out(reader.pid, reader.next(), ("data", k, k * 2))
    small = measure(empty, only_read, keys, ops, reps)
    del only_read

    full = TupleSpace()
    took = fill(full, n)
    print(f"filled {n:,} tuples in {took:.1f} s; peak RSS {max_rss_mb():,.0f} MB")
    large = measure(full, full, keys, ops, reps)
    if len(full) != n:
        raise RuntimeError(f"the full space holds {len(full)} tuples, expected {n}")

    print()
    width = 16
    header = f"{'op':<{width}} {'empty µs':>10} {f'N={n:,} µs':>16} {'ratio':>10}"
    print(header)
    print("-" * len(header))
    rows: list[dict[str, Any]] = []
    for row in ROWS:
        a, b = small.median(row), large.median(row)
        ratio = b / a
        print(f"{row:<{width}} {a:>10.2f} {b:>16.2f} {ratio:>10.1f}")
        rows.append(
            {
                "op": row,
                "empty_us": a,
                "full_us": b,
                "ratio": ratio,
                "empty_samples_us": small.samples[row],
                "full_samples_us": large.samples[row],
            }
        )
    print()
    print(
        "ratio = N µs / empty µs; near 1 means the index keeps the cost independent of N.\n"
        "rd among N: 'empty' holds only the tuples read.  rdp, scan: no actual field,\n"
        "so every stored tuple of the arity is tried (shown for contrast)."
    )
    print(f"peak RSS {max_rss_mb():,.0f} MB")
    saved = save(
        {
            "benchmark": "space_index",
            **environment(),
            "n": n,
            "ops": ops,
            "reps": reps,
            "seed": seed,
            "fill_seconds": took,
            "peak_rss_mb": max_rss_mb(),
            "rows": rows,
        },
        "space_index",
    )
    print(f"results: {saved}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
