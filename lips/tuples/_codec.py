"""
The one canonical wire encoding of tuples and templates: msgpack.

Sequences are arrays, C{str} is msgpack str, C{bytes} is msgpack bin, integers take
their shortest form and floats are always float64.  A formal travels as ext type 1
whose data is one letter (C{i f s y b}); L{ANY} as ext type 2 with empty data.  Any other
ext value decodes to an L{UnknownExtension} marker, which validation refuses; nothing is
ever unpickled or evaluated.
"""

from __future__ import annotations

import threading
from typing import Any, Final

import msgpack

from lips.tuples._model import ANY, UnknownExtension

__all__ = ["EXT_ANY", "EXT_FORMAL", "packb", "unpackb"]

EXT_FORMAL: Final = 1
EXT_ANY: Final = 2

_LETTER_OF: Final = {int: b"i", float: b"f", str: b"s", bytes: b"y", bool: b"b"}
_TYPE_OF: Final = {v: k for k, v in _LETTER_OF.items()}
_ANY_EXT: Final = msgpack.ExtType(EXT_ANY, b"")
_FORMAL_EXT: Final = {t: msgpack.ExtType(EXT_FORMAL, c) for t, c in _LETTER_OF.items()}


def _default(obj: Any) -> Any:
    if obj is ANY:
        return _ANY_EXT
    ext = _FORMAL_EXT.get(obj) if type(obj) is type else None
    if ext is not None:
        return ext
    raise TypeError(f"cannot encode {type(obj).__name__} {obj!r}")


def _ext_hook(code: int, data: bytes) -> Any:
    if code == EXT_FORMAL:
        t = _TYPE_OF.get(data)
        if t is not None:
            return t
    elif code == EXT_ANY and not data:
        return ANY
    # Not an error of the encoding: the tuple or template holding it is refused when it is
    # validated, with an error that says which field.
    return UnknownExtension(code, data)


_local = threading.local()


def packb(obj: Any) -> bytes:
    """Encode C{obj} (tuples, templates and plain message bodies) canonically."""
    try:
        packer = _local.packer
    except AttributeError:
        # One packer per thread: a packer is not thread-safe, and building one per call
        # costs more than the packing itself.
        packer = _local.packer = msgpack.Packer(use_bin_type=True, default=_default)
    try:
        return packer.pack(obj)  # type: ignore[no-any-return]
    except BaseException:
        packer.reset()
        raise


def unpackb(data: bytes) -> Any:
    """
    Decode msgpack C{data}; sequences come back as tuples, formals as their types and
    L{ANY} as itself.

    @raise ValueError: (or a subclass) on anything malformed, truncated or with trailing
        bytes.
    """
    return msgpack.unpackb(
        data,
        raw=False,
        use_list=False,
        ext_hook=_ext_hook,
        strict_map_key=True,
        timestamp=0,
    )
