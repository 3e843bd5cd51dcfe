"""
Tests for L{lips.armor}'s factories: ARMOR and block types found by name through
Twisted's plugin system (LiPS's own, and one from another package that LiPS knows
nothing of), closed-world factories, and what a factory refuses.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import twisted.plugins
from lips.armor import (
    ArmorFactory,
    ArmorType,
    BlockFactory,
    BlockType,
    FaultToleranceManager,
    ForwardRecovery,
    IArmorType,
    IBlock,
    IBlockType,
    Installation,
    MessageError,
    Recovery,
    SurrogateManager,
    UnknownType,
    default_block_factory,
)
from tests.unit.test_armor import FACTORY, Echo, msg, sends

#: A package LiPS knows nothing of: a block type and an ARMOR type of its own,
#: registered by a plugin module in its own twisted/plugins directory.
EXTERNAL_PACKAGE = '''
from lips.armor import Armor, Block


class Greeter(Block):
    """Answers a hello with a greeting."""

    subscriptions = frozenset({"hello"})

    def process_message(self, message, now):
        self.context.send("greeting", message.source, "hello from elsewhere")


class Greeting(Armor):
    """A common ARMOR made of a greeter."""

    type_name = "greeting"
    default_blocks = {**Armor.default_blocks, "greeter": "ext-greeter"}
'''

EXTERNAL_PLUGINS = """
from lips.armor import ArmorType, BlockType

extGreeter = BlockType("ext-greeter", "extarmor:Greeter.from_config", "Greets.")
extGreeting = ArmorType("ext-greeting", "extarmor:Greeting.from_config", "Greets.")
"""


def write_external(root: Path) -> Path:
    """Write the external package under C{root}; return its plugin directory."""
    (root / "extarmor").mkdir(parents=True)
    (root / "extarmor" / "__init__.py").write_text(textwrap.dedent(EXTERNAL_PACKAGE))
    plugins = root / "twisted" / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "extarmor_plugins.py").write_text(textwrap.dedent(EXTERNAL_PLUGINS))
    return plugins


def not_an_armor(*args: object) -> object:
    """What a broken ARMOR type might make."""
    return args


class PluginTests(SynchronousTestCase):
    def test_lips_types(self) -> None:
        """LiPS's own ARMOR and block types are found through the plugin system."""
        blocks = BlockFactory()
        self.assertTrue({"installation", "recovery", "forward-recovery"} <= set(blocks.names()))
        self.assertIsInstance(blocks.create("recovery"), Recovery)
        self.assertIsInstance(blocks.create("forward-recovery"), ForwardRecovery)
        self.assertIsInstance(blocks.create("installation"), Installation)
        armors = ArmorFactory()
        self.assertTrue({"ftm", "surrogate-manager"} <= set(armors.names()))
        self.assertTrue(IArmorType.providedBy(armors.type("ftm")))
        self.assertTrue(IBlockType.providedBy(blocks.type("recovery")))

    def test_armor_by_name(self) -> None:
        """An ARMOR is made by type name, id, manager and configuration."""
        armors = ArmorFactory(blocks=FACTORY)
        sm = armors.create("surrogate-manager", "sm.job7", "ftm", {"nodes": ["n1", "n2"]})
        assert isinstance(sm, SurrogateManager)
        self.assertEqual((sm.id, sm.manager, sm.nodes), ("sm.job7", "ftm", ("n1", "n2")))
        self.assertIs(sm.blocks, FACTORY)
        ftm = armors.create("ftm", "ftm", None, {"blocks": {"recovery": "forward-recovery"}})
        assert isinstance(ftm, FaultToleranceManager)
        self.assertIsInstance(ftm.block("recovery"), ForwardRecovery)

    def test_default_factory_shared(self) -> None:
        """ARMORs made without a block factory share the plugins' one."""
        self.assertIs(default_block_factory(), default_block_factory())
        self.assertIs(FaultToleranceManager().blocks, default_block_factory())

    def test_from_another_package(self) -> None:
        """
        A block type and an ARMOR type registered by another package's plugin module
        are found and made, without any change to LiPS.
        """
        root = Path(self.mktemp())
        plugins = write_external(root)
        sys.path.insert(0, str(root))
        self.addCleanup(sys.path.remove, str(root))
        self.addCleanup(sys.modules.pop, "extarmor", None)
        self.addCleanup(sys.modules.pop, "twisted.plugins.extarmor_plugins", None)
        # What twisted.plugins does with sys.path when it is imported in a process
        # that has the package installed from the start.
        self.patch(twisted.plugins, "__path__", [*twisted.plugins.__path__, str(plugins)])

        blocks = BlockFactory()
        self.assertIn("ext-greeter", blocks.names())
        self.assertIn("recovery", blocks.names())
        armors = ArmorFactory(blocks=blocks)
        self.assertIn("ext-greeting", armors.names())
        armor = armors.create("ext-greeting", "greeting.1", "ftm")
        self.assertEqual(type(armor).__module__, "extarmor")
        armor.start(0.0)
        armor.receive(msg("hello", destination="greeting.1"), 1.0)
        [greeting] = sends(armor.drain())
        self.assertEqual(greeting.value(), "hello from elsewhere")

    def test_installed_package_in_a_new_process(self) -> None:
        """
        In a fresh process with the other package on its path (as if installed), the
        plugin system finds its types beside LiPS's.
        """
        root = Path(self.mktemp())
        write_external(root)
        script = (
            "from lips.armor import ArmorFactory, BlockFactory\n"
            "print(sorted(BlockFactory().names()))\n"
            "print(sorted(ArmorFactory().names()))\n"
            "print(type(BlockFactory().create('ext-greeter')).__name__)\n"
        )
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
        }
        result = subprocess.run(
            [sys.executable, "-c", script],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        blocks, armors, made = result.stdout.splitlines()
        self.assertIn("'ext-greeter'", blocks)
        self.assertIn("'forward-recovery'", blocks)
        self.assertIn("'ext-greeting'", armors)
        self.assertIn("'surrogate-manager'", armors)
        self.assertEqual(made, "Greeter")


class FactoryTests(SynchronousTestCase):
    def test_closed_world(self) -> None:
        """A factory given its types knows those and no others."""
        factory = BlockFactory([BlockType("echo", "tests.unit.test_armor:Echo.from_config", "")])
        self.assertEqual(factory.names(), ["echo"])
        self.assertIsInstance(factory.create("echo"), Echo)
        self.assertRaises(UnknownType, factory.create, "recovery")

    def test_unknown_and_ambiguous(self) -> None:
        """An unknown name, or one registered twice, is an UnknownType."""
        twice = BlockFactory(
            [
                BlockType("echo", "tests.unit.test_armor:Echo.from_config", "one"),
                BlockType("echo", "tests.unit.test_armor:Echo.from_config", "two"),
            ]
        )
        self.assertRaises(UnknownType, twice.create, "echo")
        self.assertRaises(UnknownType, ArmorFactory([]).create, "ftm", "ftm", None)

    def test_made_what_it_says(self) -> None:
        """A type that makes something else than a block or an ARMOR is a TypeError."""
        odd = BlockFactory([BlockType("odd", "builtins:dict", "")])
        self.assertRaises(TypeError, odd.create, "odd")
        here = "tests.unit.test_armor_factory"
        wrong = ArmorFactory([ArmorType("wrong", f"{here}:not_an_armor", "")], blocks=FACTORY)
        self.assertRaises(TypeError, wrong.create, "wrong", "x.1", "ftm")
        self.assertRaises(TypeError, BlockFactory([object()]).names)  # type: ignore[list-item]

    def test_type_names_checked(self) -> None:
        """Plugin objects need valid names and a package.module:callable target."""
        self.assertRaises(ValueError, BlockType, "Bad Name", "a:b", "")
        self.assertRaises(ValueError, BlockType, "good", "no-colon", "")
        self.assertRaises(ValueError, ArmorType, "good", ":b", "")

    def test_config_refused(self) -> None:
        """A block type refuses a configuration it does not take."""
        self.assertRaises(MessageError, FACTORY.create, "recovery", {"max_reinstalls": "many"})
        self.assertRaises(MessageError, FACTORY.create, "echo", {"x": 1})
        self.assertTrue(IBlock.providedBy(FACTORY.create("echo")))
