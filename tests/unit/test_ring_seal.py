"""
Tests for L{lips.ring.Sealer}: ring datagrams are authenticated (or encrypted), and
anything else is dropped with a reason.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from lips.ring import Dropped, DropReason, Mode, Opened, Sealer
from lips.ring._seal import HEADER

KEY = b"k" * 32
MODES = (Mode.AUTHENTICATED, Mode.ENCRYPTED)


def counter_nonce() -> Callable[[int], bytes]:
    n = itertools.count()
    return lambda size: next(n).to_bytes(size, "big")


class SealerTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        """A sealed datagram opens to its type, sender and body, in both modes."""
        for mode in MODES:
            s = Sealer(KEY, 7, mode)
            for body in (b"", b"x", b"\x00" * 1400):
                self.assertEqual(s.open(s.seal(3, 42, body)), Opened(3, 42, body))
            self.assertEqual(len(s.seal(1, 1, b"abc")), 3 + s.overhead)

    def test_encrypted_hides_body(self) -> None:
        """In encrypted mode the body does not appear in the datagram."""
        s = Sealer(KEY, 7, Mode.ENCRYPTED)
        secret = b"the tuple ('salary', 100000)"
        self.assertNotIn(secret, s.seal(1, 1, secret))

    def test_every_flipped_bit_is_dropped(self) -> None:
        """Changing any single bit of a datagram makes it drop, never open differently."""
        for mode in MODES:
            s = Sealer(KEY, 7, mode, counter_nonce())
            good = s.seal(2, 9, b"payload")
            for i in range(len(good) * 8):
                bad = bytearray(good)
                bad[i // 8] ^= 1 << (i % 8)
                self.assertIsInstance(s.open(bytes(bad)), Dropped, (mode, i))

    def test_reasons(self) -> None:
        """Each kind of bad datagram is dropped with its own reason."""
        s = Sealer(KEY, 7)
        good = s.seal(2, 9, b"payload")
        cases = {
            DropReason.TRUNCATED: good[:HEADER],
            DropReason.BAD_MAGIC: b"XX" + good[2:],
            DropReason.BAD_VERSION: good[:2] + b"\x09" + good[3:],
            DropReason.OTHER_CLUSTER: Sealer(KEY, 8).seal(2, 9, b"payload"),
            DropReason.WRONG_MODE: Sealer(KEY, 7, Mode.ENCRYPTED).seal(2, 9, b"payload"),
            DropReason.BAD_AUTH: Sealer(b"q" * 32, 7).seal(2, 9, b"payload"),
        }
        for reason, datagram in cases.items():
            self.assertEqual(s.open(datagram), Dropped(reason))

    def test_bad_configuration(self) -> None:
        """A short key or an out-of-range cluster id is refused."""
        self.assertRaises(ValueError, Sealer, b"short", 1)
        self.assertRaises(ValueError, Sealer, KEY, 2**32)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=200), st.sampled_from(MODES))
    def test_arbitrary_bytes(self, data: bytes, mode: Mode) -> None:
        """Arbitrary bytes are dropped, with a reason, and never raise."""
        self.assertIsInstance(Sealer(KEY, 7, mode).open(data), Dropped)
