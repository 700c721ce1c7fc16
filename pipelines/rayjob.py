"""Running a stage as a Ray Job on a remote cluster (KubeRay), and following it to the end.

The merged config travels in the job's `working_dir`; the cluster's image must have vaeaug installed
(deploy/Dockerfile). Credentials are never sent: the working directory is uploaded to the cluster's
storage and kept there, so a config holding any (secret storage options, a URL with user:password)
is refused, and the cluster gets its credentials from its own environment (Kubernetes Secrets,
AWS_PROFILE, GOOGLE_APPLICATION_CREDENTIALS) or credential files.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from pipelines.config import PipelineConfig
from pipelines.errors import PipelineError
from pipelines.raycluster import check_reachable
from pipelines.redaction import find_secrets
from pipelines.storage import first_line, redact_url

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
AGENT_WAIT_S = 120.0  # a head that just started may take a while before its job agent accepts jobs


def _dashboard_address(cfg: PipelineConfig) -> str:
    import os

    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if not address or urlparse(address).scheme not in ("http", "https"):
        raise PipelineError(
            f"ray.submit_job=true needs the cluster's job server as ray.address (http://HEAD:8265), "
            f"got {address!r}: set ray.address=http://<head-service>:8265"
        )
    return address


def _shipped_config(cfg: PipelineConfig) -> dict[str, Any]:
    """The config shipped in the job's working directory (a file the cluster keeps): refused when
    `pipelines.redaction.find_secrets` (the one policy) finds credentials in it; a redacted copy
    would not run on the cluster.

    Raises:
        PipelineError: the config holds credentials (named by key, never by value).
    """
    shipped = cfg.to_dict()
    shipped["ray"] = {**shipped["ray"], "submit_job": False, "address": None}  # the job's RAY_ADDRESS
    found = find_secrets(shipped)
    if found:
        raise PipelineError(
            f"ray.submit_job=true ships the config to the cluster as a file, and {', '.join(found)} "
            "hold(s) credentials: give the cluster its credentials by environment (AWS_ACCESS_KEY_ID/"
            "AWS_SECRET_ACCESS_KEY from a Kubernetes Secret, AWS_PROFILE, GOOGLE_APPLICATION_CREDENTIALS) "
            "or a credential file (e.g. storage_options.profile), and remove them from the config"
        )
    return shipped


def _submit(client: Any, wait_s: float = AGENT_WAIT_S, **job: Any) -> str:
    """`client.submit_job`, retried while a freshly started head has no job agent yet (HTTP 500)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return client.submit_job(**job)
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise PipelineError(f"the Ray job server refused the job: {first_line(exc)}") from None
            time.sleep(2.0)


def run_as_ray_job(
    cfg: PipelineConfig,
    command: str,
    poll_s: float = 2.0,
    timeout_s: float | None = None,
    echo: Callable[[str], None] = print,
) -> str:
    """Submit `vaeaug <command>` with `cfg` as a Ray Job, stream its logs, and wait for the end.

    Args:
        cfg: the pipeline config; `ray.address` is the job server (http://host:8265).
        command: the CLI command to run on the cluster ("train" or "generate").
        poll_s: seconds between status polls.
        timeout_s: stop the job and fail after this long (None: wait indefinitely).
        echo: where the job's log lines go.

    Returns:
        The job's submission id.

    Raises:
        PipelineError: the config holds credentials, the job server is unreachable, or the job
            failed, was stopped or timed out.
    """
    from ray.job_submission import JobSubmissionClient

    shipped = _shipped_config(cfg)  # first: credentials in the config are refused before any contact
    address = _dashboard_address(cfg)
    check_reachable(address)
    client = JobSubmissionClient(address)
    job_id = _submit_with_config(client, command, shipped)
    echo(f"submitted Ray job {job_id} to {redact_url(address)}")
    status, logs = _follow(client, job_id, poll_s, timeout_s, echo)
    if status != "SUCCEEDED":
        last = next((ln for ln in reversed(logs.splitlines()) if ln.strip()), "(no output)")
        raise PipelineError(
            f"Ray job {job_id} {status.lower()}: {last.strip()[:300]} "
            f"(full log: ray job logs {job_id} --address {redact_url(address)})"
        )
    return job_id


def _submit_with_config(client: Any, command: str, shipped: dict[str, Any]) -> str:
    """Submit `vaeaug <command> --config config.yaml` with `shipped` as that file in the job's
    working directory (uploaded by Ray); returns the submission id."""
    with tempfile.TemporaryDirectory(prefix="vaeaug-job-") as workdir:
        Path(workdir, "config.yaml").write_text(yaml.safe_dump(shipped, sort_keys=False))
        return _submit(
            client,
            entrypoint=f"vaeaug {command} --config config.yaml",
            runtime_env={"working_dir": workdir},
            submission_id=f"vaeaug-{command}-{uuid.uuid4().hex[:8]}",
            metadata={"vaeaug_command": command},
        )


def _follow(
    client: Any, job_id: str, poll_s: float, timeout_s: float | None, echo: Callable[[str], None]
) -> tuple[str, str]:
    """Echo the job's new log lines every `poll_s` until it ends; returns (final status, whole log).

    Raises:
        PipelineError: the job ran past `timeout_s` (it is stopped first).
    """
    shown = 0
    started = time.monotonic()
    while True:
        status = str(client.get_job_status(job_id).value)
        logs = client.get_job_logs(job_id)
        for line in logs[shown:].splitlines():
            echo(line)
        shown = len(logs)
        if status in TERMINAL:
            return status, logs
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            client.stop_job(job_id)
            raise PipelineError(f"Ray job {job_id} timed out after {timeout_s:.0f} s and was stopped")
        time.sleep(poll_s)
