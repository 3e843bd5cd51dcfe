"""
Factories: ARMORs and blocks made from a registered type name.

The registry is Twisted's plugin system.  A type is an L{IArmorType} or L{IBlockType}
plugin object in a C{twisted/plugins/*.py} module of any installed package (LiPS's own
are in C{twisted/plugins/lips_armor.py}); L{ArmorFactory} and L{BlockFactory} find them
with L{twisted.plugin.getPlugins}, so a type from another package is picked up without
changing LiPS.  A factory may instead be given its types, for a closed world (a test,
a simulator).

L{ArmorType} and L{BlockType} are the plugin objects: each names its type and the
C{package.module:callable} that makes one, imported only when one is made (as
L{ServiceMaker<twisted.application.service.ServiceMaker>} does for twistd).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from twisted.plugin import IPlugin, getPlugins
from zope.interface import Attribute, Interface, implementer

from lips.armor._blocks import IBlock
from lips.armor._names import ArmorId, check_name

if TYPE_CHECKING:
    from lips.armor._armor import Armor

__all__ = [
    "ArmorFactory",
    "ArmorType",
    "BlockFactory",
    "BlockType",
    "IArmorType",
    "IBlockType",
    "UnknownType",
    "default_block_factory",
]


class UnknownType(LookupError):
    """No type of that name is registered (or two are, and it cannot tell which)."""


class IBlockType(Interface):
    """A registered type of basic building block: a plugin (L{IPlugin}) object."""

    name: str = Attribute("The type's name, unique among block types: 'forward-recovery'.")
    description: str = Attribute("One line saying what a block of this type does.")

    def create(config: Mapping[str, object]) -> IBlock:
        """
        A new block of this type, made with C{config} (a plain map, untrusted: it may
        come in a message).

        @raise Exception: if C{config} is not valid for this type.
        """


class IArmorType(Interface):
    """A registered type of ARMOR: a plugin (L{IPlugin}) object."""

    name: str = Attribute("The type's name, unique among ARMOR types: 'ftm'.")
    description: str = Attribute("One line saying what an ARMOR of this type does.")

    def create(
        id: ArmorId, manager: ArmorId | None, config: Mapping[str, object], blocks: BlockFactory
    ) -> Armor:
        """
        A new ARMOR of this type called C{id}, managed by C{manager}, made with
        C{config} (a plain map, untrusted), its blocks made by C{blocks}.

        @raise Exception: if the arguments are not valid for this type.
        """


def _load(target: str) -> Any:
    module, _, path = target.partition(":")
    obj: Any = importlib.import_module(module)
    for attribute in path.split("."):
        obj = getattr(obj, attribute)
    return obj


def _check_target(target: str) -> str:
    module, colon, path = target.partition(":")
    if not (module and colon and path):
        raise ValueError(f"not a 'package.module:callable' name: {target!r}")
    return target


@implementer(IPlugin, IBlockType)
class BlockType:
    """
    A block type plugin: C{name}, made by C{target}, a C{package.module:callable} taking
    the configuration map (a L{Block}'s C{from_config}, say).
    """

    def __init__(self, name: str, target: str, description: str) -> None:
        self.name = check_name(name, "a block type")
        self.target = _check_target(target)
        self.description = description

    def __repr__(self) -> str:
        return f"BlockType({self.name!r}, {self.target!r})"

    def create(self, config: Mapping[str, object]) -> IBlock:
        block: IBlock = _load(self.target)(config)
        return block


@implementer(IPlugin, IArmorType)
class ArmorType:
    """
    An ARMOR type plugin: C{name}, made by C{target}, a C{package.module:callable}
    taking C{(id, manager, config, blocks)} (an L{Armor}'s C{from_config}, say).
    """

    def __init__(self, name: str, target: str, description: str) -> None:
        self.name = check_name(name, "an ARMOR type")
        self.target = _check_target(target)
        self.description = description

    def __repr__(self) -> str:
        return f"ArmorType({self.name!r}, {self.target!r})"

    def create(
        self,
        id: ArmorId,
        manager: ArmorId | None,
        config: Mapping[str, object],
        blocks: BlockFactory,
    ) -> Armor:
        armor: Armor = _load(self.target)(id, manager, config, blocks)
        return armor


T = TypeVar("T", IArmorType, IBlockType)


class _Registry(Generic[T]):
    """The types of one interface, by name: given, or found with getPlugins once."""

    def __init__(self, interface: Any, types: Iterable[T] | None) -> None:
        self._interface: Any = interface
        self._given: list[T] | None = None if types is None else list(types)
        self._by_name: dict[str, T] | None = None
        self._twice: dict[str, list[T]] = {}

    def _table(self) -> dict[str, T]:
        if self._by_name is None:
            found: Iterable[T] = (
                self._given if self._given is not None else getPlugins(self._interface)
            )
            by_name: dict[str, T] = {}
            for plugin in found:
                if not self._interface.providedBy(plugin):
                    raise TypeError(f"not an {self._interface.__name__}: {plugin!r}")
                if plugin.name in by_name:
                    self._twice.setdefault(plugin.name, [by_name[plugin.name]]).append(plugin)
                by_name.setdefault(plugin.name, plugin)
            self._by_name = by_name
        return self._by_name

    def names(self) -> list[str]:
        return sorted(self._table())

    def get(self, name: str) -> T:
        table = self._table()
        kind = "ARMOR" if self._interface is IArmorType else "block"
        if name in self._twice:
            raise UnknownType(f"{kind} type {name!r} is registered twice: {self._twice[name]}")
        try:
            return table[name]
        except KeyError:
            raise UnknownType(f"no {kind} type {name!r} is registered") from None


class BlockFactory:
    """
    Makes blocks by type name.

    @param types: the block types it knows; by default those every installed package
        registers as L{IBlockType} plugins, found the first time one is asked for.
    """

    def __init__(self, types: Iterable[IBlockType] | None = None) -> None:
        self._types = _Registry(IBlockType, types)

    def names(self) -> list[str]:
        """The names of the types it knows, sorted."""
        return self._types.names()

    def type(self, name: str) -> IBlockType:
        """
        The type called C{name}.

        @raise UnknownType: if there is none, or more than one.
        """
        return self._types.get(name)

    def create(self, name: str, config: Mapping[str, object] | None = None) -> IBlock:
        """
        A new block of the type called C{name}, made with C{config}.

        @raise UnknownType: if no such type is registered.
        @raise TypeError: if the type made something that is not an L{IBlock}.
        @raise Exception: whatever the type raises for a configuration it refuses.
        """
        block = self.type(name).create(dict(config or {}))
        if not IBlock.providedBy(block):
            raise TypeError(f"block type {name!r} made something that is not an IBlock: {block!r}")
        return block


class ArmorFactory:
    """
    Makes ARMORs by type name.

    @param types: the ARMOR types it knows; by default those every installed package
        registers as L{IArmorType} plugins, found the first time one is asked for.
    @param blocks: the block factory the ARMORs it makes use (by default, the plugins).
    """

    def __init__(
        self, types: Iterable[IArmorType] | None = None, blocks: BlockFactory | None = None
    ) -> None:
        self._types = _Registry(IArmorType, types)
        self.blocks = blocks if blocks is not None else default_block_factory()

    def names(self) -> list[str]:
        """The names of the types it knows, sorted."""
        return self._types.names()

    def type(self, name: str) -> IArmorType:
        """
        The type called C{name}.

        @raise UnknownType: if there is none, or more than one.
        """
        return self._types.get(name)

    def create(
        self,
        name: str,
        id: str,
        manager: str | None,
        config: Mapping[str, object] | None = None,
    ) -> Armor:
        """
        A new ARMOR of the type called C{name}, with id C{id} and manager C{manager}.

        @raise UnknownType: if no such type is registered.
        @raise TypeError: if the type made something that is not an L{Armor}.
        @raise Exception: whatever the type raises for arguments it refuses.
        """
        from lips.armor._armor import Armor
        from lips.armor._names import armor_id

        kind = self.type(name)
        armor = kind.create(
            armor_id(id),
            None if manager is None else armor_id(manager),
            dict(config or {}),
            self.blocks,
        )
        if not isinstance(armor, Armor):
            raise TypeError(f"ARMOR type {name!r} made something that is not an Armor: {armor!r}")
        return armor


@functools.cache
def default_block_factory() -> BlockFactory:
    """The block factory of the installed plugins, shared by every ARMOR made without one."""
    return BlockFactory()
