"""The Prefect flow end to end, on a real Prefect test server and a real local Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.readers import open_dataset
from vae.config import ConfigError

pytestmark = pytest.mark.usefixtures("prefect_harness")

SMALL = {
    "model": {"hidden_channels": [16, 32], "latent_dim": 8},
    "train": {"epochs": 2, "min_steps": 0, "batch_size": 128, "num_workers": 1},
    "generate": {"num_samples": 300, "per_class": {"7": 40}, "shard_size": 128, "num_actors": 1},
    "report": {"steps": 40, "seeds": 2, "batch_size": 32, "width": 8, "max_synthetic": 200},
    "flow": {"retries": 0},
}


def _settings(tmp_path: Path, **over) -> dict:
    cfg = json.loads(json.dumps(SMALL))
    cfg["output_dir"] = str(tmp_path / "job")
    cfg["train"]["storage_path"] = str(tmp_path / "runs")
    cfg["flow"]["result_storage"] = str(tmp_path / "prefect-results")
    for section, values in over.items():
        if isinstance(values, dict):
            cfg.setdefault(section, {}).update(values)
        else:
            cfg[section] = values
    return cfg


def _artifact(key: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return found


def _run_logs(flow_run_id) -> list[str]:
    """The flow run's log lines in the Prefect API (what its UI shows), once they have been sent."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return [log.message for log in logs]


@pytest.mark.slow
def test_flow_commits_dataset_publishes_artifacts_and_caches_training(tmp_path, ray_session):
    from pipelines.flow import augmentation_flow

    settings = _settings(tmp_path)
    state = augmentation_flow(**settings, return_state=True)
    first = state.result()
    assert first["training_cached"] is False
    assert any(line.startswith("done   train ") for line in _run_logs(state.state_details.flow_run_id))
    assert first["rows"] == 340
    assert first["per_class"]["7"] >= 40
    manifest = open_dataset(first["dataset_dir"])  # refuses anything uncommitted
    assert manifest.rows == 340
    assert first["validated"]["rows"] == 340
    assert 0 < first["quality"]["recon_vs_mean"] < 1.5
    report = _artifact("augmentation-report")
    assert report and "Quality (held-out)" in report[0].data and "data:image/png;base64," in report[0].data
    useful = first["usefulness"]
    assert useful["headline"] in report[0].data and "label fidelity" in report[0].data
    assert {"label_fidelity", "cas", "gain", "frechet_ratio"} <= set(useful)
    assert first["picture_path"].endswith("usefulness.png") and Path(first["picture_path"]).is_file()
    counts = _artifact("class-counts")
    assert counts
    table = counts[0].data if isinstance(counts[0].data, list) else json.loads(counts[0].data)
    assert sum(int(row["rows"]) for row in table) == 340
    assert all("label_fidelity" in row for row in table)
    assert (tmp_path / "job" / "config.yaml").is_file()

    # Same data and training config, different sampling: the model comes from the cache.
    settings["generate"].update({"seed": 1, "if_exists": "overwrite"})
    second = augmentation_flow(**settings)
    assert second["training_cached"] is True
    assert second["model_sha256"] == first["model_sha256"]
    assert second["rows"] == 340

    # A training change invalidates the cache.
    settings["train"]["lr"] = 0.001
    third = augmentation_flow(**settings)
    assert third["training_cached"] is False


@pytest.mark.slow
def test_flow_writes_everything_to_s3(tmp_path, ray_session, s3):
    from pipelines.flow import augmentation_flow

    bucket = s3.new_bucket()
    settings = _settings(tmp_path, output_dir=f"s3://{bucket}/job")
    settings["train"]["storage_path"] = f"s3://{bucket}/runs"
    settings["flow"]["result_storage"] = f"s3://{bucket}/prefect-results"
    summary = augmentation_flow(**settings)
    assert summary["dataset_dir"].startswith(f"s3://{bucket}/job")
    assert open_dataset(summary["dataset_dir"]).rows == 340
    import s3fs

    fs = s3fs.S3FileSystem()
    assert fs.exists(f"{bucket}/job/model/model.safetensors")
    assert fs.exists(f"{bucket}/job/synthetic/_SUCCESS")


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"train": {"epochz": 3}}, "train.epochz"),
        ({"model": {"beta": -1}}, "model.beta"),
        ({"model": {"latent_dim": 0}}, "model.latent_dim"),
        ({"data": {"source": "imagenet"}}, "data.source"),
        ({"train": {"epochs": "many"}}, "train.epochs"),
    ],
)
def test_bad_config_fails_before_any_work(tmp_path, settings, words):
    from pipelines.flow import augmentation_flow

    settings = {**settings, "output_dir": str(tmp_path / "never")}
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
        augmentation_flow(**settings)
    assert not (tmp_path / "never").exists()  # nothing was written, no stage started


def test_serve_registers_a_cron_deployment(tmp_path):
    """`vaeaug serve --cron` registers the deployment with its schedule; found through the API."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    name = f"nightly-{os.getpid()}"
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    cmd = [
        sys.executable,
        "-m",
        "pipelines",
        "serve",
        "--name",
        name,
        "--cron",
        "0 3 * * *",
        "train.epochs=1",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        deployment = None
        deadline = time.monotonic() + 120
        while deployment is None and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
            with get_client(sync_client=True) as client:
                try:
                    deployment = client.read_deployment_by_name(f"vae-augmentation/{name}")
                except Exception:  # not registered yet
                    time.sleep(1)
        assert deployment is not None, "deployment never appeared"
        crons = [s.schedule.cron for s in deployment.schedules]
        assert crons == ["0 3 * * *"]
        assert deployment.parameters["overrides"] == ["train.epochs=1"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve_rejects_bad_cron_and_config(capsys):
    from pipelines.cli import main

    assert main(["serve", "--cron", "every day", "--name", "x"]) == 2
    assert "invalid cron" in capsys.readouterr().err
    assert main(["serve", "--cron", "0 3 * * *", "model.beta=-2"]) == 2
    assert "model.beta" in capsys.readouterr().err
