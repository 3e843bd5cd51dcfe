"""
Cluster files for tests and benchmarks: a key and a TOML file describing servers that a
test or benchmark then starts itself.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import attrs

__all__ = ["ClusterMember", "write_cluster"]


@attrs.frozen
class ClusterMember:
    """One server of a cluster file: its name, ring id, address and ports."""

    name: str
    id: int
    ring_port: int
    tcp_port: int
    host: str = "127.0.0.1"
    role: str = "msgserver"


def write_cluster(
    directory: Path,
    members: Sequence[ClusterMember],
    *,
    transport: str = "unicast",
    one_to_many: str = "",
    timings: str = "loopback",
    cluster_id: int = 11,
    durable: bool = False,
) -> Path:
    """
    Write a fresh random key and a cluster file for C{members} into C{directory}
    (state in C{directory/state}); the cluster file's path.

    @param one_to_many: the C{host:port} of the msgservers' multicast group or broadcast
        address, for those transports.
    @param durable: the servers keep their state on disk (C{cluster.durable}).
    """
    directory.mkdir(parents=True, exist_ok=True)
    key = directory / "cluster.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    lines = [
        "[cluster]",
        f"id = {cluster_id}",
        'key_file = "cluster.key"',
        f'transport = "{transport}"',
        f'timings = "{timings}"',
        'state_dir = "state"',
    ]
    if durable:
        lines.append("durable = true")
    if transport != "unicast":
        field = "group" if transport == "multicast" else "broadcast"
        lines += ["[rings.msgserver]", f'{field} = "{one_to_many}"']
    for m in members:
        lines += [
            f"[servers.{m.name}]",
            f'role = "{m.role}"',
            f"id = {m.id}",
            f'ring = "{m.host}:{m.ring_port}"',
            f'listen = "tcp:{m.tcp_port}:interface={m.host}"',
        ]
    path = directory / "cluster.toml"
    path.write_text("\n".join(lines) + "\n")
    return path
