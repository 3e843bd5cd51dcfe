"""
Tuple spaces as ARMOR destinations: how a sans-IO ARMOR reads and writes the System
Tuple Space (the FTM's global tables) and an application's space (its checkpoints)
without doing I/O.

An ARMOR sends a L{SPACE_REQUEST} message to the pseudo-ARMOR C{space.<name>}
(L{space_id}: C{space.system}, C{space.job7}); the host that carries its messages out
(its daemon) answers it with a tuple-space client and sends back a L{SPACE_REPLY} naming
the same request.  So the request is a plain L{Send<lips.kernel.Send>} effect and the
answer a plain message: no new effect, and a simulator answers it with a model
(L{TableSpace}).

A request is a short list of operations (L{SpaceOp}) carried out as one: either every
one succeeds and all are applied, or nothing is applied and the reply says which failed.
That is what makes a table update one replicated operation: a guard (C{rdp} of the
writer's epoch tuple) and the change travel together, so a fenced FTM's write is refused
by the space itself, and an epoch is taken (C{inp} of the current one, C{out} of the
next) and the tables read in the same step.  The operations:

  - C{out(fields)}: store the tuple; always succeeds.
  - C{inp(template)} / C{rdp(template)}: take / read the oldest match; fails if none.
  - C{absent(template)}: succeeds if nothing matches.
  - C{scan(template)}: every match, oldest first (may be none).
  - C{delete(template)}: take every match; never fails; its value is how many.

A template is C{fields} with the positions in C{wild} matching anything (L{ANY
<lips.tuples.ANY>}); every other field is an actual, matched strictly as the tuple
space matches.

On the FixServers a request is one atomic request of the tuple space (lipsd's
C{carry_out}: each operation one L{Step<lips.tuples.Step>}, C{scan} and C{delete} the
steps of those names), applied in the total order as one event, so it is all or none
on every replica.  The simulator's L{TableSpace} is the reference for what a host must
answer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, Final

import attrs

from lips.armor._messages import Body, Message, check_value
from lips.armor._names import ArmorId, MessageError, armor_id, check_label
from lips.tuples import ANY, LTuple, Template, TupleError, make_template, make_tuple

__all__ = [
    "OP_KINDS",
    "SPACE_KIND",
    "SPACE_REPLY",
    "SPACE_REQUEST",
    "SYSTEM_SPACE",
    "SpaceCalls",
    "SpaceOp",
    "SpaceReply",
    "SpaceRequest",
    "TableSpace",
    "space_id",
]

#: The kind of the pseudo-ARMOR ids a host answers for with a tuple space.
SPACE_KIND: Final = "space"
#: ARMOR to its host: carry these operations out (L{SpaceRequest}).
SPACE_REQUEST: Final = "space-request"
#: Host to ARMOR: what came of them (L{SpaceReply}).
SPACE_REPLY: Final = "space-reply"

#: The operations a request may hold.
OP_KINDS: Final = frozenset({"out", "inp", "rdp", "absent", "scan", "delete"})
_MAX_OPS: Final = 64


def space_id(name: str) -> ArmorId:
    """The destination of the space C{name}: C{space.system}, C{space.job7}."""
    return armor_id(f"{SPACE_KIND}.{check_label(name, 'a space name')}")


#: The System Tuple Space, where the FTM's tables live.
SYSTEM_SPACE: Final = space_id("system")


def _fields(value: object) -> tuple[Any, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise MessageError(f"an operation's fields are an array, not {value!r}")
    fields = tuple(value)
    check_value(fields)
    if not fields:
        raise MessageError("an operation needs at least one field")
    return fields


def _wild(value: object) -> tuple[int, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise MessageError(f"wild is an array of positions, not {value!r}")
    wild = tuple(value)
    if not all(type(i) is int for i in wild) or len(set(wild)) != len(wild):
        raise MessageError(f"wild is an array of distinct positions, not {wild!r}")
    return tuple(sorted(wild))


@attrs.frozen
class SpaceOp:
    """
    One operation of a request (see the module docstring): C{kind}, on C{fields},
    the positions in C{wild} matching anything (templates only).
    """

    kind: str
    fields: tuple[Any, ...] = attrs.field(converter=_fields)
    wild: tuple[int, ...] = attrs.field(default=(), converter=_wild)

    def __attrs_post_init__(self) -> None:
        if self.kind not in OP_KINDS:
            raise MessageError(f"an operation is one of {sorted(OP_KINDS)}, not {self.kind!r}")
        if self.kind == "out" and self.wild:
            raise MessageError("an out stores actual fields only")
        if any(not 0 <= i < len(self.fields) for i in self.wild):
            raise MessageError(f"wild positions out of range: {self.wild}")

    @classmethod
    def out(cls, *fields: Any) -> SpaceOp:
        return cls("out", fields)

    @classmethod
    def template(cls, kind: str, *fields: Any) -> SpaceOp:
        """An operation on a template: a field given as L{ANY} matches anything."""
        wild = tuple(i for i, f in enumerate(fields) if f is ANY)
        return cls(kind, tuple(None if f is ANY else f for f in fields), wild)

    def to_value(self) -> dict[str, Any]:
        value: dict[str, Any] = {"kind": self.kind, "fields": self.fields}
        if self.wild:
            value["wild"] = self.wild
        return value

    @classmethod
    def from_value(cls, value: object) -> SpaceOp:
        if isinstance(value, SpaceOp):
            return value
        if type(value) is not dict or not {"kind", "fields"} <= set(value) <= {
            "kind",
            "fields",
            "wild",
        }:
            raise MessageError(f"an operation is a map of kind, fields and wild, not {value!r}")
        kind = value["kind"]
        if type(kind) is not str:
            raise MessageError(f"an operation's kind is a string, not {kind!r}")
        return cls(kind, value["fields"], value.get("wild", ()))

    def compiled(self) -> Template:
        """Its template (for every kind but C{out})."""
        return make_template(
            tuple(ANY if i in self.wild else f for i, f in enumerate(self.fields))
        )


def _ops(value: object) -> tuple[SpaceOp, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise MessageError(f"ops is an array of operations, not {value!r}")
    ops = tuple(SpaceOp.from_value(v) for v in value)
    if not 0 < len(ops) <= _MAX_OPS:
        raise MessageError(f"a request has 1 to {_MAX_OPS} operations, not {len(ops)}")
    return ops


def _request_number(instance: object, attribute: attrs.Attribute[int], value: object) -> None:
    if type(value) is not int or value < 1:
        raise MessageError(f"{attribute.name} is a positive integer, not {value!r}")


@attrs.frozen
class SpaceRequest(Body):
    """Carry out C{ops} as one (see the module docstring); C{request} names the answer."""

    message_types: ClassVar[frozenset[str]] = frozenset({SPACE_REQUEST})

    request: int = attrs.field(validator=_request_number)
    ops: tuple[SpaceOp, ...] = attrs.field(converter=_ops)

    def to_value(self) -> dict[str, Any]:
        return {"request": self.request, "ops": [op.to_value() for op in self.ops]}


def _values(value: object) -> tuple[Any, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise MessageError(f"values is an array, not {value!r}")
    return tuple(value)


@attrs.frozen
class SpaceReply(Body):
    """
    What came of request C{request}: all applied (C{ok}), with one value per operation
    (a tuple for C{inp}/C{rdp}, an array of tuples for C{scan}, a count for C{delete},
    None otherwise); or nothing applied, operation number C{failed} having failed.
    """

    message_types: ClassVar[frozenset[str]] = frozenset({SPACE_REPLY})

    request: int = attrs.field(validator=_request_number)
    ok: bool = attrs.field(validator=attrs.validators.instance_of(bool))
    failed: int = -1
    values: tuple[Any, ...] = attrs.field(default=(), converter=_values)


class TableSpace:
    """
    A tuple space that carries requests out as L{SpaceRequest}s say: the model a
    simulator answers C{space.*} with, and the reference for a host's client.  Matching
    is the tuple space's (L{lips.tuples}); oldest first.
    """

    def __init__(self) -> None:
        self._tuples: list[LTuple] = []
        self.requests = 0
        self.refused = 0
        #: Counts the requests that changed something.
        self.version = 0

    def __len__(self) -> int:
        return len(self._tuples)

    def tuples(self) -> list[LTuple]:
        """Every tuple, oldest first."""
        return list(self._tuples)

    def scan(self, *fields: Any) -> list[LTuple]:
        """Every tuple matching C{fields} (L{ANY} matches anything), oldest first."""
        return self.matching(make_template(fields))

    def matching(self, template: Template) -> list[LTuple]:
        """Every tuple matching C{template}, oldest first."""
        return [t for t in self._tuples if template.matches(t)]

    def apply(self, request: SpaceRequest) -> SpaceReply:
        """Carry C{request} out: all its operations, or none."""
        self.requests += 1
        work = list(self._tuples)
        values: list[Any] = []
        for number, op in enumerate(request.ops):
            try:
                ok, value = self._one(work, op)
            except TupleError:
                ok, value = False, None
            if not ok:
                self.refused += 1
                return SpaceReply(request.request, False, number)
            values.append(value)
        if any(op.kind in ("out", "inp", "delete") for op in request.ops):
            self.version += 1
        self._tuples = work
        return SpaceReply(request.request, True, -1, tuple(values))

    @staticmethod
    def _one(work: list[LTuple], op: SpaceOp) -> tuple[bool, Any]:
        if op.kind == "out":
            work.append(make_tuple(op.fields))
            return True, None
        template = op.compiled()
        if op.kind in ("scan", "delete"):
            matches = [i for i, t in enumerate(work) if template.matches(t)]
            if op.kind == "scan":
                return True, tuple(work[i] for i in matches)
            for i in reversed(matches):
                del work[i]
            return True, len(matches)
        index = next((i for i, t in enumerate(work) if template.matches(t)), None)
        if op.kind == "absent":
            return index is None, None
        if index is None:
            return False, None
        found = work[index]
        if op.kind == "inp":
            del work[index]
        return True, found


Continuation = Callable[[SpaceReply, float], None]


class SpaceCalls:
    """
    An ARMOR's requests waiting for their replies: L{call} sends one and keeps what to
    do with the answer; L{answer} is given each L{SPACE_REPLY} that comes in.

    @param send: sends a message (C{type, destination, body}) as the ARMOR.
    """

    def __init__(self, send: Callable[[str, str, object], Message]) -> None:
        self._send = send
        self._next = 0
        self._waiting: dict[int, Continuation] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def call(self, space: str, ops: Sequence[SpaceOp], then: Continuation) -> int:
        """Send C{ops} to C{space}; C{then(reply, now)} runs when it answers."""
        self._next += 1
        self._waiting[self._next] = then
        self._send(SPACE_REQUEST, space, SpaceRequest(self._next, tuple(ops)))
        return self._next

    def answer(self, message: Message, now: float) -> bool:
        """Hand a reply to what waits for it; whether anything did."""
        reply = SpaceReply.from_message(message)
        then = self._waiting.pop(reply.request, None)
        if then is None:
            return False
        then(reply, now)
        return True

    def forget(self) -> None:
        """Drop every waiting request (the ARMOR no longer cares for the answers)."""
        self._waiting.clear()
