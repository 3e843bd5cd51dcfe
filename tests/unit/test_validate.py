"""
The shared value checks: wrong types raise TypeError, values out of range ValueError.
"""

from __future__ import annotations

import random
from typing import Any

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lips.validate import (
    PID_BITS,
    PID_MAX,
    at_least,
    check_pid,
    finite,
    new_pid,
    non_negative,
    positive,
    provides,
)
from lips.validate import pid as pid_check


@attrs.frozen
class Checked:
    when: float = attrs.field(default=0.0, validator=finite)
    wait: float = attrs.field(default=0.0, validator=non_negative)
    every: float = attrs.field(default=1.0, validator=positive)
    count: int = attrs.field(default=1, validator=at_least(1))
    pid: int = attrs.field(default=1, validator=pid_check)


class ValidateTests(SynchronousTestCase):
    def test_good(self) -> None:
        """Values in range pass, ints where numbers are asked for too."""
        Checked(when=-5, wait=0, every=0.001, count=1, pid=PID_MAX)

    def test_wrong_types(self) -> None:
        """A bool is never a number, a float never a count, a string never anything."""
        bad: list[dict[str, Any]] = [
            {"when": True},
            {"when": "1"},
            {"wait": None},
            {"every": False},
            {"count": 1.0},
            {"count": True},
            {"pid": 1.0},
            {"pid": True},
        ]
        for fields in bad:
            with self.assertRaises(TypeError, msg=repr(fields)):
                Checked(**fields)

    def test_out_of_range(self) -> None:
        """Out of range is a ValueError naming the field."""
        bad: list[dict[str, Any]] = [
            {"when": float("nan")},
            {"when": float("inf")},
            {"wait": -0.5},
            {"wait": float("inf")},
            {"every": 0},
            {"every": float("nan")},
            {"count": 0},
            {"pid": 0},
            {"pid": PID_MAX + 1},
        ]
        for fields in bad:
            with self.assertRaises(ValueError, msg=repr(fields)) as e:
                Checked(**fields)
            self.assertIn(next(iter(fields)), str(e.exception))

    def test_pids(self) -> None:
        """New pids are in range and seeded; check_pid returns what it accepts."""
        rng = random.Random(7)
        pids = [new_pid(rng) for _ in range(1000)]
        self.assertTrue(all(0 < p <= 2**PID_BITS for p in pids))
        self.assertEqual(new_pid(random.Random(7)), pids[0])
        self.assertEqual(check_pid(5), 5)
        with self.assertRaises(ValueError):
            check_pid(-1, "process")

    def test_provides(self) -> None:
        """An injected collaborator must provide its interface."""

        @attrs.frozen
        class Hosted:
            clock: IReactorTime = attrs.field(validator=provides(IReactorTime))

        Hosted(Clock())
        with self.assertRaises(TypeError) as e:
            Hosted(object())  # type: ignore[arg-type]
        self.assertIn("clock must provide IReactorTime", str(e.exception))
