"""The guard that stops what a run started once the run is gone (`pipelines.watchdog`), with real
processes: a run killed by SIGKILL, a child that ignores SIGTERM and carries no mark, a process
found by its mark alone, one that carries another mark, and a run that exits normally."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from pipelines.watchdog import MARK_VAR, marked_pids, sweep
from tests.pipelines.procfs import alive, descendants

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's /proc")

#: Sleeps, ignoring SIGTERM (as Ray's agents do once their raylet is gone).
STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); "
    "time.sleep(600)"
)
#: A run: the guard, then a stubborn child with an environment of its own (no mark: only the recorded
#: tree can find it), then waits to be killed or told to exit.
RUN = textwrap.dedent(
    f"""
    import os, subprocess, sys
    from pipelines import watchdog
    watchdog.start_watchdog()
    child = subprocess.Popen([sys.executable, "-c", {STUBBORN!r}], env={{"PATH": os.environ["PATH"]}},
                             stdout=subprocess.PIPE, text=True)
    child.stdout.readline()
    print("READY", watchdog._guard.pid, child.pid, flush=True)
    sys.stdin.read()
    child.kill()
    """
)


def _run() -> tuple[subprocess.Popen[str], int, int]:
    """Start RUN; returns it, the guard's pid and the stubborn child's pid."""
    proc = subprocess.Popen(
        [sys.executable, "-c", RUN], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    words = proc.stdout.readline().split()
    assert words[:1] == ["READY"], words
    return proc, int(words[1]), int(words[2])


def _gone_within(procs, seconds: float) -> list:
    deadline = time.monotonic() + seconds
    while (left := [p for p in procs if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def test_a_run_killed_by_sigkill_leaves_nothing_even_a_child_that_ignores_sigterm():
    proc, guard, child = _run()
    try:
        time.sleep(1.5)  # the guard looks at the tree every 0.5 s
        tree = descendants(proc.pid)
        assert {guard, child} <= {p.pid for p in tree}
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert _gone_within(tree, 15) == []  # the guard too, once done
        assert time.monotonic() - t0 >= 2.5  # SIGTERM was ignored: SIGKILL after the grace period
    finally:
        proc.kill()
        proc.stdout.close()


def test_a_normal_exit_ends_the_guard_at_once():
    proc, guard, child = _run()
    tree = descendants(proc.pid)
    proc.stdin.close()  # the run kills its child and exits
    assert proc.wait(timeout=10) == 0
    proc.stdout.close()
    assert _gone_within([p for p in tree if p.pid == guard], 3) == []


def test_sweep_stops_processes_by_mark_alone_and_spares_other_marks():
    mark = f"test.{os.getpid()}.{time.monotonic_ns()}"
    ours = subprocess.Popen([sys.executable, "-c", STUBBORN], env={MARK_VAR: mark}, stdout=subprocess.PIPE)
    other = subprocess.Popen(
        [sys.executable, "-c", STUBBORN], env={MARK_VAR: f"{mark}.other"}, stdout=subprocess.PIPE
    )
    try:
        ours.stdout.readline(), other.stdout.readline()  # both have set their SIGTERM handler
        assert marked_pids(mark) == {ours.pid}
        assert sweep(mark, known=set(), skip=os.getpid()) == 1
        assert ours.wait(timeout=5) == -signal.SIGKILL
        assert other.poll() is None
    finally:
        for p in (ours, other):
            p.kill()
            p.wait()
            p.stdout.close()
