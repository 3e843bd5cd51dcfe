"""Finding the ARMOR processes of a real lipsd, for tests and benchmarks."""

from __future__ import annotations

import psutil

from lips.armor.process import ID_VAR, TITLE_PREFIX

__all__ = ["armor_process"]


def armor_process(lipsd: int, armor: str) -> psutil.Process | None:
    """
    The process of ARMOR C{armor} among the descendants of lipsd's process C{lipsd}
    (spawned by it, or forked by its zygote), if one runs: found by its title
    (C{lips-armor ID#INCARNATION (TYPE)}) or, for one started without the title, by
    its environment.
    """
    try:
        descendants = psutil.Process(lipsd).children(recursive=True)
    except psutil.Error:
        return None
    by_environment = None
    for child in descendants:
        try:
            # psutil splits a title set by setproctitle at its spaces, or does not.
            words = " ".join(child.cmdline())
            if words.startswith(f"{TITLE_PREFIX} {armor}#"):
                return child
            # A task child inherits its ARMOR process's environment: not it.
            if "lips.armor.task" not in words and child.environ().get(ID_VAR) == armor:
                by_environment = by_environment or child
        except psutil.Error:
            continue
    return by_environment
