"""
Tests for L{lips.cluster}: a good cluster file loads to the expected objects, every kind
of mistake in one is refused with a message naming the file and the key, and a server's
ring sequence number is stored atomically and never moves backwards.
"""

from __future__ import annotations

import ipaddress
import json
import operator
import os
import re
import shutil
import stat
from pathlib import Path
from typing import Any

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.endpoints import clientFromString
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SkipTest, SynchronousTestCase

import lips.cluster
from lips.cluster import (
    ClusterConfig,
    ClusterConfigError,
    OneToMany,
    RingSeqStore,
    ServerEntry,
    StateFileError,
    load_cluster,
)
from lips.ring import Dropped, DropReason, Mode, Opened, RingConfig

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cluster-loopback.toml"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "cluster.md"
KEY = bytes(range(32))

Doc = dict[str, Any]


def good() -> Doc:
    """A good cluster: three MessageServers and two FixServers on loopback."""

    def server(role: str, node: int, ring: int, listen: int) -> Doc:
        return {
            "role": role,
            "id": node,
            "ring": f"127.0.0.1:{ring}",
            "listen": f"tcp:{listen}:interface=127.0.0.1",
        }

    return {
        "cluster": {
            "id": 7,
            "key_file": "cluster.key",
            "encrypt": False,
            "transport": "unicast",
            "timings": "loopback",
            "state_dir": "state",
        },
        "servers": {
            "m1": server("msgserver", 1, 7101, 7011),
            "m2": server("msgserver", 2, 7102, 7012),
            "m3": server("msgserver", 3, 7103, 7013),
            "f1": server("fixserver", 1, 7201, 7021),
            "f2": server("fixserver", 2, 7202, 7022),
        },
    }


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    assert isinstance(value, list), value
    return "[" + ", ".join(_value(v) for v in value) + "]"


def render(doc: Doc, prefix: tuple[str, ...] = ()) -> str:
    """A TOML text for C{doc} (tables become [dotted.headers])."""
    lines = []
    scalars = {k: v for k, v in doc.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in doc.items() if isinstance(v, dict)}
    if prefix and (scalars or not tables):
        lines.append("[" + ".".join(_key(p) for p in prefix) + "]")
    lines.extend(f"{_key(k)} = {_value(v)}" for k, v in scalars.items())
    for k, v in tables.items():
        lines.append(render(v, (*prefix, k)))
    return "\n".join(lines) + "\n"


class ClusterTestCase(SynchronousTestCase):
    """A temporary directory holding a key file (mode 0600) for cluster files."""

    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir(parents=True)
        self.key_path = self.dir / "cluster.key"
        self.key_path.write_bytes(KEY)
        self.key_path.chmod(0o600)
        self.path = self.dir / "cluster.toml"

    def load(self, doc: Doc) -> ClusterConfig:
        self.path.write_text(render(doc))
        return load_cluster(self.path)

    def problems(self, doc: Doc | str) -> tuple[str, ...]:
        self.path.write_text(doc if isinstance(doc, str) else render(doc))
        e: ClusterConfigError = self.assertRaises(ClusterConfigError, load_cluster, self.path)
        self.assertEqual(str(e), "\n".join(e.problems))
        return e.problems

    def assertProblem(self, doc: Doc | str, where: str, text: str) -> None:
        """Loading C{doc} fails with the line C{<file>: <where>: <text>}, among others."""
        problems = self.problems(doc)
        self.assertIn(f"{self.path}: {where}: {text}", problems)

    def assertOnlyProblem(self, doc: Doc | str, where: str, text: str) -> None:
        """Loading C{doc} fails with exactly the line C{<file>: <where>: <text>}."""
        self.assertEqual(self.problems(doc), (f"{self.path}: {where}: {text}",))


class LoadTests(ClusterTestCase):
    def test_good_file(self) -> None:
        """A good file loads to the expected configuration and server entries."""
        config = self.load(good())
        self.assertEqual(config.path, self.path)
        self.assertEqual(config.cluster_id, 7)
        self.assertEqual(config.key, KEY)
        self.assertFalse(config.encrypt)
        self.assertEqual(config.transport, "unicast")
        self.assertEqual(config.timings, "loopback")
        self.assertEqual(config.ring_config, RingConfig.loopback())
        self.assertEqual(config.state_dir, (self.dir / "state").absolute())
        self.assertTrue(config.state_dir.is_absolute())
        self.assertFalse(config.state_dir.exists(), "created on demand, not on load")
        self.assertIsNone(config.interface)
        self.assertEqual(config.one_to_many, {"msgserver": None, "fixserver": None})
        self.assertEqual(config.warnings, ())
        self.assertEqual(list(config.servers), ["m1", "m2", "m3", "f1", "f2"])
        self.assertEqual(
            config.server("m2"),
            ServerEntry(
                name="m2",
                role="msgserver",
                id=2,
                ring=("127.0.0.1", 7102),
                listen="tcp:7012:interface=127.0.0.1",
                connect="tcp:host=127.0.0.1:port=7012",
            ),
        )
        self.assertEqual([s.name for s in config.members("msgserver")], ["m1", "m2", "m3"])
        self.assertEqual([s.name for s in config.members("fixserver")], ["f1", "f2"])
        self.assertEqual(
            config.ring_peers("fixserver"), {1: ("127.0.0.1", 7201), 2: ("127.0.0.1", 7202)}
        )
        self.assertEqual(
            config.client_endpoints("msgserver"),
            [
                "tcp:host=127.0.0.1:port=7011",
                "tcp:host=127.0.0.1:port=7012",
                "tcp:host=127.0.0.1:port=7013",
            ],
        )
        for role in ("msgserver", "fixserver"):
            self.assertIsNone(config.one_to_many_address(role))

    def test_members_by_id(self) -> None:
        """Members, peers and client endpoints come in id order, whatever the file order."""
        doc = good()
        doc["servers"]["m1"]["id"] = 9
        config = self.load(doc)
        self.assertEqual([s.id for s in config.members("msgserver")], [2, 3, 9])
        self.assertEqual(list(config.ring_peers("msgserver")), [2, 3, 9])
        self.assertEqual(config.client_endpoints("msgserver")[-1], "tcp:host=127.0.0.1:port=7011")

    def test_sealers(self) -> None:
        """Each role's sealer uses the key, its own ring cluster id and the mode."""
        config = self.load(good())
        msg, fix = config.sealer("msgserver"), config.sealer("fixserver")
        self.assertEqual((msg.cluster, fix.cluster), (14, 15))
        self.assertEqual(
            (config.ring_cluster("msgserver"), config.ring_cluster("fixserver")), (14, 15)
        )
        self.assertEqual(msg.mode, Mode.AUTHENTICATED)
        datagram = msg.seal(1, 2, b"body")
        self.assertEqual(msg.open(datagram), Opened(1, 2, b"body"))
        self.assertEqual(fix.open(datagram), Dropped(DropReason.OTHER_CLUSTER))
        doc = good()
        doc["cluster"]["encrypt"] = True
        self.assertEqual(self.load(doc).sealer("fixserver").mode, Mode.ENCRYPTED)

    @settings(max_examples=50, deadline=None)
    @given(st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1))
    def test_rings_never_mix(self, a: int, b: int) -> None:
        """For any cluster ids, the four rings of two clusters take none of each other's
        datagrams: the ring cluster ids of different (cluster, role) pairs differ."""
        doc = good()
        configs = []
        for cluster in (a, b):
            doc["cluster"]["id"] = cluster
            configs.append(self.load(doc))
        ids = {
            (c.cluster_id, r): c.ring_cluster(r)
            for c in configs
            for r in ("msgserver", "fixserver")
        }
        self.assertEqual(len(set(ids.values())), len(ids))
        for value in ids.values():
            self.assertTrue(0 <= value < 2**32)

    def test_example_file(self) -> None:
        """The shipped example loads (given its key): three MessageServers, two
        FixServers, all on 127.0.0.1."""
        shutil.copy(EXAMPLE, self.dir / "cluster.toml")
        key = self.dir / "cluster-loopback.key"
        key.write_bytes(KEY)
        key.chmod(0o600)
        config = load_cluster(self.dir / "cluster.toml")
        self.assertEqual(config.warnings, ())
        self.assertEqual(len(config.members("msgserver")), 3)
        self.assertEqual(len(config.members("fixserver")), 2)
        self.assertEqual(config.timings, "loopback")
        for server in config.servers.values():
            self.assertEqual(server.ring[0], "127.0.0.1")
            self.assertIn("127.0.0.1", server.connect)

    def test_documented_example(self) -> None:
        """The commented example in docs/cluster.md loads, in unicast and multicast;
        its TLS files, which live elsewhere, are warnings."""
        text = DOCS.read_text()
        example = text[text.index("```toml\n") + 8 :]
        example = example[: example.index("```")]
        self.path.write_text(example)
        config = load_cluster(self.path)
        self.assertEqual([s.name for s in config.members("msgserver")], ["s1", "s2"])
        self.assertEqual(config.server("s1").connect, "tcp:host=192.0.2.11:port=7011")
        self.assertEqual(len(config.warnings), 2, config.warnings)
        self.path.write_text(example.replace('"unicast"', '"multicast"', 1))
        config = load_cluster(self.path)
        self.assertEqual(config.one_to_many_address("fixserver"), ("239.192.7.2", 7100))

    def test_defaults(self) -> None:
        """Without encrypt, transport and timings: authenticated, unicast, LAN timings."""
        doc = good()
        for key in ("encrypt", "transport", "timings"):
            del doc["cluster"][key]
        config = self.load(doc)
        self.assertEqual(
            (config.encrypt, config.transport, config.timings), (False, "unicast", "lan")
        )
        self.assertEqual(config.ring_config, RingConfig())

    def test_ring_overrides(self) -> None:
        """[ring] overrides RingConfig fields on top of the timings preset; integers are
        taken for seconds."""
        doc = good()
        doc["ring"] = {"token_timeout": 1, "window": 20}
        config = self.load(doc)
        self.assertEqual(
            config.ring_config,
            RingConfig(**{**_fields(RingConfig.loopback()), "token_timeout": 1.0, "window": 20}),
        )
        self.assertIsInstance(config.ring_config.token_timeout, float)
        doc["cluster"]["timings"] = "lan"
        self.assertEqual(self.load(doc).ring_config, RingConfig(token_timeout=1.0, window=20))

    def test_multicast(self) -> None:
        """With multicast, each ring has its group, TTL and the cluster's interface."""
        doc = good()
        doc["cluster"]["transport"] = "multicast"
        doc["cluster"]["interface"] = "127.0.0.1"
        doc["rings"] = {
            "msgserver": {"group": "239.192.7.1:7100", "ttl": 0},
            "fixserver": {"group": "239.192.7.2:7100", "broadcast": "127.255.255.255:7300"},
        }
        config = self.load(doc)
        self.assertEqual(config.interface, "127.0.0.1")
        self.assertEqual(
            config.one_to_many,
            {
                "msgserver": OneToMany(group=("239.192.7.1", 7100), ttl=0),
                "fixserver": OneToMany(
                    group=("239.192.7.2", 7100), broadcast=("127.255.255.255", 7300)
                ),
            },
        )
        self.assertEqual(config.one_to_many_address("msgserver"), ("239.192.7.1", 7100))
        doc["cluster"]["transport"] = "broadcast"
        doc["rings"]["msgserver"]["broadcast"] = "127.255.255.255:7301"
        config = self.load(doc)
        self.assertEqual(config.one_to_many_address("fixserver"), ("127.255.255.255", 7300))

    def test_role_without_servers(self) -> None:
        """A role with no servers has no members and needs no one-to-many address."""
        doc = good()
        for name in ("f1", "f2"):
            del doc["servers"][name]
        doc["cluster"]["transport"] = "multicast"
        doc["rings"] = {"msgserver": {"group": "239.1.1.1:7100"}}
        config = self.load(doc)
        self.assertEqual(config.members("fixserver"), [])
        self.assertEqual(config.ring_peers("fixserver"), {})

    def test_connect(self) -> None:
        """An explicit connect is kept; a tcp6 listen with an interface derives one, with
        the IPv6 address escaped, that Twisted parses back to the same host and port."""
        doc = good()
        doc["servers"]["m1"]["connect"] = "tcp:host=localhost:port=7011"
        doc["servers"]["m2"]["listen"] = "tcp6:7012:interface=\\:\\:1"
        config = self.load(doc)
        self.assertEqual(config.server("m1").connect, "tcp:host=localhost:port=7011")
        connect = config.server("m2").connect
        self.assertEqual(connect, "tcp:host=\\:\\:1:port=7012")
        endpoint: Any = clientFromString(MemoryReactor(), connect)
        self.assertEqual((endpoint._host, endpoint._port), ("::1", 7012))

    def test_ipv6_ring(self) -> None:
        """IPv6 ring addresses are written in brackets and kept in their short form."""
        doc = good()
        for i, name in enumerate(("m1", "m2", "m3")):
            doc["servers"][name]["ring"] = f"[0:0::{i + 1}]:7101"
        config = self.load(doc)
        self.assertEqual(
            config.ring_peers("msgserver"), {1: ("::1", 7101), 2: ("::2", 7101), 3: ("::3", 7101)}
        )

    def test_relative_to_the_file(self) -> None:
        """key_file and state_dir are relative to the cluster file, not the directory the
        loader runs in; absolute paths are kept."""
        (self.dir / "keys").mkdir()
        (self.dir / "keys" / "k").write_bytes(KEY)
        (self.dir / "keys" / "k").chmod(0o600)
        doc = good()
        doc["cluster"]["key_file"] = "keys/k"
        doc["cluster"]["state_dir"] = str((self.dir / "elsewhere").absolute())
        config = self.load(doc)
        self.assertEqual(config.key, KEY)
        self.assertEqual(config.state_dir, (self.dir / "elsewhere").absolute())

    def test_ring_seq_store(self) -> None:
        """Each server's ring sequence number lives in <state_dir>/<name>.ringseq."""
        config = self.load(good())
        store = config.ring_seq_store("f2")
        self.assertEqual(store.path, config.state_dir / "f2.ringseq")
        self.assertTrue(store.save(3))
        self.assertEqual(config.ring_seq_store("f2").load(), 3)
        self.assertRaises(ClusterConfigError, config.ring_seq_store, "nobody")

    def test_unknown_server(self) -> None:
        """Asking for a server that is not there names the known ones."""
        config = self.load(good())
        e = self.assertRaises(ClusterConfigError, config.server, "m9")
        self.assertEqual(
            str(e), f"{self.path}: no server named 'm9' (servers: f1, f2, m1, m2, m3)"
        )

    def test_unknown_role(self) -> None:
        """Asking for a role that does not exist is an error, not an empty ring."""
        config = self.load(good())
        for method in (config.members, config.ring_peers, config.sealer, config.client_endpoints):
            e = self.assertRaises(ClusterConfigError, method, "server")
            self.assertEqual(
                str(e), f"{self.path}: no role 'server' (roles: msgserver, fixserver)"
            )

    def test_repr_hides_key(self) -> None:
        """The key never shows in the repr, which ends up in logs."""
        config = self.load(good())
        self.assertNotIn(repr(KEY), repr(config))
        self.assertNotIn("key=", repr(config))

    def test_immutable(self) -> None:
        """The loaded configuration cannot be changed by accident."""
        config = self.load(good())
        self.assertRaises(AttributeError, setattr, config, "cluster_id", 8)
        self.assertRaises(TypeError, operator.setitem, config.servers, "x", config.server("m1"))

    def test_entry_validators(self) -> None:
        """A server entry refuses swapped or mistyped fields."""
        self.assertRaises(ValueError, ServerEntry, "s", "server", 1, ("h", 1), "l", "c")
        self.assertRaises(TypeError, ServerEntry, "s", "msgserver", 1, "h:1", "l", "c")
        self.assertRaises(TypeError, ServerEntry, "s", "msgserver", "1", ("h", 1), "l", "c")


def _fields(config: RingConfig) -> dict[str, Any]:
    return attrs.asdict(config)


class WarningTests(ClusterTestCase):
    def test_readable_key(self) -> None:
        """A key file others can read loads, with a warning."""
        if os.name != "posix":
            raise SkipTest("POSIX permissions")
        self.key_path.chmod(0o640)
        config = self.load(good())
        self.assertEqual(
            config.warnings,
            (
                f"{self.path}: cluster.key_file: {self.key_path} can be read or written by "
                "group or others (mode 0640); chmod 600 it",
            ),
        )

    def test_tls_files_elsewhere(self) -> None:
        """TLS files missing on this machine (they live on the server's) are a warning."""
        doc = good()
        doc["servers"]["m1"]["listen"] = "ssl:7011:privateKey=/nonexistent/server.pem"
        doc["servers"]["m1"]["connect"] = "ssl:host=127.0.0.1:port=7011:caCertsDir=/nonexistent"
        config = self.load(doc)
        self.assertEqual(len(config.warnings), 2)
        self.assertTrue(
            config.warnings[0].startswith(f"{self.path}: servers.m1.listen: cannot be checked")
        )
        self.assertTrue(
            config.warnings[1].startswith(f"{self.path}: servers.m1.connect: cannot be checked")
        )


class RequireTLSTests(ClusterTestCase):
    def test_off_by_default(self) -> None:
        """Without require_tls no role needs TLS."""
        self.assertEqual(self.load(good()).require_tls, frozenset())

    def test_required_with_client_certificates(self) -> None:
        """A role that requires TLS loads when every server of it is reached over ssl:
        with a client certificate and key."""
        doc = good()
        doc["cluster"]["require_tls"] = ["fixserver"]
        for name, port in [("f1", 7021), ("f2", 7022)]:
            doc["servers"][name]["connect"] = (
                f"ssl:host=127.0.0.1:port={port}:caCertsDir=/nonexistent"
                ":certKey=/nonexistent/node.pem:privateKey=/nonexistent/node.key"
            )
        config = self.load(doc)
        self.assertEqual(config.require_tls, frozenset({"fixserver"}))

    def test_refused_without_them(self) -> None:
        """A plain tcp: connect, or ssl: without a client certificate, is refused for a
        role that requires TLS; the other role is not concerned."""
        doc = good()
        doc["cluster"]["require_tls"] = ["fixserver"]
        doc["servers"]["f2"]["connect"] = "ssl:host=127.0.0.1:port=7022:caCertsDir=/nonexistent"
        problems = self.problems(doc)
        self.assertEqual(
            sorted(p.split(": ")[1] for p in problems),
            ["servers.f1.connect", "servers.f2.connect"],
        )
        self.assertIn("certKey=", problems[0])

    def test_bad_values(self) -> None:
        """require_tls is a list of roles."""
        doc = good()
        doc["cluster"]["require_tls"] = "fixserver"
        self.assertOnlyProblem(
            doc, "cluster.require_tls", "must be a list of roles, not a string ('fixserver')"
        )
        doc["cluster"]["require_tls"] = ["fixservers"]
        self.assertOnlyProblem(
            doc, "cluster.require_tls", "'fixservers' is not a role (msgserver, fixserver)"
        )


class FileProblemTests(ClusterTestCase):
    def test_missing_file(self) -> None:
        """A cluster file that is not there."""
        e = self.assertRaises(ClusterConfigError, load_cluster, self.dir / "nope.toml")
        self.assertEqual(
            str(e), f"{self.dir / 'nope.toml'}: cannot read: No such file or directory"
        )

    def test_not_toml(self) -> None:
        """A file that is not TOML."""
        problems = self.problems("[cluster\nid = 7\n")
        self.assertEqual(len(problems), 1)
        self.assertTrue(problems[0].startswith(f"{self.path}: not valid TOML: "), problems)

    def test_not_utf8(self) -> None:
        """A file that is not UTF-8."""
        self.path.write_bytes(b"x = '\xff'\n")
        e = self.assertRaises(ClusterConfigError, load_cluster, self.path)
        self.assertTrue(str(e).startswith(f"{self.path}: not valid TOML"), str(e))

    def test_missing_tables(self) -> None:
        """[cluster] and [servers] are required, and servers cannot be empty."""
        doc = good()
        del doc["cluster"]
        self.assertOnlyProblem(doc, "cluster", "missing (required)")
        doc = good()
        del doc["servers"]
        self.assertOnlyProblem(doc, "servers", "missing (required)")
        self.assertOnlyProblem(
            render(good()["cluster"], ("cluster",)) + "[servers]\n",
            "servers",
            "no servers: add a [servers.NAME] table for each",
        )

    def test_missing_keys(self) -> None:
        """Each required key, missing, is named."""
        for table, key in [
            ("cluster", "id"),
            ("cluster", "key_file"),
            ("cluster", "state_dir"),
            ("servers.m1", "role"),
            ("servers.m1", "id"),
            ("servers.m1", "ring"),
            ("servers.m1", "listen"),
        ]:
            doc = good()
            target = doc["cluster"] if table == "cluster" else doc["servers"]["m1"]
            del target[key]
            self.assertOnlyProblem(doc, f"{table}.{key}", "missing (required)")

    def test_unknown_keys(self) -> None:
        """Unknown tables and keys are refused by name, with a suggestion when one is
        close."""
        doc = good()
        doc["extra"] = 1
        doc["cluster"]["interfac"] = "127.0.0.1"
        doc["servers"]["m1"]["lisen"] = "tcp:1"
        doc["ring"] = {"token_timout": 1.0}
        doc["rings"] = {"fixservers": {}, "msgserver": {"grp": "239.1.1.1:1"}}
        problems = self.problems(doc)
        p = f"{self.path}: "
        self.assertEqual(
            problems,
            (
                p + "unknown key 'extra' (known: cluster, ring, rings, servers)",
                p + "cluster: unknown key 'interfac' (did you mean 'interface'? known: "
                "durable, encrypt, id, interface, key_file, require_tls, state_dir, timings,"
                " transport)",
                p
                + "ring: unknown key 'token_timout' (did you mean 'token_timeout'? known: "
                + ", ".join(sorted(set(_fields(RingConfig())) - {"durable"}))
                + ")",
                p + "rings: unknown table 'fixservers' (did you mean 'fixserver'? known: "
                "fixserver, msgserver)",
                p + "rings.msgserver: unknown key 'grp' (did you mean 'group'? known: "
                "broadcast, group, ttl)",
                p + "servers.m1: unknown key 'lisen' (did you mean 'listen'? known: "
                "connect, id, listen, ring, role)",
            ),
        )

    def test_wrong_types(self) -> None:
        """A value of the wrong type is named with what it should be and what it is."""
        cases: list[tuple[str, str, object, str]] = [
            ("cluster", "id", "7", "must be an integer, not a string ('7')"),
            ("cluster", "id", 7.0, "must be an integer, not a number (7.0)"),
            ("cluster", "id", True, "must be an integer, not a boolean (true)"),
            ("cluster", "encrypt", "yes", "must be true or false, not a string ('yes')"),
            ("cluster", "encrypt", 1, "must be true or false, not an integer (1)"),
            ("cluster", "key_file", ["a"], "must be a string, not an array"),
            ("cluster", "transport", 3, "must be a string, not an integer (3)"),
            ("m1", "ring", 7101, "must be a string, not an integer (7101)"),
            ("m1", "role", {"a": 1}, "must be a string, not a table"),
            ("m1", "connect", False, "must be a string, not a boolean (false)"),
        ]
        for table, key, value, text in cases:
            doc = good()
            (doc["cluster"] if table == "cluster" else doc["servers"]["m1"])[key] = value
            where = "cluster" if table == "cluster" else "servers.m1"
            self.assertOnlyProblem(doc, f"{where}.{key}", text)
        doc = good()
        doc["servers"]["m1"] = "tcp:7011"
        self.assertOnlyProblem(doc, "servers.m1", "must be a table, not a string ('tcp:7011')")
        doc = good()
        doc["ring"] = {"window": 1.5, "hold": "fast"}
        problems = self.problems(doc)
        self.assertEqual(
            problems,
            (
                f"{self.path}: ring.hold: must be a number, not a string ('fast')",
                f"{self.path}: ring.window: must be an integer, not a number (1.5)",
            ),
        )
        self.assertProblem("cluster = 3\n", "cluster", "must be a table, not an integer (3)")

    def test_choices(self) -> None:
        """transport, timings and role take only their listed values."""
        doc = good()
        doc["cluster"]["transport"] = "anycast"
        self.assertOnlyProblem(
            doc,
            "cluster.transport",
            "must be one of 'unicast', 'multicast', 'broadcast', not 'anycast'",
        )
        doc = good()
        doc["cluster"]["timings"] = "wan"
        self.assertOnlyProblem(
            doc, "cluster.timings", "must be one of 'lan', 'loopback', not 'wan'"
        )
        doc = good()
        doc["servers"]["m1"]["role"] = "server"
        self.assertOnlyProblem(
            doc, "servers.m1.role", "must be one of 'msgserver', 'fixserver', not 'server'"
        )

    def test_id_ranges(self) -> None:
        """The cluster id is 31 bits; a node id is positive and fits 32 bits."""
        for value in (-1, 2**31):
            doc = good()
            doc["cluster"]["id"] = value
            self.assertOnlyProblem(
                doc, "cluster.id", f"must be 0-2147483647 (31 bits), not {value}"
            )
        for value in (0, -3, 2**32):
            doc = good()
            doc["servers"]["m2"]["id"] = value
            self.assertOnlyProblem(doc, "servers.m2.id", f"must be 1-4294967295, not {value}")

    def test_duplicate_ids(self) -> None:
        """Ids are unique within a role (the same id in both roles is fine)."""
        doc = good()
        doc["servers"]["m3"]["id"] = 1
        self.assertOnlyProblem(
            doc,
            "servers.m3.id",
            "1 is also the id of servers.m1: ids are unique within a role (msgserver)",
        )

    def test_duplicate_ring_addresses(self) -> None:
        """No two servers, of either role, share a ring address, however it is written."""
        doc = good()
        doc["servers"]["f2"]["ring"] = "127.0.0.1:7102"
        self.assertOnlyProblem(
            doc, "servers.f2.ring", "127.0.0.1:7102 is also the ring address of servers.m2"
        )
        doc = good()
        doc["servers"]["m1"]["ring"] = "[::1]:7100"
        doc["servers"]["m2"]["ring"] = "[0::0:1]:7100"
        problems = self.problems(doc)
        self.assertIn(
            f"{self.path}: servers.m2.ring: [::1]:7100 is also the ring address of servers.m1",
            problems,
        )

    def test_bad_addresses(self) -> None:
        """Ring addresses are IP:PORT or [IPV6]:PORT of a unicast address, port 1-65535."""
        cases = [
            ("127.0.0.1:70000", "port must be 1-65535, not 70000"),
            ("127.0.0.1:0", "port must be 1-65535, not 0"),
            ("127.0.0.1:http", "port must be a number 1-65535, not 'http'"),
            ("127.0.0.1:", "port must be a number 1-65535, not ''"),
            ("127.0.0.1", "must be HOST:PORT (IPv6 as [HOST]:PORT), not '127.0.0.1'"),
            (":7101", "must be HOST:PORT (IPv6 as [HOST]:PORT), not ':7101'"),
            (
                "localhost:7101",
                "'localhost' is not an IP address (host names are not resolved: ring peers "
                "are known by the address their datagrams come from)",
            ),
            ("::1:7101", "an IPv6 address goes in brackets: [::1]:7101, not '::1:7101'"),
            ("[127.0.0.1]:7101", "brackets are for IPv6 addresses only: 127.0.0.1:7101"),
            (
                "0.0.0.0:7101",
                "0.0.0.0 cannot be a ring address: peers send to it, so it must be this "
                "server's own unicast address",
            ),
            (
                "239.1.1.1:7101",
                "239.1.1.1 cannot be a ring address: peers send to it, so it must be this "
                "server's own unicast address",
            ),
        ]
        for ring, text in cases:
            doc = good()
            doc["servers"]["m1"]["ring"] = ring
            self.assertOnlyProblem(doc, "servers.m1.ring", text)

    def test_documented_message(self) -> None:
        """The file is named as the caller named it: loaded as C{cluster.toml}, a bad
        port reads exactly as documented."""
        doc = good()
        doc["servers"]["m2"]["ring"] = "127.0.0.1:70000"
        self.path.write_text(render(doc))
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(self.dir)
        e = self.assertRaises(ClusterConfigError, load_cluster, "cluster.toml")
        self.assertEqual(str(e), "cluster.toml: servers.m2.ring: port must be 1-65535, not 70000")

    @settings(max_examples=100, deadline=None)
    @given(st.one_of(st.integers(max_value=0), st.integers(min_value=65536, max_value=99999)))
    def test_any_bad_port(self, port: int) -> None:
        """Any port outside 1-65535 is refused with the port named."""
        doc = good()
        doc["servers"]["m1"]["ring"] = f"127.0.0.1:{port}"
        text = (
            f"port must be 1-65535, not {port}"
            if port >= 0
            else f"port must be a number 1-65535, not '{port}'"
        )
        self.assertOnlyProblem(doc, "servers.m1.ring", text)

    @settings(max_examples=100, deadline=None)
    @given(
        st.one_of(
            st.ip_addresses(v=4).filter(lambda ip: not (ip.is_multicast or ip.is_unspecified)),
            st.ip_addresses(v=6).filter(lambda ip: not (ip.is_multicast or ip.is_unspecified)),
        ),
        st.integers(1, 65535),
    )
    def test_any_good_address(
        self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int
    ) -> None:
        """Any unicast IP address and port, written either way, loads to (str(ip), port)."""
        doc = good()
        for name in ("m2", "m3"):
            del doc["servers"][name]
        text = f"[{ip.exploded}]:{port}" if ip.version == 6 else f"{ip}:{port}"
        doc["servers"]["m1"]["ring"] = text
        self.assertEqual(self.load(doc).server("m1").ring, (str(ip), port))

    def test_mixed_families(self) -> None:
        """One ring uses one address family."""
        doc = good()
        doc["servers"]["m2"]["ring"] = "[::1]:7102"
        self.assertOnlyProblem(
            doc,
            "servers.m2.ring",
            "IPv6, but servers.m1 (the first msgserver) has an IPv4 ring address: one ring "
            "uses one address family",
        )

    def test_key_file(self) -> None:
        """The key file must exist, be readable and hold at least 16 bytes."""
        self.key_path.unlink()
        self.assertOnlyProblem(good(), "cluster.key_file", f"no such file: {self.key_path}")
        self.key_path.write_bytes(b"x" * 15)
        self.assertOnlyProblem(
            good(),
            "cluster.key_file",
            f"{self.key_path} holds 15 bytes; the key must be at least 16 (make one with: "
            "head -c 32 /dev/urandom > cluster.key)",
        )
        self.key_path.unlink()
        self.key_path.mkdir()
        self.assertOnlyProblem(
            good(), "cluster.key_file", f"{self.key_path} is not a regular file"
        )
        if os.name == "posix" and os.geteuid() != 0:  # root reads anything
            self.key_path.rmdir()
            self.key_path.write_bytes(KEY)
            self.key_path.chmod(0)
            self.assertOnlyProblem(
                good(), "cluster.key_file", f"cannot read {self.key_path}: Permission denied"
            )

    def test_state_dir(self) -> None:
        """state_dir must not be empty nor name a file."""
        doc = good()
        doc["cluster"]["state_dir"] = ""
        self.assertOnlyProblem(doc, "cluster.state_dir", "must not be empty")
        doc["cluster"]["state_dir"] = "cluster.key"
        self.assertOnlyProblem(
            doc, "cluster.state_dir", f"{self.key_path.absolute()} exists and is not a directory"
        )

    def test_transport_needs_its_address(self) -> None:
        """Multicast needs each ring's group, broadcast each ring's broadcast address."""
        doc = good()
        doc["cluster"]["transport"] = "multicast"
        doc["rings"] = {"msgserver": {"broadcast": "127.255.255.255:7300"}}
        missing = 'missing (required when cluster.transport = "multicast")'
        self.assertEqual(
            self.problems(doc),
            (
                f"{self.path}: rings.msgserver.group: {missing}",
                f"{self.path}: rings.fixserver.group: {missing}",
            ),
        )
        doc["cluster"]["transport"] = "broadcast"
        doc["rings"]["fixserver"] = {"group": "239.1.1.1:7100"}
        self.assertOnlyProblem(
            doc,
            "rings.fixserver.broadcast",
            'missing (required when cluster.transport = "broadcast")',
        )

    def test_one_to_many_addresses(self) -> None:
        """A group is an IPv4 multicast address, a broadcast address is IPv4 and not
        multicast, a TTL is 0-255, and the two rings do not share an address."""
        cases = [
            (
                "group",
                "10.0.0.1:7100",
                "10.0.0.1 is not an IPv4 multicast address (224.0.0.0/4; multicast is IPv4 only)",
            ),
            (
                "group",
                "[ff02::1]:7100",
                "ff02::1 is not an IPv4 multicast address (224.0.0.0/4; multicast is IPv4 only)",
            ),
            ("group", "239.1.1.1:99999", "port must be 1-65535, not 99999"),
            ("broadcast", "239.1.1.1:7100", "239.1.1.1 is not an IPv4 broadcast address"),
            ("broadcast", "[::1]:7100", "::1 is not an IPv4 broadcast address"),
            ("broadcast", "0.0.0.0:7100", "0.0.0.0 is not an IPv4 broadcast address"),
            ("ttl", 256, "must be 0-255, not 256"),
            ("ttl", -1, "must be 0-255, not -1"),
        ]
        for key, value, text in cases:
            doc = good()
            doc["cluster"]["transport"] = "multicast"
            doc["rings"] = {
                "msgserver": {"group": "239.1.1.1:7100"},
                "fixserver": {"group": "239.1.1.2:7100", key: value},
            }
            self.assertOnlyProblem(doc, f"rings.fixserver.{key}", text)
        doc = good()
        doc["cluster"]["transport"] = "multicast"
        doc["rings"] = {
            "msgserver": {"group": "239.1.1.1:7100"},
            "fixserver": {"group": "239.1.1.1:7100"},
        }
        self.assertOnlyProblem(
            doc,
            "rings.fixserver.group",
            "239.1.1.1:7100 is also rings.msgserver.group: each ring needs its own",
        )

    def test_one_to_many_is_ipv4(self) -> None:
        """Multicast and broadcast rings need IPv4 ring addresses."""
        doc = good()
        doc["cluster"]["transport"] = "broadcast"
        doc["rings"] = {
            "msgserver": {"broadcast": "127.255.255.255:7300"},
            "fixserver": {"broadcast": "127.255.255.255:7301"},
        }
        for name in ("f1", "f2"):
            doc["servers"][name]["ring"] = doc["servers"][name]["ring"].replace(
                "127.0.0.1", "[::1]"
            )
        self.assertOnlyProblem(doc, "servers.f1.ring", "IPv6, but broadcast is IPv4 only")

    def test_interface(self) -> None:
        """The multicast interface is an IPv4 unicast address."""
        for value in ("eth0", "::1", "239.1.1.1", "0.0.0.0"):
            doc = good()
            doc["cluster"]["interface"] = value
            problems = self.problems(doc)
            self.assertEqual(len(problems), 1, problems)
            self.assertTrue(problems[0].startswith(f"{self.path}: cluster.interface: "), problems)

    def test_bad_endpoints(self) -> None:
        """Endpoint strings Twisted cannot parse, or with a bad port, are refused."""
        cases = [
            ("listen", "foo:1", "bad server endpoint 'foo:1': Unknown endpoint type: 'foo'"),
            (
                "listen",
                "tcp:abc",
                "bad server endpoint 'tcp:abc': invalid literal for int() with base 10: 'abc'",
            ),
            ("listen", "tcp:70000", "port must be 1-65535, not 70000"),
            ("listen", "tcp:0:interface=127.0.0.1", "port must be 1-65535, not 0"),
            (
                "listen",
                "tcp:7011:interface=::1",
                "bad server endpoint 'tcp:7011:interface=::1': _parseTCP() got multiple values "
                "for argument 'interface' (in an endpoint string, escape each ':' of an IPv6 "
                "address as '\\:')",
            ),
            ("connect", "nope:1", "bad client endpoint 'nope:1': Unknown endpoint type: 'nope'"),
            ("connect", "tcp:host=127.0.0.1:port=0", "port must be 1-65535, not 0"),
            ("connect", "tcp:127.0.0.1:99999", "port must be 1-65535, not 99999"),
        ]
        for key, value, text in cases:
            doc = good()
            doc["servers"]["m1"][key] = value
            if key == "listen":
                doc["servers"]["m1"]["connect"] = "tcp:host=127.0.0.1:port=7011"
            self.assertOnlyProblem(doc, f"servers.m1.{key}", text)
        doc = good()
        doc["servers"]["m1"]["connect"] = "tcp:host=127.0.0.1"
        problems = self.problems(doc)
        self.assertEqual(len(problems), 1)
        self.assertTrue(
            problems[0].startswith(
                f"{self.path}: servers.m1.connect: bad client endpoint 'tcp:host=127.0.0.1': "
            ),
            problems,
        )

    def test_connect_required(self) -> None:
        """connect is required unless a tcp listen string names a specific interface."""
        for listen in ("tcp:7011", "tcp:7011:interface=0.0.0.0", "unix:/tmp/lips.sock"):
            doc = good()
            doc["servers"]["m1"]["listen"] = listen
            self.assertOnlyProblem(
                doc,
                "servers.m1.connect",
                "missing: it can only be derived from a tcp or tcp6 listen endpoint with a "
                f"specific interface, and listen is {listen!r}",
            )
            doc["servers"]["m1"]["connect"] = "tcp:host=192.0.2.1:port=7011"
            self.assertEqual(self.load(doc).server("m1").connect, "tcp:host=192.0.2.1:port=7011")

    def test_duplicate_connect(self) -> None:
        """Two servers that clients would reach at the same endpoint are refused."""
        doc = good()
        doc["servers"]["m2"]["listen"] = "tcp:7011:interface=127.0.0.1"
        self.assertOnlyProblem(
            doc,
            "servers.m2.listen",
            "clients would reach it at 'tcp:host=127.0.0.1:port=7011', as servers.m1",
        )
        doc = good()
        doc["servers"]["f1"]["connect"] = "tcp:host=127.0.0.1:port=7012"
        self.assertOnlyProblem(
            doc,
            "servers.f1.connect",
            "clients would reach it at 'tcp:host=127.0.0.1:port=7012', as servers.m2",
        )

    def test_ring_config_errors(self) -> None:
        """RingConfig's own checks are reported under [ring]."""
        doc = good()
        doc["ring"] = {"token_retransmit": 0.5, "token_timeout": 0.4}
        self.assertOnlyProblem(doc, "ring", "token_retransmit must be shorter than token_timeout")
        doc["ring"] = {"hold": -1}
        self.assertOnlyProblem(doc, "ring", "hold must be positive, not -1.0")

    def test_server_names(self) -> None:
        """Server names are safe as file names and command-line arguments."""
        for name in ("a/b", "../x", ".hidden", "x" * 64, "s 1", ""):
            doc = good()
            doc["servers"][name] = doc["servers"].pop("m1")
            self.assertOnlyProblem(
                doc,
                f"servers.{name!r}",
                "a server name is 1-63 letters, digits, '.', '_' and '-', starting with a "
                "letter or digit",
            )

    def test_all_problems_at_once(self) -> None:
        """Every problem in a file is reported, not only the first."""
        doc = good()
        doc["cluster"]["id"] = "7"
        doc["servers"]["m1"]["ring"] = "127.0.0.1:70000"
        doc["servers"]["f1"]["id"] = 0
        doc["servers"]["f2"]["listen"] = "foo:1"
        self.assertEqual(
            [p.split(": ")[1] for p in self.problems(doc)],
            ["cluster.id", "servers.m1.ring", "servers.f1.id", "servers.f2.listen"],
        )

    def test_is_value_error(self) -> None:
        """ClusterConfigError is a ValueError."""
        self.assertTrue(issubclass(ClusterConfigError, ValueError))
        self.assertTrue(issubclass(StateFileError, ValueError))


class RingSeqStoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.path = self.dir / "deep" / "state" / "s1.ringseq"
        self.store = RingSeqStore(self.path)

    def test_absent(self) -> None:
        """With no file yet, the number is 0, and nothing is created by loading."""
        self.assertEqual(self.store.load(), 0)
        self.assertFalse(self.dir.exists())

    def test_round_trip(self) -> None:
        """A saved number loads back, also through a new store; the directory is created
        on demand (mode 0700) and the file holds the number and a newline (mode 0600)."""
        self.assertTrue(self.store.save(41))
        self.assertEqual(self.store.load(), 41)
        self.assertEqual(RingSeqStore(self.path).load(), 41)
        self.assertEqual(self.path.read_bytes(), b"41\n")
        if os.name == "posix":
            self.assertEqual(stat.S_IMODE(self.path.stat().st_mode), 0o600)
            self.assertEqual(stat.S_IMODE(self.path.parent.stat().st_mode) & 0o077, 0)
        self.assertTrue(self.store.save(2**63 - 1))
        self.assertEqual(self.store.load(), 2**63 - 1)

    def test_never_backwards(self) -> None:
        """Saving a number at or below the stored one changes nothing."""
        self.assertTrue(self.store.save(5))
        self.assertFalse(self.store.save(3))
        self.assertFalse(self.store.save(5))
        self.assertFalse(RingSeqStore(self.path).save(4))
        self.assertEqual(self.store.load(), 5)
        self.assertTrue(self.store.save(6))
        self.assertEqual(self.store.load(), 6)

    @settings(max_examples=50, deadline=None)
    @given(st.lists(st.integers(0, 2**63 - 1), max_size=12))
    def test_monotonic(self, seqs: list[int]) -> None:
        """For any sequence of saves, the stored number is the highest so far, and a save
        reports a write exactly when it raised it."""
        if self.path.exists():
            self.path.unlink()
        highest = 0
        for seq in seqs:
            self.assertEqual(self.store.save(seq), seq > highest)
            highest = max(highest, seq)
            self.assertEqual(RingSeqStore(self.path).load(), highest)
        self.assertEqual(self.store.load(), highest)

    def test_bad_numbers(self) -> None:
        """Only integers 0 to 2**63-1 can be saved."""
        for bad in (-1, 2**63, True, 1.0, "3"):
            self.assertRaises(ValueError, self.store.save, bad)
        self.assertFalse(self.path.exists())

    def test_corrupt(self) -> None:
        """A file that does not hold exactly a number and a newline is an error naming the
        file, never read as 0; saving over it refuses and leaves it as it is."""
        self.path.parent.mkdir(parents=True)
        for content in (
            b"",
            b"\n",
            b"12",
            b"12\n\n",
            b"-1\n",
            b"012\n",
            b"1 2\n",
            b"x\n",
            b"\x00" * 8,
            b"9223372036854775808\n",
            b"9" * 100 + b"\n",
        ):
            self.path.write_bytes(content)
            e = self.assertRaises(StateFileError, self.store.load)
            self.assertTrue(
                str(e).startswith(f"{self.path}: corrupt ring sequence file: "), str(e)
            )
            self.assertRaises(StateFileError, self.store.save, 99)
            self.assertEqual(self.path.read_bytes(), content)

    def test_unreadable(self) -> None:
        """A path that cannot be read (here: a directory) is an error naming it."""
        self.path.mkdir(parents=True)
        e = self.assertRaises(StateFileError, self.store.load)
        self.assertTrue(str(e).startswith(f"{self.path}: cannot read"), str(e))

    def test_replaced_not_rewritten(self) -> None:
        """A save writes a new file and renames it over the old one: the old file is
        never rewritten in place, and no temporary file is left behind."""
        self.store.save(1)
        before = self.path.stat().st_ino
        held = self.path.open("rb")  # a reader holding the old file sees it whole
        self.addCleanup(held.close)
        self.store.save(2)
        self.assertNotEqual(self.path.stat().st_ino, before)
        self.assertEqual(held.read(), b"1\n")
        self.assertEqual(sorted(p.name for p in self.path.parent.iterdir()), ["s1.ringseq"])

    def test_failed_write_leaves_old_file(self) -> None:
        """If writing fails at any step before the rename, the old file is unchanged and
        no partial or temporary file is left."""
        self.store.save(7)

        def boom(*args: object) -> None:
            raise OSError(28, "No space left on device")

        for name in ("fsync", "replace"):
            patch = self.patch(os, name, boom)
            self.assertRaises(OSError, self.store.save, 8)
            patch.restore()
            self.assertEqual(self.path.read_bytes(), b"7\n")
            self.assertEqual(sorted(p.name for p in self.path.parent.iterdir()), ["s1.ringseq"])
            self.assertEqual(self.store.load(), 7)
        self.assertTrue(self.store.save(8))

    def test_repr(self) -> None:
        """The repr names the file."""
        self.assertEqual(repr(self.store), f"RingSeqStore({str(self.path)!r})")


class ExportTests(SynchronousTestCase):
    def test_exports(self) -> None:
        """lips.cluster exports what its __all__ says, the objects of its private
        modules."""
        from lips.cluster import _config, _state

        for name in lips.cluster.__all__:
            self.assertTrue(hasattr(lips.cluster, name), name)
        self.assertIs(lips.cluster.load_cluster, _config.load_cluster)
        self.assertIs(lips.cluster.RingSeqStore, _state.RingSeqStore)
