"""
A benchmark before and after a change, in one invocation: C{bench.throughput} or
C{bench.replicated} run alternately against an old git revision and this working tree
(old, new, old, new, ...), each figure printed with every run's value, the medians,
new/old, and the spread of each side's runs, so that "within noise" can be read off.

    python -m bench.compare throughput -- --quick
    python -m bench.compare --old HEAD~3 --rounds 3 replicated -- --parts throughput
    python -m bench.compare --old v0.1 throughput -- --systems lips --clients 1,16

The old revision is checked out with C{git worktree add} into a temporary directory
(this checkout is never touched) and run there with a C{PYTHONPATH} of its own.  On
both sides a C{sitecustomize} leaves no other checkout of LiPS on the path (the
editable install puts the working tree on every interpreter's path), so that the old
scripts, their servers and clients import the old C{lips} and find the old twistd
plugins, and the new ones the new.  A revision from before C{bench/} was a
package runs as C{python bench/NAME.py}, with an empty C{bench/__init__.py} added to
its worktree so that its scripts import each other, not this tree's.  The worktree is
removed at the end (on errors and Ctrl-C too).

The options after C{--} go to both sides, so they must be ones the old revision's
script knows too.  Each side writes its own results file as usual; the comparison is
also written as JSON to C{bench/results/}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Final

import attrs

from bench._common import ROOT, environment, idle_load, save

SCRIPTS: Final = ("throughput", "replicated")
SIDES: Final = ("old", "new")

#: Leaves on an interpreter's path no checkout of LiPS but the one being run (the
#: editable install puts the working tree on every interpreter's path).
SITECUSTOMIZE: Final = """\
# Written by bench.compare: a run imports LiPS from its own checkout only.
import os
import sys

_tree = os.environ.get("LIPS_COMPARE_TREE")


def _other_checkout(entry):
    real = os.path.realpath(entry or ".")
    return real != _tree and os.path.exists(os.path.join(real, "lips", "__init__.py"))


if _tree:
    sys.path[:] = [entry for entry in sys.path if not _other_checkout(entry)]
"""


def _environment(tree: Path, scratch: Path) -> dict[str, str]:
    """The environment of a run in C{tree}: its checkout first, and only it."""
    shim = scratch / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(SITECUSTOMIZE)
    inherited = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(shim), str(tree), *filter(None, inherited)]),
        "LIPS_COMPARE_TREE": os.path.realpath(tree),
    }


@attrs.frozen
class Tree:
    """A checkout to run a benchmark in: its directory, how to run a script, its env."""

    side: str
    root: Path
    described: str
    """The revision, as C{git log --oneline} shows it."""
    packaged: bool
    """Whether C{bench/} is a package there (C{python -m bench.NAME})."""
    env: dict[str, str]

    def command(self, script: str, options: Sequence[str]) -> list[str]:
        if self.packaged:
            return [sys.executable, "-m", f"bench.{script}", *options]
        return [sys.executable, str(self.root / "bench" / f"{script}.py"), *options]


def git(*args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"compare: git {' '.join(args)} failed:\n{done.stderr.strip()}")
    return done.stdout.strip()


@contextlib.contextmanager
def old_tree(revision: str, scratch: Path) -> Iterator[Tree]:
    """C{revision} checked out in a worktree under C{scratch}, removed at the end."""
    commit = git("rev-parse", "--verify", f"{revision}^{{commit}}")
    path = scratch / f"old-{commit[:12]}"
    git("worktree", "add", "--detach", "--quiet", str(path), commit)
    try:
        packaged = (path / "bench" / "__init__.py").exists()
        if not packaged and (path / "bench").is_dir():
            (path / "bench" / "__init__.py").write_text("")
        env = _environment(path, scratch)
        yield Tree("old", path, git("log", "-1", "--format=%h %s", commit), packaged, env)
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)],
            capture_output=True,
            check=False,
        )
        subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"], check=False)


def new_tree(scratch: Path) -> Tree:
    """This working tree, run as it is."""
    env = _environment(ROOT, scratch)
    changed = " with changes" if git("status", "--porcelain", "--untracked-files=no") else ""
    described = f"the working tree: {git('log', '-1', '--format=%h', 'HEAD')}{changed}"
    return Tree("new", ROOT, described, (ROOT / "bench" / "__init__.py").exists(), env)


def run_once(tree: Tree, script: str, options: Sequence[str], log: Path) -> dict[str, Any]:
    """Run the benchmark in C{tree}, its output into C{log}; the results it saved."""
    with log.open("w") as out:
        done = subprocess.run(
            tree.command(script, options),
            cwd=tree.root,
            env=tree.env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    text = log.read_text(errors="replace")
    saved = [
        line.removeprefix("results: ")
        for line in text.splitlines()
        if line.startswith("results: ")
    ]
    if done.returncode != 0 or not saved:
        tail = "\n".join(text.splitlines()[-30:])
        raise RuntimeError(
            f"the {tree.side} {script} failed (status {done.returncode}); its output ends:\n{tail}"
        )
    result: dict[str, Any] = json.loads(Path(saved[-1]).read_text())
    return result


# -- figures ----------------------------------------------------------------------------


@attrs.frozen
class Figure:
    """One figure of a run: what it is, its unit, and which way is better."""

    name: str
    unit: str
    higher_is_better: bool


def _rows(rows: Sequence[dict[str, Any]]) -> Iterator[tuple[Figure, float]]:
    for r in rows:
        label = f"{r['system']} c{r['clients']}"
        yield Figure(f"{label} pairs/s", "/s", True), r["pairs_per_s"]
        yield Figure(f"{label} p50", "µs", False), r["p50_us"]
        yield Figure(f"{label} p99", "µs", False), r["p99_us"]
        if r.get("server_us_per_pair") is not None:
            yield Figure(f"{label} srv µs/pair", "µs", False), r["server_us_per_pair"]


def figures(script: str, result: dict[str, Any]) -> dict[Figure, float]:
    """The figures of one run's results, by what they are."""
    found: list[tuple[Figure, float]] = []
    if script == "throughput":
        found += _rows(result.get("rows", []))
    else:
        found += _rows(result.get("throughput", []))
        resumed = [t["all_resumed_s"] for t in result.get("failover", [])]
        if resumed and None not in resumed:
            found.append(
                (Figure("failover median", "ms", False), 1000 * statistics.median(resumed))
            )
        for size in result.get("join", []):
            found.append(
                (Figure(f"join {size['tuples']:,} tuples", "ms", False), 1000 * size["serving_s"])
            )
    return {f: v for f, v in found if v is not None}


def _spread(values: Sequence[float]) -> float | None:
    """(highest - lowest) / median, over two or more runs."""
    if len(values) < 2 or not statistics.median(values):
        return None
    return (max(values) - min(values)) / statistics.median(values)


def _value(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.1f}"


def report(runs: dict[str, list[dict[Figure, float]]]) -> tuple[list[str], list[dict[str, Any]]]:
    """The comparison table, and its rows for the results file."""
    order = list(dict.fromkeys(f for run in runs["old"] + runs["new"] for f in run))
    width = max([len(f.name) for f in order] + [6])
    head = (
        f"{'figure':<{width}} {'unit':>4}  {'old runs':<24} {'new runs':<24} {'old':>9} "
        f"{'new':>9} {'new/old':>8} {'noise':>6}  within"
    )
    lines = [head, "-" * len(head)]
    rows = []
    for f in order:
        old = [run[f] for run in runs["old"] if f in run]
        new = [run[f] for run in runs["new"] if f in run]
        if not old or not new:
            continue
        a, b = statistics.median(old), statistics.median(new)
        ratio = b / a if a else float("nan")
        spreads = [s for s in (_spread(old), _spread(new)) if s is not None]
        noise = max(spreads) if spreads else None
        within = "-" if noise is None else ("yes" if abs(ratio - 1) <= noise else "NO")
        lines.append(
            f"{f.name:<{width}} {f.unit:>4}  {', '.join(map(_value, old)):<24} "
            f"{', '.join(map(_value, new)):<24} {_value(a):>9} {_value(b):>9} {ratio:>8.2f} "
            f"{'-' if noise is None else f'{noise:.0%}':>6}  {within}"
        )
        rows.append(
            {
                "figure": f.name,
                "unit": f.unit,
                "higher_is_better": f.higher_is_better,
                "old": old,
                "new": new,
                "old_median": a,
                "new_median": b,
                "ratio": ratio,
                "noise": noise,
            }
        )
    return lines, rows


# -- main -------------------------------------------------------------------------------


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("script", choices=SCRIPTS, help="the benchmark to compare")
    p.add_argument("options", nargs="*", help="its options (after --), for both sides")
    p.add_argument("--old", default="HEAD", help="the old git revision (default HEAD)")
    p.add_argument(
        "--rounds", type=int, default=2, help="runs of each side, alternating (default 2)"
    )
    p.add_argument(
        "--keep",
        type=Path,
        default=None,
        metavar="DIR",
        help="keep every run's output in a new directory under DIR",
    )
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    return args


def _terminate(signum: int, frame: FrameType | None) -> None:
    # So that SIGTERM unwinds like Ctrl-C: the worktree is removed.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    signal.signal(signal.SIGTERM, _terminate)
    options = list(args.options)
    print(
        f"compare: {args.script} {' '.join(options)}; old = {args.old}, new = the working "
        f"tree; {args.rounds} round(s) of old, new"
    )
    idle_load()
    scratch = Path(tempfile.mkdtemp(prefix="lips-compare-"))
    logs = scratch / "logs"
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        logs = Path(tempfile.mkdtemp(prefix="run-", dir=args.keep))
        print(f"the runs' output is kept in {logs}")
    logs.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict[Figure, float]]] = {side: [] for side in SIDES}
    raw: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    try:
        with old_tree(args.old, scratch) as old:
            trees = {"old": old, "new": new_tree(scratch)}
            for tree in trees.values():
                print(f"{tree.side}: {tree.described}"[:99])
                if not (tree.root / "bench" / f"{args.script}.py").exists():
                    raise SystemExit(f"compare: {tree.described} has no bench/{args.script}.py")
            for k in range(1, args.rounds + 1):
                for side in SIDES:
                    began = time.monotonic()
                    log = logs / f"{side}-{k}.log"
                    result = run_once(trees[side], args.script, options, log)
                    runs[side].append(figures(args.script, result))
                    raw[side].append(result)
                    print(
                        f"  round {k}/{args.rounds} {side}: {time.monotonic() - began:.0f} s",
                        flush=True,
                    )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    lines, rows = report(runs)
    print()
    print("\n".join(lines))
    print(
        "old, new: medians over the runs; noise: the larger of the two sides' spreads "
        "((best - worst) / median);\nwithin: whether new/old is within 1 ± noise (needs "
        "two rounds or more)."
    )
    saved = save(
        {
            "benchmark": "compare",
            **environment(),
            "script": args.script,
            "options": options,
            "old": args.old,
            "rounds": args.rounds,
            "figures": rows,
            "runs": raw,
        },
        f"compare-{args.script}",
    )
    print(f"\nresults: {saved}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
