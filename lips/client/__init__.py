"""
The Deferred-returning client API of LiPS (L{connect}, L{TupleSpaceClient}), and the
sans-IO failover core it runs (L{ClientCore}, an Automat state machine on the kernel
contract) with its vocabulary, for simulators that run the real client.
"""

from lips.client._client import ClientProtocol, NoServerAvailable, TupleSpaceClient, connect
from lips.client._core import (
    ATTEMPT_TIMEOUT,
    FAILOVER_TIMEOUT,
    KEEPALIVE,
    Answered,
    ClientCore,
    ClientState,
    ClientTimer,
    Dial,
    Failed,
    Hangup,
    Link,
    NotConnected,
    Outgoing,
    PutBack,
    Welcomed,
)

__all__ = [
    "ATTEMPT_TIMEOUT",
    "FAILOVER_TIMEOUT",
    "KEEPALIVE",
    "Answered",
    "ClientCore",
    "ClientProtocol",
    "ClientState",
    "ClientTimer",
    "Dial",
    "Failed",
    "Hangup",
    "Link",
    "NoServerAvailable",
    "NotConnected",
    "Outgoing",
    "PutBack",
    "TupleSpaceClient",
    "Welcomed",
    "connect",
]
