"""
Tests for L{lips.tap} and the twistd plugins.
"""

from __future__ import annotations

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IServiceMaker
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from lips.tap import fixserver, msgserver
from lips.tap._server import ServerOptions, make_server_service


class PluginTests(SynchronousTestCase):
    def test_plugins_listed(self) -> None:
        """getPlugins(IServiceMaker) lists exactly the LiPS roles that work."""
        names = {p.tapname for p in getPlugins(IServiceMaker) if p.tapname.startswith("lips-")}
        self.assertEqual(names, {"lips-msgserver", "lips-fixserver"})

    def test_plugin_modules(self) -> None:
        """Each plugin names its own tap module, with Options and makeService."""
        by_name = {p.tapname: p for p in getPlugins(IServiceMaker)}
        self.assertIs(by_name["lips-msgserver"].options, msgserver.Options)
        self.assertIs(by_name["lips-fixserver"].options, fixserver.Options)


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

    def test_bad_values(self) -> None:
        """Values that make no sense are UsageErrors with a message naming the option."""
        for argv, word in [
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
