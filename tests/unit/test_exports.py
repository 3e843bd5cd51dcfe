"""
The public surface of each LiPS room is what its C{__all__} says.
"""

from __future__ import annotations

import importlib

from twisted.trial.unittest import SynchronousTestCase

MODULES = [
    "lips",
    "lips.tuples",
    "lips.space",
    "lips.wire",
    "lips.server",
    "lips.client",
    "lips.protocols",
    "lips.testing",
    "lips.errors",
    "lips.blocking",
    "lips.cli",
    "lips.node",
    "lips.kernel",
    "lips.ring",
    "lips.replica",
    "lips.cluster",
    "lips.validate",
]


class ExportTests(SynchronousTestCase):
    def test_all_names_exist(self) -> None:
        """Every name in every room's __all__ is defined there."""
        for name in MODULES:
            module = importlib.import_module(name)
            for export in module.__all__:
                self.assertTrue(hasattr(module, export), f"{name}.{export}")

    def test_reexports_are_implementations(self) -> None:
        """A room re-exports the objects of its private modules, not copies."""
        from lips.space import TupleSpace
        from lips.space._space import TupleSpace as Impl
        from lips.tuples import make_template
        from lips.tuples._model import make_template as impl_template

        self.assertIs(TupleSpace, Impl)
        self.assertIs(make_template, impl_template)

        from lips.armor import Armor, Message
        from lips.armor._armor import Armor as ArmorImpl
        from lips.armor._messages import Message as MessageImpl

        self.assertIs(Armor, ArmorImpl)
        self.assertIs(Message, MessageImpl)

        from lips.testing import Cluster, Process, twistd_command
        from lips.testing._harness import Cluster as ClusterImpl
        from lips.testing._harness import Process as ProcessImpl
        from lips.testing._harness import twistd_command as command_impl

        self.assertIs(Cluster, ClusterImpl)
        self.assertIs(Process, ProcessImpl)
        self.assertIs(twistd_command, command_impl)

    def test_top_level(self) -> None:
        """lips exposes ANY and the client errors at the top."""
        import lips
        from lips.tuples import ANY

        self.assertIs(lips.ANY, ANY)
        self.assertTrue(issubclass(lips.Timeout, TimeoutError))
