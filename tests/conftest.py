"""Shared fixtures: real local services, started once per session.

- `s3`: a moto S3-protocol server on 127.0.0.1 (real HTTP), with env credentials set for it.
- `ray_session`: one local Ray for the whole session (starting Ray costs 10-30 s).
- `prefect_harness`: a temporary Prefect server (SQLite).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# Make the test environment quiet and self-contained before Ray/Prefect are imported anywhere.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@dataclass
class S3Server:
    """A running moto server: `endpoint_url` for clients, `new_bucket()` for an isolated bucket."""

    endpoint_url: str
    host: str
    port: int

    def storage_options(self) -> dict:
        """fsspec/s3fs options that point at this server."""
        return {"client_kwargs": {"endpoint_url": self.endpoint_url}}

    def new_bucket(self) -> str:
        """Create a fresh bucket and return its name."""
        import boto3

        name = f"test-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=self.endpoint_url).create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    """A real S3-protocol server (moto) on 127.0.0.1 for s3:// paths.

    Sets AWS_* env vars so s3fs, boto3 and pyarrow find it (`AWS_ENDPOINT_URL` is honoured by all three).
    """
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in _AWS_ENV}
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ENDPOINT_URL_S3": endpoint,
        }
    )
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    try:
        yield S3Server(endpoint_url=endpoint, host=host, port=port)
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        s3fs.S3FileSystem.clear_instance_cache()


_AWS_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
)


@pytest.fixture(scope="session")
def ray_session(s3_env_for_ray) -> Iterator[None]:
    """One new local Ray for the session (4 logical CPUs, no dashboard), never an outside cluster,
    listening on 127.0.0.1 only like the one `vaeaug` starts."""
    import ray

    from pipelines.raycluster import loopback_only, no_uv_hook

    no_uv_hook()  # as `vaeaug` does: under `uv run` (CI) every worker would start through `uv run`
    if not ray.is_initialized():
        with loopback_only():
            ray.init(
                address="local",
                num_cpus=4,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_env_for_ray(s3) -> S3Server:
    """Start the S3 server before Ray so Ray's workers inherit its AWS_* environment."""
    return s3


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """A temporary Prefect API server (SQLite) for the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    """`../shared/data` with MNIST's raw files; tests needing it skip where it is absent."""
    if not (SHARED_MNIST / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        pytest.skip("../shared/data/MNIST is not present (tests that need real MNIST are skipped)")
    return SHARED_MNIST


@pytest.fixture
def single_torch_thread() -> Iterator[None]:
    """One intra-op torch thread for the test (tiny models on shared cores: more threads only wait)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
