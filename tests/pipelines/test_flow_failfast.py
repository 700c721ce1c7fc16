"""User errors fail the flow at once: no training, no retries and no backoff; transient errors retry."""

from __future__ import annotations

import time

import pytest
from prefect import flow, task
from prefect.states import Failed

from pipelines.errors import DataError, StorageError
from pipelines.flow import transient
from pipelines.generate.commit import commit, resolve_output
from tests.pipelines.generate.helpers import snapshot
from tests.pipelines.test_flow import _settings as flow_settings
from vae.config import ConfigError


@pytest.mark.usefixtures("prefect_harness", "ray_session")
def test_rerun_onto_a_committed_dataset_fails_fast_without_training(tmp_path):
    """The README's re-run case: an existing dataset stops the flow in seconds, before data, Ray or
    training, without the retries' backoff, and leaves the previous run's files as they were."""
    from pipelines.flow import augmentation_flow

    # test_flow's small job (it must never get as far as training here), with backoff to notice
    settings = flow_settings(tmp_path, flow={"retries": 2, "retry_delay_seconds": 10})
    dataset = tmp_path / "job" / "synthetic"
    commit(resolve_output(str(dataset), "error"), {"rows": 0, "files": []}, "# earlier run\n")
    before = snapshot(tmp_path)
    t0 = time.perf_counter()
    with pytest.raises(StorageError, match=r"generate\.if_exists"):
        augmentation_flow(**settings)
    assert time.perf_counter() - t0 < 10, "a user error waited for retries"
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir()), "training started"
    assert not (tmp_path / "job" / "model").exists()
    assert not (tmp_path / "job" / "config.yaml").exists()  # the earlier run's config is not replaced
    assert snapshot(tmp_path) == before


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
