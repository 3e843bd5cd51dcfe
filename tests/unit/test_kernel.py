"""
Tests for L{lips.kernel}: the effect vocabulary, the L{Outbox}, the L{TimerTable}
(against a naive model too), and the L{Driver} on a L{Clock} with a toy core that emits
whatever a test tells it to.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Sequence
from typing import Any, ClassVar

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, Logger, LogLevel
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from lips.kernel import (
    EFFECT_TYPES,
    CancelTimer,
    Deliver,
    Driver,
    Effect,
    Kill,
    Log,
    Outbox,
    Persist,
    Send,
    Spawn,
    StartTimer,
    TimerKey,
    TimerTable,
    check_timer_key,
)


class Tick(enum.Enum):
    A = "a"
    B = "b"
    C = "c"


class Stored(enum.Enum):
    SEQ = "seq"


class Toy:
    """
    A core that emits what it is told: L{say} queues effects; a timer due delivers
    C{("fired", key, now)} and then whatever L{on_timer} says for that key.
    """

    emits: ClassVar[frozenset[type[Effect]]] = frozenset(
        {Send, Deliver, StartTimer, CancelTimer, Log}
    )

    def __init__(self) -> None:
        self.outbox = Outbox(self.emits)
        self.inputs: list[tuple[Any, float]] = []
        self.fired: list[tuple[TimerKey, float]] = []
        self.on_timer: dict[TimerKey, list[Effect]] = {}
        self.broken_timer = False

    def drain(self) -> list[Effect]:
        return self.outbox.drain()

    def say(self, effects: Sequence[Effect], now: float) -> int:
        self.inputs.append((tuple(effects), now))
        for effect in effects:
            self.outbox.emit(effect)
        return len(effects)

    def fail(self, effects: Sequence[Effect], now: float) -> None:
        self.say(effects, now)
        raise ValueError("refused")

    def timer(self, key: TimerKey, now: float) -> None:
        self.fired.append((key, now))
        if self.broken_timer:
            raise RuntimeError("timer bug")
        self.outbox.deliver(("fired", key, now))
        for effect in self.on_timer.pop(key, []):
            self.outbox.emit(effect)


@implementer(ILogObserver)
class Events(list[LogEvent]):
    """A log observer that keeps the events."""

    def __call__(self, event: LogEvent) -> None:
        self.append(event)


class DriverTests(SynchronousTestCase):
    """The driver on a fake clock, with handlers that record what they carry out."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.core = Toy()
        self.done: list[Effect] = []
        self.driver = Driver(
            self.core, self.clock, {Send: self.done.append, Deliver: self.done.append}
        )

    def tearDown(self) -> None:
        self.driver.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def say(self, *effects: Effect) -> int:
        result = self.driver.input(self.core.say, effects)
        self.assertLessEqual(len(self.clock.getDelayedCalls()), 1)
        return result

    def fired(self) -> list[tuple[TimerKey, float]]:
        return [(e.item[1], e.item[2]) for e in self.done if isinstance(e, Deliver)]

    def test_input_gets_now_and_returns(self) -> None:
        """An input is called with the clock's time last, and its result comes back."""
        self.clock.advance(12.5)
        self.assertEqual(self.say(Send(1, "x")), 1)
        self.assertEqual(self.core.inputs, [((Send(1, "x"),), 12.5)])

    def test_effects_in_order(self) -> None:
        """Effects go to their handlers in the order the core emitted them."""
        self.say(Send(1, "a"), Deliver("b"), Send(None, "c"), Deliver("d"))
        self.assertEqual(self.done, [Send(1, "a"), Deliver("b"), Send(None, "c"), Deliver("d")])

    def test_reentrant_input_keeps_order(self) -> None:
        """A handler that feeds the core while the loop drains gets the input's answer
        at once, and the new effects are carried out after those already emitted."""
        answers = []

        def deliver(effect: Deliver[Any]) -> None:
            self.done.append(effect)
            if effect.item == "first":
                answers.append(driver.input(self.core.say, (Send(9, "inner"),)))

        driver = Driver(self.core, self.clock, {Send: self.done.append, Deliver: deliver})
        driver.input(self.core.say, (Deliver("first"), Send(1, "second"), Deliver("third")))
        self.assertEqual(
            self.done, [Deliver("first"), Send(1, "second"), Deliver("third"), Send(9, "inner")]
        )
        self.assertEqual(answers, [1])
        driver.stop()

    def test_timer_fires_at_deadline(self) -> None:
        """A started timer fires once, at its deadline, with that time as now; then no
        delayed call is left."""
        self.say(StartTimer(Tick.A, 5.0))
        (call,) = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), 5.0)
        self.clock.advance(4.9)
        self.assertEqual(self.core.fired, [])
        self.clock.advance(0.1)
        self.assertEqual(self.core.fired, [(Tick.A, 5.0)])
        self.assertEqual(self.fired(), [(Tick.A, 5.0)])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.driver.stats()["timers.fired"], 1)

    def test_not_a_rounding_error_short(self) -> None:
        """When the clock's "now + delay" lands a rounding error before the deadline,
        the timer still fires on that wake-up, with the deadline itself as now."""
        now, deadline = 0.9134730441814907, 6.766184559398996
        self.assertLess(now + (deadline - now), deadline)  # the case at hand
        self.clock.rightNow = now
        self.say(StartTimer(Tick.A, deadline))
        self.clock.advance(deadline - now)
        self.assertLess(self.clock.seconds(), deadline)
        self.assertEqual(self.core.fired, [(Tick.A, deadline)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_earliest_first_ties_in_start_order(self) -> None:
        """Timers fire earliest first, ties in the order they were started, from one
        delayed call that is always the earliest deadline."""
        self.say(StartTimer(Tick.A, 5.0), StartTimer(Tick.B, 3.0), StartTimer(Tick.C, 5.0))
        (call,) = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), 3.0)
        self.clock.advance(3.0)
        (call,) = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), 5.0)
        self.clock.advance(2.0)
        self.assertEqual(self.core.fired, [(Tick.B, 3.0), (Tick.A, 5.0), (Tick.C, 5.0)])

    def test_replaced_later(self) -> None:
        """A timer started again for later fires once, at the new deadline; the one
        delayed call may wake early, but then fires nothing and waits again."""
        self.say(StartTimer(Tick.A, 5.0))
        self.say(StartTimer(Tick.A, 10.0))
        self.clock.advance(5.0)
        self.assertEqual(self.core.fired, [])
        (call,) = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), 10.0)
        self.clock.advance(5.0)
        self.assertEqual(self.core.fired, [(Tick.A, 10.0)])

    def test_replaced_earlier(self) -> None:
        """A timer started again for sooner moves the delayed call forward."""
        self.say(StartTimer(Tick.A, 10.0))
        self.say(StartTimer(Tick.A, 3.0))
        (call,) = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), 3.0)
        self.clock.advance(3.0)
        self.clock.advance(10.0)
        self.assertEqual(self.core.fired, [(Tick.A, 3.0)])

    def test_cancelled(self) -> None:
        """A cancelled timer never fires, and the last one cancelled takes the delayed
        call with it; cancelling what is not pending is harmless."""
        self.say(StartTimer(Tick.A, 5.0), StartTimer(Tick.B, 6.0))
        self.say(CancelTimer(Tick.A))
        self.clock.advance(5.0)
        self.say(CancelTimer(Tick.B), CancelTimer(Tick.C))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10.0)
        self.assertEqual(self.core.fired, [])

    def test_timer_cancels_another_due(self) -> None:
        """Due timers fire one at a time, each one's effects carried out first: a
        timer that cancels another due at the same moment stops it firing."""
        self.core.on_timer[Tick.A] = [CancelTimer(Tick.B)]
        self.say(StartTimer(Tick.A, 5.0), StartTimer(Tick.B, 5.0))
        self.clock.advance(5.0)
        self.assertEqual(self.core.fired, [(Tick.A, 5.0)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_rearm_at_now_waits_a_turn(self) -> None:
        """A timer that starts itself again at now is not fired again in the same
        loop (a core cannot hold the reactor): it gets a delayed call of its own, for
        the next turn of the clock."""
        armed: list[float] = []
        call_later = self.clock.callLater

        def counting(delay: float, f: Any, *args: Any, **kw: Any) -> Any:
            armed.append(self.clock.seconds() + delay)
            return call_later(delay, f, *args, **kw)

        self.clock.callLater = counting  # type: ignore[method-assign,assignment]
        self.core.on_timer[Tick.A] = [StartTimer(Tick.A, 5.0)]
        self.say(StartTimer(Tick.A, 5.0))
        self.clock.advance(5.0)  # a Clock runs calls due meanwhile in the same advance
        self.assertEqual(self.core.fired, [(Tick.A, 5.0), (Tick.A, 5.0)])
        self.assertEqual(armed, [5.0, 5.0])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop(self) -> None:
        """Stopping cancels the delayed call and forgets the timers; later inputs still
        reach the core but their effects are dropped and counted."""
        self.say(StartTimer(Tick.A, 5.0), Send(1, "before"))
        self.driver.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.driver.timers), 0)
        self.assertEqual(self.say(Send(1, "after"), StartTimer(Tick.B, 1.0)), 2)
        self.clock.advance(10)
        self.assertEqual(self.done, [Send(1, "before")])
        self.assertEqual(self.core.fired, [])
        self.assertEqual(self.driver.stats()["effects.dropped"], 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_from_handler(self) -> None:
        """A handler that stops the driver drops the effects after its own."""

        def stop(effect: Deliver[Any]) -> None:
            self.done.append(effect)
            driver.stop()

        driver = Driver(self.core, self.clock, {Send: self.done.append, Deliver: stop})
        driver.input(
            self.core.say, (Send(1, "a"), Deliver("b"), Send(1, "c"), StartTimer(Tick.A, 1))
        )
        self.assertEqual(self.done, [Send(1, "a"), Deliver("b")])
        self.assertEqual(driver.stats()["effects.dropped"], 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_handler_error_logged_and_counted(self) -> None:
        """A handler that raises is logged with its traceback and counted; the input
        returns and the effects after it are carried out."""

        def broken(effect: Send[Any]) -> None:
            raise RuntimeError("handler bug")

        driver = Driver(self.core, self.clock, {Send: broken, Deliver: self.done.append})
        self.assertEqual(driver.input(self.core.say, (Send(1, "x"), Deliver("y"))), 2)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.done, [Deliver("y")])
        self.assertEqual(driver.stats()["errors.handler"], 1)

    def test_timer_error_contained(self) -> None:
        """A core that raises on a timer is logged and counted; nothing raises into the
        clock, and the other due timers still fire."""
        self.core.broken_timer = True
        self.say(StartTimer(Tick.A, 1.0), StartTimer(Tick.B, 1.0))
        self.clock.advance(1.0)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        self.assertEqual([k for k, _ in self.core.fired], [Tick.A, Tick.B])
        self.assertEqual(self.driver.stats()["errors.core"], 2)

    def test_input_error_propagates_after_effects(self) -> None:
        """An input that raises raises to the adapter that called it, after the
        effects it emitted before raising are carried out."""
        with self.assertRaises(ValueError):
            self.driver.input(self.core.fail, (Send(1, "x"), StartTimer(Tick.A, 2.0)))
        self.assertEqual(self.done, [Send(1, "x")])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_log_effects(self) -> None:
        """Log effects go to the driver's logger unless the adapter handles them."""
        events = Events()
        driver = Driver(
            self.core,
            self.clock,
            {Send: self.done.append, Deliver: self.done.append},
            log=Logger(observer=events),
        )
        driver.input(
            self.core.say,
            (Log(LogLevel.warn, "node {name} is {state}", {"name": "n1", "state": "late"}),),
        )
        (event,) = events
        self.assertEqual(event["log_level"], LogLevel.warn)
        self.assertEqual(event["log_format"], "node {name} is {state}")
        self.assertEqual((event["name"], event["state"]), ("n1", "late"))

    def test_unhandled_effect_is_loud(self) -> None:
        """An effect the core did not declare (so no handler exists) is an internal
        error: logged with a traceback and counted, never raised into the reactor."""
        self.core.outbox = Outbox()  # lets the core emit anything
        self.say(Kill(3), Send(1, "x"))
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)
        self.assertEqual(self.done, [Send(1, "x")])
        self.assertEqual(self.driver.stats()["errors.unhandled"], 1)

    def test_wiring_mistakes(self) -> None:
        """A declared effect without a handler, a handler for the timer effects or for
        an effect the core does not emit, a non-callable handler or a clock that is
        not one are refused at construction."""
        for handlers in [
            {Send: self.done.append},
            {Send: self.done.append, Deliver: self.done.append, StartTimer: self.done.append},
            {Send: self.done.append, Deliver: self.done.append, Spawn: self.done.append},
            {Send: self.done.append, Deliver: "not callable"},
        ]:
            with self.assertRaises(TypeError, msg=repr(handlers)):
                Driver(self.core, self.clock, handlers)  # type: ignore[arg-type]
        with self.assertRaises(TypeError):
            Driver(self.core, object(), {Send: print, Deliver: print})  # type: ignore[arg-type]

    def test_shared_counters(self) -> None:
        """Counters may be the adapter's own Counter, shared."""
        counters: Counter[str] = Counter()
        driver = Driver(
            self.core,
            self.clock,
            {Send: self.done.append, Deliver: self.done.append},
            counters=counters,
        )
        driver.input(self.core.say, (StartTimer(Tick.A, 0.0),))
        self.clock.advance(0)
        self.assertEqual(counters["timers.fired"], 1)
        self.assertIs(driver.counters, counters)
        driver.stop()


class EffectTests(SynchronousTestCase):
    def test_timer_keys(self) -> None:
        """A timer key is an enum member, or an enum member and a hashable
        discriminator; strings, callables, numbers and unhashable pairs are refused."""
        self.assertIs(check_timer_key(Tick.A), Tick.A)
        self.assertEqual(check_timer_key((Tick.A, 7)), (Tick.A, 7))
        self.assertEqual(StartTimer((Tick.B, "n1"), 1.0).key, (Tick.B, "n1"))
        for bad in ["restart", print, 3, ("restart", 1), (Tick.A, []), (Tick.A, 1, 2)]:
            with self.assertRaises(TypeError, msg=repr(bad)):
                check_timer_key(bad)
            with self.assertRaises(TypeError, msg=repr(bad)):
                StartTimer(bad, 1.0)  # type: ignore[arg-type]
            with self.assertRaises(TypeError, msg=repr(bad)):
                CancelTimer(bad)  # type: ignore[arg-type]

    def test_checked_fields(self) -> None:
        """Deadlines are finite times, handles integers, stored things enum members and
        log fields named pairs."""
        for at in [float("nan"), float("inf")]:
            with self.assertRaises(ValueError, msg=repr(at)):
                StartTimer(Tick.A, at)
        for wrong in [True, "1"]:
            with self.assertRaises(TypeError, msg=repr(wrong)):
                StartTimer(Tick.A, wrong)  # type: ignore[arg-type]
        with self.assertRaises(TypeError):
            Spawn("spec", "1")  # type: ignore[arg-type]
        with self.assertRaises(TypeError):
            Kill(True)
        with self.assertRaises(TypeError):
            Persist("seq", 1)  # type: ignore[arg-type]
        with self.assertRaises(TypeError):
            Log(LogLevel.info, "x", ((1, 2),))  # type: ignore[arg-type]
        self.assertEqual(Persist(Stored.SEQ, 4).value, 4)
        self.assertEqual(
            Log(LogLevel.info, "{a}", {"a": 1}), Log(LogLevel.info, "{a}", (("a", 1),))
        )

    def test_frozen_and_slotted(self) -> None:
        """Every effect is a frozen, slotted value: equal by value, never changed."""
        examples: list[Effect] = [
            Send(1, b"m"),
            Deliver("x"),
            StartTimer(Tick.A, 1.0),
            CancelTimer(Tick.A),
            Persist(Stored.SEQ, 1),
            Spawn("spec", 1),
            Kill(1),
            Log(LogLevel.info, "x"),
        ]
        self.assertEqual({type(e) for e in examples}, set(EFFECT_TYPES))
        for effect in examples:
            self.assertFalse(hasattr(effect, "__dict__"), effect)
            self.assertEqual(effect, attrs.evolve(effect))
            with self.assertRaises(attrs.exceptions.FrozenInstanceError):
                effect.x = 1  # type: ignore[union-attr]


class OutboxTests(SynchronousTestCase):
    def test_drain_in_order(self) -> None:
        """The outbox gives back what was emitted, in order, once."""
        box = Outbox()
        box.send(2, "m")
        box.deliver("item")
        box.start_timer((Tick.A, 1), 3.0)
        box.cancel_timer(Tick.B)
        box.persist(Stored.SEQ, 9)
        box.spawn("spec", 4)
        box.kill(4)
        box.log(LogLevel.debug, "{n}", n=1)
        self.assertEqual(len(box), 8)
        self.assertEqual(
            box.drain(),
            [
                Send(2, "m"),
                Deliver("item"),
                StartTimer((Tick.A, 1), 3.0),
                CancelTimer(Tick.B),
                Persist(Stored.SEQ, 9),
                Spawn("spec", 4),
                Kill(4),
                Log(LogLevel.debug, "{n}", {"n": 1}),
            ],
        )
        self.assertEqual(box.drain(), [])

    def test_undeclared_refused(self) -> None:
        """An outbox refuses effects its core did not declare, and anything that is
        not an effect, at the moment the core emits it."""
        box = Outbox({Send, Deliver})
        with self.assertRaises(TypeError):
            box.kill(1)
        with self.assertRaises(TypeError):
            box.emit("not an effect")  # type: ignore[arg-type]
        with self.assertRaises(TypeError):
            Outbox({Send, str})  # type: ignore[arg-type]
        self.assertEqual(box.drain(), [])


class TimerTableTests(SynchronousTestCase):
    def test_order_and_queries(self) -> None:
        """Timers fall due earliest first, ties in start order, exactly at their
        deadline; the table says what is pending and when."""
        table = TimerTable()
        table.start(Tick.A, 5.0)
        table.start(Tick.B, 2.0)
        table.start((Tick.C, 1), 5.0)
        self.assertEqual(
            (len(table), table.next_deadline(), table.deadline(Tick.A)), (3, 2.0, 5.0)
        )
        self.assertIn((Tick.C, 1), table)
        self.assertEqual(list(table.due(1.9)), [])
        self.assertEqual(list(table.due(5.0)), [Tick.B, Tick.A, (Tick.C, 1)])
        self.assertEqual(
            (len(table), table.next_deadline(), table.deadline(Tick.A)), (0, None, None)
        )

    def test_replace_and_cancel(self) -> None:
        """Starting a pending key moves it; cancelling forgets it, once."""
        table = TimerTable()
        table.start(Tick.A, 1.0)
        table.start(Tick.A, 4.0)
        table.start(Tick.B, 3.0)
        self.assertEqual(table.next_deadline(), 3.0)
        self.assertTrue(table.cancel(Tick.B))
        self.assertFalse(table.cancel(Tick.B))
        self.assertEqual(list(table.due(3.5)), [])
        self.assertEqual(list(table.due(4.0)), [Tick.A])

    def test_due_sees_changes_between_keys(self) -> None:
        """Between two keys a consumer may cancel or move a due timer (it is not
        yielded), or start one already due (left for the next round)."""
        table = TimerTable()
        for tick in (Tick.A, Tick.B, Tick.C):
            table.start(tick, 1.0)
        got = []
        for key in table.due(1.0):
            got.append(key)
            if key is Tick.A:
                table.cancel(Tick.B)
                table.start((Tick.A, "again"), 0.5)  # due, but new this round
        self.assertEqual(got, [Tick.A, Tick.C])
        self.assertEqual(list(table.due(1.0)), [(Tick.A, "again")])

    def test_stopping_early_keeps_the_rest(self) -> None:
        """A consumer that stops early leaves the other due timers pending."""
        table = TimerTable()
        table.start(Tick.A, 1.0)
        table.start(Tick.B, 1.0)
        for _ in table.due(2.0):
            break
        self.assertEqual(list(table.due(2.0)), [Tick.B])

    def test_many_restarts(self) -> None:
        """A timer restarted thousands of times (a token-loss timer) stays one timer."""
        table = TimerTable()
        for i in range(10_000):
            table.start(Tick.A, 1.0 + i)
        table.start(Tick.B, 5.5)
        self.assertEqual((len(table), table.next_deadline()), (2, 5.5))
        self.assertEqual(list(table.due(1e6)), [Tick.B, Tick.A])

    def test_keys_checked(self) -> None:
        """The table takes timer keys only."""
        with self.assertRaises(TypeError):
            TimerTable().start("a", 1.0)  # type: ignore[arg-type]

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["start", "cancel", "due"]),
                st.sampled_from([Tick.A, Tick.B, (Tick.C, 1), (Tick.C, 2)]),
                st.integers(0, 20),
            ),
            max_size=60,
        )
    )
    def test_against_model(self, ops: list[tuple[str, TimerKey, int]]) -> None:
        """Against a plain dict of deadlines: the same keys fall due, in deadline then
        start order, and the next deadline is always the model's earliest."""
        table, model, order, now = TimerTable(), dict[TimerKey, float](), dict[TimerKey, int](), 0
        for i, (op, key, t) in enumerate(ops):
            if op == "start":
                table.start(key, float(t))
                model[key], order[key] = float(t), i
            elif op == "cancel":
                self.assertEqual(table.cancel(key), model.pop(key, None) is not None)
            else:
                now = max(now, t)
                expected = sorted(
                    (k for k in model if model[k] <= now), key=lambda k: (model[k], order[k])
                )
                self.assertEqual(list(table.due(float(now))), expected)
                for k in expected:
                    del model[k]
            self.assertEqual(table.next_deadline(), min(model.values(), default=None))
            self.assertEqual(len(table), len(model))
