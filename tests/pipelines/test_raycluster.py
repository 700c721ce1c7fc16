"""A local Ray started by `ensure_ray` listens on 127.0.0.1 only, and leaves nothing behind at exit.

The Ray is started in a subprocess, as `vaeaug` does (this session has its own Ray already); its
processes' sockets are then read from /proc while it runs.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from tests.pipelines.procfs import alive, bound_sockets, descendants, is_loopback

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's /proc")

#: A local Ray via ensure_ray, one task run (so a worker exists), then wait for stdin to close.
DRIVER = textwrap.dedent(
    """
    import os, sys
    from pipelines.config import RayConfig
    from pipelines.raycluster import ensure_ray
    import ray

    @ray.remote
    def pid():
        return os.getpid()

    ensure_ray(RayConfig(num_cpus=1))
    print("WORKER", ray.get(pid.remote()), flush=True)
    sys.stdin.read()
    """
)
#: Ray's processes that open sockets, by a piece of their command line (the driver and the worker
#: that ran the task are added by pid).
COMPONENTS = ("gcs_server", "raylet", "dashboard.py", "ray::DashboardAgent", "ray::RuntimeEnvAgent")
SETTLE_S = 60.0


def test_the_socket_reader_sees_all_interfaces():
    """The check below can fail: a socket bound on 0.0.0.0 here is seen, and not as loopback."""
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        mine = [s for s in bound_sockets([os.getpid()]) if s[3] == sock.getsockname()[1]]
    assert [(proto, addr) for _, proto, addr, _ in mine] == [("tcp", "0.0.0.0")]
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and is_loopback("::1")


def test_loopback_only_is_undone_after_the_block():
    """Outside the block Ray's node IP is the machine's again (a remote cluster must reach the driver)."""
    from ray._private import ray_constants

    from pipelines.raycluster import loopback_only

    before = ray_constants.ENABLE_RAY_CLUSTER
    with loopback_only():
        assert ray_constants.ENABLE_RAY_CLUSTER is False
    assert ray_constants.ENABLE_RAY_CLUSTER == before


def test_the_session_ray_is_on_loopback(ray_session):
    """The test session's Ray (tests/conftest.py) binds like `vaeaug`'s: its node IP is 127.0.0.1."""
    import ray

    assert {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]} == {"127.0.0.1"}


def _sockets_once_all_components_listen(
    driver: int, worker: int
) -> tuple[list[tuple[int, str, str, int]], dict[int, str]]:
    """The bound sockets of the driver and its descendants, once each Ray component has one."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        procs = {p.pid: p.cmdline for p in descendants(driver)} | {driver: "driver"}
        procs[worker] = f"worker {procs.get(worker, '')}"
        sockets = bound_sockets(list(procs))
        owners = {procs[pid] for pid, *_ in sockets}
        wanted = (*COMPONENTS, "driver", "worker")
        missing = [c for c in wanted if not any(c in owner for owner in owners)]
        if not missing or time.monotonic() > deadline:
            assert not missing, f"no socket yet from {missing} after {SETTLE_S} s"
            return sockets, procs
        time.sleep(1)


@pytest.mark.slow
def test_local_ray_listens_on_loopback_only_and_leaves_nothing_at_exit():
    """Every TCP listener and bound UDP socket of the driver, GCS, raylet, dashboard, agents and
    workers is on 127.0.0.1 (`::ffff:127.0.0.1` counts); after a normal exit no process is left."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("WORKER "), f"the local Ray did not run a task: {line!r}"
        sockets, procs = _sockets_once_all_components_listen(proc.pid, int(line.split()[1]))
        started = descendants(proc.pid)
        exposed = [(procs[pid], proto, f"{addr}:{port}") for pid, proto, addr, port in sockets]
        exposed = [s for s in exposed if not is_loopback(s[2].rsplit(":", 1)[0])]
        assert exposed == [], f"Ray listens beyond 127.0.0.1: {exposed}"
        proc.stdin.close()  # normal exit: ray.shutdown at exit, then the watchdog finds nothing
        assert proc.wait(timeout=60) == 0  # ray.shutdown at exit
    finally:
        proc.kill()
    deadline = time.monotonic() + 15
    while (left := [p for p in started if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left == [], f"left running after a normal exit: {[p.cmdline[:80] for p in left]}"
