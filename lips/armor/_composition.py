"""
The CompositionController: the block through which every block of an ARMOR is
reached, and the only one that changes what the ARMOR is made of.

Every C{process_message} call of every block is made by L{CompositionController.deliver}
(the ARMOR hands it each incoming message for the dispatch, the dispatch each message
for a subscriber, a block each message it sends for MessageSend).  So the controller
knows which blocks are busy: one is busy while a delivery to it is under way, and while
it says so itself (C{idle} false: in the middle of something that spans messages).

A L{COMPOSE} message (a L{Compose} body, from the ARMOR itself or its manager) asks it
to add a block in a free slot, or to remove or replace the block in a slot.  The new
block is made at once, by the ARMOR's block factory, so that an unknown type or a bad
configuration is refused at once.  A remove or a replace is carried out only while the
block in that slot is idle: requested while it is busy, it waits, and the controller
tries again after every delivery, until the block is idle.  Changes to one slot are
made in the order they were asked for.  The answer goes back to whoever asked, once the
change is made (L{COMPOSED}) or refused (L{COMPOSE_REFUSED}).

A replaced or removed block's timers are cancelled and its context closed (what it
still tries to do through it raises); the replacement takes its place among the
subscribers of the message types both subscribe to.  The controller itself, the
MessageDispatch and the MessageSend are the ARMOR's own: a change naming their slots
is refused (the paper makes only the controller unsubstitutable; the ARMOR's routing
depends on the other two as well, and a different routing makes a different ARMOR).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

import attrs
from twisted.logger import LogLevel

from lips.armor._blocks import DISPATCH, SEND, Block, IBlock
from lips.armor._bodies import Compose, ComposeOp, ComposeResult
from lips.armor._messages import COMPOSE, COMPOSE_REFUSED, COMPOSED, Message
from lips.armor._names import ArmorId, MessageError

if TYPE_CHECKING:
    from lips.armor._armor import Armor, BlockContext

__all__ = ["CONTROLLER", "RESERVED_SLOTS", "CompositionController", "PendingChange"]

#: The slot of every ARMOR's CompositionController.
CONTROLLER: Final = "controller"
#: The slots no change may name.
RESERVED_SLOTS: Final = frozenset({CONTROLLER, DISPATCH, SEND})


@attrs.define(eq=False)
class _Slot:
    name: str
    block: IBlock
    type: str
    context: BlockContext | None = None


@attrs.frozen(eq=False)
class PendingChange:
    """
    A change asked for and not made yet: C{op} on C{slot}, to a new block of type
    C{type} (for an add or a replace), asked for by message C{request} of C{requester}
    (None for the ARMOR's own construction).
    """

    op: ComposeOp
    slot: str
    type: str | None
    block: IBlock | None = attrs.field(repr=False)
    requester: ArmorId | None
    request: int | None


class CompositionController(Block):
    """
    The ARMOR's composition (see the module docstring).

    @ivar pending: the changes waiting for their block to be idle, in request order.
    """

    subscriptions = frozenset({COMPOSE})

    def __init__(self, armor: Armor, counters: Counter[str]) -> None:
        super().__init__()
        self._armor = armor
        self._counters = counters
        self._slots: dict[str, _Slot] = {}
        self._busy: Counter[str] = Counter()
        self._serials = itertools.count(1)
        self.pending: list[PendingChange] = []

    # -- queries --------------------------------------------------------------------------

    def slots(self) -> dict[str, str]:
        """The ARMOR's composition: each slot's block type, in the order put in."""
        return {name: slot.type for name, slot in self._slots.items()}

    def block(self, slot: str) -> IBlock:
        """
        The block in C{slot}.

        @raise KeyError: if the slot is empty.
        """
        return self._slots[slot].block

    def has_slot(self, slot: str) -> bool:
        """Whether a block is in C{slot}."""
        return slot in self._slots

    def context_of(self, slot: str) -> BlockContext | None:
        """The context of the block in C{slot}, once attached (None if it is empty)."""
        entry = self._slots.get(slot)
        return None if entry is None else entry.context

    def busy(self, slot: str) -> bool:
        """Whether the block in C{slot} is in a delivery now, or says it is not idle."""
        entry = self._slots[slot]
        return self._busy[slot] > 0 or not entry.block.idle

    # -- what the ARMOR calls -------------------------------------------------------------

    def put(self, slot: str, type: str, block: IBlock) -> None:
        """Put C{block} (of C{type}) in C{slot} as the ARMOR is built, before it starts."""
        if slot in self._slots:
            raise ValueError(f"slot {slot!r} is taken")
        if not IBlock.providedBy(block):
            raise TypeError(f"not an IBlock: {block!r}")
        self._slots[slot] = _Slot(slot, block, type)

    def attach_all(self, now: float) -> None:
        """Attach every block put in, in order (the ARMOR starts)."""
        for entry in list(self._slots.values()):
            self._attach(entry, now)
            self._armor.dispatch.resubscribe(entry.name, frozenset(entry.block.subscriptions))

    def deliver(self, slot: str, message: Message, now: float) -> None:
        """
        Hand C{message} to the block in C{slot}: the only way any block's
        C{process_message} is called.  A L{MessageError} it raises (a malformed body)
        is logged and counted as C{messages.refused}; anything else propagates.
        """
        entry = self._slots.get(slot)
        if entry is None or entry.context is None:
            self._counters["messages.no-block"] += 1
            return
        self._busy[slot] += 1
        try:
            entry.block.process_message(message, now)
        except MessageError as e:
            self._counters["messages.refused"] += 1
            self.context.log(
                LogLevel.warn,
                "Block {slot} refused {type} message {source}/{id}: {error}",
                slot=slot,
                type=message.type,
                source=message.source,
                id=message.id,
                error=str(e),
            )
        finally:
            self._busy[slot] -= 1
            if not self._busy[slot]:
                del self._busy[slot]

    def settle(self, now: float) -> None:
        """Make every pending change whose block is idle now (and any that follow it)."""
        progress = True
        while progress:
            progress = False
            for change in self._ready():
                self.pending.remove(change)
                self._apply(change, now)
                progress = True
                break

    # -- its own messages -----------------------------------------------------------------

    def process_message(self, message: Message, now: float) -> None:
        if message.type != COMPOSE:
            return
        armor = self._armor
        if message.source not in (armor.id, armor.manager):
            self._refuse(message, "", "only the ARMOR and its manager change its composition")
            return
        try:
            request = Compose.from_message(message)
        except MessageError as e:
            self._refuse(message, "", str(e))
            return
        if request.slot in RESERVED_SLOTS:
            self._refuse(message, request.slot, f"slot {request.slot!r} is the ARMOR's own")
            return
        block: IBlock | None = None
        if request.block is not None:
            try:
                block = armor.blocks.create(request.block, request.config)
            except Exception as e:
                self._refuse(message, request.slot, f"cannot make a {request.block!r} block: {e}")
                return
        change = PendingChange(
            request.op, request.slot, request.block, block, message.source, message.id
        )
        self.pending.append(change)
        self.settle(now)
        if any(c is change for c in self.pending):
            self._counters["compose.deferred"] += 1
            self.context.log(
                LogLevel.info,
                "{op} of block {slot} waits until it is idle",
                op=request.op.value,
                slot=request.slot,
            )

    # -- helpers --------------------------------------------------------------------------

    def _ready(self) -> Iterator[PendingChange]:
        """The pending changes that can be made now: the first of each slot, if idle."""
        seen: set[str] = set()
        for change in self.pending:
            if change.slot in seen:
                continue
            seen.add(change.slot)
            if (
                change.op is ComposeOp.ADD
                or change.slot not in self._slots
                or not self.busy(change.slot)
            ):
                yield change

    def _attach(self, entry: _Slot, now: float) -> None:
        from lips.armor._armor import BlockContext

        context = BlockContext(self._armor, entry.name, next(self._serials))
        try:
            entry.block.attach(context, now)
        except BaseException:
            context.close()
            raise
        entry.context = context

    def _apply(self, change: PendingChange, now: float) -> None:
        slot = change.slot
        old = self._slots.get(slot)
        if change.op is ComposeOp.ADD:
            if old is not None:
                self._answer(change, f"slot {slot!r} is taken (replace its block instead)")
                return
        elif old is None:
            self._answer(change, f"no block in slot {slot!r}")
            return
        if change.op is ComposeOp.REMOVE:
            assert old is not None
            self._close(old)
            del self._slots[slot]
            self._armor.dispatch.resubscribe(slot, frozenset())
            self._answer(change, None)
            return
        assert change.block is not None and change.type is not None
        new = _Slot(slot, change.block, change.type)
        try:
            self._attach(new, now)
        except Exception as e:
            self._answer(change, f"the {change.type!r} block refused this ARMOR: {e}")
            return
        if old is not None:
            self._close(old)
        self._slots[slot] = new  # a replacement keeps its slot's place
        self._armor.dispatch.resubscribe(slot, frozenset(new.block.subscriptions))
        self._answer(change, None)

    def _close(self, entry: _Slot) -> None:
        if entry.context is not None:
            entry.context.close()
            entry.context = None

    def _answer(self, change: PendingChange, refusal: str | None) -> None:
        if refusal is None:
            self._counters["compose.applied"] += 1
            self.context.log(
                LogLevel.info,
                "{op} of block {slot} ({type}) done",
                op=change.op.value,
                slot=change.slot,
                type=change.type,
            )
        else:
            self._counters["compose.refused"] += 1
            self.context.log(
                LogLevel.warn,
                "{op} of block {slot} refused: {reason}",
                op=change.op.value,
                slot=change.slot,
                reason=refusal,
            )
        if change.requester is None or change.request is None:
            return
        self.context.send(
            COMPOSED if refusal is None else COMPOSE_REFUSED,
            change.requester,
            ComposeResult(change.request, change.slot, refusal or ""),
        )

    def _refuse(self, message: Message, slot: str, reason: str) -> None:
        self._counters["compose.refused"] += 1
        self.context.log(
            LogLevel.warn,
            "Composition change {id} from {source} refused: {reason}",
            id=message.id,
            source=message.source,
            reason=reason,
        )
        self.context.send(COMPOSE_REFUSED, message.source, ComposeResult(message.id, slot, reason))
