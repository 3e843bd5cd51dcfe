"""
Tests for L{lips.ring.Sealer}: ring datagrams are authenticated (or encrypted) and
fresh (each accepted once, none of a sender's earlier boot), and anything else is
dropped with a reason.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import struct
import time
from collections.abc import Callable

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from lips.ring import Dropped, DropReason, Mode, Opened, Sealer
from lips.ring._seal import (
    _HEADER,
    HEADER,
    MAGIC,
    MAX_COUNTER,
    MAX_SENDERS,
    TAG,
    VERSION,
    WINDOW,
    _derive,
)

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


def sealed_at(
    boot: int, counter: int, mode: Mode = Mode.AUTHENTICATED, sender: int = 9, body: bytes = b"p"
) -> bytes:
    """The datagram node C{sender} seals as its C{counter}th in boot C{boot}."""
    return Sealer(KEY, 7, mode, boot=boot, counter=counter).seal(2, sender, body)


def hand_sealed(header: bytes, body: bytes) -> bytes:
    """C{header} and C{body} authenticated with the cluster key, as a sealer would."""
    signed = header + body
    return signed + hmac.new(_derive(KEY, b"hmac-sha256"), signed, hashlib.sha256).digest()[:TAG]


class FreshnessTests(SynchronousTestCase):
    """
    Version 2 seals the sender's boot and counter; the receiving sealer's anti-replay
    window accepts each authentic datagram once, and none of a sender's earlier boot.
    """

    def test_header_carries_boot_and_counter(self) -> None:
        """
        Every datagram carries whom it is for (0: every member), the sealer's boot and
        the next counter, from 1.
        """
        for mode in MODES:
            s = Sealer(KEY, 7, mode, boot=12345)
            fields = [_HEADER.unpack_from(s.seal(3, 42, b"x")) for _ in range(3)]
            self.assertEqual(
                [(f[1], f[6], f[7], f[8]) for f in fields],
                [(2, 0, 12345, 1), (2, 0, 12345, 2), (2, 0, 12345, 3)],
            )
            self.assertEqual(s.overhead, 33 + (16 if mode is Mode.AUTHENTICATED else 28))
            self.assertEqual(len(s.seal(1, 1, b"abc")), 3 + s.overhead)

    def test_default_boot_is_the_clock(self) -> None:
        """Without an injected boot, the boot is the wall clock in microseconds."""
        before = time.time_ns() // 1000
        boot = Sealer(KEY, 7).boot
        self.assertTrue(before <= boot <= time.time_ns() // 1000)

    def test_round_trip_between_members(self) -> None:
        """What one member seals, another opens once, in both modes."""
        for mode in MODES:
            sender, receiver = Sealer(KEY, 7, mode, boot=5), Sealer(KEY, 7, mode, boot=6)
            for body in (b"", b"x", b"\x00" * 1400):
                self.assertEqual(receiver.open(sender.seal(3, 42, body)), Opened(3, 42, body))
            self.assertEqual(receiver.senders, 1)

    def test_replay_dropped(self) -> None:
        """The same datagram opened a second time is dropped as replayed, in both modes."""
        for mode in MODES:
            s, receiver = Sealer(KEY, 7, mode, boot=5), Sealer(KEY, 7, mode)
            datagram = s.seal(2, 9, b"payload")
            self.assertIsInstance(receiver.open(datagram), Opened)
            for _ in range(3):
                self.assertEqual(receiver.open(datagram), Dropped(DropReason.REPLAYED))

    def test_reordering_within_window(self) -> None:
        """
        Datagrams arriving out of order are accepted as long as they are within the
        window below the highest counter seen, and each only once.
        """
        for mode in MODES:
            s, receiver = Sealer(KEY, 7, mode, boot=5), Sealer(KEY, 7, mode)
            datagrams = [s.seal(2, 9, bytes([i])) for i in range(20)]
            order = [19, 3, 0, 18, 10, 1, 2, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15, 16, 17]
            for i in order:
                self.assertEqual(receiver.open(datagrams[i]), Opened(2, 9, bytes([i])), i)
            for i in order:
                self.assertEqual(receiver.open(datagrams[i]), Dropped(DropReason.REPLAYED))

    def test_window_edge(self) -> None:
        """
        With the highest counter C{top} seen, C{top - WINDOW + 1} is still accepted and
        C{top - WINDOW} is too old; a jump of more than the window forgets it all.
        """
        for mode in MODES:
            receiver = Sealer(KEY, 7, mode)
            top = 5000
            self.assertIsInstance(receiver.open(sealed_at(5, top, mode)), Opened)
            self.assertIsInstance(receiver.open(sealed_at(5, top - WINDOW + 1, mode)), Opened)
            for counter in (top - WINDOW, top - WINDOW - 1, 1):
                self.assertEqual(
                    receiver.open(sealed_at(5, counter, mode)), Dropped(DropReason.TOO_OLD)
                )
            self.assertIsInstance(receiver.open(sealed_at(5, top + 3 * WINDOW, mode)), Opened)
            self.assertEqual(receiver.open(sealed_at(5, top, mode)), Dropped(DropReason.TOO_OLD))
            self.assertIsInstance(receiver.open(sealed_at(5, top + 2 * WINDOW + 1, mode)), Opened)

    def test_earlier_boot_is_stale(self) -> None:
        """Once a later boot of a sender is seen, its earlier boots are dropped as stale."""
        for mode in MODES:
            receiver = Sealer(KEY, 7, mode)
            old = [sealed_at(10, c, mode) for c in (1, 2, 3)]
            self.assertIsInstance(receiver.open(sealed_at(11, 1, mode)), Opened)
            for datagram in old:
                self.assertEqual(receiver.open(datagram), Dropped(DropReason.STALE_BOOT))
            # Another sender's windows are its own.
            self.assertIsInstance(receiver.open(sealed_at(10, 1, mode, sender=8)), Opened)

    def test_later_boot_resets(self) -> None:
        """
        A later boot of a sender (it restarted, its counter from 1 again) is accepted,
        and starts its window afresh: the earlier boot is stale from then on.
        """
        for mode in MODES:
            receiver = Sealer(KEY, 7, mode)
            for counter in range(1, 3000, 7):
                self.assertIsInstance(receiver.open(sealed_at(10, counter, mode)), Opened)
            restarted = Sealer(KEY, 7, mode, boot=11)
            first = restarted.seal(2, 9, b"again")
            self.assertEqual(receiver.open(first), Opened(2, 9, b"again"))
            self.assertEqual(receiver.open(first), Dropped(DropReason.REPLAYED))
            self.assertIsInstance(receiver.open(restarted.seal(2, 9, b"more")), Opened)
            self.assertEqual(
                receiver.open(sealed_at(10, 5000, mode)), Dropped(DropReason.STALE_BOOT)
            )
            self.assertEqual(receiver.senders, 1)

    def test_forged_does_not_move_window(self) -> None:
        """
        A datagram that fails authentication never moves the window: not with a later
        boot, not with a higher counter, not with the counter a real datagram will
        carry.  The real datagrams are accepted after it.
        """
        for mode in MODES:
            s, receiver = Sealer(KEY, 7, mode, boot=50), Sealer(KEY, 7, mode)
            first, second = s.seal(2, 9, b"one"), s.seal(2, 9, b"two")
            forged_body = second[:-1] + bytes([second[-1] ^ 1])
            later_boot = bytearray(first)
            later_boot[13:21] = (51).to_bytes(8, "big")
            higher = bytearray(first)
            higher[21:29] = (1 + 3 * WINDOW).to_bytes(8, "big")
            other_key = Sealer(b"q" * 32, 7, mode, boot=60).seal(2, 9, b"evil")
            for forged in (forged_body, bytes(later_boot), bytes(higher), other_key):
                self.assertEqual(receiver.open(forged), Dropped(DropReason.BAD_AUTH))
            self.assertEqual(receiver.senders, 0)
            self.assertEqual(receiver.open(second), Opened(2, 9, b"two"))
            self.assertEqual(receiver.open(first), Opened(2, 9, b"one"))

    def test_counter_zero_refused(self) -> None:
        """Counter 0 is never sealed: an authentic datagram carrying it is dropped."""
        header = _HEADER.pack(MAGIC, VERSION, 2, Mode.AUTHENTICATED, 7, 9, 0, 5, 0)
        receiver = Sealer(KEY, 7)
        self.assertEqual(receiver.open(hand_sealed(header, b"p")), Dropped(DropReason.TOO_OLD))
        self.assertEqual(receiver.senders, 0)
        self.assertIsInstance(receiver.open(sealed_at(5, 1)), Opened)
        later = _HEADER.pack(MAGIC, VERSION, 2, Mode.AUTHENTICATED, 7, 9, 0, 6, 0)
        self.assertEqual(receiver.open(hand_sealed(later, b"p")), Dropped(DropReason.TOO_OLD))

    def test_version_1_refused(self) -> None:
        """
        A version-1 datagram (no boot, no counter), however long and properly
        authenticated with the cluster key, is dropped as of a bad version.
        """
        v1 = struct.Struct("!2sBBBII")
        for body in (b"", b"p", b"x" * 100):
            header = v1.pack(MAGIC, 1, 2, Mode.AUTHENTICATED, 7, 9)
            self.assertEqual(
                Sealer(KEY, 7).open(hand_sealed(header, body)), Dropped(DropReason.BAD_VERSION)
            )
        self.assertEqual(Sealer(KEY, 7).open(b"LR\x01"), Dropped(DropReason.BAD_VERSION))

    def test_table_cap(self) -> None:
        """
        A sealer keeps windows for at most MAX_SENDERS senders: an authentic datagram of
        one more is dropped (and counted) rather than grow the table; the known senders
        go on as before, and a forged datagram of a new sender is still a forgery.
        """
        receiver = Sealer(KEY, 7)
        sender = Sealer(KEY, 7, boot=3)
        for node in range(MAX_SENDERS):
            self.assertIsInstance(receiver.open(sender.seal(2, node, b"")), Opened)
        self.assertEqual(receiver.senders, MAX_SENDERS)
        newcomer = sender.seal(2, MAX_SENDERS, b"")
        self.assertEqual(receiver.open(newcomer), Dropped(DropReason.TOO_MANY_SENDERS))
        self.assertEqual(receiver.open(newcomer), Dropped(DropReason.TOO_MANY_SENDERS))
        forged = Sealer(b"q" * 32, 7).seal(2, 2**32 - 1, b"")
        self.assertEqual(receiver.open(forged), Dropped(DropReason.BAD_AUTH))
        self.assertEqual(receiver.senders, MAX_SENDERS)
        self.assertIsInstance(receiver.open(sender.seal(2, 0, b"")), Opened)
        self.assertIsInstance(receiver.open(Sealer(KEY, 7, boot=4).seal(2, 1, b"")), Opened)
        self.assertEqual(receiver.senders, MAX_SENDERS)

    def test_destination_under_the_seal(self) -> None:
        """The member a datagram is for is opened as sealed, and cannot be changed."""
        for mode in MODES:
            s = Sealer(KEY, 7, mode, boot=5)
            datagram = s.seal(1, 9, b"token", to=3)
            opened = Sealer(KEY, 7, mode).open(datagram)
            self.assertEqual(opened, Opened(1, 9, b"token", 3))
            header = bytearray(datagram)
            header[_HEADER.size - 20] ^= 1  # "to" is the 4 bytes before boot and counter
            self.assertEqual(
                Sealer(KEY, 7, mode).open(bytes(header)), Dropped(DropReason.BAD_AUTH)
            )

    def test_counter_never_wraps(self) -> None:
        """The last counter is 2**64-1; after it, seal raises instead of wrapping."""
        for mode in MODES:
            s = Sealer(KEY, 7, mode, boot=5, counter=MAX_COUNTER)
            last = s.seal(2, 9, b"last")
            self.assertEqual(_HEADER.unpack_from(last)[8], 2**64 - 1)
            self.assertIsInstance(Sealer(KEY, 7, mode).open(last), Opened)
            self.assertRaises(OverflowError, s.seal, 2, 9, b"one more")
            self.assertRaises(OverflowError, s.seal, 2, 9, b"one more")

    def test_bad_freshness_configuration(self) -> None:
        """A boot or first counter that does not fit in 64 bits (or is 0) is refused."""
        for kwargs in ({"boot": -1}, {"boot": 2**64}, {"counter": 0}, {"counter": 2**64}):
            self.assertRaises(ValueError, Sealer, KEY, 7, **kwargs)

    @settings(max_examples=200, deadline=None)
    @example([(1, 5, True), (2, 0, True), (2, 1, True)])
    @given(
        st.lists(
            st.tuples(st.integers(0, 3), st.integers(0, 3 * WINDOW), st.booleans()),
            max_size=60,
        )
    )
    def test_against_a_model(self, arrivals: list[tuple[int, int, bool]]) -> None:
        """
        For any sequence of datagrams of one sender (boot, counter, authentic or not),
        the sealer accepts exactly those a naive model of the window accepts: a later
        boot, or the highest boot with a counter not seen and within WINDOW of the
        highest seen; forgeries never count.
        """
        receiver = Sealer(KEY, 7)
        boot_seen = -1
        seen: set[int] = set()
        for boot, counter, authentic in arrivals:
            if counter == 0:
                header = _HEADER.pack(MAGIC, VERSION, 2, Mode.AUTHENTICATED, 7, 9, 0, boot, 0)
                datagram = hand_sealed(header, b"p")
            else:
                datagram = sealed_at(boot, counter)
            if not authentic:
                datagram = datagram[:-1] + bytes([datagram[-1] ^ 0x80])
            fresh = boot > boot_seen or (
                boot == boot_seen
                and counter not in seen
                and counter > max(seen, default=0) - WINDOW
            )
            fresh = fresh and counter != 0
            got = receiver.open(datagram)
            if fresh and authentic:
                self.assertEqual(got, Opened(2, 9, b"p"))
                if boot > boot_seen:
                    boot_seen, seen = boot, set()
                seen.add(counter)
            else:
                self.assertIsInstance(got, Dropped)
