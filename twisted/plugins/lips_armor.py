"""
The ARMOR types, block types and execution strategies of LiPS, for the factories of
L{lips.armor} and L{lips.strategy}: each names its type and what makes one, imported
only when one is made.  Another package registers its own types the same way, in a
C{twisted/plugins} module of its own.
"""

from lips.armor import ArmorType, BlockType
from lips.strategy import Provides, StrategyType

# -- ARMOR types ----------------------------------------------------------------------------

lipsFtm = ArmorType(
    "ftm",
    "lips.armor.ftm:FTM.from_config",
    "The Fault Tolerance Manager, or (role backup) the Backup FTM.",
)
lipsSurrogateManager = ArmorType(
    "surrogate-manager",
    "lips.armor.surrogate:Surrogate.from_config",
    "Runs one application under its strategy.",
)
lipsExecution = ArmorType(
    "execution",
    "lips.armor.execution:Execution.from_config",
    "Runs one task as a child: restarts, livelock, checkpoints, escalation.",
)
lipsCheckpoint = ArmorType(
    "checkpoint",
    "lips.armor.checkpoint:CheckpointArmor.from_config",
    "take_checkpoint() and recover() for tasks, in the application's tuple space.",
)
lipsHeartbeat = ArmorType(
    "heartbeat",
    "lips.armor.heartbeat:HeartbeatArmor.from_config",
    "Heartbeats the daemons; one node-down verdict per node to the FTM.",
)
lipsInitialization = ArmorType(
    "initialization",
    "lips.armor.initialization:InitializationArmor.from_config",
    "Surveys a node into the FTM's host table.",
)
lipsSubmitter = ArmorType(
    "submitter",
    "lips.armor.submit:SubmitterArmor.from_config",
    "Hands one application to the FTM and waits for its result (lips submit's).",
)

# -- block types ----------------------------------------------------------------------------

lipsInstallation = BlockType(
    "installation",
    "lips.armor:Installation.from_config",
    "A manager's subordinate table kept up to date with its daemons' reports.",
)
lipsRecovery = BlockType(
    "recovery",
    "lips.armor:Recovery.from_config",
    "A manager's recovery: a dead subordinate is reinstalled where it was.",
)
lipsForwardRecovery = BlockType(
    "forward-recovery",
    "lips.armor:ForwardRecovery.from_config",
    "A manager's recovery that moves a dead subordinate to another node.",
)
lipsExecutionBlock = BlockType(
    "execution",
    "lips.armor.execution:TaskRunner.from_config",
    "The Execution ARMOR's own block.",
)
lipsCheckpointBlock = BlockType(
    "checkpoint",
    "lips.armor.checkpoint:CheckpointService.from_config",
    "The checkpoint service: a task's checkpoints in its application's tuple space.",
)
lipsHeartbeatBlock = BlockType(
    "heartbeat",
    "lips.armor.heartbeat:HeartbeatMonitor.from_config",
    "Heartbeats the watched nodes' daemons.",
)
lipsInitializationBlock = BlockType(
    "initialization",
    "lips.armor.initialization:NodeSurvey.from_config",
    "Sends the node's survey to the FTM until acknowledged.",
)
lipsSubmitBlock = BlockType(
    "submit",
    "lips.armor.submit:SubmitBlock.from_config",
    "Submits the application to the FTM the space names until it answers for good.",
)

# -- execution strategies -------------------------------------------------------------------

lipsSimplex = StrategyType(
    "simplex",
    "lips.strategy.simplex:Simplex",
    "Single-node execution: local restarts, then another node.",
    Provides(frozenset({"crash", "hang", "node"}), "none", 1, 1.0),
)
