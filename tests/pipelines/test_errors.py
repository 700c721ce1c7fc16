"""User errors: one line without credentials, and found again inside Ray's wrappers (a real local Ray)."""

from __future__ import annotations

import pytest
import ray

from pipelines.errors import USER_ERRORS, ConfigError, DataError, PipelineError, StorageError, find_error


@ray.remote(max_retries=0)
def _fails(path: str) -> None:
    raise DataError(f"data.path '{path}' has no images: check the path")


def test_a_task_error_is_found_as_the_users_one_line(ray_session):
    with pytest.raises(ray.exceptions.RayTaskError) as caught:
        ray.get(_fails.remote("/x/empty"))
    wrapper = caught.value  # a RayTaskError(DataError): also a DataError, with Ray's traceback as text
    assert isinstance(wrapper, DataError) and len(str(wrapper).splitlines()) > 1
    found = find_error(wrapper, DataError)
    assert found is not wrapper and str(found) == "data.path '/x/empty' has no images: check the path"
    assert find_error(caught.value, StorageError) is None


def test_causes_contexts_and_worker_failures_are_searched():
    inner = StorageError("output '/o' is a file: give a folder")
    try:
        try:
            raise inner
        except StorageError as exc:
            raise RuntimeError("wrapped") from exc
    except RuntimeError as exc:
        assert find_error(exc, StorageError) is inner

    class TrainingFailed(Exception):  # the shape of Ray Train's error: failures per worker rank
        worker_failures = {0: ValueError("other"), 1: ConfigError("train.lr=-1: must be in (0, 10]")}

    assert str(find_error(TrainingFailed(), ConfigError)) == "train.lr=-1: must be in (0, 10]"


def test_a_cycle_of_causes_ends():
    a, b = RuntimeError("a"), RuntimeError("b")
    a.__cause__, b.__cause__ = b, a
    assert find_error(a, DataError) is None


def test_messages_lose_credentials_and_user_errors_are_the_ones_printed():
    err = DataError("cannot read s3://key:secret@bucket/x: check access")
    assert "secret" not in str(err) and "bucket/x" in str(err)
    assert all(issubclass(kind, USER_ERRORS) for kind in (DataError, StorageError, ConfigError))
    assert not issubclass(RuntimeError, USER_ERRORS) and issubclass(DataError, PipelineError)
