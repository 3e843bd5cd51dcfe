"""
The process harness of L{lips.testing}: its command lines, ports, logs, status codec,
cluster files and directories, and one short-lived child process.
"""

from __future__ import annotations

import contextlib
import io
import signal
import socket
import sys
import tomllib
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from lips.testing import (
    ANY_LOAD,
    TWISTD,
    Cluster,
    ProcessGroup,
    ServerDidNotStart,
    free_port,
    log_tail,
    ring_serving,
    run_directory,
    twistd_command,
)
from lips.testing._harness import _StatusExchange
from lips.wire import (
    Frame,
    FrameDecoder,
    Hello,
    Stats,
    StatsRequest,
    Welcome,
    decode_message,
    encode_message,
)


def _directory(case: SynchronousTestCase) -> Path:
    return Path(case.mktemp()).resolve()


def _frames(data: bytes) -> list[Frame]:
    frames = FrameDecoder(1 << 20).feed(data)
    assert all(isinstance(f, Frame) for f in frames), frames
    return [f for f in frames if isinstance(f, Frame)]


class TwistdCommandTests(SynchronousTestCase):
    def test_foreground_without_pid_file(self) -> None:
        """Every role runs in the foreground with no pid file, its options after it."""
        for role in ("lips-msgserver", "lips-fixserver", "lips-node"):
            argv = twistd_command(role, "--name", "x")
            self.assertEqual(argv, [*TWISTD, "-n", "--pidfile=", role, "--name", "x"])
        self.assertEqual(TWISTD[0], sys.executable)

    def test_prefix_runs_twistd(self) -> None:
        """A prefix (ip netns exec NS) comes first."""
        argv = twistd_command("lips-msgserver", prefix=["ip", "netns", "exec", "ns1"])
        self.assertEqual(argv[:5], ["ip", "netns", "exec", "ns1", sys.executable])

    def test_profile(self) -> None:
        """Under cProfile, the profile's path comes before twistd's arguments."""
        argv = twistd_command("lips-msgserver", "--name", "p", profile=Path("/tmp/p.prof"))
        self.assertEqual(argv[:2], [sys.executable, "-c"])
        self.assertIn("cProfile", argv[2])
        expected = ["/tmp/p.prof", "-n", "--pidfile=", "lips-msgserver", "--name", "p"]
        self.assertEqual(argv[3:], expected)

    def test_unknown_role(self) -> None:
        """A role that is no LiPS plugin is refused before anything runs."""
        self.assertRaises(ValueError, twistd_command, "web")


class FreePortTests(SynchronousTestCase):
    def test_bindable(self) -> None:
        """A free port of each kind can be bound right after."""
        for kind, family in (("tcp", socket.SOCK_STREAM), ("udp", socket.SOCK_DGRAM)):
            port = free_port(kind)  # type: ignore[arg-type]
            self.assertTrue(1024 <= port <= 65535, port)
            with socket.socket(socket.AF_INET, family) as s:
                s.bind(("127.0.0.1", port))


class LogTailTests(SynchronousTestCase):
    def test_last_lines(self) -> None:
        """The tail is the last lines of the log, whole."""
        path = _directory(self)
        path.mkdir()
        log = path / "x.log"
        log.write_text("".join(f"line {n}\n" for n in range(100)))
        self.assertEqual(log_tail(log, 3), "line 97\nline 98\nline 99")

    def test_missing(self) -> None:
        """A log that cannot be read says so instead of raising."""
        text = log_tail(Path("/nonexistent/x.log"))
        self.assertIn("cannot read /nonexistent/x.log", text)


class StatusTests(SynchronousTestCase):
    def test_request_with_hello(self) -> None:
        """A first request says HELLO, then asks for STATS, with increasing ids."""
        exchange = _StatusExchange()
        frames = _frames(exchange.request(hello=True))
        messages = [(f.request_id, decode_message(f)) for f in frames]
        self.assertEqual(messages, [(1, Hello(None, "status")), (2, StatsRequest())])
        again = _frames(exchange.request(hello=False))
        self.assertEqual([f.request_id for f in again], [3])

    def test_answer(self) -> None:
        """The answer is the STATS of the latest request; the WELCOME before is skipped."""
        exchange = _StatusExchange()
        exchange.request(hello=True)
        data = encode_message(Welcome(7, "m1", 1 << 20), 1)
        data += encode_message(Stats({"space.mode": "serving"}), 2)
        self.assertIsNone(exchange.feed(data[:10]))
        self.assertEqual(exchange.feed(data[10:]), {"space.mode": "serving"})

    def test_not_stats(self) -> None:
        """An answer that is no STATS is a connection error."""
        exchange = _StatusExchange()
        exchange.request(hello=False)
        self.assertRaises(ConnectionError, exchange.feed, encode_message(Hello(None, "x"), 1))

    def test_ring_serving(self) -> None:
        """Serving in a ring of N: mode serving and N members."""
        self.assertTrue(ring_serving({"space.mode": "serving", "space.members": 3}, 3))
        self.assertFalse(ring_serving({"space.mode": "serving", "space.members": 2}, 3))
        self.assertFalse(ring_serving({"space.mode": "syncing", "space.members": 3}, 3))
        self.assertFalse(ring_serving({}, 3))


class ClusterTests(SynchronousTestCase):
    def test_create(self) -> None:
        """
        A cluster file of FixServers and MessageServers, each role a ring numbered from
        1, on distinct free ports; each member's twistd names its role, file and name.
        """
        directory = _directory(self)
        cluster = Cluster.create(directory, fixservers=2, msgservers=3, cluster_id=5)
        self.assertEqual(cluster.names(), ["f1", "f2", "m1", "m2", "m3"])
        self.assertEqual(cluster.names("fixserver"), ["f1", "f2"])
        config = tomllib.loads(cluster.path.read_text())
        self.assertEqual(config["cluster"]["id"], 5)
        self.assertEqual(config["servers"]["f2"]["id"], 2)
        self.assertEqual(config["servers"]["m1"]["id"], 1)
        self.assertEqual(config["servers"]["m3"]["role"], "msgserver")
        ports = [m.tcp_port for m in cluster.members.values()]
        ports += [m.ring_port for m in cluster.members.values()]
        self.assertEqual(len(set(ports)), 10)
        m1 = cluster["m1"]
        self.assertEqual(m1.argv[-4:], ["--config", str(cluster.path), "--name", "m1"])
        self.assertIn("lips-msgserver", m1.argv)
        self.assertIn("lips-fixserver", cluster["f1"].argv)
        self.assertEqual(m1.log, directory / "m1.log")
        self.assertEqual(cluster.endpoints("msgserver")[0], m1.endpoint)
        self.assertEqual(m1.endpoint, f"tcp:host=127.0.0.1:port={m1.port}")
        self.assertFalse(any(p.running for p in cluster.processes.values()))

    def test_own_hosts_and_nodes(self) -> None:
        """
        A server on an address of its own has fixed ports and its prefix; a node is a
        lipsd of the same cluster file, serving no port, not a member.
        """
        hosts = ["10.9.0.1", "10.9.0.2"]
        cluster = Cluster.create(
            _directory(self),
            msgservers=2,
            hosts=hosts,
            prefixes={"m2": ["ip", "netns", "exec", "n2"]},
            options=["--max-tuple-size", "99"],
        )
        self.assertEqual([cluster[n].host for n in ("m1", "m2")], hosts)
        self.assertEqual(cluster["m2"].port, 7010)
        self.assertEqual(cluster["m2"].argv[:4], ["ip", "netns", "exec", "n2"])
        self.assertEqual(cluster["m1"].argv[-2:], ["--max-tuple-size", "99"])
        node = cluster.node("n1", *ANY_LOAD)
        self.assertIsNone(node.port)
        self.assertIn("lips-node", node.argv)
        self.assertEqual(cluster.names(), ["m1", "m2"])
        self.assertEqual(cluster.endpoints(), [cluster["m1"].endpoint, cluster["m2"].endpoint])


class ProcessTests(SynchronousTestCase):
    def test_lifecycle(self) -> None:
        """
        A process logs its command line and output; it can be paused, resumed,
        restarted and stopped (SIGTERM), then started again; a group stops what it
        started.
        """
        group = ProcessGroup(_directory(self))
        code = "import sys, time; print('up', flush=True); time.sleep(60)"
        p = group.add("sleeper", [sys.executable, "-c", code])
        with group:
            p.start()
            self.assertTrue(p.running)
            p.pause()
            p.resume()
            first = p.pid
            p.restart()
            self.assertTrue(p.running)
            self.assertNotEqual(p.pid, first)
            p.stop()
            self.assertFalse(p.running)
            self.assertEqual(p.returncode, -signal.SIGTERM)
            p.start()
        self.assertFalse(p.running)
        log = p.read_log()
        self.assertEqual(log.count("$ "), 3)
        self.assertIn("time.sleep(60)", log.splitlines()[0])

    def test_exited_before_serving(self) -> None:
        """A server that exits before it answers fails its wait, quoting its log."""
        group = ProcessGroup(_directory(self))
        code = "print('no such option'); raise SystemExit(2)"
        p = group.add("broken", [sys.executable, "-c", code], port=free_port())
        with group:
            p.start().wait(10)
            error = self.assertRaises(ServerDidNotStart, p.wait_serving, 5)
        self.assertIn("broken exited with status 2", str(error))
        self.assertIn("no such option", str(error))
        self.assertRaises(ServerDidNotStart, p.check_running)

    def test_stop_order(self) -> None:
        """Processes serving no port (nodes) are stopped first, then the last started."""
        group = ProcessGroup(_directory(self))
        a = group.add("a", ["true"], port=1)
        b = group.add("b", ["true"], port=2)
        n = group.add("n", ["true"])
        a.started, b.started, n.started = 1.0, 2.0, 0.5
        self.assertEqual([p.name for p in group._stopping_order()], ["n", "b", "a"])


class RunDirectoryTests(SynchronousTestCase):
    def test_removed_after_success(self) -> None:
        """A temporary run directory goes once the run succeeds."""
        with run_directory("lips-test-") as path:
            (path / "x.log").write_text("x")
        self.assertFalse(path.exists())

    def test_kept_after_failure(self) -> None:
        """A run that fails keeps its directory, and says where it is."""
        kept: list[Path] = []

        def fail() -> None:
            with run_directory("lips-test-") as path:
                kept.append(path)
                raise RuntimeError("boom")

        said = io.StringIO()
        with contextlib.redirect_stderr(said):
            self.assertRaises(RuntimeError, fail)
        self.assertTrue(kept[0].exists())
        self.assertIn(str(kept[0]), said.getvalue())
        kept[0].rmdir()

    def test_given_directory_kept(self) -> None:
        """A directory given is made if need be and never removed."""
        given = _directory(self) / "keep"
        with run_directory("lips-test-", given) as path:
            self.assertEqual(path, given)
        self.assertTrue(given.exists())
