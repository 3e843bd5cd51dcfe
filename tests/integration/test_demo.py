# mypy: disable-error-code="untyped-decorator"
# (pytest-twisted ships no type hints, so its decorators are untyped.)
"""
The demonstration that C{./run demo} runs, smaller: it must end with the exact answer,
having killed a worker, the master, a MessageServer and a node, and recovered from each.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest_twisted

from tests.integration._support import within

DEMO = Path(__file__).resolve().parents[2] / "examples" / "ftdemo.py"


@pytest_twisted.ensureDeferred
async def test_demo_recovers_and_is_exact(tmp_path: Path) -> None:
    from twisted.internet.utils import getProcessOutputAndValue

    out, err, code = await within(
        getProcessOutputAndValue(
            sys.executable,
            [str(DEMO), "--bound", "600000", "--tasks", "30", "--keep", str(tmp_path)],
        ),
        120,
    )
    text = (out + err).decode(errors="replace")
    assert code == 0, text
    assert "lipsd restarted it with the same LiPS process id" in text, text
    assert "master process on n1" in text and "worker process on n1" in text, text
    assert "every client moved to one of them" in text, text
    assert "n1 declared it down" in text, text
    assert "primes below 600,000: 49,098 (a sieve here says 49,098): OK" in text, text
