"""
Tests for L{lips.client._core}: the client's core driven directly, with explicit times,
its effects asserted as they come out of C{drain()}.

Every state is reached through the inputs alone; in each, every input the state does
not allow raises L{NoTransition} before any of the core's code runs (nothing emitted,
nothing changed), and every input it allows is taken.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from automat import NoTransition
from twisted.internet.task import Clock
from twisted.logger import LogLevel
from twisted.trial.unittest import SynchronousTestCase

from lips.client._core import (
    ATTEMPT_TIMEOUT,
    FAILOVER_TIMEOUT,
    GOODBYE_TIMEOUT,
    KEEPALIVE,
    MAX_RETRY_DELAY,
    RETRY_DELAY,
    SETTLE_TIME,
    TIMEOUT_GRACE,
    Answered,
    ClientCore,
    ClientState,
    ClientTimer,
    Dial,
    Failed,
    Hangup,
    Link,
    NoServerAvailable,
    NotConnected,
    Outgoing,
    PutBack,
    Welcomed,
)
from lips.errors import ConnectionLost, OutcomeUnknown, ProtocolViolation, RequestError
from lips.kernel import CancelTimer, Deliver, Driver, Effect, Log, Send, StartTimer
from lips.space import Kind
from lips.tuples import make_template
from lips.wire import (
    Cancel,
    Cancelled,
    Error,
    ErrorCode,
    Goodbye,
    Hello,
    Matched,
    Out,
    Ping,
    Pong,
    Stored,
    Take,
    Welcome,
)

PID = 42
JOB = make_template(("job", int))
ENDPOINTS = ("tcp:a", "tcp:b", "tcp:c")


def welcome(server: str = "A", pid: int = PID) -> Welcome:
    return Welcome(pid, server, 1 << 20)


def sends(effects: list[Effect]) -> list[tuple[Any, Any]]:
    """The (link, what) of each Send among C{effects}."""
    return [(e.to, e.message) for e in effects if isinstance(e, Send)]


def delivered(effects: list[Effect]) -> list[Any]:
    return [e.item for e in effects if isinstance(e, Deliver)]


def quiet(effects: list[Effect]) -> list[Effect]:
    """C{effects} without the logging."""
    return [e for e in effects if not isinstance(e, Log)]


def hello(link: Link, pid: int | None = PID) -> list[Effect]:
    """What dialing C{link} emits."""
    return [Send(link, Dial()), Send(link, Outgoing(1, Hello(pid, "worker")))]


def make(reconnect: bool = True, **kwargs: Any) -> ClientCore:
    endpoints = kwargs.pop("endpoints", ENDPOINTS)
    options: dict[str, Any] = {"pid": PID, "name": "worker", "reconnect": reconnect}
    options.update(kwargs)
    return ClientCore(endpoints, **options)


class _States:
    """Bring a fresh core to each state, at known times, through its inputs."""

    @staticmethod
    def new(**kwargs: Any) -> ClientCore:
        return make(**kwargs)

    @staticmethod
    def connecting(**kwargs: Any) -> ClientCore:
        core = make(**kwargs)
        core.start(0.0)
        core.drain()
        return core

    @staticmethod
    def connected(**kwargs: Any) -> ClientCore:
        core = _States.connecting(**kwargs)
        link = core.link
        assert link is not None
        core.received(link, 1, welcome(), 0.1)
        core.drain()
        return core

    @staticmethod
    def disconnected(**kwargs: Any) -> ClientCore:
        core = _States.connected(reconnect=False, **kwargs)
        link = core.link
        assert link is not None
        core.lost(link, ConnectionError("gone"), 1.0)
        core.drain()
        return core

    @staticmethod
    def dialing(**kwargs: Any) -> ClientCore:
        core = _States.connected(**kwargs)
        link = core.link
        assert link is not None
        core.lost(link, ConnectionError("gone"), 1.0)
        core.drain()
        return core

    @staticmethod
    def paused(**kwargs: Any) -> ClientCore:
        core = _States.dialing(**kwargs)
        for _ in range(3):
            link = core.link
            assert link is not None
            core.lost(link, ConnectionRefusedError("down"), 1.0)
        core.drain()
        return core

    @staticmethod
    def failed(**kwargs: Any) -> ClientCore:
        core = _States.paused(**kwargs)
        core.timer(ClientTimer.GIVE_UP, 1.0 + FAILOVER_TIMEOUT)
        core.drain()
        return core

    @staticmethod
    def closed(**kwargs: Any) -> ClientCore:
        core = _States.connected(**kwargs)
        core.close(2.0)
        core.drain()
        return core


STATES: dict[ClientState, Callable[[], ClientCore]] = {
    ClientState.NEW: _States.new,
    ClientState.CONNECTING: _States.connecting,
    ClientState.CONNECTED: _States.connected,
    ClientState.DISCONNECTED: _States.disconnected,
    ClientState.DIALING: _States.dialing,
    ClientState.PAUSED: _States.paused,
    ClientState.FAILED: _States.failed,
    ClientState.CLOSED: _States.closed,
}

#: Each input, as a call on a core at time 50 (a guarded request of handle 99 exists
#: where requests do, see _prepare), and the states that allow it.
INPUTS: dict[str, tuple[Callable[[ClientCore], object], frozenset[ClientState]]] = {
    "start": (lambda c: c.start(50.0), frozenset({ClientState.NEW})),
    "request": (
        lambda c: c.request(1, Out(1, ("x",)), 50.0),
        frozenset(
            {
                ClientState.CONNECTED,
                ClientState.DISCONNECTED,
                ClientState.DIALING,
                ClientState.PAUSED,
                ClientState.FAILED,
                ClientState.CLOSED,
            }
        ),
    ),
    "cancel": (
        lambda c: c.cancel(99, 50.0),
        frozenset(
            {
                ClientState.CONNECTED,
                ClientState.DISCONNECTED,
                ClientState.DIALING,
                ClientState.PAUSED,
                ClientState.FAILED,
                ClientState.CLOSED,
            }
        ),
    ),
    "close": (lambda c: c.close(50.0), frozenset(ClientState)),
    "received": (
        lambda c: c.received(c.link or Link(0, 1), 7, Pong(), 50.0),
        frozenset({ClientState.CONNECTING, ClientState.CONNECTED, ClientState.DIALING}),
    ),
    "heard": (
        lambda c: c.heard(c.link or Link(0, 1), 50.0),
        frozenset({ClientState.CONNECTING, ClientState.CONNECTED, ClientState.DIALING}),
    ),
    "lost": (
        lambda c: c.lost(c.link or Link(0, 1), ConnectionError("x"), 50.0),
        frozenset({ClientState.CONNECTING, ClientState.CONNECTED, ClientState.DIALING}),
    ),
    "attempt timer": (
        lambda c: c.timer(ClientTimer.ATTEMPT, 50.0),
        frozenset({ClientState.CONNECTING, ClientState.DIALING}),
    ),
    "retry timer": (
        lambda c: c.timer(ClientTimer.RETRY, 50.0),
        frozenset({ClientState.PAUSED}),
    ),
    "give-up timer": (
        lambda c: c.timer(ClientTimer.GIVE_UP, 50.0),
        frozenset({ClientState.DIALING, ClientState.PAUSED}),
    ),
    "keepalive timer": (
        lambda c: c.timer(ClientTimer.KEEPALIVE, 50.0),
        frozenset({ClientState.CONNECTED}),
    ),
    "guard timer": (
        lambda c: c.timer((ClientTimer.GUARD, 99), 50.0),
        frozenset({ClientState.CONNECTED, ClientState.DIALING, ClientState.PAUSED}),
    ),
}


def _prepare(state: ClientState) -> ClientCore:
    """A core in C{state}; where requests are held, with a guarded take of handle 99."""
    core = STATES[state]()
    if state in (ClientState.CONNECTED, ClientState.DIALING, ClientState.PAUSED):
        core.request(99, Take(Kind.IN, 9, JOB, 1.0), 40.0)
        core.drain()
    return core


class StateTests(SynchronousTestCase):
    """Every state, and what each input does in it."""

    def test_states_reached(self) -> None:
        """Each state is reached through the inputs alone, and says its public name."""
        public = {
            ClientState.NEW: "connecting",
            ClientState.CONNECTING: "connecting",
            ClientState.CONNECTED: "connected",
            ClientState.DISCONNECTED: "connected",
            ClientState.DIALING: "failing over",
            ClientState.PAUSED: "failing over",
            ClientState.FAILED: "failed",
            ClientState.CLOSED: "closed",
        }
        for state, reach in STATES.items():
            core = reach()
            self.assertEqual((core.phase, core.state), (state, public[state]))

    def test_refused_inputs_raise_before_anything_happens(self) -> None:
        """
        An input the state does not allow raises NoTransition, and the core is as it
        was: nothing emitted, the same state, the same requests.
        """
        refused = 0
        for state in ClientState:
            for name, (call, allowed) in INPUTS.items():
                if state in allowed:
                    continue
                core = _prepare(state)
                before = (core.phase, core.link, core.waiting, core.failovers, core.endpoint)
                with self.assertRaises(NoTransition, msg=f"{name} in {state.value}"):
                    call(core)
                self.assertEqual(core.drain(), [], f"{name} in {state.value}")
                after = (core.phase, core.link, core.waiting, core.failovers, core.endpoint)
                self.assertEqual(after, before, f"{name} in {state.value}")
                refused += 1
        taken = sum(len(states) for _, states in INPUTS.values())
        self.assertEqual(refused, len(ClientState) * len(INPUTS) - taken)
        self.assertEqual(refused, 57)

    def test_allowed_inputs_are_taken(self) -> None:
        """Every input a state allows is taken there."""
        for state in ClientState:
            for call, allowed in INPUTS.values():
                if state in allowed:
                    call(_prepare(state))  # raises nothing

    def test_bad_arguments_raise(self) -> None:
        """A frame from another link, a handle in use or a request no caller makes raise."""
        core = _States.connected()
        self.assertRaises(ValueError, core.received, Link(2, 9), 2, Stored(), 1.0)
        self.assertRaises(ValueError, core.lost, Link(2, 9), ConnectionError(), 1.0)
        core.request(1, Out(1, ("x",)), 1.0)
        self.assertRaises(ValueError, core.request, 1, Out(2, ("y",)), 1.0)
        self.assertRaises(TypeError, core.request, 2, Hello(None, ""), 1.0)
        self.assertRaises(TypeError, core.request, 3, Ping(), 1.0)
        self.assertRaises(ValueError, core.timer, Kind.IN, 1.0)
        self.assertEqual(core.phase, ClientState.CONNECTED)

    def test_bad_settings_raise(self) -> None:
        """Settings that cannot work are refused when the core is made."""
        self.assertRaises(ValueError, ClientCore, [], reconnect=True, welcome=welcome())
        self.assertRaises(ValueError, ClientCore, [])
        self.assertRaises(ValueError, ClientCore, ENDPOINTS, failover_timeout=0)
        self.assertRaises(ValueError, ClientCore, ENDPOINTS, attempt_timeout=-1)
        self.assertRaises(ValueError, ClientCore, ENDPOINTS, keepalive=0)
        self.assertRaises(ValueError, ClientCore, ENDPOINTS, start=3)


class ConnectingTests(SynchronousTestCase):
    """The first connection: each endpoint once, in turn."""

    def test_start_dials_the_first(self) -> None:
        """start dials endpoint C{start} and says HELLO, with an attempt timer."""
        core = make(start=1)
        core.start(3.0)
        link = Link(1, 1)
        self.assertEqual(
            core.drain(),
            [*hello(link), StartTimer(ClientTimer.ATTEMPT, 3.0 + ATTEMPT_TIMEOUT)],
        )
        self.assertEqual((core.link, core.endpoint), (link, None))

    def test_welcome(self) -> None:
        """A WELCOME connects: the attempt timer goes, the host hears where it is."""
        core = _States.connecting()
        link = Link(0, 1)
        core.received(link, 1, welcome("A"), 0.5)
        self.assertEqual(
            core.drain(),
            [CancelTimer(ClientTimer.ATTEMPT), Deliver(Welcomed(link, welcome("A")))],
        )
        self.assertEqual((core.state, core.endpoint, core.server), ("connected", "tcp:a", "A"))
        self.assertEqual((core.pid, core.max_size, core.failovers), (PID, 1 << 20, 0))

    def test_pid_from_the_server(self) -> None:
        """Without a pid of its own, the client takes the one its WELCOME gives."""
        core = make(pid=None)
        core.start(0.0)
        self.assertEqual(core.drain()[:2], hello(Link(0, 1), pid=None))
        core.received(Link(0, 1), 1, welcome(pid=7), 0.1)
        self.assertEqual(core.pid, 7)

    def test_each_endpoint_once(self) -> None:
        """
        A refused attempt moves to the next endpoint; after the last, the first
        connection fails with NoServerAvailable naming each endpoint and its error.
        """
        core = make(start=2)
        core.start(0.0)
        core.drain()
        core.lost(Link(2, 1), ConnectionRefusedError("c is down"), 0.1)
        self.assertEqual(
            core.drain(), [*hello(Link(0, 2)), StartTimer(ClientTimer.ATTEMPT, 0.1 + 5)]
        )
        core.received(Link(0, 2), 1, welcome(pid=3), 0.2)  # not our process
        self.assertEqual(
            core.drain(),
            [
                Send(Link(0, 2), Hangup()),
                *hello(Link(1, 3)),
                StartTimer(ClientTimer.ATTEMPT, 0.2 + 5),
            ],
        )
        core.timer(ClientTimer.ATTEMPT, 5.2)
        effects = core.drain()
        self.assertEqual(
            effects[:2], [Send(Link(1, 3), Hangup(abort=True)), CancelTimer(ClientTimer.ATTEMPT)]
        )
        [failed] = delivered(effects)
        assert isinstance(failed, NotConnected)
        error = failed.error
        self.assertIsInstance(error, NoServerAvailable)
        for part in (
            "tcp:c: c is down",
            "tcp:a: the server welcomed process 3",
            "tcp:b: no WELCOME within 5 s",
        ):
            self.assertIn(part, str(error))
        self.assertEqual(core.state, "failed")

    def test_one_endpoint_fails_with_its_own_error(self) -> None:
        """With one endpoint, the first connection fails with that endpoint's error."""
        core = make(endpoints=("tcp:a",), reconnect=False)
        core.start(0.0)
        core.drain()
        refused = ConnectionRefusedError("no")
        core.lost(Link(0, 1), refused, 0.1)
        self.assertEqual(
            core.drain(), [CancelTimer(ClientTimer.ATTEMPT), Deliver(NotConnected(refused))]
        )
        self.assertEqual(core.phase, ClientState.FAILED)

    def test_refused_hello(self) -> None:
        """An error answering the HELLO is a RequestError; anything else a violation."""
        core = make(endpoints=("tcp:a",))
        core.start(0.0)
        core.drain()
        core.received(Link(0, 1), 1, Error(ErrorCode.BUSY, "full"), 0.1)
        [failed] = delivered(core.drain())
        assert isinstance(failed, NotConnected)
        self.assertIsInstance(failed.error, RequestError)
        core = make(endpoints=("tcp:a",))
        core.start(0.0)
        core.drain()
        core.received(Link(0, 1), 1, Stored(), 0.1)
        [failed] = delivered(core.drain())
        assert isinstance(failed, NotConnected)
        self.assertIsInstance(failed.error, ProtocolViolation)

    def test_close_while_connecting(self) -> None:
        """Closing gives up the attempt; nothing is delivered (the caller cancelled)."""
        core = _States.connecting()
        core.close(0.3)
        self.assertEqual(
            core.drain(), [Send(Link(0, 1), Hangup(abort=True)), CancelTimer(ClientTimer.ATTEMPT)]
        )
        self.assertEqual(core.state, "closed")

    def test_heard_and_stray_frames_while_dialing(self) -> None:
        """Bytes, or a frame other than the HELLO's answer, change nothing."""
        core = _States.connecting()
        core.heard(Link(0, 1), 0.1)
        core.received(Link(0, 1), 0, Error(ErrorCode.MALFORMED, "?"), 0.1)
        self.assertEqual((core.drain(), core.phase), ([], ClientState.CONNECTING))


class ConnectedTests(SynchronousTestCase):
    """Requests on the current link, and what their answers do."""

    def setUp(self) -> None:
        self.core = _States.connected()
        self.link = Link(0, 1)

    def test_request_and_answer(self) -> None:
        """A request goes out with the next request id and a keepalive; its answer is delivered."""
        core = self.core
        core.request(5, Out(1, ("job", 1)), 1.0)
        self.assertEqual(
            core.drain(),
            [
                Send(self.link, Outgoing(2, Out(1, ("job", 1)))),
                StartTimer(ClientTimer.KEEPALIVE, 1.0 + KEEPALIVE),
            ],
        )
        core.received(self.link, 2, Stored(), 1.1)
        self.assertEqual(core.drain(), [Deliver(Answered(5, Stored()))])
        self.assertEqual(core.waiting, 0)

    def test_keepalive_left_armed_stops_when_nothing_waits(self) -> None:
        """
        The keepalive timer outlives the last answer (a request and its answer do not
        start and cancel a timer each); when it fires with nothing waiting it sends no
        probe and is not armed again, and the next request arms it afresh.
        """
        core = self.core
        core.request(5, Out(1, ("job", 1)), 1.0)
        core.received(self.link, 2, Stored(), 1.1)
        core.drain()
        core.timer(ClientTimer.KEEPALIVE, 1.0 + KEEPALIVE)
        self.assertEqual(core.drain(), [])
        core.request(6, Out(2, ("job", 2)), 3.0)
        self.assertEqual(
            core.drain(),
            [
                Send(self.link, Outgoing(3, Out(2, ("job", 2)))),
                StartTimer(ClientTimer.KEEPALIVE, 3.0 + KEEPALIVE),
            ],
        )

    def test_no_keepalive_without_failover(self) -> None:
        """Without failover, nothing watches the server."""
        core = _States.connected(reconnect=False)
        core.request(5, Out(1, ("job", 1)), 1.0)
        self.assertEqual(core.drain(), [Send(Link(0, 1), Outgoing(2, Out(1, ("job", 1))))])

    def test_guard(self) -> None:
        """
        A take with a timeout is guarded: no answer TIMEOUT_GRACE past it and it fails
        with OutcomeUnknown, and is withdrawn at the server.
        """
        core = self.core
        core.request(5, Take(Kind.IN, 1, JOB, 2.0), 1.0)
        self.assertEqual(
            core.drain()[0], StartTimer((ClientTimer.GUARD, 5), 1.0 + 2.0 + TIMEOUT_GRACE)
        )
        core.timer((ClientTimer.GUARD, 5), 8.0)
        effects = core.drain()
        [failed] = delivered(effects)
        assert isinstance(failed, Failed)
        self.assertIsInstance(failed.error, OutcomeUnknown)
        self.assertEqual(sends(effects), [(self.link, Outgoing(0, Cancel(2)))])
        self.assertEqual(core.waiting, 1)  # until its answer comes
        core.received(self.link, 2, Cancelled(), 8.1)
        self.assertEqual(quiet(core.drain()), [])
        self.assertEqual(core.waiting, 0)

    def test_goodbye_is_guarded(self) -> None:
        """A GOODBYE gets GOODBYE_TIMEOUT for its answer."""
        core = self.core
        core.request(5, Goodbye(3), 1.0)
        self.assertEqual(
            core.drain()[0], StartTimer((ClientTimer.GUARD, 5), 1.0 + GOODBYE_TIMEOUT)
        )

    def test_cancel_and_late_match(self) -> None:
        """
        A cancelled in_ is withdrawn; if its tuple was already taken, the tuple comes
        back to be put back, and the caller hears nothing more.
        """
        core = self.core
        core.request(5, Take(Kind.IN, 1, JOB), 1.0)
        core.drain()
        self.assertTrue(core.cancel(5, 1.5))
        self.assertEqual(core.drain(), [Send(self.link, Outgoing(0, Cancel(2)))])
        self.assertFalse(core.cancel(5, 1.6))  # once is enough
        self.assertEqual(core.drain(), [])
        core.received(self.link, 2, Matched(("job", 4)), 1.7)
        effects = core.drain()
        self.assertEqual(delivered(effects), [PutBack(("job", 4))])
        self.assertEqual(core.waiting, 0)

    def test_cancel_of_a_settled_request(self) -> None:
        """Cancelling a request already answered (its answer on its way) does nothing."""
        core = self.core
        core.request(5, Out(1, ("x",)), 1.0)
        core.received(self.link, 2, Stored(), 1.1)
        core.drain()
        self.assertFalse(core.cancel(5, 1.2))
        self.assertEqual(core.drain(), [])

    def test_stray_answers(self) -> None:
        """An answer to a CANCEL or a PING (request id 0) counts only as a sign of life."""
        core = self.core
        core.received(self.link, 0, Pong(), 1.0)
        self.assertEqual(core.drain(), [])

    def test_unavailable_fails_over(self) -> None:
        """
        UNAVAILABLE: the client hangs up, starts the failover count and dials the next
        endpoint; the request waits for the new server.
        """
        core = self.core
        core.request(5, Out(1, ("x",)), 4.0)
        core.drain()
        core.received(self.link, 2, Error(ErrorCode.UNAVAILABLE, "minority"), 4.1)
        self.assertEqual(
            quiet(core.drain()),
            [
                Send(self.link, Hangup()),
                CancelTimer(ClientTimer.KEEPALIVE),
                StartTimer(ClientTimer.GIVE_UP, 4.1 + FAILOVER_TIMEOUT),
                *hello(Link(1, 2)),
                StartTimer(ClientTimer.ATTEMPT, 4.1 + ATTEMPT_TIMEOUT),
            ],
        )
        self.assertEqual((core.state, core.endpoint, core.waiting), ("failing over", None, 1))

    def test_unavailable_without_failover(self) -> None:
        """Without failover, UNAVAILABLE is the caller's answer."""
        core = _States.connected(reconnect=False)
        core.request(5, Out(1, ("x",)), 1.0)
        core.drain()
        refusal = Error(ErrorCode.UNAVAILABLE, "minority")
        core.received(Link(0, 1), 2, refusal, 1.1)
        self.assertEqual(core.drain(), [Deliver(Answered(5, refusal))])

    def test_lost_without_failover(self) -> None:
        """
        Without failover a lost link fails what waits with ConnectionLost, and every
        later request; the client still says where it was.
        """
        core = _States.connected(reconnect=False)
        core.request(5, Take(Kind.IN, 1, JOB, 9.0), 1.0)
        core.request(6, Out(2, ("x",)), 1.0)
        core.drain()
        core.lost(Link(0, 1), ConnectionError("reset"), 2.0)
        effects = core.drain()
        self.assertEqual(effects[0], CancelTimer((ClientTimer.GUARD, 5)))
        failures = delivered(effects)
        self.assertEqual([f.handle for f in failures], [5, 6])
        for f in failures:
            self.assertIsInstance(f.error, ConnectionLost)
            self.assertEqual(str(f.error), "reset")
        core.request(7, Out(3, ("y",)), 3.0)
        [later] = delivered(core.drain())
        self.assertIsInstance(later.error, ConnectionLost)
        self.assertNotIsInstance(later.error, NoServerAvailable)
        self.assertEqual(
            (core.phase, core.state, core.endpoint),
            (ClientState.DISCONNECTED, "connected", "tcp:a"),
        )

    def test_keepalive_probe_then_leave(self) -> None:
        """
        Silent KEEPALIVE seconds with a request waiting: a PING; silent another
        KEEPALIVE: the link is dropped and the client fails over.
        """
        core = self.core
        core.request(5, Take(Kind.IN, 1, JOB), 1.0)
        core.drain()
        core.timer(ClientTimer.KEEPALIVE, 1.5)
        self.assertEqual(
            core.drain(),
            [Send(self.link, Outgoing(0, Ping())), StartTimer(ClientTimer.KEEPALIVE, 2.0)],
        )
        core.timer(ClientTimer.KEEPALIVE, 2.0)
        effects = core.drain()
        self.assertEqual(effects[0].level, LogLevel.warn)  # type: ignore[union-attr]
        self.assertEqual(
            sends(effects)[:2], [(self.link, Hangup(abort=True)), (Link(1, 2), Dial())]
        )
        self.assertEqual(core.state, "failing over")

    def test_keepalive_heard(self) -> None:
        """Anything heard in the interval (even part of a frame) keeps the server."""
        core = self.core
        core.request(5, Take(Kind.IN, 1, JOB), 1.0)
        core.drain()
        core.heard(self.link, 1.2)
        core.timer(ClientTimer.KEEPALIVE, 1.5)
        self.assertEqual(core.drain(), [StartTimer(ClientTimer.KEEPALIVE, 2.0)])
        core.timer(ClientTimer.KEEPALIVE, 2.0)
        self.assertEqual(
            core.drain(),
            [Send(self.link, Outgoing(0, Ping())), StartTimer(ClientTimer.KEEPALIVE, 2.5)],
        )
        core.received(self.link, 0, Pong(), 2.1)
        core.timer(ClientTimer.KEEPALIVE, 2.5)
        self.assertEqual(core.drain(), [StartTimer(ClientTimer.KEEPALIVE, 3.0)])
        self.assertEqual(core.state, "connected")

    def test_close(self) -> None:
        """Closing hangs up and fails what waits with ConnectionLost."""
        core = self.core
        core.request(5, Take(Kind.IN, 1, JOB), 1.0)
        core.drain()
        core.close(2.0)
        effects = core.drain()
        self.assertEqual(
            effects[:2], [Send(self.link, Hangup()), CancelTimer(ClientTimer.KEEPALIVE)]
        )
        [failed] = delivered(effects)
        self.assertIsInstance(failed.error, ConnectionLost)
        self.assertEqual((core.state, core.endpoint, core.link), ("closed", None, None))
        core.request(6, Out(2, ("x",)), 3.0)
        [later] = delivered(core.drain())
        self.assertIsInstance(later.error, ConnectionLost)
        core.close(4.0)  # again: nothing
        self.assertEqual(core.drain(), [])


class FailoverTests(SynchronousTestCase):
    """Failing over: rounds, pauses, the deadline, and the requests sent again."""

    def setUp(self) -> None:
        self.core = _States.connected()

    def lose(self, now: float) -> None:
        link = self.core.link
        assert link is not None
        self.core.lost(link, ConnectionRefusedError("down"), now)

    def test_round_robin_from_the_lost_one(self) -> None:
        """The next endpoints in turn from the one lost, then the lost one itself."""
        core = self.core
        self.lose(1.0)
        tried = [sends(core.drain())[0][0]]
        for _ in range(2):
            self.lose(1.0)
            tried.append(sends(core.drain())[0][0])
        self.assertEqual([link.endpoint for link in tried], [1, 2, 0])
        self.assertEqual([link.number for link in tried], [2, 3, 4])

    def test_rounds_and_pauses(self) -> None:
        """
        A round in which no endpoint welcomes the client is followed by a pause of
        RETRY_DELAY, doubling each round up to MAX_RETRY_DELAY.
        """
        core = self.core
        self.lose(1.0)
        now, pauses = 1.0, []
        for _ in range(4):
            for _ in range(3):
                self.lose(now)
            effects = core.drain()
            self.assertEqual(core.phase, ClientState.PAUSED)
            [retry] = [
                e for e in effects if isinstance(e, StartTimer) and e.key is ClientTimer.RETRY
            ]
            self.assertEqual(retry.key, ClientTimer.RETRY)
            pauses.append(retry.at - now)
            now = retry.at
            core.timer(ClientTimer.RETRY, now)
            self.assertEqual(core.phase, ClientState.DIALING)
        self.assertEqual(pauses, [RETRY_DELAY, 2 * RETRY_DELAY, MAX_RETRY_DELAY, MAX_RETRY_DELAY])

    def test_requests_sent_again_in_order(self) -> None:
        """
        Once a server welcomes it, the client sends the requests held, in the caller's
        order, with the same events; a take with a timeout asks for the time left.
        """
        core = self.core
        core.request(5, Take(Kind.IN, 1, JOB, 10.0), 1.0)
        core.drain()
        self.lose(3.0)
        core.request(6, Out(2, ("x",)), 3.5)
        core.drain()
        core.received(Link(1, 2), 1, welcome("B"), 4.0)
        effects = core.drain()
        self.assertEqual(
            quiet(effects),
            [
                CancelTimer(ClientTimer.GIVE_UP),
                CancelTimer(ClientTimer.ATTEMPT),
                Deliver(Welcomed(Link(1, 2), welcome("B"))),
                Send(Link(1, 2), Outgoing(2, Take(Kind.IN, 1, JOB, 7.0))),
                StartTimer(ClientTimer.KEEPALIVE, 4.0 + KEEPALIVE),
                Send(Link(1, 2), Outgoing(3, Out(2, ("x",)))),
            ],
        )
        self.assertEqual((core.failovers, core.endpoint, core.server), (1, "tcp:b", "B"))

    def test_withdrawn_by_the_old_server(self) -> None:
        """
        CANCELLED for a request sent again (the old server closing the old
        connection's waiters) while the caller still waits: it is sent once more.
        """
        core = self.core
        core.request(5, Take(Kind.IN, 1, JOB), 1.0)
        self.lose(2.0)
        core.received(Link(1, 2), 1, welcome("B"), 2.1)
        core.drain()
        core.received(Link(1, 2), 2, Cancelled(), 2.2)
        effects = core.drain()
        self.assertEqual(sends(effects), [(Link(1, 2), Outgoing(3, Take(Kind.IN, 1, JOB)))])
        self.assertEqual(delivered(effects), [])

    def test_cancelled_in_asked_again_as_inp(self) -> None:
        """
        A cancelled in_ whose answer died with the server is asked again as an inp
        and withdrawn, so that a tuple it took comes back; a cancelled rd is dropped.
        """
        core = self.core
        core.request(5, Take(Kind.IN, 1, JOB), 1.0)
        core.request(6, Take(Kind.RD, 2, JOB), 1.0)
        core.cancel(5, 1.1)
        core.cancel(6, 1.1)
        self.lose(2.0)
        core.received(Link(1, 2), 1, welcome("B"), 2.1)
        effects = core.drain()
        self.assertEqual(
            sends(effects)[-2:],
            [
                (Link(1, 2), Outgoing(2, Take(Kind.INP, 1, JOB))),
                (Link(1, 2), Outgoing(0, Cancel(2))),
            ],
        )
        self.assertEqual(core.waiting, 1)

    def test_deadline(self) -> None:
        """
        No server within the failover timeout: every request held fails with
        NoServerAvailable, and so does every later one.
        """
        core = self.core
        core.request(5, Out(1, ("x",)), 1.0)
        self.lose(2.0)
        core.drain()
        core.timer(ClientTimer.GIVE_UP, 2.0 + FAILOVER_TIMEOUT)
        effects = core.drain()
        self.assertEqual(
            effects[:4],
            [
                Send(Link(1, 2), Hangup(abort=True)),
                CancelTimer(ClientTimer.ATTEMPT),
                CancelTimer(ClientTimer.RETRY),
                CancelTimer(ClientTimer.GIVE_UP),
            ],
        )
        [failed] = delivered(effects)
        self.assertIsInstance(failed.error, NoServerAvailable)
        self.assertIn(f"within {FAILOVER_TIMEOUT:g} s", str(failed.error))
        core.request(6, Out(2, ("y",)), 20.0)
        [later] = delivered(core.drain())
        self.assertIsInstance(later.error, NoServerAvailable)
        self.assertEqual(core.state, "failed")

    def test_a_short_stay_keeps_the_count(self) -> None:
        """
        A server that loses the client within SETTLE_TIME of welcoming it does not
        start the count afresh: the deadline stays; one that kept it longer does.
        """
        core = self.core
        self.lose(1.0)
        first = next(e for e in core.drain() if isinstance(e, StartTimer))
        self.assertEqual(first, StartTimer(ClientTimer.GIVE_UP, 1.0 + FAILOVER_TIMEOUT))
        core.received(Link(1, 2), 1, welcome("B"), 1.5)
        self.lose(1.5 + SETTLE_TIME - 0.1)
        again = next(e for e in core.drain() if isinstance(e, StartTimer))
        self.assertEqual(again, StartTimer(ClientTimer.GIVE_UP, 1.0 + FAILOVER_TIMEOUT))
        core.received(Link(2, 3), 1, welcome("C"), 5.0)
        self.lose(5.0 + SETTLE_TIME)
        fresh = next(e for e in core.drain() if isinstance(e, StartTimer))
        self.assertEqual(fresh, StartTimer(ClientTimer.GIVE_UP, 8.0 + FAILOVER_TIMEOUT))

    def test_lost_past_the_deadline(self) -> None:
        """A server lost again past the deadline of the count it belongs to: give up at once."""
        core = self.core
        self.lose(1.0)
        core.received(Link(1, 2), 1, welcome("B"), 10.5)
        core.drain()
        self.lose(11.5)
        self.assertEqual(core.phase, ClientState.FAILED)

    def test_close_while_failing_over(self) -> None:
        """Closing stops the failover: requests fail with ConnectionLost, timers go."""
        core = self.core
        core.request(5, Out(1, ("x",)), 1.0)
        self.lose(2.0)
        core.drain()
        core.close(2.5)
        effects = core.drain()
        [failed] = delivered(effects)
        self.assertIsInstance(failed.error, ConnectionLost)
        self.assertNotIsInstance(failed.error, NoServerAvailable)
        self.assertIn(CancelTimer(ClientTimer.GIVE_UP), effects)
        self.assertEqual(core.state, "closed")

    def test_attempt_timeout(self) -> None:
        """An attempt that takes ATTEMPT_TIMEOUT is hung up; the next endpoint is dialed."""
        core = self.core
        self.lose(1.0)
        core.drain()
        core.timer(ClientTimer.ATTEMPT, 1.0 + ATTEMPT_TIMEOUT)
        effects = quiet(core.drain())
        self.assertEqual(effects[0], Send(Link(1, 2), Hangup(abort=True)))
        self.assertEqual(effects[1], Send(Link(2, 3), Dial()))


class AdoptedTests(SynchronousTestCase):
    """A core made for a connection welcomed before (lips.testing's memory client)."""

    def test_starts_connected(self) -> None:
        """It starts connected on link (start, 1), its next request id 2; it emits nothing."""
        core = ClientCore(ENDPOINTS, reconnect=True, start=1, welcome=welcome("B"), now=7.0)
        self.assertEqual(
            (core.phase, core.link, core.endpoint), (ClientState.CONNECTED, Link(1, 1), "tcp:b")
        )
        self.assertEqual(core.drain(), [])
        core.request(1, Out(1, ("x",)), 7.5)
        self.assertEqual(sends(core.drain()), [(Link(1, 1), Outgoing(2, Out(1, ("x",))))])

    def test_without_endpoints(self) -> None:
        """Without endpoints (and so without failover) it names no endpoint."""
        core = ClientCore([], welcome=welcome("memory"))
        self.assertEqual((core.state, core.endpoint, core.server), ("connected", None, "memory"))


class DriverTests(SynchronousTestCase):
    """The core under the kernel's driver, on a clock."""

    def test_declared_effects(self) -> None:
        """The driver runs the core with handlers for Send and Deliver only."""
        clock = Clock()
        out: list[Effect] = []
        driver = Driver(make(), clock, {Send: out.append, Deliver: out.append})
        driver.input(driver.core.start)
        self.assertEqual(out, hello(Link(0, 1)))
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.advance(ATTEMPT_TIMEOUT)
        self.assertEqual(
            out[2:4], [Send(Link(0, 1), Hangup(abort=True)), Send(Link(1, 2), Dial())]
        )
        driver.input(driver.core.close)
        self.assertEqual(clock.getDelayedCalls(), [])
