"""
What lipsd reports about its node: a L{Sample} read from the operating system, the
L{IdlePolicy} that decides whether the node counts as idle for LiPS, and the
L{NodeMonitor} that turns samples into numbered node-state tuples.

Nothing here does I/O: the sampler and the clock are injected.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, Protocol

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from zope.interface import Interface

from lips.tuples import ANY, LTuple
from lips.validate import at_least, non_negative, positive, provides

__all__ = [
    "DOWN_TAG",
    "STATE_TAG",
    "UP_TAG",
    "IdlePolicy",
    "ISampler",
    "NodeMonitor",
    "NodeState",
    "Sample",
    "SystemSpace",
    "down_template",
    "state_template",
    "up_template",
]

#: The first field of a node-state tuple.
STATE_TAG: Final = "node"
#: The first field of the tuple that says a node is down.
DOWN_TAG: Final = "node-down"
#: The first field of the tuple that says a node is up (joined, or taken in again).
UP_TAG: Final = "node-up"


class SystemSpace(Protocol):
    """The operations lipsd uses on the System Tuple Space (a client's, structurally)."""

    def out(self, values: Sequence[Any]) -> defer.Deferred[None]: ...

    def inp(self, template: Sequence[Any]) -> defer.Deferred[LTuple | None]: ...

    def rdp(self, template: Sequence[Any]) -> defer.Deferred[LTuple | None]: ...


def _percent(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    non_negative(instance, attribute, value)
    if value > 100:
        raise ValueError(f"{attribute.name} must be a percentage (0-100), not {value!r}")


@attrs.frozen
class Sample:
    """
    One reading of the node's resources.

    @ivar load1: the one-minute load average.
    @ivar cpu_idle: the percentage of CPU time idle since the previous reading (0-100).
    @ivar free_memory: memory available to new processes, bytes.
    @ivar processes: the processes lipsd runs for LiPS (its children).
    """

    load1: float = attrs.field(converter=float, validator=non_negative)
    cpu_idle: float = attrs.field(converter=float, validator=_percent)
    free_memory: int = attrs.field(validator=at_least(0))
    processes: int = attrs.field(validator=at_least(0))


class ISampler(Interface):
    """Reads the node's resources."""

    def sample() -> Sample:
        """The resources now."""


@attrs.frozen
class IdlePolicy:
    """
    When a node counts as idle for LiPS (may be given new processes): all thresholds
    hold at once.

    @ivar max_load: the one-minute load average must be at most this.
    @ivar min_cpu_idle: the CPU must be idle at least this percentage of the time.
    @ivar min_free_memory: at least this many bytes must be free.
    """

    max_load: float = attrs.field(default=1.0, converter=float, validator=non_negative)
    min_cpu_idle: float = attrs.field(default=50.0, converter=float, validator=_percent)
    min_free_memory: int = attrs.field(default=256 << 20, validator=at_least(0))

    def is_idle(self, sample: Sample) -> bool:
        """Whether a node that reads C{sample} counts as idle."""
        return (
            sample.load1 <= self.max_load
            and sample.cpu_idle >= self.min_cpu_idle
            and sample.free_memory >= self.min_free_memory
        )


@attrs.frozen
class NodeState:
    """
    One report of a node, as written into the System Tuple Space.

    @ivar name: the node's name.
    @ivar seq: the report's number, 1 for the first report of a lipsd run.
    @ivar time: when it was taken, on the monitor's clock (not written to the space).
    """

    name: str
    seq: int
    sample: Sample
    idle: bool
    time: float

    def as_tuple(self) -> LTuple:
        """C{("node", name, seq, load1, cpu_idle, free_memory, processes, idle)}."""
        s = self.sample
        return (
            STATE_TAG,
            self.name,
            self.seq,
            s.load1,
            s.cpu_idle,
            s.free_memory,
            s.processes,
            self.idle,
        )


def state_template(name: str, seq: int | None = None) -> tuple[Any, ...]:
    """The template of node C{name}'s state tuple: any report, or report C{seq}."""
    return (STATE_TAG, name, int if seq is None else seq, float, float, int, int, bool)


def down_template(name: str) -> tuple[Any, ...]:
    """The template of the tuple saying node C{name} is down."""
    return (DOWN_TAG, name, int, ANY)


def up_template(name: str) -> tuple[Any, ...]:
    """The template of the tuple saying node C{name} is up."""
    return (UP_TAG, name, int)


@attrs.define
class NodeMonitor:
    """
    Produces node C{name}'s state: call L{report} every C{interval} seconds (the service
    does, on C{clock}); each call reads the sampler once and numbers the report.

    @ivar interval: seconds between reports.
    """

    name: str = attrs.field(validator=attrs.validators.instance_of(str))
    sampler: ISampler = attrs.field(validator=provides(ISampler))
    clock: IReactorTime = attrs.field(validator=provides(IReactorTime))
    policy: IdlePolicy = attrs.field(
        factory=IdlePolicy, validator=attrs.validators.instance_of(IdlePolicy)
    )
    interval: float = attrs.field(default=1.0, converter=float, validator=positive)
    seq: int = attrs.field(default=0, init=False)

    @name.validator
    def _check_name(self, attribute: attrs.Attribute[str], value: str) -> None:
        if not value:
            raise ValueError("a node needs a name")

    def report(self) -> NodeState:
        """Read the node now: the next numbered state."""
        sample = self.sampler.sample()
        if not isinstance(sample, Sample):
            raise TypeError(f"the sampler gave {sample!r}, not a Sample")
        self.seq += 1
        return NodeState(
            self.name, self.seq, sample, self.policy.is_idle(sample), self.clock.seconds()
        )
