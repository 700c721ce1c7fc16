"""User errors fail the flow at once: no training, no retries and no backoff; transient errors retry."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
from prefect import flow, task
from prefect.states import Failed

from pipelines.errors import DataError, StorageError
from pipelines.flow import transient
from pipelines.generate.commit import commit, resolve_output
from vae.config import ConfigError

#: As in test_flow.py: a small job (it must never get as far as training here).
SMALL = {
    "model": {"hidden_channels": [16, 32], "latent_dim": 8},
    "train": {"epochs": 2, "min_steps": 0, "batch_size": 128, "num_workers": 1},
    "generate": {"num_samples": 300, "per_class": {"7": 40}, "shard_size": 128, "num_actors": 1},
    "report": {"steps": 40, "seeds": 2, "batch_size": 32, "width": 8, "max_synthetic": 200},
    "flow": {"retries": 0},
}


def _settings(tmp_path: Path) -> dict:
    cfg = json.loads(json.dumps(SMALL))
    cfg["output_dir"] = str(tmp_path / "job")
    cfg["train"]["storage_path"] = str(tmp_path / "runs")
    cfg["flow"].update(
        {"result_storage": str(tmp_path / "prefect-results"), "retries": 2, "retry_delay_seconds": 10}
    )
    return cfg


def _files(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


@pytest.mark.usefixtures("prefect_harness", "ray_session")
def test_rerun_onto_a_committed_dataset_fails_fast_without_training(tmp_path):
    """The README's re-run case: an existing dataset stops the flow in seconds, before data, Ray or
    training, without the retries' backoff, and leaves the previous run's files as they were."""
    from pipelines.flow import augmentation_flow

    settings = _settings(tmp_path)
    dataset = tmp_path / "job" / "synthetic"
    commit(resolve_output(str(dataset), "error"), {"rows": 0, "files": []}, "# earlier run\n")
    before = _files(tmp_path)
    t0 = time.perf_counter()
    with pytest.raises(StorageError, match=r"generate\.if_exists"):
        augmentation_flow(config=settings)
    assert time.perf_counter() - t0 < 10, "a user error waited for retries"
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir()), "training started"
    assert not (tmp_path / "job" / "model").exists()
    assert not (tmp_path / "job" / "config.yaml").exists()  # the earlier run's config is not replaced
    assert _files(tmp_path) == before


@pytest.mark.parametrize(
    ("exc", "retry"),
    [
        (StorageError("generate.output exists"), False),
        (ConfigError("model.beta must be > 0"), False),
        (DataError("data.path missing"), False),
        (ConnectionError("connection reset by peer"), True),
        (RuntimeError("Ray worker died"), True),
        (OSError("No space left on device"), True),
    ],
)
def test_transient_retries_only_what_may_pass_on_a_second_try(exc, retry):
    """`transient` as Prefect calls it (a Failed state holding the exception): user errors never retry."""
    state = Failed(data=exc)
    assert state.result(raise_on_failure=False) is exc  # how Prefect 3 hands the exception over
    assert transient(None, None, state) is retry


@pytest.mark.usefixtures("prefect_harness")
def test_a_task_retries_a_transient_error_but_not_a_user_error():
    """With the flow's retry options, a transient failure is retried (and passes); a user error is
    raised on the first failure, although retries are left."""
    calls = {"flaky": 0, "user": 0}

    @task(retries=1, retry_delay_seconds=0, retry_condition_fn=transient, persist_result=False)
    def flaky() -> str:
        calls["flaky"] += 1
        if calls["flaky"] == 1:
            raise RuntimeError("Ray worker died")
        return "ok"

    @task(retries=3, retry_delay_seconds=0, retry_condition_fn=transient, persist_result=False)
    def user_error() -> None:
        calls["user"] += 1
        raise StorageError("generate.output holds a committed dataset")

    @flow
    def job() -> str:
        return flaky()

    @flow
    def refused() -> None:
        user_error()

    assert job() == "ok"
    assert calls["flaky"] == 2
    with pytest.raises(StorageError):
        refused()
    assert calls["user"] == 1
