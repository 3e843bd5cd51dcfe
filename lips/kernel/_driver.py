"""
The one Twisted driver: it runs any core on a reactor's clock.

L{Driver} owns the effect loop and the single reactor timer that every core used to
keep for itself (generalised from C{RingProtocol}'s input, flush and reschedule):

  - L{Driver.input} calls one of the core's inputs with C{now} from the clock as its
    last argument, then carries out the effects the core emitted, in order.
  - L{StartTimer} and L{CancelTimer} go to the driver's L{TimerTable}; one
    L{IDelayedCall} is kept, never later than the earliest deadline, and when it fires
    the due timers go to the core's C{timer(key, now)}, with C{now} never short of the
    deadline (the reactor's "now + delay" may land a rounding error before it).
  - Every other effect goes to the handler the adapter gave for its class.  L{Log}
    has a default handler: the driver's logger.

Effect handlers run inside the loop.  A handler may feed the core again (call
L{Driver.input} from within a handler): that input runs at once, and its effects are
carried out after the ones already drained, so effects are always carried out in the
order the core emitted them.  A handler may also call L{Driver.stop}: the rest of the
loop's effects are then dropped.

Nothing raises into the reactor from here: a handler that raises, a core whose
C{timer} or C{drain} raises, and an effect with no handler are logged with their
traceback and counted (see L{COUNTERS}).  An exception from the core in
L{Driver.input} is different: the adapter asked, so it propagates to the adapter,
after the effects emitted before it are carried out.

Wiring mistakes fail at construction: a handler for an effect class the core does not
declare in its C{emits}, a handler for the timer effects (the driver's own), or a
declared effect class with no handler (but L{Log}) raises L{TypeError}.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, Final, Generic, TypeAlias, TypeVar, TypeVarTuple

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from lips.kernel._core import Core
from lips.kernel._effects import EFFECT_TYPES, CancelTimer, Effect, Log, StartTimer
from lips.kernel._timers import TimerTable

__all__ = ["COUNTERS", "Driver", "Handlers"]

C = TypeVar("C", bound=Core)
R = TypeVar("R")
Ts = TypeVarTuple("Ts")

Handlers: TypeAlias = Mapping[type[Effect], Callable[[Any], None]]
"""Effect class to the callable that carries such effects out."""

#: Every counter L{Driver} keeps (in L{Driver.counters}).
COUNTERS: Final[tuple[str, ...]] = (
    "effects.dropped",  # emitted after stop, or left when a handler stopped the driver
    "timers.fired",  # calls of the core's timer()
    "errors.handler",  # a handler raised
    "errors.core",  # the core's timer() or drain() raised
    "errors.unhandled",  # an effect class no handler was given for
)

_TIMER_EFFECTS: Final = frozenset({StartTimer, CancelTimer})


class Driver(Generic[C]):
    """
    Runs C{core} on C{clock}, carrying its effects out with C{handlers}.

    @param core: the sans-IO core.
    @param clock: the time source and scheduler (the reactor, or a L{task.Clock
        <twisted.internet.task.Clock>}).
    @param handlers: for each effect class the core emits, but the timer effects, what
        carries it out; L{Log} may be left out (the driver logs it).
    @param counters: where the counts of L{COUNTERS} go (the adapter's, to share).
    @param log: the logger for L{Log} effects and the driver's own errors; by default
        one named after the core's class.
    @raise TypeError: on a wiring mistake (see the module docstring).
    """

    def __init__(
        self,
        core: C,
        clock: IReactorTime,
        handlers: Handlers,
        *,
        counters: Counter[str] | None = None,
        log: Logger | None = None,
    ) -> None:
        if not IReactorTime.providedBy(clock):
            raise TypeError(f"not an IReactorTime: {clock!r}")
        emits = frozenset(core.emits)
        if not emits <= EFFECT_TYPES:
            raise TypeError(f"{type(core).__name__} declares non-effects: {emits - EFFECT_TYPES}")
        given = frozenset(handlers)
        if given & _TIMER_EFFECTS:
            raise TypeError("timer effects are the driver's: give no handler for them")
        stray = given - emits
        if stray:
            raise TypeError(
                f"{type(core).__name__} does not emit {sorted(t.__name__ for t in stray)}"
            )
        missing = emits - given - _TIMER_EFFECTS - {Log}
        if missing:
            raise TypeError(
                f"no handler for the {sorted(t.__name__ for t in missing)} effects"
                f" of {type(core).__name__}"
            )
        for kind, handler in handlers.items():
            if not callable(handler):
                raise TypeError(f"the handler for {kind.__name__} is not callable: {handler!r}")
        self.core: C = core
        self.clock = clock
        self.timers = TimerTable()
        self.counters: Counter[str] = counters if counters is not None else Counter()
        self.log = log if log is not None else Logger(namespace=_namespace(core))
        self._handlers: dict[type[Effect], Callable[[Any], None]] = {Log: self._log}
        self._handlers.update(handlers)
        self._call: IDelayedCall | None = None
        self._armed = 0.0
        self._flushing = False
        # Whether a timer effect was carried out since the reactor timer was last set,
        # and whether the core was given an input since its effects were last drained.
        self._retimed = False
        self._fed = False
        self.stopped = False

    # -- what the adapter calls -----------------------------------------------------------

    def input(self, method: Callable[[*Ts, float], R], *args: *Ts) -> R:
        """
        Call C{method(*args, now)}, an input of the core, with C{now} from the clock;
        then carry out its effects and re-arm the timer.

        @return: what the input returned.
        @raise Exception: whatever the input raised (its effects up to then are carried
            out all the same).
        """
        try:
            return method(*args, self.clock.seconds())
        finally:
            self._fed = True
            if not self._flushing:  # else a handler fed the core: its loop goes on
                self._run()
                if self._retimed:
                    # Only a timer effect moves a deadline: an input without one (most
                    # of them) leaves the reactor timer as it is.
                    self._rearm()

    def stop(self) -> None:
        """
        Go quiet: cancel the reactor timer, forget the pending timers, and carry out no
        effect from now on (inputs still reach the core; their effects are dropped).
        """
        self.stopped = True
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()
        self.timers.clear()

    def stats(self) -> dict[str, int]:
        """Every counter of L{COUNTERS} (zero if it never counted) and any other kept."""
        values = dict.fromkeys(COUNTERS, 0)
        values.update(self.counters)
        return values

    # -- the effect loop ------------------------------------------------------------------

    def _run(self) -> None:
        """Drain and carry out until the core has nothing more to say."""
        self._flushing = True
        try:
            # Drained again only if a handler fed the core (an input from within it).
            while self._fed:
                self._fed = False
                effects = self._drain()
                for i, effect in enumerate(effects):
                    if self.stopped:
                        self.counters["effects.dropped"] += len(effects) - i
                        break
                    self._carry_out(effect)
        finally:
            self._flushing = False

    def _drain(self) -> list[Effect]:
        try:
            return self.core.drain()
        except Exception:
            self.counters["errors.core"] += 1
            self.log.failure("{core} failed to drain its effects", core=type(self.core).__name__)
            return []

    def _carry_out(self, effect: Effect) -> None:
        kind = type(effect)
        if kind in _TIMER_EFFECTS:
            self.timers.apply(effect)  # type: ignore[arg-type]
            self._retimed = True
            return
        handler = self._handlers.get(kind)
        if handler is None:
            self.counters["errors.unhandled"] += 1
            self.log.failure(
                "No handler for {effect!r}",
                failure=Failure(TypeError(f"no handler for {kind.__name__} effects")),
                effect=effect,
            )
            return
        try:
            handler(effect)
        except Exception:
            self.counters["errors.handler"] += 1
            self.log.failure(
                "The {kind} handler failed on {effect!r}", kind=kind.__name__, effect=effect
            )

    def _log(self, effect: Log) -> None:
        self.log.emit(effect.level, effect.format, **dict(effect.fields))

    # -- the one reactor timer ------------------------------------------------------------

    def _rearm(self) -> None:
        """
        Keep one delayed call, due no later than the earliest deadline.  A deadline that
        moved later leaves the call where it is: when it fires, nothing is due and it is
        set again for the new deadline (moving a reactor timer at every input would cost
        more than the early wake-ups do).
        """
        self._retimed = False
        if self.stopped:
            return
        deadline = self.timers.next_deadline()
        call = self._call
        if deadline is None:
            if call is not None and call.active():
                call.cancel()
            self._call = None
            return
        delay = max(0.0, deadline - self.clock.seconds())
        if call is not None and call.active():
            if deadline < self._armed:
                self._armed = deadline
                call.reset(delay)
            return
        self._armed = deadline
        self._call = self.clock.callLater(delay, self._fire)

    def _fire(self) -> None:
        self._call = None
        # The clock computes "now + delay", which may land a rounding error short of
        # the deadline: fire at the deadline itself, so what was due fires.
        now = max(self.clock.seconds(), self._armed)
        for key in self.timers.due(now):
            if self.stopped:
                break
            self.counters["timers.fired"] += 1
            self._fed = True
            try:
                self.core.timer(key, now)
            except Exception:
                self.counters["errors.core"] += 1
                self.log.failure(
                    "{core} failed on its timer {key!r}", core=type(self.core).__name__, key=key
                )
            self._run()
        self._rearm()


def _namespace(core: object) -> str:
    kind = type(core)
    return f"{kind.__module__}.{kind.__qualname__}"
