"""
The typed bodies of the layer's own messages (the types are in L{lips.armor._messages}).

Each is a frozen attrs L{Body}: a map of its fields, checked field by field when it
comes in (L{Body.from_message}).  Ids are ARMOR ids, names are names, an
C{incarnation} counts the installs of one ARMOR id (1 for the first), so that a late
report about an older incarnation is told from one about the current one.
"""

from __future__ import annotations

import enum
from typing import Any, ClassVar, Final

import attrs

from lips.armor._messages import (
    ARMOR_DEAD,
    ARMOR_FAILED,
    COMPOSE,
    COMPOSE_REFUSED,
    COMPOSED,
    INSTALL,
    INSTALL_FAILED,
    INSTALLED,
    SUBSCRIBE,
    TIMER,
    UNINSTALL,
    UNINSTALLED,
    UNSUBSCRIBE,
    Body,
    name,
    optional_name,
    plain_map,
    text,
)
from lips.armor._names import ArmorId, MessageError, armor_id, check_label
from lips.validate import at_least

__all__ = [
    "ArmorDead",
    "ArmorFailed",
    "Compose",
    "ComposeOp",
    "ComposeResult",
    "Install",
    "InstallFailed",
    "Installed",
    "Subscription",
    "TimerDue",
    "Uninstall",
    "Uninstalled",
]


def _node(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    check_label(value, attribute.name)


@attrs.frozen
class Subscription(Body):
    """The block in C{slot} (un)subscribes to messages of C{type}."""

    message_types: ClassVar[frozenset[str]] = frozenset({SUBSCRIBE, UNSUBSCRIBE})

    slot: str = attrs.field(validator=name)
    type: str = attrs.field(validator=name)


@attrs.frozen
class TimerDue(Body):
    """The timer the receiving block started as C{name} is due."""

    message_types: ClassVar[frozenset[str]] = frozenset({TIMER})

    name: str = attrs.field(validator=name)


class ComposeOp(enum.Enum):
    """What a L{Compose} asks of a CompositionController."""

    ADD = "add"
    """Put a new block in a free slot."""
    REMOVE = "remove"
    """Take the block out of a slot, once it is idle."""
    REPLACE = "replace"
    """Put a new block in the place of a slot's block, once that one is idle."""


_OPS: Final = {op.value: op for op in ComposeOp}


def _op(value: object) -> ComposeOp:
    if isinstance(value, ComposeOp):
        return value
    if type(value) is not str or value not in _OPS:
        raise MessageError(f"op is one of {sorted(_OPS)}, not {value!r}")
    return _OPS[value]


@attrs.frozen
class Compose(Body):
    """
    Ask an ARMOR's CompositionController to C{op} the block in C{slot}; for C{add} and
    C{replace}, the new block is of the registered type C{block}, made with C{config}.
    """

    message_types: ClassVar[frozenset[str]] = frozenset({COMPOSE})

    op: ComposeOp = attrs.field(converter=_op)
    slot: str = attrs.field(validator=name)
    block: str | None = attrs.field(default=None, validator=optional_name)
    config: dict[str, Any] = attrs.field(factory=dict, converter=plain_map)

    def __attrs_post_init__(self) -> None:
        if (self.block is None) != (self.op is ComposeOp.REMOVE):
            raise MessageError(f"a {self.op.value} names a block type only if it adds one")
        if self.op is ComposeOp.REMOVE and self.config:
            raise MessageError("a remove takes no configuration")

    def to_value(self) -> dict[str, Any]:
        value: dict[str, Any] = {"op": self.op.value, "slot": self.slot}
        if self.block is not None:
            value["block"] = self.block
        if self.config:
            value["config"] = self.config
        return value


@attrs.frozen
class ComposeResult(Body):
    """
    The answer to the L{Compose} message C{request}: made (L{COMPOSED}, once it is), or
    refused (L{COMPOSE_REFUSED}) for C{reason}.
    """

    message_types: ClassVar[frozenset[str]] = frozenset({COMPOSED, COMPOSE_REFUSED})

    request: int = attrs.field(validator=at_least(1))
    slot: str = attrs.field(validator=text)
    reason: str = attrs.field(default="", validator=text)


@attrs.frozen
class Install(Body):
    """
    Manager C{manager} asks a daemon to install ARMOR C{armor} of the registered type
    C{type}, made with C{config}, as its C{incarnation}-th install.
    """

    message_types: ClassVar[frozenset[str]] = frozenset({INSTALL})

    armor: ArmorId = attrs.field(converter=armor_id)
    type: str = attrs.field(validator=name)
    manager: ArmorId = attrs.field(converter=armor_id)
    incarnation: int = attrs.field(validator=at_least(1))
    config: dict[str, Any] = attrs.field(factory=dict, converter=plain_map)


@attrs.frozen
class Installed(Body):
    """A daemon reports that incarnation C{incarnation} of C{armor} runs on C{node}."""

    message_types: ClassVar[frozenset[str]] = frozenset({INSTALLED})

    armor: ArmorId = attrs.field(converter=armor_id)
    node: str = attrs.field(validator=_node)
    incarnation: int = attrs.field(validator=at_least(1))


@attrs.frozen
class InstallFailed(Body):
    """A daemon could not install incarnation C{incarnation} of C{armor}: C{reason}."""

    message_types: ClassVar[frozenset[str]] = frozenset({INSTALL_FAILED})

    armor: ArmorId = attrs.field(converter=armor_id)
    node: str = attrs.field(validator=_node)
    incarnation: int = attrs.field(validator=at_least(1))
    reason: str = attrs.field(validator=text)


@attrs.frozen
class Uninstall(Body):
    """A manager asks a daemon to uninstall C{armor}."""

    message_types: ClassVar[frozenset[str]] = frozenset({UNINSTALL})

    armor: ArmorId = attrs.field(converter=armor_id)


@attrs.frozen
class Uninstalled(Body):
    """A daemon reports C{armor} uninstalled from C{node}."""

    message_types: ClassVar[frozenset[str]] = frozenset({UNINSTALLED})

    armor: ArmorId = attrs.field(converter=armor_id)
    node: str = attrs.field(validator=_node)


@attrs.frozen
class ArmorDead(Body):
    """
    A daemon tells C{armor}'s manager that its incarnation C{incarnation} on C{node}
    is dead: it exited, or it hung and the daemon killed it (C{reason} says which).
    """

    message_types: ClassVar[frozenset[str]] = frozenset({ARMOR_DEAD})

    armor: ArmorId = attrs.field(converter=armor_id)
    node: str = attrs.field(validator=_node)
    incarnation: int = attrs.field(validator=at_least(1))
    reason: str = attrs.field(validator=text)


@attrs.frozen
class ArmorFailed(Body):
    """
    A manager tells its own manager that it gave its subordinate C{armor} up after
    C{reinstalls} reinstalls: C{reason} is how it last failed.
    """

    message_types: ClassVar[frozenset[str]] = frozenset({ARMOR_FAILED})

    armor: ArmorId = attrs.field(converter=armor_id)
    reason: str = attrs.field(validator=text)
    reinstalls: int = attrs.field(validator=at_least(0))
