"""`pipelines.procfs`: /proc/<pid>/stat read as the lease and the watchdog need it."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from pipelines.procfs import pids, read_stat

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")


def test_a_child_is_listed_with_its_parent_and_a_stable_start(tmp_path):
    """A child named with spaces and a ")" (the name ends at the LAST ")") reads right: its parent is
    us, its start time does not change, and once it exits unreaped it is a zombie."""
    exe = tmp_path / "odd ) name"
    exe.symlink_to(sys.executable)
    child = subprocess.Popen([str(exe), "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        first = read_stat(child.pid)
        assert first is not None and child.pid in pids()
        assert first.ppid == os.getpid() and first.state in "RSD"
        assert read_stat(child.pid).start == first.start > 0
        assert read_stat(os.getpid()).start <= first.start  # we started before it
    finally:
        assert child.stdin is not None
        child.stdin.close()
    deadline = time.monotonic() + 10
    while (stat := read_stat(child.pid)) is not None and stat.state != "Z" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stat is not None and stat.state == "Z" and stat.start == first.start  # exited, not reaped
    child.wait()
    assert read_stat(child.pid) is None and child.pid not in pids()  # reaped: gone


def test_a_pid_that_does_not_exist_reads_as_none():
    assert read_stat(2**22 + 12345) is None  # above Linux's pid_max limit
