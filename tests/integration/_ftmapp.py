"""
Task targets of the FTM tests: plain functions run by Execution ARMORs' task children.
The ones that fail do so once, on their first run: a marker file says a run was made.
"""

from __future__ import annotations

import os
import time

from lips.armor.task import progress


def square(n: int) -> int:
    """The simplest job there is."""
    return n * n


def crash_once(marker: str, n: int) -> int:
    """Exit abnormally on the first run; return C{n * n} on the next."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(3)
    return n * n


def hang_once(marker: str, n: int) -> int:
    """Hang without progress on the first run (a livelock); return on the next."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        time.sleep(120)
    return n * n


def slow(marker: str, n: int, seconds: float) -> int:
    """Write C{marker} when it starts, then work C{seconds}, signalling progress."""
    with open(marker, "a") as f:
        f.write(f"{os.getpid()}\n")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        progress()
        time.sleep(0.05)
    return n * n
