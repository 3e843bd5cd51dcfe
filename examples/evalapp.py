"""
Functions to run with C{eval} (see C{docs/node.md}): each takes the application's
space first and returns the last field of its passive tuple.

    await lips.node.eval_request(system, ("sq", 7), "evalapp:square", 7, nodes=["n1"])
    # later, in the application's space: ("sq", 7, 49)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def square(space: Any, x: int) -> int:
    """x squared."""
    return x * x


def crash_once(space: Any, marker: str, x: int) -> int:
    """x squared, but the first run (no file at C{marker} yet) crashes after creating it."""
    path = Path(marker)
    if not path.exists():
        path.write_text("crashed once\n")
        raise RuntimeError("crashing on purpose, the first time")
    return x * x


def always_crash(space: Any) -> None:
    """Crashes every time: lipsd gives it up after its restart threshold."""
    raise RuntimeError("crashing on purpose, every time")


def wait_then_square(space: Any, x: int) -> tuple[int, int]:
    """
    Announce C{("running", x, pid, os_pid)} (the LiPS process id and the operating
    system's), wait for C{("go", x)}, then return C{(x * x, pid)}.  Restarted with the
    same LiPS id, its announcement is answered from the space's log and not written
    again: one C{running} tuple however often it is restarted.
    """
    space.out(("running", x, space.pid, os.getpid()))
    space.rd(("go", x))
    return (x * x, space.pid)
