"""
The C{lips} command line.

    lips out job 1              store ("job", 1)
    lips in job ?int            take a tuple matching ("job", <int>)
    lips rd --timeout 5 job ?   read ("job", <anything>), waiting up to 5 s
    lips inp / rdp ...          the same, answering at once
    lips status                 a running server's counters
    lips msgserver [options]    run a MessageServer in the foreground (twistd options)
    lips fixserver [options]    run a FixServer in the foreground
    lips sim [--replicated | --served | --armor] [--seeds N | --seed N]
                                run the deterministic simulators over many seeds
    lips submit -c CLUSTER.toml --node N JOB.toml
                                run an application under the FTM, print its result
    lips job status -c CLUSTER.toml NAME
                                an application's state and outcome
    lips armors -c CLUSTER.toml the ARMORs: who manages whom, on which node

Each field is a JSON value (C{1}, C{2.5}, C{true}, C{null}, C{"text"}, C{[1, 2]}); a word
that is not JSON is taken as a string.  In templates C{?int}, C{?float}, C{?str},
C{?bytes}, C{?bool} are formals and C{?} (or C{?any}) matches anything; a string that
really starts with C{?} is written with two (C{??what}).  Bytes are written and printed as
C{{"$bytes": "<base64>"}}.  The server is C{--server} or C{$LIPS_SERVER}, by default
C{tcp:host=127.0.0.1:port=7010}.  Give C{--server} once per server of a replicated space
(or list them in C{$LIPS_SERVER}, separated by spaces): the first reachable one is used,
and a request is moved to the next if that server fails or is unavailable.

Exit status: 0 done, 1 nothing matched or timed out, 2 bad usage or tuple, 3 the server
could not be reached or refused the request.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

from lips import ANY
from lips.errors import LipsError, OutcomeUnknown, RequestError, Timeout
from lips.tuples import TupleError, formal_by_name

__all__ = ["format_tuple", "main", "parse_fields"]

DEFAULT_SERVER = "tcp:host=127.0.0.1:port=7010"
_SERVER_ROLES = ("msgserver", "fixserver")


class FieldError(ValueError):
    """A command-line field could not be understood."""


def _seconds(text: str) -> float:
    """A finite, non-negative number of seconds (argparse type: a bad one is exit 2)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"seconds must be finite and 0 or more, not {text!r}")
    return value


def _from_json(value: Any, template: bool) -> Any:
    if isinstance(value, str):
        if template and value.startswith("?"):
            return _formal(value)
        return value[1:] if value.startswith("??") else value
    if isinstance(value, list):
        return tuple(_from_json(v, template) for v in value)
    if isinstance(value, dict):
        if set(value) == {"$bytes"} and isinstance(value["$bytes"], str):
            try:
                return base64.b64decode(value["$bytes"], validate=True)
            except binascii.Error as e:
                raise FieldError(f"bad base64 in $bytes: {e}") from None
        raise FieldError('objects are not values; write bytes as {"$bytes": "<base64>"}')
    return value


def _formal(text: str) -> Any:
    if text.startswith("??"):
        return text[1:]
    name = text[1:]
    if name in ("", "any"):
        return ANY
    try:
        return formal_by_name(name)
    except TupleError as e:
        raise FieldError(str(e)) from None


def parse_fields(texts: Sequence[str], template: bool) -> tuple[Any, ...]:
    """Turn command-line words into the fields of a tuple or template."""
    fields = []
    for text in texts:
        if template and text.startswith("?"):
            fields.append(_formal(text))
            continue
        try:
            value = json.loads(text)
        except ValueError:
            value = text  # a bare word is a string
        fields.append(_from_json(value, template))
    return tuple(fields)


def _to_json(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    if isinstance(value, tuple | list):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    return value


def format_tuple(values: Sequence[Any]) -> str:
    """A tuple as one line of JSON."""
    return json.dumps(_to_json(tuple(values)), ensure_ascii=False)


def _run_server(role: str, args: list[str]) -> int:
    from twisted.scripts.twistd import run

    sys.argv = ["twistd", "--nodaemon", "--pidfile=", f"lips-{role}", *args]
    run()
    return 0


def _simulate(
    start: int, count: int, one: int | None, replicated: bool, served: bool = False
) -> int:
    import time

    import attrs

    from lips.testing.ringsim import InvariantViolation, ReplicatedSimulation, RingSimulation

    def run(seed: int) -> RingSimulation:
        if served:
            from lips.testing.clustersim import ClusterSimulation

            return ClusterSimulation(seed).run()
        if replicated:
            return ReplicatedSimulation.random(seed).run()
        return RingSimulation(seed).run()

    def mix_of(sim: RingSimulation) -> str:
        cluster = getattr(sim, "cluster", None)
        if cluster is not None:
            return str(cluster.mix)
        faults = attrs.asdict(sim.scenario.faults)
        mix = "+".join(name for name, value in faults.items() if name != "delay" and value)
        return mix or "reordering only"

    if one is not None:
        try:
            sim = run(one)
        except InvariantViolation as e:
            print(e)
            return 1
        print(f"seed {one}: {getattr(sim, 'cluster', sim.scenario)}")
        payloads = "" if served else f", {len(sim.submitted)} payloads"
        print(f"{sim.steps} steps{payloads}")
        if isinstance(sim, ReplicatedSimulation):
            print(f"{len(sim.ops)} operations, {len(sim.answers)} answered, {sim.retries} retries")
        for line in sim.summary():
            print(line)
        return 0
    began = time.monotonic()
    failed: list[str] = []
    mixes: dict[str, int] = {}
    steps = 0
    for done, seed in enumerate(range(start, start + count), 1):
        try:
            sim = run(seed)
        except InvariantViolation as e:
            failed.append(str(e))
            if served:
                print(f"seed {seed} failed: {str(e).splitlines()[0]}", flush=True)
            continue
        finally:
            if served and done % 100 == 0:
                elapsed = time.monotonic() - began
                print(f"  {done} seeds, {len(failed)} failed, {elapsed:.0f} s", flush=True)
        steps += sim.steps
        mix = mix_of(sim)
        mixes[mix] = mixes.get(mix, 0) + 1
    elapsed = time.monotonic() - began
    for text in failed[:5]:
        print(text)
    last = start + count - 1
    kind = "served cluster" if served else "replicated tuple space" if replicated else "ring"
    print(f"{kind} seeds {start}..{last}: {count - len(failed)} passed, {len(failed)} failed")
    print(f"{steps:,} steps checked in {elapsed:.1f} s")
    for mix, n in sorted(mixes.items(), key=lambda kv: -kv[1]):
        print(f"  {n:6} {mix}")
    return 1 if failed else 0


def _simulate_armor(start: int, count: int, one: int | None) -> int:
    """C{lips sim --armor}: the ARMOR simulator (L{lips.testing.armorsim})."""
    import collections
    import time

    from lips.testing.armorsim import ArmorSimulation
    from lips.testing.ringsim import InvariantViolation

    if one is not None:
        try:
            sim = ArmorSimulation(one).run()
        except InvariantViolation as e:
            print(e)
            return 1
        print(f"seed {one}: {sim.world.steps} steps")
        for line in sim.summary():
            print(line)
        return 0
    began = time.monotonic()
    failed: list[str] = []
    faults: collections.Counter[str] = collections.Counter()
    epochs: collections.Counter[int] = collections.Counter()
    steps = 0
    for seed in range(start, start + count):
        try:
            sim = ArmorSimulation(seed).run()
        except InvariantViolation as e:
            failed.append(str(e))
            continue
        steps += sim.steps
        faults.update(sim.injected)
        epochs[sim.current_epoch()] += 1
    elapsed = time.monotonic() - began
    for text in failed[:5]:
        print(text)
    last = start + count - 1
    print(f"ARMOR seeds {start}..{last}: {count - len(failed)} passed, {len(failed)} failed")
    per_seed = 1000 * elapsed / max(count, 1)
    print(f"{steps:,} steps checked in {elapsed:.1f} s ({per_seed:.0f} ms a seed)")
    print(
        "  faults injected: "
        + (", ".join(f"{k} {v}" for k, v in sorted(faults.items())) or "none")
    )
    print("  runs ending in epoch: " + ", ".join(f"{k}: {v}" for k, v in sorted(epochs.items())))
    return 1 if failed else 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lips",
        description="LiPS tuple space command line.",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "-s",
        "--server",
        action="append",
        default=None,
        help=(
            "client endpoint of the server; repeat it for the servers of a replicated"
            f" space (default $LIPS_SERVER or {DEFAULT_SERVER})"
        ),
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="command")
    o = sub.add_parser("out", help="store a tuple")
    o.add_argument("fields", nargs="+")
    for name, blocking in (("in", True), ("rd", True), ("inp", False), ("rdp", False)):
        c = sub.add_parser(name, help=f"{name} a tuple matching a template")
        if blocking:
            c.add_argument(
                "-t", "--timeout", type=_seconds, default=None, help="seconds to wait (0 or more)"
            )
        c.add_argument("fields", nargs="+")
    st = sub.add_parser(
        "status",
        aliases=["stats"],
        help="print a running server's counters (with -c: a FixServer's and the FTM's)",
    )
    st.add_argument(
        "-c",
        "--config",
        help="a cluster file: ask its FixServers, and show the FTM's status too",
    )
    sim = sub.add_parser("sim", help="run the ring simulator over many seeds")
    sim.add_argument("--seeds", type=int, default=100, help="how many seeds (default 100)")
    sim.add_argument("--start", type=int, default=0, help="first seed (default 0)")
    sim.add_argument("--seed", type=int, default=None, help="replay this one seed, verbosely")
    which = sim.add_mutually_exclusive_group()
    which.add_argument(
        "--replicated",
        action="store_true",
        help="simulate the replicated tuple space (clients, failover, state transfer)",
    )
    which.add_argument(
        "--served",
        action="store_true",
        help=(
            "simulate served servers and real clients: MessageServer cores with their"
            " timeouts, client failover and deadlines, paused and crashed servers"
        ),
    )
    which.add_argument(
        "--armor",
        action="store_true",
        help=(
            "simulate Chameleon's ARMORs: FTM and backup, surrogate managers, common"
            " ARMORs, daemons and tasks, with seeded kills and hangs of any of them"
        ),
    )
    _job_parsers(sub)
    for role in _SERVER_ROLES:
        sub.add_parser(role, help=f"run a {role} in the foreground (lips {role} --help)")
    return p


def _job_parsers(sub: Any) -> None:
    """The commands of applications under the FTM: submit, job status, armors."""

    def cluster(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "-c",
            "--config",
            required=True,
            help="the cluster file (TOML): its FixServers, and its key for a submitter",
        )

    s = sub.add_parser(
        "submit",
        help="run an application under the FTM and print its result",
        description=(
            "Hand an application to the cluster's Fault Tolerance Manager through this"
            " node's ARMOR daemon and wait for its result (printed as JSON).  Exit status:"
            " 0 it succeeded, 1 it failed or was refused, 2 a bad job, 3 the cluster could"
            " not be reached or no result came within --wait."
        ),
    )
    cluster(s)
    s.add_argument("job", nargs="?", help="the job file (TOML); or give --target")
    s.add_argument("--node", required=True, help="this node: whose ARMOR daemon to go through")
    s.add_argument("--socket", help="that daemon's socket (default: lipsd's default for --node)")
    s.add_argument("--name", help="the application's name (default: the job file's, or new)")
    s.add_argument("--target", help="one task: package.module:function, instead of a file")
    s.add_argument(
        "--arg", action="append", default=[], help="an argument of --target (JSON); repeat"
    )
    s.add_argument("--strategy", help="the strategy of --target's job (default: picked)")
    s.add_argument("--timeout", type=_seconds, help="seconds the job may take in all")
    s.add_argument("--task-timeout", type=_seconds, help="--target: livelock timeout")
    s.add_argument("--checkpoint", action="store_true", help="--target: it checkpoints")
    s.add_argument(
        "--detach", action="store_true", help="return once the FTM took it (lips job status)"
    )
    s.add_argument("--wait", type=_seconds, help="seconds to wait for the result")
    j = sub.add_parser("job", help="what became of an application (lips job status NAME)")
    jsub = j.add_subparsers(dest="job_command", required=True, metavar="command")
    js = jsub.add_parser("status", help="an application's state and outcome")
    cluster(js)
    js.add_argument("name")
    js.add_argument("--json", action="store_true", help="print one JSON object")
    for name, text in (
        ("backup", "copy a durable server's state into one file (its journal, read only)"),
        ("restore", "make a stopped durable server start from a backup"),
    ):
        b = sub.add_parser(name, help=text)
        b.add_argument("-c", "--config", required=True, help="the cluster file")
        b.add_argument("--name", required=True, help="the server, as the cluster file names it")
        b.add_argument(
            "file", help="the backup file to write" if name == "backup" else "the backup"
        )
    a = sub.add_parser("armors", help="the ARMORs of the cluster: who manages whom, where")
    cluster(a)
    a.add_argument("--json", action="store_true", help="print one JSON object per ARMOR")


def _load_cluster(path: str) -> Any:
    from lips.cluster import ClusterConfigError, load_cluster

    try:
        return load_cluster(path)
    except ClusterConfigError as e:
        raise FieldError(str(e)) from None


def _journal_command(command: str, args: argparse.Namespace) -> int:
    """
    C{lips backup}: what a server's journal holds, replayed, as one snapshot file.
    C{lips restore}: a stopped server's journal made of such a file.
    """
    from lips.cluster import ClusterConfigError
    from lips.replica import Journal, JournalError, Replica, backup, restore

    try:
        cluster = _load_cluster(args.config)
        entry = cluster.server(args.name)
    except (FieldError, ClusterConfigError) as e:
        print(f"lips: {e}", file=sys.stderr)
        return 2
    if not cluster.durable:
        print(
            f"lips: {args.config}: the cluster is not durable (cluster.durable): its servers"
            " keep no journal to back up or restore",
            file=sys.stderr,
        )
        return 2
    journal = Journal(cluster.journal_dir(entry.name))
    try:
        if command == "backup":
            replica = backup(journal, args.file, Replica(entry.id, cluster.ring_peers(entry.role)))
            print(
                f"lips: {entry.name}: {len(replica.space)} tuples, {replica.space.processes}"
                f" processes, {replica.applied} operations applied (last primary ring"
                f" {replica.last_primary}) backed up to {args.file}",
                file=sys.stderr,
            )
        else:
            restore(args.file, journal)
            print(
                f"lips: {entry.name} starts from {args.file} (journal {journal.directory})",
                file=sys.stderr,
            )
    except (JournalError, OSError) as e:
        print(f"lips: {e}", file=sys.stderr)
        return 1
    return 0


def _submit(args: argparse.Namespace) -> int:
    from lips import jobs

    try:
        cluster = _load_cluster(args.config)
        if (args.job is None) == (args.target is None):
            raise FieldError("give a job file or --target, not both or neither")
        if args.job is not None:
            name, job = jobs.load_job(args.job)
        else:
            arguments = list(parse_fields(args.arg, template=False))
            job = jobs.job_from_options(
                args.target,
                arguments,
                strategy=args.strategy,
                timeout=args.timeout,
                task_timeout=args.task_timeout,
                checkpoint=args.checkpoint,
            )
            name = jobs.new_app_name()
        if args.name is not None:
            name = jobs.check_app_name(args.name, "--name")
    except (FieldError, jobs.JobFileError) as e:
        print(f"lips: {e}", file=sys.stderr)
        return 2
    from twisted.internet import defer
    from twisted.internet import reactor as global_reactor

    reactor: Any = global_reactor
    outcome: list[Any] = []

    def accepted(item: Any) -> None:
        print(f"lips: {name} runs under {item.accepted} ({item.ftm})", file=sys.stderr)

    async def run() -> None:
        d = defer.Deferred.fromCoroutine(
            jobs.submit(
                reactor,
                cluster,
                args.node,
                name,
                job,
                socket=args.socket,
                detach=args.detach,
                on_accepted=accepted,
            )
        )
        if args.wait is not None:
            d.addTimeout(args.wait, reactor)
        try:
            outcome.append(await d)
        except defer.TimeoutError:
            outcome.append(TimeoutError(f"no result within {args.wait:g} s"))
        except Exception as e:
            outcome.append(e)

    d = defer.Deferred.fromCoroutine(run())
    d.addBoth(lambda _: reactor.stop())
    reactor.run()
    return _submitted(name, outcome[0] if outcome else RuntimeError("interrupted"))


def _submitted(name: str, outcome: Any) -> int:
    if isinstance(outcome, TimeoutError):
        print(f"lips: {name}: {outcome}; see lips job status {name}", file=sys.stderr)
        return 3
    if isinstance(outcome, Exception):
        print(f"lips: {name}: {outcome}", file=sys.stderr)
        return 3
    if outcome.refused is not None:
        print(f"lips: {name} was refused: {outcome.refused}", file=sys.stderr)
        return 1
    if outcome.result is None:
        print(f"lips: {name} was taken; see lips job status {name}", file=sys.stderr)
        return 0
    result = outcome.result
    if not result.ok:
        print(f"lips: {name} failed: {result.reason}", file=sys.stderr)
        return 1
    print(json.dumps(_to_json(result.result), ensure_ascii=False))
    return 0


def _job_status(args: argparse.Namespace) -> int:
    from lips import blocking, jobs

    try:
        cluster = _load_cluster(args.config)
    except FieldError as e:
        print(f"lips: {e}", file=sys.stderr)
        return 2
    endpoints = cluster.client_endpoints("fixserver")
    try:
        space = blocking.connect(endpoints, name="lips job status")
    except Exception as e:
        print(f"lips: cannot reach the FixServers: {e}", file=sys.stderr)
        return 3
    try:
        if args.job_command == "status":
            row = jobs.read_app(space, args.name)
            if row is None:
                print(f"lips: no application {args.name!r}", file=sys.stderr)
                return 1
            shown = jobs.app_view(row)
            if args.json:
                print(json.dumps(_to_json(shown), ensure_ascii=False))
            else:
                for k, v in shown.items():
                    print(f"{k:12} {json.dumps(_to_json(v), ensure_ascii=False)}")
            return 0
        views = jobs.read_armors(space)
        if args.json:
            for v in views:
                print(json.dumps(_to_json(jobs.armor_view(v)), ensure_ascii=False))
        else:
            for line in jobs.armor_tree(views, jobs.epoch_holder(space)) or ["no ARMORs"]:
                print(line)
        return 0
    except LipsError as e:
        print(f"lips: {e}", file=sys.stderr)
        return 3
    finally:
        with contextlib.suppress(LipsError):
            space.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    words = list(sys.argv[1:] if argv is None else argv)
    if words and words[0] in _SERVER_ROLES:
        # Everything after the role belongs to twistd's options for that role.
        return _run_server(words[0], words[1:])
    args = _parser().parse_args(words)
    command: str = args.command
    if command == "sim" and args.armor:
        return _simulate_armor(args.start, args.seeds, args.seed)
    if command == "sim":
        return _simulate(args.start, args.seeds, args.seed, args.replicated, args.served)
    if command == "submit":
        return _submit(args)
    if command == "armors":
        args.job_command = "armors"
        return _job_status(args)
    if command == "job":
        return _job_status(args)
    if command in ("backup", "restore"):
        return _journal_command(command, args)
    from lips import blocking

    try:
        fields = parse_fields(args.fields, template=command != "out") if "fields" in args else ()
    except FieldError as e:
        print(f"lips: {e}", file=sys.stderr)
        return 2
    servers: list[str] = (
        args.server or os.environ.get("LIPS_SERVER", "").split() or [DEFAULT_SERVER]
    )
    config = getattr(args, "config", None)
    if config is not None:
        try:
            servers = _load_cluster(config).client_endpoints("fixserver")
        except FieldError as e:
            print(f"lips: {e}", file=sys.stderr)
            return 2
    try:
        space = blocking.connect(servers, name=f"lips {command}")
    except Exception as e:
        print(f"lips: cannot reach {' '.join(servers)}: {e}", file=sys.stderr)
        return 3
    try:
        if command == "out":
            space.out(fields)
            return 0
        if command in ("status", "stats"):
            for k, v in sorted(space.stats().items()):
                print(f"{k:32} {v}")
            if config is not None:
                from lips import jobs

                ftm = jobs.read_ftm_status(space)
                if ftm is None:
                    print("ftm                              (no FTM has written its status)")
                for k, v in (ftm or {}).items():
                    print(f"{'ftm.' + k:32} {v}")
            return 0
        if command in ("in", "rd"):
            op = space.in_ if command == "in" else space.rd
            print(format_tuple(op(fields, timeout=args.timeout)))
            return 0
        found = (space.inp if command == "inp" else space.rdp)(fields)
        if found is None:
            print("lips: no matching tuple", file=sys.stderr)
            return 1
        print(format_tuple(found))
        return 0
    except Timeout:
        print("lips: timed out with no matching tuple (nothing was taken)", file=sys.stderr)
        return 1
    except OutcomeUnknown as e:
        print(
            f"lips: no answer; the operation may or may not have taken effect: {e}",
            file=sys.stderr,
        )
        return 3
    except TupleError as e:
        print(f"lips: {e}", file=sys.stderr)
        return 2
    except (RequestError, LipsError) as e:
        print(f"lips: {e}", file=sys.stderr)
        return 3
    finally:
        with contextlib.suppress(LipsError):
            space.close()


if __name__ == "__main__":
    sys.exit(main())
