"""
lipsd's critical sections: the exchanges in the System Tuple Space that take a process
record out before they put one back, made safe against a lipsd killed at any step.

Moving a down node's processes (L{Move}) and re-adopting a node's own (L{Adopt}) each
take a record with C{inp} and write its successor afterwards; a lipsd killed in between
would lose the process.  So lipsd runs them the way LiPS runs any process that must
survive its own death: as a process of the tuple space with a process id of its own,
L{lipsd_pid}C{(node)}, that checkpoints before and after each section.  A section is:

    checkpoint({"section": [kind, args...]})   the section, named with its arguments
    ... the section's operations ...            deterministic, given their answers
    checkpoint({"section": None})              done

and a lipsd that starts (L{recover}) first asks for its last checkpoint: if it names a
section, the lipsd runs that section again.  The space answers every operation that
it had already applied from the process's log (an C{inp} gets the record it took the
first time, an C{out} is not stored twice), so the section goes on exactly where the
killed lipsd stopped, and then closes it.  A section's body depends on nothing but its
arguments and the answers it gets, so the run again does what the first would have.

A lipsd whose node never comes back cannot finish its own section: the lipsd that
moves a down node's processes first finishes the down node's lipsd's section for it
(L{take_over}: the same process id, the same recovery), then moves the records.  Should
the down lipsd still be running (cut off, and fenced), both run the same section with
the same operations and the same answers: whichever is ordered first does it.

No section starts a process: a section only moves records and requests.  What a lipsd
starts it decides afterwards, from what the space holds then.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, ClassVar, Final, Protocol

import attrs
from twisted.internet import defer
from twisted.logger import Logger

from lips.node._eval import (
    Chooser,
    EvalRequest,
    NodeReport,
    Placed,
    eval_template,
    least_loaded,
    process_template,
)
from lips.node._state import SystemSpace, down_template, state_template
from lips.validate import PID_BITS, PID_MAX

__all__ = [
    "Adopt",
    "Move",
    "RecoverableSpace",
    "Replaced",
    "Section",
    "choose_target",
    "lipsd_pid",
    "recover",
    "replace_processes",
    "run",
    "take_over",
]

_log = Logger()

#: The key of a lipsd's checkpoint state.
_KEY: Final = "section"


def lipsd_pid(node: str) -> int:
    """
    The process id of C{node}'s lipsd in the System Tuple Space: the same in every run
    of it and computable by any other lipsd, above every id drawn at random (those are
    at most 2**L{PID_BITS}), so it never names an application's process.
    """
    digest = hashlib.sha256(b"lipsd\0" + node.encode()).digest()
    span = PID_MAX - (1 << PID_BITS)
    offset: int = int.from_bytes(digest[:8], "big") % span
    return (1 << PID_BITS) + 1 + offset


class RecoverableSpace(SystemSpace, Protocol):
    """A client of the System Tuple Space connected with a lipsd's own process id."""

    def checkpoint(self, state: Any) -> defer.Deferred[None]: ...

    def recover(self) -> defer.Deferred[Any]: ...


@attrs.frozen
class Move:
    """
    Move the processes of C{down} (declared down) to C{target}: while C{down} is still
    declared down, take each of its records, the request still addressed to it, and
    put out the record and the request naming C{target}.
    """

    down: str
    target: str

    kind: ClassVar[str] = "move"

    def state(self) -> list[Any]:
        return [self.kind, self.down, self.target]

    async def body(self, space: SystemSpace) -> list[Placed]:
        moved: list[Placed] = []
        # Checked before each record: a node taken in again adopts its records itself,
        # and a section run again long after its lipsd was killed must not move them.
        while await space.rdp(down_template(self.down)) is not None:
            record = await space.inp(process_template(node=self.down))
            if record is None:
                break
            try:
                old = EvalRequest.from_record(record)
            except ValueError as e:
                _log.error(
                    "Dropped a bad process record of {node}: {error}", node=self.down, error=str(e)
                )
                continue
            pid = old.spec.pid
            await space.inp(eval_template(self.down, pid))
            new = EvalRequest(self.target, old.spec)
            await space.out(new.record())
            await space.out(new.as_tuple())
            moved.append(Placed(pid, self.target))
        return moved


@attrs.frozen
class Adopt:
    """
    Take back the records that name C{node}: take each, the request still addressed to
    C{node} for it, and put the record back; the records taken are the answer.  Taking
    each record (rather than reading it) makes a watchdog moving the node's processes
    at the same time get each one or not at all.
    """

    node: str

    kind: ClassVar[str] = "adopt"

    def state(self) -> list[Any]:
        return [self.kind, self.node]

    async def body(self, space: SystemSpace) -> list[EvalRequest]:
        records = []
        while (record := await space.inp(process_template(node=self.node))) is not None:
            records.append(record)
        requests = []
        for record in records:
            try:
                request = EvalRequest.from_record(record)
            except ValueError as e:
                _log.error("Dropped a bad process record: {error}", error=str(e))
                continue
            await space.inp(eval_template(self.node, request.spec.pid))
            await space.out(record)
            requests.append(request)
        return requests


Section = Move | Adopt


def _decode(state: Any) -> Section | None:
    """The section a lipsd's checkpoint state names, or None when it is between sections."""
    if not isinstance(state, dict) or _KEY not in state:
        raise ValueError(f"not a lipsd checkpoint: {state!r}")
    section = state[_KEY]
    if section is None:
        return None
    match section:
        case [Move.kind, str(down), str(target)]:
            return Move(down, target)
        case [Adopt.kind, str(node)]:
            return Adopt(node)
    raise ValueError(f"not a lipsd section: {section!r}")


async def run(space: RecoverableSpace, section: Section) -> Any:
    """Run C{section} as a critical section of the lipsd that C{space} is connected as."""
    await space.checkpoint({_KEY: section.state()})
    result = await section.body(space)
    await space.checkpoint({_KEY: None})
    return result


async def recover(space: RecoverableSpace) -> Section | None:
    """
    Finish the section a killed run of this lipsd left open, if any (before anything
    else this lipsd does with C{space}); the section finished, or None.
    """
    state = await space.recover()
    if state is None:
        return None
    try:
        section = _decode(state)
    except ValueError as e:
        _log.error("A lipsd checkpoint that names no section was ignored: {error}", error=str(e))
        return None
    if section is not None:
        await section.body(space)
        await space.checkpoint({_KEY: None})
    return section


async def take_over(space: RecoverableSpace, down: str) -> Section | None:
    """
    Finish the section the lipsd of node C{down} (declared down) left open, C{space}
    being connected as that lipsd (L{lipsd_pid}C{(down)}); the section, or None.
    """
    section = await recover(space)
    if section is not None:
        _log.warn(
            "Finished the {kind} section the lipsd of down node {node} left open",
            kind=section.kind,
            node=down,
        )
    return section


@attrs.frozen
class Replaced:
    """
    What L{replace_processes} did for a down node: the processes it C{moved}, and
    whether records of the node are still C{waiting} because no node could take them.
    """

    moved: tuple[Placed, ...]
    waiting: bool


async def choose_target(
    space: SystemSpace, down: str, nodes: Sequence[str], chooser: Chooser = least_loaded
) -> str | None:
    """
    The node among C{nodes} (C{down} excluded) that C{chooser} picks from their state
    tuples to take the processes of C{down}, or None if there is none.
    """
    reports = []
    for name in nodes:
        if name == down:
            continue
        found = await space.rdp(state_template(name))
        if found is not None:
            try:
                reports.append(NodeReport.from_tuple(found))
            except ValueError:
                continue
    target = chooser(reports)
    if target is None or target == down or target not in nodes:
        return None
    return target


async def replace_processes(
    space: SystemSpace,
    down: str,
    nodes: Sequence[str],
    chooser: Chooser = least_loaded,
    sections: RecoverableSpace | None = None,
) -> Replaced:
    """
    Restart the processes of node C{down} (declared down) elsewhere, with the same
    process ids: choose a node among C{nodes} (L{choose_target}), then move the records
    and requests of C{down} to it (L{Move}), as a critical section of the lipsd that
    C{sections} is connected as, if given.

    Several lipsd may run this for one down node at once: each record is taken by
    exactly one of them (the FixServers' total order), and only that one places it.
    With no node to choose, nothing is taken: the records wait for a later call.
    """
    target = await choose_target(space, down, nodes, chooser)
    if target is None:
        waiting = await space.rdp(process_template(node=down)) is not None
        return Replaced((), waiting)
    move = Move(down, target)
    moved = await (run(sections, move) if sections is not None else move.body(space))
    return Replaced(tuple(moved), False)
