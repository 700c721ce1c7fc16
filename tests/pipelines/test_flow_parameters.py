"""The flow's typed parameters: Prefect's schema (its UI form) names the config sections and their
keys; a partial section keeps the other keys' defaults; errors stay our one-line `ConfigError`s."""

from __future__ import annotations

import uuid

import pytest

from pipelines.config import TrainConfig
from pipelines.errors import DataError
from vae.config import ConfigError

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _deployment_schema() -> dict:
    """The parameter schema of a deployment of the flow, as Prefect's API stores it."""
    from prefect.client.orchestration import get_client

    from pipelines.flow import augmentation_flow

    deployment_id = augmentation_flow.to_deployment(name=f"schema-{uuid.uuid4().hex[:8]}").apply()
    with get_client(sync_client=True) as client:
        return client.read_deployment(deployment_id).parameter_openapi_schema


def _section(schema: dict, name: str) -> dict:
    """The schema of the section parameter `name` (Prefect writes it as anyOf [its model, null])."""
    refs = [part["$ref"] for part in schema["properties"][name]["anyOf"] if "$ref" in part]
    return schema["definitions"][refs[0].rsplit("/", 1)[-1]]


def test_the_deployments_schema_names_every_section_and_its_keys():
    schema = _deployment_schema()
    properties = schema["properties"]
    assert list(properties)[:2] == ["config_path", "overrides"]
    expected = {"data", "model", "train", "generate", "ray", "flow", "report", "conditional", "output_dir"}
    assert expected <= set(properties)
    assert "config" not in properties
    train = _section(schema, "train")
    assert {"epochs", "lr", "batch_size", "num_workers"} <= set(train["properties"])
    # the form knows each key's type, default, bounds and meaning (from the section's docstring)
    epochs = train["properties"]["epochs"]
    assert {k: epochs[k] for k in ("default", "minimum", "type")} == {
        "default": 30,
        "minimum": 1,
        "type": "integer",
    }
    assert epochs["description"].startswith("reporting and checkpointing rounds")
    assert train["properties"]["lr"]["exclusiveMinimum"] == 0
    assert train["additionalProperties"] is False and not train.get("required")  # any subset of keys
    model = _section(schema, "model")
    assert {"image_size", "latent_dim", "hidden_channels"} <= set(model["properties"])
    assert model["properties"]["latent_dim"]["description"].startswith("size of z")
    assert "num_samples" in _section(schema, "generate")["properties"]
    assert "digits" in _section(schema, "data")["properties"]["source"]["enum"]  # the form offers a choice
    assert "training: epochs" in properties["train"]["description"]  # from the flow's docstring


def test_a_partial_section_keeps_the_other_defaults_and_errors_are_ours(tmp_path):
    from pipelines.flow import augmentation_flow

    missing = tmp_path / "no-such-folder"
    # train and data are partial sections: the job gets as far as reading the data
    with pytest.raises(DataError, match="data.path"):
        augmentation_flow(
            train={"epochs": 3},
            data={"source": "folder", "path": str(missing)},
            output_dir=str(tmp_path / "o"),
        )
    with pytest.raises(DataError, match="data.path"):  # a section object from Python works the same
        augmentation_flow(
            train=TrainConfig(epochs=3),
            data={"source": "folder", "path": str(missing)},
            output_dir=str(tmp_path),
        )
    with pytest.raises(ConfigError, match=r"^train\.epochs='many': expected int$"):
        augmentation_flow(train={"epochs": "many"}, output_dir=str(tmp_path / "never"))
    with pytest.raises(ConfigError, match=r"^unknown config key\(s\) \['generate\.rows'\]"):
        augmentation_flow(generate={"rows": 5}, output_dir=str(tmp_path / "never"))
    with pytest.raises(ConfigError, match=r"^train: expected a mapping of settings, got 5$"):
        augmentation_flow(train=5, output_dir=str(tmp_path / "never"))
    assert not (tmp_path / "never").exists()


def test_a_deployment_run_with_a_secret_in_a_section_is_redacted_and_refused(tmp_path):
    """A run of a deployment (the UI's form, the API) carries its section parameters already: the body
    replaces the stored copy with a redacted one, then refuses."""
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow

    from pipelines.flow import augmentation_flow

    secret = f"planted-{uuid.uuid4().hex}"
    deployment_id = augmentation_flow.to_deployment(name=f"secret-{uuid.uuid4().hex[:8]}").apply()
    params = {"output_dir": str(tmp_path / "never"), "data": {"storage_options": {"secret": secret}}}
    with get_client(sync_client=True) as client:
        run = client.create_flow_run_from_deployment(deployment_id, parameters=params)
    state = run_flow(augmentation_flow, flow_run=run, parameters=params, return_type="state")
    error = state.result(raise_on_failure=False)
    assert isinstance(error, ConfigError) and "data.storage_options.secret" in str(error)
    with get_client(sync_client=True) as client:
        stored = client.read_flow_run(run.id).parameters
    assert stored["data"] == {"storage_options": {"secret": "<redacted>"}} and secret not in str(stored)
    assert not (tmp_path / "never").exists()
