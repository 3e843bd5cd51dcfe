"""
lipsd, the node daemon: node state in the System Tuple Space, and the watchdog.

L{NodeMonitor} numbers the node's reports and applies the L{IdlePolicy}; L{Watchdog}
says which watched nodes fell silent; L{NodeService} runs both against the FixServers.
The tuples are described in C{docs/node.md}.
"""

from lips.node._lipsd import NodeService, SystemSpace, declare_down, poll, publish
from lips.node._sampler import PsutilSampler
from lips.node._state import (
    DOWN_TAG,
    STATE_TAG,
    UP_TAG,
    IdlePolicy,
    ISampler,
    NodeMonitor,
    NodeState,
    Sample,
    down_template,
    state_template,
    up_template,
)
from lips.node._watchdog import Suspect, Watchdog

__all__ = [
    "DOWN_TAG",
    "STATE_TAG",
    "UP_TAG",
    "ISampler",
    "IdlePolicy",
    "NodeMonitor",
    "NodeService",
    "NodeState",
    "PsutilSampler",
    "Sample",
    "Suspect",
    "SystemSpace",
    "Watchdog",
    "declare_down",
    "down_template",
    "poll",
    "publish",
    "state_template",
    "up_template",
]
