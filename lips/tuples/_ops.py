"""
The operations of the Linda model, as one vocabulary shared by the tuple space, the wire
codec and the clients (none of which should need another's module to name them).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from typing import Any, Final, TypeAlias

import attrs

from lips.tuples._codec import packb
from lips.tuples._model import DEFAULT_LIMITS, Limits, LTuple, Template, make_template, make_tuple

__all__ = [
    "MAX_SCAN",
    "MAX_STEPS",
    "AbortReason",
    "AtomicAborted",
    "Kind",
    "Step",
    "StepOp",
    "StepResult",
    "Tuples",
    "steps_size",
]

#: The most steps one atomic request may have.
MAX_STEPS: Final = 64
#: The most tuples one L{StepOp.SCAN} or L{StepOp.DELETE} step may read or take.  The
#: size limit alone would let a step of small tuples answer with hundreds of thousands.
MAX_SCAN: Final = 4096


class Kind(enum.IntEnum):
    """The Linda operations."""

    OUT = 1
    IN = 2
    RD = 3
    INP = 4
    RDP = 5
    CHECKPOINT = 6
    """Not a Linda operation: a process's checkpoint, applied and logged like one."""
    FORGET = 7
    """Not a Linda operation: a process said goodbye; the space forgets it (L{forget})."""
    ATOMIC = 8
    """Not a Linda operation: a list of L{Step}s applied as one event, all or none."""

    @property
    def removes(self) -> bool:
        return self is Kind.IN or self is Kind.INP

    @property
    def blocks(self) -> bool:
        return self is Kind.IN or self is Kind.RD


class StepOp(enum.IntEnum):
    """What one step of an atomic request does (its number is its code on the wire)."""

    OUT = 1
    """Store a tuple."""
    INP = 2
    """Take the oldest matching tuple; the request fails if there is none."""
    RDP = 3
    """Read the oldest matching tuple; the request fails if there is none."""
    ABSENT = 4
    """A guard: the request fails if a tuple matches."""
    PRESENT = 5
    """A guard: the request fails if no tuple matches (reads nothing)."""
    SCAN = 6
    """Read every matching tuple, oldest first (possibly none); never fails on its own."""
    DELETE = 7
    """Take every matching tuple, oldest first (possibly none); never fails on its own."""

    @property
    def lists(self) -> bool:
        """Whether the step's result is every matching tuple (L{Tuples})."""
        return self is StepOp.SCAN or self is StepOp.DELETE


@attrs.frozen
class Tuples:
    """
    The result of a L{StepOp.SCAN} or L{StepOp.DELETE} step: the tuples it read or
    took, oldest first (stored tuples before those the request stored).  A sequence:
    C{len()}, iteration and indexing work on it as on C{tuples}.
    """

    tuples: tuple[LTuple, ...] = ()

    def __len__(self) -> int:
        return len(self.tuples)

    def __iter__(self) -> Iterator[LTuple]:
        return iter(self.tuples)

    def __getitem__(self, index: int) -> LTuple:
        return self.tuples[index]


#: One step's result in a committed atomic request: the tuple an C{inp} or C{rdp} step
#: found, the L{Tuples} a C{scan} or C{delete} step read or took, C{None} otherwise.
StepResult: TypeAlias = "LTuple | Tuples | None"


@attrs.frozen
class Step:
    """
    One step of an atomic request: C{op} and its tuple (for L{StepOp.OUT}) or template
    (for every other op).  Build one with L{Step.out}, L{Step.inp}, L{Step.rdp},
    L{Step.absent}, L{Step.present}, L{Step.scan} or L{Step.delete}, which validate
    their argument.
    """

    op: StepOp
    arg: LTuple | Template

    @classmethod
    def out(cls, values: Sequence[Any], limits: Limits = DEFAULT_LIMITS) -> Step:
        """Store C{values}."""
        return cls(StepOp.OUT, make_tuple(values, limits))

    @classmethod
    def inp(cls, template: Sequence[Any] | Template, limits: Limits = DEFAULT_LIMITS) -> Step:
        """Take the oldest tuple matching C{template}, or fail the request."""
        return cls(StepOp.INP, make_template(template, limits))

    @classmethod
    def rdp(cls, template: Sequence[Any] | Template, limits: Limits = DEFAULT_LIMITS) -> Step:
        """Read the oldest tuple matching C{template}, or fail the request."""
        return cls(StepOp.RDP, make_template(template, limits))

    @classmethod
    def absent(cls, template: Sequence[Any] | Template, limits: Limits = DEFAULT_LIMITS) -> Step:
        """Fail the request if a tuple matches C{template}."""
        return cls(StepOp.ABSENT, make_template(template, limits))

    @classmethod
    def present(cls, template: Sequence[Any] | Template, limits: Limits = DEFAULT_LIMITS) -> Step:
        """Fail the request unless a tuple matches C{template}."""
        return cls(StepOp.PRESENT, make_template(template, limits))

    @classmethod
    def scan(cls, template: Sequence[Any] | Template, limits: Limits = DEFAULT_LIMITS) -> Step:
        """Read every tuple matching C{template}, oldest first (L{Tuples}, maybe empty)."""
        return cls(StepOp.SCAN, make_template(template, limits))

    @classmethod
    def delete(cls, template: Sequence[Any] | Template, limits: Limits = DEFAULT_LIMITS) -> Step:
        """Take every tuple matching C{template}, oldest first (L{Tuples}, maybe empty)."""
        return cls(StepOp.DELETE, make_template(template, limits))

    @property
    def template(self) -> Template:
        """The template of a step other than L{StepOp.OUT}."""
        if not isinstance(self.arg, Template):
            raise TypeError(f"a {self.op.name} step has no template")
        return self.arg

    def wire(self) -> list[Any]:
        """The step as it is encoded: C{[op, tuple or template fields]}."""
        arg = self.arg
        return [int(self.op), arg.fields if isinstance(arg, Template) else arg]


def steps_size(steps: Sequence[Step]) -> int:
    """
    The size of an atomic request, bounded by the size limit: its steps' tuples and
    templates, each canonically encoded, together.
    """
    return sum(len(packb(s.arg.fields if isinstance(s.arg, Template) else s.arg)) for s in steps)


class AbortReason(enum.IntEnum):
    """Why an atomic request was not applied (its number is its code on the wire)."""

    NO_MATCH = 1
    """An C{inp}, C{rdp} or C{present} step found no matching tuple."""
    MATCHED = 2
    """An C{absent} step found a matching tuple."""
    TOO_LARGE = 3
    """The tuples taken and read up to this step (by C{inp}, C{rdp}, C{scan} and
    C{delete} steps) would together encode to more than the size limit, or this
    C{scan} or C{delete} step matches more than L{MAX_SCAN} tuples: the answer could
    not be sent."""


class AtomicAborted(Exception):
    """
    An atomic request was not applied at all: its step number C{step} (from 0) failed,
    for C{reason}.
    """

    def __init__(self, step: int, reason: AbortReason) -> None:
        super().__init__(f"atomic request aborted at step {step}: {reason.name}")
        self.step = step
        self.reason = reason
