"""
The Initialization ARMOR (the paper's section 4.2.5): surveys a node that joins (OS,
hardware, CPUs, memory) into the FTM's host table.

The survey itself is data the host feeds in (L{InitializationArmor.surveyed}): the
process that runs the ARMOR reads the machine (L{local_survey}, with C{platform} and
C{psutil}) and hands the result over, so the ARMOR stays sans-IO and a simulator feeds
a made-up one.  The ARMOR sends it to its manager (the FTM) as a L{SURVEY}, again every
C{retry} seconds until the FTM answers L{SURVEY_ACK}; the FTM then uninstalls it.  The
FTM's messages reach it in the FTM's epoch (L{lips.armor.ftm.EpochFence}).

Inputs: L{Armor}'s and L{InitializationArmor.surveyed}C{(survey, now)}.  Effects:
L{Send} (the survey), L{StartTimer}/L{CancelTimer} (its block's C{retry}), L{Log}.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from lips.armor._armor import Armor
from lips.armor._blocks import Block
from lips.armor._factory import BlockFactory
from lips.armor._messages import TIMER, Message, seconds
from lips.armor.ftm import (
    SURVEY,
    SURVEY_ACK,
    EpochFence,
    NodeRef,
    Survey,
    admit_fenced,
    fenced_options,
)

__all__ = ["InitializationArmor", "NodeSurvey", "local_survey"]

_RETRY: Final = "retry"


def local_survey(node: str) -> Survey:
    """This machine's survey, as node C{node} (for the host of an Initialization ARMOR)."""
    import os
    import platform

    import psutil

    return Survey(
        node,
        f"{platform.system()} {platform.release()}"[:1000],
        platform.machine()[:1000],
        os.cpu_count() or 0,
        int(psutil.virtual_memory().total),
    )


class NodeSurvey(Block):
    """Sends its ARMOR's survey to the FTM until acknowledged (type C{initialization})."""

    subscriptions = frozenset({SURVEY_ACK})

    def __init__(self) -> None:
        super().__init__()
        self.survey: Survey | None = None
        self.acknowledged = False

    def attach(self, context: Any, now: float) -> None:
        if not isinstance(context.armor, InitializationArmor):
            raise TypeError("a node survey block works in an Initialization ARMOR only")
        super().attach(context, now)

    def surveyed(self, survey: Survey, now: float) -> None:
        self.survey = survey
        self._send(now)

    def _send(self, now: float) -> None:
        armor = self.context.armor
        if self.survey is None or self.acknowledged or armor.manager is None:
            return
        assert isinstance(armor, InitializationArmor)
        self.context.send(SURVEY, armor.manager, self.survey)
        self.context.start_timer(_RETRY, now + armor.retry)

    def process_message(self, message: Message, now: float) -> None:
        if message.type == TIMER:
            self._send(now)
        elif (
            message.type == SURVEY_ACK
            and message.source == self.context.armor.manager
            and self.survey is not None
            and NodeRef.from_message(message).node == self.survey.node
        ):
            self.acknowledged = True
            self.context.cancel_timer(_RETRY)


class InitializationArmor(Armor):
    """The Initialization ARMOR of one node (see the module docstring)."""

    type_name = "initialization"
    default_blocks = {**Armor.default_blocks, "survey": "initialization"}

    def __init__(
        self,
        id: str,
        manager: str | None,
        *,
        retry: float = 0.5,
        epoch: int = 0,
        node: str | None = None,
        incarnation: int = 1,
        blocks: BlockFactory | None = None,
        composition: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(id, manager, blocks=blocks, composition=composition)
        self.retry = retry
        self.node = node
        self.incarnation = incarnation
        self.fence = EpochFence(epoch, self.manager)

    @classmethod
    def options(cls, config: dict[str, object]) -> dict[str, Any]:
        """Besides C{blocks}: C{retry}, C{node}, C{incarnation}."""
        kwargs = super().options(config)
        kwargs.update(fenced_options(config))
        if "retry" in config:
            kwargs["retry"] = seconds(config.pop("retry"), "retry")
        return kwargs

    @property
    def acknowledged(self) -> bool:
        """Whether the FTM has the survey."""
        block = self.block("survey")
        return isinstance(block, NodeSurvey) and block.acknowledged

    def surveyed(self, survey: Survey, now: float) -> None:
        """
        The host's survey of the node: send it to the FTM.

        @raise TypeError: if C{survey} is not a L{Survey}.
        """
        if not isinstance(survey, Survey):
            raise TypeError(f"not a Survey: {survey!r}")
        with self._input(now):
            block = self.block("survey")
            if isinstance(block, NodeSurvey):
                block.surveyed(survey, now)

    def receive(self, message: Message, now: float) -> None:
        inner = admit_fenced(self, self.fence, message)
        if inner is not None:
            super().receive(inner, now)
