"""
Tests for L{lips.tuples}: tuples, templates, strict matching, limits and the canonical
msgpack codec.

The hypothesis strategies and the naive reference matcher defined here are shared with
the tuple space and wire tests.
"""

from __future__ import annotations

import contextlib
import copy
import enum
import math
import pickle
import struct
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from lips.tuples import (
    ANY,
    DEFAULT_LIMITS,
    FORMAL_TYPES,
    Limits,
    TemplateError,
    TupleError,
    TupleTooLarge,
    UnknownExtension,
    field_key,
    formal_by_name,
    formal_name,
    make_template,
    make_tuple,
    packb,
    tuple_keys,
    unpackb,
)

INT_MIN = -(2**63)
INT_MAX = 2**63 - 1

#: Hypothesis settings for the property tests of the unit suite: fast, no deadline (a
#: loaded CI machine must not fail a test for being slow), no example database (trial
#: runs in a fresh _trial_temp, so it would never be read back), and a reproduction blob
#: printed with any failure.
PROPERTIES = settings(
    max_examples=150,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)

# -- strategies ---------------------------------------------------------------------

scalars: st.SearchStrategy[Any] = st.one_of(
    st.integers(INT_MIN, INT_MAX),
    st.floats(),
    st.text(max_size=6),
    st.binary(max_size=6),
    st.booleans(),
    st.none(),
)


def lips_values(depth: int = 3) -> st.SearchStrategy[Any]:
    """Storable values nested at most C{depth} sequences deep."""
    if depth == 0:
        return scalars
    return st.one_of(scalars, st.lists(lips_values(depth - 1), max_size=3).map(tuple))


#: Valid, normalised LiPS tuples (within L{DEFAULT_LIMITS}).
lips_tuples: st.SearchStrategy[tuple[Any, ...]] = st.lists(
    lips_values(), min_size=1, max_size=5
).map(tuple)

formals: st.SearchStrategy[Any] = st.sampled_from([*FORMAL_TYPES, ANY])


def pattern_for(draw: st.DrawFn, value: Any) -> Any:
    """A template field drawn to sometimes match C{value} and sometimes not."""
    choice = draw(st.integers(0, 5))
    if choice == 0:
        return value
    if choice == 1:
        return ANY
    if choice == 2:
        return type(value) if type(value) in FORMAL_TYPES else ANY
    if choice == 3 and type(value) is tuple:
        return tuple(pattern_for(draw, v) for v in value)
    if choice == 4:
        return draw(formals)
    return draw(lips_values(1))


@st.composite
def tuple_and_template(draw: st.DrawFn) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """A tuple and a template built from it (or from a similar tuple)."""
    values = draw(lips_tuples)
    fields = tuple(pattern_for(draw, v) for v in values)
    if draw(st.integers(0, 9)) == 0:
        fields = fields[:-1] or (ANY, ANY)
    return values, fields


lips_templates: st.SearchStrategy[tuple[Any, ...]] = tuple_and_template().map(lambda p: p[1])

# -- the naive reference ------------------------------------------------------------


def float_bits(value: float) -> bytes:
    return struct.pack(">d", value)


def strict_equal(a: Any, b: Any) -> bool:
    """
    Equality under LiPS' strict rules, written out naively: same exact type, floats by
    their IEEE-754 bits, sequences and maps field by field.
    """
    if type(a) is not type(b):
        return False
    if type(a) is float:
        return float_bits(a) == float_bits(b)
    if type(a) is tuple or type(a) is list:
        return len(a) == len(b) and all(strict_equal(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is dict:
        return a.keys() == b.keys() and all(strict_equal(a[k], b[k]) for k in a)
    return bool(a == b)


def naive_match(pattern: Any, value: Any) -> bool:
    """Whether template field C{pattern} matches C{value}, by the rules as written."""
    if pattern is ANY:
        return True
    if type(pattern) is type:
        return type(value) is pattern
    if type(pattern) is tuple:
        return (
            type(value) is tuple
            and len(value) == len(pattern)
            and all(naive_match(p, v) for p, v in zip(pattern, value, strict=True))
        )
    return strict_equal(pattern, value)


def depth_of(value: Any) -> int:
    if type(value) is not tuple:
        return 0
    return 1 + max((depth_of(v) for v in value), default=0)


def nest(levels: int) -> Any:
    """A value that is C{levels} sequences deep: C{((("x",),),)} for 3."""
    value: Any = "x"
    for _ in range(levels):
        value = (value,)
    return value


NAN = float("nan")
OTHER_NAN = struct.unpack(">d", bytes.fromhex("7ff8000000000001"))[0]


class Colour(enum.IntEnum):
    RED = 1


class _Str(str):
    pass


# -- tests --------------------------------------------------------------------------


class TupleTests(SynchronousTestCase):
    """L{make_tuple} validates and normalises tuples."""

    def test_lists_become_tuples(self) -> None:
        """Lists at every depth are normalised to tuples, and values are kept."""
        t = make_tuple(["a", [1, [2.5, b"x"]], None, True])
        self.assertEqual(t, ("a", (1, (2.5, b"x")), None, True))
        self.assertIs(type(t), tuple)
        self.assertIs(type(t[1]), tuple)
        self.assertIs(type(t[1][1]), tuple)

    def test_every_scalar_type_is_storable(self) -> None:
        """int, float, str, bytes, bool and None are storable values."""
        values = (1, 1.5, "s", b"b", False, None)
        self.assertTrue(strict_equal(make_tuple(values), values))

    def test_empty_tuple_refused(self) -> None:
        """A tuple has at least one field; a nested sequence may be empty."""
        self.assertRaises(TupleError, make_tuple, ())
        self.assertRaises(TupleError, make_tuple, [])
        self.assertEqual(make_tuple(((),)), ((),))

    def test_non_sequences_refused(self) -> None:
        """Only a tuple or a list is a tuple: not a str, bytes, dict, set or iterator."""
        for bad in ("abc", b"abc", {"a": 1}, {1}, iter([1]), 5, None):
            self.assertRaises(TupleError, make_tuple, bad)

    def test_unstorable_values_refused(self) -> None:
        """
        Values of any other type, at any depth, are refused: maps, sets, objects,
        formals, L{ANY}, and subclasses of the storable types.
        """
        for bad in ({}, {1}, object(), int, str, ANY, Colour.RED, _Str("s"), 1j, bytearray()):
            self.assertRaises(TupleError, make_tuple, (bad,))
            self.assertRaises(TupleError, make_tuple, (1, (2, (bad,))))

    def test_64_bit_integers(self) -> None:
        """Integers must fit in 64 signed bits, at the top level and nested."""
        self.assertEqual(make_tuple((INT_MIN, INT_MAX)), (INT_MIN, INT_MAX))
        for bad in (INT_MIN - 1, INT_MAX + 1, 2**64, -(2**100)):
            self.assertRaises(TupleError, make_tuple, (bad,))
            self.assertRaises(TupleError, make_tuple, ((bad,),))

    def test_arity_limit(self) -> None:
        """A tuple, and every nested sequence, may have at most max_arity fields."""
        limits = Limits(max_arity=3)
        self.assertEqual(make_tuple((1, 2, 3), limits), (1, 2, 3))
        self.assertRaises(TupleError, make_tuple, (1, 2, 3, 4), limits)
        self.assertEqual(make_tuple(((1, 2, 3),), limits), ((1, 2, 3),))
        self.assertRaises(TupleError, make_tuple, ((1, 2, 3, 4),), limits)
        default = DEFAULT_LIMITS.max_arity
        make_tuple([0] * default)
        self.assertRaises(TupleError, make_tuple, [0] * (default + 1))

    def test_depth_limit(self) -> None:
        """The tuple itself is depth 1; sequences may nest down to max_depth."""
        for max_depth in (1, 2, 3, 8):
            limits = Limits(max_depth=max_depth)
            ok = nest(max_depth - 1)
            self.assertEqual(make_tuple((ok,), limits), (ok,))
            self.assertRaises(TupleError, make_tuple, (nest(max_depth),), limits)
        self.assertRaises(TupleError, make_tuple, (nest(DEFAULT_LIMITS.max_depth),))

    def test_limits_validated(self) -> None:
        """Limits refuse bounds that would make every tuple invalid."""
        self.assertRaises(ValueError, Limits, max_arity=0)
        self.assertRaises(ValueError, Limits, max_depth=0)
        self.assertRaises(ValueError, Limits, max_size=15)

    def test_error_hierarchy(self) -> None:
        """Template and size errors are tuple errors, and tuple errors are ValueErrors."""
        self.assertTrue(issubclass(TupleError, ValueError))
        self.assertTrue(issubclass(TemplateError, TupleError))
        self.assertTrue(issubclass(TupleTooLarge, TupleError))

    @PROPERTIES
    @given(lips_tuples)
    def test_valid_tuples_accepted_unchanged(self, values: tuple[Any, ...]) -> None:
        """Every valid normalised tuple is accepted and returned strictly equal."""
        self.assertTrue(strict_equal(make_tuple(values), values))
        self.assertTrue(strict_equal(make_tuple(list(values)), values))


class FieldKeyTests(SynchronousTestCase):
    """L{field_key} is the identity of a value under strict matching."""

    def test_strict_distinctions(self) -> None:
        """True, 1 and 1.0 have different keys; so do 0.0 and -0.0, and str and bytes."""
        distinct = [1, True, 1.0, 0, False, 0.0, -0.0, "a", b"a", None, (1,), (True,)]
        keys = [field_key(v) for v in distinct]
        self.assertEqual(len(set(keys)), len(distinct))

    def test_nan_keys(self) -> None:
        """A NaN has the key of the same NaN; NaNs with other bits have other keys."""
        self.assertEqual(field_key(NAN), field_key(float("nan")))
        self.assertEqual(field_key((NAN,)), field_key((float("nan"),)))
        self.assertNotEqual(field_key(NAN), field_key(OTHER_NAN))
        self.assertNotEqual(field_key(NAN), field_key(-NAN))

    def test_tuple_keys(self) -> None:
        """L{tuple_keys} is the key of every field, in order."""
        values = make_tuple((1, "a", (2.0,)))
        self.assertEqual(tuple_keys(values), tuple(field_key(v) for v in values))

    @PROPERTIES
    @given(lips_values(), lips_values())
    def test_keys_equal_exactly_when_strictly_equal(self, a: Any, b: Any) -> None:
        """Two values have equal (and equally hashed) keys exactly when strictly equal."""
        self.assertEqual(field_key(a) == field_key(b), strict_equal(a, b))
        self.assertTrue(field_key(a) == field_key(a))
        self.assertEqual(hash(field_key(a)), hash(field_key(copy.deepcopy(a))))


class TemplateTests(SynchronousTestCase):
    """L{make_template} compiles templates, and L{Template.matches} matches strictly."""

    def assertMatches(self, fields: Any, values: Any) -> None:
        template = make_template(fields)
        t = make_tuple(values)
        self.assertTrue(template.matches(t), f"{template} should match {t!r}")
        self.assertTrue(template.matches(t, tuple_keys(t)))

    def assertNoMatch(self, fields: Any, values: Any) -> None:
        template = make_template(fields)
        t = make_tuple(values)
        self.assertFalse(template.matches(t), f"{template} should not match {t!r}")
        self.assertFalse(template.matches(t, tuple_keys(t)))

    def test_formals_match_their_exact_type(self) -> None:
        """Each formal matches values of exactly its type and nothing else."""
        samples = [1, 1.0, "1", b"1", True, None, (1,)]
        for formal in FORMAL_TYPES:
            for value in samples:
                if type(value) is formal:
                    self.assertMatches((formal,), (value,))
                else:
                    self.assertNoMatch((formal,), (value,))

    def test_bool_is_not_int(self) -> None:
        """True matches neither the int formal nor the actual 1, and 1 not True."""
        self.assertNoMatch((int,), (True,))
        self.assertNoMatch((1,), (True,))
        self.assertNoMatch((True,), (1,))
        self.assertNoMatch((bool,), (1,))
        self.assertNoMatch((0,), (False,))
        self.assertMatches((bool,), (False,))

    def test_int_is_not_float(self) -> None:
        """1 does not match 1.0 in either direction, nor the other type's formal."""
        self.assertNoMatch((1,), (1.0,))
        self.assertNoMatch((1.0,), (1,))
        self.assertNoMatch((float,), (1,))
        self.assertNoMatch((int,), (1.0,))

    def test_str_is_not_bytes(self) -> None:
        """A str actual does not match the equal-looking bytes, and vice versa."""
        self.assertNoMatch(("a",), (b"a",))
        self.assertNoMatch((b"a",), ("a",))
        self.assertNoMatch((str,), (b"a",))

    def test_floats_compare_by_bits(self) -> None:
        """NaN matches the same NaN, -0.0 does not match 0.0, and infinities match."""
        self.assertMatches((NAN,), (float("nan"),))
        self.assertNoMatch((NAN,), (OTHER_NAN,))
        self.assertNoMatch((0.0,), (-0.0,))
        self.assertNoMatch((-0.0,), (0.0,))
        self.assertMatches((math.inf,), (math.inf,))
        self.assertMatches(((NAN,),), ((NAN,),))

    def test_any_matches_one_value(self) -> None:
        """L{ANY} matches any single value, including None and sequences."""
        for value in (1, True, 1.0, "a", b"a", None, (), (1, (2,))):
            self.assertMatches((ANY,), (value,))
        self.assertNoMatch((ANY,), (1, 2))

    def test_arity_must_be_equal(self) -> None:
        """A template matches only tuples with exactly as many fields."""
        self.assertNoMatch((ANY, ANY), (1,))
        self.assertNoMatch((ANY,), (1, 2))
        self.assertNoMatch(((ANY, ANY),), ((1,),))

    def test_nested_templates(self) -> None:
        """Nested templates match nested tuples field by field, formals included."""
        self.assertMatches(("job", (int, ANY)), ("job", (3, "x")))
        self.assertNoMatch(("job", (int, ANY)), ("job", (3.0, "x")))
        self.assertNoMatch(("job", (int, ANY)), ("job", "ab"))
        self.assertNoMatch(("job", (int, ANY)), ("job", 3))
        self.assertNoMatch(("job", (int, ANY)), ("job", (3,)))
        self.assertMatches((("a", (float,)),), (("a", (1.5,)),))
        self.assertNoMatch((("a", (float,)),), (("a", (1,)),))

    def test_fully_actual_nested_field(self) -> None:
        """A nested field with no formals matches as one actual value and is indexed."""
        template = make_template(["a", [1, [2]]])
        self.assertEqual(template.index_keys, ((0, field_key("a")), (1, field_key((1, (2,))))))
        self.assertMatches(template.fields, ("a", (1, (2,))))
        self.assertNoMatch(template.fields, ("a", (1, (True,))))

    def test_index_keys_are_the_actual_fields(self) -> None:
        """index_keys hold (position, key) of every actual field, and only those."""
        template = make_template((int, "a", ANY, (1, str), 2.0))
        self.assertEqual(template.index_keys, ((1, field_key("a")), (4, field_key(2.0))))
        self.assertEqual(template.arity, 5)

    def test_fields_are_normalised(self) -> None:
        """Lists in a template become tuples; formals and L{ANY} are kept as themselves."""
        template = make_template([int, [ANY, [str]], "x"])
        self.assertEqual(template.fields, (int, (ANY, (str,)), "x"))
        self.assertIs(template.fields[1][0], ANY)

    def test_bad_formals_refused(self) -> None:
        """Only int, float, str, bytes and bool are formals; other types are refused."""
        for bad in (list, tuple, dict, type(None), object, type, Colour, complex):
            self.assertRaises(TemplateError, make_template, (bad,))
            self.assertRaises(TemplateError, make_template, (1, (bad,)))

    def test_bad_templates_refused(self) -> None:
        """Empty templates, non-sequences and unstorable actuals are template errors."""
        bad: Any
        for bad in ((), [], "ab", {"a": 1}, 3):
            self.assertRaises(TemplateError, make_template, bad)
        for field in ({}, object(), Colour.RED, INT_MAX + 1):
            self.assertRaises(TemplateError, make_template, (field,))
            self.assertRaises(TemplateError, make_template, ((field,),))

    def test_template_limits(self) -> None:
        """Templates obey the same arity and depth limits as tuples."""
        limits = Limits(max_arity=2, max_depth=2)
        make_template((ANY, (int, ANY)), limits)
        self.assertRaises(TemplateError, make_template, (ANY, ANY, ANY), limits)
        self.assertRaises(TemplateError, make_template, ((ANY, ANY, ANY),), limits)
        self.assertRaises(TemplateError, make_template, (((int,),),), limits)
        self.assertRaises(TemplateError, make_template, (nest(2),), limits)

    def test_formals_are_not_values(self) -> None:
        """Formals and L{ANY} may stand in templates but never in tuples."""
        self.assertRaises(TupleError, make_tuple, (ANY,))
        self.assertRaises(TupleError, make_tuple, (int,))
        self.assertRaises(TupleError, make_tuple, ((float,),))

    def test_compiled_template_passes_through(self) -> None:
        """make_template of a L{Template} returns it unchanged."""
        template = make_template((int,))
        self.assertIs(make_template(template), template)

    def test_reused_templates_stay_strict(self) -> None:
        """
        Templates built again from equal-looking fields are told apart as strictly as
        the first time: 1, True and 1.0, 0.0 and -0.0, str and bytes; and the limits
        they are built under still apply.
        """
        for _ in range(2):
            ones = [make_template((v, "k")) for v in (1, True, 1.0)]
            self.assertEqual(len(set(ones)), 3)
            self.assertFalse(ones[0].matches((True, "k")))
            self.assertFalse(ones[1].matches((1, "k")))
            self.assertFalse(make_template((0.0,)).matches((-0.0,)))
            self.assertFalse(make_template(("a",)).matches((b"a",)))
            self.assertFalse(make_template([int]).matches((True,)))
        make_template(("a", "b"))
        self.assertRaises(TemplateError, make_template, ("a", "b"), Limits(max_arity=1))
        self.assertRaises(TemplateError, make_template, (INT_MAX + 1,))
        self.assertRaises(TemplateError, make_template, (INT_MAX + 1,))

    def test_equality_and_hash(self) -> None:
        """Templates are equal (and hash alike) exactly when they match alike."""
        a = make_template(["a", int, [ANY, 1.0]])
        b = make_template(("a", int, (ANY, 1.0)))
        self.assertEqual(a, b)
        self.assertEqual(hash(a), hash(b))
        for other in (
            ("a", float, (ANY, 1.0)),
            ("a", int, (ANY, 1)),
            ("a", int, (ANY, ANY)),
            ("a", int, ANY),
            ("a", int, (1.0, ANY)),
            ("a", int, (ANY, 1.0), ANY),
            (True, int, (ANY, 1.0)),
        ):
            self.assertNotEqual(a, make_template(other))
        self.assertNotEqual(make_template((ANY,)), make_template((ANY, ANY)))
        self.assertNotEqual(make_template((0.0,)), make_template((-0.0,)))
        self.assertFalse(a == ("a", int, (ANY, 1.0)))

    def test_repr(self) -> None:
        """A template shows its formals as ?type and L{ANY} as ANY."""
        self.assertEqual(
            repr(make_template(("a", int, (ANY, b"x"), None))),
            "Template('a', ?int, (ANY, b'x'), None)",
        )

    def test_formal_names(self) -> None:
        """Every formal has a name that leads back to it; unknown names are refused."""
        for t in FORMAL_TYPES:
            self.assertIs(formal_by_name(formal_name(t)), t)
        self.assertEqual(
            [formal_name(t) for t in FORMAL_TYPES], ["int", "float", "str", "bytes", "bool"]
        )
        self.assertRaises(TemplateError, formal_by_name, "list")
        self.assertRaises(TemplateError, formal_by_name, "ANY")

    def test_any_is_a_singleton(self) -> None:
        """L{ANY} is one object: copying or pickling it gives it back."""
        self.assertEqual(repr(ANY), "ANY")
        self.assertIs(type(ANY)(), ANY)
        self.assertIs(copy.copy(ANY), ANY)
        self.assertIs(copy.deepcopy(ANY), ANY)
        self.assertIs(pickle.loads(pickle.dumps(ANY)), ANY)

    @PROPERTIES
    @given(tuple_and_template())
    def test_matching_agrees_with_naive_reference(
        self, pair: tuple[tuple[Any, ...], tuple[Any, ...]]
    ) -> None:
        """Compiled matching gives the same answer as the rules applied naively."""
        values, fields = pair
        template = make_template(fields)
        expected = naive_match(fields, values)
        self.assertEqual(template.matches(values), expected)
        self.assertEqual(template.matches(values, tuple_keys(values)), expected)

    @PROPERTIES
    @given(lips_tuples)
    def test_tuple_as_template_matches_itself(self, values: tuple[Any, ...]) -> None:
        """A tuple used as a template matches that tuple (NaNs included)."""
        self.assertTrue(make_template(values).matches(values))


class CodecTests(SynchronousTestCase):
    """L{packb} and L{unpackb} are the one canonical encoding."""

    def test_canonical_bytes(self) -> None:
        """
        Sequences are arrays, str is str, bytes is bin, integers are shortest, floats
        are always float64.
        """
        self.assertEqual(packb((1, "a", b"a", None, True)), b"\x95\x01\xa1a\xc4\x01a\xc0\xc3")
        self.assertEqual(packb([1, [2]]), packb((1, (2,))))
        self.assertEqual(packb(1.5), b"\xcb" + float_bits(1.5))
        self.assertEqual(packb(-0.0), b"\xcb" + float_bits(-0.0))
        self.assertEqual(packb(-1), b"\xff")
        self.assertEqual(packb(200), b"\xcc\xc8")
        self.assertEqual(packb(INT_MIN), b"\xd3" + struct.pack(">q", INT_MIN))

    def test_formals_and_any_are_ext_types(self) -> None:
        """A formal is ext type 1 with its letter; L{ANY} is ext type 2 with no data."""
        letters = {int: b"i", float: b"f", str: b"s", bytes: b"y", bool: b"b"}
        for t, letter in letters.items():
            self.assertEqual(packb(t), msgpack.packb(msgpack.ExtType(1, letter)))
        self.assertEqual(packb(ANY), msgpack.packb(msgpack.ExtType(2, b"")))

    def test_unencodable_refused(self) -> None:
        """Objects that are not tuples, values, formals or L{ANY} are not encoded."""
        for bad in (object(), list, type(None), Colour, {1, 2}):
            self.assertRaises(TypeError, packb, (bad,))

    def test_template_round_trip(self) -> None:
        """Formals and L{ANY} come back as themselves, at any depth."""
        fields = ("a", int, (ANY, (float, str, bytes, bool)), None)
        decoded = unpackb(packb(fields))
        self.assertEqual(decoded, fields)
        self.assertIs(decoded[2][0], ANY)
        self.assertEqual(make_template(decoded), make_template(fields))

    def test_sequences_decode_as_tuples(self) -> None:
        """Arrays decode as tuples, so a decoded tuple is already normalised."""
        decoded = unpackb(packb([1, [2, [3]]]))
        self.assertEqual(decoded, (1, (2, (3,))))
        self.assertIs(type(decoded[1]), tuple)

    def test_unknown_ext_is_a_marker(self) -> None:
        """
        Ext values other than formals and L{ANY} (or with the wrong data) decode to an
        L{UnknownExtension} marker, which no tuple or template accepts and which is
        never encoded again.
        """
        for code, data in ((3, b""), (127, b"x"), (1, b"x"), (1, b""), (1, b"ii"), (2, b"\x00")):
            decoded = unpackb(msgpack.packb([1, [msgpack.ExtType(code, data)]]))
            self.assertEqual(decoded, (1, (UnknownExtension(code, data),)))
            self.assertRaises(TupleError, make_tuple, decoded)
            self.assertRaises(TemplateError, make_template, decoded)
            self.assertRaises(TemplateError, make_template, decoded[1])
            self.assertRaises(TypeError, packb, decoded)

    def test_malformed_refused(self) -> None:
        """Truncated data, trailing bytes and maps with non-string keys raise ValueError."""
        good = packb((1, "abc"))
        for bad in (b"", good[:-1], good + b"\x00", b"\xc1", msgpack.packb({1: 2})):
            self.assertRaises(ValueError, unpackb, bad)

    def test_maps_with_string_keys(self) -> None:
        """Maps with str keys (message bodies such as STATS) decode as dicts."""
        self.assertEqual(unpackb(packb({"a": 1, "b": "x"})), {"a": 1, "b": "x"})

    @PROPERTIES
    @given(lips_tuples)
    def test_tuple_round_trip(self, values: tuple[Any, ...]) -> None:
        """Every tuple comes back strictly equal: types, float bits and NaNs kept."""
        decoded = unpackb(packb(values))
        self.assertTrue(strict_equal(decoded, values), f"{decoded!r} != {values!r}")
        self.assertEqual(tuple_keys(decoded), tuple_keys(values))
        self.assertEqual(packb(decoded), packb(values))

    @PROPERTIES
    @given(lips_templates)
    def test_template_round_trip_property(self, fields: tuple[Any, ...]) -> None:
        """Every template comes back as an equal template."""
        decoded = unpackb(packb(fields))
        self.assertTrue(strict_equal(decoded, fields))
        self.assertEqual(make_template(decoded), make_template(fields))

    @PROPERTIES
    @given(st.binary(max_size=40))
    def test_arbitrary_bytes(self, data: bytes) -> None:
        """unpackb of arbitrary bytes returns a value or raises ValueError, nothing else."""
        with contextlib.suppress(ValueError):
            unpackb(data)
