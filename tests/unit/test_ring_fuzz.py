"""
Fuzzing a running ring with authentic but mutated datagrams (issue 10).

Real bodies of every ring message type (L{lips.ring._codec.encode} of valid messages of
the running ring) are mutated (an integer changed, the body cut short, a msgpack value
spliced in, bytes replaced), sealed with the cluster key by the real sender's own
sealer (fresh counters: the anti-replay window lets them through) and fed to the
members of a running three-member ring on the ring protocol tests' in-memory network.
After each example: nothing raised or was counted as an internal error, every member
delivered the same payloads in the same order, and a fresh broadcast of each member is
delivered everywhere within bounded simulated time.
"""

from __future__ import annotations

from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from lips.ring import Commit, Join, Kind, Mcast, MergeDetect, RingId, RingMessage, Token
from lips.ring._codec import TYPE_CODES, encode
from tests.unit.test_ring_protocol import Ring, address

#: Counters that only a bug moves (the adapter's and its driver's).
ERRORS = ("errors.internal", "errors.deliver", "errors.core", "errors.handler", "errors.unhandled")

#: Integers worth trying in place of any field.
EDGES = st.one_of(
    st.sampled_from([0, 1, 2, 3, 4, -1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1]),
    st.integers(-5, 40),
)

#: msgpack values to splice in.
VALUES: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | EDGES | st.binary(max_size=8) | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=4),
    max_leaves=8,
)


def messages(ring: RingId, sender: int) -> list[RingMessage]:
    """A valid message of each type, as C{sender} of C{ring} might send it."""
    return [
        Token(ring, 50, 10, 10, sender, 0, 0, (9, 10)),
        Mcast(ring, 11, sender, Kind.APP, b"forged"),
        Mcast(ring, 3, sender, Kind.RECOVERED, b"old", RingId(ring.seq - 4, 1), 2, 1),
        Join(sender, frozenset({1, 2, 3}), frozenset(), ring.seq),
        Commit(RingId(ring.seq + 4, 1), (1, 2, 3), (None, None, None), 0, 0),
        MergeDetect(ring, sender),
    ]


def paths(tree: Any, prefix: tuple[int, ...] = ()) -> list[tuple[int, ...]]:
    """Every position in a decoded msgpack tree (lists), the root as ()."""
    found = [prefix]
    if isinstance(tree, list):
        for i, item in enumerate(tree):
            found += paths(item, (*prefix, i))
    return found


def replace(tree: Any, path: tuple[int, ...], value: Any) -> Any:
    """C{tree} with the value at C{path} replaced by C{value}."""
    if not path:
        return value
    copy = list(tree)
    copy[path[0]] = replace(copy[path[0]], path[1:], value)
    return copy


@st.composite
def mutated(draw: st.DrawFn, body: bytes) -> bytes:
    """C{body} changed in one of several ways, or a few of them in turn."""
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["int", "splice", "truncate", "bytes", "drop", "append"]))
        tree = None
        if how in ("int", "splice", "drop"):
            try:
                tree = msgpack.unpackb(body, raw=False)
            except Exception:
                how = "bytes"  # an earlier round left no msgpack to work on
        if how == "int":
            ints = [p for p in paths(tree) if isinstance(get(tree, p), int)]
            if ints:
                path = draw(st.sampled_from(ints))
                old = get(tree, path)
                new = draw(EDGES | st.integers(old - 3, old + 3))
                body = msgpack.packb(replace(tree, path, new), use_bin_type=True)
        elif how == "splice":
            path = draw(st.sampled_from(paths(tree)))
            body = msgpack.packb(replace(tree, path, draw(VALUES)), use_bin_type=True)
        elif how == "drop":
            lists = [p for p in paths(tree) if isinstance(get(tree, p), list) and get(tree, p)]
            if lists:
                path = draw(st.sampled_from(lists))
                items = list(get(tree, path))
                del items[draw(st.integers(0, len(items) - 1))]
                body = msgpack.packb(replace(tree, path, items), use_bin_type=True)
        elif how == "truncate":
            body = body[: draw(st.integers(0, max(0, len(body) - 1)))]
        elif how == "bytes":
            at = draw(st.integers(0, len(body)))
            cut = draw(st.integers(0, 4))
            body = body[:at] + draw(st.binary(max_size=4)) + body[at + cut :]
        else:
            body = body + msgpack.packb(draw(VALUES), use_bin_type=True)
        if not body:
            break
    return body


def get(tree: Any, path: tuple[int, ...]) -> Any:
    for i in path:
        tree = tree[i]
    return tree


FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class FuzzTests(SynchronousTestCase):
    """A running ring survives authentic garbage of every message type."""

    @FUZZ
    @given(st.data())
    def test_mutated_datagrams_of_the_ring(self, data: st.DataObject) -> None:
        """
        Authentic, mutated datagrams of every type, tokens and broadcasts of the
        running ring itself among them, raise nothing and count no internal error.
        (A key holder's token of the running ring can stall it: see
        L{test_mutated_datagrams_of_other_rings} for what the ring must survive.)
        """
        self.fuzz(data, current=True, live=False)

    @FUZZ
    @given(st.data())
    def test_mutated_datagrams_of_other_rings(self, data: st.DataObject) -> None:
        """
        After authentic, mutated joins, commit tokens, and tokens, broadcasts and merge
        detects of an earlier ring, at running members: no error, no divergence, and
        each member's fresh broadcast is delivered everywhere.
        """
        self.fuzz(data, current=False, live=True)

    def fuzz(self, data: st.DataObject, *, current: bool, live: bool) -> None:
        """Inject what C{data} draws into a running ring of three; check the ring."""
        ring = Ring(3)
        ring.run(0.3)
        self.assertTrue(ring.formed())
        for i in range(6):
            ring.nodes[1 + i % 3].protocol.submit(f"before:{i}".encode())
        ring.run(0.1)
        running = ring.nodes[1].engine.ring
        target = running if current else RingId(running.seq - 4, running.rep)
        for _ in range(data.draw(st.integers(1, 6), label="injections")):
            sender = data.draw(st.sampled_from([1, 2, 3]), label="sender")
            message = data.draw(st.sampled_from(messages(target, sender)), label="message")
            type_code, body = encode(message)
            body = data.draw(mutated(body), label="body")
            if data.draw(st.booleans(), label="other type"):
                type_code = data.draw(st.sampled_from(sorted(TYPE_CODES.values())))
            receivers = data.draw(
                st.sets(st.sampled_from([n for n in (1, 2, 3) if n != sender]), min_size=1),
                label="receivers",
            )
            datagram = ring.nodes[sender].protocol.sealer.seal(type_code, sender, body)
            for n in sorted(receivers):
                ring.nodes[n].protocol.datagramReceived(datagram, address(sender))
            ring.run(data.draw(st.sampled_from([0.0, 0.001, 0.01, 0.05]), label="pause"))
        for n in (1, 2, 3):
            self.assertTrue(ring.nodes[n].protocol.submit(f"fresh:{n}".encode()))
        fresh = {f"fresh:{n}".encode() for n in (1, 2, 3)}
        for _ in range(100):
            ring.run(0.05)
            if all(fresh <= set(node.delivered()) for node in ring.nodes.values()):
                break
        for n, node in ring.nodes.items():
            for counter in ERRORS:
                self.assertEqual(node.counters[counter], 0, (n, counter))
        if not live:
            return
        for n, node in ring.nodes.items():
            self.assertTrue(fresh <= set(node.delivered()), (n, node.delivered()))
        delivered = [node.delivered() for node in ring.nodes.values()]
        self.assertEqual(delivered[1], delivered[0])
        self.assertEqual(delivered[2], delivered[0])
