"""
How the simulators host the L{Replica} core: its effects carried out at once, at the
simulation's time, with a restore run to its end before anything else happens (as the
simulators always had it; L{lips.protocols.ReplicaNode} runs one step per turn of the
reactor instead).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVarTuple

from zope.interface import implementer

from lips.kernel import CancelTimer, Deliver, Log, Send, StartTimer
from lips.replica import Replica
from lips.server import Answer, ISpaceBackend, Operation
from lips.space import Status

__all__ = ["ReplicaBackend", "carry_out"]

Ts = TypeVarTuple("Ts")


def carry_out(
    replica: Replica,
    now: float,
    broadcast: Callable[[bytes], bool],
    complete: Callable[[Answer], None],
) -> None:
    """
    Carry out everything C{replica} has emitted, in order, until it has nothing more
    to say: a L{Send} goes to C{broadcast} (a payload it refuses is fed back as the
    replica's C{refused} input), a L{Deliver}ed completion to C{complete}, a
    L{StartTimer} fires at once (C{at} is always C{now}: the next step of a restore).
    """
    while effects := replica.drain():
        for effect in effects:
            if isinstance(effect, Send):
                if not broadcast(effect.message):
                    replica.refused(effect.message, now)
            elif isinstance(effect, Deliver):
                complete(effect.item)
            elif isinstance(effect, StartTimer):
                replica.timer(effect.key, now)
            elif not isinstance(effect, CancelTimer | Log):
                raise TypeError(f"the replica emitted {effect!r}")


@implementer(ISpaceBackend)
class ReplicaBackend:
    """
    A replica as the backend of a simulated L{MessageServer}: the server's requests are
    its inputs at C{now()}, and its effects are carried out at once (L{carry_out}).

    @ivar on_complete: where every answer goes (the server sets it).
    """

    def __init__(
        self,
        replica: Replica,
        now: Callable[[], float],
        broadcast: Callable[[bytes], bool],
    ) -> None:
        self.replica = replica
        self.on_complete: Callable[[Answer], None] = lambda c: None
        self._now = now
        self._broadcast = broadcast

    def feed(self, method: Callable[[*Ts, float], None], *args: *Ts) -> None:
        """Call an input of the replica (one of the ring's, say) at C{now()}; carry out."""
        method(*args, self._now())
        self.carry_out()

    def carry_out(self) -> None:
        """Carry out what the replica emitted (after an input fed from outside)."""
        carry_out(self.replica, self._now(), self._broadcast, self.on_complete)

    def submit(self, operation: Operation) -> None:
        self.feed(self.replica.submit, operation)

    def withdraw(self, pid: int, event: int, status: Status) -> None:
        self.feed(self.replica.withdraw, pid, event, status)

    def gauges(self) -> dict[str, int | float | str]:
        return self.replica.gauges()

    def recovered(self, pid: int) -> tuple[int, bytes] | None:
        return self.replica.recovered(pid)
