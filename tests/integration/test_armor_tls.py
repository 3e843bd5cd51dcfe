# mypy: disable-error-code="untyped-decorator"
# (pytest-twisted ships no type hints, so its decorators are untyped.)
"""
Daemon links over TLS: two real lipsd (C{--armor-tls-cert}, C{--armor-tls-key},
C{--armor-tls-ca}) and the test's side as node C{tester}.  A peer with a certificate of
the cluster's CA gets through (and still proves the cluster key); n1 dials n2 over TLS
to carry a message; a peer without TLS, or with a certificate of another CA, is cut off
before it can say anything.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS

import lips.client
from lips.armor import INSTALL, INSTALLED, Install, link_key
from lips.cluster import load_cluster
from lips.node import daemon_template
from lips.protocols import DaemonLink, LinkPhase
from lips.tap._server import tls_options
from lips.testing import free_port
from tests.integration import _armorapp
from tests.integration._support import ServerFarm, make_pki, spawn_lipsd, start_rings, within
from tests.integration.test_armor_daemons import ROOT, SM, A, B, ManagerSide


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


async def dial(
    side: ManagerSide, node: str, port: int, key: bytes, tls: Any | None
) -> tuple[DaemonLink, defer.Deferred[DaemonLink]]:
    """A daemon link from node C{tester} to C{node} on C{port}, over C{tls} if given."""
    side.up[node] = defer.Deferred()
    side.lost[node] = defer.Deferred()
    link = DaemonLink(
        side, "tester", link_key(key), Counter(), _reactor(), dialer=True, expect=node
    )
    endpoint: Any = TCP4ClientEndpoint(_reactor(), "127.0.0.1", port)
    if tls is not None:
        endpoint = wrapClientTLS(tls, endpoint)
    await within(connectProtocol(endpoint, link))
    return link, side.up[node]


@pytest_twisted.ensureDeferred
async def test_daemon_links_over_tls(
    servers: ServerFarm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugins = tmp_path / "plugins" / "twisted" / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "lips_test_armor.py").write_text(_armorapp.PLUGIN)
    monkeypatch.setenv(
        "PYTHONPATH",
        os.pathsep.join(
            p
            for p in (str(tmp_path / "plugins"), str(ROOT), os.environ.get("PYTHONPATH", ""))
            if p
        ),
    )
    pki = make_pki(tmp_path)
    tls = (
        *("--armor-tls-cert", str(pki.peer_cert), "--armor-tls-key", str(pki.peer_key)),
        *("--armor-tls-ca", str(pki.ca_cert)),
    )
    rings = await start_rings(servers)
    key = load_cluster(rings.path).key
    runtime = Path(tempfile.mkdtemp(prefix="lips-tls-"))
    ports = {"n1": free_port(), "n2": free_port()}
    for name, port in ports.items():
        spawn_lipsd(
            servers,
            rings.path,
            name,
            "--armor-listen",
            f"tcp:{port}:interface=127.0.0.1",
            "--armor-runtime",
            str(runtime / name),
            *tls,
            processes=False,
        )
    client = await within(lips.client.connect(_reactor(), rings.endpoints("fixserver")))
    try:
        for name in ports:
            await within(client.rd(daemon_template(name), timeout=20), 25)
        await within(client.out(("armor", SM, "surrogate-manager", "ftm", "tester", 1, "itest")))
        mine = tls_options(str(pki.client_cert), str(pki.client_key), str(pki.ca_cert))
        tester = ManagerSide()
        n1, up1 = await dial(tester, "n1", ports["n1"], key, mine)
        await within(up1)
        n2, up2 = await dial(tester, "n2", ports["n2"], key, mine)
        await within(up2)
        assert n1.phase is LinkPhase.UP and n2.phase is LinkPhase.UP

        # An ARMOR on n1 relays to one on n2: n1's daemon dials n2's over TLS.
        tester.send(n1, INSTALL, "daemon.n1", Install(A, "test-echo", SM, 1, {}))
        tester.send(n2, INSTALL, "daemon.n2", Install(B, "test-echo", SM, 1, {}))
        for _ in range(2):
            await tester.next(INSTALLED, 30)
        tester.send(n1, "relay", A, {"to": B, "body": "over tls"})
        node, relayed = await tester.next("relayed", 30)
        assert (node, relayed.source) == ("n1", A)
        assert relayed.value() == {"from": B, "body": "over tls"}

        # Without TLS, and with another CA's certificate: cut off, never up.
        for other in (
            None,
            tls_options(str(pki.rogue_client_cert), str(pki.rogue_client_key), None),
        ):
            outsider = ManagerSide()
            try:
                _, up = await dial(outsider, "n1", ports["n1"], key, other)
            except Exception:
                continue  # the TLS handshake refused it outright
            await within(outsider.lost["n1"], 15)
            assert not up.called
        assert n1.phase is LinkPhase.UP
    finally:
        await within(client.close())
