"""
The cluster file: one TOML file naming every server of a cluster, its rings, key and
state directory (see C{docs/cluster.md}), and the persistent ring sequence number of
each server.
"""

from lips.cluster._config import (
    MAX_CLUSTER_ID,
    ROLES,
    TIMINGS,
    TRANSPORTS,
    Address,
    ClusterConfig,
    ClusterConfigError,
    OneToMany,
    Role,
    ServerEntry,
    Timings,
    Transport,
    check_client_endpoint,
    load_cluster,
)
from lips.cluster._state import RingSeqStore, StateFileError

__all__ = [
    "MAX_CLUSTER_ID",
    "ROLES",
    "TIMINGS",
    "TRANSPORTS",
    "Address",
    "ClusterConfig",
    "ClusterConfigError",
    "OneToMany",
    "RingSeqStore",
    "Role",
    "ServerEntry",
    "StateFileError",
    "Timings",
    "Transport",
    "check_client_endpoint",
    "load_cluster",
]
