"""Deployments of the flow: parameters checked when the deployment is made, one schedule, clear errors.

(`vaeaug serve` registering one through a real Prefect API is in test_flow.py.)
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from pipelines.errors import ConfigError, PipelineError
from pipelines.flow import FLOW_NAME
from pipelines.schedule import build_deployment, deployment_parameters


def test_parameters_store_an_absolute_config_path_and_the_overrides(tmp_path, monkeypatch):
    (tmp_path / "job.yaml").write_text("train:\n  epochs: 2\n")
    monkeypatch.chdir(tmp_path)
    params = deployment_parameters("job.yaml", ["generate.num_samples=5"])
    assert params == {"config_path": str(tmp_path / "job.yaml"), "overrides": ["generate.num_samples=5"]}
    assert deployment_parameters(None, []) == {"config_path": None, "overrides": []}


@pytest.mark.parametrize(
    ("overrides", "words"),
    [(["train.epochz=2"], "train.epochz"), (["data.storage_options.secret=abc"], "credentials")],
)
def test_a_bad_or_secret_parameter_is_refused_before_anything_is_stored(overrides, words):
    with pytest.raises(ConfigError, match=words):
        deployment_parameters(None, overrides)


def test_a_cron_or_an_interval_schedule():
    parameters = {"config_path": None, "overrides": ["train.epochs=2"]}
    nightly = build_deployment("nightly", cron="0 3 * * *", timezone="Europe/Paris", parameters=parameters)
    assert (nightly.name, nightly.flow_name, nightly.parameters) == ("nightly", FLOW_NAME, parameters)
    (cron,) = nightly.schedules
    assert (cron.schedule.cron, cron.schedule.timezone) == ("0 3 * * *", "Europe/Paris")
    hourly = build_deployment("hourly", interval_s=3600)
    assert hourly.schedules[0].schedule.interval == timedelta(hours=1)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({}, "exactly one of --cron"),
        ({"cron": "0 3 * * *", "interval_s": 60}, "exactly one of --cron"),
        ({"cron": "every night"}, "invalid cron 'every night'"),
        ({"interval_s": 0}, "must be > 0 seconds"),
    ],
)
def test_schedule_errors_say_what_to_give(kwargs, words):
    with pytest.raises(PipelineError, match=words):
        build_deployment("x", **kwargs)
