"""
What the benchmark scripts share: option parsing, statistics, the machine's load,
results files, the reactor in a thread, client processes, and the measurement of
out+in pairs that C{bench.throughput} and C{bench.replicated} both make.

Servers are started with L{lips.testing} (L{lips.testing.Cluster},
L{lips.testing.ProcessGroup}); the client processes here are the scripts themselves,
run again with a role (C{python -m bench.NAME ROLE ...}): each says C{ready}, waits
for a line on stdin, and prints C{result <json>} when it is done.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import selectors
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

import attrs
from twisted.internet import defer, threads

from lips.testing import run_directory

T = TypeVar("T")

HERE: Final = Path(__file__).resolve().parent
#: The checkout the benchmarks run from: the client processes run there.
ROOT: Final = HERE.parent
RESULTS: Final = HERE / "results"
#: Cores busy with other work during a measurement above which the figures are suspect.
BUSY: Final = 0.25
#: How long one client step (a coroutine run on the reactor) may take.
STEP: Final = 60.0


# -- options ----------------------------------------------------------------------------


def ints(text: str) -> list[int]:
    """The comma-separated integers of C{text} (L{ValueError} if one is not)."""
    return [int(x) for x in text.split(",") if x.strip()]


def floats(text: str) -> list[float]:
    """The comma-separated numbers of C{text} (L{ValueError} if one is not)."""
    return [float(x) for x in text.split(",") if x.strip()]


def names(text: str) -> list[str]:
    """The comma-separated names of C{text}, stripped, empty ones left out."""
    return [x.strip() for x in text.split(",") if x.strip()]


# -- statistics -------------------------------------------------------------------------


def quick_defaults(args: Any, quick: bool, **defaults: tuple[Any, Any]) -> None:
    """
    Fill each option of C{args} left at C{None} with its default, C{(quick, full)}: the
    first with C{--quick} (a smoke run), the second otherwise.
    """
    for name, (short, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, short if quick else full)


def percentile(ordered: Sequence[float], q: float) -> float:
    """The nearest-rank C{q}-th percentile of sorted C{ordered}."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[rank - 1])


def spread(clients: int, procs: int) -> list[int]:
    """C{clients} over at most C{procs} processes, as evenly as may be."""
    procs = max(1, min(procs, clients))
    return [clients // procs + (1 if k < clients % procs else 0) for k in range(procs)]


def firsts(shares: Sequence[int]) -> Iterator[tuple[int, int]]:
    """Each client process's share, with the index of its first client overall."""
    first = 0
    for share in shares:
        yield first, share
        first += share


# -- the machine ------------------------------------------------------------------------


def machine_busy_seconds() -> float:
    """CPU seconds all cores of the machine have spent busy so far (from /proc/stat)."""
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return math.nan
    # cpu user nice system idle iowait irq softirq steal ...
    ticks = [int(x) for x in first[1:9]]
    busy = sum(ticks) - ticks[3] - ticks[4]
    return busy / os.sysconf("SC_CLK_TCK")


def idle_load() -> float:
    """
    The machine's load over one second before a benchmark starts, said with a warning
    if it is busy with other work; cores busy.
    """
    before = machine_busy_seconds()
    time.sleep(1)
    load = machine_busy_seconds() - before
    print(f"machine load before starting: {load:.0%} of a core")
    if load > BUSY:
        print("WARNING: the machine is busy with other work: these figures will be noisy.")
    return load


def warn_if_busy(busiest: float) -> None:
    """Say so if up to C{busiest} cores were busy with other work during a measurement."""
    if busiest > BUSY:
        print(
            f"WARNING: up to {busiest:.0%} of a core was busy with other work during a\n"
            "measurement: the machine is shared, and these figures are not reliable."
        )


def wait_until(what: str, ready: Callable[[], bool], deadline: float, step: float) -> None:
    """Call C{ready} every C{step} seconds until it is true; raise after C{deadline}."""
    end = time.monotonic() + deadline
    while not ready():
        if time.monotonic() > end:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(step)


# -- results ----------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    """When and where a benchmark ran, for its results."""
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": sys.version,
        "machine": platform.platform(),
        "cores": os.cpu_count(),
    }


def _finite(value: Any) -> Any:
    """C{value} with NaN (a figure that could not be measured) as C{None}, for JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def save(result: Mapping[str, Any], name: str) -> Path:
    """Write C{result} as C{bench/results/NAME-<time>.json}; its path."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(_finite(dict(result)), indent=2, allow_nan=False) + "\n")
    return path


def public_args(args: Any, *hidden: str) -> dict[str, Any]:
    """A script's options for its results: paths as strings, C{hidden} ones left out."""
    return {
        k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in hidden
    }


@contextlib.contextmanager
def workspace(keep: Path | None, prefix: str) -> Iterator[Path]:
    """
    The directory of a run's server logs and cluster files: with C{--keep DIR}, a new
    one under DIR, kept (and said so); else a temporary one, kept only if the run fails.
    """
    at = None
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        at = Path(tempfile.mkdtemp(prefix="run-", dir=keep))
        print(f"server logs and cluster files are kept in {at}")
    with run_directory(prefix, at) as path:
        yield path


# -- the reactor, in a thread -----------------------------------------------------------


class ReactorThread:
    """
    The global reactor running in a daemon thread: the benchmark's own steps are plain
    blocking code (starting and killing processes), its clients' steps coroutines that
    L{run} hands to the reactor, timing inside it.
    """

    def __init__(self) -> None:
        from twisted.internet import reactor

        self.reactor: Any = reactor
        self.thread = threading.Thread(
            target=reactor.run,
            kwargs={"installSignalHandlers": False},
            name="bench-reactor",
            daemon=True,
        )
        self.thread.start()

    def run(
        self,
        fn: Callable[..., Coroutine[Any, Any, T]],
        *args: Any,
        timeout: float = STEP,
        **kwargs: Any,
    ) -> T:
        """Run C{fn(*args, **kwargs)} on the reactor; its result, or its exception here."""

        def call() -> defer.Deferred[T]:
            d = defer.Deferred.fromCoroutine(fn(*args, **kwargs))
            d.addTimeout(timeout, self.reactor)
            return d

        result: T = threads.blockingCallFromThread(self.reactor, call)  # type: ignore[arg-type]
        return result

    def stop(self) -> None:
        if self.reactor.running:
            self.reactor.callFromThread(self.reactor.stop)
        self.thread.join(10)


# -- client processes -------------------------------------------------------------------


def spawn_client(module: str, role: str, *options: str) -> subprocess.Popen[bytes]:
    """C{python -m MODULE ROLE OPTIONS}, from this checkout, with pipes to and from it."""
    return subprocess.Popen(
        [sys.executable, "-m", module, role, *options],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )


def stop_child(proc: subprocess.Popen[bytes]) -> None:
    """End a client process: SIGTERM, then SIGKILL if it lingers; reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def read_line(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    """The next line C{proc} prints, waiting at most C{timeout} seconds."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise RuntimeError("a client process did not answer in time")
    return proc.stdout.readline()


def tell(child: subprocess.Popen[bytes], line: str) -> None:
    """Write C{line} to a client process's stdin."""
    assert child.stdin is not None
    child.stdin.write(line.encode() + b"\n")
    child.stdin.flush()


def wait_ready(children: Sequence[subprocess.Popen[bytes]], what: str) -> None:
    """Until every client process has said C{ready}; raise with its stderr if one fails."""
    for child in children:
        line = read_line(child, 60)
        if line.strip() != b"ready":
            stop_child(child)
            _, err = child.communicate(timeout=10)
            raise RuntimeError(f"a {what} client failed to start:\n{err.decode()}")


class Logged(Protocol):
    """Servers whose logs say what went wrong (a L{lips.testing.ProcessGroup})."""

    def tails(self, lines: int = 20) -> str: ...


def result_of(child: subprocess.Popen[bytes], timeout: float, what: str, servers: Logged) -> Any:
    """The C{result <json>} a client process printed last, once it has exited."""
    out, err = child.communicate(timeout=timeout)
    lines = [x for x in out.decode().splitlines() if x.startswith("result ")]
    if child.returncode != 0 or not lines:
        raise RuntimeError(
            f"a {what} client failed (status {child.returncode}):\n{err.decode()[-3000:]}\n"
            f"server logs:\n{servers.tails()}"
        )
    return json.loads(lines[-1].removeprefix("result "))


# -- out+in pairs -----------------------------------------------------------------------

PairFunction = Callable[[int], Awaitable[None]]


@attrs.define
class Window:
    """A client process's measurement window and the pairs that ended in it."""

    start_ns: int
    end_ns: int
    latencies_ns: list[int] = attrs.Factory(list)


async def run_pairs(pair: PairFunction, window: Window) -> None:
    """Do pairs until the window closes; record those that end inside it."""
    clock = time.perf_counter_ns
    i = 0
    while True:
        began = clock()
        if began >= window.end_ns:
            return
        await pair(i)
        ended = clock()
        if window.start_ns <= ended <= window.end_ns:
            window.latencies_ns.append(ended - began)
        i += 1


async def measure_pairs(
    reactor: Any, pairs: Sequence[PairFunction], warmup: float, duration: float
) -> None:
    """
    The measuring part of a client process: say C{ready}, wait for a line on stdin
    (every client process starts together), run C{pairs} through C{warmup} and
    C{duration} seconds, and print C{result <json>}: pair latencies and CPU share.
    """
    print("ready", flush=True)
    await threads.deferToThread(sys.stdin.readline)
    start = time.perf_counter_ns() + int(warmup * 1e9)
    window = Window(start, start + int(duration * 1e9))
    marks: list[tuple[float, float]] = []

    def mark() -> None:
        marks.append((time.process_time(), time.perf_counter()))

    reactor.callLater(warmup, mark)
    await defer.gatherResults(
        [defer.Deferred.fromCoroutine(run_pairs(pair, window)) for pair in pairs],
        consumeErrors=True,
    )
    # From the window's start to the end of the last pair (each client finishes the pair
    # it is in when the window closes, so a little past the window's end).
    mark()
    (cpu0, wall0), (cpu1, wall1) = marks[0], marks[-1]
    result = {
        "latencies_ns": window.latencies_ns,
        "cpu_share": (cpu1 - cpu0) / (wall1 - wall0) if wall1 > wall0 else math.nan,
    }
    sys.stdout.write("result " + json.dumps(result) + "\n")
    sys.stdout.flush()


def react(body: Callable[[Any], Coroutine[Any, Any, None]]) -> None:
    """Run C{body(reactor)} on the global reactor until it is done (a client process)."""
    from twisted.internet import task

    task.react(lambda reactor: defer.Deferred.fromCoroutine(body(reactor)))


@attrs.define
class Row:
    """One measurement: a system at a concurrency."""

    system: str
    clients: int
    pairs_per_s: float
    p50_us: float
    p99_us: float
    server_cpu: float
    client_cpu: float
    machine_busy: float
    estimated_latency: bool = False
    detail: dict[str, Any] = attrs.Factory(dict)
    runs: list[float] = attrs.Factory(list)
    """The pairs/s of every run, when this row is the median of several."""

    @property
    def spread(self) -> float:
        """(highest - lowest) / this run's pairs/s, over the runs."""
        if len(self.runs) < 2 or not self.pairs_per_s:
            return math.nan
        return (max(self.runs) - min(self.runs)) / self.pairs_per_s

    @property
    def other_load(self) -> float:
        """Cores busy in the window with work neither the server nor the clients did."""
        return self.machine_busy - self.server_cpu - self.client_cpu

    @property
    def server_us_per_pair(self) -> float:
        """Server CPU time per pair: what the server pays, whoever is the bottleneck."""
        return self.server_cpu / self.pairs_per_s * 1e6 if self.pairs_per_s else math.nan


def median_row(runs: list[Row]) -> Row:
    """The run with the median pairs/s (the lower middle one of an even number)."""
    ordered = sorted(runs, key=lambda r: r.pairs_per_s)
    chosen = ordered[(len(ordered) - 1) // 2]
    chosen.runs = [r.pairs_per_s for r in runs]
    return chosen


class Measured(Logged, Protocol):
    """The servers of a measurement (a L{lips.testing.ProcessGroup})."""

    def cpu_seconds(self) -> float: ...


def measure_clients(
    system: str,
    clients: int,
    commands: Sequence[tuple[str, str, Sequence[str]]],
    servers: Measured,
    *,
    warmup: float,
    duration: float,
    counters: Callable[[], Mapping[str, float]] | None = None,
) -> Row:
    """
    Run the client processes C{commands} (each a module, role and options for
    L{spawn_client}, whose body ends in L{measure_pairs}) against C{servers}, started
    together; what they saw over the window, with the servers' CPU and the machine's.

    @param counters: the servers' counters whose change over the window is kept (as
        C{detail["ring"]}).
    """
    children: list[subprocess.Popen[bytes]] = []
    before: Mapping[str, float] = {}
    after: Mapping[str, float] = {}
    try:
        for module, role, options in commands:
            children.append(spawn_client(module, role, *options))
        wait_ready(children, system)
        for child in children:
            tell(child, "go")
        time.sleep(warmup)
        cpu_before, busy_before = servers.cpu_seconds(), machine_busy_seconds()
        if counters is not None:
            before = counters()
        time.sleep(duration)
        cpu_after, busy_after = servers.cpu_seconds(), machine_busy_seconds()
        if counters is not None:
            after = counters()
        latencies: list[int] = []
        client_cpu = 0.0
        for child in children:
            result = result_of(child, warmup + duration + 60, system, servers)
            latencies.extend(result["latencies_ns"])
            client_cpu += result["cpu_share"]
    finally:
        for child in children:
            stop_child(child)
    latencies.sort()
    detail: dict[str, Any] = {
        "pairs": len(latencies),
        "client_processes": len(children),
        "mean_us": sum(latencies) / len(latencies) / 1000 if latencies else math.nan,
    }
    if before:
        detail["ring"] = {k: after[k] - before[k] for k in before}
    return Row(
        system=system,
        clients=clients,
        pairs_per_s=len(latencies) / duration,
        p50_us=percentile(latencies, 50) / 1000,
        p99_us=percentile(latencies, 99) / 1000,
        server_cpu=(cpu_after - cpu_before) / duration,
        client_cpu=client_cpu,
        machine_busy=(busy_after - busy_before) / duration,
        detail=detail,
    )
