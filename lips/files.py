"""
Files that must survive a crash: written whole or not at all.

L{replace} writes a file's new content to a temporary file in the same directory,
flushes it to disk, renames it over the old one and flushes the directory, so a crash
leaves the old content or the new, never a mix.  Used for a server's ring sequence
number (L{lips.cluster}) and its journal's snapshots (L{lips.replica}).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["fsync_directory", "replace"]


def replace(path: Path, content: bytes) -> None:
    """Atomically replace C{path}'s content (its directory is made, mode 0700, if need be)."""
    directory = path.parent
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    fsync_directory(directory)


def fsync_directory(directory: Path) -> None:
    """Flush a directory's entries (a rename, a new file) to disk, where the platform allows it."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
