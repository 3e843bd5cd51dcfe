"""
C{twistd lips-ftm}: the Fault Tolerance Manager of a cluster (L{lips.armor.ftm.FTM}),
run on node C{--node} beside that node's lipsd (which must be its ARMOR daemon:
C{twistd lips-node --armor-listen ...}).

The FTM runs in this process and attaches itself to the node's daemon over the daemon's
local socket, proving it holds the cluster key (L{lips.armor.AttachHello}); every
message it sends and receives goes through that daemon, as an ARMOR process's does.
Which FTM it is comes from the System Tuple Space when it starts:

  - no FTM holds an epoch yet: it is the FTM (C{ftm}), and takes epoch 1;
  - the FTM that holds the epoch is this node's own (C{ftm} or C{ftm.s-<node>}, a
    restart of this service): it takes the next epoch over it;
  - another FTM holds it: this one stands by (C{ftm.s-<node>}), a backup that
    heartbeats that FTM and its daemon and takes the next epoch when they stop
    answering.  The FTM also makes a backup of its own on another node; whichever
    backup takes the epoch first is the FTM, the other one is fenced by the space.

Whenever its FTM ends (fenced by a newer epoch, its daemon gone or restarted, a crash of
the FTM's code), the service waits C{--retry} seconds, reads the epoch again and starts
over with the next incarnation, until twistd stops it.  So C{twistd lips-ftm} on two
nodes is an FTM and a standby that never both act in one epoch.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python import usage

from lips.armor import FTM_ID, MessageError, armor_id, check_label, link_key
from lips.armor.ftm import FTM, ArmorEntry, Role, current_ftm
from lips.armor.process import ArmorHost, daemon_socket
from lips.cluster import ClusterConfig, ClusterConfigError, load_cluster
from lips.tap._armor import MAX_SOCKET_PATH
from lips.tap._server import integer_option, number_option
from lips.tuples import ANY

__all__ = ["FtmService", "Options", "makeService", "standby_id"]


def standby_id(node: str) -> str:
    """The id of the standby FTM that C{twistd lips-ftm} runs on C{node}."""
    return armor_id(f"{FTM_ID}.s-{check_label(node, 'a node name')}")


class Options(usage.Options):
    synopsis = "--config CLUSTER.toml --node NODE [options]"
    longdesc = (
        "Run the Fault Tolerance Manager on node --node, attached to that node's ARMOR"
        " daemon (its lipsd with --armor-listen): it takes applications from 'lips"
        " submit', runs each under its strategy with a surrogate manager, keeps the"
        " ARMOR, application and host tables in the System Tuple Space, and makes a"
        " Backup FTM on another node.  Started where another FTM holds the epoch, it"
        " stands by as a backup of that FTM."
    )

    optParameters: list[Any] = [
        ["config", "c", None, "Cluster file (TOML): its FixServers and its key."],
        ["node", None, None, "The node this FTM runs on (its lipsd's --name)."],
        [
            "socket",
            None,
            None,
            "The node's daemon socket (default: lipsd's, under --armor-runtime's default).",
        ],
        [
            "tick",
            None,
            0.5,
            "Seconds between the FTM's rounds (a backup heartbeats the FTM each round).",
            number_option("tick", positive=True),
        ],
        [
            "misses",
            None,
            3,
            "Rounds unanswered after which a backup takes over.",
            integer_option("misses", 1),
        ],
        [
            "retry",
            None,
            1.0,
            "Seconds before starting over when the FTM ended or could not attach.",
            number_option("retry", positive=True),
        ],
    ]

    def postOptions(self) -> None:
        if self["config"] is None:
            raise usage.UsageError("--config is required: the cluster file")
        node = self["node"]
        if node is None:
            raise usage.UsageError("--node is required: the node this FTM runs on")
        try:
            check_label(node, "--node")
        except MessageError:
            raise usage.UsageError(
                "--node names an ARMOR daemon's node: lower-case letters, digits and inner"
                f" hyphens, at most 32 characters, not {node!r}"
            ) from None
        try:
            cluster = load_cluster(self["config"])
        except ClusterConfigError as e:
            raise usage.UsageError(str(e)) from None
        if not cluster.members("fixserver"):
            raise usage.UsageError(f"{self['config']}: no FixServers (the System Tuple Space)")
        if not cluster.key:
            raise usage.UsageError(
                f"{self['config']}: no cluster key (the daemons' links need it)"
            )
        self["cluster"] = cluster
        socket = self["socket"] or daemon_socket(node)
        socket = os.path.abspath(socket)
        if len(socket.encode()) > MAX_SOCKET_PATH:
            raise usage.UsageError(f"--socket {socket!r} is too long a path for a socket")
        self["socket"] = socket


class FtmService(service.Service):
    """
    Runs an FTM of node C{node} attached to the daemon at C{socket} (see the module
    docstring), again and again until stopped.

    @param connect: a client of the System Tuple Space (where the epoch is read).
    @ivar host: the L{ArmorHost} of the FTM running now, if one runs.
    @ivar incarnation: the incarnation of the FTM running now (or last).
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        cluster: ClusterConfig,
        node: str,
        socket: str,
        connect: Any,
        *,
        tick: float = 0.5,
        misses: int = 3,
        retry: float = 1.0,
    ) -> None:
        self.reactor = reactor
        self.cluster = cluster
        self.node = check_label(node, "a node name")
        self.socket = socket
        self.key = link_key(cluster.key)
        self.tick = tick
        self.misses = misses
        self.retry = retry
        self.host: ArmorHost | None = None
        self.incarnation = 0
        self._connect = connect
        self._client: Any = None
        self._run: defer.Deferred[None] | None = None

    def startService(self) -> None:
        service.Service.startService(self)
        self._run = defer.Deferred.fromCoroutine(self._loop())
        self._run.addErrback(lambda f: self.log.failure("lips-ftm stopped", f))

    def stopService(self) -> defer.Deferred[None]:
        service.Service.stopService(self)
        if self.host is not None:
            self.host.stop()
        run, self._run = self._run, None
        if run is not None:
            run.cancel()

        async def close() -> None:
            client, self._client = self._client, None
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.close()

        return defer.Deferred.fromCoroutine(close())

    async def _space(self) -> Any:
        if self._client is None:
            self._client = await self._connect()
        return self._client

    async def choose(self) -> FTM:
        """The FTM to run now, as the epoch in the System Tuple Space says."""
        client = await self._space()
        found = await client.rdp(("ftm-epoch", ANY, ANY))
        holder = current_ftm([found]) if found is not None else None
        mine = {FTM_ID, standby_id(self.node)}
        options: dict[str, Any] = {
            "node": self.node,
            "incarnation": self.incarnation,
            "tick": self.tick,
            "misses": self.misses,
            "heartbeat": {"interval": self.tick, "misses": self.misses},
        }
        if holder is None:
            return FTM(FTM_ID, None, role="primary", epoch=0, **options)
        epoch, ftm = holder
        if ftm in mine:  # this node's own, restarted: the next epoch over it
            return FTM(ftm, None, role="primary", epoch=epoch, **options)
        row = await client.rdp(ArmorEntry.template(ftm))
        if row is None:
            raise LookupError(f"{ftm} holds epoch {epoch} but the ARMOR table has no row of it")
        where = ArmorEntry.from_tuple(row).node
        return FTM(
            standby_id(self.node),
            None,
            role="backup",
            epoch=epoch,
            primary=ftm,
            primary_node=where,
            **options,
        )

    async def _loop(self) -> None:
        while self.running:
            self.incarnation += 1
            try:
                ftm = await self.choose()
            except defer.CancelledError:
                raise
            except Exception as e:
                self.log.warn("lips-ftm: cannot read the epoch yet: {error}", error=str(e))
                self._dead_client()
                await deferLater(self.reactor, self.retry)
                continue
            what = "the FTM" if ftm.role is not Role.BACKUP else f"a standby of {ftm.primary}"
            self.log.info(
                "lips-ftm: {armor} (incarnation {incarnation}) attaches to daemon.{node}"
                " as {what}",
                armor=ftm.id,
                incarnation=self.incarnation,
                node=self.node,
                what=what,
            )
            host = ArmorHost.attaching(
                self.reactor,
                ftm,
                self.socket,
                self.key,
                type="ftm",
                incarnation=self.incarnation,
                node=self.node,
            )
            self.host = host
            try:
                code = await host.run()
            except defer.CancelledError:
                raise
            except Exception as e:
                self.log.warn(
                    "lips-ftm: cannot attach to {socket}: {error}", socket=self.socket, error=e
                )
                code = None
            self.host = None
            if not self.running:
                return
            self.log.info(
                "lips-ftm: {armor} ended (role {role}, epoch {epoch}, status {code});"
                " starting over",
                armor=ftm.id,
                role=ftm.role.value,
                epoch=ftm.epoch,
                code=code,
            )
            await deferLater(self.reactor, self.retry)

    def _dead_client(self) -> None:
        client = self._client
        if client is not None and getattr(client, "state", None) in ("failed", "closed"):
            self._client = None


def makeService(options: Options, reactor: Any = None) -> FtmService:
    """The FTM service C{options} describe."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    import lips.client

    cluster: ClusterConfig = options["cluster"]
    endpoints = cluster.client_endpoints("fixserver")
    node: str = options["node"]

    def connect() -> Any:
        return lips.client.connect(reactor, endpoints, name=f"lips-ftm-{node}", reconnect=True)

    return FtmService(
        reactor,
        cluster,
        node,
        options["socket"],
        connect,
        tick=options["tick"],
        misses=options["misses"],
        retry=options["retry"],
    )
