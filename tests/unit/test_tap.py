"""
Tests for L{lips.tap} and the twistd plugins.
"""

from __future__ import annotations

from pathlib import Path

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IServiceMaker
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from lips.armor import IArmorType, IBlockType, armor_id
from lips.armor.ftm import FTM, ArmorEntry, Role
from lips.ring import Join, Opened, State, decode
from lips.tap import fixserver, ftm, msgserver, node
from lips.tap._server import RingService, ServerOptions, make_server_service
from tests.unit.test_ring_protocol import FakeReactor


class PluginTests(SynchronousTestCase):
    def test_plugins_listed(self) -> None:
        """getPlugins(IServiceMaker) lists exactly the LiPS roles that work."""
        names = {p.tapname for p in getPlugins(IServiceMaker) if p.tapname.startswith("lips-")}
        self.assertEqual(names, {"lips-msgserver", "lips-fixserver", "lips-node", "lips-ftm"})

    def test_armor_plugins_listed(self) -> None:
        """twisted/plugins/lips_armor.py registers LiPS's ARMOR and block types."""
        armors = {p.name for p in getPlugins(IArmorType)}
        blocks = {p.name for p in getPlugins(IBlockType)}
        self.assertTrue({"ftm", "surrogate-manager"} <= armors, armors)
        self.assertTrue({"installation", "recovery", "forward-recovery"} <= blocks, blocks)

    def test_plugin_modules(self) -> None:
        """Each plugin names its own tap module, with Options and makeService."""
        by_name = {p.tapname: p for p in getPlugins(IServiceMaker)}
        self.assertIs(by_name["lips-msgserver"].options, msgserver.Options)
        self.assertIs(by_name["lips-fixserver"].options, fixserver.Options)
        self.assertIs(by_name["lips-node"].options, node.Options)
        self.assertIs(by_name["lips-ftm"].options, ftm.Options)


class FtmOptionsTests(SynchronousTestCase):
    """C{twistd lips-ftm}'s options: what it needs, and its clear refusals."""

    def cluster(self) -> str:
        from lips.testing import Cluster

        return str(Cluster.create(Path(self.mktemp()), fixservers=2).path)

    def parse(self, *argv: str) -> ftm.Options:
        o = ftm.Options()
        o.parseOptions(list(argv))
        return o

    def test_good(self) -> None:
        o = self.parse("--config", self.cluster(), "--node", "n1", "--tick", "0.2")
        self.assertEqual(o["tick"], 0.2)
        self.assertTrue(o["socket"].endswith("/lips-armor/n1/daemon.sock"), o["socket"])
        service = ftm.makeService(o, MemoryReactorClock())
        self.assertIsInstance(service, ftm.FtmService)
        self.assertEqual(service.node, "n1")

    def test_refusals(self) -> None:
        path = self.cluster()
        for argv, words in (
            ((), "--config"),
            (("--config", path), "--node"),
            (("--config", path, "--node", "N 1"), "--node"),
            (("--config", "/nonexistent.toml", "--node", "n1"), "nonexistent"),
            (("--config", path, "--node", "n1", "--tick", "0"), "tick"),
            (("--config", path, "--node", "n1", "--socket", "/" + "x" * 120), "too long"),
        ):
            with self.assertRaises(UsageError) as e:
                self.parse(*argv)
            self.assertIn(words, str(e.exception), argv)

    def test_each_run_of_a_daemon_has_its_own_boot(self) -> None:
        """lipsd's daemon says its start time in microseconds: a new number each run."""
        from unittest import mock

        from lips.tap import _armor

        with mock.patch("time.time_ns", side_effect=[5_000_123, 9_000_456, 0]):
            self.assertEqual(
                [_armor.run_number(), _armor.run_number(), _armor.run_number()], [5000, 9000, 1]
            )

    def test_standby_ids(self) -> None:
        self.assertEqual(ftm.standby_id("n2"), "ftm.s-n2")

    def choose(self, tuples: list[tuple[object, ...]], node: str = "n1") -> FTM:
        from twisted.internet import defer

        from lips.tuples import make_template

        class Space:
            def rdp(self, template: tuple[object, ...]) -> defer.Deferred[object]:
                t = make_template(template)
                return defer.succeed(next((v for v in tuples if t.matches(v)), None))

        o = self.parse("--config", self.cluster(), "--node", node)
        service = ftm.FtmService(
            MemoryReactorClock(), o["cluster"], node, o["socket"], lambda: defer.succeed(Space())
        )
        return self.successResultOf(defer.Deferred.fromCoroutine(service.choose()))

    def test_which_ftm_it_runs(self) -> None:
        """The first FTM; this node's own again (over its epoch); else a standby."""
        first = self.choose([])
        self.assertEqual((first.id, first.role, first.epoch), ("ftm", Role.STARTING, 0))
        again = self.choose([("ftm-epoch", 3, "ftm")])
        self.assertEqual((again.id, again.role, again.epoch), ("ftm", Role.STARTING, 3))
        row = ArmorEntry(armor_id("ftm.b-e1-4"), "ftm", "", "n2").to_tuple()
        standby = self.choose([("ftm-epoch", 2, "ftm.b-e1-4"), row])
        self.assertEqual((standby.id, standby.role), ("ftm.s-n1", Role.BACKUP))
        self.assertEqual((standby.primary, standby.primary_node), ("ftm.b-e1-4", "n2"))


class OptionsTests(SynchronousTestCase):
    def parse(self, *argv: str, options: type = msgserver.Options) -> ServerOptions:
        o = options()
        o.parseOptions(list(argv))
        assert isinstance(o, ServerOptions)
        return o

    def test_defaults(self) -> None:
        """Without options a MessageServer listens on loopback port 7010, a FixServer 7020."""
        self.assertEqual(self.parse()["listen"], "tcp:7010:interface=127.0.0.1")
        self.assertEqual(
            self.parse(options=fixserver.Options)["listen"], "tcp:7020:interface=127.0.0.1"
        )
        self.assertTrue(self.parse()["name"].endswith("-msgserver"))

    def test_limits(self) -> None:
        """The limits options build the server's Limits."""
        o = self.parse("--max-arity", "5", "--max-depth", "2", "--max-tuple-size", "4096")
        self.assertEqual(
            (o["limits"].max_arity, o["limits"].max_depth, o["limits"].max_size), (5, 2, 4096)
        )

    def test_bounds(self) -> None:
        """The bound options build the server's ServerLimits, which its core keeps."""
        o = self.parse("--max-connections", "7", "--idle-timeout", "0", "--hello-timeout", "2.5")
        self.assertEqual(
            (o["bounds"].max_connections, o["bounds"].idle_timeout, o["bounds"].hello_timeout),
            (7, 0.0, 2.5),
        )
        self.assertEqual(o["bounds"].max_waiting, 100_000)
        top = make_server_service(o, MemoryReactorClock())
        self.assertIs(top.core.bounds, o["bounds"])

    def test_bad_values(self) -> None:
        """Values that make no sense are UsageErrors with a message naming the option."""
        for argv, word in [
            (("--max-connections", "0"), "--max-connections"),
            (("--idle-timeout", "-1"), "--idle-timeout"),
            (("--partial-timeout", "nan"), "--partial-timeout"),
            (("--max-arity", "0"), "--max-arity"),
            (("--max-arity", "many"), "--max-arity"),
            (("--log-limit", "-1"), "--log-limit"),
            (("--listen", "nonsense:1"), "--listen"),
            (("--listen", "tcp:notaport"), "--listen"),
            (("--tls-cert", __file__), "--tls-key"),
            (("--tls-client-ca", __file__), "--tls-cert"),
            (("--tls-cert", "/no/such", "--tls-key", "/no/such"), "no such file"),
            (("--tls-cert", __file__, "--tls-key", __file__), "TLS"),
        ]:
            e = self.assertRaises(UsageError, self.parse, *argv)
            self.assertIn(word, str(e), argv)

    def test_make_service(self) -> None:
        """makeService builds a listening service on the configured endpoint."""
        reactor = MemoryReactorClock()
        top = make_server_service(self.parse("--listen", "tcp:0", "--name", "x"), reactor)
        [listener] = list(top)
        self.assertIsInstance(listener, StreamServerEndpointService)
        top.startService()
        self.assertEqual(len(reactor.tcpServers), 1)
        self.assertEqual(top.core.name, "x")
        top.stopService()


class _UDPReactor(MemoryReactorClock):
    """A memory reactor whose UDP ports are the ring tests' fakes."""

    def __init__(self) -> None:
        super().__init__()
        self.udp = FakeReactor()
        self.listenUDP = self.udp.listenUDP


class ClusterOptionsTests(SynchronousTestCase):
    """C{--config FILE --name NAME}: a replicated server of the cluster file."""

    def setUp(self) -> None:
        directory = Path(self.mktemp())
        directory.mkdir()
        (directory / "k").write_bytes(b"k" * 32)
        (directory / "k").chmod(0o600)
        self.path = directory / "cluster.toml"
        self.path.write_text(
            '[cluster]\nid = 3\nkey_file = "k"\ntimings = "loopback"\nstate_dir = "s"\n'
            + "".join(
                f'[servers.{name}]\nrole = "{role}"\nid = {n}\n'
                f'ring = "127.0.0.1:{7100 + i}"\nlisten = "tcp:{7010 + i}:interface=127.0.0.1"\n'
                for i, (name, role, n) in enumerate(
                    [("m1", "msgserver", 1), ("m2", "msgserver", 2), ("f1", "fixserver", 1)]
                )
            )
        )

    def parse(self, *argv: str, options: type = msgserver.Options) -> ServerOptions:
        o = options()
        o.parseOptions(list(argv))
        assert isinstance(o, ServerOptions)
        return o

    def test_server_from_the_file(self) -> None:
        """--name picks the server: its listen endpoint and ring come from the file."""
        o = self.parse("--config", str(self.path), "--name", "m2")
        self.assertEqual(o["listen"], "tcp:7011:interface=127.0.0.1")
        self.assertEqual((o["entry"].id, o["entry"].ring), (2, ("127.0.0.1", 7101)))
        f = self.parse("--config", str(self.path), "--name", "f1", options=fixserver.Options)
        self.assertEqual(f["entry"].role, "fixserver")

    def test_bad_combinations(self) -> None:
        """Every wrong combination is a UsageError that says what is wrong."""
        config = str(self.path)
        for argv, words in [
            (("--config", config), "--config needs --name: one of the msgservers m1, m2"),
            (("--config", config, "--name", "zz"), "no server named 'zz'"),
            (("--config", config, "--name", "f1"), "f1 is a fixserver"),
            (("--config", config, "--name", "m1", "--listen", "tcp:1"), "--listen comes from"),
            (("--config", "/no/such.toml", "--name", "m1"), "/no/such.toml"),
        ]:
            e = self.assertRaises(UsageError, self.parse, *argv)
            self.assertIn(words, str(e), argv)

    def test_required_tls(self) -> None:
        """A server of a role the file's require_tls names will not start without client
        certificates; a server of the other role is not concerned."""
        text = self.path.read_text().replace(
            "[cluster]\n", '[cluster]\nrequire_tls = ["fixserver"]\n'
        )
        text = text.replace(
            'role = "fixserver"\n',
            'role = "fixserver"\n'
            'connect = "ssl:host=127.0.0.1:port=7012:certKey=c.pem:privateKey=k.pem"\n',
        )
        self.path.write_text(text)
        e = self.assertRaises(
            UsageError,
            self.parse,
            "--config",
            str(self.path),
            "--name",
            "f1",
            options=fixserver.Options,
        )
        self.assertIn("cluster.require_tls names fixservers", str(e))
        self.assertIn("--tls-client-ca", str(e))
        self.assertEqual(
            self.parse("--config", str(self.path), "--name", "m1")["entry"].name, "m1"
        )

    def test_corrupt_ring_sequence_file(self) -> None:
        """A damaged ring sequence file stops the server: ring ids must never repeat."""
        state = self.path.parent / "s"
        state.mkdir()
        (state / "m1.ringseq").write_text("not a number\n")
        e = self.assertRaises(UsageError, self.parse, "--config", str(self.path), "--name", "m1")
        self.assertIn("m1.ringseq", str(e))

    def test_make_service(self) -> None:
        """The service serves from the ring's replica; stopping it leaves the ring."""
        reactor = _UDPReactor()
        top = make_server_service(self.parse("--config", str(self.path), "--name", "m1"), reactor)
        ring = next(s for s in top if isinstance(s, RingService))
        self.assertIs(top.core.backend, ring.node)
        top.privilegedStartService()
        top.startService()
        [port] = reactor.udp.ports
        self.assertEqual(port.host, ("127.0.0.1", 7100))
        engine = ring.node.engine
        self.assertEqual(engine.state, State.GATHER)
        self.assertEqual(ring.node.store.load(), engine._ring_seq_max)
        self.assertIn("ring.state", top.core.stats())
        port.written.clear()
        top.stopService()
        self.assertEqual(engine.state, State.LEFT)
        # The goodbye went out to the other member before the socket closed.
        sealer = ring.node.protocol.sealer
        [(datagram, to)] = port.written
        self.assertEqual(to, ("127.0.0.1", 7101))
        opened = sealer.open(datagram)
        assert isinstance(opened, Opened)
        message = decode(opened.type, opened.body)
        assert isinstance(message, Join)
        self.assertTrue(message.leaving)
        self.assertFalse(port.listening)
