"""
Tests for the parsing and printing of the C{lips} command line.
"""

from __future__ import annotations

import contextlib
import io

from twisted.trial.unittest import SynchronousTestCase

from lips import ANY
from lips.cli import FieldError, format_tuple, main, parse_fields


class FieldTests(SynchronousTestCase):
    def test_json_and_words(self) -> None:
        """Fields are JSON values; a bare word is a string."""
        self.assertEqual(
            parse_fields(["job", "1", "2.5", "true", "null", '"7"', "[1, [2]]"], template=False),
            ("job", 1, 2.5, True, None, "7", (1, (2,))),
        )

    def test_formals(self) -> None:
        """In templates ?int etc. are formals, ? and ?any match anything, ?? escapes."""
        self.assertEqual(
            parse_fields(["?int", "?str", "?", "?any", "??x", '["?float", 1]'], template=True),
            (int, str, ANY, ANY, "?x", (float, 1)),
        )

    def test_formals_are_strings_in_tuples(self) -> None:
        """In a tuple (out) a ?word is just a string."""
        self.assertEqual(parse_fields(["?int"], template=False), ("?int",))

    def test_bytes(self) -> None:
        """Bytes are written and printed as {"$bytes": base64}."""
        [b] = parse_fields(['{"$bytes": "AAE="}'], template=False)
        self.assertEqual(b, b"\x00\x01")
        self.assertEqual(format_tuple((b, "x", (1,))), '[{"$bytes": "AAE="}, "x", [1]]')

    def test_bad_fields(self) -> None:
        """Unknown formals, objects and bad base64 are clear errors."""
        for text in ["?list", '{"a": 1}', '{"$bytes": "!!"}']:
            self.assertRaises(FieldError, parse_fields, [text], True)


class OptionTests(SynchronousTestCase):
    def test_bad_timeouts_are_usage_errors(self) -> None:
        """A negative, infinite or non-numeric --timeout is exit 2 with a message."""
        for value in ("-1", "nan", "inf", "soon"):
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                raised = self.assertRaises(SystemExit, main, ["in", f"--timeout={value}", "job"])
            self.assertEqual(raised.code, 2)
            self.assertIn("--timeout", err.getvalue())
