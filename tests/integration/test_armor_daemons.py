# mypy: disable-error-code="untyped-decorator"
# (pytest-twisted ships no type hints, so its decorators are untyped.)
"""
The ARMOR daemons of two real lipsd (C{twistd lips-node --armor-listen}) on loopback,
with two C{twistd lips-fixserver} holding the System Tuple Space (the ARMOR table and
the daemons' endpoints), and a manager on the test's side: node C{tester}, a daemon link
of its own (with the cluster key) to each lipsd.  The ARMOR type is a test type from
outside LiPS (L{tests.integration._armorapp}), found by its plugin on PYTHONPATH.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import attrs
import psutil
import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from zope.interface import implementer

import lips.client
from lips.armor import (
    ARMOR_DEAD,
    INSTALL,
    INSTALLED,
    UNDELIVERABLE,
    ArmorDead,
    Frame,
    Install,
    Installed,
    Message,
    Undeliverable,
    armor_id,
    armor_template,
    encode_frame,
    link_key,
)
from lips.cluster import load_cluster
from lips.node import daemon_template
from lips.protocols import DaemonLink, IDaemonLinkHost, LinkPhase
from lips.testing import armor_process as find_armor_process
from lips.testing import free_port
from tests.integration import _armorapp
from tests.integration._support import (
    ServerFarm,
    TwistdServer,
    eventually,
    spawn_lipsd,
    start_rings,
    within,
)

ROOT = Path(__file__).resolve().parents[2]
SM = armor_id("sm.itest")
A = armor_id("test-echo.itest.a")
B = armor_id("test-echo.itest.b")
PING_INTERVAL = 0.2
PING_MISSES = 3
KILL_GRACE = 0.5


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


@implementer(IDaemonLinkHost)
@attrs.define(eq=False)
class ManagerSide:
    """The test's side of its daemon links: what comes in, by the node it came from."""

    up: dict[str, defer.Deferred[DaemonLink]] = attrs.field(factory=dict)
    lost: dict[str, defer.Deferred[str]] = attrs.field(factory=dict)
    inbox: defer.DeferredQueue[tuple[str, Message]] = attrs.field(factory=defer.DeferredQueue)
    ids: Any = attrs.field(factory=lambda: iter(range(1, 1 << 30)))

    def peer_authenticated(self, link: DaemonLink) -> bool:
        assert link.peer is not None
        self.up[link.peer].callback(link)
        return True

    def peer_message(self, link: DaemonLink, message: Message) -> None:
        assert link.peer is not None
        self.inbox.put((link.peer, message))

    def peer_lost(self, link: DaemonLink, reason: str) -> None:
        node = link.expect or "?"
        if node in self.lost and not self.lost[node].called:
            self.lost[node].callback(reason)

    async def connect(self, node: str, port: int, key: bytes) -> DaemonLink:
        """A daemon link from node C{tester} to the daemon of C{node} on C{port}."""
        self.up[node] = defer.Deferred()
        self.lost[node] = defer.Deferred()
        link = DaemonLink(
            self, "tester", link_key(key), Counter(), _reactor(), dialer=True, expect=node
        )
        await within(connectProtocol(TCP4ClientEndpoint(_reactor(), "127.0.0.1", port), link))
        return await within(self.up[node])

    def send(self, link: DaemonLink, type: str, destination: str, body: object) -> Message:
        message = Message.of(type, SM, destination, next(self.ids), body)
        assert link.send_message(message)
        return message

    async def next(self, type: str, seconds: float = 15.0) -> tuple[str, Message]:
        """The next message of C{type} (others are dropped)."""
        while True:
            node, message = await within(self.inbox.get(), seconds)
            if message.type == type:
                return node, message


def armor_process(lipsd: TwistdServer, armor: str) -> psutil.Process:
    """The ARMOR process of C{armor} under C{lipsd} (forked by its zygote)."""
    found = find_armor_process(lipsd.pid, armor)
    if found is None:
        raise AssertionError(f"no ARMOR process of {armor} under {lipsd.name}")
    return found


@pytest_twisted.ensureDeferred
async def test_armor_daemons(
    servers: ServerFarm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    A manager installs a test ARMOR on each node; each process starts under its node's
    lipsd and its row goes into the ARMOR table; a relay goes node to node and back
    (n1 -> n2 -> n1 -> the manager) in checked frames; a message sent to the wrong node
    comes back UNDELIVERABLE; garbage and a peer without the key are cut off; a
    SIGKILLed ARMOR is reported armor-dead to its manager with its incarnation; a
    SIGSTOPped one misses its pings, is killed, and is reported dead as hung.
    """
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
    runtime = Path(tempfile.mkdtemp(prefix="lips-armor-"))

    rings = await start_rings(servers)
    key = load_cluster(rings.path).key
    ports = {"n1": free_port(), "n2": free_port()}
    lipsd = {
        name: spawn_lipsd(
            servers,
            rings.path,
            name,
            "--armor-listen",
            f"tcp:{port}:interface=127.0.0.1",
            "--armor-runtime",
            str(runtime / name),
            "--armor-ping-interval",
            str(PING_INTERVAL),
            "--armor-ping-misses",
            str(PING_MISSES),
            "--armor-kill-grace",
            str(KILL_GRACE),
            processes=False,
        )
        for name, port in ports.items()
    }
    client = await within(lips.client.connect(_reactor(), rings.endpoints("fixserver")))
    tester = ManagerSide()
    try:
        for name, port in ports.items():
            endpoint = await within(client.rd(daemon_template(name), timeout=20), 25)
            assert endpoint[2] == f"tcp:host=127.0.0.1:port={port}"
        assert os.stat(runtime / "n1").st_mode & 0o777 == 0o700
        # The manager lives on node "tester", as its row in the ARMOR table says.
        await within(client.out(("armor", SM, "surrogate-manager", "ftm", "tester", 1, "itest")))
        n1 = await tester.connect("n1", ports["n1"], key)
        n2 = await tester.connect("n2", ports["n2"], key)

        # -- install: one ARMOR on each node --------------------------------------------
        tester.send(n1, INSTALL, "daemon.n1", Install(A, "test-echo", SM, 1, {}))
        tester.send(n2, INSTALL, "daemon.n2", Install(B, "test-echo", SM, 1, {}))
        reports = {}
        for _ in range(2):
            node, message = await tester.next(INSTALLED, 30)
            report = Installed.from_message(message)
            assert message.source == f"daemon.{node}"
            reports[report.armor] = report
        assert reports == {A: Installed(A, "n1", 1), B: Installed(B, "n2", 1)}
        row = await within(client.rdp(armor_template(A)))
        assert row == ("armor", A, "test-echo", SM, "n1", 1, "itest")
        process_a = armor_process(lipsd["n1"], A)
        process_b = armor_process(lipsd["n2"], B)
        title = " ".join(process_a.cmdline()).strip()
        assert title == f"lips-armor {A}#1 (test-echo)", title

        # -- routing: n1 -> n2 -> n1 -> the manager ----------------------------------------
        tester.send(n1, "relay", A, {"to": B, "body": "ping-7"})
        node, relayed = await tester.next("relayed")
        assert (node, relayed.source) == ("n1", A)
        assert relayed.value() == {"from": B, "body": "ping-7"}

        # -- a message for an ARMOR that does not live on the node it was sent to --------
        sent = tester.send(n1, "echo", B, "lost")
        node, bounce = await tester.next(UNDELIVERABLE)
        assert (node, bounce.source) == ("n1", "daemon.n1")
        assert Undeliverable.from_message(bounce) == Undeliverable(
            B, "echo", sent.id, "n1", f"{B} does not live on n1"
        )

        # -- garbage, and a peer without the key, are cut off ------------------------------
        class Raw(Protocol):
            def __init__(self) -> None:
                self.closed: defer.Deferred[None] = defer.Deferred()

            def connectionLost(self, reason: Any = None) -> None:
                self.closed.callback(None)

        raw = Raw()
        await within(
            connectProtocol(TCP4ClientEndpoint(_reactor(), "127.0.0.1", ports["n1"]), raw)
        )
        assert raw.transport is not None
        raw.transport.write(b"\x00" * 64)
        await within(raw.closed)
        outsider = ManagerSide()
        connecting = defer.ensureDeferred(
            outsider.connect("n1", ports["n1"], b"not the cluster key, no" * 2)
        )
        await within(outsider.lost["n1"])
        assert not outsider.up["n1"].called
        connecting.cancel()
        with pytest.raises(defer.CancelledError):
            await connecting
        assert n1.phase is LinkPhase.UP  # the test's own link is untouched

        # -- a crash: SIGKILL ------------------------------------------------------------
        os.kill(process_a.pid, signal.SIGKILL)
        node, message = await tester.next(ARMOR_DEAD)
        dead = ArmorDead.from_message(message)
        assert (node, message.source) == ("n1", "daemon.n1")
        assert (dead.armor, dead.node, dead.incarnation) == (A, "n1", 1)
        assert "signal 9" in dead.reason, dead.reason

        async def row_gone() -> bool:
            return await client.rdp(armor_template(A)) is None

        await eventually(row_gone, what="the dead ARMOR's row is gone")

        # -- a hang: SIGSTOP -------------------------------------------------------------
        os.kill(process_b.pid, signal.SIGSTOP)
        stopped = _reactor().seconds()
        node, message = await tester.next(ARMOR_DEAD)
        took = _reactor().seconds() - stopped
        dead = ArmorDead.from_message(message)
        assert (node, dead.armor, dead.incarnation) == ("n2", B, 1)
        assert dead.reason.startswith("it hung"), dead.reason
        # Detected after the misses, killed after the grace (SIGTERM waits in a stopped
        # process): a little slack for two cores shared by everything here.
        assert took < (PING_MISSES + 1) * PING_INTERVAL + KILL_GRACE + 3.0, took
        assert not process_b.is_running() or process_b.status() == psutil.STATUS_ZOMBIE

        # -- a corrupted frame on an authenticated link: that link is cut ------------------
        frame = bytearray(encode_frame(Frame.of_message(Message.of("echo", SM, A, 99, "x"))))
        frame[-1] ^= 0x01
        assert n2.transport is not None
        n2.transport.write(bytes(frame))
        reason = await within(tester.lost["n2"])
        assert reason, reason
    finally:
        for link in [*tester.up.values()]:
            if link.called:
                result = link.result
                if isinstance(result, DaemonLink):
                    result.hangup("test over")
        await within(client.close())
        shutil.rmtree(runtime, ignore_errors=True)
