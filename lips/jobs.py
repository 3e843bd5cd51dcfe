"""
Applications under the Fault Tolerance Manager, from the user's side: job files,
C{lips submit}, C{lips job status} and C{lips armors} (the command line is L{lips.cli}).

A job file is TOML::

    name = "primes"                  # the application's name (default: the file's stem)
    strategy = "simplex"             # or a [requirements] table; neither: the defaults
    timeout = 120                    # seconds the whole job may take (default: no limit)

    [[task]]
    name = "count"
    target = "myapp.tasks:count_primes"   # installed on the nodes, allowed by their lipsd
    args = [1, 100000]
    timeout = 10                     # livelock: seconds without progress (default 10)
    restarts = 3                     # local restarts before the task moves (default 3)
    checkpoint = false

A malformed file is refused with a L{JobFileError} naming the file and the key.

Submitting attaches a submitter ARMOR (L{lips.armor.submit}) to the ARMOR daemon of a
node (its lipsd's socket: this must run on a node of the cluster, as the user of the
daemon's socket, with the cluster file and its key): it hands the job to whichever FTM
holds the epoch and waits for the result.  The application's state and outcome are
also in the System Tuple Space (the FTM's C{app} table), which is what C{lips job
status} reads, from anywhere the FixServers can be reached.
"""

from __future__ import annotations

import os
import re
import secrets
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import attrs
import msgpack
from twisted.internet import defer
from twisted.python.failure import Failure

from lips.armor import ArmorRow, armor_template, link_key
from lips.armor.ftm import STATS_TAG, AppRow, ArmorEntry, current_ftm
from lips.armor.process import ArmorHost, daemon_socket
from lips.armor.submit import SUBMITTER_TYPE, Submission, SubmitterArmor, submitter_id
from lips.cluster import ClusterConfig
from lips.kernel import Deliver
from lips.strategy import Job, JobError
from lips.tuples import ANY, Step

__all__ = [
    "ArmorView",
    "JobFileError",
    "app_view",
    "armor_view",
    "check_app_name",
    "new_app_name",
    "armor_tree",
    "epoch_holder",
    "daemon_socket",
    "job_from_options",
    "load_job",
    "read_app",
    "read_armors",
    "read_ftm_status",
    "submit",
]

_LABEL: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?")
_TASK_KEYS: Final = ("name", "target", "args", "timeout", "restarts", "checkpoint")
_JOB_KEYS: Final = ("name", "strategy", "requirements", "timeout", "task")


class JobFileError(ValueError):
    """A job file (or the options standing for one) that cannot be run, and why."""


def check_app_name(text: str, where: str) -> str:
    if not _LABEL.fullmatch(text):
        raise JobFileError(
            f"{where}: an application's name is lower-case letters, digits and inner"
            f" hyphens, at most 32 characters, not {text!r}"
        )
    return text


def load_job(path: str | os.PathLike[str]) -> tuple[str, dict[str, Any]]:
    """
    The application name and the job (a L{lips.strategy.Job}'s plain map) of the job
    file C{path}.

    @raise JobFileError: naming the file and the key, if it cannot be read or is wrong.
    """
    where = str(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise JobFileError(f"{where}: cannot read it: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise JobFileError(f"{where}: not TOML: {e}") from None
    unknown = sorted(set(data) - set(_JOB_KEYS))
    if unknown:
        raise JobFileError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(_JOB_KEYS)})")
    name = data.get("name", Path(where).stem.lower().replace("_", "-"))
    if type(name) is not str:
        raise JobFileError(f"{where}: name is a string, not {name!r}")
    check_app_name(name, f"{where}: name")
    tasks = data.get("task")
    if not isinstance(tasks, list) or not tasks:
        raise JobFileError(f"{where}: a job needs at least one [[task]] table")
    for i, task in enumerate(tasks, 1):
        if not isinstance(task, dict):
            raise JobFileError(f"{where}: task {i} is a [[task]] table")
        extra = sorted(set(task) - set(_TASK_KEYS))
        if extra:
            raise JobFileError(
                f"{where}: task {i}: unknown key {extra[0]!r} (known: {', '.join(_TASK_KEYS)})"
            )
    value: dict[str, Any] = {"tasks": [dict(t) for t in tasks]}
    for key in ("strategy", "requirements", "timeout"):
        if key in data:
            value[key] = data[key]
    return name, _checked(value, where)


def job_from_options(
    target: str,
    args: Sequence[Any] = (),
    *,
    strategy: str | None = None,
    timeout: float | None = None,
    task_timeout: float | None = None,
    restarts: int | None = None,
    checkpoint: bool = False,
) -> dict[str, Any]:
    """
    The job of one task, C{target(*args)}, as C{lips submit --target} gives it.

    @raise JobFileError: if it is wrong.
    """
    task: dict[str, Any] = {"name": "main", "target": target, "args": list(args)}
    if task_timeout is not None:
        task["timeout"] = task_timeout
    if restarts is not None:
        task["restarts"] = restarts
    if checkpoint:
        task["checkpoint"] = True
    value: dict[str, Any] = {"tasks": [task]}
    if strategy is not None:
        value["strategy"] = strategy
    if timeout is not None:
        value["timeout"] = timeout
    return _checked(value, "the options")


def _checked(value: dict[str, Any], where: str) -> dict[str, Any]:
    try:
        return Job.from_value(value).to_value()
    except JobError as e:
        raise JobFileError(f"{where}: {e}") from None


def new_app_name(prefix: str = "job") -> str:
    """A fresh application name (C{job-3f9a1c})."""
    return f"{prefix}-{secrets.token_hex(3)}"


async def submit(
    reactor: Any,
    cluster: ClusterConfig,
    node: str,
    name: str,
    job: Mapping[str, Any],
    *,
    socket: str | None = None,
    detach: bool = False,
    retry: float = 1.0,
    on_accepted: Callable[[Submission], None] | None = None,
) -> Submission:
    """
    Hand application C{name} to the cluster's FTM through node C{node}'s daemon, and
    wait for how it ended (with C{detach}, only until the FTM took it).

    @raise ConnectionError: if the daemon could not be reached or did not welcome it.
    """
    if not cluster.key:
        raise ConnectionError("the cluster file has no key: a submitter proves it holds it")
    armor = SubmitterArmor(
        submitter_id(f"{node}-{os.getpid()}"[:32].strip("-")), name=name, job=job, retry=retry
    )
    done: defer.Deferred[Submission] = defer.Deferred()

    def delivered(effect: Deliver[Any]) -> None:
        item = effect.item
        if not isinstance(item, Submission) or done.called:
            return
        if item.final or detach:
            done.callback(item)
        elif on_accepted is not None:
            on_accepted(item)

    host = ArmorHost.attaching(
        reactor,
        armor,
        socket or daemon_socket(node),
        link_key(cluster.key),
        type=SUBMITTER_TYPE,
        node=node,
        handlers={Deliver: delivered},
    )
    running = defer.Deferred.fromCoroutine(host.run())

    def ended(outcome: object) -> None:
        if done.called:
            return
        if isinstance(outcome, Failure):
            why = f"cannot be reached at {host.socket}: {outcome.getErrorMessage()}"
        elif not host.link.welcomed:
            why = "did not take the submitter (is the cluster key the daemon's?)"
        else:
            why = "hung up before the job ended"
        done.errback(ConnectionError(f"the daemon of {node} {why}"))

    running.addBoth(ended)
    try:
        return await done
    finally:
        host.stop()
        await running


def read_app(space: Any, name: str) -> AppRow | None:
    """The FTM's row of application C{name}, read with the blocking client C{space}."""
    found = space.rdp(AppRow.template(name))
    return None if found is None else AppRow.from_tuple(found)


@attrs.frozen
class ArmorView:
    """One ARMOR as the tables show it: the FTM's intent and where it runs."""

    armor: str
    type: str
    manager: str
    node: str
    incarnation: int
    application: str
    running: tuple[tuple[str, int], ...] = ()  # (node, incarnation) of its processes


def read_armors(space: Any) -> list[ArmorView]:
    """
    Every ARMOR of the FTM's table, with where its processes are registered (the
    daemons' table), read with the blocking client C{space} in one atomic request.
    """
    intent, located = space.atomic(
        [Step.scan(ArmorEntry.template()), Step.scan(armor_template(None))]
    )
    where: dict[str, list[tuple[str, int]]] = {}
    for t in located:
        try:
            row = ArmorRow.from_tuple(t)
        except ValueError:
            continue
        where.setdefault(row.armor, []).append((row.node, row.incarnation))
    views = []
    for t in intent:
        entry = ArmorEntry.from_tuple(t)
        views.append(
            ArmorView(
                entry.armor,
                entry.type,
                entry.manager,
                entry.node,
                entry.incarnation,
                entry.application,
                tuple(sorted(where.get(entry.armor, []))),
            )
        )
    return sorted(views, key=lambda v: v.armor)


def armor_tree(views: Iterable[ArmorView], root: str | None = None) -> list[str]:
    """
    The lines of the tree of who manages whom.  Its roots: C{root} (the FTM that holds
    the epoch: its own manager is its backup, which it manages), the ARMORs whose
    manager is not in the table, and then any ARMOR not shown yet (a cycle).
    """
    views = sorted(views, key=lambda v: v.armor)
    by_id = {v.armor: v for v in views}
    children: dict[str, list[ArmorView]] = {}
    roots = [by_id[root]] if root in by_id else []
    for v in views:
        if v.armor == root:
            continue
        if v.manager and v.manager in by_id and v.manager != v.armor:
            children.setdefault(v.manager, []).append(v)
        else:
            roots.append(v)
    lines: list[str] = []
    shown: set[str] = set()

    def show(v: ArmorView, depth: int) -> None:
        shown.add(v.armor)
        runs = ", ".join(f"{n}#{i}" for n, i in v.running) or "not running"
        app = f" [{v.application}]" if v.application else ""
        lines.append(
            f"{'  ' * depth}{v.armor} ({v.type}{app}) on {v.node}, incarnation"
            f" {v.incarnation}: {runs}"
        )
        for c in children.get(v.armor, []):
            if c.armor not in shown:
                show(c, depth + 1)

    for v in roots:
        if v.armor not in shown:
            show(v, 0)
    for v in views:
        if v.armor not in shown:
            show(v, 0)
    return lines


def epoch_holder(space: Any) -> str | None:
    """The FTM that holds the epoch, read with the blocking client C{space}."""
    found = space.rdp(("ftm-epoch", ANY, ANY))
    holder = current_ftm([found]) if found is not None else None
    return None if holder is None else holder[1]


def app_view(row: AppRow) -> dict[str, Any]:
    """What C{lips job status} shows of an application's row."""
    view: dict[str, Any] = {
        "name": row.name,
        "state": row.state.value,
        "strategy": row.strategy,
        "submitter": row.submitter,
    }
    if row.outcome is not None:
        result = row.result()
        view["ok"] = result.ok
        view["result" if result.ok else "reason"] = result.result if result.ok else result.reason
    return view


def armor_view(view: ArmorView) -> dict[str, Any]:
    """One ARMOR as C{lips armors --json} shows it."""
    value = attrs.asdict(view)
    value["running"] = [list(r) for r in view.running]
    return value


def read_ftm_status(space: Any) -> dict[str, Any] | None:
    """
    The status the FTM last wrote (L{lips.armor.ftm.STATS_TAG}: its epoch, backup,
    tables' sizes, applications by state and counters), read with the blocking client
    C{space}; None if none was written or it cannot be read.
    """
    found = space.rdp((STATS_TAG, ANY, ANY))
    if found is None or type(found[2]) is not bytes:
        return None
    try:
        value = msgpack.unpackb(found[2], raw=False, strict_map_key=True, max_ext_len=0)
    except Exception:
        return None
    return value if isinstance(value, dict) else None
