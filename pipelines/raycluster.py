"""Connecting to Ray: an existing cluster by address, else a local Ray on 127.0.0.1 sized to this machine."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlparse

from pipelines.config import RayConfig
from pipelines.console import console
from pipelines.errors import PipelineError
from pipelines.storage import first_line

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0


@dataclass
class ClusterInfo:
    """What the connected Ray cluster offers."""

    address: str | None  # None: a local Ray started by this process
    num_cpus: float
    num_gpus: float
    num_nodes: int


def check_reachable(address: str) -> None:
    """Fail fast (seconds, not minutes) when nothing listens at a host:port address."""
    if address == "auto":
        return
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    host, port = parsed.hostname, parsed.port
    if host is None or port is None:
        raise PipelineError(
            f"Ray address {address!r} is not host:port or ray://host:port: fix ray.address / RAY_ADDRESS"
        )
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise PipelineError(
            f"cannot reach the Ray cluster at {address!r} ({exc.strerror or exc}): check ray.address / "
            "RAY_ADDRESS and that the head node is running, or unset both to use a local Ray"
        ) from None


def no_uv_hook() -> None:
    """Turn off Ray's `uv run` hook for a local cluster, unless the user set it explicitly.

    Under `uv run` the hook ships the working directory and has every worker run `uv run` again:
    a venv rebuilt per worker (seconds to minutes), uv's VIRTUAL_ENV warnings on the console, and a
    failure when the command runs outside the project folder. A local cluster's workers can use this
    interpreter as it is. Ray reads the setting when it is imported, hence the constant too.
    """
    if "RAY_ENABLE_UV_RUN_RUNTIME_ENV" in os.environ:
        return
    os.environ["RAY_ENABLE_UV_RUN_RUNTIME_ENV"] = "0"
    from ray._private import ray_constants

    ray_constants.RAY_ENABLE_UV_RUN_RUNTIME_ENV = False


@contextmanager
def loopback_only() -> Iterator[None]:
    """Within the block, a local Ray that `ray.init` starts listens on 127.0.0.1 only.

    By default a local Ray takes the machine's outward IP as its node IP and binds GCS, raylet (node
    and object manager), the workers' gRPC, the dashboard agent (gRPC, and Prometheus metrics with no
    authentication), the runtime-env agent and the monitors' metrics on all interfaces: reachable
    from other machines, which a single-machine run never needs. Each of them binds 127.0.0.1 when
    the node IP is loopback (the Python ones test `is_localhost(node_ip)`: ray/dashboard/agent.py,
    reporter_agent.py, head.py, autoscaler/_private/monitor.py; the C++ servers follow the node IP
    too, as tests/pipelines/test_raycluster.py checks). `ray.init(_node_ip_address="127.0.0.1")`
    cannot ask for it (`resolve_ip_for_localhost` swaps loopback for the outward IP); Ray's switch
    for macOS and Windows can: with `ray_constants.ENABLE_RAY_CLUSTER` false (the constant behind
    `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`, read at import, hence set here) `get_node_ip_address()`
    answers 127.0.0.1. Only while Ray starts, and not in the environment: once the node exists Ray
    asks it for the IP, and a later connection to a remote cluster from this process, or any child
    process, must still report a reachable address. The dashboard defaults to 127.0.0.1 already.
    """
    from ray._private import ray_constants

    before = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


def _start_local_ray(cfg: RayConfig) -> None:
    """A local Ray on 127.0.0.1 whose processes all end with this one, even when it is SIGKILLed.

    Ray's kernel fate-sharing ends what `ray.init` starts (GCS, raylet, dashboard); the watchdog
    (`pipelines.watchdog`) ends what the raylet starts in turn (agents, workers), which would survive.
    """
    import ray

    from pipelines.watchdog import start_watchdog

    no_uv_hook()
    start_watchdog()  # before ray.init: Ray's processes must inherit the run's mark
    with loopback_only():
        # The dashboard serves Ray's state API, which Ray Train V2 polls to clean up after its
        # controller; without it the run logs a warning every second.
        ray.init(
            address="local",
            num_cpus=cfg.num_cpus,
            include_dashboard=None,
            configure_logging=False,
            log_to_driver=console.verbose,  # worker logs: -v
        )


def ensure_ray(cfg: RayConfig | None = None) -> ClusterInfo:
    """Connect to Ray once per process and describe the cluster.

    Args:
        cfg: `address` (or the `RAY_ADDRESS` environment variable) selects an existing cluster;
            otherwise a local Ray with `num_cpus` CPUs (default: all) is started, listening on
            127.0.0.1 only and stopped with this process however it ends.

    Returns:
        `ClusterInfo` with the cluster's total CPUs, GPUs and alive nodes.

    Raises:
        PipelineError: the address is malformed or unreachable.
    """
    import ray

    cfg = cfg or RayConfig()
    address = cfg.address or os.environ.get("RAY_ADDRESS") or None
    if not console.verbose:  # Ray's start-up notices and token-auth hints (Python's last-resort handler): -v
        logging.getLogger("ray").setLevel(logging.ERROR)
    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if address:
            check_reachable(address)
            try:
                ray.init(address=address, log_to_driver=console.verbose, configure_logging=False)
            except (ConnectionError, RuntimeError) as exc:
                raise PipelineError(
                    f"cannot connect to the Ray cluster at {address!r}: {first_line(exc)}; "
                    "check ray.address / RAY_ADDRESS"
                ) from None
        else:
            _start_local_ray(cfg)
    resources = ray.cluster_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return ClusterInfo(
        address=address,
        num_cpus=float(resources.get("CPU", 0.0)),
        num_gpus=float(resources.get("GPU", 0.0)),
        num_nodes=len(nodes),
    )
