"""
A small ARMOR type for the daemon tests, registered by a plugin module the test writes
(L{PLUGIN}) into a directory it puts on lipsd's C{PYTHONPATH}: a type from outside
LiPS, found through Twisted's plugin system.

C{test-echo} ARMORs answer C{echo} with C{echoed} (same body, to the source), and take
C{relay} (C{{"to": id, "body": value}}): they send C{echo} to C{to}, and when its
C{echoed} comes back they tell their manager C{relayed} (C{{"from": id, "body": value}}).
"""

from __future__ import annotations

from typing import Final

from lips.armor import Armor, Block, Message, MessageError

__all__ = ["PLUGIN", "EchoArmor", "EchoBlock", "RelayBlock"]

#: The plugin module: C{twisted/plugins/lips_test_armor.py} under the PYTHONPATH entry.
PLUGIN: Final = """
from lips.armor import ArmorType, BlockType

testEchoArmor = ArmorType(
    "test-echo", "tests.integration._armorapp:EchoArmor.from_config", "Echoes, relays."
)
testEchoBlock = BlockType(
    "test-echo", "tests.integration._armorapp:EchoBlock.from_config", "Echoes."
)
testRelayBlock = BlockType(
    "test-relay", "tests.integration._armorapp:RelayBlock.from_config", "Relays."
)
"""


class EchoBlock(Block):
    """C{echo} -> C{echoed}, same body, to the source."""

    subscriptions = frozenset({"echo"})

    def process_message(self, message: Message, now: float) -> None:
        self.context.send("echoed", message.source, message.value())


class RelayBlock(Block):
    """C{relay} -> C{echo} to its C{to}; the C{echoed} back -> C{relayed} to the manager."""

    subscriptions = frozenset({"relay", "echoed"})

    def process_message(self, message: Message, now: float) -> None:
        value = message.value()
        if message.type == "relay":
            if not isinstance(value, dict) or not isinstance(value.get("to"), str):
                raise MessageError("a relay names its 'to'")
            self.context.send("echo", value["to"], value.get("body"))
            return
        manager = self.context.armor.manager
        assert manager is not None
        self.context.send("relayed", manager, {"from": message.source, "body": value})


class EchoArmor(Armor):
    """An ARMOR of the test type C{test-echo}."""

    type_name = "test-echo"
    default_blocks = {**Armor.default_blocks, "echo": "test-echo", "relay": "test-relay"}
