"""
The core contract every LiPS core follows, and the one Twisted driver that runs them.

A core is a plain object: its inputs are methods taking C{now}, its decisions are
effects from one vocabulary (L{Send}, L{Deliver}, L{StartTimer}, L{CancelTimer},
L{Persist}, L{Spawn}, L{Kill}, L{Log}), kept in an L{Outbox} and taken with
C{drain()}; due timers come back through C{timer(key, now)} (L{Core}).  L{Driver}
runs a core on a reactor's clock with one delayed call (its L{TimerTable}) and
per-effect handlers; a simulator hosts a core with a L{TimerTable} and its own
virtual clock.  See C{docs/design/core.md}.
"""

from lips.kernel._core import Core, Outbox
from lips.kernel._driver import COUNTERS, Driver, Handlers
from lips.kernel._effects import (
    EFFECT_TYPES,
    CancelTimer,
    Deliver,
    Effect,
    Kill,
    Log,
    Persist,
    Send,
    Spawn,
    StartTimer,
    TimerKey,
    check_timer_key,
)
from lips.kernel._timers import TimerTable

__all__ = [
    "COUNTERS",
    "EFFECT_TYPES",
    "CancelTimer",
    "Core",
    "Deliver",
    "Driver",
    "Effect",
    "Handlers",
    "Kill",
    "Log",
    "Outbox",
    "Persist",
    "Send",
    "Spawn",
    "StartTimer",
    "TimerKey",
    "TimerTable",
    "check_timer_key",
]
