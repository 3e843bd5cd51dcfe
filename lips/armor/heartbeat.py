"""
The Heartbeat ARMOR (the paper's section 4.2.1, Table 2's node and daemon rows): the
FTM's detector of node failures, installed on the FTM's own node.

Every C{interval} seconds it sends a L{HEARTBEAT} to the daemon of each node it
watches; a daemon answers L{HEARTBEAT_ACK}.  A node whose daemon has left C{misses}
heartbeats in a row unanswered is declared down: one L{NODE_DOWN} verdict to its
manager (the FTM), and the node is watched no more until the FTM says L{WATCH} again
(a node that joins anew).  One slow answer is not a verdict; only several misses are.

The watching is a block, L{HeartbeatMonitor} (block type C{heartbeat}), in a
L{HeartbeatArmor} (ARMOR type C{heartbeat}) whose C{nodes}, C{interval} and C{misses}
it reads when it is attached.  The FTM's messages reach it in the FTM's epoch
(L{lips.armor.ftm.EpochFence}); a newer FTM becomes its manager.

Inputs: L{Armor}'s.  Effects: L{Send} (heartbeats to daemons, verdicts to the FTM),
L{StartTimer}/L{CancelTimer} (its block's C{beat}), L{Log}.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from twisted.logger import LogLevel

from lips.armor._armor import Armor
from lips.armor._blocks import Block
from lips.armor._factory import BlockFactory
from lips.armor._messages import TIMER, Message, seconds
from lips.armor._names import MessageError, check_label, daemon_id
from lips.armor.ftm import (
    HEARTBEAT,
    HEARTBEAT_ACK,
    NODE_DOWN,
    WATCH,
    EpochFence,
    Heartbeat,
    HeartbeatAck,
    NodeDown,
    Watch,
    admit_fenced,
    fenced_options,
)

__all__ = ["HeartbeatArmor", "HeartbeatMonitor"]

_BEAT: Final = "beat"


class HeartbeatMonitor(Block):
    """
    Heartbeats the daemons of the nodes its L{HeartbeatArmor} watches (see the module
    docstring).

    @ivar missed: each watched node's unanswered heartbeats in a row.
    @ivar verdicts: every node declared down, in order.
    """

    subscriptions = frozenset({HEARTBEAT_ACK, WATCH})

    def __init__(self) -> None:
        super().__init__()
        self.missed: dict[str, int] = {}
        self.verdicts: list[str] = []
        self.interval = 0.5
        self.misses = 3
        self._seq = 0

    def attach(self, context: Any, now: float) -> None:
        armor = context.armor
        if not isinstance(armor, HeartbeatArmor):
            raise TypeError("a heartbeat block works in a Heartbeat ARMOR only")
        super().attach(context, now)
        self.interval, self.misses = armor.interval, armor.misses
        self.missed = dict.fromkeys(armor.watch, 0)
        context.start_timer(_BEAT, now + self.interval)

    def process_message(self, message: Message, now: float) -> None:
        context = self.context
        if message.type == TIMER:
            self._beat(now)
            context.start_timer(_BEAT, now + self.interval)
        elif message.type == HEARTBEAT_ACK:
            ack = HeartbeatAck.from_message(message)
            if message.source == daemon_id(ack.node) and ack.node in self.missed:
                self.missed[ack.node] = 0
        elif message.type == WATCH:
            if message.source != context.armor.manager:
                raise MessageError(f"only {context.armor.manager} says what to watch")
            watch = Watch.from_message(message)
            if watch.watch:
                self.missed.setdefault(watch.node, 0)
            else:
                self.missed.pop(watch.node, None)

    def _beat(self, now: float) -> None:
        context = self.context
        manager = context.armor.manager
        for node in sorted(self.missed):
            if self.missed[node] >= self.misses:
                del self.missed[node]
                self.verdicts.append(node)
                context.log(LogLevel.warn, "node {node} is down", node=node)
                if manager is not None:
                    context.send(
                        NODE_DOWN,
                        manager,
                        NodeDown(node, f"{self.misses} heartbeats unanswered"),
                    )
                continue
            self._seq += 1
            self.missed[node] += 1
            context.send(HEARTBEAT, daemon_id(node), Heartbeat(self._seq))


class HeartbeatArmor(Armor):
    """
    The Heartbeat ARMOR.

    @param nodes: the nodes to watch from the start (the FTM adds and removes more).
    @param interval: seconds between heartbeats.
    @param misses: unanswered heartbeats in a row that make a node down.
    """

    type_name = "heartbeat"
    default_blocks = {**Armor.default_blocks, "heartbeat": "heartbeat"}

    def __init__(
        self,
        id: str,
        manager: str | None,
        *,
        nodes: Iterable[str] = (),
        interval: float = 0.5,
        misses: int = 3,
        epoch: int = 0,
        node: str | None = None,
        incarnation: int = 1,
        blocks: BlockFactory | None = None,
        composition: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(id, manager, blocks=blocks, composition=composition)
        self.watch = tuple(check_label(n, "a node") for n in nodes)
        self.interval = interval
        self.misses = misses
        self.node = node
        self.incarnation = incarnation
        self.fence = EpochFence(epoch, self.manager)

    @classmethod
    def options(cls, config: dict[str, object]) -> dict[str, Any]:
        """Besides C{blocks}: C{nodes}, C{interval}, C{misses}, C{node}, C{incarnation}."""
        kwargs = super().options(config)
        kwargs.update(fenced_options(config))
        if "nodes" in config:
            nodes = config.pop("nodes")
            if isinstance(nodes, str) or not isinstance(nodes, Iterable):
                raise MessageError(f"nodes is a list of nodes, not {nodes!r}")
            kwargs["nodes"] = tuple(nodes)
        if "interval" in config:
            kwargs["interval"] = seconds(config.pop("interval"), "interval")
        if "misses" in config:
            misses = config.pop("misses")
            if type(misses) is not int or misses < 1:
                raise MessageError(f"misses is an integer >= 1, not {misses!r}")
            kwargs["misses"] = misses
        return kwargs

    def receive(self, message: Message, now: float) -> None:
        inner = admit_fenced(self, self.fence, message)
        if inner is not None:
            super().receive(inner, now)
