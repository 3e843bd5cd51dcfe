# mypy: disable-error-code="untyped-decorator"
# (pytest-twisted ships no type hints, so its decorators are untyped.)
"""
The twistd command line: the LiPS plugins are listed, bad options fail with a usage
message, and each role starts and serves.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.address import IPv4Address
from twisted.internet.defer import maybeDeferred
from twisted.internet.protocol import ServerFactory

import lips
from tests.integration._support import (
    PKI,
    STEP_TIMEOUT,
    ServerFarm,
    eventually,
    run_twistd,
    within,
)


@pytest_twisted.ensureDeferred
async def test_help_lists_the_lips_plugins(tmp_path: Path) -> None:
    """C{twistd --help} exits 0 and lists lips-msgserver, lips-fixserver, lips-node, lips-ftm."""
    code, output = await run_twistd("--help", cwd=tmp_path)
    assert code == 0, output
    listed = {line.split()[0] for line in output.splitlines() if line.startswith("    lips-")}
    assert listed == {"lips-msgserver", "lips-fixserver", "lips-node", "lips-ftm"}, output


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(
            ["--listen", "nonsense"], "bad --listen endpoint 'nonsense'", id="listen-nonsense"
        ),
        pytest.param(
            ["--listen", "tcp:notaport"],
            "bad --listen endpoint 'tcp:notaport'",
            id="listen-bad-port",
        ),
        pytest.param(["--max-arity", "0"], "--max-arity must be at least 1", id="max-arity-0"),
        pytest.param(
            ["--max-depth", "deep"],
            "--max-depth must be an integer, not 'deep'",
            id="max-depth-word",
        ),
        pytest.param(
            ["--tls-cert", "{pki.server_cert}"],
            "--tls-cert and --tls-key go together",
            id="tls-cert-without-key",
        ),
        pytest.param(
            ["--tls-client-ca", "{pki.ca_cert}"],
            "--tls-client-ca needs --tls-cert and --tls-key",
            id="tls-client-ca-alone",
        ),
        pytest.param(
            ["--tls-cert", "{tmp}/missing.pem", "--tls-key", "{pki.server_key}"],
            "no such file: {tmp}/missing.pem",
            id="tls-cert-missing",
        ),
        pytest.param(
            ["--tls-cert", "{pki.server_key}", "--tls-key", "{pki.server_key}"],
            "cannot load TLS material",
            id="tls-cert-not-a-cert",
        ),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_options_fail_with_usage(
    tmp_path: Path, pki: PKI, argv: list[str], message: str
) -> None:
    """
    twistd lips-msgserver with a bad option exits non-zero, printing the usage and a
    message that names the problem, without starting a server.
    """
    argv = [a.format(pki=pki, tmp=tmp_path) for a in argv]
    message = message.format(pki=pki, tmp=tmp_path)
    code, output = await run_twistd("-n", "--pidfile=", "lips-msgserver", *argv, cwd=tmp_path)
    assert code != 0, output
    assert "Usage: twistd [options]" in output, output
    assert "--max-arity=" in output, output  # the role's own options are listed
    assert message in output, output
    assert "starting up" not in output, output


@pytest_twisted.ensureDeferred
async def test_fixserver_starts_and_serves(servers: ServerFarm) -> None:
    """C{twistd lips-fixserver} starts, names itself a fixserver, and serves the operations."""
    server = await servers.start(role="lips-fixserver")
    space = await server.connect()
    assert space.server.endswith("-fixserver"), space.server
    await within(space.out(("node", "n1", "up")))
    assert await within(space.in_(("node", str, lips.ANY), timeout=5)) == ("node", "n1", "up")
    stats = await within(space.stats())
    assert stats["server"] == space.server
    assert stats["space.tuples"] == 0


@pytest_twisted.ensureDeferred
async def test_msgserver_stops_cleanly_on_sigterm(servers: ServerFarm) -> None:
    """
    A MessageServer with a waiting client shuts down cleanly on SIGTERM: its main loop
    ends, the client sees the connection lost, and (as twistd does) the process then
    ends by the signal that stopped it.
    """
    server = await servers.start("--name", "m1")
    space = await server.connect()
    assert space.server == "m1"
    waiting = space.in_(("never",))
    waiting.addErrback(lambda f: f.trap(lips.ConnectionLost))
    server.signal(signal.SIGTERM)
    assert await server.wait_async(STEP_TIMEOUT) == -signal.SIGTERM, server.read_log()
    await within(waiting)
    assert not space.connected
    log = server.read_log()
    assert "Main loop terminated" in log, log
    assert "Server Shut Down" in log, log
    assert "Traceback" not in log, log


@pytest_twisted.ensureDeferred
async def test_msgserver_exits_when_it_cannot_listen(servers: ServerFarm) -> None:
    """
    A MessageServer whose port is already taken exits non-zero saying why, instead of
    running on without listening (as C{twistd web --listen} does, via strports).
    """
    from twisted.internet import reactor

    blocker = reactor.listenTCP(0, ServerFactory(), interface="127.0.0.1")
    try:
        address = blocker.getHost()
        assert isinstance(address, IPv4Address)
        port = address.port
        server = servers.spawn("--listen", f"tcp:{port}:interface=127.0.0.1", port=port)

        async def refused() -> bool:
            return "Address already in use" in server.read_log()

        await eventually(refused, what="the listen error logged")
        assert await server.wait_async(3) not in (0, None), server.read_log()
        log = server.read_log()
        assert f"cannot listen on tcp:{port}:interface=127.0.0.1" in log, log
        assert "Traceback" not in log, log
    finally:
        await maybeDeferred(blocker.stopListening)


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        pytest.param("tcp:99999", "port must be 0-65535", id="port-out-of-range"),
        pytest.param(
            "tcp:0:interface=198.18.255.254", "Cannot assign requested address", id="not-here"
        ),
        pytest.param(
            "ssl:0:privateKey={tmp}/missing.key:certKey={tmp}/missing.pem",
            "No such file or directory",
            id="ssl-files-missing",
        ),
    ],
)
@pytest_twisted.ensureDeferred
async def test_startup_errors_end_in_one_line(tmp_path: Path, listen: str, message: str) -> None:
    """
    An endpoint that cannot serve (a port out of range, an address this host does not
    have, TLS files that are not there) ends twistd non-zero with a line naming the
    reason, never a traceback.
    """
    listen = listen.format(tmp=tmp_path)
    code, output = await run_twistd(
        "-n", "--pidfile=", "lips-msgserver", "--listen", listen, cwd=tmp_path
    )
    assert code != 0, output
    assert message in output, output
    assert "Traceback" not in output, output
