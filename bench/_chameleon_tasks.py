"""The task targets of C{bench.chameleon}: run by Execution ARMORs' task children."""

from __future__ import annotations

import time

from lips.armor.task import progress


def square(n: int) -> int:
    """A trivial task."""
    return n * n


def slow(n: int, seconds: float) -> int:
    """C{n * n} after C{seconds} of work, signalling progress."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        progress()
        time.sleep(0.05)
    return n * n
