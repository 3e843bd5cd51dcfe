"""
The one home of the value checks that configuration and message classes share.

Each check is an attrs validator (C{attrs.field(validator=non_negative)}) and follows one
rule: a value of the wrong type raises C{TypeError} (an injected collaborator that does
not provide its interface too), a value of the right type out of range raises
C{ValueError}, and the message names the field.  C{bool} is never taken for a
number.  Limits that several rooms must agree on (the process id range) live here too.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any, Final

import attrs
from zope.interface.interface import InterfaceClass

__all__ = [
    "PID_BITS",
    "PID_MAX",
    "Validator",
    "at_least",
    "check_pid",
    "finite",
    "new_pid",
    "non_negative",
    "pid",
    "positive",
    "provides",
]

Validator = Callable[[object, "attrs.Attribute[Any]", Any], None]

PID_MAX: Final = 2**63 - 1
"""The largest process id: ids travel as signed 64-bit integers."""

PID_BITS: Final = 62
"""Ids handed out at random (by a server, or by C{eval}) have this many random bits, plus
one: never 0, far below L{PID_MAX}, and a clash is as likely as 2 in 2**62."""


def new_pid(rng: random.Random) -> int:
    """A fresh random process id from C{rng}."""
    return rng.getrandbits(PID_BITS) + 1


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, not {value!r}")
    return value


def finite(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """Any finite number (a time on a clock, say)."""
    if not math.isfinite(_number(attribute.name, value)):
        raise ValueError(f"{attribute.name} must be finite, not {value!r}")


def non_negative(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """A finite number of at least 0 (seconds where 0 means "never", say)."""
    number = _number(attribute.name, value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{attribute.name} must be finite and not negative, not {value!r}")


def positive(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """A finite number greater than 0."""
    number = _number(attribute.name, value)
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"{attribute.name} must be positive and finite, not {value!r}")


def at_least(minimum: int) -> Validator:
    """An integer of at least C{minimum}."""

    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{attribute.name} must be an integer, not {value!r}")
        if value < minimum:
            raise ValueError(f"{attribute.name} must be at least {minimum}, not {value!r}")

    check.__name__ = f"at_least_{minimum}"
    return check


def check_pid(value: object, name: str = "pid") -> int:
    """C{value} if it is a process id (1 to L{PID_MAX})."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if not 0 < value <= PID_MAX:
        raise ValueError(f"{name} must be a positive 64-bit integer, not {value!r}")
    return value


def pid(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """A process id (1 to L{PID_MAX})."""
    check_pid(value, attribute.name)


def provides(interface: InterfaceClass) -> Validator:
    """An object that provides the zope C{interface} (an injected collaborator)."""

    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if not interface.providedBy(value):
            raise TypeError(f"{attribute.name} must provide {interface.__name__}, not {value!r}")

    check.__name__ = f"provides_{interface.__name__}"
    return check
