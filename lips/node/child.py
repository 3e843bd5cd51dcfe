"""
A process lipsd runs for C{eval}: C{python -m lips.node.child package.module:function}.

It imports the function by name (only importable callables run: nothing from the
network is unpickled or evaluated), connects to the application's MessageServers as
LiPS process C{$LIPS_PID}, calls C{function(space, *args)} and puts out the passive
tuple C{(*fields, result)}, then exits 0.  An exception exits non-zero, so lipsd
restarts it with the same process id.

Its inputs:

  - C{argv[1]}: the target, C{package.module:function};
  - C{LIPS_PID}: the process id (decimal);
  - C{LIPS_ENDPOINTS}: the MessageServers' client endpoint strings, a JSON array;
  - standard input: a msgpack array C{[fields, args]}, C{fields} the eval's fields
    and C{args} the msgpack-encoded arguments (bytes), as in the eval request.

It ends itself when lipsd, its parent, is gone: lipsd restarts the processes of a dead
node elsewhere with the same ids, and two runs of one process must not overlap.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

__all__ = ["ENDPOINTS_VAR", "PID_VAR", "load", "main", "read_input"]

#: The environment variable holding the process id.
PID_VAR: Final = "LIPS_PID"
#: The environment variable holding the MessageServers' endpoints (a JSON array).
ENDPOINTS_VAR: Final = "LIPS_ENDPOINTS"
#: The exit status when lipsd, the parent, is gone.
ORPHANED: Final = 75


def load(target: str) -> Callable[..., Any]:
    """The callable named C{target} (L{lips.supervisor.load_target})."""
    from lips.supervisor import load_target

    return load_target(target)


def read_input(data: bytes) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """The eval's fields and decoded arguments from standard input's bytes."""
    from lips.node._eval import decode_args
    from lips.tuples import make_tuple, unpackb

    message = unpackb(data)
    if not isinstance(message, tuple) or len(message) != 2:
        raise ValueError("standard input must be a msgpack array [fields, args]")
    fields, args = message
    if not isinstance(fields, tuple) or not isinstance(args, bytes):
        raise ValueError("standard input must be a msgpack array [fields, args]")
    return make_tuple(fields), decode_args(args)


def _watch_parent(parent: int) -> None:
    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(ORPHANED)
            time.sleep(0.2)

    threading.Thread(target=watch, name="lips-parent-watch", daemon=True).start()


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) != 1:
        print("usage: python -m lips.node.child package.module:function", file=sys.stderr)
        return 2
    _watch_parent(os.getppid())
    function = load(argv[0])
    pid = int(os.environ[PID_VAR])
    endpoints = json.loads(os.environ[ENDPOINTS_VAR])
    if not isinstance(endpoints, list) or not all(isinstance(e, str) for e in endpoints):
        raise ValueError(f"{ENDPOINTS_VAR} must be a JSON array of endpoint strings")
    fields, args = read_input(sys.stdin.buffer.read())

    from lips import blocking

    with blocking.connect(endpoints, pid=pid, name=f"eval-{pid}") as space:
        result = function(space, *args)
        space.out((*fields, result))
    # No goodbye here: killed after one and before its exit, it would be restarted with
    # no log left to suppress its result.  lipsd says it once the exit is clean.
    return 0


if __name__ == "__main__":
    sys.exit(main())
