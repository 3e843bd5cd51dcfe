"""
C{twistd lips-node}: lipsd, the node daemon.  It writes its node's state into the
System Tuple Space (served by the FixServers of the cluster file) every interval, runs
the watchdog over the nodes it is told to watch, and runs the processes eval places on
its node, restarting them when they crash; it restarts the processes of the nodes it
finds down on another node, and stops its own when its reports cannot go in.

With C{--armor-listen} it is also its node's ARMOR daemon (Chameleon's): it installs
and watches ARMOR processes and routes ARMOR messages between nodes
(L{lips.node.DaemonService}, options in L{lips.tap._armor}); without it, lipsd does
exactly what it did before.
"""

from __future__ import annotations

import os
import re
from typing import Any

from twisted.application import service
from twisted.python import usage

from lips.cluster import ClusterConfig, ClusterConfigError, check_client_endpoint, load_cluster
from lips.node import (
    ArmorSpawner,
    IdlePolicy,
    NodeMonitor,
    NodeService,
    ProcessService,
    PsutilSampler,
    ReactorSpawner,
    RestartPolicy,
    Supervisor,
    Watchdog,
    ZygoteSpawner,
    say_goodbye,
)
from lips.tap._armor import ARMOR_PARAMETERS, armor_service, check_armor_options
from lips.tap._server import integer_option, number_option

__all__ = ["Options", "makeService"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


class Options(usage.Options):
    synopsis = "--config CLUSTER.toml --name NODE [options]"
    longdesc = (
        "Run lipsd, the LiPS node daemon: report this node's state into the System Tuple"
        " Space every --interval seconds, and declare the nodes of --watch down when"
        " their reports stop for --misses intervals.  Run the processes eval places on"
        " this node (connected to the MessageServers of --app-config or --app), and"
        " restart a crashed one with the same process id, failing it after"
        " --max-restarts crashes within --restart-window seconds.  Restart the processes"
        " of a node declared down on another idle node, with the same process ids."
    )

    optParameters: list[Any] = [
        ["config", "c", None, "Cluster file (TOML): the FixServers to report to."],
        ["name", None, None, "This node's name (1-63 letters, digits, '.', '_', '-')."],
        [
            "interval",
            "i",
            0.2,
            "Seconds between reports.",
            number_option("interval", positive=True),
        ],
        [
            "misses",
            None,
            3,
            "Intervals without a new report after which a watched node is down (at"
            " least 2: a node fences its processes half an interval before that).",
            integer_option("misses", 2),
        ],
        ["watch", "w", "", "Comma-separated names of the nodes this lipsd watches."],
        [
            "max-load",
            None,
            1.0,
            "Idle policy: highest one-minute load average.",
            number_option("max-load"),
        ],
        [
            "min-cpu-idle",
            None,
            50.0,
            "Idle policy: lowest CPU idle percentage.",
            number_option("min-cpu-idle", top=100),
        ],
        [
            "min-free-memory",
            None,
            256 << 20,
            "Idle policy: fewest free bytes of memory.",
            integer_option("min-free-memory", 0),
        ],
        [
            "app-config",
            None,
            None,
            "Cluster file (TOML) whose MessageServers the processes connect to.",
        ],
        [
            "pythonpath",
            None,
            "",
            "Directories (os.pathsep-separated) put first on the processes' PYTHONPATH.",
        ],
        [
            "restart-delay",
            None,
            0.1,
            "Seconds before the second restart of a crashed process (the first is at once).",
            number_option("restart-delay"),
        ],
        [
            "restart-max-delay",
            None,
            5.0,
            "Longest delay before a restart (the delay doubles with each crash).",
            number_option("restart-max-delay"),
        ],
        [
            "max-restarts",
            None,
            5,
            "Restarts within --restart-window after which a process is failed.",
            integer_option("max-restarts", 0),
        ],
        [
            "restart-window",
            None,
            60.0,
            "Seconds over which crashes are counted.",
            number_option("restart-window", positive=True),
        ],
        *ARMOR_PARAMETERS,
    ]

    def opt_app(self, endpoint: str) -> None:
        """A MessageServer endpoint the processes connect to (repeat for several)."""
        self.setdefault("app", []).append(endpoint)

    def opt_allow(self, pattern: str) -> None:
        """
        Targets this node may run, as a pattern of 'package.module:function' (fnmatch:
        'myapp.tasks:*'); repeat for several.  Without any, it runs no eval'd process.
        """
        if not pattern or any(c.isspace() for c in pattern):
            raise usage.UsageError(
                f"--allow takes a pattern such as 'myapp.tasks:*', not {pattern!r}"
            )
        self.setdefault("allow", []).append(pattern)

    def postOptions(self) -> None:
        if self["config"] is None:
            raise usage.UsageError("--config is required: the cluster file")
        name = self["name"]
        if name is None:
            raise usage.UsageError("--name is required: this node's name")
        if not _NAME.fullmatch(name):
            raise usage.UsageError(f"bad --name {name!r}: 1-63 letters, digits, '.', '_', '-'")
        watch = [w.strip() for w in self["watch"].split(",") if w.strip()]
        for w in watch:
            if not _NAME.fullmatch(w):
                raise usage.UsageError(f"bad node name {w!r} in --watch")
        if len(set(watch)) != len(watch):
            raise usage.UsageError(f"--watch names a node twice: {self['watch']!r}")
        if name in watch:
            raise usage.UsageError(f"--watch must not name this node ({name})")
        self["watch"] = tuple(watch)
        try:
            cluster = load_cluster(self["config"])
        except ClusterConfigError as e:
            raise usage.UsageError(str(e)) from None
        if not cluster.members("fixserver"):
            raise usage.UsageError(f"{self['config']}: no FixServers to report to")
        self["cluster"] = cluster
        endpoints = list(self.get("app", []))
        if self["app-config"] is not None:
            try:
                app = load_cluster(self["app-config"])
            except ClusterConfigError as e:
                raise usage.UsageError(str(e)) from None
            endpoints += app.client_endpoints("msgserver")
            if not endpoints:
                raise usage.UsageError(f"{self['app-config']}: no MessageServers")
        try:
            self["app"] = tuple(check_client_endpoint(e, "--app") for e in endpoints)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        self["allow"] = tuple(self.get("allow", []))
        self["pythonpath"] = tuple(p for p in self["pythonpath"].split(os.pathsep) if p)
        self["restart"] = RestartPolicy(
            delay=self["restart-delay"],
            max_delay=self["restart-max-delay"],
            max_restarts=self["max-restarts"],
            window=self["restart-window"],
        )
        self["policy"] = IdlePolicy(
            max_load=self["max-load"],
            min_cpu_idle=self["min-cpu-idle"],
            min_free_memory=self["min-free-memory"],
        )
        check_armor_options(self, name)


def makeService(options: Options, reactor: Any = None) -> service.MultiService:
    """A MultiService running lipsd as C{options} say."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    import lips.client

    cluster: ClusterConfig = options["cluster"]
    endpoints = cluster.client_endpoints("fixserver")
    name: str = options["name"]
    monitor = NodeMonitor(
        name, PsutilSampler(), reactor, policy=options["policy"], interval=options["interval"]
    )
    watchdog = None
    if options["watch"]:
        watchdog = Watchdog(
            options["watch"], interval=options["interval"], misses=options["misses"]
        )

    def connect() -> Any:
        return lips.client.connect(reactor, endpoints, name=f"lipsd-{name}", reconnect=True)

    supervisor = Supervisor(name, policy=options["restart"])
    # One spawner for every child of lipsd: its eval'd processes and its ARMOR processes.
    armor = options["armor"] is not None
    spawner = (ZygoteSpawner if armor else ReactorSpawner)(
        reactor, pythonpath=options["pythonpath"]
    )

    def connect_processes() -> Any:
        return lips.client.connect(reactor, endpoints, name=f"lipsd-{name}-eval", reconnect=True)

    processes = ProcessService(
        supervisor,
        spawner,
        connect_processes,
        reactor,
        options["app"],
        fenced=True,
        farewell=say_goodbye(reactor),
        allow=options["allow"],
    )

    def connect_as(pid: int) -> Any:
        # A lipsd's sections client (its own, or a down node's lipsd's, to finish its
        # section): a process of the System Tuple Space that recovers, never says goodbye.
        return lips.client.connect(
            reactor, endpoints, pid=pid, name=f"lipsd-{name}-sections", reconnect=True
        )

    # Fence half an interval before a watchdog can declare this node down.
    fence_after = (options["misses"] - 0.5) * options["interval"]
    top = service.MultiService()
    top.addService(
        NodeService(
            monitor,
            connect,
            watchdog,
            processes,
            fence_after=fence_after,
            connect_as=connect_as,
        )
    )
    top.addService(processes)
    if armor:
        assert isinstance(spawner, ArmorSpawner)
        top.addService(armor_service(options, reactor, cluster, spawner))
    return top
