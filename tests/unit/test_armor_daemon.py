"""
Tests for the daemon core (L{lips.armor.Daemon}): installs and their refusals, the
watch over ARMOR processes (a crash, a hang found by missed pings, a lost link, a
process that never connects), uninstalls, the routing of messages between local
ARMORs, to other nodes through the ARMOR table, and back with UNDELIVERABLE for an
ARMOR that does not live here, the bounded queues, and heartbeats.  Driven directly
with explicit C{now}; a few tests run it under the kernel's Driver on a task.Clock.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lips.armor import (
    ARMOR_DEAD,
    HEARTBEAT,
    HEARTBEAT_ACK,
    INSTALL,
    INSTALL_FAILED,
    INSTALLED,
    TABLE,
    UNDELIVERABLE,
    UNINSTALL,
    UNINSTALLED,
    ArmorDead,
    ArmorRow,
    ArmorSpec,
    Daemon,
    DaemonPolicy,
    DaemonTimer,
    Dial,
    Install,
    Installed,
    InstallFailed,
    LinkState,
    LocalPeer,
    Lookup,
    Message,
    NodePeer,
    Ping,
    Register,
    ResidentState,
    Undeliverable,
    Uninstall,
    Uninstalled,
    Unregister,
    application_of,
    armor_id,
    armor_template,
)
from lips.armor._daemon import SpaceCall, SpacePeer
from lips.armor._messages import pack_body
from lips.armor.ftm import (
    FENCED,
    FTM_CHANGED,
    JOIN,
    WELCOME,
    ArmorEntry,
    Fenced,
    Join,
    Welcome,
)
from lips.armor.space import (
    SPACE_REPLY,
    SPACE_REQUEST,
    SYSTEM_SPACE,
    SpaceOp,
    SpaceReply,
    SpaceRequest,
    space_id,
)
from lips.kernel import CancelTimer, Driver, Effect, Kill, Send, Spawn, StartTimer
from lips.tuples import ANY, make_template

SM = armor_id("sm.app")
A = armor_id("echo.app.a")
B = armor_id("echo.app.b")

_ids = iter(range(1, 10**9))


def daemon(node: str = "n1", **policy: Any) -> Daemon:
    """A daemon of C{node} that installs the types echo and manager."""
    return Daemon(
        node,
        policy=DaemonPolicy(**policy),
        types={"echo", "manager"},
        allow=("app.tasks:*",),
        rng=random.Random(7),
    )


def msg(type: str, source: str, destination: str, body: object = None) -> Message:
    return Message.of(type, source, destination, next(_ids), body)


def install(  # noqa: PLR0917
    armor: str = A,
    manager: str = SM,
    incarnation: int = 1,
    type: str = "echo",
    config: dict[str, Any] | None = None,
    source: str | None = None,
    node: str = "n1",
) -> Message:
    body = Install(armor, type, manager, incarnation, config or {})
    return msg(INSTALL, source or manager, f"daemon.{node}", body)


def sends(effects: list[Effect], to: object = None) -> list[Any]:
    """What the effects send (to C{to} only, if given)."""
    return [e.message for e in effects if isinstance(e, Send) and (to is None or e.to == to)]


def of_type(effects: list[Effect], kind: type) -> list[Any]:
    return [e for e in effects if isinstance(e, kind)]


def bodies(effects: list[Effect], type: str, body: Any) -> list[Any]:
    return [
        body.from_message(m) for m in sends(effects) if isinstance(m, Message) and m.type == type
    ]


class Node:
    """A daemon and the effects of its last input; installs ARMORs the whole way."""

    def __init__(self, d: Daemon) -> None:
        self.d = d
        self.specs: dict[int, ArmorSpec] = {}

    def feed(self, method: Any, *args: Any) -> list[Effect]:
        method(*args)
        effects = self.d.drain()
        for e in effects:
            if isinstance(e, Spawn):
                self.specs[e.handle] = e.spec
        return effects

    def run(self, armor: str = A, incarnation: int = 1, now: float = 0.0, **kw: Any) -> int:
        """Install C{armor} from node n2 (its manager there) and bring it to RUNNING."""
        d = self.d
        if d.link_state("n2") is not LinkState.UP:
            self.feed(d.peer_up, "n2", now)
        effects = self.feed(
            d.peer_message, "n2", install(armor, incarnation=incarnation, **kw), now
        )
        (spawn,) = of_type(effects, Spawn)
        self.feed(d.local_hello, armor, incarnation, spawn.spec.token, now)
        self.feed(d.registered, armor, incarnation, True, "", now)
        if d.cached(SM) is None:
            self.feed(d.located, SM, "n2", now)
        assert d.residents[armor_id(armor)].state is ResidentState.RUNNING
        handle: int = spawn.handle
        return handle


class InstallTests(SynchronousTestCase):
    """An install from an authenticated peer, the whole way to `installed`."""

    def test_install_from_a_peer(self) -> None:
        """
        An install spawns the ARMOR's process with a fresh token and a start deadline;
        its hello with that token registers its row; once the row is in, its manager is
        told `installed` (found through the table, over the link to its node) and the
        pings begin.
        """
        d = daemon(start_timeout=5.0, ping_interval=0.5)
        node = Node(d)
        node.feed(d.peer_up, "n2", 0.0)
        effects = node.feed(d.peer_message, "n2", install(config={"x": 1}), 1.0)
        (spawn,) = of_type(effects, Spawn)
        spec = spawn.spec
        self.assertEqual(
            (spec.armor, spec.type, spec.manager, spec.incarnation), (A, "echo", SM, 1)
        )
        self.assertEqual(spec.config, {"x": 1})
        self.assertEqual(len(spec.token), 16)
        self.assertIn(StartTimer((DaemonTimer.START, (A, 1)), 6.0), effects)
        self.assertIs(d.residents[A].state, ResidentState.STARTING)

        self.assertFalse(d.local_hello(A, 1, b"x" * 16, 1.5))
        self.assertFalse(d.local_hello(A, 2, spec.token, 1.5))
        self.assertEqual(d.counters["links.refused"], 2)
        d.drain()
        self.assertTrue(d.local_hello(A, 1, spec.token, 1.5))
        effects = d.drain()
        row = ArmorRow(A, "echo", SM, "n1", 1, "app")
        self.assertEqual(
            effects, [CancelTimer((DaemonTimer.START, (A, 1))), Send(TABLE, Register(row))]
        )
        self.assertIs(d.residents[A].state, ResidentState.REGISTERING)

        effects = node.feed(d.registered, A, 1, True, "", 2.0)
        self.assertEqual(sends(effects, TABLE), [Lookup(SM)])
        self.assertIn(StartTimer((DaemonTimer.PING, (A, 1)), 2.5), effects)
        effects = node.feed(d.located, SM, "n2", 2.1)
        self.assertEqual(bodies(effects, INSTALLED, Installed), [Installed(A, "n1", 1)])
        (installed,) = sends(effects, NodePeer("n2"))
        self.assertEqual((installed.source, installed.destination), ("daemon.n1", SM))
        self.assertEqual(d.counters["armors.installed"], 1)

    def test_refusals(self) -> None:
        """
        Only registered types, allowed targets, installs from the manager they name and
        within the node's bound are installed; each refusal is an install-failed back
        to its sender, over the link it came on.
        """
        d = daemon(max_armors=1)
        node = Node(d)
        node.feed(d.peer_up, "n2", 0.0)
        cases = [
            (install(type="rm-rf"), "no ARMOR type 'rm-rf' is registered on node n1"),
            (install(config={"target": "os:system"}), "os:system is not allowed on node n1"),
            (install(config={"target": 3}), "the target option is"),
            (install(source="sm.other"), "an install comes from the manager it names"),
            (install(armor="daemon.n5"), "a daemon is not installed by a daemon"),
        ]
        for message, reason in cases:
            effects = node.feed(d.peer_message, "n2", message, 1.0)
            self.assertEqual(of_type(effects, Spawn), [])
            (failed,) = bodies(effects, INSTALL_FAILED, InstallFailed)
            self.assertIn(reason, failed.reason)
            self.assertEqual(failed.node, "n1")
            (reply,) = sends(effects, NodePeer("n2"))
            self.assertEqual(reply.destination, message.source)
        self.assertEqual(d.counters["installs.refused"], len(cases))
        effects = node.feed(d.peer_message, "n2", install(config={"target": "app.tasks:run"}), 2)
        self.assertEqual(len(of_type(effects, Spawn)), 1)
        effects = node.feed(d.peer_message, "n2", install(armor=B), 3.0)
        (failed,) = bodies(effects, INSTALL_FAILED, InstallFailed)
        self.assertIn("runs 1 ARMOR processes, its most", failed.reason)

    def test_malformed_install(self) -> None:
        """An install whose body is no Install is refused and counted; nothing runs."""
        d = daemon()
        node = Node(d)
        node.feed(d.peer_up, "n2", 0.0)
        effects = node.feed(d.peer_message, "n2", msg(INSTALL, SM, "daemon.n1", {"armor": 1}), 1)
        self.assertEqual(of_type(effects, Spawn), [])
        self.assertEqual(d.counters["messages.refused"], 1)

    def test_incarnations(self) -> None:
        """
        The same install again says `installed` again; an older incarnation is refused;
        a newer one replaces the running one, whose end then tells its manager nothing.
        """
        d = daemon()
        node = Node(d)
        handle = node.run(A, 2)
        effects = node.feed(d.peer_message, "n2", install(A, incarnation=2), 5.0)
        self.assertEqual(bodies(effects, INSTALLED, Installed), [Installed(A, "n1", 2)])
        effects = node.feed(d.peer_message, "n2", install(A, incarnation=1), 5.0)
        (failed,) = bodies(effects, INSTALL_FAILED, InstallFailed)
        self.assertEqual(failed.incarnation, 1)
        self.assertIn("its incarnation 2 runs here", failed.reason)
        effects = node.feed(d.peer_message, "n2", install(A, incarnation=3), 6.0)
        self.assertIn(Kill(handle), effects)
        (spawn,) = of_type(effects, Spawn)
        self.assertEqual(spawn.spec.incarnation, 3)
        self.assertEqual(d.residents[A].incarnation, 3)
        effects = node.feed(d.ended, handle, "signal 15 (SIGTERM)", 6.5)
        self.assertEqual(
            sends(effects, TABLE), [Unregister(ArmorRow(A, "echo", SM, "n1", 2, "app"))]
        )
        self.assertEqual(bodies(effects, ARMOR_DEAD, ArmorDead), [])
        self.assertIs(d.residents[A].state, ResidentState.STARTING)

    def test_a_local_manager_installs(self) -> None:
        """A local ARMOR (a manager) installs over its local link, like a peer's."""
        d = daemon()
        node = Node(d)
        node.run(SM, 1, manager="ftm", type="manager")
        effects = node.feed(d.local_message, SM, 1, install(A), 3.0)
        (spawn,) = of_type(effects, Spawn)
        node.feed(d.local_hello, A, 1, spawn.spec.token, 3.1)
        effects = node.feed(d.registered, A, 1, True, "", 3.2)
        (installed,) = sends(effects, LocalPeer(SM, 1))
        self.assertEqual(Installed.from_message(installed), Installed(A, "n1", 1))

    def test_the_table_refuses(self) -> None:
        """A row the table refuses (a newer incarnation there) fails the install."""
        d = daemon(kill_grace=1.0)
        node = Node(d)
        node.feed(d.peer_up, "n2", 0.0)
        (spawn,) = of_type(node.feed(d.peer_message, "n2", install(), 0.0), Spawn)
        node.feed(d.local_hello, A, 1, spawn.spec.token, 0.1)
        effects = node.feed(d.registered, A, 1, False, "incarnation 2 runs on n3", 0.2)
        self.assertIn(Kill(spawn.handle), effects)
        node.feed(d.ended, spawn.handle, "exit code 0", 0.3)
        effects = node.feed(d.located, SM, "n2", 0.3)
        (failed,) = bodies(effects, INSTALL_FAILED, InstallFailed)
        self.assertIn("the ARMOR table refused it: incarnation 2 runs on n3", failed.reason)

    def test_a_row_written_after_the_end_goes_again(self) -> None:
        """A registration that succeeds after its process ended takes the row out again."""
        d = daemon()
        node = Node(d)
        node.feed(d.peer_up, "n2", 0.0)
        (spawn,) = of_type(node.feed(d.peer_message, "n2", install(), 0.0), Spawn)
        node.feed(d.local_hello, A, 1, spawn.spec.token, 0.1)
        node.feed(d.ended, spawn.handle, "signal 9 (SIGKILL)", 0.2)
        effects = node.feed(d.registered, A, 1, True, "", 0.3)
        self.assertEqual(
            sends(effects, TABLE), [Unregister(ArmorRow(A, "echo", SM, "n1", 1, "app"))]
        )


class WatchTests(SynchronousTestCase):
    """An exit is a crash, missed pings a hang; the manager is told with the incarnation."""

    def setUp(self) -> None:
        self.d = daemon(ping_interval=1.0, ping_misses=3, kill_grace=2.0, start_timeout=5.0)
        self.node = Node(self.d)

    def test_crash(self) -> None:
        """A running ARMOR's exit is reported armor-dead, its row taken out."""
        handle = self.node.run(A, 4)
        effects = self.node.feed(self.d.ended, handle, "signal 9 (SIGKILL)", 9.0)
        self.assertIn(Send(TABLE, Unregister(ArmorRow(A, "echo", SM, "n1", 4, "app"))), effects)
        self.assertIn(CancelTimer((DaemonTimer.PING, (A, 4))), effects)
        (dead,) = bodies(effects, ARMOR_DEAD, ArmorDead)
        self.assertEqual(dead, ArmorDead(A, "n1", 4, "it exited: signal 9 (SIGKILL)"))
        self.assertEqual(self.d.residents, {})
        self.assertEqual(self.d.counters["armors.dead"], 1)
        self.assertEqual(self.node.feed(self.d.ended, handle, "again", 9.5), [])

    def test_hang(self) -> None:
        """
        Pings go every interval; after ping_misses unanswered, the process is killed
        (SIGTERM, then a second Kill after kill_grace: SIGKILL), and its end is
        reported armor-dead as hung.  An answered ping keeps it alive.
        """
        d, node = self.d, self.node
        handle = node.run(A, 1, now=0.0)
        key = (DaemonTimer.PING, (A, 1))
        effects = node.feed(d.timer, key, 1.0)
        self.assertEqual(effects, [Send(LocalPeer(A, 1), Ping(1)), StartTimer(key, 2.0)])
        node.feed(d.local_pong, A, 1, 1, 1.1)
        for t in (2.0, 3.0, 4.0):
            effects = node.feed(d.timer, key, t)
            self.assertEqual(sends(effects, LocalPeer(A, 1)), [Ping(int(t))])
        effects = node.feed(d.timer, key, 5.0)
        self.assertEqual(effects, [Kill(handle), StartTimer((DaemonTimer.KILL, handle), 7.0)])
        self.assertEqual(d.counters["armors.hung"], 1)
        self.assertEqual(node.feed(d.timer, (DaemonTimer.KILL, handle), 7.0), [Kill(handle)])
        effects = node.feed(d.ended, handle, "signal 9 (SIGKILL)", 7.1)
        (dead,) = bodies(effects, ARMOR_DEAD, ArmorDead)
        self.assertEqual(dead.reason, "it hung: 3 pings unanswered for 3 s")

    def test_a_late_pong_counts(self) -> None:
        """A pong for an earlier ping still shows life: only the pings after it count."""
        d, node = self.d, self.node
        node.run(A, 1)
        key = (DaemonTimer.PING, (A, 1))
        for t in (1.0, 2.0, 3.0):
            node.feed(d.timer, key, t)
        node.feed(d.local_pong, A, 1, 2, 3.5)
        self.assertEqual(of_type(node.feed(d.timer, key, 4.0), Kill), [])
        self.assertEqual(of_type(node.feed(d.timer, key, 5.0), Kill), [])
        self.assertEqual(len(of_type(node.feed(d.timer, key, 6.0), Kill)), 1)

    def test_never_connects(self) -> None:
        """A process that does not connect within start_timeout fails its install."""
        d, node = self.d, self.node
        node.feed(d.peer_up, "n2", 0.0)
        (spawn,) = of_type(node.feed(d.peer_message, "n2", install(), 0.0), Spawn)
        effects = node.feed(d.timer, (DaemonTimer.START, (A, 1)), 5.0)
        self.assertIn(Kill(spawn.handle), effects)
        node.feed(d.located, SM, "n2", 5.0)
        effects = node.feed(d.ended, spawn.handle, "signal 15 (SIGTERM)", 5.5)
        (failed,) = bodies(effects, INSTALL_FAILED, InstallFailed)
        self.assertEqual(failed.reason, "it did not connect within 5 s")
        self.assertIn(CancelTimer((DaemonTimer.KILL, spawn.handle)), effects)

    def test_exits_before_connecting(self) -> None:
        """A process that exits before its hello fails its install, with how it exited."""
        d, node = self.d, self.node
        node.feed(d.peer_up, "n2", 0.0)
        node.feed(d.located, SM, "n2", 0.0)
        (spawn,) = of_type(node.feed(d.peer_message, "n2", install(), 0.0), Spawn)
        effects = node.feed(d.ended, spawn.handle, "exit code 3", 0.5)
        (failed,) = bodies(effects, INSTALL_FAILED, InstallFailed)
        self.assertEqual(failed.reason, "it exited before it connected: exit code 3")

    def test_cannot_be_made(self) -> None:
        """A process whose ARMOR its type refuses fails the install with the reason it gave."""
        d, node = self.d, self.node
        node.feed(d.peer_up, "n2", 0.0)
        node.feed(d.located, SM, "n2", 0.0)
        (spawn,) = of_type(node.feed(d.peer_message, "n2", install(), 0.0), Spawn)
        node.feed(d.local_hello, A, 1, spawn.spec.token, 0.1)
        node.feed(d.local_failed, A, 1, "MessageError: no option 'x'", 0.1)
        node.feed(d.local_lost, A, 1, 0.1)
        node.feed(d.registered, A, 1, True, "", 0.2)
        effects = node.feed(d.ended, spawn.handle, "exit code 3", 0.3)
        (failed,) = bodies(effects, INSTALL_FAILED, InstallFailed)
        self.assertEqual(failed.reason, "it could not be made: MessageError: no option 'x'")
        self.assertEqual(bodies(effects, INSTALLED, Installed), [])

    def test_lost_link(self) -> None:
        """A running ARMOR whose local link is lost is killed and reported dead."""
        d, node = self.d, self.node
        handle = node.run(A, 1)
        self.assertIn(Kill(handle), node.feed(d.local_lost, A, 1, 3.0))
        (dead,) = bodies(node.feed(d.ended, handle, "exit code 0", 3.1), ARMOR_DEAD, ArmorDead)
        self.assertEqual(dead.reason, "it lost its link to the daemon, and ended: exit code 0")

    def test_uninstall(self) -> None:
        """
        Its manager's uninstall kills it; its end takes its row out and says uninstalled.
        An uninstall of an ARMOR not here is done at once; one from another ARMOR is
        refused.
        """
        d, node = self.d, self.node
        handle = node.run(A, 1)
        effects = node.feed(
            d.peer_message, "n2", msg(UNINSTALL, "sm.other", "daemon.n1", Uninstall(A)), 1
        )
        self.assertEqual(of_type(effects, Kill), [])
        self.assertEqual(d.counters["messages.refused"], 1)
        effects = node.feed(d.peer_message, "n2", msg(UNINSTALL, SM, "daemon.n1", Uninstall(A)), 2)
        self.assertIn(Kill(handle), effects)
        effects = node.feed(d.ended, handle, "signal 15 (SIGTERM)", 2.5)
        self.assertEqual(bodies(effects, UNINSTALLED, Uninstalled), [Uninstalled(A, "n1")])
        self.assertEqual(len(sends(effects, TABLE)), 1)
        effects = node.feed(d.peer_message, "n2", msg(UNINSTALL, SM, "daemon.n1", Uninstall(B)), 3)
        self.assertEqual(bodies(effects, UNINSTALLED, Uninstalled), [Uninstalled(B, "n1")])

    def test_stop(self) -> None:
        """When lipsd stops, every ARMOR is killed and reported dead; no install is taken."""
        d, node = self.d, self.node
        handle = node.run(A, 1)
        self.assertIn(Kill(handle), node.feed(d.stop, 3.0))
        (dead,) = bodies(node.feed(d.ended, handle, "signal 15", 3.1), ARMOR_DEAD, ArmorDead)
        self.assertEqual(dead.reason, "its daemon (n1) stopped")
        (failed,) = bodies(
            node.feed(d.peer_message, "n2", install(B), 4), INSTALL_FAILED, InstallFailed
        )
        self.assertIn("stopping", failed.reason)

    def test_bad_timer(self) -> None:
        """A key the daemon never starts is refused."""
        self.assertRaises(ValueError, self.d.timer, (object(), 1), 0.0)


class RoutingTests(SynchronousTestCase):
    """Messages go where their destination lives, or come back UNDELIVERABLE."""

    def setUp(self) -> None:
        self.d = daemon(queue_limit=2, max_lookups=2, lookup_timeout=3.0, redial_delay=1.0)
        self.node = Node(self.d)
        self.node.run(A, 1)
        self.node.run(B, 1)

    def test_local_to_local(self) -> None:
        """A message between two ARMORs of this node goes straight from one link to the other."""
        m = msg("hello", A, B, "hi")
        self.assertEqual(
            self.node.feed(self.d.local_message, A, 1, m, 1.0), [Send(LocalPeer(B, 1), m)]
        )
        self.assertEqual(self.d.counters["messages.delivered"], 1)

    def test_to_another_node(self) -> None:
        """
        A message for an ARMOR elsewhere: the table is asked, the node dialed, the message
        forwarded once the link is up; the next one goes at once from the cache.
        """
        d, node = self.d, self.node
        c = armor_id("echo.app.c")
        m1, m2 = msg("hello", A, c), msg("hello", A, c)
        effects = node.feed(d.local_message, A, 1, m1, 1.0)
        self.assertEqual(
            effects, [Send(TABLE, Lookup(c)), StartTimer((DaemonTimer.LOOKUP, c), 4.0)]
        )
        effects = node.feed(d.located, c, "n3", 1.1)
        self.assertEqual(
            effects, [CancelTimer((DaemonTimer.LOOKUP, c)), Send(NodePeer("n3"), Dial())]
        )
        self.assertEqual(node.feed(d.peer_up, "n3", 1.2), [Send(NodePeer("n3"), m1)])
        hits = d.counters["cache.hits"]
        self.assertEqual(node.feed(d.local_message, A, 1, m2, 1.3), [Send(NodePeer("n3"), m2)])
        self.assertEqual(d.counters["cache.hits"], hits + 1)
        self.assertEqual(d.cached(c), "n3")

    def test_daemons_need_no_lookup(self) -> None:
        """A daemon's id names its node."""
        m = msg(HEARTBEAT, A, "daemon.n4")
        self.assertEqual(
            self.node.feed(self.d.local_message, A, 1, m, 1.0), [Send(NodePeer("n4"), Dial())]
        )

    def test_unknown_destination(self) -> None:
        """A destination the table does not know comes back UNDELIVERABLE to its source."""
        d, node = self.d, self.node
        c = armor_id("echo.app.c")
        m = msg("hello", A, c)
        node.feed(d.local_message, A, 1, m, 1.0)
        effects = node.feed(d.located, c, None, 1.1)
        (bounce,) = sends(effects, LocalPeer(A, 1))
        self.assertEqual(bounce.type, UNDELIVERABLE)
        self.assertEqual(
            Undeliverable.from_message(bounce),
            Undeliverable(c, "hello", m.id, "n1", f"the ARMOR table has no {c}"),
        )
        self.assertEqual(d.counters["messages.unknown"], 1)

    def test_table_says_here_but_it_is_not(self) -> None:
        """A row naming this node for an ARMOR that is not here any more: bounced."""
        d, node = self.d, self.node
        c = armor_id("echo.app.c")
        node.feed(d.local_message, A, 1, msg("hello", A, c), 1.0)
        (bounce,) = sends(node.feed(d.located, c, "n1", 1.1), LocalPeer(A, 1))
        self.assertIn("does not live on n1", Undeliverable.from_message(bounce).reason)
        self.assertIsNone(d.cached(c))

    def test_absent_destination_from_a_peer(self) -> None:
        """
        A peer's message for an ARMOR that does not live here is answered UNDELIVERABLE
        over that peer's link and counted, by node: the sign of a non-fail-silent node.
        """
        d, node = self.d, self.node
        m = msg("hello", "echo.app.x", "echo.app.gone")
        effects = node.feed(d.peer_message, "n2", m, 1.0)
        (bounce,) = sends(effects, NodePeer("n2"))
        self.assertEqual((bounce.type, bounce.destination), (UNDELIVERABLE, m.source))
        self.assertEqual(
            Undeliverable.from_message(bounce).reason, "echo.app.gone does not live on n1"
        )
        self.assertEqual(d.counters["messages.absent"], 1)
        self.assertEqual(d.absent, {"n2": 1})
        bounced = msg(
            UNDELIVERABLE, "daemon.n2", "echo.app.gone", Undeliverable(A, "x", 1, "n2", "r")
        )
        self.assertEqual(sends(node.feed(d.peer_message, "n2", bounced, 1.1)), [])

    def test_bounce_drops_the_cache_entry(self) -> None:
        """An UNDELIVERABLE from the node the cache named drops the entry, reaches the source."""
        d, node = self.d, self.node
        c = armor_id("echo.app.c")
        m = msg("hello", A, c)
        node.feed(d.local_message, A, 1, m, 1.0)
        node.feed(d.located, c, "n2", 1.1)
        self.assertEqual(d.cached(c), "n2")
        bounce = msg(UNDELIVERABLE, "daemon.n2", A, Undeliverable(c, "hello", m.id, "n2", "gone"))
        effects = node.feed(d.peer_message, "n2", bounce, 1.2)
        self.assertEqual(effects, [Send(LocalPeer(A, 1), bounce)])
        self.assertIsNone(d.cached(c))
        self.assertEqual(d.counters["cache.dropped"], 1)

    def test_a_node_going_down_drops_its_cache_entries(self) -> None:
        """
        What the cache placed on a node whose link went down is looked up afresh: an
        ARMOR of a node that died runs elsewhere once its manager reinstalled it.
        """
        d, node = self.d, self.node
        c, e = armor_id("echo.app.c"), armor_id("echo.app.e")
        node.feed(d.local_message, A, 1, msg("hello", A, c), 1.0)
        node.feed(d.located, c, "n2", 1.1)
        node.feed(d.local_message, A, 1, msg("hello", A, e), 1.2)
        node.feed(d.located, e, "n3", 1.3)
        self.assertEqual((d.cached(c), d.cached(e)), ("n2", "n3"))
        node.feed(d.peer_down, "n2", "connection refused", 2.0)
        self.assertEqual((d.cached(c), d.cached(e)), (None, "n3"))
        effects = node.feed(d.local_message, A, 1, msg("hello", A, c), 2.1)
        self.assertIn(Lookup(c), [e.message for e in effects if isinstance(e, Send)])

    def test_spoofing(self) -> None:
        """A link speaks only for its own: local ARMORs as themselves, peers not as ours."""
        d, node = self.d, self.node
        self.assertEqual(sends(node.feed(d.local_message, A, 1, msg("hello", B, A), 1.0)), [])
        self.assertEqual(sends(node.feed(d.peer_message, "n2", msg("hello", B, A), 1.0)), [])
        beat = msg(HEARTBEAT, "daemon.n9", "daemon.n1")
        self.assertEqual(sends(node.feed(d.peer_message, "n2", beat, 1.0)), [])
        self.assertEqual(d.counters["messages.spoofed"], 3)
        self.assertEqual(node.feed(d.local_message, A, 2, msg("hello", A, B), 1.0), [])
        self.assertEqual(d.counters["messages.stale"], 1)

    def test_heartbeat(self) -> None:
        """
        A heartbeat is answered at once over the link it came on: its body with the
        daemon's node and boot added (the HeartbeatAck lips.armor.ftm reads); a body
        that is no map comes back as it was.
        """
        d, node = self.d, self.node
        beat = msg(HEARTBEAT, "heartbeat.1", "daemon.n1", {"seq": 5})
        (ack,) = sends(node.feed(d.peer_message, "n2", beat, 1.0), NodePeer("n2"))
        self.assertEqual((ack.type, ack.destination), (HEARTBEAT_ACK, "heartbeat.1"))
        self.assertEqual(ack.value(), {"seq": 5, "node": "n1", "boot": 1})
        self.assertEqual(d.counters["heartbeats.answered"], 1)
        plain = msg(HEARTBEAT, "heartbeat.1", "daemon.n1", 7)
        (ack,) = sends(node.feed(d.peer_message, "n2", plain, 1.0), NodePeer("n2"))
        self.assertEqual(ack.value(), 7)

    def test_unhandled(self) -> None:
        """A type the daemon does not take is counted and dropped."""
        self.assertEqual(
            sends(self.node.feed(self.d.peer_message, "n2", msg("frob", SM, "daemon.n1"), 1)), []
        )
        self.assertEqual(self.d.counters["messages.unhandled"], 1)

    def test_waiting_for_a_starting_armor(self) -> None:
        """Messages for an ARMOR that is starting wait for it (bounded), then go to it."""
        d, node = self.d, self.node
        c = armor_id("echo.app.c")
        (spawn,) = of_type(node.feed(d.peer_message, "n2", install(c), 1.0), Spawn)
        m1, m2, m3 = (msg("hello", A, c) for _ in range(3))
        for m in (m1, m2):
            self.assertEqual(node.feed(d.local_message, A, 1, m, 1.1), [])
        (bounce,) = sends(node.feed(d.local_message, A, 1, m3, 1.1), LocalPeer(A, 1))
        self.assertIn("wait for echo.app.c to start", Undeliverable.from_message(bounce).reason)
        node.feed(d.local_hello, c, 1, spawn.spec.token, 1.2)
        effects = node.feed(d.registered, c, 1, True, "", 1.3)
        self.assertEqual(sends(effects, LocalPeer(c, 1)), [m1, m2])

    def test_bounded_lookups(self) -> None:
        """At most queue_limit messages wait per lookup, at most max_lookups lookups at once."""
        d, node = self.d, self.node
        lookups = d.counters["lookups"]
        c, e, f = (armor_id(f"echo.app.{x}") for x in "cef")
        for _ in range(2):
            node.feed(d.local_message, A, 1, msg("hello", A, c), 1.0)
        self.assertEqual(
            len(sends(node.feed(d.local_message, A, 1, msg("hello", A, c), 1.0), LocalPeer(A, 1))),
            1,
        )
        node.feed(d.local_message, A, 1, msg("hello", A, e), 1.0)
        (bounce,) = sends(
            node.feed(d.local_message, A, 1, msg("hello", A, f), 1.0), LocalPeer(A, 1)
        )
        self.assertIn("too many ARMOR table lookups", Undeliverable.from_message(bounce).reason)
        self.assertEqual(d.counters["lookups"], lookups + 2)
        self.assertEqual(d.counters["messages.dropped"], 2)

    def test_lookup_timeout(self) -> None:
        """A lookup the table does not answer in time bounces what waits for it."""
        d, node = self.d, self.node
        c = armor_id("echo.app.c")
        node.feed(d.local_message, A, 1, msg("hello", A, c), 1.0)
        (bounce,) = sends(node.feed(d.timer, (DaemonTimer.LOOKUP, c), 4.0), LocalPeer(A, 1))
        self.assertIn("did not say within 3 s", Undeliverable.from_message(bounce).reason)
        self.assertEqual(node.feed(d.located, c, "n3", 5.0), [])
        self.assertEqual(d.cached(c), "n3")

    def test_node_unreachable(self) -> None:
        """
        A dial that fails bounces what waited for the node; the next message dials again
        only after redial_delay (a REDIAL timer), and a link that comes up takes the queue.
        """
        d, node = self.d, self.node
        m1 = msg(HEARTBEAT, A, "daemon.n4")
        node.feed(d.local_message, A, 1, m1, 1.0)
        self.assertIs(d.link_state("n4"), LinkState.DIALING)
        (bounce,) = sends(node.feed(d.peer_down, "n4", "connection refused", 1.5), LocalPeer(A, 1))
        self.assertIn(
            "node n4 is unreachable: connection refused", Undeliverable.from_message(bounce).reason
        )
        m2 = msg(HEARTBEAT, A, "daemon.n4")
        effects = node.feed(d.local_message, A, 1, m2, 2.0)
        self.assertEqual(effects, [StartTimer((DaemonTimer.REDIAL, "n4"), 2.5)])
        self.assertEqual(
            node.feed(d.timer, (DaemonTimer.REDIAL, "n4"), 2.5), [Send(NodePeer("n4"), Dial())]
        )
        self.assertEqual(node.feed(d.peer_up, "n4", 2.6), [Send(NodePeer("n4"), m2)])

    def test_bounded_link_queue(self) -> None:
        """At most queue_limit messages wait for a node."""
        d, node = self.d, self.node
        for _ in range(2):
            node.feed(d.local_message, A, 1, msg(HEARTBEAT, A, "daemon.n4"), 1.0)
        (bounce,) = sends(
            node.feed(d.local_message, A, 1, msg(HEARTBEAT, A, "daemon.n4"), 1.0), LocalPeer(A, 1)
        )
        self.assertIn(
            "too many messages wait for node n4", Undeliverable.from_message(bounce).reason
        )

    def test_cache_is_bounded(self) -> None:
        """The cache keeps the most recently used cache_size locations."""
        d = daemon(cache_size=2)
        for x in "cde":
            d.located(armor_id(f"echo.app.{x}"), "n3", 0.0)
        self.assertIsNone(d.cached("echo.app.c"))
        self.assertEqual(d.cached("echo.app.e"), "n3")

    def test_messages_to_a_stopping_armor_bounce(self) -> None:
        """A message for an ARMOR being stopped comes back to its source."""
        d, node = self.d, self.node
        node.feed(d.peer_message, "n2", msg(UNINSTALL, SM, "daemon.n1", Uninstall(B)), 1.0)
        (bounce,) = sends(
            node.feed(d.local_message, A, 1, msg("hello", A, B), 1.1), LocalPeer(A, 1)
        )
        self.assertIn("being stopped", Undeliverable.from_message(bounce).reason)


class TableTests(SynchronousTestCase):
    """The ARMOR table's rows."""

    def test_rows(self) -> None:
        """A row is the tuple (armor, id, type, manager, node, incarnation, application)."""
        row = ArmorRow(A, "echo", SM, "n1", 2, "app")
        self.assertEqual(row.as_tuple(), ("armor", A, "echo", SM, "n1", 2, "app"))
        self.assertEqual(ArmorRow.from_tuple(row.as_tuple()), row)
        self.assertEqual(armor_template(A)[:2], ("armor", A))
        for bad in [
            ("armor", A),
            ("node", A, "echo", SM, "n1", 2, None),
            ("armor", A, "echo", SM, "N 1", 2, None),
            ("armor", A, "echo", SM, "n1", 2, 3),
        ]:
            self.assertRaises(ValueError, ArmorRow.from_tuple, bad)

    def test_application(self) -> None:
        """The application is a surrogate manager's label, or its manager's scope."""
        self.assertEqual(application_of(armor_id("sm.job7"), armor_id("ftm")), "job7")
        self.assertEqual(application_of(armor_id("exec.job7.t1"), armor_id("sm.job7")), "job7")
        self.assertEqual(application_of(armor_id("heartbeat.1"), armor_id("ftm")), None)


class DriverTests(SynchronousTestCase):
    """The core on the kernel's Driver and a task.Clock: a hang found on the reactor."""

    def test_hang_on_the_clock(self) -> None:
        """
        Under a Driver, pings go every interval on the clock, a process that never answers
        is killed after ping_misses intervals and SIGKILLed after kill_grace, and nothing is
        left scheduled once it ended.
        """
        clock = Clock()
        d = daemon(ping_interval=0.5, ping_misses=2, kill_grace=1.0)
        sent: list[Send[Any]] = []
        kills: list[Kill] = []
        spawned: list[Spawn[ArmorSpec]] = []
        driver = Driver(d, clock, {Send: sent.append, Spawn: spawned.append, Kill: kills.append})
        driver.input(d.peer_up, "n2")
        driver.input(d.located, SM, "n2")
        driver.input(d.peer_message, "n2", install())
        (spawn,) = spawned
        self.assertTrue(driver.input(d.local_hello, A, 1, spawn.spec.token))
        driver.input(d.registered, A, 1, True, "")
        clock.advance(0.5)
        clock.advance(0.5)
        self.assertEqual([s.message for s in sent if s.to == LocalPeer(A, 1)], [Ping(1), Ping(2)])
        self.assertEqual(kills, [])
        clock.advance(0.5)
        self.assertEqual(kills, [Kill(spawn.handle)])
        clock.advance(1.0)
        self.assertEqual(kills, [Kill(spawn.handle)] * 2)
        driver.input(d.ended, spawn.handle, "signal 9 (SIGKILL)")
        self.assertEqual(clock.getDelayedCalls(), [])
        dead = [
            s.message
            for s in sent
            if isinstance(s.message, Message) and s.message.type == ARMOR_DEAD
        ]
        self.assertEqual(len(dead), 1)

    def test_emits(self) -> None:
        """The daemon declares what it emits; the driver needs handlers for all but Log."""
        self.assertEqual(
            {t.__name__ for t in Daemon.emits},
            {"Send", "Spawn", "Kill", "StartTimer", "CancelTimer", "Log"},
        )
        self.assertRaises(TypeError, Driver, daemon(), Clock(), {Send: print})


# -- the FTM's side of the protocol ---------------------------------------------------------

FTM1 = armor_id("ftm")
FTM2 = armor_id("ftm.b-e1-7")


def fenced(ftm: str, epoch: int, type: str, body: object, node: str = "n1") -> Message:
    """C{ftm}'s message of C{type} in C{epoch}, in its envelope, for C{daemon.<node>}."""
    return msg(FENCED, ftm, f"daemon.{node}", Fenced(epoch, type, pack_body(body)))


def calls(effects: list[Effect]) -> list[tuple[SpacePeer, SpaceCall]]:
    """The space requests the effects carry to the host."""
    return [
        (e.to, e.message) for e in effects if isinstance(e, Send) and isinstance(e.to, SpacePeer)
    ]


def entry(armor: str, node: str = "n1", incarnation: int = 1) -> tuple[Any, ...]:
    return ArmorEntry(armor, "echo", SM, node, "app", incarnation).to_tuple()


class FenceTests(SynchronousTestCase):
    """The epoch fence: FTM commands come fenced, older epochs are refused."""

    def setUp(self) -> None:
        self.d = daemon()
        self.node = Node(self.d)
        self.node.feed(self.d.peer_up, "n2", 0.0)

    def test_fenced_install_checks_the_intent(self) -> None:
        """
        A fenced install is unwrapped; under an FTM the FTM's ARMOR table must place
        that incarnation here (an rdp of its ftm-armor entry) before it is spawned; one
        it does not place here is refused as stale.
        """
        d, node = self.d, self.node
        body = Install(A, "echo", FTM1, 1, {})
        effects = node.feed(d.peer_message, "n2", fenced(FTM1, 1, INSTALL, body), 1.0)
        self.assertEqual((d.fence.epoch, d.fence.ftm), (1, FTM1))
        self.assertEqual(of_type(effects, Spawn), [])
        ((peer, call),) = calls(effects)
        self.assertEqual(peer, SpacePeer("system"))
        (op,) = call.request.ops
        self.assertEqual(op.kind, "rdp")
        self.assertEqual(op.fields[:2], (ArmorEntry.TAG, A))
        effects = node.feed(d.space_answered, call.call, SpaceReply(call.call, True), 1.1)
        self.assertEqual(len(of_type(effects, Spawn)), 1)
        # A second incarnation the table does not place here: refused, stale.
        body = Install(A, "echo", FTM1, 2, {})
        effects = node.feed(d.peer_message, "n2", fenced(FTM1, 1, INSTALL, body), 2.0)
        ((_, call),) = calls(effects)
        effects = node.feed(d.space_answered, call.call, SpaceReply(call.call, False, 0), 2.1)
        (failed,) = bodies(effects, INSTALL_FAILED, InstallFailed)
        self.assertEqual((failed.armor, failed.incarnation), (A, 2))
        self.assertEqual(d.counters["installs.stale"], 1)
        self.assertEqual(of_type(effects, Spawn), [])

    def test_older_epochs_are_refused(self) -> None:
        """
        Once epoch 2 is known, a command of epoch 1 (or of epoch 2 from another FTM) is
        refused and counted; so is an FTM's unfenced command, but not an FTM's
        uninstall of itself.
        """
        d, node = self.d, self.node
        node.feed(d.peer_message, "n2", fenced(FTM2, 2, FTM_CHANGED, {"ftm": FTM2, "epoch": 2}), 1)
        self.assertEqual((d.fence.epoch, d.fence.ftm), (2, FTM2))
        body = Install(A, "echo", FTM1, 1, {})
        effects = node.feed(d.peer_message, "n2", fenced(FTM1, 1, INSTALL, body), 2)
        effects += node.feed(d.peer_message, "n2", fenced(FTM1, 2, INSTALL, body), 2)
        self.assertEqual(d.counters["commands.fenced"], 2)
        self.assertEqual(sends(effects), [])
        effects = node.feed(d.peer_message, "n2", install(A, manager=FTM1), 3)
        self.assertEqual(d.counters["commands.unfenced"], 1)
        self.assertEqual(sends(effects), [])
        node.feed(d.peer_message, "n2", msg(UNINSTALL, FTM1, "daemon.n1", Uninstall(FTM1)), 4)
        self.assertEqual(d.counters["commands.unfenced"], 1)

    def test_reports_go_to_the_newest_ftm(self) -> None:
        """
        An ARMOR the old FTM managed is reported to the FTM of a newer epoch; the new
        FTM itself is reported to nobody.
        """
        d, node = self.d, self.node
        handle = node.run(A, manager=FTM1)
        backup = node.run(FTM2, manager=FTM1)
        changed = fenced(FTM2, 2, FTM_CHANGED, {"ftm": FTM2, "epoch": 2})
        node.feed(d.local_message, FTM2, 1, changed, 1)
        self.assertEqual(d.counters["ftm.changes"], 1)
        self.assertEqual(d.residents[A].manager, FTM2)
        self.assertIsNone(d.residents[FTM2].manager)
        effects = node.feed(d.ended, handle, "signal 9 (SIGKILL)", 2)
        (dead,) = sends(effects, LocalPeer(FTM2, 1))
        self.assertEqual(dead.type, ARMOR_DEAD)
        effects = node.feed(d.ended, backup, "signal 9 (SIGKILL)", 3)
        self.assertEqual(bodies(effects, ARMOR_DEAD, ArmorDead), [])

    def test_a_newer_ftm_uninstalls_the_old_ftms_armors(self) -> None:
        """
        The FTM of the current epoch may uninstall any ARMOR here (the old FTM, its
        heartbeat): its uninstall is told to the ARMOR's (redirected) manager.
        """
        d, node = self.d, self.node
        handle = node.run(A, manager=FTM1)
        node.feed(d.located, FTM2, "n3", 0.5)
        node.feed(d.peer_up, "n3", 0.5)
        effects = node.feed(d.peer_message, "n2", fenced(FTM2, 2, UNINSTALL, Uninstall(A)), 1)
        self.assertIn(Kill(handle), effects)
        effects = node.feed(d.ended, handle, "signal 15 (SIGTERM)", 1.5)
        (done,) = [m for m in sends(effects, NodePeer("n3")) if isinstance(m, Message)]
        self.assertEqual(done.type, UNINSTALLED)
        self.assertEqual(done.destination, FTM2)


class JoinTests(SynchronousTestCase):
    """Joining the FTM the space names, until welcomed, and again after silence."""

    def setUp(self) -> None:
        self.d = daemon(join_interval=1.0, rejoin_after=3.0, sweep_interval=2.0)
        self.node = Node(self.d)

    def join_round(self, now: float, epochs: tuple[Any, ...]) -> list[Message]:
        """Answer the epoch scan of this round; the JOINs it sent."""
        d, node = self.d, self.node
        effects = node.feed(d.timer, (DaemonTimer.JOIN, "n1"), now)
        if not calls(effects):
            return []
        ((_, call),) = calls(effects)
        self.assertEqual(call.request.ops[0].kind, "rdp")
        reply = SpaceReply(call.call, bool(epochs), -1, epochs[:1])
        effects = node.feed(d.space_answered, call.call, reply, now)
        return [m for m in self.d._awaiting.get(FTM1, ()) if m.type == JOIN] + [
            m for m in sends(effects) if isinstance(m, Message) and m.type == JOIN
        ]

    def test_join_until_welcomed(self) -> None:
        """
        Started, it reads the epoch and sends JOIN (node, boot) to its holder every
        join_interval; a fenced welcome for this boot stops it, until rejoin_after
        passes without a heartbeat.
        """
        d, node = self.d, self.node
        effects = node.feed(d.start, 0.0)
        self.assertIn(StartTimer((DaemonTimer.JOIN, "n1"), 1.0), effects)
        self.assertIn(StartTimer((DaemonTimer.SWEEP, "n1"), 2.0), effects)
        self.assertEqual(len(calls(effects)), 1)
        self.assertEqual(self.join_round(1.0, ()), [])  # no FTM yet
        epochs = (("ftm-epoch", 1, FTM1),)
        (join,) = self.join_round(2.0, epochs)
        self.assertEqual(join.destination, FTM1)
        self.assertEqual(Join.from_message(join), Join("n1", 1))
        self.assertEqual(d.counters["joins.sent"], 1)
        node.feed(d.peer_message, "n2", fenced(FTM1, 1, WELCOME, Welcome("n1", 2)), 2.5)
        self.assertFalse(d.joined)  # another boot's welcome
        node.feed(d.peer_message, "n2", fenced(FTM1, 1, WELCOME, Welcome("n1", 1)), 2.5)
        self.assertTrue(d.joined)
        self.assertEqual(d.counters["joins.welcomed"], 1)
        self.assertEqual(self.join_round(3.0, epochs), [])
        beat = msg(HEARTBEAT, "heartbeat.x", "daemon.n1", {"seq": 1})
        node.feed(d.peer_message, "n2", beat, 4.0)
        self.assertEqual(self.join_round(6.0, epochs), [])
        self.join_round(7.0, epochs)  # silent 3 s: joins again
        self.assertEqual(d.counters["joins.sent"], 2)
        self.assertFalse(d.joined)


class SweepTests(SynchronousTestCase):
    """The sweep against the FTM's ARMOR table (its intent)."""

    def setUp(self) -> None:
        self.d = daemon()
        self.node = Node(self.d)

    def sweep(self, now: float, here: tuple[Any, ...], *ftm_rows: tuple[Any, ...]) -> list[Effect]:
        d, node = self.d, self.node
        effects = node.feed(d.timer, (DaemonTimer.SWEEP, "n1"), now)
        ((_, call),) = calls(effects)
        reply = SpaceReply(call.call, True, -1, (here, *ftm_rows))
        return node.feed(d.space_answered, call.call, reply, now)

    def test_sweep(self) -> None:
        """
        Nothing is swept before a welcome; after it, an ARMOR the table places here as
        its incarnation stays, one it does not is stopped with no report (superseded),
        and an FTM with no entry at all stays.
        """
        d, node = self.d, self.node
        a = node.run(A)
        b = node.run(B)
        node.run(FTM2, manager=SM)
        effects = node.feed(d.timer, (DaemonTimer.SWEEP, "n1"), 1.0)
        self.assertEqual(calls(effects), [])
        node.feed(d.peer_message, "n2", fenced(FTM1, 1, WELCOME, Welcome("n1", 1)), 1.5)
        effects = d.drain()
        self.assertEqual(effects, [])
        effects = self.sweep(2.0, (entry(A),), ())
        self.assertIn(Kill(b), effects)
        self.assertNotIn(Kill(a), effects)
        self.assertEqual(d.counters["armors.swept"], 1)
        effects = node.feed(d.ended, b, "signal 15 (SIGTERM)", 2.5)
        self.assertEqual(sends(effects, NodePeer("n2")), [])
        self.assertEqual(len(sends(effects, TABLE)), 1)
        self.assertIn(FTM2, d.residents)
        # An FTM whose entry places it on another node goes too.
        self.sweep(3.0, (entry(A),), (entry(FTM2, node="n3"),))
        self.assertEqual(d.residents[FTM2].state, ResidentState.STOPPING)

    def test_welcome_sweeps(self) -> None:
        """A welcome (once running ARMORs are here) asks for a sweep at once."""
        d, node = self.d, self.node
        node.run(A)
        effects = node.feed(d.peer_message, "n2", fenced(FTM1, 1, WELCOME, Welcome("n1", 1)), 1.0)
        ((_, call),) = calls(effects)
        self.assertEqual(call.request.ops[0].fields[4], "n1")


class SpaceTests(SynchronousTestCase):
    """Local ARMORs' space requests, carried by the host."""

    def setUp(self) -> None:
        self.d = daemon()
        self.node = Node(self.d)

    def test_request_and_reply(self) -> None:
        """
        A space-request to space.system becomes a SpaceCall for the host; its answer
        comes back to the ARMOR as a space-reply from space.system, with its own
        request number.
        """
        d, node = self.d, self.node
        node.run(A)
        request = SpaceRequest(9, (SpaceOp.out("x", 1),))
        effects = node.feed(
            d.local_message, A, 1, msg(SPACE_REQUEST, A, SYSTEM_SPACE, request), 1.0
        )
        ((peer, call),) = calls(effects)
        self.assertEqual(peer.id, SYSTEM_SPACE)
        self.assertEqual(call.request.ops, request.ops)
        effects = node.feed(
            d.space_answered, call.call, SpaceReply(call.call, True, -1, (None,)), 2
        )
        (reply,) = sends(effects, LocalPeer(A, 1))
        self.assertEqual((reply.type, reply.source), (SPACE_REPLY, SYSTEM_SPACE))
        self.assertEqual(SpaceReply.from_message(reply), SpaceReply(9, True, -1, (None,)))
        self.assertEqual(d.counters["space.replies"], 1)
        self.assertEqual(node.feed(d.space_answered, call.call, SpaceReply(1, True), 2), [])

    def test_application_space_and_refusals(self) -> None:
        """
        An application's space is a peer of its own; a malformed request is refused;
        an answer for a process that ended is dropped and counted; a peer daemon's
        message for a space is not carried.
        """
        d, node = self.d, self.node
        handle = node.run(A)
        request = SpaceRequest(1, (SpaceOp.template("rdp", "x", ANY),))
        effects = node.feed(
            d.local_message, A, 1, msg(SPACE_REQUEST, A, space_id("app"), request), 1.0
        )
        ((peer, call),) = calls(effects)
        self.assertEqual(peer, SpacePeer("app"))
        node.feed(d.local_message, A, 1, msg(SPACE_REQUEST, A, SYSTEM_SPACE, {"no": 1}), 1.0)
        self.assertEqual(d.counters["messages.refused"], 1)
        node.feed(d.ended, handle, "signal 9 (SIGKILL)", 1.5)
        node.feed(d.space_answered, call.call, SpaceReply(call.call, True, -1, (None,)), 2)
        self.assertEqual(d.counters["space.orphaned"], 1)
        effects = node.feed(d.peer_message, "n2", msg(SPACE_REQUEST, SM, SYSTEM_SPACE, request), 3)
        self.assertEqual(calls(effects), [])
        self.assertEqual(d.counters["messages.absent"], 1)


class TwoTablesTests(SynchronousTestCase):
    """The daemons' location rows and the FTM's intent entries cannot be mistaken."""

    def test_templates_are_disjoint(self) -> None:
        """
        No template of the one table matches a tuple of the other: their first fields
        differ ("armor" and "ftm-armor"), and neither template leaves it wild.
        """
        row = ArmorRow(A, "echo", SM, "n1", 1, "app").as_tuple()
        intent = ArmorEntry(A, "echo", SM, "n1", "app", 1).to_tuple()
        for template in (armor_template(), armor_template(A)):
            self.assertTrue(make_template(template).matches(row))
            self.assertFalse(make_template(template).matches(intent))
        for template in (ArmorEntry.template(), ArmorEntry.template(A)):
            self.assertTrue(make_template(template).matches(intent))
            self.assertFalse(make_template(template).matches(row))
