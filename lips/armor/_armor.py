"""
The ARMOR: a composite of basic building blocks, a core on the kernel contract
(C{docs/design/core.md}), sans-IO.

An L{Armor} is made of blocks in named slots: its own three, the
L{CompositionController} (C{controller}), the L{MessageDispatch} (C{dispatch}) and the
L{MessageSend} (C{send}), and those of its type (L{Armor.default_blocks}, made by
name by its L{BlockFactory}; a subclass inherits and overrides them).  A message from
the daemon goes to the dispatch, which hands it to the blocks subscribed to its type;
what a block sends goes to the MessageSend, which hands it back to the dispatch when it
is for this ARMOR and out to the daemon otherwise.  Every one of these deliveries goes
through the controller.  Messages an ARMOR sends itself wait in a queue and are
dispatched in order, after the delivery under way: each delivery runs to its end
before the next begins.

Inputs (each takes the current time, C{now}, last):

  - L{Armor.start}C{(now)}: attach every block (a block may start timers or send).
  - L{Armor.receive}C{(message, now)}: a L{Message} from the daemon.  One not for this
    ARMOR (C{messages.misrouted}), or claiming to come from this ARMOR
    (C{messages.spoofed}), is dropped and counted.
  - L{Armor.timer}C{((ArmorTimer.BLOCK, (slot, serial, name)), now)}: a block's timer
    is due; the block gets a L{TIMER} message.

Effects:

  - L{Send}C{(destination, message)}: a message for another ARMOR, for the daemon to
    route (the host hands C{message} to the daemon; C{destination} is its
    C{destination}).
  - L{StartTimer} / L{CancelTimer}: a block's timers, keyed
    C{(ArmorTimer.BLOCK, (slot, serial, name))}; a block's timers are cancelled when
    it is removed or replaced.
  - L{Log}: a malformed message refused by a block (warn), a composition change made
    (info), deferred (info) or refused (warn), and what blocks log.

Queries: L{Armor.slots}, L{Armor.block}, L{Armor.pending}, L{Armor.dropped},
L{Armor.counters} (names in L{COUNTERS}).
"""

from __future__ import annotations

import contextlib
import enum
import itertools
from collections import Counter, deque
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, Final, Self

from twisted.logger import LogLevel

from lips.armor._blocks import DISPATCH, SEND, IBlock, MessageDispatch, MessageSend
from lips.armor._bodies import Subscription, TimerDue
from lips.armor._composition import (
    CONTROLLER,
    RESERVED_SLOTS,
    CompositionController,
    PendingChange,
)
from lips.armor._factory import BlockFactory, default_block_factory
from lips.armor._messages import SUBSCRIBE, TIMER, UNSUBSCRIBE, Message
from lips.armor._names import ArmorId, MessageError, armor_id, check_name
from lips.kernel import CancelTimer, Effect, Log, Outbox, Send, StartTimer, TimerKey

__all__ = ["COUNTERS", "Armor", "ArmorTimer", "BlockContext"]

#: The counters an ARMOR keeps (in L{Armor.counters}).
COUNTERS: Final[tuple[str, ...]] = (
    "messages.received",  # receive() was given a message
    "messages.misrouted",  # ... for another ARMOR: dropped
    "messages.spoofed",  # ... claiming this ARMOR as its source: dropped
    "messages.unsubscribed",  # no block subscribed to its type: dropped
    "messages.refused",  # a block found it malformed: dropped
    "messages.sent",  # out to the daemon
    "messages.local",  # from this ARMOR to itself
    "messages.no-block",  # for a slot emptied meanwhile
    "timers.fired",  # a block's timer came due
    "compose.applied",
    "compose.deferred",  # asked for while its block was busy: made later
    "compose.refused",
)


class ArmorTimer(enum.Enum):
    """The ARMOR's timers: each block's, keyed C{(BLOCK, (slot, serial, name))}."""

    BLOCK = "block"
    """A block's timer C{name}; C{serial} tells that block from one in its slot later."""


class BlockContext:
    """
    What a block may do in its ARMOR: its view of it, given to the block when it is
    attached.  It works only while the block is in the ARMOR and the ARMOR is handling
    an input (so, from the block's C{attach} and C{process_message}); otherwise it
    raises L{RuntimeError}.

    @ivar slot: the block's slot.
    @ivar serial: tells this attachment from any other of the ARMOR's.
    """

    def __init__(self, armor: Armor, slot: str, serial: int) -> None:
        self._armor = armor
        self.slot = slot
        self.serial = serial
        self.active = True
        self._timers: set[str] = set()

    def __repr__(self) -> str:
        return f"<BlockContext {self._armor.id}/{self.slot}#{self.serial}>"

    @property
    def armor(self) -> Armor:
        """The ARMOR (for blocks that work with a kind of ARMOR: a manager's)."""
        return self._armor

    @property
    def id(self) -> ArmorId:
        """The ARMOR's id."""
        return self._armor.id

    @property
    def timers(self) -> frozenset[str]:
        """The names of this block's pending timers."""
        return frozenset(self._timers)

    def send(self, type: str, destination: str, body: object = None) -> Message:
        """
        Send a message of C{type} with C{body} (a plain value or a L{Body}) to
        C{destination}, through the ARMOR's MessageSend.

        @return: the message, with the id it was given.
        @raise MessageError: if the type, the destination or the body is not valid.
        """
        self._check()
        return self._armor._send(type, destination, body)

    def subscribe(self, type: str) -> None:
        """Ask the dispatch for messages of C{type} too (a L{SUBSCRIBE} message)."""
        self.send(SUBSCRIBE, self._armor.id, Subscription(self.slot, type))

    def unsubscribe(self, type: str) -> None:
        """Ask the dispatch for no more messages of C{type} (an L{UNSUBSCRIBE} message)."""
        self.send(UNSUBSCRIBE, self._armor.id, Subscription(self.slot, type))

    def start_timer(self, name: str, at: float) -> None:
        """
        Have a L{TIMER} message with C{TimerDue(name)} delivered to this block once
        C{now >= at}; a timer already pending as C{name} is moved.
        """
        self._check()
        check_name(name, "a timer name")
        self._timers.add(name)
        self._armor._outbox.start_timer(self._key(name), at)

    def cancel_timer(self, name: str) -> None:
        """Forget the timer pending as C{name}, if any."""
        self._check()
        if name in self._timers:
            self._timers.discard(name)
            self._armor._outbox.cancel_timer(self._key(name))

    def log(self, level: LogLevel, format: str, **fields: object) -> None:
        """Log C{format} with C{fields} and the ARMOR's id and this block's slot."""
        self._check()
        self._armor._outbox.log(
            level, format, **{"armor": self._armor.id, "block": self.slot, **fields}
        )

    def close(self) -> None:
        """The block leaves the ARMOR: cancel its timers; from now on this raises."""
        for name in sorted(self._timers):
            self._armor._outbox.cancel_timer(self._key(name))
        self._timers.clear()
        self.active = False

    def _key(self, name: str) -> TimerKey:
        return (ArmorTimer.BLOCK, (self.slot, self.serial, name))

    def _fired(self, name: str) -> bool:
        if self.active and name in self._timers:
            self._timers.discard(name)
            return True
        return False

    def _check(self) -> None:
        if not self.active:
            raise RuntimeError(f"block {self.slot!r} is no longer in ARMOR {self._armor.id}")
        if self._armor._now is None:
            raise RuntimeError(f"ARMOR {self._armor.id} acts only while handling an input")


class Armor:
    """
    An ARMOR called C{id}, managed by C{manager} (see the module docstring).

    @param id: its system-wide unique id, handed out by its manager.
    @param manager: its manager's id; only an ARMOR type that has no manager (the FTM)
        may leave it out.
    @param blocks: the factory its blocks are made by (by default, the plugins').
    @param composition: slot to block type name, for slots to fill besides, or
        instead of, those L{default_blocks} fills.
    @cvar type_name: the name the LiPS plugin registers the type as.
    @cvar default_blocks: the blocks of this type, slot to block type name: a subclass
        inherits its parent's by building on them.
    @cvar needs_manager: whether C{manager} must be given.
    @ivar counters: see L{COUNTERS}.
    @raise MessageError: if an id or a slot name is not valid.
    @raise ValueError: if it needs a manager and has none, or would manage itself.
    @raise UnknownType: if a block type is not registered.
    """

    type_name: ClassVar[str] = "armor"
    emits: ClassVar[frozenset[type[Effect]]] = frozenset({Send, StartTimer, CancelTimer, Log})
    default_blocks: ClassVar[Mapping[str, str]] = {}
    needs_manager: ClassVar[bool] = True

    def __init__(
        self,
        id: str,
        manager: str | None,
        *,
        blocks: BlockFactory | None = None,
        composition: Mapping[str, str] | None = None,
    ) -> None:
        self.id: ArmorId = armor_id(id)
        self.manager: ArmorId | None = None if manager is None else armor_id(manager)
        if self.manager is None and self.needs_manager:
            raise ValueError(f"{type(self).__name__} {id} needs a manager")
        if self.manager == self.id:
            raise ValueError(f"{id} cannot be its own manager")
        if blocks is not None and not isinstance(blocks, BlockFactory):
            raise TypeError(f"not a BlockFactory: {blocks!r}")
        self.blocks = blocks if blocks is not None else default_block_factory()
        self.counters: Counter[str] = Counter()
        self.started = False
        self._outbox = Outbox(type(self).emits)
        self._queue: deque[tuple[BlockContext | None, Message]] = deque()
        self._ids = itertools.count(1)
        self._now: float | None = None
        self.controller = CompositionController(self, self.counters)
        self.dispatch = MessageDispatch(
            self.controller.deliver, self.controller.has_slot, self.counters
        )
        self.sender = MessageSend(self.id, self._queue_local, self._out, self.counters)
        self.controller.put(CONTROLLER, "composition-controller", self.controller)
        self.controller.put(DISPATCH, "message-dispatch", self.dispatch)
        self.controller.put(SEND, "message-send", self.sender)
        for slot, kind in {**self.default_blocks, **(composition or {})}.items():
            check_name(slot, "a slot")
            if slot in RESERVED_SLOTS:
                raise ValueError(f"slot {slot!r} is the ARMOR's own")
            self.controller.put(slot, kind, self.blocks.create(kind))

    @classmethod
    def from_config(
        cls,
        id: ArmorId,
        manager: ArmorId | None,
        config: Mapping[str, object],
        blocks: BlockFactory,
    ) -> Self:
        """
        An ARMOR of this type made from the plain map C{config} (untrusted: it comes
        with an install request), as an L{ArmorType} plugin does.  Every type takes
        C{blocks}, a map of slot to block type name (see C{composition}); a subclass
        adds its options in L{options}.

        @raise MessageError: for an option it does not take, or a malformed one.
        """
        remaining = dict(config)
        kwargs = cls.options(remaining)
        if remaining:
            raise MessageError(f"{cls.__name__} takes no option {sorted(remaining)[0]!r}")
        return cls(id, manager, blocks=blocks, **kwargs)

    @classmethod
    def options(cls, config: dict[str, object]) -> dict[str, Any]:
        """
        Take the options this type knows out of C{config}, as keyword arguments of the
        constructor (a subclass adds its own to its parent's).

        @raise MessageError: for a malformed option.
        """
        kwargs: dict[str, Any] = {}
        if "blocks" in config:
            composition = config.pop("blocks")
            if not isinstance(composition, Mapping):
                raise MessageError("the blocks option is a map of slot to block type")
            kwargs["composition"] = {
                check_name(slot, "a slot"): check_name(kind, "a block type")
                for slot, kind in composition.items()
            }
        return kwargs

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id}>"

    # -- queries --------------------------------------------------------------------------

    def slots(self) -> dict[str, str]:
        """Its composition: each slot's block type name, in the order they were put in."""
        return self.controller.slots()

    def block(self, slot: str) -> IBlock:
        """
        The block in C{slot}.

        @raise KeyError: if the slot is empty.
        """
        return self.controller.block(slot)

    @property
    def pending(self) -> list[PendingChange]:
        """The composition changes waiting for their block to be idle."""
        return list(self.controller.pending)

    @property
    def dropped(self) -> Counter[str]:
        """The messages dropped for want of a subscriber, by type."""
        return Counter(self.dispatch.dropped)

    def drain(self) -> list[Effect]:
        """The effects emitted since the last call, in order."""
        return self._outbox.drain()

    # -- inputs ---------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """
        Attach every block, in order: the ARMOR runs from now on.

        @raise RuntimeError: if it was started before.
        """
        if self.started:
            raise RuntimeError(f"{self.id} is started already")
        self.started = True
        with self._input(now):
            self.controller.attach_all(now)

    def receive(self, message: Message, now: float) -> None:
        """
        The daemon delivers C{message}.

        @raise TypeError: if it is not a L{Message}.
        @raise RuntimeError: if the ARMOR is not started.
        """
        if not isinstance(message, Message):
            raise TypeError(f"not an ARMOR message: {message!r}")
        with self._input(now):
            self.counters["messages.received"] += 1
            if message.destination != self.id:
                self.counters["messages.misrouted"] += 1
                self._outbox.log(
                    LogLevel.warn,
                    "{armor} got a {type} message for {destination}",
                    armor=self.id,
                    type=message.type,
                    destination=message.destination,
                )
                return
            if message.local:
                self.counters["messages.spoofed"] += 1
                self._outbox.log(
                    LogLevel.warn,
                    "{armor} got a {type} message from outside claiming to be its own",
                    armor=self.id,
                    type=message.type,
                )
                return
            self._queue.append((None, message))

    def timer(self, key: TimerKey, now: float) -> None:
        """
        A block's timer is due: C{key} is C{(ArmorTimer.BLOCK, (slot, serial, name))}.
        One cancelled, or of a block no longer in the ARMOR, is ignored.

        @raise ValueError: for a key this ARMOR never starts.
        """
        if not (
            isinstance(key, tuple)
            and key[0] is ArmorTimer.BLOCK
            and isinstance(key[1], tuple)
            and len(key[1]) == 3
        ):
            raise ValueError(f"not a timer of an ARMOR: {key!r}")
        slot, serial, name = key[1]
        with self._input(now):
            context = self.controller.context_of(slot)
            if context is None or context.serial != serial or not context._fired(name):
                return
            self.counters["timers.fired"] += 1
            message = Message.of(TIMER, self.id, self.id, next(self._ids), TimerDue(name))
            self._queue.append((context, message))

    # -- for the blocks -------------------------------------------------------------------

    def _send(self, type: str, destination: str, body: object) -> Message:
        assert self._now is not None
        message = Message.of(type, self.id, destination, next(self._ids), body)
        self.controller.deliver(SEND, message, self._now)
        return message

    def _queue_local(self, message: Message) -> None:
        self._queue.append((None, message))

    def _out(self, message: Message) -> None:
        self._outbox.send(message.destination, message)

    @contextlib.contextmanager
    def _input(self, now: float) -> Iterator[None]:
        """
        Run an input at C{now}: the outermost one dispatches what it queued, in order,
        and makes the composition changes that became possible.  An input called
        from within another (a block calling a manager's input) leaves that to it.
        """
        if not self.started:
            raise RuntimeError(f"{self.id} is not started")
        if self._now is not None:
            yield
            return
        self._now = now
        try:
            yield
            self._run(now)
        finally:
            self._now = None

    def _run(self, now: float) -> None:
        while self._queue:
            context, message = self._queue.popleft()
            if context is None:
                self.controller.deliver(DISPATCH, message, now)
            elif context.active:
                self.controller.deliver(context.slot, message, now)
            self.controller.settle(now)
        self.controller.settle(now)
        if self._queue:  # a change made in the last settle sent something to itself
            self._run(now)
