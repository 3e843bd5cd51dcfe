"""
Tasks for C{tests.unit.test_armor_tasks}: run as real task children
(C{python -m lips.armor.task}) by an Execution ARMOR's task host.
"""

from __future__ import annotations

import os
import signal
import time

from lips.armor.task import TO_PARENT, progress, recover, take_checkpoint


def answer(x: int) -> dict[str, object]:
    """Return a plain value."""
    return {"answer": x + 1, "items": [x, "x", b"b"]}


def fail() -> None:
    """Raise (exit non-zero)."""
    raise RuntimeError("this task fails on purpose")


def busy(n: int) -> int:
    """Signal progress C{n} times, then return C{n}."""
    for _ in range(n):
        progress()
    return n


def checkpointed() -> str:
    """
    The first run takes a checkpoint and crashes; the next recovers it and returns
    what it held.
    """
    state = recover()
    if state is None:
        take_checkpoint(b"half")
        raise RuntimeError("crashing after the checkpoint, on purpose")
    return state.decode() + "-done"


def recovers_nothing() -> bool:
    """Whether recover() says to start afresh."""
    return recover() is None


def forever() -> None:
    """Never progress, never end (to be killed)."""
    while True:
        time.sleep(60)


def stubborn() -> None:
    """Ignore SIGTERM, say so with a progress signal, then never end."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    progress()
    forever()


def progress_then_wait() -> None:
    """Signal progress, then never end (its parent goes away)."""
    progress()
    forever()


def garbage() -> None:
    """Write a malformed control message, then never end."""
    os.write(TO_PARENT, b"\xff\xff\xff\xff")
    forever()


def not_plain() -> object:
    """Return something that is not a plain value."""
    return object()
