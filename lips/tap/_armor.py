"""
The ARMOR daemon's part of C{twistd lips-node}: its options, their checks, and the
L{DaemonService<lips.node.DaemonService>} they make.  Without C{--armor-listen} none of
it runs and lipsd does what it did before.
"""

from __future__ import annotations

import os
import time
from typing import Any, Final

from twisted.python import usage

from lips.armor import ArmorFactory, Daemon, DaemonPolicy, MessageError, check_label
from lips.armor.process import default_runtime
from lips.cluster import ClusterConfig, check_client_endpoint
from lips.node import ArmorSpawner, DaemonService
from lips.tap._server import integer_option, number_option, tls_options

__all__ = [
    "ARMOR_PARAMETERS",
    "advertised_endpoint",
    "armor_service",
    "check_armor_options",
    "run_number",
]

#: The longest path of a UNIX socket that binds everywhere (sun_path: 108 bytes on
#: Linux, 104 on the BSDs).
MAX_SOCKET_PATH: Final = 100

#: The options that mean something only with --armor-listen, and their defaults
#: (applied after the check, so that a stray one is refused rather than ignored).
_DEFAULTS: Final[dict[str, Any]] = {
    "armor-ping-interval": 1.0,
    "armor-ping-misses": 3,
    "armor-start-timeout": 10.0,
    "armor-kill-grace": 2.0,
    "armor-max": 64,
}

#: The options of TLS on the daemon links: all three, or none.
_TLS: Final = ("armor-tls-cert", "armor-tls-key", "armor-tls-ca")

#: lips-node's ARMOR options, for its C{optParameters}.
ARMOR_PARAMETERS: Final[list[Any]] = [
    [
        "armor-listen",
        None,
        None,
        "Be this node's ARMOR daemon: the daemon link's endpoint for the other nodes'"
        " daemons (tcp:7301:interface=10.0.0.1).",
    ],
    [
        "armor-advertise",
        None,
        None,
        "The client endpoint other daemons dial (default: --armor-listen's interface and port).",
    ],
    [
        "armor-runtime",
        None,
        None,
        "Directory (mode 0700) of the ARMOR processes' socket (default:"
        " $XDG_RUNTIME_DIR/lips-armor/NODE, else $TMPDIR/lips-UID/lips-armor/NODE).",
    ],
    [
        "armor-tls-cert",
        None,
        None,
        "PEM certificate of this node's daemon: daemon links run over TLS (with"
        " --armor-tls-key and --armor-tls-ca; every daemon of the cluster must).",
    ],
    ["armor-tls-key", None, None, "PEM private key of --armor-tls-cert."],
    [
        "armor-tls-ca",
        None,
        None,
        "PEM certificate of the CA that signed every daemon's: a peer must present one.",
    ],
    [
        "armor-ping-interval",
        None,
        None,
        "Seconds between pings of each ARMOR process (default 1).",
        number_option("armor-ping-interval", positive=True),
    ],
    [
        "armor-ping-misses",
        None,
        None,
        "Pings in a row unanswered after which an ARMOR process is hung (default 3).",
        integer_option("armor-ping-misses", 1),
    ],
    [
        "armor-start-timeout",
        None,
        None,
        "Seconds a new ARMOR process has to connect (default 10).",
        number_option("armor-start-timeout", positive=True),
    ],
    [
        "armor-kill-grace",
        None,
        None,
        "Seconds between SIGTERM and SIGKILL for an ARMOR process (default 2).",
        number_option("armor-kill-grace"),
    ],
    [
        "armor-max",
        None,
        None,
        "Most ARMOR processes on this node at once (default 64).",
        integer_option("armor-max", 1),
    ],
]


def _split(description: str) -> tuple[list[str], dict[str, str]]:
    """The positional and keyword parts of an endpoint string (backslash escapes undone)."""
    parts, current, escaped = [], "", False
    for c in description:
        if escaped:
            current, escaped = current + c, False
        elif c == "\\":
            escaped = True
        elif c == ":":
            parts.append(current)
            current = ""
        else:
            current += c
    parts.append(current)
    args = [p for p in parts if "=" not in p]
    kwargs = dict(p.split("=", 1) for p in parts if "=" in p)
    return args, kwargs


def advertised_endpoint(listen: str) -> str | None:
    """
    The client endpoint at which other daemons reach the C{tcp:} server endpoint
    C{listen}, when it names a specific interface; else None.
    """
    args, kwargs = _split(listen)
    if not args or args[0] != "tcp":
        return None
    port = kwargs.get("port", args[1] if len(args) > 1 else "")
    interface = kwargs.get("interface", args[2] if len(args) > 2 else "")
    if not port.isdigit() or interface in ("", "0.0.0.0", "::"):
        return None
    host = interface.replace(":", "\\:")
    return f"tcp:host={host}:port={int(port)}"


def run_number() -> int:
    """
    This run of lipsd's daemon, as its boot number: its start time in microseconds, so
    that a lipsd started again says a new number (the FTM then knows that what ran
    there before is gone, however soon it came back) with nothing kept between runs.
    """
    return max(1, time.time_ns() // 1000)


def check_armor_options(options: usage.Options, name: str) -> None:
    """
    Check the ARMOR options of C{options} (lips-node's, node C{name}); set
    C{options["armor"]} to the daemon's L{DaemonPolicy}, or None without
    C{--armor-listen}.

    @raise usage.UsageError: in one line, naming the option.
    """
    options["armor"] = None
    listen = options["armor-listen"]
    if listen is None:
        for option in ("armor-advertise", "armor-runtime", *_TLS, *_DEFAULTS):
            if options[option] is not None:
                raise usage.UsageError(f"--{option} needs --armor-listen")
        return
    try:
        check_label(name, "--name")
    except MessageError:
        raise usage.UsageError(
            "--armor-listen needs a --name that can label an ARMOR id (lower-case letters,"
            f" digits and inner hyphens, at most 32 characters), not {name!r}"
        ) from None
    from twisted.internet.endpoints import serverFromString

    try:
        serverFromString(object(), listen)
    except Exception as e:
        raise usage.UsageError(f"bad --armor-listen endpoint {listen!r}: {e}") from None
    advertise = options["armor-advertise"]
    if advertise is None:
        advertise = advertised_endpoint(listen)
        if advertise is None:
            raise usage.UsageError(
                f"--armor-listen {listen!r} names no interface other daemons can dial:"
                " say where with --armor-advertise (tcp:host=10.0.0.1:port=7301)"
            )
    try:
        options["armor-advertise"] = check_client_endpoint(advertise, "--armor-advertise")
    except ValueError as e:
        raise usage.UsageError(str(e)) from None
    runtime = os.path.abspath(options["armor-runtime"] or default_runtime(name))
    socket = os.path.join(runtime, "daemon.sock")
    if len(socket.encode()) > MAX_SOCKET_PATH:
        raise usage.UsageError(
            f"--armor-runtime {runtime!r} is too long a path: its socket's would be"
            f" {len(socket.encode())} bytes, and at most {MAX_SOCKET_PATH} can be bound"
        )
    options["armor-runtime"] = runtime
    tls = [options[o] for o in _TLS]
    if any(t is not None for t in tls) and not all(t is not None for t in tls):
        raise usage.UsageError("--armor-tls-cert, --armor-tls-key and --armor-tls-ca go together")
    options["armor-tls"] = None if tls[0] is None else tls_options(*tls)
    value = {k: v if options[k] is None else options[k] for k, v in _DEFAULTS.items()}
    options["armor"] = DaemonPolicy(
        ping_interval=value["armor-ping-interval"],
        ping_misses=value["armor-ping-misses"],
        start_timeout=value["armor-start-timeout"],
        kill_grace=value["armor-kill-grace"],
        max_armors=value["armor-max"],
    )


def armor_service(
    options: usage.Options, reactor: Any, cluster: ClusterConfig, spawner: ArmorSpawner
) -> DaemonService:
    """The daemon of lips-node's C{options} (checked with an C{"armor"} policy)."""
    import lips.client

    policy: DaemonPolicy = options["armor"]
    name: str = options["name"]
    endpoints = cluster.client_endpoints("fixserver")

    def connect() -> Any:
        return lips.client.connect(reactor, endpoints, name=f"lipsd-{name}-armor", reconnect=True)

    daemon = Daemon(
        name,
        policy=policy,
        types=ArmorFactory().names(),
        allow=options["allow"],
        boot=run_number(),
    )
    return DaemonService(
        daemon,
        spawner,
        connect,
        reactor,
        key=cluster.key,
        runtime=options["armor-runtime"],
        listen=options["armor-listen"],
        advertise=options["armor-advertise"],
        tls=options["armor-tls"],
    )
