"""
The rooms of LiPS and which may use which.

Values are at the bottom (tuples and their operations, the shared checks, the core
contract), the cores above them never touch the reactor, sockets or processes, the
adapters (C{lips.protocols}, lipsd's services, C{lips.tap}) sit on top, and the client
never imports a server.  No module imports another room's private module.  This test
reads the import statements of every module, so a new import that crosses a line fails
here, with the line named, before it becomes a habit.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from twisted.trial.unittest import SynchronousTestCase

import lips

ROOT: Final = Path(lips.__file__).parent

#: Every room and the rooms it may import (besides itself).  A room missing here is an
#: error: a new room says where it stands.
ALLOWED: Final[dict[str, frozenset[str]]] = {
    # values
    "tuples": frozenset(),
    "validate": frozenset(),
    "files": frozenset(),
    "kernel": frozenset({"validate"}),
    "wire": frozenset({"tuples", "validate"}),
    "errors": frozenset({"wire"}),
    # sans-IO cores
    "space": frozenset({"tuples", "validate"}),
    "ring": frozenset({"tuples", "kernel", "validate"}),
    "cluster": frozenset({"ring", "validate", "files"}),
    "replica": frozenset({"ring", "space", "tuples", "kernel", "server", "validate", "files"}),
    "server": frozenset({"space", "tuples", "wire", "kernel", "validate"}),
    "supervisor": frozenset({"tuples", "kernel", "validate"}),
    # strategies name ARMOR types; the ARMOR layer finds strategies as plugins.
    "strategy": frozenset({"tuples", "kernel", "validate"}),
    "armor": frozenset({"tuples", "kernel", "validate", "supervisor", "strategy"}),
    # the client side
    "client": frozenset({"errors", "tuples", "wire", "kernel", "validate"}),
    "blocking": frozenset({"client", "errors", "tuples"}),
    # adapters and hosts
    "protocols": frozenset(
        {"ring", "server", "wire", "replica", "space", "tuples", "kernel", "validate", "armor"}
    ),
    # lipsd hosts the ARMOR daemon core and owns its links (lips.node._daemon).
    "node": frozenset(
        {"client", "blocking", "kernel", "tuples", "validate", "armor", "protocols", "supervisor"}
    ),
    "tap": frozenset(
        {
            "client",
            "cluster",
            "node",
            "protocols",
            "replica",
            "server",
            "space",
            "tuples",
            "kernel",
            "validate",
            "armor",
        }
    ),
    # tools over everything
    "testing": frozenset(
        {
            "client",
            "cluster",
            "errors",
            "kernel",
            "protocols",
            "replica",
            "ring",
            "server",
            "space",
            "tuples",
            "wire",
            "node",
            "armor",
            "supervisor",
            "strategy",
            "validate",
        }
    ),
    # applications under the FTM, the user's side: job files, submitting, the tables.
    "jobs": frozenset(
        {"armor", "strategy", "cluster", "client", "blocking", "kernel", "tuples", "validate"}
    ),
    "cli": frozenset(
        {
            "lips",
            "errors",
            "testing",
            "tuples",
            "client",
            "blocking",
            "validate",
            "jobs",
            "cluster",
            "replica",  # lips backup and lips restore: a server's journal
        }
    ),
    "lips": frozenset({"errors", "tuples", "client", "blocking"}),
}

#: Rooms that are sans-IO: they never import the reactor, the adapters or the taps.
CORES: Final = frozenset(
    {
        "tuples",
        "validate",
        "kernel",
        "wire",
        "space",
        "ring",
        "cluster",
        "replica",
        "server",
        "supervisor",
        "strategy",
        "armor",
    }
)
FORBIDDEN_IN_CORES: Final = ("twisted.internet.reactor", "lips.protocols", "lips.tap")


def room_of(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return "lips" if parts == ("__init__",) else parts[0]


def imports(path: Path) -> Iterator[tuple[int, str, tuple[str, ...]]]:
    """(line, module, names) of every absolute import in C{path}."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module, tuple(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, ()


def modules() -> Iterator[Path]:
    return (p for p in sorted(ROOT.rglob("*.py")) if "__pycache__" not in p.parts)


class LayerTests(SynchronousTestCase):
    maxDiff = None

    def test_every_room_is_placed(self) -> None:
        """Every room of the package appears in the table."""
        rooms = {room_of(p) for p in modules()}
        self.assertEqual(sorted(rooms - ALLOWED.keys()), [])

    def test_rooms_import_only_what_they_may(self) -> None:
        """No room imports a room it is not allowed to."""
        crossings = []
        for path in modules():
            room = room_of(path)
            for line, module, names in imports(path):
                if module == "lips":
                    targets = {n if n in ALLOWED else "lips" for n in names}
                elif module.startswith("lips."):
                    targets = {module.split(".")[1]}
                else:
                    continue
                for target in targets - {room} - ALLOWED.get(room, frozenset()):
                    crossings.append(f"{path.relative_to(ROOT)}:{line} {room} -> {target}")
        self.assertEqual(crossings, [])

    def test_no_private_imports_across_rooms(self) -> None:
        """A room uses another room's public names, never its private modules."""
        crossings = []
        for path in modules():
            room = room_of(path)
            for line, module, _ in imports(path):
                parts = module.split(".")
                if parts[0] != "lips" or len(parts) < 3 or parts[1] == room:
                    continue
                if any(part.startswith("_") for part in parts[2:]):
                    crossings.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
        self.assertEqual(crossings, [])

    def test_cores_are_sans_io(self) -> None:
        """Cores never import the reactor, the protocol adapters or the taps."""
        found = []
        for path in modules():
            if room_of(path) not in CORES:
                continue
            for line, module, names in imports(path):
                reactor = module == "twisted.internet" and "reactor" in names
                if reactor or module.startswith(FORBIDDEN_IN_CORES):
                    found.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
        self.assertEqual(found, [])

    def test_the_client_never_imports_servers(self) -> None:
        """The client side stands without any server code."""
        servers = {"server", "replica", "space", "ring", "protocols", "tap", "node"}
        self.assertEqual(ALLOWED["client"] & servers, frozenset())
        self.assertEqual(ALLOWED["blocking"] & servers, frozenset())
