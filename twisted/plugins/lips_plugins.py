"""
twistd plugins of LiPS: each names a role; its tap module is imported only when used.
"""

from twisted.application.service import ServiceMaker

lipsMsgServer = ServiceMaker(
    "LiPS MessageServer", "lips.tap.msgserver", "An application's tuple space.", "lips-msgserver"
)
lipsFixServer = ServiceMaker(
    "LiPS FixServer", "lips.tap.fixserver", "The System Tuple Space.", "lips-fixserver"
)
lipsNode = ServiceMaker(
    "LiPS node daemon",
    "lips.tap.node",
    "lipsd: node state, watchdog, eval'd processes, failover.",
    "lips-node",
)
lipsFtm = ServiceMaker(
    "LiPS Fault Tolerance Manager",
    "lips.tap.ftm",
    "Chameleon's FTM: runs applications under their strategies (or stands by as a backup).",
    "lips-ftm",
)
