# mypy: disable-error-code="untyped-decorator"
# (pytest-twisted ships no type hints, so its decorators are untyped.)
"""
TLS between clients and a real twistd MessageServer, with a test CA made per session.
"""

from __future__ import annotations

import pytest
import pytest_twisted

import lips
from tests.integration._support import PKI, ServerFarm, TwistdServer, eventually, within

# Twisted's client endpoints hand pyOpenSSL objects to pyOpenSSL, which now warns.
pytestmark = pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")


def _ssl(server: TwistdServer, trust: str, cert: str = "", key: str = "") -> str:
    """An C{ssl:} client endpoint string (Twisted's _parseClientSSL)."""
    s = f"ssl:host=127.0.0.1:port={server.port}:caCertsDir={trust}:hostname=localhost"
    if cert:
        s += f":certKey={cert}:privateKey={key}"
    return s


def _tls(server: TwistdServer, host: str, trust: str, cert: str = "", key: str = "") -> str:
    """A C{tls:} client endpoint string (Twisted's _parseClientTLS)."""
    s = f"tls:{host}:{server.port}:trustRoots={trust}"
    if cert:
        s += f":certificate={cert}:privateKey={key}"
    return s


async def _round_trip(server: TwistdServer, endpoint: str) -> None:
    space = await server.connect(endpoint)
    await within(space.out(("secret", b"\x00\x01", 3)))
    assert await within(space.in_(("secret", bytes, int), timeout=5)) == (
        "secret",
        b"\x00\x01",
        3,
    )
    await within(space.close())


async def _refused(server: TwistdServer, endpoint: str) -> Exception:
    """Connecting and saying HELLO through C{endpoint} fails; the failure."""
    with pytest.raises(Exception) as excinfo:
        await server.connect(endpoint)
    return excinfo.value


@pytest_twisted.ensureDeferred
async def test_tls_round_trip(servers: ServerFarm, pki: PKI) -> None:
    """
    A server started with --tls-cert/--tls-key serves clients that verify it against the
    test CA, by DNS name (ssl: and tls: endpoints) and by IP address (tls: endpoint).
    """
    server = await servers.start(
        "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)
    )
    trust = str(pki.trust_dir)
    await _round_trip(server, _ssl(server, trust))
    await _round_trip(server, _tls(server, "localhost", trust))
    await _round_trip(server, _tls(server, "127.0.0.1", trust))


@pytest_twisted.ensureDeferred
async def test_tls_from_twisted_listen_string(servers: ServerFarm, pki: PKI) -> None:
    """A plain Twisted C{ssl:} --listen endpoint string serves TLS just as well."""
    server = await servers.start(
        listen=f"ssl:{{port}}:interface=127.0.0.1:privateKey={pki.server_key}"
        f":certKey={pki.server_cert}"
    )
    await _round_trip(server, _ssl(server, str(pki.trust_dir)))


@pytest_twisted.ensureDeferred
async def test_client_certificates_required(servers: ServerFarm, pki: PKI) -> None:
    """
    With --tls-client-ca, a client without a certificate, or with one its CA did not
    sign, is refused; a client with a certificate the CA signed is served.
    """
    server = await servers.start(
        "--tls-cert",
        str(pki.server_cert),
        "--tls-key",
        str(pki.server_key),
        "--tls-client-ca",
        str(pki.ca_cert),
    )
    trust = str(pki.trust_dir)
    e = await _refused(server, _ssl(server, trust))
    assert isinstance(e, lips.ConnectionLost), repr(e)
    assert "certificate required" in str(e), str(e)
    e = await _refused(
        server, _ssl(server, trust, str(pki.rogue_client_cert), str(pki.rogue_client_key))
    )
    assert isinstance(e, lips.ConnectionLost), repr(e)
    assert "unknown ca" in str(e), str(e)
    await _round_trip(server, _ssl(server, trust, str(pki.client_cert), str(pki.client_key)))
    await _round_trip(
        server, _tls(server, "localhost", trust, str(pki.client_cert), str(pki.client_key))
    )
    good = _ssl(server, trust, str(pki.client_cert), str(pki.client_key))

    async def only_one_session() -> bool:
        return (await server.stats(good))["sessions"] == 1

    await eventually(only_one_session, what="refused clients' sessions closed")


@pytest_twisted.ensureDeferred
async def test_client_that_does_not_trust_the_ca_fails(servers: ServerFarm, pki: PKI) -> None:
    """A client whose trust roots do not include the server's CA cannot connect."""
    server = await servers.start(
        "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)
    )
    rogue = str(pki.rogue_trust_dir)
    for endpoint in (_ssl(server, rogue), _tls(server, "localhost", rogue)):
        e = await _refused(server, endpoint)
        assert isinstance(e, lips.ConnectionLost), repr(e)
        assert "certificate verify failed" in str(e), str(e)
    await _round_trip(server, _ssl(server, str(pki.trust_dir)))
