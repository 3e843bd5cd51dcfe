"""
L{PsutilSampler}: the node's resources, read with psutil.
"""

from __future__ import annotations

import os

import psutil
from zope.interface import implementer

from lips.node._state import ISampler, Sample

__all__ = ["PsutilSampler"]


@implementer(ISampler)
class PsutilSampler:
    """
    Reads the one-minute load average, the CPU idle percentage since the previous
    reading, the memory available to new processes, and the number of processes
    descended from process C{pid} (lipsd itself by default: the processes it runs).
    """

    def __init__(self, pid: int | None = None) -> None:
        self._process = psutil.Process(os.getpid() if pid is None else pid)
        # The first reading of the CPU times only starts the measurement.
        psutil.cpu_times_percent(interval=None)

    def sample(self) -> Sample:
        load1 = psutil.getloadavg()[0]
        idle = float(psutil.cpu_times_percent(interval=None).idle)
        try:
            children = len(self._process.children(recursive=True))
        except psutil.Error:
            children = 0
        return Sample(
            load1=max(0.0, float(load1)),
            cpu_idle=min(100.0, max(0.0, idle)),
            free_memory=int(psutil.virtual_memory().available),
            processes=children,
        )
