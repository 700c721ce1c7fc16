"""`vaeaug run` killed by SIGKILL mid-training leaves no process behind: not Prefect's temporary
server, not Ray's GCS, raylet, dashboard, agents or workers (issue 11, item 8b).

The command runs as a new user runs it (the console script, a fresh Prefect home, no Prefect API URL,
no Ray address); its process tree is recorded once training has started, then the command is killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.pipelines.procfs import Proc, alive, descendants
from tests.pipelines.test_command1 import QUICK, new_user

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's /proc")

#: What must be running when the command is killed, by a piece of the command line.
EXPECTED = (
    "uvicorn",
    "gcs_server",
    "raylet",
    "ray::DashboardAgent",
    "ray::RuntimeEnvAgent",
    "pipelines.watchdog",
)
#: Seconds the leftovers get to disappear (the guard: SIGTERM, 3 s, SIGKILL).
GONE_WITHIN_S = 30
START_TIMEOUT_S = 400


def _start(tmp_path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(**new_user(tmp_path, *QUICK))


def _wait_for_training(proc: subprocess.Popen[str]) -> list[str]:
    """Read the console until the train stage opens; returns the lines read."""
    lines: list[str] = []
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and (line := proc.stdout.readline()):
        lines.append(line.rstrip())
        if "start  train" in line:
            return lines
    pytest.fail("the train stage never started:\n" + "\n".join(lines[-30:]))


def _tree_with_train_workers(pid: int, wait_s: float = 60) -> list[Proc]:
    """The command's descendants once Ray Train's workers run (or after `wait_s`, whatever runs)."""
    deadline = time.monotonic() + wait_s
    while True:
        tree = descendants(pid)
        if any("RayTrainWorker" in p.cmdline for p in tree) or time.monotonic() > deadline:
            return tree
        time.sleep(0.5)


@pytest.mark.slow
def test_sigkill_of_vaeaug_run_leaves_no_process_behind(tmp_path):
    """SIGKILL during training: every descendant recorded just before is gone within 30 s."""
    proc = _start(tmp_path)
    try:
        lines = _wait_for_training(proc)
        tree = _tree_with_train_workers(proc.pid)
        for piece in EXPECTED:
            assert any(piece in p.cmdline for p in tree), (piece, [p.cmdline[:60] for p in tree], lines)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        proc.kill()
    t0 = time.monotonic()
    while (left := [p for p in tree if alive(p)]) and time.monotonic() - t0 < GONE_WITHIN_S:
        time.sleep(0.5)
    proc.stdout.close()  # only now: a closed pipe could stop a writer that the guard should stop
    assert left == [], f"alive {GONE_WITHIN_S} s after the kill: {[p.cmdline[:80] for p in left]}"
    kinds = sorted({p.cmdline.split()[0].rsplit("/", 1)[-1] for p in tree if p.cmdline})
    print(
        f"{len(tree)} processes ({', '.join(kinds)}), all gone {time.monotonic() - t0:.1f} s after the kill"
    )
