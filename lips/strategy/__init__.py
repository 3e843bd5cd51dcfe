"""
Fault-tolerant execution strategies (the paper's FTES): what a surrogate manager
installs for an application and how it reacts to its ARMORs, and how the FTM picks one
from an application's requirements.

An application is a L{Job}: tasks (L{Task}: a C{package.module:function} target with
its msgpack arguments, a progress timeout, a local restart threshold, checkpointing),
the strategy by name or the requirements it is picked from, and an overall timeout.
L{Job.from_value} reads one from a message's plain map and trusts nothing.

A strategy is an L{IStrategy}: for one job it says which ARMORs to place on which nodes
(L{Placement}), where to move one that failed, and when the results make the outcome
(L{Outcome}).  Strategies are plugins, like ARMOR types: an L{IStrategyType} object in a
C{twisted/plugins} module (LiPS's are in C{twisted/plugins/lips_armor.py}) names the
strategy, the C{package.module:callable} that makes one, and what it provides
(L{Provides}).  Chameleon II adds dual, TMR and quad by registering more, without
changing LiPS.

L{select} is the FTM's mapping of requirements to a strategy, and it is data: the
cheapest registered strategy whose L{Provides} meets the L{Requirements}.

This room is below the ARMOR layer: plain values and decisions, no ARMORs, no I/O.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import attrs
from twisted.plugin import IPlugin, getPlugins
from zope.interface import Attribute, Interface, implementer

__all__ = [
    "ERROR_HANDLING",
    "FAILURE_KINDS",
    "IStrategy",
    "IStrategyType",
    "Job",
    "JobError",
    "Outcome",
    "Placement",
    "Provides",
    "Requirements",
    "StrategyFactory",
    "StrategyType",
    "Task",
    "UnknownStrategy",
    "default_strategies",
    "select",
]

#: The failures a strategy may recover from: a task's crash or hang (livelock), the
#: loss of the node it runs on.
FAILURE_KINDS: Final = frozenset({"crash", "hang", "node"})
#: What a strategy does about a wrong value: nothing, detect it, or mask it (in order).
ERROR_HANDLING: Final = ("none", "detect", "mask")

_LABEL: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?")
_NAME: Final = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
_IDENT: Final = r"[A-Za-z_][A-Za-z0-9_]*"
_TARGET: Final = re.compile(rf"{_IDENT}(\.{_IDENT})*:{_IDENT}(\.{_IDENT})*")
_MAX_TASKS: Final = 64


class JobError(ValueError):
    """A job, a task or requirements are malformed; the text names the field."""


class UnknownStrategy(LookupError):
    """No strategy of that name is registered (or two are)."""


def _label(value: object, what: str) -> str:
    if type(value) is not str or not _LABEL.fullmatch(value):
        raise JobError(f"{what} is lower-case letters, digits and inner hyphens, not {value!r}")
    return value


def _positive(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise JobError(f"{what} is a number of seconds, not {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise JobError(f"{what} is a positive number of seconds, not {value!r}")
    return float(value)


def _count(value: object, what: str, least: int = 0) -> int:
    if type(value) is not int or value < least:
        raise JobError(f"{what} is an integer of at least {least}, not {value!r}")
    return value


def _flag(value: object, what: str) -> bool:
    if type(value) is not bool:
        raise JobError(f"{what} is true or false, not {value!r}")
    return value


def _map(
    value: object, what: str, keys: Iterable[str], required: Iterable[str] = ()
) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise JobError(f"{what} is a map, not {type(value).__name__}")
    known = set(keys)
    unknown = sorted(str(k) for k in value if k not in known)
    if unknown:
        raise JobError(f"{what} has no key {unknown[0]!r} (it takes {', '.join(sorted(known))})")
    for key in required:
        if key not in value:
            raise JobError(f"{what} needs {key!r}")
    return dict(value)


@attrs.frozen
class Task:
    """
    One task of a job: C{target(*args)} run by an Execution ARMOR.

    @ivar name: its name, unique in the job (a label: C{t1}, C{left-half}).
    @ivar target: the callable, C{package.module:function}, installed on the nodes.
    @ivar args: its arguments (plain values).
    @ivar timeout: livelock: seconds without a progress signal before it is killed.
    @ivar restarts: local restarts before its Execution ARMOR escalates to its manager.
    @ivar checkpoint: whether it checkpoints (restarts resume from the last checkpoint).
    """

    name: str
    target: str
    args: tuple[Any, ...] = ()
    timeout: float = 10.0
    restarts: int = 3
    checkpoint: bool = False

    @classmethod
    def from_value(cls, value: object, where: str = "a task") -> Task:
        """
        The task the plain map C{value} describes.

        @raise JobError: if it is malformed.
        """
        v = _map(
            value,
            where,
            ("name", "target", "args", "timeout", "restarts", "checkpoint"),
            ("name", "target"),
        )
        target = v["target"]
        if type(target) is not str or not _TARGET.fullmatch(target):
            raise JobError(f"{where}'s target is 'package.module:function', not {target!r}")
        args = v.get("args", ())
        if isinstance(args, str | bytes) or not isinstance(args, Sequence):
            raise JobError(f"{where}'s args is an array, not {args!r}")
        return cls(
            _label(v["name"], f"{where}'s name"),
            target,
            tuple(args),
            _positive(v.get("timeout", 10.0), f"{where}'s timeout"),
            _count(v.get("restarts", 3), f"{where}'s restarts"),
            _flag(v.get("checkpoint", False), f"{where}'s checkpoint"),
        )

    def to_value(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "target": self.target,
            "args": list(self.args),
            "timeout": self.timeout,
            "restarts": self.restarts,
            "checkpoint": self.checkpoint,
        }


@attrs.frozen
class Requirements:
    """
    What an application asks of its execution: to recover from the failures in
    C{recover} (L{FAILURE_KINDS}), to handle wrong values at least as C{errors} says
    (L{ERROR_HANDLING}), with at least C{replicas} replicas of each task.
    """

    recover: frozenset[str] = frozenset({"crash", "hang", "node"})
    errors: str = "none"
    replicas: int = 1

    @classmethod
    def from_value(cls, value: object) -> Requirements:
        """
        @raise JobError: if C{value} is malformed.
        """
        v = _map(value, "the requirements", ("recover", "errors", "replicas"))
        recover = v.get("recover", sorted(FAILURE_KINDS))
        if isinstance(recover, str) or not isinstance(recover, Iterable):
            raise JobError(f"recover is an array of failure kinds, not {recover!r}")
        kinds = frozenset(recover)
        if not kinds <= FAILURE_KINDS:
            raise JobError(f"recover takes {sorted(FAILURE_KINDS)}, not {sorted(map(str, kinds))}")
        errors = v.get("errors", "none")
        if errors not in ERROR_HANDLING:
            raise JobError(f"errors is one of {list(ERROR_HANDLING)}, not {errors!r}")
        return cls(kinds, errors, _count(v.get("replicas", 1), "replicas", 1))

    def to_value(self) -> dict[str, Any]:
        return {"recover": sorted(self.recover), "errors": self.errors, "replicas": self.replicas}


@attrs.frozen
class Job:
    """
    An application as submitted: its C{tasks}, the C{strategy} by name or the
    C{requirements} it is picked from (neither: the default requirements), and
    C{timeout}, the seconds it may take in all (None: no limit).
    """

    tasks: tuple[Task, ...]
    strategy: str | None = None
    requirements: Requirements = Requirements()
    timeout: float | None = None

    @classmethod
    def from_value(cls, value: object) -> Job:
        """
        The job the plain map C{value} describes (a submission: untrusted).

        @raise JobError: naming the first malformed field.
        """
        v = _map(value, "the job", ("tasks", "strategy", "requirements", "timeout"), ("tasks",))
        raw = v["tasks"]
        if isinstance(raw, str | bytes) or not isinstance(raw, Sequence):
            raise JobError(f"tasks is an array of tasks, not {raw!r}")
        if not 0 < len(raw) <= _MAX_TASKS:
            raise JobError(f"a job has 1 to {_MAX_TASKS} tasks, not {len(raw)}")
        tasks = tuple(Task.from_value(t, f"task {i + 1}") for i, t in enumerate(raw))
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise JobError(f"task names must differ: {names}")
        strategy = v.get("strategy")
        if strategy is not None and (type(strategy) is not str or not _NAME.fullmatch(strategy)):
            raise JobError(f"strategy is a strategy's name, not {strategy!r}")
        if strategy is not None and "requirements" in v:
            raise JobError("give the strategy or the requirements, not both")
        requirements = Requirements.from_value(v.get("requirements", {}))
        timeout = v.get("timeout")
        return cls(
            tasks,
            strategy,
            requirements,
            None if timeout is None else _positive(timeout, "the job's timeout"),
        )

    def to_value(self) -> dict[str, Any]:
        value: dict[str, Any] = {"tasks": [t.to_value() for t in self.tasks]}
        if self.strategy is not None:
            value["strategy"] = self.strategy
        else:
            value["requirements"] = self.requirements.to_value()
        if self.timeout is not None:
            value["timeout"] = self.timeout
        return value

    def task(self, name: str) -> Task:
        """
        @raise KeyError: if it has no task C{name}.
        """
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(name)


@attrs.frozen
class Placement:
    """
    One ARMOR a strategy wants: of ARMOR type C{type}, its id made of C{kind} and
    C{labels} (after the application's scope: C{exec.job7.t1}), on C{node}, made with
    C{config}; C{task} is the task it runs, if any.
    """

    type: str
    kind: str
    labels: tuple[str, ...]
    node: str
    config: Mapping[str, Any]
    task: str | None = None


@attrs.frozen
class Outcome:
    """How an application ended: C{ok} with C{result}, or not, for C{reason}."""

    ok: bool
    result: Any = None
    reason: str = ""


class IStrategy(Interface):
    """One application's strategy: made by an L{IStrategyType} for one L{Job}."""

    name: str = Attribute("The strategy's registered name.")

    def placements(app: str, nodes: Sequence[str]) -> list[Placement]:
        """
        The ARMORs to install for application C{app}, on C{nodes} (the FTM's choice,
        best first; replicas of a task go on distinct nodes when there are enough).
        """

    def replace(
        placement: Placement, failed: Sequence[str], nodes: Sequence[str], tried: int
    ) -> str | None:
        """
        Where to put C{placement} again now that it failed beyond its local recovery,
        on the nodes in C{failed} (the last one last), after C{tried} placements in
        all; None: give up (the application fails).
        """

    def outcome(results: Mapping[str, Any]) -> Outcome | None:
        """
        The application's outcome given the results so far (task name to result),
        or None while it is not decided.
        """


@attrs.frozen
class Provides:
    """
    What a strategy provides, for L{select}: it recovers from C{recover}, handles wrong
    values as C{errors} says, runs C{replicas} replicas of a task, and costs C{cost}
    (the cheapest that meets the requirements is chosen).
    """

    recover: frozenset[str]
    errors: str = "none"
    replicas: int = 1
    cost: float = 1.0

    def meets(self, requirements: Requirements) -> bool:
        return (
            requirements.recover <= self.recover
            and ERROR_HANDLING.index(self.errors) >= ERROR_HANDLING.index(requirements.errors)
            and self.replicas >= requirements.replicas
        )


class IStrategyType(Interface):
    """A registered strategy: a plugin (L{IPlugin}) object."""

    name: str = Attribute("The strategy's name, unique among strategies: 'simplex'.")
    description: str = Attribute("One line saying what it does.")
    provides: Provides = Attribute("What it provides, for selection.")

    def create(job: Job) -> IStrategy:
        """A strategy for C{job}."""


def _load(target: str) -> Any:
    module, _, path = target.partition(":")
    obj: Any = importlib.import_module(module)
    for attribute in path.split("."):
        obj = getattr(obj, attribute)
    return obj


@implementer(IPlugin, IStrategyType)
class StrategyType:
    """
    A strategy plugin: C{name}, made by C{target} (a C{package.module:callable} taking
    the L{Job}), providing C{provides}.
    """

    def __init__(self, name: str, target: str, description: str, provides: Provides) -> None:
        if type(name) is not str or not _NAME.fullmatch(name):
            raise ValueError(f"a strategy's name is lower-case words joined by hyphens: {name!r}")
        if not _TARGET.fullmatch(target):
            raise ValueError(f"not a 'package.module:callable' name: {target!r}")
        if not isinstance(provides, Provides):
            raise TypeError(f"provides is a Provides, not {provides!r}")
        self.name = name
        self.target = target
        self.description = description
        self.provides = provides

    def __repr__(self) -> str:
        return f"StrategyType({self.name!r}, {self.target!r})"

    def create(self, job: Job) -> IStrategy:
        strategy: IStrategy = _load(self.target)(job)
        return strategy


class StrategyFactory:
    """
    The registered strategies, by name.

    @param types: the strategies it knows; by default every installed package's
        L{IStrategyType} plugins, found the first time one is asked for.
    """

    def __init__(self, types: Iterable[IStrategyType] | None = None) -> None:
        self._given = None if types is None else list(types)
        self._by_name: dict[str, IStrategyType] | None = None
        self._twice: set[str] = set()

    def _table(self) -> dict[str, IStrategyType]:
        if self._by_name is None:
            found: Iterable[IStrategyType] = (
                self._given if self._given is not None else getPlugins(IStrategyType)
            )
            table: dict[str, IStrategyType] = {}
            for kind in found:
                if not IStrategyType.providedBy(kind):
                    raise TypeError(f"not an IStrategyType: {kind!r}")
                if kind.name in table:
                    self._twice.add(kind.name)
                table.setdefault(kind.name, kind)
            self._by_name = table
        return self._by_name

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._table())

    def type(self, name: str) -> IStrategyType:
        """
        @raise UnknownStrategy: if none or two are registered as C{name}.
        """
        table = self._table()
        if name in self._twice:
            raise UnknownStrategy(f"strategy {name!r} is registered twice")
        try:
            return table[name]
        except KeyError:
            raise UnknownStrategy(f"no strategy {name!r} is registered") from None

    def create(self, name: str, job: Job) -> IStrategy:
        """
        A strategy C{name} for C{job}.

        @raise UnknownStrategy: if C{name} is not registered.
        @raise TypeError: if the type made something that is not an L{IStrategy}.
        """
        strategy = self.type(name).create(job)
        if not IStrategy.providedBy(strategy):
            raise TypeError(f"strategy {name!r} made something that is not an IStrategy")
        return strategy


_default: StrategyFactory | None = None


def default_strategies() -> StrategyFactory:
    """The strategies the installed plugins register (one factory, shared)."""
    global _default
    if _default is None:
        _default = StrategyFactory()
    return _default


def select(job: Job, strategies: StrategyFactory) -> str:
    """
    The strategy for C{job}: the one it names (which must be registered), else the
    cheapest registered one (by cost, then name) whose L{Provides} meets its
    requirements.

    @raise UnknownStrategy: if none does.
    """
    if job.strategy is not None:
        return strategies.type(job.strategy).name
    fits = [
        (kind.provides.cost, name)
        for name in strategies.names()
        if (kind := strategies.type(name)).provides.meets(job.requirements)
    ]
    if not fits:
        raise UnknownStrategy(
            f"no registered strategy meets the requirements {job.requirements.to_value()}"
        )
    return min(fits)[1]
