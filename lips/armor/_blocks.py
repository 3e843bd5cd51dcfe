"""
Basic building blocks: the one interface, L{IBlock}, a base class, L{Block}, and the
two blocks every ARMOR routes its messages with, L{MessageDispatch} and L{MessageSend}.

A block's functionality has one entry, C{process_message(message, now)}; an ARMOR's
L{CompositionController<lips.armor.CompositionController>} is the only caller of it.
A block acts on its ARMOR through the L{BlockContext<lips.armor.BlockContext>} it is
given when attached: sending messages, starting timers (which come back to it as
L{TIMER} messages), logging.  It says which message types it takes from the dispatch
(C{subscriptions}) and whether it may be removed or replaced now (C{idle}).

Blocks are sans-IO like the ARMOR around them: no sockets, no clock, no reactor.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Final, Self

from zope.interface import Attribute, Interface, implementer

from lips.armor._bodies import Subscription
from lips.armor._messages import SUBSCRIBE, TIMER, UNSUBSCRIBE, Message
from lips.armor._names import ArmorId, MessageError

if TYPE_CHECKING:
    from lips.armor._armor import BlockContext

__all__ = [
    "DISPATCH",
    "SEND",
    "Block",
    "IBlock",
    "MessageDispatch",
    "MessageSend",
    "OwnBlock",
]

#: The slot of every ARMOR's MessageDispatch.
DISPATCH: Final = "dispatch"
#: The slot of every ARMOR's MessageSend.
SEND: Final = "send"


class IBlock(Interface):
    """
    A basic building block of an ARMOR.  Blocks of other packages are found through
    L{IBlockType<lips.armor.IBlockType>} plugins; an ARMOR checks what a factory made
    with C{IBlock.providedBy}.
    """

    subscriptions: frozenset[str] = Attribute(
        "The message types the dispatch hands this block, from when it is attached."
        " (A block may change them at run time with its context's subscribe and"
        " unsubscribe; a replacement starts from its own.)"
    )
    idle: bool = Attribute(
        "Whether the block may be removed or replaced now: False while it is in the"
        " middle of something that spans messages (a recovery awaiting its install)."
    )

    def attach(context: BlockContext, now: float) -> None:
        """
        The block was put into an ARMOR: keep C{context}, and act (start a timer, send
        a message) if it has to.  Raise (before acting) to refuse this ARMOR: an add or
        a replace is then refused, and the ARMOR stays as it was.
        """

    def process_message(message: Message, now: float) -> None:
        """
        Handle C{message}: one of the types it subscribed to, or a L{TIMER} message for
        a timer it started.

        @raise MessageError: if the message's body is malformed; the ARMOR counts it
            (C{messages.refused}) and goes on.  Anything else is a bug, and propagates.
        """


@implementer(IBlock)
class Block:
    """
    A convenient base for blocks: no subscriptions, always idle, keeps its context.
    Subclasses set C{subscriptions} and define L{process_message}.
    """

    subscriptions: frozenset[str] = frozenset()

    def __init__(self) -> None:
        self._context: BlockContext | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> Self:
        """
        A block made from C{config}, the plain map a L{Compose<lips.armor.Compose>} or
        an ARMOR type carries (so: untrusted).  This one takes none.

        @raise MessageError: if C{config} is not empty.
        """
        if config:
            raise MessageError(f"{cls.__name__} takes no configuration, not {sorted(config)}")
        return cls()

    @property
    def context(self) -> BlockContext:
        """The context it was attached with."""
        if self._context is None:
            raise RuntimeError(f"{type(self).__name__} is not attached to an ARMOR")
        return self._context

    @property
    def idle(self) -> bool:
        return True

    def attach(self, context: BlockContext, now: float) -> None:
        self._context = context

    def process_message(self, message: Message, now: float) -> None:
        raise NotImplementedError(f"{type(self).__name__} handles no messages")


class OwnBlock(Block):
    """
    An ARMOR type's own block, whose logic is the ARMOR's: it tells its ARMOR it is
    attached (C{_attached(block, now)}), and hands it its tick (C{_tick(now)}) and every
    other message it is subscribed to (C{_handle(message, now)}).  It works only in an
    ARMOR of C{armor_type}.
    """

    armor_type: ClassVar[type[Any]] = object

    def attach(self, context: Any, now: float) -> None:
        armor = context.armor
        if not isinstance(armor, self.armor_type):
            raise TypeError(
                f"a {type(self).__name__} block works in a {self.armor_type.__name__} only"
            )
        super().attach(context, now)
        armor._attached(self, now)

    def process_message(self, message: Message, now: float) -> None:
        armor: Any = self.context.armor
        if message.type == TIMER:
            armor._tick(now)
        else:
            armor._handle(message, now)


class MessageDispatch(Block):
    """
    Hands every incoming message to each block subscribed to its type, in the order
    they subscribed, through the CompositionController (C{deliver}).  A type nobody
    subscribed to is dropped and counted, by type in L{dropped} and in all as the
    ARMOR's C{messages.unsubscribed}.

    It takes L{SUBSCRIBE} and L{UNSUBSCRIBE} messages itself, from its own ARMOR only.

    @ivar dropped: the messages dropped for want of a subscriber, by type.
    """

    def __init__(
        self,
        deliver: Callable[[str, Message, float], None],
        has_slot: Callable[[str], bool],
        counters: Counter[str],
    ) -> None:
        super().__init__()
        self._deliver = deliver
        self._has_slot = has_slot
        self._counters = counters
        self._subscribers: dict[str, list[str]] = {}
        self.dropped: Counter[str] = Counter()

    def subscribers(self, type: str) -> list[str]:
        """The slots subscribed to messages of C{type}, in the order they are served."""
        return list(self._subscribers.get(type, ()))

    def subscriptions_of(self, slot: str) -> frozenset[str]:
        """The message types the block in C{slot} is subscribed to."""
        return frozenset(t for t, slots in self._subscribers.items() if slot in slots)

    def subscribe(self, slot: str, type: str) -> None:
        """Hand messages of C{type} to C{slot} too (once, however often it asks)."""
        slots = self._subscribers.setdefault(type, [])
        if slot not in slots:
            slots.append(slot)

    def unsubscribe(self, slot: str, type: str) -> None:
        """Stop handing messages of C{type} to C{slot}."""
        slots = self._subscribers.get(type)
        if slots is not None and slot in slots:
            slots.remove(slot)
            if not slots:
                del self._subscribers[type]

    def resubscribe(self, slot: str, types: frozenset[str]) -> None:
        """
        Make C{types} the subscriptions of C{slot} (a block put in or replaced): a type
        kept keeps its place among the subscribers, a new one goes last.
        """
        for type in self.subscriptions_of(slot) - types:
            self.unsubscribe(slot, type)
        for type in sorted(types):
            self.subscribe(slot, type)

    def process_message(self, message: Message, now: float) -> None:
        if message.type in (SUBSCRIBE, UNSUBSCRIBE):
            if not message.local:
                raise MessageError(f"{message.source} may not change this ARMOR's subscriptions")
            request = Subscription.from_message(message)
            if not self._has_slot(request.slot):
                raise MessageError(f"no block in slot {request.slot!r} to subscribe")
            if message.type == SUBSCRIBE:
                self.subscribe(request.slot, request.type)
            else:
                self.unsubscribe(request.slot, request.type)
            return
        slots = self._subscribers.get(message.type)
        if not slots:
            self.dropped[message.type] += 1
            self._counters["messages.unsubscribed"] += 1
            return
        for slot in list(slots):
            self._deliver(slot, message, now)


class MessageSend(Block):
    """
    Routes a message its ARMOR sends: one for the ARMOR itself goes back to its own
    dispatch (C{loopback}, counted as C{messages.local}); any other goes out to the
    daemon (C{out}: the ARMOR emits it as a L{Send<lips.kernel.Send>} effect, counted
    as C{messages.sent}).
    """

    def __init__(
        self,
        own: ArmorId,
        loopback: Callable[[Message], None],
        out: Callable[[Message], None],
        counters: Counter[str],
    ) -> None:
        super().__init__()
        self._own = own
        self._loopback = loopback
        self._out = out
        self._counters = counters

    def process_message(self, message: Message, now: float) -> None:
        if message.source != self._own:
            raise ValueError(f"{self._own} does not send messages of {message.source}: {message}")
        if message.destination == self._own:
            self._counters["messages.local"] += 1
            self._loopback(message)
        else:
            self._counters["messages.sent"] += 1
            self._out(message)
