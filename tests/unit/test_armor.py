"""
Tests for L{lips.armor}'s messages, ids and codec, and for the composite ARMOR: its
dispatch, its sends, its blocks' timers and its CompositionController, all driven
directly with explicit C{now} and asserted on the drained effects; and one ARMOR
hosted under L{lips.kernel.Driver} on a L{task.Clock}.

The blocks defined here (L{Recorder}, L{Echo}, L{Busy}, L{Ticker}, L{Picky}) and the
closed-world L{FACTORY} are shared with the other C{test_armor_*} modules.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import LogLevel
from twisted.trial.unittest import SynchronousTestCase

from lips.armor import (
    COMPOSE,
    COMPOSE_REFUSED,
    COMPOSED,
    FORMAT,
    INSTALL,
    MAX_BODY_SIZE,
    MAX_DEPTH,
    MAX_ID_LENGTH,
    MAX_MESSAGE_ID,
    MAX_MESSAGE_SIZE,
    SUBSCRIBE,
    TIMER,
    Armor,
    ArmorDead,
    ArmorTimer,
    Block,
    BlockContext,
    BlockFactory,
    BlockType,
    Compose,
    ComposeOp,
    ComposeResult,
    Install,
    Message,
    MessageError,
    Recovery,
    Subscription,
    TimerDue,
    armor_id,
    check_name,
    daemon_id,
    decode,
    encode,
    pack_body,
    unpack_body,
)
from lips.kernel import CancelTimer, Driver, Effect, Log, Send, StartTimer

#: Hypothesis settings: no deadline, no example database, a reproduction blob printed
#: with any failure (rerun with @reproduce_failure).
PROPERTIES = settings(
    max_examples=150,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)

MANAGER = armor_id("sm.job7")
ME = armor_id("exec.job7.t1.r2")
PEER = armor_id("exec.job7.t2.r1")


# -- blocks for the tests ---------------------------------------------------------------------


class Recorder(Block):
    """Keeps every message it is handed; subscribes to what its config names."""

    def __init__(self, types: frozenset[str] = frozenset({"ping"})) -> None:
        super().__init__()
        self.subscriptions = types
        self.got: list[Message] = []

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> Self:
        types = config.get("types", ("ping",))
        assert isinstance(types, tuple | list)
        return cls(frozenset(str(t) for t in types))

    def process_message(self, message: Message, now: float) -> None:
        self.got.append(message)


class Echo(Block):
    """
    Answers each C{ping} with a C{pong} to its source carrying the same body; a C{ping}
    whose body is C{"subscribe"} makes it subscribe to C{late} as well; a C{relay}
    makes it send C{local} to its own ARMOR and then C{remote} to the relay's source.
    """

    subscriptions = frozenset({"ping", "relay"})

    def __init__(self) -> None:
        super().__init__()
        self.got: list[Message] = []

    def process_message(self, message: Message, now: float) -> None:
        self.got.append(message)
        if message.type == "relay":
            self.context.send("local", self.context.id, None)
            self.context.send("remote", message.source, None)
        elif message.value() == "subscribe":
            self.context.subscribe("late")
        elif message.type == "ping":
            self.context.send("pong", message.source, message.value())


class Busy(Block):
    """Busy from a C{begin} until an C{end}: a block in the middle of something."""

    subscriptions = frozenset({"begin", "end", "ping"})

    def __init__(self) -> None:
        super().__init__()
        self.working = False
        self.got: list[Message] = []

    @property
    def idle(self) -> bool:
        return not self.working

    def process_message(self, message: Message, now: float) -> None:
        self.got.append(message)
        if message.type == "begin":
            self.working = True
        elif message.type == "end":
            self.working = False


class Ticker(Block):
    """Starts timer C{tick} one second after it is attached; sends C{tick} to C{sm.job7}."""

    subscriptions = frozenset({"stop"})

    def __init__(self) -> None:
        super().__init__()
        self.ticks: list[float] = []

    def attach(self, context: BlockContext, now: float) -> None:
        super().attach(context, now)
        context.start_timer("tick", now + 1.0)

    def process_message(self, message: Message, now: float) -> None:
        if message.type == "stop":
            self.context.cancel_timer("tick")
            return
        assert message.type == TIMER
        assert TimerDue.from_message(message).name == "tick"
        self.ticks.append(now)
        self.context.send("tick", MANAGER, now)
        self.context.start_timer("tick", now + 1.0)


class Picky(Block):
    """Refuses every C{ping} whose body is not an integer (a malformed body)."""

    subscriptions = frozenset({"ping"})

    def process_message(self, message: Message, now: float) -> None:
        if type(message.value()) is not int:
            raise MessageError("a ping carries an integer")


class Refuser(Block):
    """Refuses to be attached anywhere."""

    def attach(self, context: BlockContext, now: float) -> None:
        raise TypeError("not here")


def _types() -> list[BlockType]:
    here = "tests.unit.test_armor"
    return [
        BlockType("recorder", f"{here}:Recorder.from_config", "Records."),
        BlockType("echo", f"{here}:Echo.from_config", "Echoes."),
        BlockType("busy", f"{here}:Busy.from_config", "Busy between begin and end."),
        BlockType("ticker", f"{here}:Ticker.from_config", "Ticks."),
        BlockType("picky", f"{here}:Picky.from_config", "Refuses non-integers."),
        BlockType("refuser", f"{here}:Refuser.from_config", "Refuses every ARMOR."),
        BlockType("installation", "lips.armor:Installation.from_config", "LiPS's."),
        BlockType("recovery", "lips.armor:Recovery.from_config", "LiPS's."),
        BlockType("forward-recovery", "lips.armor:ForwardRecovery.from_config", "LiPS's."),
    ]


#: The block types of these tests and LiPS's own: a closed world, no plugin scan.
FACTORY = BlockFactory(_types())


class Common(Armor):
    """A common ARMOR for the tests: an echo and a busy block."""

    type_name = "common"
    default_blocks = {**Armor.default_blocks, "echo": "echo", "busy": "busy"}


def started(
    composition: Mapping[str, str] | None = None, now: float = 0.0, cls: type[Armor] = Common
) -> Armor:
    """A started ARMOR C{exec.job7.t1.r2} managed by C{sm.job7}, its start drained."""
    armor = cls(ME, MANAGER, blocks=FACTORY, composition=composition)
    armor.start(now)
    armor.drain()
    return armor


_ids = iter(range(1, 10**9))


def msg(type: str, body: object = None, source: str = MANAGER, destination: str = ME) -> Message:
    """A message to the ARMOR under test, with a fresh id."""
    return Message.of(type, source, destination, next(_ids), body)


def sends(effects: list[Effect]) -> list[Message]:
    """The messages of the Send effects, checking each goes to its own destination."""
    out = []
    for e in effects:
        if isinstance(e, Send):
            assert e.to == e.message.destination, e
            out.append(e.message)
    return out


def without_logs(effects: list[Effect]) -> list[Effect]:
    return [e for e in effects if not isinstance(e, Log)]


def compose(
    op: str,
    slot: str,
    block: str | None = None,
    config: dict[str, Any] | None = None,
    source: str = MANAGER,
) -> Message:
    return msg(COMPOSE, Compose(op, slot, block, config), source=source)


# -- ids and names ----------------------------------------------------------------------------


class IdTests(SynchronousTestCase):
    def test_valid(self) -> None:
        """The readable ids of the paper's world are ARMOR ids."""
        for text in ["ftm", "sm.job7", "exec.job7.t1.r2", "daemon.n3", "voter.job-2.t1", "a"]:
            self.assertEqual(armor_id(text), text)

    def test_invalid(self) -> None:
        """Anything else is refused with a MessageError."""
        for bad in [
            "",
            "FTM",
            "sm..x",
            ".x",
            "x.",
            "7up",
            "a.-b",
            "a.b-",
            "a b",
            "é",
            "x." + "a" * 33,
            "a" * (MAX_ID_LENGTH + 1),
            ".".join("a" * 9),
            1,
            None,
            b"ftm",
        ]:
            self.assertRaises(MessageError, armor_id, bad)

    def test_daemon_id(self) -> None:
        """A node's daemon is daemon.<node>; a node name must be a label."""
        self.assertEqual(daemon_id("n3"), "daemon.n3")
        self.assertRaises(MessageError, daemon_id, "N3")
        self.assertRaises(MessageError, daemon_id, "a.b")

    def test_names(self) -> None:
        """Names are lower-case words joined by hyphens, at most 64 characters."""
        for good in ["install", "armor-dead", "forward-recovery", "t1"]:
            self.assertEqual(check_name(good), good)
        for bad in ["", "Install", "armor_dead", "-a", "a-", "a--b", "1a", "a" * 65, 3]:
            self.assertRaises(MessageError, check_name, bad)


# -- messages and the codec -------------------------------------------------------------------


def _ext(code: int, data: bytes) -> bytes:
    packed: bytes = msgpack.packb(msgpack.ExtType(code, data))
    return packed


def _deep(depth: int) -> bytes:
    return b"\x91" * depth + b"\x01"


class MessageTests(SynchronousTestCase):
    def test_of_and_value(self) -> None:
        """A message made from a plain value decodes it back, arrays as tuples."""
        m = Message.of("ping", "sm.job7", "exec.job7.t1.r2", 1, {"a": [1, 2.5, "x", b"y"]})
        self.assertEqual(m.value(), {"a": (1, 2.5, "x", b"y")})
        self.assertEqual(Message.of("ping", "a", "b", 1).value(), None)
        self.assertFalse(m.local)
        self.assertTrue(Message.of("ping", "a", "a", 1).local)

    def test_fields_checked(self) -> None:
        """Every field is checked when a message is made: a MessageError says which."""
        good: dict[str, Any] = {
            "type": "ping",
            "source": "a",
            "destination": "b",
            "id": 1,
            "body": b"\xc0",
        }
        Message(**good)
        for field, bad in [
            ("type", "Ping"),
            ("type", 1),
            ("source", "A"),
            ("destination", ""),
            ("id", 0),
            ("id", True),
            ("id", MAX_MESSAGE_ID + 1),
            ("id", 1.0),
            ("body", "text"),
            ("body", b""),
            ("body", b"\xc1"),
            ("body", b"\x01\x02"),
            ("body", _ext(5, b"x")),
            ("body", b"\xd6\xff\x00\x00\x00\x01"),  # a msgpack timestamp
            ("body", _deep(MAX_DEPTH + 1)),
            ("body", b"\x81\x01\x02"),  # a map with an integer key
        ]:
            self.assertRaises(MessageError, Message, **{**good, field: bad})
        Message(**{**good, "body": _deep(MAX_DEPTH)})

    def test_values_refused(self) -> None:
        """A body must be a plain value: sets, objects, huge integers are refused."""
        for bad in [{1, 2}, object(), 2**64, -(2**63) - 1, {1: "x"}, [[]] * 2 + [set()]]:
            self.assertRaises(MessageError, pack_body, bad)
        nested: Any = 1
        for _ in range(MAX_DEPTH + 1):
            nested = [nested]
        self.assertRaises(MessageError, pack_body, nested)
        self.assertRaises(MessageError, pack_body, b"x" * (MAX_BODY_SIZE + 1))

    def test_typed_body(self) -> None:
        """A Body is its map of fields, and comes back from a message as itself."""
        body = Install("exec.job7.t1.r2", "execution", "sm.job7", 2, {"k": [1]})
        m = Message.of(INSTALL, "sm.job7", "daemon.n1", 3, body)
        self.assertEqual(
            m.value(),
            {
                "armor": "exec.job7.t1.r2",
                "type": "execution",
                "manager": "sm.job7",
                "incarnation": 2,
                "config": {"k": (1,)},
            },
        )
        self.assertEqual(Install.from_message(m).config, {"k": (1,)})
        self.assertRaises(MessageError, ArmorDead.from_message, m)

    def test_typed_body_refusals(self) -> None:
        """A typed body refuses a non-map, unknown or missing fields, and bad values."""
        good = {"armor": "exec.x.1", "node": "n1", "incarnation": 1, "reason": "exit 1"}
        self.assertEqual(ArmorDead.from_value(good).incarnation, 1)
        for bad in [
            None,
            (1, 2),
            {**good, "extra": 1},
            {k: v for k, v in good.items() if k != "node"},
            {**good, "armor": "X"},
            {**good, "node": "a.b"},
            {**good, "incarnation": 0},
            {**good, "incarnation": True},
            {**good, "reason": 7},
            {**good, "reason": "x" * 1001},
        ]:
            self.assertRaises(MessageError, ArmorDead.from_value, bad)

    def test_compose_body(self) -> None:
        """A Compose names a block type exactly when it adds one."""
        self.assertEqual(Compose.from_value({"op": "remove", "slot": "echo"}).op, ComposeOp.REMOVE)
        c = Compose.from_value({"op": "replace", "slot": "r", "block": "b", "config": {"x": 1}})
        self.assertEqual((c.op, c.block, c.config), (ComposeOp.REPLACE, "b", {"x": 1}))
        self.assertEqual(Compose.from_value(c.to_value()), c)
        for bad in [
            {"op": "add", "slot": "x"},
            {"op": "remove", "slot": "x", "block": "b"},
            {"op": "remove", "slot": "x", "config": {"a": 1}},
            {"op": "swap", "slot": "x", "block": "b"},
            {"op": "add", "slot": "X", "block": "b"},
            {"op": "add", "slot": "x", "block": "b", "config": [1]},
        ]:
            self.assertRaises(MessageError, Compose.from_value, bad)


class CodecTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        """A message encodes to bytes that decode to an equal message."""
        m = Message.of("armor-dead", "daemon.n1", "sm.job7", 42, {"armor": "exec.job7.1"})
        data = encode(m)
        self.assertEqual(msgpack.unpackb(data)[0], FORMAT)
        self.assertEqual(decode(data), m)

    def test_encode_only_messages(self) -> None:
        """Encoding anything but a Message is a TypeError."""
        self.assertRaises(TypeError, encode, ("ping", "a", "b", 1, b"\xc0"))

    def test_refusals(self) -> None:
        """The decoder refuses anything but a valid encoding, with a MessageError."""
        good = [FORMAT, "ping", "a", "b", 1, b"\xc0"]

        def packed(fields: list[Any]) -> bytes:
            data: bytes = msgpack.packb(fields, use_bin_type=True)
            return data

        self.assertEqual(decode(packed(good)).type, "ping")
        for bad in [
            b"",
            b"\xc1",
            packed(good) + b"\x00",
            packed(good)[:-1],
            packed([*good, 1]),
            packed(good[:5]),
            packed({"type": "ping"}),  # type: ignore[arg-type]
            packed([2, *good[1:]]),
            packed([True, *good[1:]]),
            packed([*good[:5], "\xc0"]),
            packed([FORMAT, "ping", "a", "b", 1, b"\xc1"]),
            packed([FORMAT, "ping", "A", "b", 1, b"\xc0"]),
            packed([FORMAT, "ping", "a", "b", -1, b"\xc0"]),
            packed([FORMAT, "ping", "a", "b", 1.0, b"\xc0"]),
            _ext(1, b"data"),
            b"\x96" + _ext(1, b"data") * 6,
        ]:
            self.assertRaises(MessageError, decode, bad)
        self.assertRaises(MessageError, decode, bytearray(packed(good)))
        self.assertRaises(MessageError, decode, "text")
        self.assertRaises(MessageError, decode, b"\x00" * (MAX_MESSAGE_SIZE + 1))

    def test_bounds(self) -> None:
        """A body as long as allowed travels; a message over the bound is refused."""
        big = Message("ping", "a", "b", 1, pack_body(b"x" * (MAX_BODY_SIZE - 8)))
        self.assertEqual(decode(encode(big)), big)
        self.assertRaises(
            MessageError,
            decode,
            msgpack.packb([FORMAT, "ping", "a", "b", 1, b"x" * MAX_MESSAGE_SIZE]),
        )


# -- property tests of the codec --------------------------------------------------------------

labels = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,6}[a-z0-9])?", fullmatch=True)
kinds = st.from_regex(r"[a-z](?:[a-z0-9-]{0,6}[a-z0-9])?", fullmatch=True)
ids = st.builds(lambda kind, rest: ".".join([kind, *rest]), kinds, st.lists(labels, max_size=4))
names = st.from_regex(r"[a-z][a-z0-9]{0,5}(?:-[a-z0-9]{1,5}){0,3}", fullmatch=True)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.binary(max_size=8),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(st.text(max_size=4), inner, max_size=4),
    ),
    max_leaves=20,
)
messages = st.builds(Message.of, names, ids, ids, st.integers(1, MAX_MESSAGE_ID), values)
any_msgpack = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.dictionaries(
            st.one_of(st.text(max_size=4), st.integers(-(2**63), 2**63 - 1)), inner, max_size=4
        ),
    ),
    max_leaves=12,
)


def decodes_or_refuses(case: SynchronousTestCase, data: bytes) -> None:
    try:
        message = decode(data)
    except MessageError:
        return
    case.assertIsInstance(message, Message)
    case.assertEqual(decode(encode(message)), message)


class CodecPropertyTests(SynchronousTestCase):
    @PROPERTIES
    @given(messages)
    def test_round_trip(self, message: Message) -> None:
        """Every valid message survives encode and decode unchanged."""
        self.assertEqual(decode(encode(message)), message)

    @PROPERTIES
    @given(values)
    def test_body_round_trip(self, value: Any) -> None:
        """Every plain value survives pack_body and unpack_body (arrays as tuples)."""
        self.assertEqual(unpack_body(pack_body(value)), value)

    @PROPERTIES
    @given(st.binary(max_size=120))
    def test_arbitrary_bytes(self, data: bytes) -> None:
        """Arbitrary bytes decode to a valid message or raise MessageError, nothing else."""
        decodes_or_refuses(self, data)

    @PROPERTIES
    @given(any_msgpack)
    def test_arbitrary_values(self, value: Any) -> None:
        """Any msgpack value decodes to a valid message or raises MessageError."""
        decodes_or_refuses(self, msgpack.packb(value, use_bin_type=True))

    @PROPERTIES
    @given(messages, st.data())
    def test_one_field_changed(self, message: Message, data: st.DataObject) -> None:
        """A valid encoding with one field replaced by any value decodes or is refused."""
        fields = list(msgpack.unpackb(encode(message)))
        i = data.draw(st.integers(0, len(fields) - 1))
        fields[i] = data.draw(any_msgpack)
        decodes_or_refuses(self, msgpack.packb(fields, use_bin_type=True))

    @PROPERTIES
    @given(messages, st.data())
    def test_truncated_or_extended(self, message: Message, data: st.DataObject) -> None:
        """A valid encoding cut short, or with bytes after it, is refused."""
        encoded = encode(message)
        cut = data.draw(st.integers(0, len(encoded) - 1))
        self.assertRaises(MessageError, decode, encoded[:cut])
        extra = data.draw(st.binary(min_size=1, max_size=4))
        self.assertRaises(MessageError, decode, encoded + extra)

    @PROPERTIES
    @given(messages, st.data())
    def test_bytes_flipped(self, message: Message, data: st.DataObject) -> None:
        """A valid encoding with one byte changed decodes to a valid message or is refused."""
        encoded = bytearray(encode(message))
        i = data.draw(st.integers(0, len(encoded) - 1))
        encoded[i] = data.draw(st.integers(0, 255))
        decodes_or_refuses(self, bytes(encoded))


# -- the dispatch and the send ----------------------------------------------------------------


class DispatchTests(SynchronousTestCase):
    def test_subscribed(self) -> None:
        """A message goes to the block subscribed to its type, which answers through Send."""
        armor = started()
        ping = msg("ping", 7)
        armor.receive(ping, 1.0)
        echo = armor.block("echo")
        assert isinstance(echo, Echo)
        self.assertEqual(echo.got, [ping])
        [pong] = sends(armor.drain())
        self.assertEqual(
            (pong.type, pong.source, pong.destination, pong.value()), ("pong", ME, MANAGER, 7)
        )
        self.assertEqual(armor.counters["messages.received"], 1)
        self.assertEqual(armor.counters["messages.sent"], 1)

    def test_every_subscriber_in_order(self) -> None:
        """Every block subscribed to a type gets it, in the order they subscribed."""
        armor = started()
        self.assertEqual(armor.dispatch.subscribers("ping"), ["echo", "busy"])
        armor.receive(msg("ping"), 1.0)
        busy = armor.block("busy")
        assert isinstance(busy, Busy)
        self.assertEqual([m.type for m in busy.got], ["ping"])

    def test_unsubscribed_dropped_and_counted(self) -> None:
        """A type nobody subscribed to is dropped and counted, by type and in all."""
        armor = started()
        armor.receive(msg("nobody"), 1.0)
        armor.receive(msg("nobody"), 2.0)
        armor.receive(msg("nothing"), 3.0)
        self.assertEqual(armor.drain(), [])
        self.assertEqual(armor.dropped, {"nobody": 2, "nothing": 1})
        self.assertEqual(armor.counters["messages.unsubscribed"], 3)

    def test_not_for_this_armor(self) -> None:
        """A message for another ARMOR, or claiming this one as source, is dropped."""
        armor = started()
        armor.receive(msg("ping", destination=PEER), 1.0)
        armor.receive(msg("ping", source=ME), 1.0)
        echo = armor.block("echo")
        assert isinstance(echo, Echo)
        self.assertEqual(echo.got, [])
        self.assertEqual(
            (armor.counters["messages.misrouted"], armor.counters["messages.spoofed"]), (1, 1)
        )
        self.assertEqual([type(e) for e in armor.drain()], [Log, Log])

    def test_subscribe_at_run_time(self) -> None:
        """A block subscribes at run time by a message to the dispatch."""
        armor = started()
        armor.receive(msg("late"), 1.0)
        self.assertEqual(armor.dropped["late"], 1)
        armor.receive(msg("ping", "subscribe"), 2.0)
        self.assertEqual(armor.counters["messages.local"], 1)
        self.assertEqual(armor.dispatch.subscribers("late"), ["echo"])
        late = msg("late")
        armor.receive(late, 3.0)
        echo = armor.block("echo")
        assert isinstance(echo, Echo)
        self.assertEqual(echo.got[-1], late)
        self.assertEqual(armor.dropped["late"], 1)

    def test_subscribe_from_outside_refused(self) -> None:
        """Another ARMOR cannot change this one's subscriptions."""
        armor = started()
        armor.receive(msg(SUBSCRIBE, Subscription("echo", "secret")), 1.0)
        self.assertEqual(armor.dispatch.subscribers("secret"), [])
        self.assertEqual(armor.counters["messages.refused"], 1)

    def test_malformed_body_refused(self) -> None:
        """A block that finds a body malformed has it counted and logged; the ARMOR goes on."""
        armor = started({"picky": "picky"})
        armor.receive(msg("ping", "not a number"), 1.0)
        effects = armor.drain()
        self.assertEqual(armor.counters["messages.refused"], 1)
        [log] = [e for e in effects if isinstance(e, Log)]
        self.assertEqual(log.level, LogLevel.warn)
        self.assertEqual(dict(log.fields)["slot"], "picky")
        self.assertEqual(len(sends(effects)), 1)  # the echo still answered
        armor.receive(msg("ping", 3), 2.0)
        self.assertEqual(armor.counters["messages.refused"], 1)

    def test_inputs_checked(self) -> None:
        """An ARMOR takes messages only once started, and only Messages."""
        armor = Common(ME, MANAGER, blocks=FACTORY)
        self.assertRaises(RuntimeError, armor.receive, msg("ping"), 0.0)
        armor.start(0.0)
        self.assertRaises(RuntimeError, armor.start, 1.0)
        self.assertRaises(TypeError, armor.receive, encode(msg("ping")), 1.0)

    def test_needs_a_manager(self) -> None:
        """Every ARMOR but the FTM has a manager, and none manages itself."""
        self.assertRaises(ValueError, Common, ME, None, blocks=FACTORY)
        self.assertRaises(ValueError, Common, ME, ME, blocks=FACTORY)
        self.assertRaises(MessageError, Common, "Bad", MANAGER, blocks=FACTORY)
        self.assertRaises(TypeError, Common, ME, MANAGER, blocks=object())


class SendTests(SynchronousTestCase):
    def test_remote_is_a_send_effect(self) -> None:
        """A message for another ARMOR is a Send to its destination, ids counting up."""
        armor = started()
        armor.receive(msg("ping", 1), 1.0)
        armor.receive(msg("ping", 2, source=PEER), 2.0)
        first, second = sends(armor.drain())
        self.assertEqual((first.destination, second.destination), (MANAGER, PEER))
        self.assertEqual((first.source, second.source), (ME, ME))
        self.assertLess(first.id, second.id)

    def test_local_goes_to_the_dispatch_after(self) -> None:
        """
        A message an ARMOR sends itself goes to its own dispatch, not out, and only
        after the delivery that sent it has run to its end.
        """
        armor = started()
        armor.receive(compose("add", "recorder", "recorder", {"types": ["local"]}), 0.5)
        armor.drain()
        recorder = armor.block("recorder")
        assert isinstance(recorder, Recorder)
        armor.receive(msg("relay"), 1.0)
        [remote] = sends(armor.drain())
        self.assertEqual(remote.type, "remote")
        [local] = recorder.got
        self.assertEqual((local.source, local.destination, local.type), (ME, ME, "local"))
        self.assertLess(local.id, remote.id)  # sent first, delivered after
        self.assertEqual(armor.counters["messages.local"], 1)

    def test_context_only_within_an_input(self) -> None:
        """A block acts on its ARMOR only while the ARMOR handles an input."""
        armor = started()
        echo = armor.block("echo")
        assert isinstance(echo, Echo)
        self.assertRaises(RuntimeError, echo.context.send, "pong", MANAGER)
        self.assertRaises(RuntimeError, echo.context.start_timer, "t", 1.0)


class TimerTests(SynchronousTestCase):
    def test_block_timer(self) -> None:
        """A block's timer is a StartTimer; when due, the block gets a timer message."""
        armor = Common(ME, MANAGER, blocks=FACTORY, composition={"ticker": "ticker"})
        armor.start(5.0)
        [start] = armor.drain()
        assert isinstance(start, StartTimer)
        self.assertEqual(start.at, 6.0)
        kind, (slot, serial, name) = start.key  # type: ignore[misc]
        self.assertEqual((kind, slot, name), (ArmorTimer.BLOCK, "ticker", "tick"))
        self.assertEqual(armor.controller.context_of("ticker").serial, serial)  # type: ignore[union-attr]
        armor.timer(start.key, 6.0)
        tick, again = armor.drain()
        self.assertEqual(sends([tick])[0].value(), 6.0)
        self.assertEqual(again, StartTimer(start.key, 7.0))
        self.assertEqual(armor.counters["timers.fired"], 1)

    def test_cancelled_timer_ignored(self) -> None:
        """A timer cancelled before it falls due brings the block nothing."""
        armor = Common(ME, MANAGER, blocks=FACTORY, composition={"ticker": "ticker"})
        armor.start(0.0)
        [start] = armor.drain()
        assert isinstance(start, StartTimer)
        armor.receive(msg("stop"), 0.5)
        self.assertEqual(armor.drain(), [CancelTimer(start.key)])
        armor.timer(start.key, 1.0)
        self.assertEqual(armor.drain(), [])
        ticker = armor.block("ticker")
        assert isinstance(ticker, Ticker)
        self.assertEqual(ticker.ticks, [])

    def test_foreign_key(self) -> None:
        """A key an ARMOR never starts is a ValueError."""
        armor = started()
        self.assertRaises(ValueError, armor.timer, ArmorTimer.BLOCK, 1.0)
        self.assertRaises(ValueError, armor.timer, (ArmorTimer.BLOCK, "tick"), 1.0)


# -- the CompositionController ----------------------------------------------------------------


def answers(effects: list[Effect]) -> list[tuple[str, ComposeResult]]:
    return [
        (m.type, ComposeResult.from_message(m))
        for m in sends(effects)
        if m.type in (COMPOSED, COMPOSE_REFUSED)
    ]


class CompositionTests(SynchronousTestCase):
    def test_add(self) -> None:
        """A block is added at run time by a message; it gets its types from then on."""
        armor = started()
        request = compose("add", "recorder", "recorder", {"types": ["note"]})
        armor.receive(request, 1.0)
        self.assertEqual(
            answers(armor.drain()), [(COMPOSED, ComposeResult(request.id, "recorder"))]
        )
        self.assertEqual(armor.slots()["recorder"], "recorder")
        note = msg("note")
        armor.receive(note, 2.0)
        recorder = armor.block("recorder")
        assert isinstance(recorder, Recorder)
        self.assertEqual(recorder.got, [note])
        self.assertEqual(armor.counters["compose.applied"], 1)

    def test_remove(self) -> None:
        """A removed block gets nothing more, and its timers are cancelled."""
        armor = Common(ME, MANAGER, blocks=FACTORY, composition={"ticker": "ticker"})
        armor.start(0.0)
        [start] = armor.drain()
        assert isinstance(start, StartTimer)
        armor.receive(compose("remove", "ticker"), 0.5)
        effects = armor.drain()
        self.assertIn(CancelTimer(start.key), effects)
        self.assertEqual(answers(effects)[0][0], COMPOSED)
        self.assertNotIn("ticker", armor.slots())
        armor.timer(start.key, 1.0)
        armor.receive(msg("stop"), 1.0)
        self.assertEqual(armor.drain(), [])
        self.assertEqual(armor.dropped["stop"], 1)

    def test_replace_idle_at_once(self) -> None:
        """An idle block is replaced at once, and its successor keeps its place."""
        armor = started()
        old = armor.block("echo")
        assert isinstance(old, Echo)
        request = compose("replace", "echo", "recorder", {"types": ["ping", "relay"]})
        armor.receive(request, 1.0)
        self.assertEqual(answers(armor.drain()), [(COMPOSED, ComposeResult(request.id, "echo"))])
        new = armor.block("echo")
        assert isinstance(new, Recorder)
        self.assertIsNot(new, old)
        self.assertEqual(armor.dispatch.subscribers("ping"), ["echo", "busy"])
        self.assertEqual(list(armor.slots()), ["controller", "dispatch", "send", "echo", "busy"])
        self.assertRaises(RuntimeError, old.context.send, "x", MANAGER)

    def test_replace_waits_until_idle(self) -> None:
        """
        A replacement asked for while the block is busy waits: the block goes on
        getting its messages, and is replaced, and the requester told, as soon as it
        is idle.
        """
        armor = started()
        busy = armor.block("busy")
        assert isinstance(busy, Busy)
        armor.receive(msg("begin"), 1.0)
        request = compose("replace", "busy", "recorder", {"types": ["ping", "end"]})
        armor.receive(request, 2.0)
        self.assertEqual(answers(armor.drain()), [])
        self.assertEqual([c.slot for c in armor.pending], ["busy"])
        self.assertEqual(armor.counters["compose.deferred"], 1)
        self.assertIs(armor.block("busy"), busy)
        armor.receive(msg("ping"), 3.0)
        self.assertEqual([m.type for m in busy.got], ["begin", "ping"])
        armor.drain()
        armor.receive(msg("end"), 4.0)
        self.assertEqual(answers(armor.drain()), [(COMPOSED, ComposeResult(request.id, "busy"))])
        self.assertEqual([m.type for m in busy.got], ["begin", "ping", "end"])
        self.assertIsInstance(armor.block("busy"), Recorder)
        self.assertEqual(armor.pending, [])

    def test_remove_waits_until_idle(self) -> None:
        """A removal asked for while the block is busy waits until it is idle."""
        armor = started()
        armor.receive(msg("begin"), 1.0)
        armor.receive(compose("remove", "busy"), 2.0)
        self.assertIn("busy", armor.slots())
        armor.receive(msg("end"), 3.0)
        self.assertNotIn("busy", armor.slots())

    def test_changes_of_a_slot_in_order(self) -> None:
        """Changes to one slot are made in the order asked; other slots do not wait."""
        armor = started()
        armor.receive(msg("begin"), 1.0)
        first = compose("replace", "busy", "recorder", {"types": ["one"]})
        second = compose("replace", "busy", "recorder", {"types": ["two"]})
        other = compose("add", "more", "recorder")
        for request in (first, second, other):
            armor.receive(request, 2.0)
        self.assertEqual(answers(armor.drain()), [(COMPOSED, ComposeResult(other.id, "more"))])
        armor.receive(msg("end"), 3.0)
        self.assertEqual(
            [(kind, r.request) for kind, r in answers(armor.drain())],
            [(COMPOSED, first.id), (COMPOSED, second.id)],
        )
        self.assertEqual(armor.dispatch.subscriptions_of("busy"), {"two"})

    def test_busy_while_delivering(self) -> None:
        """
        A block is busy while a delivery to it is under way: a change it asks of its
        own ARMOR (from its own id) is made once that delivery is over.
        """
        armor = started()
        echo = armor.block("echo")
        assert isinstance(echo, Echo)
        seen: list[bool] = []

        def ask(message: Message, now: float) -> None:
            seen.append(armor.controller.busy("echo"))
            echo.context.send(COMPOSE, ME, Compose("replace", "echo", "recorder"))

        echo.process_message = ask  # type: ignore[method-assign]
        armor.receive(msg("ping"), 1.0)
        self.assertEqual(seen, [True])
        self.assertIsInstance(armor.block("echo"), Recorder)
        self.assertEqual(armor.counters["compose.applied"], 1)
        self.assertEqual(armor.dropped[COMPOSED], 1)  # its answer, to itself

    def test_refusals(self) -> None:
        """Changes that cannot be made are refused, with the reason, to the requester."""
        armor = started()
        cases = [
            (compose("add", "x", "recorder", source=PEER), "its manager"),
            (compose("add", "x", "no-such-type"), "no block type"),
            (compose("add", "x", "recorder", {"types": 3}), "cannot make"),
            (compose("add", "x", "recovery"), "refused this ARMOR"),
            (compose("add", "x", "refuser"), "refused this ARMOR"),
            (compose("add", "echo", "recorder"), "taken"),
            (compose("remove", "nothing"), "no block"),
            (compose("replace", "nothing", "recorder"), "no block"),
            (compose("replace", "controller", "recorder"), "ARMOR's own"),
            (compose("remove", "dispatch"), "ARMOR's own"),
            (compose("replace", "send", "recorder"), "ARMOR's own"),
            (msg(COMPOSE, {"op": "add"}), "needs its field"),
        ]
        for request, words in cases:
            armor.receive(request, 1.0)
            [(kind, result)] = answers(armor.drain())
            self.assertEqual((kind, result.request), (COMPOSE_REFUSED, request.id))
            self.assertIn(words, result.reason)
        self.assertEqual(armor.counters["compose.refused"], len(cases))
        self.assertEqual(list(armor.slots()), ["controller", "dispatch", "send", "echo", "busy"])

    def test_refused_replacement_keeps_the_old(self) -> None:
        """A replacement that refuses the ARMOR leaves the old block in place, at work."""
        armor = started()
        echo = armor.block("echo")
        armor.receive(compose("replace", "echo", "recovery"), 1.0)
        self.assertEqual(answers(armor.drain())[0][0], COMPOSE_REFUSED)
        self.assertIs(armor.block("echo"), echo)
        armor.receive(msg("ping"), 2.0)
        self.assertEqual([m.type for m in sends(armor.drain())], ["pong"])

    def test_composition_at_construction(self) -> None:
        """An ARMOR's type gives its blocks; an instance may fill other slots too."""
        armor = Common(ME, MANAGER, blocks=FACTORY, composition={"busy": "recorder"})
        self.assertEqual(
            armor.slots(),
            {
                "controller": "composition-controller",
                "dispatch": "message-dispatch",
                "send": "message-send",
                "echo": "echo",
                "busy": "recorder",
            },
        )
        self.assertRaises(
            ValueError, Common, ME, MANAGER, blocks=FACTORY, composition={"send": "echo"}
        )
        self.assertIsInstance(
            Armor.from_config(ME, MANAGER, {"blocks": {"r": "recovery"}}, FACTORY).block("r"),
            Recovery,
        )
        self.assertRaises(MessageError, Armor.from_config, ME, MANAGER, {"color": 1}, FACTORY)
        self.assertRaises(MessageError, Armor.from_config, ME, MANAGER, {"blocks": [1]}, FACTORY)


# -- hosted under the kernel's driver ---------------------------------------------------------


class DriverTests(SynchronousTestCase):
    def test_hosted_on_a_clock(self) -> None:
        """
        Under a Driver on a Clock, an ARMOR's Sends reach the handler, its blocks'
        timers fire on the clock, and nothing is left scheduled once they are cancelled.
        """
        clock = Clock()
        armor = Common(ME, MANAGER, blocks=FACTORY, composition={"ticker": "ticker"})
        out: list[Message] = []
        driver = Driver(armor, clock, {Send: lambda e: out.append(e.message)})
        driver.input(armor.start)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        driver.input(armor.receive, msg("ping", "hello"))
        self.assertEqual([(m.type, m.value()) for m in out], [("pong", "hello")])
        clock.advance(1.0)
        clock.advance(1.0)
        self.assertEqual([m.type for m in out], ["pong", "tick", "tick"])
        self.assertEqual([m.value() for m in out[1:]], [1.0, 2.0])
        driver.input(armor.receive, msg("stop"))
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(driver.stats()["errors.handler"], 0)
