"""
Tuples, templates and matching.

A tuple is a non-empty sequence of values; a value is an C{int} (64-bit signed),
C{float}, C{str}, C{bytes}, C{bool}, C{None}, or a sequence of values.  Lists and
tuples are the same thing on the wire, so every sequence is normalised to a Python
C{tuple}.

A template has the shape of a tuple where any field (at any depth) may instead be a
I{formal}: one of the types C{int}, C{float}, C{str}, C{bytes}, C{bool}, meaning "any
value of exactly this type", or L{ANY}, meaning "any value".

Matching is strict: same arity, exact types (C{True} matches neither C{int} nor C{1};
C{1} does not match C{1.0}), and floats compare by their IEEE-754 bits, so a NaN
matches the same NaN and C{-0.0} does not match C{0.0}.  Every field has a hashable
I{key} with exactly these semantics, used both for matching and for indexing.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import Any, Final, TypeAlias

import attrs

__all__ = [
    "ANY",
    "FORMAL_TYPES",
    "DEFAULT_LIMITS",
    "Limits",
    "Template",
    "TemplateError",
    "TupleError",
    "TupleTooLarge",
    "UnknownExtension",
    "Value",
    "LTuple",
    "field_key",
    "formal_by_name",
    "formal_name",
    "make_tuple",
    "make_template",
    "tuple_keys",
]

INT_MIN: Final = -(2**63)
INT_MAX: Final = 2**63 - 1

Value: TypeAlias = "int | float | str | bytes | bool | None | tuple[Value, ...]"
LTuple: TypeAlias = tuple[Any, ...]
Key: TypeAlias = tuple[Any, ...]

_pack_double = struct.Struct(">d").pack


class TupleError(ValueError):
    """A tuple (or a value in it) is not a valid LiPS tuple."""


class TemplateError(TupleError):
    """A template is not a valid LiPS template."""


class TupleTooLarge(TupleError):
    """A tuple or template exceeds the configured encoded-size limit."""


@attrs.frozen
class Limits:
    """
    Bounds on what a tuple or template may be.

    @ivar max_arity: the most fields a tuple (or any nested sequence) may have.
    @ivar max_depth: the deepest nesting of sequences inside a tuple (the tuple itself
        is depth 1).
    @ivar max_size: the largest canonical encoding of a tuple, in bytes.
    """

    max_arity: int = attrs.field(default=64, validator=attrs.validators.ge(1))
    max_depth: int = attrs.field(default=8, validator=attrs.validators.ge(1))
    max_size: int = attrs.field(default=1 << 20, validator=attrs.validators.ge(16))


DEFAULT_LIMITS: Final = Limits()


class _AnyType:
    """The type of L{ANY}: a wildcard that matches any single value."""

    _instance: _AnyType | None = None

    def __new__(cls) -> _AnyType:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ANY"

    def __reduce__(self) -> str:
        return "ANY"


ANY: Final = _AnyType()


@attrs.frozen
class UnknownExtension:
    """
    A msgpack extension value the codec does not know, kept as a marker so that the
    tuple or template holding it is refused with a clear error.
    """

    code: int
    data: bytes

    def __str__(self) -> str:
        return f"msgpack ext type {self.code} with {len(self.data)} bytes of data"


#: The types that may stand as formals in a template.
FORMAL_TYPES: Final[tuple[type, ...]] = (int, float, str, bytes, bool)
_FORMAL_NAMES: Final = {int: "int", float: "float", str: "str", bytes: "bytes", bool: "bool"}
_SCALARS: Final = frozenset({int, float, str, bytes, bool, type(None)})


def field_key(value: Any) -> Key:
    """
    The hashable identity of a validated value under strict matching.

    Two values match as actuals exactly when their keys are equal.
    """
    t = type(value)
    if t is float:
        return (float, _pack_double(value))
    if t is tuple:
        return (tuple, tuple([field_key(v) for v in value]))
    return (t, value)


def tuple_keys(values: LTuple) -> tuple[Key, ...]:
    """The key of every field of a validated tuple."""
    return tuple([field_key(v) for v in values])


def _check_value(value: Any, depth: int, limits: Limits, where: str) -> Any:
    t = type(value)
    if t is int:
        if value < INT_MIN or value > INT_MAX:
            raise TupleError(f"{where}: integer {value} does not fit in 64 signed bits")
        return value
    if t in _SCALARS:
        return value
    if t is tuple or t is list:
        if depth >= limits.max_depth:
            raise TupleError(f"{where}: nesting deeper than {limits.max_depth} levels")
        if len(value) > limits.max_arity:
            raise TupleError(f"{where}: {len(value)} elements, more than {limits.max_arity}")
        return tuple(
            [_check_value(v, depth + 1, limits, f"{where}[{i}]") for i, v in enumerate(value)]
        )
    if t is type and value in _FORMAL_NAMES:
        raise TupleError(f"{where}: a formal (?{_FORMAL_NAMES[value]}) is not a value")
    if value is ANY:
        raise TupleError(f"{where}: ANY is not a value")
    if t is UnknownExtension:
        raise TupleError(f"{where}: unknown encoded value ({value})")
    raise TupleError(f"{where}: values of type {t.__name__} cannot be stored in a tuple")


def _check_shape(fields: Any, limits: Limits, noun: str, error: type[TupleError]) -> None:
    """The checks tuples and templates share: a non-empty sequence, not too long."""
    if type(fields) is not tuple and type(fields) is not list:
        raise error(f"a {noun} must be a tuple or list, not {type(fields).__name__}")
    if not fields:
        raise error(f"a {noun} must have at least one field")
    if len(fields) > limits.max_arity:
        raise error(f"{noun} has {len(fields)} fields, more than {limits.max_arity}")


def make_tuple(values: Sequence[Any], limits: Limits = DEFAULT_LIMITS) -> LTuple:
    """
    Validate C{values} as a LiPS tuple and return it normalised (lists become tuples).

    The encoded-size limit is checked where the tuple is encoded (the client before it
    sends, the wire decoder when it receives), since that is where its size is known
    without a second encoding.

    @raise TupleError: if it is not a non-empty sequence of storable values within
        C{limits}.
    """
    _check_shape(values, limits, "tuple", TupleError)
    out = []
    for i, v in enumerate(values):
        t = type(v)
        if t is int:
            if v < INT_MIN or v > INT_MAX:
                raise TupleError(f"field {i}: integer {v} does not fit in 64 signed bits")
            out.append(v)
        elif t in _SCALARS:
            out.append(v)
        else:
            out.append(_check_value(v, 1, limits, f"field {i}"))
    return tuple(out)


# A compiled check is (position, kind, argument):
_ACTUAL: Final = 0  # argument: the field's key
_FORMAL: Final = 1  # argument: the exact type
_NESTED: Final = 2  # argument: the tuple of checks for the nested sequence and its length


def _compile(
    fields: Sequence[Any], depth: int, limits: Limits, where: str
) -> tuple[tuple[Any, ...], tuple[tuple[int, int, Any], ...], bool]:
    """Normalise template fields; return (fields, checks, fully_actual)."""
    norm: list[Any] = []
    checks: list[tuple[int, int, Any]] = []
    all_actual = True
    for i, f in enumerate(fields):
        if f is ANY:
            norm.append(ANY)
            all_actual = False
        elif type(f) is type:
            if f not in _FORMAL_NAMES:
                raise TemplateError(
                    f"field {where}{i}: {f.__name__} is not a formal type "
                    f"(use one of {', '.join(_FORMAL_NAMES.values())} or ANY)"
                )
            norm.append(f)
            checks.append((i, _FORMAL, f))
            all_actual = False
        elif type(f) is tuple or type(f) is list:
            if depth >= limits.max_depth:
                raise TemplateError(
                    f"field {where}{i}: nesting deeper than {limits.max_depth} levels"
                )
            if len(f) > limits.max_arity:
                raise TemplateError(
                    f"field {where}{i}: {len(f)} elements, more than {limits.max_arity}"
                )
            sub, subchecks, sub_actual = _compile(f, depth + 1, limits, f"{where}{i}.")
            norm.append(sub)
            if sub_actual:
                checks.append((i, _ACTUAL, field_key(sub)))
            else:
                checks.append((i, _NESTED, (len(sub), subchecks)))
                all_actual = False
        elif type(f) in _SCALARS and type(f) is not int:
            norm.append(f)
            checks.append((i, _ACTUAL, field_key(f)))
        else:
            try:
                v = _check_value(f, depth, limits, f"field {where}{i}")
            except TupleError as e:
                raise TemplateError(str(e)) from None
            norm.append(v)
            checks.append((i, _ACTUAL, field_key(v)))
    return tuple(norm), tuple(checks), all_actual


def _match_nested(value: Any, length: int, checks: tuple[tuple[int, int, Any], ...]) -> bool:
    if type(value) is not tuple or len(value) != length:
        return False
    for pos, kind, arg in checks:
        v = value[pos]
        if kind == _ACTUAL:
            if field_key(v) != arg:
                return False
        elif kind == _FORMAL:
            if type(v) is not arg:
                return False
        elif not _match_nested(v, *arg):
            return False
    return True


@attrs.frozen(eq=False)
class Template:
    """
    A compiled template.  Build one with L{make_template}.

    @ivar fields: the normalised fields (formals as types, L{ANY} as itself).
    @ivar arity: the number of fields.
    @ivar index_keys: C{(position, key)} for every fully actual field, for index lookup.
    """

    fields: tuple[Any, ...]
    arity: int
    index_keys: tuple[tuple[int, Key], ...]
    _checks: tuple[tuple[int, int, Any], ...]

    def matches(self, values: LTuple, keys: tuple[Key, ...] | None = None) -> bool:
        """
        Whether the tuple C{values} matches.  C{keys} are its L{tuple_keys}, if known.
        """
        if len(values) != self.arity:
            return False
        for pos, kind, arg in self._checks:
            if kind == _ACTUAL:
                k = keys[pos] if keys is not None else field_key(values[pos])
                if k != arg:
                    return False
            elif kind == _FORMAL:
                if type(values[pos]) is not arg:
                    return False
            elif not _match_nested(values[pos], *arg):
                return False
        return True

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Template):
            return NotImplemented
        return self._checks == other._checks and self.arity == other.arity

    def __hash__(self) -> int:
        return hash((self.arity, self._checks))

    def __repr__(self) -> str:
        return f"Template({_show(self.fields)})"


def _show(fields: Iterable[Any]) -> str:
    parts = []
    for f in fields:
        if type(f) is type:
            parts.append(f"?{_FORMAL_NAMES[f]}")
        elif type(f) is tuple:
            parts.append(f"({_show(f)})")
        else:
            parts.append(repr(f))
    return ", ".join(parts)


def make_template(fields: Sequence[Any] | Template, limits: Limits = DEFAULT_LIMITS) -> Template:
    """
    Validate and compile a template.

    @raise TemplateError: if it is not a non-empty sequence of values and formals within
        C{limits}.
    """
    if isinstance(fields, Template):
        return fields
    _check_shape(fields, limits, "template", TemplateError)
    # Programs use the same few templates over and over: reuse their compiled form.  The
    # cache key must tell apart what strict matching tells apart, and (1, True, 1.0) or
    # (0.0, -0.0) are equal as Python values; so only flat templates of types whose
    # equality is already strict are cached, keyed by their values and types.
    types = tuple(map(type, fields))
    cacheable = _CACHEABLE.issuperset(types)
    if cacheable:
        key = (limits, tuple(fields), types)
        cached = _template_cache.get(key)
        if cached is not None:
            return cached
    norm, checks, _ = _compile(fields, 1, limits, "")
    index_keys = tuple((pos, arg) for pos, kind, arg in checks if kind == _ACTUAL)
    template = Template(norm, len(norm), index_keys, checks)
    if cacheable:
        if len(_template_cache) >= _TEMPLATE_CACHE_SIZE:
            _template_cache.clear()
        _template_cache[key] = template
    return template


#: Field types whose Python equality is exactly strict matching (see make_template).
_CACHEABLE: Final = frozenset({str, bytes, int, bool, type(None), type, _AnyType})
_TEMPLATE_CACHE_SIZE: Final = 4096
_template_cache: dict[tuple[Any, ...], Template] = {}


def formal_name(t: type) -> str:
    """The name of a formal type as written in templates (C{"int"}, ...)."""
    return _FORMAL_NAMES[t]


def formal_by_name(name: str) -> type:
    """The formal type named C{name}; raise L{TemplateError} if there is none."""
    for t, n in _FORMAL_NAMES.items():
        if n == name:
            return t
    raise TemplateError(
        f"unknown formal type {name!r} (use one of {', '.join(_FORMAL_NAMES.values())})"
    )
