"""
The supervisor: the sans-IO core that starts processes, restarts them with back-off and
fails them past a threshold (a core of L{lips.kernel}).  lipsd runs it for eval'd
processes (L{lips.node.ProcessService}), the Execution ARMOR for its task
(L{lips.armor.execution}); it lives below both.
"""

from lips.supervisor._supervisor import (
    FAILED_TAG,
    Exit,
    Outcome,
    ProcessFailed,
    ProcessFinished,
    ProcessSpec,
    ProcessState,
    RestartPolicy,
    Supervised,
    Supervisor,
    SupervisorTimer,
    check_target,
    load_target,
)

__all__ = [
    "FAILED_TAG",
    "Exit",
    "Outcome",
    "ProcessFailed",
    "ProcessFinished",
    "ProcessSpec",
    "ProcessState",
    "RestartPolicy",
    "Supervised",
    "Supervisor",
    "SupervisorTimer",
    "check_target",
    "load_target",
]
