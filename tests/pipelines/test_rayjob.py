"""Ray Job mode (KubeRay): a stage submitted to a cluster's job server and followed to the end.

The cluster is a real `ray start --head` with its dashboard (the job server) on 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.config import load_config
from pipelines.errors import PipelineError
from pipelines.rayjob import run_as_ray_job


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def job_server(tmp_path_factory):
    """A separate Ray head with a job server; stopped (with its processes) at the end."""
    ray_bin = Path(sys.executable).parent / "ray"
    if not ray_bin.exists():
        pytest.skip("the `ray` CLI is not next to this Python")
    gcs, dash = _free_port(), _free_port()
    temp = Path("/tmp") / f"vaeaug-rj-{os.getpid()}"  # short: Ray's socket paths have a length limit
    env = {**os.environ, "PATH": f"{ray_bin.parent}:{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    cmd = [
        str(ray_bin), "start", "--head", "--block", f"--port={gcs}", "--num-cpus=2",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
        f"--temp-dir={temp}", "--disable-usage-stats",
        # The session's own Ray holds the default agent ports (52365, ...): without free ones this
        # head's job agent never starts and every submission is refused.
        f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
        f"--metrics-export-port={_free_port()}", f"--runtime-env-agent-port={_free_port()}",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    address = f"http://127.0.0.1:{dash}"
    try:
        from ray.job_submission import JobSubmissionClient

        deadline = time.monotonic() + 120
        while True:
            try:
                JobSubmissionClient(address).list_jobs()
                break
            except Exception:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("the Ray job server did not come up")
                time.sleep(1)
        yield address
    finally:
        proc.terminate()  # `ray start --block` tears down its node on SIGTERM...
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        try:  # ...slowly (30 s): end its whole session (GCS, raylet, workers) at once
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_train_runs_as_a_followed_ray_job(job_server, tmp_path):
    cfg = load_config(
        None,
        [
            f"ray.address={job_server}",
            "ray.submit_job=true",
            f"output_dir={tmp_path / 'job'}",
            f"train.storage_path={tmp_path / 'runs'}",
            "train.epochs=2",
            "train.min_steps=0",
            "model.hidden_channels=[16,32]",
        ],
    )
    lines: list[str] = []
    job_id = run_as_ray_job(cfg, "train", poll_s=1.0, timeout_s=300, echo=lines.append)
    assert job_id.startswith("vaeaug-train-")
    assert any("epoch   2/2" in line for line in lines), lines[-20:]
    assert (tmp_path / "job" / "model" / "model.safetensors").is_file()


@pytest.mark.slow
def test_failed_job_is_a_one_line_error(job_server, tmp_path):
    cfg = load_config(
        None,
        [
            f"ray.address={job_server}",
            "ray.submit_job=true",
            "data.source=folder",
            f"data.path={tmp_path / 'missing'}",
            f"output_dir={tmp_path / 'job'}",
        ],
    )
    with pytest.raises(PipelineError, match=r"Ray job vaeaug-train-\w+ failed: .*missing"):
        run_as_ray_job(cfg, "train", poll_s=1.0, timeout_s=300, echo=lambda _: None)


def test_job_mode_needs_the_job_server_address():
    cfg = load_config(None, ["ray.submit_job=true", "ray.address=127.0.0.1:6379"])
    with pytest.raises(PipelineError, match="http://"):
        run_as_ray_job(cfg, "train")
    cfg = load_config(None, ["ray.submit_job=true", f"ray.address=http://127.0.0.1:{_free_port()}"])
    with pytest.raises(PipelineError, match="cannot reach"):
        run_as_ray_job(cfg, "train")


def test_job_mode_refuses_credentials_in_the_shipped_config():
    """The config travels to the cluster as a file: credentials in it are refused before any contact
    with the job server (an unreachable address would otherwise be the error)."""
    key, secret = "AKIARAYJOBPLANTED", "rayjob/planted+secret"
    for overrides in (
        [f"data.storage_options={{key: {key}, secret: {secret}}}"],
        ["data.source=folder", f"data.path=ftp://reader:{secret}@host/imgs"],
    ):
        cfg = load_config(
            None, ["ray.submit_job=true", f"ray.address=http://127.0.0.1:{_free_port()}", *overrides]
        )
        with pytest.raises(PipelineError) as err:
            run_as_ray_job(cfg, "train")
        message = str(err.value)
        assert "hold(s) credentials" in message and "AWS_PROFILE" in message and "\n" not in message
        assert key not in message and secret not in message
    cfg = load_config(None, ["ray.submit_job=true", "data.storage_options={profile: research, anon: false}"])
    with pytest.raises(PipelineError, match="http://"):  # non-secret options pass on to the address check
        run_as_ray_job(cfg, "train")
