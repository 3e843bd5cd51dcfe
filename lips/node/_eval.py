"""
The placement half of C{eval}: the tuples of an eval request in the System Tuple Space,
the chooser that picks a node, and L{eval_request} that places one.

The shapes, and why process ids are random, are in C{docs/node.md}.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, Final

import attrs

from lips import validate
from lips.node._state import SystemSpace, state_template
from lips.supervisor import FAILED_TAG, ProcessSpec, check_target
from lips.tuples import ANY, LTuple, make_tuple, packb, unpackb

__all__ = [
    "EVAL_TAG",
    "PROCESS_TAG",
    "Chooser",
    "EvalRequest",
    "NoNodeAvailable",
    "NodeReport",
    "Placed",
    "decode_args",
    "eval_request",
    "eval_template",
    "failed_template",
    "least_loaded",
    "new_pid",
    "process_template",
]

#: The first field of an eval request, taken by the lipsd it names.
EVAL_TAG: Final = "eval"
#: The first field of the record of a placed process (removed when it is final).
PROCESS_TAG: Final = "process"


def eval_template(node: str, pid: int | None = None) -> tuple[Any, ...]:
    """The template of the eval requests addressed to C{node} (all, or process C{pid}'s)."""
    return (EVAL_TAG, node, int if pid is None else pid, ANY, str, bytes, ANY)


def process_template(pid: int | None = None, node: str | None = None) -> tuple[Any, ...]:
    """The template of the process records: all, process C{pid}'s, or node C{node}'s."""
    return (
        PROCESS_TAG,
        int if pid is None else pid,
        str if node is None else node,
        ANY,
        str,
        bytes,
        ANY,
    )


def failed_template(pid: int | None = None) -> tuple[Any, ...]:
    """The template of the failure records: any, or process C{pid}'s."""
    return (FAILED_TAG, int if pid is None else pid, str, str, int)


def decode_args(data: bytes) -> tuple[Any, ...]:
    """
    The arguments of an eval, from their msgpack encoding (an array of LiPS values).

    @raise ValueError: if C{data} is not that.
    """
    args = unpackb(data)
    if not isinstance(args, tuple):
        raise ValueError(f"eval arguments must be a msgpack array, not {type(args).__name__}")
    if args:
        make_tuple(args)
    return args


@attrs.frozen
class EvalRequest:
    """
    C{("eval", node, pid, fields, target, args, endpoints)}: run C{target} on C{node}
    as process C{pid}; C{endpoints} are the application's MessageServers, or empty for
    the ones lipsd is configured with.
    """

    node: str
    spec: ProcessSpec

    def as_tuple(self) -> LTuple:
        s = self.spec
        return (EVAL_TAG, self.node, s.pid, s.fields, s.target, s.args, s.endpoints)

    def record(self) -> LTuple:
        """C{("process", pid, node, fields, target, args, endpoints)}."""
        s = self.spec
        return (PROCESS_TAG, s.pid, self.node, s.fields, s.target, s.args, s.endpoints)

    @classmethod
    def from_tuple(cls, values: Sequence[Any]) -> EvalRequest:
        """
        Read a request taken from the space, trusting nothing in it.

        @raise ValueError: if it is not a well-formed request (bad shape, a target that
            is not C{module:function}, arguments that are not a msgpack array).
        """
        if len(values) != 7 or values[0] != EVAL_TAG:
            raise ValueError(f"not an eval request: {values!r}")
        _, node, pid, fields, target, args, endpoints = values
        if not isinstance(node, str) or not isinstance(args, bytes):
            raise ValueError(f"not an eval request: {values!r}")
        if not isinstance(fields, tuple) or not isinstance(endpoints, tuple):
            raise ValueError(f"not an eval request: {values!r}")
        try:
            check_target(target)
            decode_args(args)
            spec = ProcessSpec(pid, target, fields, args, endpoints)
        except (TypeError, ValueError) as e:
            raise ValueError(f"bad eval request: {e}") from None
        return cls(node, spec)

    @classmethod
    def from_record(cls, values: Sequence[Any]) -> EvalRequest:
        """
        The request a process record stands for (same node, same process).

        @raise ValueError: if C{values} is not a well-formed process record.
        """
        if len(values) != 7 or values[0] != PROCESS_TAG:
            raise ValueError(f"not a process record: {values!r}")
        _, pid, node, *rest = values
        return cls.from_tuple((EVAL_TAG, node, pid, *rest))


@attrs.frozen
class NodeReport:
    """A node's state tuple as read from the space (see L{lips.node.NodeState})."""

    name: str
    seq: int
    load1: float
    cpu_idle: float
    free_memory: int
    processes: int
    idle: bool

    @classmethod
    def from_tuple(cls, values: Sequence[Any]) -> NodeReport:
        """
        @raise ValueError: if C{values} is not a node-state tuple.
        """
        types = (str, str, int, float, float, int, int, bool)
        if len(values) != len(types) or any(
            type(v) is not t for v, t in zip(values, types, strict=True)
        ):
            raise ValueError(f"not a node-state tuple: {values!r}")
        return cls(*values[1:])


#: Picks the node for a new process from the live nodes' reports; C{None}: none fits.
Chooser = Callable[[Sequence[NodeReport]], str | None]


def least_loaded(reports: Sequence[NodeReport]) -> str | None:
    """
    The default chooser: among the nodes that count as idle, the one with the lowest
    load average, then the fewest LiPS processes, then the most CPU idle, then by
    name.  C{None} if no node is idle.
    """
    idle = [r for r in reports if r.idle]
    if not idle:
        return None
    return min(idle, key=lambda r: (r.load1, r.processes, -r.cpu_idle, r.name)).name


class NoNodeAvailable(Exception):
    """The chooser found no node for the process (none reported, or none idle)."""


@attrs.frozen
class Placed:
    """An eval request was put out: process C{pid} will run on C{node}."""

    pid: int
    node: str


def new_pid(rng: random.Random | None = None) -> int:
    """
    A fresh process id: a random integer in [1, 2**62], from C{rng} (the operating
    system's randomness by default).
    """
    r = random.SystemRandom() if rng is None else rng
    return validate.new_pid(r)


async def eval_request(
    space: SystemSpace,
    fields: Sequence[Any],
    target: str,
    *args: Any,
    nodes: Sequence[str],
    pid: int | None = None,
    chooser: Chooser = least_loaded,
    endpoints: Sequence[str] = (),
    rng: random.Random | None = None,
) -> Placed:
    """
    Place C{target(space, *args)} as a new process: read the state tuples of C{nodes}
    from the System Tuple Space C{space}, let C{chooser} pick one, and put out the
    process record and the eval request addressed to it.  That node's lipsd takes the
    request and starts the process; when it returns, C{(*fields, result)} appears in
    the application's space.

    @param fields: the fields of the active tuple (the passive tuple's first fields).
    @param target: C{"package.module:function"}, importable on the chosen node.
    @param args: LiPS values (msgpack-encoded into the request).
    @param nodes: the names of the nodes the process may go to; a node that is down
        has no state tuple and is passed over.
    @param pid: the process id; a new random one (L{new_pid}) by default.
    @param endpoints: the application's MessageServers; empty for those the lipsd is
        configured with (C{--app-config}, C{--app}).
    @raise NoNodeAvailable: if the chooser finds no node.
    @raise ValueError: (or L{lips.tuples.TupleError}) for bad fields, target or args.
    """
    check_target(target)
    packed = packb(list(args))
    decode_args(packed)
    spec = ProcessSpec(new_pid(rng) if pid is None else pid, target, fields, packed, endpoints)
    reports = []
    for name in nodes:
        found = await space.rdp(state_template(name))
        if found is not None:
            reports.append(NodeReport.from_tuple(found))
    node = chooser(reports)
    if node is None:
        seen = ", ".join(f"{r.name} (idle={r.idle}, load {r.load1:.2f})" for r in reports)
        raise NoNodeAvailable(f"no node for {target} among {list(nodes)}; reported: {seen}")
    if node not in nodes:
        raise NoNodeAvailable(f"the chooser picked {node!r}, not one of {list(nodes)}")
    request = EvalRequest(node, spec)
    await space.out(request.record())
    await space.out(request.as_tuple())
    return Placed(spec.pid, node)
