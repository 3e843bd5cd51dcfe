"""
The task of the FTM demonstration (C{examples/ftmdemo.py}): a plain function that an
Execution ARMOR's task child runs, signalling progress as it goes.
"""

from __future__ import annotations

import os

from lips.armor.task import progress

#: How many numbers are tested between two progress signals (and two reports).
CHUNK = 2000


def is_prime(n: int) -> bool:
    """Whether C{n} is prime, by trial division (slow on purpose: the work to do)."""
    if n < 4:
        return n >= 2
    if n % 2 == 0 or n % 3 == 0:
        return False
    d = 5
    while d * d <= n:
        if n % d == 0 or n % (d + 2) == 0:
            return False
        d += 6
    return True


def count_primes(lo: int, hi: int, report: str = "") -> int:
    """
    How many primes there are in C{[lo, hi)}.  Every L{CHUNK} numbers it signals progress
    (so the Execution ARMOR sees it alive) and, with C{report}, writes how far it got to
    that file (C{"done total"}), for the demonstration's progress display.
    """
    count = 0
    total = max(hi - lo, 0)
    for start in range(lo, hi, CHUNK):
        end = min(start + CHUNK, hi)
        count += sum(1 for n in range(start, end) if is_prime(n))
        progress()
        if report:
            _write(report, f"{end - lo} {total}\n")
    return count


def _write(path: str, text: str) -> None:
    """Write C{text} to C{path} whole (a reader never sees half of it)."""
    partial = f"{path}.{os.getpid()}"
    with open(partial, "w") as f:
        f.write(text)
    os.replace(partial, path)
