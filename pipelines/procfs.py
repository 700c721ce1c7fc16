"""Process facts read from Linux's /proc: the one parser of /proc/<pid>/stat.

The lease (`pipelines.generate.lease`) tells a live holder from a reused pid by its start time; the
watchdog (`pipelines.watchdog`) walks the process tree by parent pid. Elsewhere than Linux there is
no /proc: every read gives None or nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class ProcStat:
    """What /proc/<pid>/stat says of a process.

    Attributes:
        state: one letter: "R" running, "S" sleeping, "Z" zombie (exited, not yet reaped)...
        ppid: its parent's pid.
        start: its start time in clock ticks since boot (a reused pid has another one).
    """

    state: str
    ppid: int
    start: int


def read_stat(pid: int) -> ProcStat | None:
    """/proc/<pid>/stat of `pid`, or None when it is gone (or there is no /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # "pid (comm) state ppid ... starttime ...": the command name may hold spaces and ")",
            # so the fields are counted after its last ")"; starttime is the 20th after the name.
            fields = f.read().rsplit(b")", 1)[1].split()
        return ProcStat(fields[0].decode(), int(fields[1]), int(fields[19]))
    except (OSError, IndexError, ValueError):
        return None


def pids() -> list[int]:
    """Every process id /proc lists now (none without /proc)."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    return [int(name) for name in names if name.isdigit()]


__all__ = ["ProcStat", "pids", "read_stat"]
