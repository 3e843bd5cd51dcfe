"""
The pending timers of one core, sans-IO: what the L{Driver<lips.kernel.Driver>} keeps
behind its one reactor timer, and what a simulator keeps under its virtual clock.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

from lips.kernel._effects import CancelTimer, StartTimer, TimerKey, check_timer_key

__all__ = ["TimerTable"]


class TimerTable:
    """
    Timers by key, each with an absolute deadline.  Starting a key that is pending
    replaces its deadline; timers fall due in deadline order, ties in the order they
    were started.
    """

    __slots__ = ("_deadlines", "_heap", "_seq")

    def __init__(self) -> None:
        self._deadlines: dict[TimerKey, tuple[float, int]] = {}
        # (deadline, seq, key); entries no longer in _deadlines are stale, dropped lazily.
        self._heap: list[tuple[float, int, TimerKey]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._deadlines)

    def __contains__(self, key: object) -> bool:
        return key in self._deadlines

    def start(self, key: TimerKey, at: float) -> None:
        """Have C{key} fall due at C{at}, replacing its deadline if it is pending."""
        check_timer_key(key)
        seq = self._seq
        self._seq += 1
        self._deadlines[key] = (at, seq)
        heapq.heappush(self._heap, (at, seq, key))
        if len(self._heap) > 2 * len(self._deadlines) + 32:
            self._compact()

    def cancel(self, key: TimerKey) -> bool:
        """Forget C{key}. @return: whether it was pending."""
        return self._deadlines.pop(key, None) is not None

    def apply(self, effect: StartTimer | CancelTimer) -> None:
        """Carry out a timer effect."""
        if isinstance(effect, StartTimer):
            self.start(effect.key, effect.at)
        else:
            self.cancel(effect.key)

    def deadline(self, key: TimerKey) -> float | None:
        """When C{key} falls due, if it is pending."""
        entry = self._deadlines.get(key)
        return None if entry is None else entry[0]

    def next_deadline(self) -> float | None:
        """The earliest deadline, or None when nothing is pending."""
        self._prune()
        return self._heap[0][0] if self._heap else None

    def due(self, now: float) -> Iterator[TimerKey]:
        """
        Take the timers due at C{now}, one at a time, earliest first: each key is
        removed as it is yielded.

        The consumer is meant to fire each key and carry out what that caused before
        asking for the next, so a timer cancelled or moved by an earlier one is seen
        (it is not yielded).  Timers started while the iteration runs are left for the
        next one, even if already due: a core that keeps re-arming at C{now} cannot hold
        its host in one loop.  Stopping early leaves the rest pending.
        """
        bound = self._seq
        while True:
            self._prune()
            if not self._heap or self._heap[0][0] > now:
                return
            _, seq, key = self._heap[0]
            if seq < bound:
                heapq.heappop(self._heap)
            else:
                # The earliest is new this round: look past it for an older one due.
                older = [
                    (a, s, k) for k, (a, s) in self._deadlines.items() if a <= now and s < bound
                ]
                if not older:
                    return
                _, _, key = min(older)
            del self._deadlines[key]
            yield key

    def clear(self) -> None:
        """Forget every timer."""
        self._deadlines.clear()
        self._heap.clear()

    def _prune(self) -> None:
        heap, deadlines = self._heap, self._deadlines
        while heap:
            at, seq, key = heap[0]
            if deadlines.get(key) == (at, seq):
                return
            heapq.heappop(heap)

    def _compact(self) -> None:
        self._heap = [(at, seq, key) for key, (at, seq) in self._deadlines.items()]
        heapq.heapify(self._heap)
