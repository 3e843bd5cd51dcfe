# mypy: disable-error-code="untyped-decorator"
"""
The C{lips} command, the blocking facade and the example application, as real processes
against a real MessageServer.
"""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest_twisted

from tests.integration._support import TwistdServer, within

ROOT = Path(__file__).resolve().parents[2]


async def run(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    """Run a Python process to completion: exit code, stdout, stderr."""
    from twisted.internet.utils import getProcessOutputAndValue

    out, err, code = await within(
        getProcessOutputAndValue(sys.executable, list(args), env=dict(os.environ), path=str(ROOT)),
        timeout,
    )
    return code, out.decode(), err.decode()


async def lips(server: TwistdServer, *args: str) -> tuple[int, str, str]:
    return await run("-m", "lips.cli", "--server", server.endpoint, *args)


@pytest_twisted.ensureDeferred
async def test_cli_operations(msgserver: TwistdServer) -> None:
    """out, rd, inp, in and status do what they say and exit 0, or 1 when nothing matches."""
    assert (await lips(msgserver, "out", "job", "1", '{"$bytes": "AAE="}'))[0] == 0
    assert await lips(msgserver, "rd", "job", "?int", "?bytes") == (
        0,
        '["job", 1, {"$bytes": "AAE="}]\n',
        "",
    )
    code, out, _ = await lips(msgserver, "inp", "job", "?", "?")
    assert (code, out) == (0, '["job", 1, {"$bytes": "AAE="}]\n')
    code, out, err = await lips(msgserver, "inp", "job", "?", "?")
    assert (code, out) == (1, "") and "no matching tuple" in err
    code, _, err = await lips(msgserver, "in", "--timeout", "0.3", "job", "?int")
    assert code == 1 and "timed out" in err
    code, out, _ = await lips(msgserver, "status")
    assert code == 0
    status = dict(line.split(None, 1) for line in out.splitlines())
    assert status["ops.out"].strip() == "1"
    assert status["space.waiting"].strip() == "0"


@pytest_twisted.ensureDeferred
async def test_cli_errors(msgserver: TwistdServer) -> None:
    """Bad fields exit 2; an unreachable server exits 3; both say why."""
    code, _, err = await lips(msgserver, "in", "job", "?list")
    assert code == 2 and "unknown formal type" in err
    code, _, err = await lips(msgserver, "out", "big", str(2**64))
    assert code == 2 and "64 signed bits" in err
    code, _, err = await run("-m", "lips.cli", "--server", "tcp:host=127.0.0.1:port=1", "rdp", "x")
    assert code == 3 and "cannot reach" in err


@pytest_twisted.ensureDeferred
async def test_blocking_facade(msgserver: TwistdServer) -> None:
    """A plain script uses lips.blocking: round trips, None from inp, Timeout from in_."""
    script = textwrap.dedent(
        f"""
        import lips
        from lips import blocking
        with blocking.connect({msgserver.endpoint!r}) as space:
            space.out(("job", 1, [2.5, None]))
            assert space.rd(("job", int, (float, lips.ANY))) == ("job", 1, (2.5, None))
            assert space.in_(("job", int, lips.ANY)) == ("job", 1, (2.5, None))
            assert space.inp(("job", int, lips.ANY)) is None
            try:
                space.in_(("job", int, lips.ANY), timeout=0.2)
            except lips.Timeout:
                print("timeout ok")
            print("waiting", space.stats()["space.waiting"])
        """
    )
    code, out, err = await run("-c", script)
    assert code == 0, err
    assert out.split("\n")[:2] == ["timeout ok", "waiting 0"]


@pytest_twisted.ensureDeferred
async def test_primes_example(msgserver: TwistdServer) -> None:
    """The example master/worker application computes the right answer."""
    code, out, err = await run(
        "examples/primes.py",
        "--server",
        msgserver.endpoint,
        "--limit",
        "300000",
        "--chunk",
        "10000",
        "--workers",
        "3",
    )
    assert code == 0, out + err
    assert "primes below 300,000: 25,997" in out
    assert "-> OK" in out
    assert "tuples left in the space: 0" in out
