"""
The ARMOR and block types of LiPS, for the factories of L{lips.armor}: each names its
type and what makes one, imported only when one is made.  Another package registers
its own types the same way, in a C{twisted/plugins} module of its own.
"""

from lips.armor import ArmorType, BlockType

# -- ARMOR types ----------------------------------------------------------------------------

lipsFtm = ArmorType(
    "ftm",
    "lips.armor:FaultToleranceManager.from_config",
    "The Fault Tolerance Manager (the manager base only, for now).",
)
lipsSurrogateManager = ArmorType(
    "surrogate-manager",
    "lips.armor:SurrogateManager.from_config",
    "Runs one application under its strategy (the manager base only, for now).",
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
