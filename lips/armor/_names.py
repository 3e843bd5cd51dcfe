"""
ARMOR ids and the names of types and slots: what is valid, checked in one place.

An ARMOR id is system-wide unique and readable: dot-separated labels, the first naming
the kind of ARMOR (C{ftm}, C{sm.job7}, C{exec.job7.t1.r2}, C{daemon.n3}).  A label is
lower-case letters, digits and inner hyphens; the first label starts with a letter.
Managers hand ids out (L{lips.armor.Manager.install}); this module only says which
strings are ids.

A name (a message type, an ARMOR or block type, a block's slot in an ARMOR) is
lower-case words joined by hyphens: C{install}, C{armor-dead}, C{forward-recovery}.

Every check raises L{MessageError} (a L{ValueError}): ids and names mostly come in
messages, from other processes, and a message with a bad one is refused as a whole.
"""

from __future__ import annotations

import re
from typing import Final, NewType

__all__ = [
    "DAEMON_KIND",
    "FTM_ID",
    "MAX_ID_LABELS",
    "MAX_ID_LENGTH",
    "MAX_NAME_LENGTH",
    "ArmorId",
    "MessageError",
    "armor_id",
    "check_label",
    "check_name",
    "daemon_id",
    "id_labels",
]

ArmorId = NewType("ArmorId", str)
"""A valid ARMOR id (made by L{armor_id})."""

#: The longest ARMOR id, in characters.
MAX_ID_LENGTH: Final = 128
#: The most labels in an ARMOR id.
MAX_ID_LABELS: Final = 8
#: The longest name (message type, ARMOR or block type, slot).
MAX_NAME_LENGTH: Final = 64

_LABEL: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?")
_KIND: Final = re.compile(r"[a-z](?:[a-z0-9-]{0,30}[a-z0-9])?")
_NAME: Final = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")


class MessageError(ValueError):
    """
    A message, a body, an ARMOR id or a name is malformed; the text says how.  The
    codec's decoder raises nothing else, whatever the bytes.
    """


def armor_id(text: object) -> ArmorId:
    """
    C{text} as an L{ArmorId}.

    @raise MessageError: if it is not a string of 1 to L{MAX_ID_LABELS} labels, at
        most L{MAX_ID_LENGTH} characters, the first a kind (starting with a letter).
    """
    if type(text) is not str:
        raise MessageError(f"an ARMOR id is a string, not {type(text).__name__}")
    if len(text) > MAX_ID_LENGTH:
        raise MessageError(f"an ARMOR id has at most {MAX_ID_LENGTH} characters: {text[:40]!r}...")
    labels = text.split(".")
    if len(labels) > MAX_ID_LABELS:
        raise MessageError(f"an ARMOR id has at most {MAX_ID_LABELS} labels: {text!r}")
    if not _KIND.fullmatch(labels[0]) or not all(_LABEL.fullmatch(x) for x in labels[1:]):
        raise MessageError(
            f"not an ARMOR id: {text!r} (dot-separated lower-case labels, the first"
            " starting with a letter, as 'ftm', 'sm.job7' or 'exec.job7.t1.r2')"
        )
    return ArmorId(text)


def check_label(text: object, what: str = "a label") -> str:
    """
    C{text} if it can be a label of an ARMOR id (after the first).

    @raise MessageError: if it cannot.
    """
    if type(text) is not str or not _LABEL.fullmatch(text):
        raise MessageError(f"{what} is lower-case letters, digits and inner hyphens, not {text!r}")
    return text


def id_labels(id: ArmorId) -> tuple[str, ...]:
    """The labels of C{id}: C{("exec", "job7", "t1", "r2")}."""
    return tuple(id.split("."))


def check_name(text: object, what: str = "a name") -> str:
    """
    C{text} if it is a name: lower-case words joined by hyphens, at most
    L{MAX_NAME_LENGTH} characters (C{armor-dead}, C{forward-recovery}).

    @raise MessageError: if it is not.
    """
    if type(text) is not str or len(text) > MAX_NAME_LENGTH or not _NAME.fullmatch(text):
        shown = text if not isinstance(text, str) else text[: MAX_NAME_LENGTH + 1]
        raise MessageError(
            f"{what} is lower-case words joined by hyphens (as 'armor-dead'), not {shown!r}"
        )
    return text


#: The kind of a node daemon's id: the daemon of node C{n3} is C{daemon.n3}.
DAEMON_KIND: Final = "daemon"

#: The Fault Tolerance Manager's id: there is one.
FTM_ID: Final = armor_id("ftm")


def daemon_id(node: str) -> ArmorId:
    """
    The ARMOR id of the daemon of C{node} (C{daemon.n3}): where a manager sends what
    is for that node (installs, uninstalls), and who reports what happens there.

    @raise MessageError: if C{node} cannot be a label.
    """
    return armor_id(f"{DAEMON_KIND}.{check_label(node, 'a node name')}")
