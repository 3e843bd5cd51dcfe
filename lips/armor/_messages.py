"""
ARMOR messages and their one codec.

A L{Message} is a frozen, slotted attrs class: its C{type} (a name, as C{install} or
C{armor-dead}), its C{source} and C{destination} ARMOR ids, a message C{id} (a positive
integer, one per message sent by its source) and a msgpack C{body}.  The body is kept
encoded, as bytes, so that a message is immutable and a daemon can route it without
reading it; L{Message.value} decodes it.  L{Message.of} makes a message from a plain
value (or a typed L{Body}).

Plain values are what msgpack carries and nothing more: None, booleans, integers
(64 bits), floats, strings, bytes, arrays (lists or tuples; tuples when decoded) and
maps with string keys, nested at most L{MAX_DEPTH} deep.  No extension types, no
timestamps, never pickle or eval.

L{encode} turns a message into bytes and L{decode} turns bytes back into a message:

    [FORMAT, type, source, destination, id, body]     a msgpack array; body a bin

The decoder is the only place that trusts nothing.  It refuses input longer than
L{MAX_MESSAGE_SIZE}, anything but exactly that array, fields of the wrong type (a
boolean is not an integer), ids and names that are not valid, a body longer than
L{MAX_BODY_SIZE} or that does not decode to a plain value; every refusal is a
L{MessageError}, for the caller to count and drop.  The same checks run whenever a
L{Message} is made, so what L{encode} writes L{decode} reads back.

Typed bodies (L{Body} subclasses) are attrs classes whose fields become the keys of a
map; L{Body.from_message} checks a message's body as strictly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar, Final, Self, cast

import attrs
import msgpack

from lips.armor._names import ArmorId, MessageError, armor_id, check_name

__all__ = [
    "ARMOR_DEAD",
    "ARMOR_FAILED",
    "COMPOSE",
    "COMPOSED",
    "COMPOSE_REFUSED",
    "FORMAT",
    "INSTALL",
    "INSTALLED",
    "INSTALL_FAILED",
    "MAX_BODY_SIZE",
    "MAX_DEPTH",
    "MAX_MESSAGE_ID",
    "MAX_MESSAGE_SIZE",
    "SUBSCRIBE",
    "TIMER",
    "UNINSTALL",
    "UNINSTALLED",
    "UNSUBSCRIBE",
    "Body",
    "Message",
    "check_value",
    "decode",
    "encode",
    "pack_body",
    "unpack_body",
]

#: The version of the encoding, its first field.
FORMAT: Final = 1
#: The longest encoded message accepted, in bytes.
MAX_MESSAGE_SIZE: Final = 4 * 1024 * 1024
#: The longest body, in bytes (room is left for the other fields).
MAX_BODY_SIZE: Final = MAX_MESSAGE_SIZE - 1024
#: The deepest nesting of arrays and maps in a body (a scalar body is depth 0).
MAX_DEPTH: Final = 32
#: The largest message id.
MAX_MESSAGE_ID: Final = 2**63 - 1

_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**64 - 1

# -- the message types of the layer ----------------------------------------------------------
# Within an ARMOR (its own id is source and destination):
#: A block subscribes to a message type: L{lips.armor.Subscription}.
SUBSCRIBE: Final = "subscribe"
#: A block unsubscribes from a message type: L{lips.armor.Subscription}.
UNSUBSCRIBE: Final = "unsubscribe"
#: A block's timer is due: L{lips.armor.TimerDue}, delivered to that block only.
TIMER: Final = "timer"
# To and from a CompositionController:
#: Add, remove or replace a block: L{lips.armor.Compose}.
COMPOSE: Final = "compose"
#: The change asked for is made: L{lips.armor.ComposeResult}.
COMPOSED: Final = "composed"
#: The change asked for cannot be made: L{lips.armor.ComposeResult}.
COMPOSE_REFUSED: Final = "compose-refused"
# Between a manager and the daemons of its subordinates' nodes:
#: Manager to daemon: install an ARMOR (L{lips.armor.Install}).
INSTALL: Final = "install"
#: Daemon to manager: it runs (L{lips.armor.Installed}).
INSTALLED: Final = "installed"
#: Daemon to manager: it could not be installed (L{lips.armor.InstallFailed}).
INSTALL_FAILED: Final = "install-failed"
#: Manager to daemon: uninstall an ARMOR (L{lips.armor.Uninstall}).
UNINSTALL: Final = "uninstall"
#: Daemon to manager: it is gone, as asked (L{lips.armor.Uninstalled}).
UNINSTALLED: Final = "uninstalled"
#: Daemon to manager: a subordinate crashed or hung and was killed
#: (L{lips.armor.ArmorDead}).
ARMOR_DEAD: Final = "armor-dead"
#: Manager to its own manager: a subordinate is given up (L{lips.armor.ArmorFailed}).
ARMOR_FAILED: Final = "armor-failed"


# -- plain values ---------------------------------------------------------------------------


def check_value(value: object) -> None:
    """
    Check that C{value} is a plain value (see the module docstring).

    @raise MessageError: if it is not, saying where.
    """
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        kind = type(v)
        if v is None or kind is bool or kind is float or kind is str or kind is bytes:
            continue
        if kind is int:
            if not _INT_MIN <= v <= _INT_MAX:  # type: ignore[operator]
                raise MessageError(f"an integer out of msgpack's range: {v}")
            continue
        if kind is tuple or kind is list or kind is dict:
            if depth >= MAX_DEPTH:
                raise MessageError(f"a value nested deeper than {MAX_DEPTH}")
            if kind is dict:
                for key, item in v.items():  # type: ignore[attr-defined]
                    if type(key) is not str:
                        raise MessageError(f"a map key must be a string, not {key!r}")
                    stack.append((item, depth + 1))
            else:
                stack.extend((item, depth + 1) for item in v)  # type: ignore[attr-defined]
            continue
        raise MessageError(f"not a plain value: {kind.__name__}")


def pack_body(value: object) -> bytes:
    """
    The msgpack encoding of the plain value C{value}, or of a L{Body}'s map.

    @raise MessageError: if it is not a plain value, or encodes longer than
        L{MAX_BODY_SIZE}.
    """
    if isinstance(value, Body):
        value = value.to_value()
    check_value(value)
    data: bytes = msgpack.packb(value, use_bin_type=True)
    if len(data) > MAX_BODY_SIZE:
        raise MessageError(f"a body of {len(data)} bytes is over {MAX_BODY_SIZE}")
    return data


def _refuse_ext(code: int, data: bytes) -> Any:
    raise MessageError(f"msgpack extension type {code} is not allowed")


def unpack(data: bytes, what: str) -> Any:
    """
    One msgpack value of C{data}, arrays as tuples, no extension types.

    @raise MessageError: naming C{what}, if it is not that.
    """
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            use_list=False,
            strict_map_key=True,
            ext_hook=_refuse_ext,
            max_ext_len=0,
        )
    except MessageError:
        raise
    except Exception as e:
        raise MessageError(f"{what} is not msgpack: {e}") from e


def unpack_body(data: bytes) -> Any:
    """
    Decode a body: a plain value (arrays as tuples).

    @raise MessageError: if C{data} is not bytes, longer than L{MAX_BODY_SIZE}, not
        exactly one msgpack value, or not a plain value.
    """
    if type(data) is not bytes:
        raise MessageError(f"a body is bytes, not {type(data).__name__}")
    if len(data) > MAX_BODY_SIZE:
        raise MessageError(f"a body of {len(data)} bytes is over {MAX_BODY_SIZE}")
    value = unpack(data, "the body")
    check_value(value)
    return value


# -- the message ----------------------------------------------------------------------------


def _type(instance: object, attribute: attrs.Attribute[str], value: object) -> None:
    check_name(value, "a message type")


def _message_id(instance: object, attribute: attrs.Attribute[int], value: object) -> None:
    if type(value) is not int or not 0 < value <= MAX_MESSAGE_ID:
        raise MessageError(f"a message id is an integer in [1, {MAX_MESSAGE_ID}], not {value!r}")


def _body(instance: object, attribute: attrs.Attribute[bytes], value: object) -> None:
    unpack_body(value)  # type: ignore[arg-type]


#: The body of a message that carries nothing: msgpack nil.
_NIL: Final = b"\xc0"


@attrs.frozen
class Message:
    """
    One ARMOR message (see the module docstring).

    @ivar type: what it is, a name (L{INSTALL}, L{ARMOR_DEAD}, a type of your own).
    @ivar source: the ARMOR that sent it.
    @ivar destination: the ARMOR it is for.
    @ivar id: its id, one per message its source sends (C{(source, id)} names it).
    @ivar body: its content, msgpack-encoded (see L{value}).
    @raise MessageError: if any field is not valid.
    """

    type: str = attrs.field(validator=_type)
    source: ArmorId = attrs.field(converter=armor_id)
    destination: ArmorId = attrs.field(converter=armor_id)
    id: int = attrs.field(validator=_message_id)
    body: bytes = attrs.field(default=_NIL, validator=_body)

    @classmethod
    def of(cls, type: str, source: str, destination: str, id: int, body: object = None) -> Message:
        """A message whose body is the plain value (or L{Body}) C{body}, encoded."""
        return cls(type, source, destination, id, pack_body(body))

    @property
    def local(self) -> bool:
        """Whether it stays within one ARMOR (its source is its destination)."""
        return self.source == self.destination

    def value(self) -> Any:
        """The body, decoded: a plain value (arrays as tuples)."""
        return unpack_body(self.body)


def encode(message: Message) -> bytes:
    """
    C{message} as bytes.

    @raise TypeError: if C{message} is not a L{Message}.
    """
    if not isinstance(message, Message):
        raise TypeError(f"not an ARMOR message: {message!r}")
    data: bytes = msgpack.packb(
        [
            FORMAT,
            message.type,
            message.source,
            message.destination,
            message.id,
            message.body,
        ],
        use_bin_type=True,
    )
    return data


def decode(data: bytes) -> Message:
    """
    The message C{data} encodes.

    @raise MessageError: for anything but a valid encoding of a valid message.
    """
    if type(data) is not bytes:
        raise MessageError(f"a message is bytes, not {type(data).__name__}")
    if len(data) > MAX_MESSAGE_SIZE:
        raise MessageError(f"a message of {len(data)} bytes is over {MAX_MESSAGE_SIZE}")
    fields = unpack(data, "the message")
    if type(fields) is not tuple or len(fields) != 6:
        raise MessageError("a message is an array of 6 fields")
    format, type_, source, destination, id, body = fields
    if type(format) is not int or format != FORMAT:
        raise MessageError(f"unknown message format {format!r} (this is format {FORMAT})")
    if type(body) is not bytes:
        raise MessageError(f"a message's body is msgpack bin, not {type(body).__name__}")
    return Message(type_, source, destination, id, body)


# -- typed bodies ---------------------------------------------------------------------------


class Body:
    """
    Base of typed bodies: a frozen attrs subclass whose fields are the keys of the map
    it encodes to.  Its validators and converters are the checks of what it may hold;
    L{from_value} runs them on what came in a message.

    @cvar message_types: the message types that carry it (for the docs, and a check).
    """

    __slots__ = ()

    message_types: ClassVar[frozenset[str]] = frozenset()

    def to_value(self) -> dict[str, Any]:
        """The map this body encodes to."""
        kind = cast("type[attrs.AttrsInstance]", type(self))
        return {f.name: getattr(self, f.name) for f in attrs.fields(kind)}

    @classmethod
    def from_value(cls, value: object) -> Self:
        """
        The body C{value} (a decoded plain value) holds.

        @raise MessageError: if it is not a map of exactly this class's fields (those
            with defaults may be left out), each valid.
        """
        if type(value) is not dict:
            raise MessageError(f"a {cls.__name__} body is a map, not {type(value).__name__}")
        fields = attrs.fields_dict(cast("type[attrs.AttrsInstance]", cls))
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise MessageError(f"a {cls.__name__} body has no field {unknown[0]!r}")
        missing = [n for n, f in fields.items() if n not in value and f.default is attrs.NOTHING]
        if missing:
            raise MessageError(f"a {cls.__name__} body needs its field {missing[0]!r}")
        try:
            return cls(**value)
        except (TypeError, ValueError) as e:  # MessageError is a ValueError
            raise MessageError(f"{cls.__name__}: {e}") from e

    @classmethod
    def from_message(cls, message: Message) -> Self:
        """
        The body of C{message}.

        @raise MessageError: if C{message} is not of one of L{message_types}, or its
            body is not a valid one of these.
        """
        if cls.message_types and message.type not in cls.message_types:
            raise MessageError(f"a {message.type!r} message does not carry a {cls.__name__}")
        return cls.from_value(message.value())


# -- validators for typed bodies -------------------------------------------------------------


def text(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """A string of at most 1,000 characters."""
    if type(value) is not str or len(value) > 1000:
        raise MessageError(f"{attribute.name} is a string of at most 1000 characters")


def name(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """A name (L{check_name})."""
    check_name(value, attribute.name)


def optional_name(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """A name or None."""
    if value is not None:
        check_name(value, attribute.name)


def seconds(value: object, what: str) -> float:
    """
    C{value} as a positive number of seconds (an ARMOR type's option).

    @raise MessageError: naming C{what}, if it is not one.
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise MessageError(f"{what} is a positive number of seconds, not {value!r}")
    return float(value)


def plain_map(value: object) -> dict[str, Any]:
    """A converter: a map with string keys of plain values (None for an empty one)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise MessageError(f"a configuration is a map, not {type(value).__name__}")
    result = dict(value)
    check_value(result)
    return result
