"""
The Checkpoint ARMOR's service (the paper's section 4.2.3, Fig. 3): C{take_checkpoint()}
and C{recover()} for tasks, stored in the application's tuple space.

The service is a block, L{CheckpointService} (block type C{checkpoint}).  An Execution
ARMOR whose task checkpoints has one in its C{checkpoint} slot and hands it its task's
calls as messages to itself; a L{CheckpointArmor} (ARMOR type C{checkpoint}) is one on
its own, serving any ARMOR that sends it the same messages.  Either way it answers the
sender:

  - L{TAKE_CHECKPOINT} (L{TakeCheckpoint}: application, task, sequence number, state)
    replaces the task's checkpoint, in one request to C{space.<application>}
    (L{lips.armor.space}): C{delete} of the old one and C{out} of
    C{("checkpoint", application, task, seq, state)}.  Answer: L{CHECKPOINT_TAKEN}.
  - L{RECOVER} (L{RecoverCheckpoint}: application, task) reads it back.  Answer:
    L{RECOVERED} (L{Recovered}: its state and sequence number, or none).

The state is the task's own bytes; the space keeps exactly one checkpoint per task, so a
restarted task (on this node or another) resumes from the last one taken.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Final, Self

import attrs

from lips.armor._armor import Armor
from lips.armor._blocks import Block
from lips.armor._factory import BlockFactory
from lips.armor._messages import Body, Message
from lips.armor._names import MessageError, check_label
from lips.armor.space import SPACE_REPLY, SpaceCalls, SpaceOp, SpaceReply, space_id
from lips.tuples import ANY
from lips.validate import at_least

__all__ = [
    "CHECKPOINT_TAG",
    "CHECKPOINT_TAKEN",
    "RECOVER",
    "RECOVERED",
    "TAKE_CHECKPOINT",
    "CheckpointArmor",
    "CheckpointService",
    "CheckpointTaken",
    "RecoverCheckpoint",
    "Recovered",
    "TakeCheckpoint",
]

#: Store this checkpoint (L{TakeCheckpoint}).
TAKE_CHECKPOINT: Final = "take-checkpoint"
#: It is stored, or not (L{CheckpointTaken}).
CHECKPOINT_TAKEN: Final = "checkpoint-taken"
#: Read the last checkpoint back (L{RecoverCheckpoint}).
RECOVER: Final = "recover"
#: The last checkpoint, if any (L{Recovered}).
RECOVERED: Final = "recovered"
#: The first field of a checkpoint tuple.
CHECKPOINT_TAG: Final = "checkpoint"


def _label(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    check_label(value, attribute.name)


def _bytes(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if type(value) is not bytes:
        raise MessageError(f"{attribute.name} is bytes, not {type(value).__name__}")


@attrs.frozen
class TakeCheckpoint(Body):
    """Store C{state} as checkpoint C{seq} of C{task} of C{application}."""

    message_types: ClassVar[frozenset[str]] = frozenset({TAKE_CHECKPOINT})

    application: str = attrs.field(validator=_label)
    task: str = attrs.field(validator=_label)
    seq: int = attrs.field(validator=at_least(1))
    state: bytes = attrs.field(validator=_bytes)


@attrs.frozen
class CheckpointTaken(Body):
    """Checkpoint C{seq} of C{task} is stored (C{ok}), or could not be."""

    message_types: ClassVar[frozenset[str]] = frozenset({CHECKPOINT_TAKEN})

    task: str = attrs.field(validator=_label)
    seq: int = attrs.field(validator=at_least(1))
    ok: bool = True


@attrs.frozen
class RecoverCheckpoint(Body):
    """Read back the last checkpoint of C{task} of C{application}."""

    message_types: ClassVar[frozenset[str]] = frozenset({RECOVER})

    application: str = attrs.field(validator=_label)
    task: str = attrs.field(validator=_label)


@attrs.frozen
class Recovered(Body):
    """C{task}'s last checkpoint: C{state} as checkpoint C{seq}, or none (C{seq} 0)."""

    message_types: ClassVar[frozenset[str]] = frozenset({RECOVERED})

    task: str = attrs.field(validator=_label)
    seq: int = attrs.field(default=0, validator=at_least(0))
    state: bytes | None = None


class CheckpointService(Block):
    """The checkpoint service (see the module docstring); takes no configuration."""

    subscriptions = frozenset({TAKE_CHECKPOINT, RECOVER, SPACE_REPLY})

    def __init__(self) -> None:
        super().__init__()
        self.space: SpaceCalls | None = None
        self.taken = 0
        self.recovered = 0

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> Self:
        if config:
            raise MessageError(f"{cls.__name__} takes no configuration, not {sorted(config)}")
        return cls()

    @property
    def idle(self) -> bool:
        return self.space is None or not len(self.space)

    def attach(self, context: Any, now: float) -> None:
        super().attach(context, now)
        self.space = SpaceCalls(context.send)

    def process_message(self, message: Message, now: float) -> None:
        assert self.space is not None
        if message.type == SPACE_REPLY:
            self.space.answer(message, now)
            return
        requester = message.source
        if message.type == TAKE_CHECKPOINT:
            take = TakeCheckpoint.from_message(message)
            ops = [
                SpaceOp.template("delete", CHECKPOINT_TAG, take.application, take.task, ANY, ANY),
                SpaceOp.out(CHECKPOINT_TAG, take.application, take.task, take.seq, take.state),
            ]

            def stored(reply: SpaceReply, now: float) -> None:
                self.taken += reply.ok
                self.context.send(
                    CHECKPOINT_TAKEN, requester, CheckpointTaken(take.task, take.seq, reply.ok)
                )

            self.space.call(space_id(take.application), ops, stored)
        elif message.type == RECOVER:
            ask = RecoverCheckpoint.from_message(message)
            ops = [SpaceOp.template("scan", CHECKPOINT_TAG, ask.application, ask.task, ANY, ANY)]

            def read(reply: SpaceReply, now: float) -> None:
                found = reply.values[0] if reply.ok else ()
                if found:
                    last = max(found, key=lambda t: t[3])
                    answer = Recovered(ask.task, last[3], last[4])
                else:
                    answer = Recovered(ask.task)
                self.recovered += 1
                self.context.send(RECOVERED, requester, answer)

            self.space.call(space_id(ask.application), ops, read)


class CheckpointArmor(Armor):
    """A Checkpoint ARMOR on its own: the service, for any ARMOR that asks."""

    type_name = "checkpoint"
    default_blocks = {**Armor.default_blocks, "checkpoint": "checkpoint"}

    def __init__(
        self,
        id: str,
        manager: str | None,
        *,
        node: str | None = None,
        incarnation: int = 1,
        blocks: BlockFactory | None = None,
        composition: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(id, manager, blocks=blocks, composition=composition)
        self.node = node
        self.incarnation = incarnation

    @classmethod
    def options(cls, config: dict[str, object]) -> dict[str, Any]:
        from lips.armor.ftm import placed_options

        kwargs = super().options(config)
        kwargs.update(placed_options(config))
        return kwargs
