"""
What a process's checkpoint holds: its state and, if it asks, files of its working
directory (level 3 of the LiPS paper: a process restarted on another node finds them
there again).

The checkpoint's bytes are msgpack: C{[1, state, [[name, mode, contents], ...]]}.  They
come back from a server, so L{unpack} trusts nothing: a file name must be a plain name
in the working directory (no path separators, not C{.} or C{..}), and a malformed
checkpoint is a L{CheckpointError}, never a file written somewhere else.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import msgpack

from lips.errors import CheckpointError

__all__ = ["pack", "unpack"]

FORMAT: Final = 1
_NAME: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*|\.[A-Za-z0-9_][A-Za-z0-9_.+-]*")


def _check_name(name: object) -> str:
    if type(name) is not str or not _NAME.fullmatch(name) or name in (".", ".."):
        raise CheckpointError(
            f"{name!r} is not a file name in the working directory (no paths, no '..')"
        )
    return name


def pack(state: Any, files: Sequence[str] = (), directory: Path | None = None) -> bytes:
    """
    The bytes of a checkpoint of C{state} and of C{files} (names in C{directory}, the
    working directory by default).

    @raise CheckpointError: the state is not msgpack-encodable, a name is not a plain
        file name, or a file cannot be read.
    """
    where = Path.cwd() if directory is None else directory
    kept = []
    for name in files:
        path = where / _check_name(name)
        try:
            kept.append([name, path.stat().st_mode & 0o777, path.read_bytes()])
        except OSError as e:
            raise CheckpointError(f"cannot keep {path} with the checkpoint: {e}") from None
    try:
        return msgpack.packb([FORMAT, state, kept], use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as e:
        raise CheckpointError(f"a checkpoint's state must be msgpack-encodable: {e}") from None


def unpack(blob: bytes, directory: Path | None = None, restore: bool = True) -> Any:
    """
    The state in checkpoint C{blob}; with C{restore}, its files are written back into
    C{directory} (the working directory by default), each replaced whole.

    @raise CheckpointError: the checkpoint is malformed or a file cannot be written.
    """
    try:
        body = msgpack.unpackb(blob, raw=False, strict_map_key=False)
    except Exception as e:  # msgpack raises several unrelated types on bad input
        raise CheckpointError(f"the checkpoint is not msgpack: {e}") from None
    if type(body) is not list or len(body) != 3 or body[0] != FORMAT:
        raise CheckpointError("the checkpoint is not of a format this client knows")
    _, state, files = body
    if type(files) is not list or not all(
        type(f) is list and len(f) == 3 and type(f[1]) is int and type(f[2]) is bytes
        for f in files
    ):
        raise CheckpointError("the checkpoint's files are malformed")
    names = [_check_name(f[0]) for f in files]
    if restore:
        where = Path.cwd() if directory is None else directory
        for name, (_, mode, contents) in zip(names, files, strict=True):
            _write(where / name, contents, mode & 0o777)
    return state


def _write(path: Path, contents: bytes, mode: int) -> None:
    temporary = path.with_name(f".{path.name}.lips-restore")
    try:
        with open(temporary, "wb") as f:
            f.write(contents)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except OSError as e:
        raise CheckpointError(f"cannot restore {path}: {e}") from None
