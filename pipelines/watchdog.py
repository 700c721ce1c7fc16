"""A guard that stops what a run started when the run dies, even by SIGKILL (Linux).

A killed `vaeaug run` (`kill -9`, the OOM killer) runs no exit handler, and two kinds of process
outlive it:

- Prefect's temporary server, a plain subprocess with nothing tying it to us. Linux's
  `PR_SET_PDEATHSIG` cannot be used for it: the signal fires when the *thread* that started the child
  ends, and the server is started from a start-up thread that ends at once.
- Ray's agents (dashboard agent, runtime-env agent) and, for a few seconds, its workers. Ray's kernel
  fate-sharing (`PR_SET_PDEATHSIG` on what `ray.init` starts: GCS, raylet, dashboard, monitors) kills
  the raylet; the agents, which the raylet starts, see it die, then hang reporting that to the dead
  GCS (still there 15 min later), and ignore SIGTERM meanwhile.

`start_watchdog()` starts a small guard process (in its own session, so that a Ctrl-C on the terminal
does not stop it) reading a pipe whose other end only this process holds: however this process ends,
the kernel closes that end. Meanwhile the guard records, twice a second, the processes below this one
(pid and start time, so a reused pid is never mistaken for one of ours); once this process has ended
it stops those still running, re-parented to init by then, together with any process still carrying
this run's mark (`VAEAUG_RUN_MARK`, put in this process's environment for every later child to
inherit), which catches a process started after the last look: SIGTERM, then SIGKILL after `GRACE_S`.
Both, because neither suffices alone: the tree is gone once its root is, and a process that sets its
title (Ray's agents and workers: `ray::DashboardAgent`) overwrites the environment that /proc shows.
After a normal exit Ray and Prefect have stopped their processes already: the guard finds none left.
"""

from __future__ import annotations

import os
import secrets
import select
import signal
import subprocess
import sys
import threading
import time

from pipelines.procfs import pids, read_stat

#: The environment variable carrying a run's mark.
MARK_VAR = "VAEAUG_RUN_MARK"
#: Seconds between SIGTERM and SIGKILL (Ray's agents ignore SIGTERM; Prefect's server exits on it).
GRACE_S = 3.0
#: Seconds the guard keeps sweeping (a dying raylet may still be starting a worker).
SWEEP_FOR_S = 20.0
#: Seconds between two looks at the run's process tree (a look costs ~3 ms of CPU).
POLL_S = 0.5

_lock = threading.Lock()
_guard: subprocess.Popen[bytes] | None = None  # its stdin is the pipe: it must live as long as we do

#: A process as (pid, start time in clock ticks since boot): a reused pid has another start time.
Ident = tuple[int, int]


def start_watchdog() -> bool:
    """Mark this process's environment and start the guard, once per process (thread-safe).

    Call it before starting the processes to guard, so that they carry the mark.

    Returns:
        True when a guard is running for this process; False where it cannot (not Linux: no /proc).
    """
    global _guard
    if not sys.platform.startswith("linux"):
        return False
    with _lock:
        if _guard is not None:
            return True
        mark = f"{os.getpid()}.{secrets.token_hex(8)}"
        os.environ[MARK_VAR] = mark
        _guard = subprocess.Popen(
            [sys.executable, "-m", "pipelines.watchdog", str(os.getpid()), mark],
            stdin=subprocess.PIPE,  # its write end is not inheritable: only this process holds it
            stdout=subprocess.DEVNULL,  # nor our stdout: a reader of our output sees EOF when we end
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    return True


def process_table() -> dict[int, tuple[int, int]]:
    """Every process that is not a zombie: pid -> (parent pid, start time)."""
    table = {}
    for pid in pids():
        stat = read_stat(pid)
        if stat is not None and stat.state != "Z":  # None: gone meanwhile
            table[pid] = (stat.ppid, stat.start)
    return table


def descendants(table: dict[int, tuple[int, int]], roots: set[int]) -> set[Ident]:
    """The processes below `roots` in `table` (not the roots themselves)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, stack = set(), list(roots)
    while stack:
        for child in children.get(stack.pop(), []):
            found.add((child, table[child][1]))
            stack.append(child)
    return found


def marked_pids(mark: str) -> set[int]:
    """The processes whose environment, as /proc shows it, still carries `mark`.

    Args:
        mark: the run's mark (`VAEAUG_RUN_MARK`'s value).

    Returns:
        Their pids; processes this user cannot read are not among them.
    """
    needle = f"{MARK_VAR}={mark}".encode()
    found = set()
    for pid in pids():
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                entries = f.read().split(b"\0")
        except OSError:  # gone meanwhile, or another user's
            continue
        if needle in entries:
            found.add(pid)
    return found


def _targets(mark: str, known: set[Ident], skip: int) -> set[int]:
    """What is still running of `known` (and below it), and every process carrying `mark`."""
    table = process_table()
    running = {ident for ident in known if table.get(ident[0], (0, -1))[1] == ident[1]}
    running |= descendants(table, {pid for pid, _ in running})
    pids = {pid for pid, _ in running} | (marked_pids(mark) & table.keys())
    return pids - {skip}


def _signal_all(pids: set[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:  # gone already
            pass


def sweep(mark: str, known: set[Ident], skip: int) -> int:
    """Stop what is left of `known` and every process carrying `mark`: SIGTERM, SIGKILL after
    `GRACE_S`, again until none is left (or `SWEEP_FOR_S` has passed).

    Args:
        mark: the run's mark.
        known: processes recorded as the run's.
        skip: a pid to spare (the guard itself, which carries the mark and was in the run's tree).

    Returns:
        How many distinct processes were signalled.
    """
    signalled: set[int] = set()
    deadline = time.monotonic() + SWEEP_FOR_S
    while (pids := _targets(mark, known, skip)) and time.monotonic() < deadline:
        signalled |= pids
        _signal_all(pids, signal.SIGTERM)
        grace_end = time.monotonic() + GRACE_S
        while (left := pids & _targets(mark, known, skip)) and time.monotonic() < grace_end:
            time.sleep(0.1)
        _signal_all(left, signal.SIGKILL)
        time.sleep(0.2)  # let the kernel tear them down before looking again
    return len(signalled)


def watch(parent: int) -> set[Ident]:
    """Record the processes below `parent` until it ends; returns all of them seen alive.

    It has ended on EOF on stdin (the pipe) or once this process is re-parented; the second test
    covers a child that `parent` forked without exec, which holds the pipe's write end too.
    """
    fd = sys.stdin.fileno()
    known: set[Ident] = set()
    while os.getppid() == parent:
        table = process_table()
        known = {i for i in known if table.get(i[0], (0, -1))[1] == i[1]}  # drop the ended ones
        known |= descendants(table, {parent})
        ready, _, _ = select.select([fd], [], [], POLL_S)
        if ready and not os.read(fd, 4096):
            break
    return known


def main(argv: list[str]) -> int:
    """`python -m pipelines.watchdog PARENT_PID MARK`: watch the parent, then sweep what it left."""
    parent, mark = int(argv[0]), argv[1]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only the parent's end stops the guard
    known = watch(parent)
    sweep(mark, known, skip=os.getpid())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


__all__ = ["GRACE_S", "MARK_VAR", "marked_pids", "process_table", "start_watchdog", "sweep"]
