"""
The cluster file: one TOML file describing every server of a LiPS cluster.

L{load_cluster} reads it, checks all of it and returns a L{ClusterConfig}; the format is
described in C{docs/cluster.md}.  Nothing is guessed: unknown tables and keys, values of
the wrong type, clashing ids or addresses and endpoint strings Twisted cannot parse are
refused.  Every problem found is reported in one L{ClusterConfigError}, one line each,
naming the file and the key::

    cluster.toml: servers.s2.ring: port must be 1-65535, not 70000

Each role (C{msgserver}, C{fixserver}) forms its own ring.  Both rings share the cluster's
key, but each seals its datagrams with its own cluster id, C{(id << 1) | bit} (bit 0 for
the MessageServers, 1 for the FixServers), so the two rings can never take each other's
datagrams.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import stat
import tomllib
import typing
from collections.abc import Collection, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Final, Literal, TypeAlias, TypeVar

import attrs
from OpenSSL import crypto

from lips.cluster._state import RingSeqStore
from lips.ring import MAX_NODE, MIN_KEY, Mode, RingConfig, Sealer

__all__ = [
    "MAX_CLUSTER_ID",
    "ROLES",
    "TIMINGS",
    "TRANSPORTS",
    "Address",
    "ClusterConfig",
    "ClusterConfigError",
    "OneToMany",
    "Role",
    "ServerEntry",
    "Timings",
    "Transport",
    "load_cluster",
]

Role: TypeAlias = Literal["msgserver", "fixserver"]
Transport: TypeAlias = Literal["unicast", "multicast", "broadcast"]
Timings: TypeAlias = Literal["lan", "loopback"]
Address: TypeAlias = tuple[str, int]
"""A UDP address: an IP address (IPv6 without brackets) and a port."""

#: The server roles, each with its own ring.
ROLES: Final[tuple[Role, ...]] = ("msgserver", "fixserver")
#: How a ring sends to all its members.
TRANSPORTS: Final[tuple[Transport, ...]] = ("unicast", "multicast", "broadcast")
#: The ring timing presets.
TIMINGS: Final[tuple[Timings, ...]] = ("lan", "loopback")
#: The largest cluster id: 31 bits, the 32nd tells the two rings apart.
MAX_CLUSTER_ID: Final = 2**31 - 1

_ROLE_BIT: Final[Mapping[Role, int]] = {"msgserver": 0, "fixserver": 1}
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_PORT: Final = re.compile(r"[0-9]{1,5}")
_TOP_KEYS: Final = ("cluster", "ring", "rings", "servers")
_CLUSTER_KEYS: Final = (
    "id",
    "key_file",
    "encrypt",
    "transport",
    "timings",
    "state_dir",
    "interface",
    "require_tls",
    "durable",
)
_RINGS_KEYS: Final = ("group", "broadcast", "ttl")
_SERVER_KEYS: Final = ("role", "id", "ring", "listen", "connect")
_KIND_NAMES: Final[Mapping[type, str]] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
}

_V = TypeVar("_V", str, int, float, bool)
_IP: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address


class ClusterConfigError(ValueError):
    """
    The cluster file is wrong: C{problems} holds one line per problem, each naming the
    file and the key.
    """

    def __init__(self, *problems: str) -> None:
        super().__init__("\n".join(problems))
        self.problems: tuple[str, ...] = problems


def _role(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in ROLES:
        raise ValueError(f"{attribute.name} must be one of {ROLES}, not {value!r}")


def _address(instance: object, attribute: attrs.Attribute[Address], value: Address) -> None:
    if not (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
    ):
        raise TypeError(f"{attribute.name} must be a (host, port) tuple, not {value!r}")


@attrs.frozen
class ServerEntry:
    """
    One server of the cluster.

    @ivar name: its name (the key of its C{[servers.NAME]} table; C{--name} selects it).
    @ivar role: C{"msgserver"} or C{"fixserver"}: the ring it belongs to.
    @ivar id: its ring node id, unique within its role.
    @ivar ring: the UDP address of its ring socket.
    @ivar listen: the Twisted server endpoint string it serves clients on.
    @ivar connect: the Twisted client endpoint string clients reach it with.
    """

    name: str = attrs.field(validator=attrs.validators.instance_of(str))
    role: Role = attrs.field(validator=_role)
    id: int = attrs.field(validator=attrs.validators.instance_of(int))
    ring: Address = attrs.field(validator=_address)
    listen: str = attrs.field(validator=attrs.validators.instance_of(str))
    connect: str = attrs.field(validator=attrs.validators.instance_of(str))


@attrs.frozen
class OneToMany:
    """
    The one-to-many addresses of one role's ring (its C{[rings.ROLE]} table); which one
    is used depends on the cluster's transport.

    @ivar group: the multicast group and port (transport C{"multicast"}).
    @ivar broadcast: the IPv4 broadcast address and port (transport C{"broadcast"}).
    @ivar ttl: the multicast time-to-live.
    """

    group: Address | None = None
    broadcast: Address | None = None
    ttl: int = 1


@attrs.frozen
class ClusterConfig:
    """
    A checked cluster file.

    @ivar path: the file it was loaded from.
    @ivar cluster_id: the cluster id (31 bits).
    @ivar key: the shared secret of both rings (not shown in the repr).
    @ivar encrypt: encrypt ring datagrams (else authenticate only).
    @ivar transport: how a ring sends to all its members.
    @ivar timings: the timing preset C{ring_config} starts from.
    @ivar ring_config: the ring's timings and limits, with the file's overrides.
    @ivar state_dir: where servers keep their persistent state (absolute).
    @ivar durable: every server keeps a journal of what it applies in the state
        directory and comes back with its state after a restart, the whole cluster's
        too (L{journal_dir}); the ring config's C{durable} is set with it.
    @ivar interface: the local interface for multicast, or C{None}.
    @ivar servers: every server by name, in file order.
    @ivar one_to_many: each role's C{[rings.ROLE]} table, or C{None} without one.
    @ivar require_tls: the roles whose servers must be reached only over TLS with client
        certificates: their C{connect} endpoints are C{ssl:} with a certificate and key,
        and each such server refuses to start without C{--tls-client-ca}.
    @ivar warnings: problems that do not stop loading (a key file others can read, TLS
        files that cannot be read on this machine), one line each.
    """

    path: Path
    cluster_id: int
    key: bytes = attrs.field(repr=False)
    encrypt: bool
    transport: Transport
    timings: Timings
    ring_config: RingConfig
    state_dir: Path
    interface: str | None
    servers: Mapping[str, ServerEntry]
    one_to_many: Mapping[Role, OneToMany | None]
    require_tls: frozenset[Role] = frozenset()
    durable: bool = False
    warnings: tuple[str, ...] = ()

    def server(self, name: str) -> ServerEntry:
        """
        The server called C{name}.

        @raise ClusterConfigError: there is none; the message lists the names there are.
        """
        try:
            return self.servers[name]
        except KeyError:
            known = ", ".join(sorted(self.servers)) or "none"
            raise ClusterConfigError(
                f"{self.path}: no server named {name!r} (servers: {known})"
            ) from None

    def members(self, role: Role) -> list[ServerEntry]:
        """The servers of C{role}'s ring, by id."""
        self._check_role(role)
        return sorted((s for s in self.servers.values() if s.role == role), key=lambda s: s.id)

    def ring_peers(self, role: Role) -> dict[int, Address]:
        """The ring address of every member of C{role}'s ring, by node id."""
        return {s.id: s.ring for s in self.members(role)}

    def ring_cluster(self, role: Role) -> int:
        """The cluster id C{role}'s ring seals its datagrams with."""
        self._check_role(role)
        return (self.cluster_id << 1) | _ROLE_BIT[role]

    def sealer(self, role: Role) -> Sealer:
        """A L{Sealer} for the datagrams of C{role}'s ring."""
        mode = Mode.ENCRYPTED if self.encrypt else Mode.AUTHENTICATED
        return Sealer(self.key, self.ring_cluster(role), mode)

    def one_to_many_address(self, role: Role) -> Address | None:
        """
        Where C{role}'s ring sends what is for all members: its multicast group or
        broadcast address as the transport says, or C{None} for unicast.
        """
        self._check_role(role)
        addresses = self.one_to_many[role]
        if self.transport == "unicast" or addresses is None:
            return None
        return addresses.group if self.transport == "multicast" else addresses.broadcast

    def client_endpoints(self, role: Role) -> list[str]:
        """The client endpoint strings of C{role}'s servers, by id."""
        return [s.connect for s in self.members(role)]

    def ring_seq_store(self, name: str) -> RingSeqStore:
        """The store of server C{name}'s ring sequence number."""
        return RingSeqStore(self.state_dir / f"{self.server(name).name}.ringseq")

    def journal_dir(self, name: str) -> Path:
        """The directory of server C{name}'s journal (see L{lips.replica.Journal})."""
        return self.state_dir / f"{self.server(name).name}.journal"

    def _check_role(self, role: str) -> None:
        if role not in ROLES:
            raise ClusterConfigError(f"{self.path}: no role {role!r} (roles: {', '.join(ROLES)})")


def load_cluster(path: str | os.PathLike[str]) -> ClusterConfig:
    """
    Read and check a cluster file.

    Relative paths in it (C{key_file}, C{state_dir}) are relative to the file's directory.

    @raise ClusterConfigError: the file cannot be read, is not TOML or is wrong; every
        problem found is listed.
    """
    return _Loader(Path(path)).load()


# -- loading ------------------------------------------------------------------------------


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _describe(value: object) -> str:
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"a date or time ({value})"


def _show(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _family(ip: _IP) -> str:
    return f"IPv{ip.version}"


def _endpoint_parts(description: str) -> tuple[list[str], dict[str, str]]:
    """
    Split an endpoint description as Twisted does: C{:} separates arguments, the first
    C{=} of one names it, a backslash escapes the next character.
    """
    args: list[str] = []
    kwargs: dict[str, str] = {}
    pieces: list[str] = []
    current = ""
    ops = ":="
    chars = iter(description)

    def add() -> None:
        if len(pieces) == 1:
            args.append(pieces[0])
        else:
            kwargs[pieces[0]] = pieces[1]

    for c in chars:
        if c in ops:
            pieces.append(current)
            current = ""
            if c == ":":
                add()
                pieces = []
                ops = ":="
            else:
                ops = ":"
        elif c == "\\":
            current += next(chars, "")
        else:
            current += c
    pieces.append(current)
    add()
    return args, kwargs


def _escape(value: str) -> str:
    """Quote C{value} for an endpoint description."""
    return value.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def _hint(description: str) -> str:
    """A hint for a bad endpoint string that looks like it holds a raw IPv6 address."""
    if "::" in description or "[" in description:
        return " (in an endpoint string, escape each ':' of an IPv6 address as '\\:')"
    return ""


def check_client_endpoint(description: str, what: str = "endpoint") -> str:
    """
    C{description} if it is a client endpoint string that can be used on this machine
    (C{tcp:host=...:port=...}, C{ssl:...} with readable files, ...), checked as the
    cluster file's C{connect} strings are.

    @raise ValueError: naming C{what}, the string and what is wrong with it.
    """
    from twisted.internet.endpoints import clientFromString

    try:
        clientFromString(_inert_reactor(), description)
    except (OSError, crypto.Error) as e:
        # A file an ssl: endpoint names that cannot be read: the endpoint is for use on
        # this machine, so this is an error here (a cluster file only warns).
        raise ValueError(f"{what}: cannot use {description!r}: {e}") from None
    except Exception:
        pass  # the loader's check below says what is wrong, with a hint
    loader = _Loader(Path(what))
    if not loader.connect("", description):
        raise ValueError(loader.problems[0].replace(f"{what}: : ", f"{what}: ", 1))
    return description


def _inert_reactor() -> typing.Any:
    """A reactor that never does anything, for parsing endpoints without using them."""
    from twisted.internet.testing import MemoryReactor

    return MemoryReactor()


@attrs.define
class _Server:
    """A server table whose own values are good, before the cross-checks."""

    entry: ServerEntry
    ip: _IP
    connect_derived: bool


class _Loader:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.base = path.parent
        self.problems: list[str] = []
        self.warnings: list[str] = []
        self.reported: set[str] = set()

    # -- reporting ------------------------------------------------------------------------

    def problem(self, where: str, text: str) -> None:
        self.reported.add(where)
        self.problems.append(f"{self.path}: {where}: {text}" if where else f"{self.path}: {text}")

    def warn(self, where: str, text: str) -> None:
        self.warnings.append(f"{self.path}: {where}: {text}")

    # -- typed access ---------------------------------------------------------------------

    def known_keys(self, table: Mapping[str, object], where: str, known: Collection[str]) -> None:
        for key in table:
            if key in known:
                continue
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            what = "table" if isinstance(table[key], dict) else "key"
            self.problem(
                where,
                f"unknown {what} {key!r} ({hint}known: {', '.join(sorted(known))})",
            )

    def table(
        self, parent: Mapping[str, object], key: str, where: str, *, required: bool = False
    ) -> dict[str, object] | None:
        here = _join(where, key)
        if key not in parent:
            if required:
                self.problem(here, "missing (required)")
            return None
        value = parent[key]
        if not isinstance(value, dict):
            self.problem(here, f"must be a table, not {_describe(value)}")
            return None
        return value

    def get(
        self,
        table: Mapping[str, object],
        key: str,
        where: str,
        kind: type[_V],
        *,
        required: bool = False,
    ) -> _V | None:
        here = _join(where, key)
        if key not in table:
            if required:
                self.problem(here, "missing (required)")
            return None
        value = table[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
            return value
        self.problem(here, f"must be {_KIND_NAMES[kind]}, not {_describe(value)}")
        return None

    def choice(
        self, table: Mapping[str, object], key: str, where: str, choices: tuple[str, ...]
    ) -> str | None:
        value = self.get(table, key, where, str)
        if value is not None and value not in choices:
            listed = ", ".join(repr(c) for c in choices)
            self.problem(_join(where, key), f"must be one of {listed}, not {value!r}")
            return None
        return value

    def ip(self, where: str, text: str) -> _IP | None:
        try:
            return ipaddress.ip_address(text)
        except ValueError:
            self.problem(
                where,
                f"{text!r} is not an IP address (host names are not resolved: ring "
                "peers are known by the address their datagrams come from)",
            )
            return None

    def address(self, where: str, text: str) -> tuple[_IP, int] | None:
        """C{HOST:PORT} or C{[IPV6]:PORT}, with an IP address and a port 1-65535."""
        bracketed = re.fullmatch(r"\[([^\[\]]*)\]:(.*)", text)
        if bracketed is not None:
            host, port_text = bracketed[1], bracketed[2]
        else:
            host, colon, port_text = text.rpartition(":")
            if not colon or not host:
                self.problem(where, f"must be HOST:PORT (IPv6 as [HOST]:PORT), not {text!r}")
                return None
            if ":" in host:
                self.problem(
                    where, f"an IPv6 address goes in brackets: [{host}]:{port_text}, not {text!r}"
                )
                return None
        port = self.port(where, port_text)
        ip = self.ip(where, host)
        if ip is None or port is None:
            return None
        if bracketed is not None and ip.version == 4:
            self.problem(where, f"brackets are for IPv6 addresses only: {host}:{port_text}")
            return None
        return ip, port

    def port(self, where: str, text: str) -> int | None:
        if _PORT.fullmatch(text) is None:
            self.problem(where, f"port must be a number 1-65535, not {text!r}")
            return None
        port = int(text)
        if not 1 <= port <= 65535:
            self.problem(where, f"port must be 1-65535, not {port}")
            return None
        return port

    # -- the file -------------------------------------------------------------------------

    def load(self) -> ClusterConfig:
        try:
            with open(self.path, "rb") as f:
                document = tomllib.load(f)
        except OSError as e:
            raise ClusterConfigError(f"{self.path}: cannot read: {e.strerror or e}") from None
        except tomllib.TOMLDecodeError as e:
            raise ClusterConfigError(f"{self.path}: not valid TOML: {e}") from None
        except UnicodeDecodeError as e:
            raise ClusterConfigError(f"{self.path}: not valid TOML: not UTF-8 ({e})") from None

        self.known_keys(document, "", _TOP_KEYS)
        table = self.table(document, "cluster", "", required=True)
        cluster = table if table is not None else {}
        given = table is not None  # else only "missing" is said, not each of its keys
        self.known_keys(cluster, "cluster", _CLUSTER_KEYS)
        cluster_id = self.get(cluster, "id", "cluster", int, required=given)
        if cluster_id is not None and not 0 <= cluster_id <= MAX_CLUSTER_ID:
            self.problem("cluster.id", f"must be 0-{MAX_CLUSTER_ID} (31 bits), not {cluster_id}")
            cluster_id = None
        key = self.key(cluster, given)
        encrypt = self.get(cluster, "encrypt", "cluster", bool)
        transport = self.choice(cluster, "transport", "cluster", TRANSPORTS) or "unicast"
        timings = self.choice(cluster, "timings", "cluster", TIMINGS) or "lan"
        state_dir = self.state_dir(cluster, given)
        interface = self.interface(cluster)
        require_tls = self.require_tls(cluster)
        durable = bool(self.get(cluster, "durable", "cluster", bool))

        ring_config = self.ring_config(document, timings)
        if ring_config is not None and durable:
            ring_config = attrs.evolve(ring_config, durable=True)
        one_to_many = self.rings(document)
        servers = self.servers(document)
        self.cross_check(servers, transport, one_to_many)
        self.check_tls(servers, require_tls)

        if self.problems:
            raise ClusterConfigError(*self.problems)
        assert cluster_id is not None and key is not None
        assert state_dir is not None and ring_config is not None
        return ClusterConfig(
            path=self.path,
            cluster_id=cluster_id,
            key=key,
            encrypt=bool(encrypt),
            transport=typing.cast(Transport, transport),
            timings=typing.cast(Timings, timings),
            ring_config=ring_config,
            state_dir=state_dir,
            interface=interface,
            servers=MappingProxyType({s.entry.name: s.entry for s in servers}),
            one_to_many=MappingProxyType(one_to_many),
            require_tls=require_tls,
            durable=durable,
            warnings=tuple(self.warnings),
        )

    def require_tls(self, cluster: Mapping[str, object]) -> frozenset[Role]:
        value = cluster.get("require_tls", [])
        if not isinstance(value, list) or not all(isinstance(r, str) for r in value):
            self.problem("cluster.require_tls", f"must be a list of roles, not {_describe(value)}")
            return frozenset()
        roles = []
        for role in value:
            if role not in ROLES:
                self.problem("cluster.require_tls", f"{role!r} is not a role ({', '.join(ROLES)})")
            else:
                roles.append(typing.cast(Role, role))
        return frozenset(roles)

    def check_tls(self, servers: list[_Server], required: frozenset[Role]) -> None:
        """Servers of a role that requires TLS are reached only with client certificates."""
        for s in servers:
            if s.entry.role not in required:
                continue
            args, kwargs = _endpoint_parts(s.entry.connect)
            if args[:1] != ["ssl"] or not {"certKey", "privateKey"} <= kwargs.keys():
                self.problem(
                    f"servers.{s.entry.name}.connect",
                    f"cluster.require_tls names {s.entry.role}s: connect must be an ssl:"
                    " endpoint with the client's certificate and key (certKey=...:"
                    f"privateKey=...), not {s.entry.connect!r}",
                )

    def key(self, cluster: Mapping[str, object], required: bool) -> bytes | None:
        name = self.get(cluster, "key_file", "cluster", str, required=required)
        if name is None:
            return None
        where = "cluster.key_file"
        path = self.base / name
        try:
            mode = path.stat().st_mode
            if not stat.S_ISREG(mode):
                self.problem(where, f"{path} is not a regular file")
                return None
            key = path.read_bytes()
        except FileNotFoundError:
            self.problem(where, f"no such file: {path}")
            return None
        except OSError as e:
            self.problem(where, f"cannot read {path}: {e.strerror or e}")
            return None
        if len(key) < MIN_KEY:
            self.problem(
                where,
                f"{path} holds {len(key)} bytes; the key must be at least {MIN_KEY} "
                f"(make one with: head -c 32 /dev/urandom > {name})",
            )
            return None
        if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
            self.warn(
                where,
                f"{path} can be read or written by group or others "
                f"(mode {stat.S_IMODE(mode):04o}); chmod 600 it",
            )
        return key

    def state_dir(self, cluster: Mapping[str, object], required: bool) -> Path | None:
        name = self.get(cluster, "state_dir", "cluster", str, required=required)
        if name is None:
            return None
        if not name:
            self.problem("cluster.state_dir", "must not be empty")
            return None
        path = (self.base / name).absolute()
        if path.exists() and not path.is_dir():
            self.problem("cluster.state_dir", f"{path} exists and is not a directory")
            return None
        return path

    def ring_config(self, document: Mapping[str, object], timings: str) -> RingConfig | None:
        base = RingConfig.loopback() if timings == "loopback" else RingConfig()
        table = self.table(document, "ring", "")
        if table is None:
            return base
        hints = typing.get_type_hints(RingConfig)
        # Whether the ring stores what it delivers is the cluster's (cluster.durable).
        names = [f.name for f in attrs.fields(RingConfig) if f.name != "durable"]
        self.known_keys(table, "ring", names)
        overrides: dict[str, typing.Any] = {}
        good = True
        for name in names:
            kind = hints.get(name)
            if name not in table:
                continue
            if not isinstance(kind, type) or kind not in _KIND_NAMES:
                self.problem(f"ring.{name}", "cannot be set in the cluster file")
                good = False
                continue
            value = self.get(table, name, "ring", kind)
            if value is None:
                good = False
            else:
                overrides[name] = value
        if not good or any(name not in names for name in table):
            return None
        try:
            return attrs.evolve(base, **overrides)
        except (ValueError, TypeError) as e:
            self.problem("ring", str(e))
            return None

    def interface(self, cluster: Mapping[str, object]) -> str | None:
        text = self.get(cluster, "interface", "cluster", str)
        if text is None:
            return None
        ip = self.ip("cluster.interface", text)
        if ip is None:
            return None
        if ip.version != 4 or ip.is_multicast or ip.is_unspecified:
            self.problem(
                "cluster.interface",
                f"{ip} is not an interface address (multicast is IPv4 only: give the "
                "IPv4 address of the interface to join the groups on)",
            )
            return None
        return str(ip)

    def rings(self, document: Mapping[str, object]) -> dict[Role, OneToMany | None]:
        """Each role's one-to-many addresses, C{None} for a role without a table."""
        found: dict[Role, OneToMany | None] = dict.fromkeys(ROLES)
        rings = self.table(document, "rings", "")
        if rings is None:
            return found
        self.known_keys(rings, "rings", ROLES)
        for role in ROLES:
            where = f"rings.{role}"
            table = self.table(rings, role, "rings")
            if table is None:
                continue
            self.known_keys(table, where, _RINGS_KEYS)
            group = broadcast = None
            text = self.get(table, "group", where, str)
            if text is not None:
                parsed = self.address(f"{where}.group", text)
                if parsed is not None and (parsed[0].version != 4 or not parsed[0].is_multicast):
                    self.problem(
                        f"{where}.group",
                        f"{parsed[0]} is not an IPv4 multicast address (224.0.0.0/4; "
                        "multicast is IPv4 only)",
                    )
                elif parsed is not None:
                    group = (str(parsed[0]), parsed[1])
            text = self.get(table, "broadcast", where, str)
            if text is not None:
                parsed = self.address(f"{where}.broadcast", text)
                if parsed is not None and (
                    parsed[0].version != 4 or parsed[0].is_multicast or parsed[0].is_unspecified
                ):
                    self.problem(
                        f"{where}.broadcast",
                        f"{parsed[0]} is not an IPv4 broadcast address",
                    )
                elif parsed is not None:
                    broadcast = (str(parsed[0]), parsed[1])
            ttl = self.get(table, "ttl", where, int)
            if ttl is not None and not 0 <= ttl <= 255:
                self.problem(f"{where}.ttl", f"must be 0-255, not {ttl}")
            found[role] = OneToMany(group, broadcast, 1 if ttl is None else ttl)
        return found

    def servers(self, document: Mapping[str, object]) -> list[_Server]:
        table = self.table(document, "servers", "", required=True)
        if table is None:
            return []
        if not table:
            self.problem("servers", "no servers: add a [servers.NAME] table for each")
            return []
        found = []
        for name, value in table.items():
            good_name = _NAME.fullmatch(name) is not None
            where = f"servers.{name}" if good_name else f"servers.{name!r}"
            if not good_name:
                self.problem(
                    where,
                    "a server name is 1-63 letters, digits, '.', '_' and '-', "
                    "starting with a letter or digit",
                )
            if not isinstance(value, dict):
                self.problem(where, f"must be a table, not {_describe(value)}")
                continue
            server = self.server(name, where, value)
            if server is not None and good_name:
                found.append(server)
        return found

    def server(self, name: str, where: str, table: Mapping[str, object]) -> _Server | None:
        self.known_keys(table, where, _SERVER_KEYS)
        role = self.get(table, "role", where, str, required=True)
        if role is not None and role not in ROLES:
            listed = ", ".join(repr(r) for r in ROLES)
            self.problem(f"{where}.role", f"must be one of {listed}, not {role!r}")
            role = None
        node = self.get(table, "id", where, int, required=True)
        if node is not None and not 1 <= node <= MAX_NODE:
            self.problem(f"{where}.id", f"must be 1-{MAX_NODE}, not {node}")
            node = None
        ring_text = self.get(table, "ring", where, str, required=True)
        ring = None
        if ring_text is not None:
            ring = self.address(f"{where}.ring", ring_text)
            if ring is not None and (ring[0].is_multicast or ring[0].is_unspecified):
                self.problem(
                    f"{where}.ring",
                    f"{ring[0]} cannot be a ring address: peers send to it, so it must "
                    "be this server's own unicast address",
                )
                ring = None
        listen = self.get(table, "listen", where, str, required=True)
        derived = None
        if listen is not None:
            good, derived = self.listen(f"{where}.listen", listen)
            if not good:
                listen = None
        connect = self.get(table, "connect", where, str)
        connect_derived = connect is None
        if connect is not None:
            if not self.connect(f"{where}.connect", connect):
                return None
        elif listen is not None:
            if derived is None:
                self.problem(
                    f"{where}.connect",
                    f"missing: it can only be derived from a tcp or tcp6 listen endpoint "
                    f"with a specific interface, and listen is {listen!r}",
                )
                return None
            connect = derived
        if role is None or node is None or ring is None or listen is None or connect is None:
            return None
        entry = ServerEntry(name, role, node, (str(ring[0]), ring[1]), listen, connect)
        return _Server(entry, ring[0], connect_derived)

    def listen(self, where: str, description: str) -> tuple[bool, str | None]:
        """
        Check a server endpoint string: whether it is good, and the client endpoint
        derived from it when it can be.
        """
        from twisted.internet.endpoints import serverFromString

        try:
            serverFromString(_inert_reactor(), description)
        except (OSError, crypto.Error) as e:
            self.warn(where, f"cannot be checked on this machine ({e}); its server checks it")
        except Exception as e:
            self.problem(where, f"bad server endpoint {description!r}: {e}{_hint(description)}")
            return False, None
        args, kwargs = _endpoint_parts(description)
        if not args or args[0] not in ("tcp", "tcp6", "ssl"):
            return True, None
        port_text = kwargs.get("port", args[1] if len(args) > 1 else "")
        if self.port(where, port_text) is None:
            return False, None
        interface = kwargs.get("interface", args[2] if len(args) > 2 and args[0] != "ssl" else "")
        if args[0] == "ssl" or interface in ("", "0.0.0.0", "::"):
            return True, None
        return True, f"tcp:host={_escape(interface)}:port={int(port_text)}"

    def connect(self, where: str, description: str) -> bool:
        """Check a client endpoint string."""
        from twisted.internet.endpoints import clientFromString

        try:
            clientFromString(_inert_reactor(), description)
        except (OSError, crypto.Error) as e:
            self.warn(where, f"cannot be checked on this machine ({e}); its clients check it")
        except Exception as e:
            self.problem(where, f"bad client endpoint {description!r}: {e}{_hint(description)}")
            return False
        args, kwargs = _endpoint_parts(description)
        if not args or args[0].lower() not in ("tcp", "ssl"):
            return True
        rest = args[1:]
        port_text = kwargs.get(
            "port", rest[-1] if rest and ("host" in kwargs or len(rest) > 1) else ""
        )
        return self.port(where, port_text) is not None

    # -- across tables --------------------------------------------------------------------

    def cross_check(
        self,
        servers: list[_Server],
        transport: str,
        one_to_many: Mapping[Role, OneToMany | None],
    ) -> None:
        ids: dict[tuple[str, int], str] = {}
        rings: dict[Address, str] = {}
        connects: dict[str, str] = {}
        families: dict[str, tuple[int, str]] = {}
        for s in servers:
            e, where = s.entry, f"servers.{s.entry.name}"
            other = ids.setdefault((e.role, e.id), e.name)
            if other != e.name:
                self.problem(
                    f"{where}.id",
                    f"{e.id} is also the id of servers.{other}: ids are unique within "
                    f"a role ({e.role})",
                )
            other = rings.setdefault(e.ring, e.name)
            if other != e.name:
                self.problem(
                    f"{where}.ring",
                    f"{_show(*e.ring)} is also the ring address of servers.{other}",
                )
            other = connects.setdefault(e.connect, e.name)
            if other != e.name:
                key = "listen" if s.connect_derived else "connect"
                self.problem(
                    f"{where}.{key}",
                    f"clients would reach it at {e.connect!r}, as servers.{other}",
                )
            version, first = families.setdefault(e.role, (s.ip.version, e.name))
            if version != s.ip.version:
                self.problem(
                    f"{where}.ring",
                    f"{_family(s.ip)}, but servers.{first} (the first {e.role}) has an "
                    f"IPv{version} ring address: one ring uses one address family",
                )
        if transport == "unicast":
            return
        key = "group" if transport == "multicast" else "broadcast"
        seen: dict[Address, Role] = {}
        for role in ROLES:
            if role not in families:
                continue  # no members, no ring
            where = f"rings.{role}.{key}"
            found = one_to_many[role]
            address: Address | None = None if found is None else getattr(found, key)
            if address is None:
                if where not in self.reported:  # else it was given, and is bad
                    self.problem(
                        where, f'missing (required when cluster.transport = "{transport}")'
                    )
                continue
            version, first = families[role]
            if version != 4:
                self.problem(
                    f"servers.{first}.ring",
                    f"IPv{version}, but {transport} is IPv4 only",
                )
            other = seen.setdefault(address, role)
            if other != role:
                self.problem(
                    where,
                    f"{_show(*address)} is also rings.{other}.{key}: each ring needs its own",
                )
