"""
lipsd, the node daemon: node state in the System Tuple Space, the watchdog, and the
processes it runs for C{eval} (placed by L{eval_request}, restarted by L{Supervisor}).

L{NodeMonitor} numbers the node's reports and applies the L{IdlePolicy}; L{Watchdog}
says which watched nodes fell silent; L{NodeService} runs both against the FixServers.
L{Supervisor} and L{Watchdog} are cores of L{lips.kernel} (inputs taking C{now},
effects out), run by L{ProcessService} and L{NodeService} through a
L{lips.kernel.Driver}.
The tuples are described in C{docs/node.md}.
"""

from lips.node._eval import (
    EVAL_TAG,
    PROCESS_TAG,
    Chooser,
    EvalRequest,
    NodeReport,
    NoNodeAvailable,
    Placed,
    decode_args,
    eval_request,
    eval_template,
    failed_template,
    least_loaded,
    new_pid,
    process_template,
)
from lips.node._lipsd import (
    NodeService,
    Processes,
    SystemSpace,
    declare_down,
    poll,
    publish,
)
from lips.node._process import (
    IChild,
    ISpawner,
    ProcessService,
    ReactorSpawner,
    child_input,
    say_goodbye,
)
from lips.node._sampler import PsutilSampler
from lips.node._sections import (
    Adopt,
    Move,
    RecoverableSpace,
    Replaced,
    choose_target,
    lipsd_pid,
    replace_processes,
)
from lips.node._state import (
    DOWN_TAG,
    STATE_TAG,
    UP_TAG,
    IdlePolicy,
    ISampler,
    NodeMonitor,
    NodeState,
    Sample,
    down_template,
    state_template,
    up_template,
)
from lips.node._supervisor import (
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
)
from lips.node._watchdog import Suspect, Watchdog

__all__ = [
    "DOWN_TAG",
    "EVAL_TAG",
    "FAILED_TAG",
    "PROCESS_TAG",
    "Adopt",
    "Chooser",
    "EvalRequest",
    "Exit",
    "IChild",
    "Move",
    "ISpawner",
    "NoNodeAvailable",
    "NodeReport",
    "Outcome",
    "Placed",
    "Processes",
    "ProcessFailed",
    "ProcessFinished",
    "ProcessService",
    "ProcessSpec",
    "ProcessState",
    "ReactorSpawner",
    "RecoverableSpace",
    "Replaced",
    "RestartPolicy",
    "Supervised",
    "Supervisor",
    "SupervisorTimer",
    "check_target",
    "child_input",
    "choose_target",
    "decode_args",
    "eval_request",
    "eval_template",
    "failed_template",
    "least_loaded",
    "lipsd_pid",
    "new_pid",
    "process_template",
    "replace_processes",
    "say_goodbye",
    "STATE_TAG",
    "UP_TAG",
    "ISampler",
    "IdlePolicy",
    "NodeMonitor",
    "NodeService",
    "NodeState",
    "PsutilSampler",
    "Sample",
    "Suspect",
    "SystemSpace",
    "Watchdog",
    "declare_down",
    "down_template",
    "poll",
    "publish",
    "state_template",
    "up_template",
]
