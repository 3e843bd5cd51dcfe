"""
A server's persistent state: the ring sequence number it must never reuse.

A ring id carries a sequence number that grows with every ring a server takes part in
(the engine's C{Persist(RingStored.RING_SEQ, seq)}, L{lips.ring.RingStored}).  After a
restart the server must start above the highest one it has used, or an old ring id
could come back and old messages be taken for new ones.  L{RingSeqStore} keeps that
number in one small file, C{<state_dir>/<name>.ringseq}, holding the number in decimal
and a newline.

Writes are atomic: the new number goes to a temporary file in the same directory, which
is flushed to disk, renamed over the old file, and the directory is flushed too.  A crash
leaves either the old file or the new one, never a mix.  A file that does not hold a
number is an error, never read as 0.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Final

from lips.files import replace
from lips.ring import MAX_COUNT

__all__ = ["RingSeqStore", "StateFileError"]

_CONTENT: Final = re.compile(rb"(0|[1-9][0-9]{0,18})\n")


class StateFileError(ValueError):
    """A state file cannot be read or does not hold what it should; the text says which."""


class RingSeqStore:
    """
    The ring sequence number of one server, kept in a file across restarts.

    @param path: the file; its directory is created (mode 0700) on the first L{save}.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RingSeqStore({str(self.path)!r})"

    def load(self) -> int:
        """
        The stored number, or 0 when there is no file yet.

        @raise StateFileError: the file cannot be read or does not hold a number.
        """
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return 0
        except OSError as e:
            raise StateFileError(
                f"{self.path}: cannot read the ring sequence number: {e.strerror or e}"
            ) from None
        match = _CONTENT.fullmatch(data)
        if match is None or int(match[1]) > MAX_COUNT:
            shown = data[:40] + (b"..." if len(data) > 40 else b"")
            raise StateFileError(
                f"{self.path}: corrupt ring sequence file: expected a decimal number "
                f"up to {MAX_COUNT} and a newline, found {shown!r} (it is not read as 0: "
                "ring ids must never repeat)"
            )
        return int(match[1])

    def save(self, seq: int) -> bool:
        """
        Store C{seq} if it is above the stored number; the number never moves backwards.

        @return: whether C{seq} was written (C{False} when the file already holds C{seq}
            or more).
        @raise ValueError: C{seq} is not an integer from 0 to 2**63 - 1.
        @raise StateFileError: the present file is corrupt (it is left as it is).
        @raise OSError: the file cannot be written; the old one is then unchanged.
        """
        if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= MAX_COUNT:
            raise ValueError(f"a ring sequence number is an integer 0-{MAX_COUNT}, not {seq!r}")
        if seq <= self.load():
            return False
        replace(self.path, b"%d\n" % seq)
        return True
