"""
The submitter: the ARMOR that hands one application to the FTM and waits for how it
ended (C{lips submit}'s; the paper's "user" in section 4.1.1).  Sans-IO: its process
attaches itself to a node's daemon (L{lips.armor.AttachHello}), as C{submit.<name>}.

Its one block, L{SubmitBlock}, finds the FTM (the epoch tuple in the System Tuple
Space, read with a L{SPACE_REQUEST<lips.armor.space.SPACE_REQUEST>}), sends it
L{SUBMIT<lips.armor.ftm.SUBMIT>} and sends it again every C{retry} seconds, each time to
the FTM the space then names, until the FTM answers: L{JOB_ACCEPTED} (the job runs; it
keeps waiting), L{JOB_REFUSED} (the end: the refusal is delivered), or L{JOB_RESULT} (the
end: it acknowledges with L{JOB_RESULT_ACK}, and acknowledges again each result the FTM
sends again, as the FTM sends it until acknowledged).  The FTM's messages come fenced
(L{lips.armor.ftm.FENCED}); an older epoch's are refused, so a fenced FTM cannot answer
for its successor.  A submitter that was accepted keeps re-sending L{SUBMIT} too (every
C{retry}, to whichever FTM holds the epoch): the FTM answers a repeated submission of a
job it knows with its state, and its result once there is one, so a result lost with a
failed FTM is asked for again of the next.

Inputs: L{Armor}'s (C{start}, C{receive}, C{timer}).  Effects: L{Send}, L{StartTimer},
L{CancelTimer}, L{Log}, and L{Deliver} of a L{Submission}: once with C{accepted} (the
strategy), and once at the end with C{refused} or C{result}.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Final

import attrs
from twisted.logger import LogLevel

from lips.armor._armor import Armor
from lips.armor._blocks import Block
from lips.armor._factory import BlockFactory
from lips.armor._messages import TIMER, Message, plain_map
from lips.armor._names import MessageError, armor_id, check_label
from lips.armor.ftm import (
    EPOCH_TAG,
    JOB_ACCEPTED,
    JOB_REFUSED,
    JOB_RESULT,
    JOB_RESULT_ACK,
    SUBMIT,
    SUBMITTER_KIND,
    EpochFence,
    JobAccepted,
    JobRef,
    JobRefused,
    JobResult,
    Submit,
    admit_fenced,
    current_ftm,
)
from lips.armor.space import SPACE_REPLY, SYSTEM_SPACE, SpaceCalls, SpaceOp, SpaceReply
from lips.kernel import CancelTimer, Deliver, Effect, Log, Send, StartTimer
from lips.tuples import ANY

__all__ = ["SUBMITTER_TYPE", "SubmitBlock", "Submission", "SubmitterArmor", "submitter_id"]

#: The type of a submitter ARMOR.
SUBMITTER_TYPE: Final = "submitter"

_RETRY: Final = "retry"


def submitter_id(label: str) -> str:
    """A submitter's id: C{submit.<label>} (C{label}: a host and process, C{n1-4711})."""
    return armor_id(f"{SUBMITTER_KIND}.{check_label(label, 'a submitter label')}")


@attrs.frozen
class Submission:
    """
    What became of the submission of application C{name}: C{accepted} names its
    strategy (it runs); C{refused} says why the FTM refused it; C{result} is how it
    ended (a L{JobResult}).  Exactly one of them is set.
    """

    name: str
    accepted: str | None = None
    refused: str | None = None
    result: JobResult | None = None
    ftm: str = ""

    @property
    def final(self) -> bool:
        """Whether it is the end (a refusal or a result)."""
        return self.accepted is None


class SubmitBlock(Block):
    """The submitter's work (see the module docstring)."""

    subscriptions = frozenset({JOB_ACCEPTED, JOB_REFUSED, JOB_RESULT, SPACE_REPLY})

    def __init__(self) -> None:
        super().__init__()
        self.accepted: str | None = None
        self.done = False
        self.sent = 0
        self._finding = False
        self._calls: SpaceCalls | None = None

    def attach(self, context: Any, now: float) -> None:
        if not isinstance(context.armor, SubmitterArmor):
            raise TypeError("a submit block works in a submitter ARMOR only")
        super().attach(context, now)
        self._calls = SpaceCalls(context.send)
        self._submit(now)

    @property
    def armor(self) -> SubmitterArmor:
        armor = self.context.armor
        assert isinstance(armor, SubmitterArmor)
        return armor

    def process_message(self, message: Message, now: float) -> None:
        armor = self.armor
        if message.type == TIMER:
            if not self.done:
                self._submit(now)
            return
        if message.type == SPACE_REPLY:
            assert self._calls is not None
            self._calls.answer(message, now)
            return
        if message.type == JOB_RESULT:
            result = JobResult.from_message(message)
            if result.name != armor.name:
                return
            self.context.send(JOB_RESULT_ACK, message.source, JobRef(result.name))
            if not self.done:
                self._end(Submission(armor.name, result=result, ftm=message.source))
        elif message.type == JOB_REFUSED:
            refused = JobRefused.from_message(message)
            if refused.name == armor.name and not self.done:
                self._end(Submission(armor.name, refused=refused.reason, ftm=message.source))
        elif message.type == JOB_ACCEPTED:
            accepted = JobAccepted.from_message(message)
            if accepted.name == armor.name and self.accepted is None and not self.done:
                self.accepted = accepted.strategy
                armor.delivered(Submission(armor.name, accepted.strategy, ftm=message.source))

    def _end(self, submission: Submission) -> None:
        self.done = True
        self.context.cancel_timer(_RETRY)
        self.armor.delivered(submission)

    def _submit(self, now: float) -> None:
        """Find the FTM, send it the job; again after C{retry}."""
        self.context.start_timer(_RETRY, now + self.armor.retry)
        assert self._calls is not None
        if self._finding:  # unanswered (its daemon lost it, say): ask again
            self._calls.forget()
        self._finding = True
        self._calls.call(SYSTEM_SPACE, [SpaceOp.template("rdp", EPOCH_TAG, ANY, ANY)], self._found)

    def _found(self, reply: SpaceReply, now: float) -> None:
        self._finding = False
        if self.done:
            return
        holder = current_ftm([reply.values[0]]) if reply.ok else None
        if holder is None:
            self.context.log(LogLevel.info, "no FTM holds an epoch yet")
            return
        armor = self.armor
        self.sent += 1
        self.context.send(SUBMIT, holder[1], Submit(armor.name, armor.job))


class SubmitterArmor(Armor):
    """
    A submitter of application C{name}, to run C{job} (a L{lips.strategy.Job}'s plain
    map, checked by the FTM).

    @param retry: seconds between submissions until the FTM answers for good.
    """

    type_name = SUBMITTER_TYPE
    needs_manager = False  # its user is its manager
    default_blocks = {**Armor.default_blocks, "submit": "submit"}
    emits: ClassVar[frozenset[type[Effect]]] = frozenset(
        {Send, StartTimer, CancelTimer, Log, Deliver}
    )

    def __init__(
        self,
        id: str,
        manager: str | None = None,
        *,
        name: str,
        job: Mapping[str, Any],
        retry: float = 1.0,
        blocks: BlockFactory | None = None,
        composition: Mapping[str, str] | None = None,
    ) -> None:
        self.name = check_label(name, "an application name")
        self.job = plain_map(dict(job))
        if isinstance(retry, bool) or not isinstance(retry, int | float) or not retry > 0:
            raise MessageError(f"retry is a positive number of seconds, not {retry!r}")
        self.retry = float(retry)
        self.fence = EpochFence()
        super().__init__(id, manager, blocks=blocks, composition=composition)

    @classmethod
    def options(cls, config: dict[str, object]) -> dict[str, Any]:
        """Besides C{blocks}: C{name}, C{job} (a map), C{retry}."""
        kwargs = super().options(config)
        for key in ("name", "job", "retry"):
            if key in config:
                kwargs[key] = config.pop(key)
        return kwargs

    def receive(self, message: Message, now: float) -> None:
        inner = admit_fenced(self, self.fence, message)
        if inner is not None:
            super().receive(inner, now)

    def delivered(self, submission: Submission) -> None:
        """Hand C{submission} to the host."""
        self._outbox.deliver(submission)
