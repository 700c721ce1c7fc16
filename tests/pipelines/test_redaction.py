"""Secrets never at rest: the redaction policy, the refusals, and planted credentials searched for in
everything a real job writes and in Prefect's API."""

from __future__ import annotations

import io
import json
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipelines.config import config_from_dict, load_config
from pipelines.console import Console
from pipelines.errors import DataError, StorageError
from pipelines.redaction import (
    REDACTED,
    find_secrets,
    has_credentials,
    override_secrets,
    redact_config,
    redact_overrides,
    redact_text,
    redact_url,
    refuse_secret_parameters,
)
from vae.config import ConfigError

#: Realistic non-secret fsspec options: they must survive redaction and never be refused.
PLAIN_OPTIONS = {
    "endpoint_url": "http://127.0.0.1:9000",
    "anon": False,
    "profile": "research",
    "client_kwargs": {"region_name": "eu-west-1", "endpoint_url": "http://minio:9000"},
    "config_kwargs": {"signature_version": "s3v4"},
    "token": "google_default",  # gcsfs: a way to find credentials, not one
    "session_ttl": 60,  # a number under a secret-looking key is a setting
}


def _planted() -> tuple[str, str]:
    """A fresh (access key, secret) pair nobody else writes: any occurrence is a leak."""
    tag = uuid.uuid4().hex[:16].upper()
    return f"AKIAPLANTED{tag}", f"planted/Secret+{tag.lower()}"


# ------------------------------------------------------------------------------------- policy
def test_redact_config_replaces_secret_values_and_keeps_settings():
    key, secret = _planted()
    options = {
        **PLAIN_OPTIONS,
        "key": key,
        "secret": secret,
        "client_kwargs": {**PLAIN_OPTIONS["client_kwargs"], "aws_session_token": secret},
        "credentials": {"type": "service_account", "private_key": secret},  # a whole token document
        "headers": [{"Authorization": f"Bearer {secret}"}],
    }
    tree = {"data": {"path": f"ftp://user:{secret}@host/imgs", "storage_options": options}}
    tree["generate"] = {"per_class": {"monkey": 40, "turkey": 2}, "output": "s3://bucket/out"}

    redacted = redact_config(tree)
    text = json.dumps(redacted)
    assert key not in text and secret not in text
    opts = redacted["data"]["storage_options"]
    assert opts["key"] == opts["secret"] == opts["credentials"] == REDACTED
    assert opts["client_kwargs"] == {**PLAIN_OPTIONS["client_kwargs"], "aws_session_token": REDACTED}
    assert opts["headers"] == [{"Authorization": REDACTED}]
    assert {k: opts[k] for k in PLAIN_OPTIONS if k != "client_kwargs"} == {
        k: v for k, v in PLAIN_OPTIONS.items() if k != "client_kwargs"
    }
    assert redacted["data"]["path"] == "ftp://host/imgs"
    assert redacted["generate"] == tree["generate"]  # class names are not keys, counts not secrets
    assert tree["data"]["storage_options"]["key"] == key  # a copy: the input is left as it was
    assert redact_config({"token": "x", "anon": True}) == {"token": REDACTED, "anon": True}


def test_find_secrets_names_paths_never_values():
    key, secret = _planted()
    tree = {
        "data": {"path": f"ftp://user:{secret}@host/x", "storage_options": {**PLAIN_OPTIONS, "key": key}},
        "generate": {"storage_options": {"client_kwargs": {"aws_secret_access_key": secret}}},
        "list": ["plain", f"https://u:{secret}@h/x"],
    }
    found = find_secrets(tree)
    assert found == [
        "data.path",
        "data.storage_options.key",
        "generate.storage_options.client_kwargs.aws_secret_access_key",
        "list[1]",
    ]
    assert find_secrets({"data": {"storage_options": PLAIN_OPTIONS}}) == []
    assert find_secrets({"token": "/secrets/service-account.json", "password": "", "key": None}) == []
    assert find_secrets(redact_config(tree)) == []  # a redacted tree holds nothing


@pytest.mark.parametrize(
    ("url", "shown", "credentials"),
    [
        ("s3://AKIA:s3cret@bucket/x", "s3://bucket/x", True),
        ("s3://AKIA:abc/def+g@Bucket/x", "s3://Bucket/x", True),  # unencoded "/" in an AWS secret
        ("https://u:p@Host:8443/x?q=1", "https://Host:8443/x?q=1", True),
        ("sftp://alice@host/x", "sftp://host/x", False),  # a user alone is redacted, not refused
        ("http://host:8080/a@b", "http://host:8080/a@b", False),  # host:port, then a path with "@"
        ("s3://bucket/path@v1", "s3://bucket/path@v1", False),
        ("/local/path", "/local/path", False),
    ],
)
def test_url_user_info(url, shown, credentials):
    assert redact_url(url) == shown
    assert has_credentials(url) is credentials
    assert (
        redact_text(f"cannot open data.path {url!r}: check it")
        == f"cannot open data.path {shown!r}: check it"
    )


def test_overrides_with_secrets_are_found_and_redacted():
    key, secret = _planted()
    overrides = [
        "train.epochs=3",
        f"data.storage_options.secret={secret}",
        f"generate.storage_options={{key: {key}, anon: false}}",
        f"data.path=ftp://u:{secret}@h/x",
        "data.storage_options.profile=research",
        "data.storage_options.endpoint_url=http://127.0.0.1:9000",
    ]
    assert override_secrets(overrides) == [
        "data.storage_options.secret",
        "generate.storage_options.key",
        "data.path",
    ]
    safe = redact_overrides(overrides)
    assert key not in str(safe) and secret not in str(safe)
    assert safe[0] == "train.epochs=3" and safe[1] == f"data.storage_options.secret={REDACTED}"
    assert safe[-2:] == overrides[-2:]


def test_refusal_is_one_line_naming_keys_and_the_fix():
    key, secret = _planted()
    refuse_secret_parameters({"data": {"storage_options": PLAIN_OPTIONS}}, ["train.epochs=2"])  # allowed
    with pytest.raises(ConfigError) as err:
        refuse_secret_parameters(
            {"data": {"storage_options": {"key": key}}}, [f"data.path=ftp://u:{secret}@h/x"]
        )
    message = str(err.value)
    assert "\n" not in message and key not in message and secret not in message
    assert "data.storage_options.key, data.path" in message
    assert "AWS_ACCESS_KEY_ID" in message and "never as flow parameters" in message


def test_saved_configs_are_redacted_and_still_load():
    key, secret = _planted()
    cfg = load_config(
        None,
        [
            f"data.storage_options={{key: {key}, secret: {secret}, endpoint_url: 'http://127.0.0.1:9000'}}",
            f"generate.output=ftp://writer:{secret}@host/out",
            f"train.storage_path=s3://{key}:{secret}@bucket/runs",
        ],
    )
    stored = cfg.to_dict(redact=True)
    assert key not in json.dumps(stored) and secret not in json.dumps(stored)
    assert stored["data"]["storage_options"]["endpoint_url"] == "http://127.0.0.1:9000"
    assert stored["generate"]["output"] == "ftp://host/out"
    assert stored["train"]["storage_path"] == "s3://bucket/runs"
    assert config_from_dict(stored).train.storage_path == "s3://bucket/runs"  # the record is a config


def test_error_messages_and_console_lines_lose_url_credentials():
    _, secret = _planted()
    url = f"s3://AKIA:{secret}@bucket/x"
    for exc in (DataError(f"cannot open data.path {url!r}"), StorageError(f"cannot write {url}")):
        assert secret not in str(exc) and "s3://bucket/x" in str(exc)
    out, mirrored = io.StringIO(), []
    console = Console(out=out)
    with console.mirrored(mirrored.append):
        console.line(f"dataset will go to {url}")
    console.plain(f"dataset: {url}")
    assert secret not in out.getvalue() + "".join(mirrored)
    assert mirrored == ["dataset will go to s3://bucket/x"]


# ---------------------------------------------------------------------------------- refusals
def test_vaeaug_run_and_serve_refuse_secret_overrides_before_anything_starts(capsys):
    from pipelines.cli import main
    from pipelines.launch import run_pipeline

    key, secret = _planted()
    for argv in (
        ["run", "train.epochs=1", f"data.storage_options.secret={secret}"],
        ["serve", "--cron", "0 3 * * *", f"generate.storage_options={{key: {key}}}"],
    ):
        assert main(argv) == 2
        captured = capsys.readouterr()
        assert key not in captured.out + captured.err and secret not in captured.out + captured.err
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and "never as flow parameters" in lines[0], lines
    with pytest.raises(ConfigError, match=r"overrides hold credentials \(data\.path\)"):
        run_pipeline(None, [f"data.path=ftp://u:{secret}@h/x"])
    assert "prefect-start" not in [t.name for t in threading.enumerate()]  # Prefect never started


def _api_dump(flow_run_id) -> str:
    """Everything Prefect's API holds about a flow run, as one text: the run (with its parameters),
    its task runs, logs and artifacts."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    parts = [run.model_dump_json(), *(t.model_dump_json() for t in tasks)]
    parts += [log.model_dump_json() for log in logs] + [a.model_dump_json() for a in artifacts]
    assert logs, "no logs reached the API: nothing was searched"
    return "\n".join(parts)


@pytest.mark.usefixtures("prefect_harness")
def test_flow_refuses_secret_parameters_before_prefect_stores_a_run(tmp_path):
    from prefect.client.orchestration import get_client

    from pipelines.flow import augmentation_flow

    key, secret = _planted()
    with get_client(sync_client=True) as client:
        before = {r.id for r in client.read_flow_runs()}
    with pytest.raises(ConfigError) as info:
        augmentation_flow(
            output_dir=str(tmp_path / "never"),
            data={"storage_options": {"key": key}},
            overrides=["train.epochs=1", f"data.storage_options.secret={secret}"],
        )
    error = str(info.value)
    assert "\n" not in error and "never as flow parameters" in error and secret not in error
    assert "data.storage_options.key, data.storage_options.secret" in error
    with get_client(sync_client=True) as client:
        runs = [r for r in client.read_flow_runs() if r.id not in before]
    assert runs == []  # no run, so no stored copy of the parameters
    assert not (tmp_path / "never").exists()  # refused before any work


@pytest.mark.usefixtures("prefect_harness")
def test_a_run_created_with_secret_parameters_is_redacted_and_refused(tmp_path):
    """A run created another way (the API, a UI form) carries its parameters already: the body
    replaces the stored copy with a redacted one, then refuses."""
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow

    from pipelines.flow import augmentation_flow

    _, secret = _planted()
    params = {"output_dir": str(tmp_path / "never"),
              "overrides": ["train.epochs=1", f"data.storage_options.secret={secret}"]}  # fmt: skip
    with get_client(sync_client=True) as client:
        run = client.create_flow_run(augmentation_flow, parameters=params)  # as the API would store them
    state = run_flow(augmentation_flow, flow_run=run, parameters=params, return_type="state")
    assert isinstance(state.result(raise_on_failure=False), ConfigError)
    dump = _api_dump(run.id)
    assert secret not in dump
    assert f"data.storage_options.secret={REDACTED}" in dump  # the stored parameters were replaced
    assert not (tmp_path / "never").exists()


# ------------------------------------------------------------------------------ end to end
def _grep_tree(root: Path, needles: tuple[str, ...], skip: Path) -> tuple[int, list[str]]:
    """(files read, "path: needle" for every needle found in any file under `root` but `skip`)."""
    found, count = [], 0
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p != skip):
        blob = path.read_bytes()
        count += 1
        found += [f"{path.relative_to(root)}: {n}" for n in needles if n.encode() in blob]
    return count, found


def test_train_writes_no_secret_in_config_model_or_console(tmp_path, capsys):
    from pipelines.cli import main

    key, secret = _planted()
    out = tmp_path / "job"
    code = main(
        [
            "train",
            f"output_dir={out}",
            "train.backend=local",
            "train.epochs=1",
            "train.min_steps=0",
            "model.hidden_channels=[8]",
            f"data.storage_options={{key: {key}, secret: {secret}, endpoint_url: 'http://127.0.0.1:9'}}",
            f"generate.output=ftp://writer:{secret}@host/out",
        ]
    )
    assert code == 0
    files, leaks = _grep_tree(out, (key, secret), skip=Path())
    assert files >= 5 and leaks == []
    printed = capsys.readouterr()
    assert secret not in printed.out + printed.err
    for name in ("config.yaml", "model/pipeline.yaml"):
        saved = yaml.safe_load((out / name).read_text())
        assert saved["data"]["storage_options"]["key"] == REDACTED
        assert saved["generate"]["output"] == "ftp://host/out"
    meta = json.loads((out / "model" / "config.json").read_text())
    assert json.dumps(meta).count(REDACTED) >= 2 and "http://127.0.0.1:9" in json.dumps(meta)


def _digits_parquet() -> bytes:
    """scikit-learn's digits as a Hugging Face-layout Parquet file (PNG bytes + int labels)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pngs = []
    for image in bunch.images:
        buf = io.BytesIO()
        Image.fromarray((np.asarray(image) * 255 / 16).astype(np.uint8), mode="L").save(buf, format="PNG")
        pngs.append({"bytes": buf.getvalue(), "path": None})
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({"image": pa.array(pngs, type=struct), "label": pa.array(bunch.target, pa.int64())})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness", "ray_session")
def test_planted_credentials_reach_no_file_and_no_prefect_record(tmp_path, s3):
    """The flow reads its data from S3 with credentials from the user's YAML file (s3fs signs every
    request with them; moto accepts any): they appear in no file the job writes (config.yaml,
    checkpoints, model, dataset, training cache) and nowhere in Prefect's API."""
    import fsspec

    from pipelines.flow import augmentation_flow
    from tests.pipelines.test_flow import _settings

    key, secret = _planted()
    bucket = s3.new_bucket()
    fsspec.filesystem("s3", **s3.storage_options()).pipe_file(f"{bucket}/digits.parquet", _digits_parquet())
    settings = _settings(tmp_path)
    options = {"key": key, "secret": secret, "client_kwargs": {"endpoint_url": s3.endpoint_url}}
    settings["data"] = {
        "source": "parquet",
        "path": f"s3://{bucket}/digits.parquet",
        "limit": 600,
        "storage_options": options,
    }
    settings["generate"].update({"num_samples": 60, "per_class": {}})
    settings["generate"]["storage_options"] = {"key": key, "secret": secret}  # fsspec's local fs ignores them
    settings["report"] = {"enabled": False}  # off to keep the test short: it stores no config
    user_file = tmp_path / "job.yaml"  # the user's own file: only its path becomes a parameter
    user_file.write_text(yaml.safe_dump(settings))

    state = augmentation_flow(config_path=str(user_file), return_state=True)
    assert state.result()["rows"] == 60

    checkpoints = sorted((tmp_path / "runs").glob("*/checkpoint_*/state.json"))
    assert checkpoints, "no checkpoint was written: nothing was searched"
    stored = json.loads(checkpoints[-1].read_text())["config"]
    assert stored["data"]["storage_options"] == {
        "key": REDACTED,
        "secret": REDACTED,
        "client_kwargs": {"endpoint_url": s3.endpoint_url},
    }
    files, leaks = _grep_tree(tmp_path, (key, secret), skip=user_file)
    assert files >= 20 and leaks == []
    for where in (
        "job/config.yaml",
        "job/model/pipeline.yaml",
        "job/model/config.json",
        "job/synthetic/_SUCCESS",
    ):
        assert (tmp_path / where).is_file(), where
    dump = _api_dump(state.state_details.flow_run_id)
    assert key not in dump and secret not in dump
    assert str(user_file) in dump  # the parameters were searched: the path is there, not the contents


def test_a_published_config_keeps_no_storage_options() -> None:
    """The manifest's copy of the config: storage options go whole (endpoints name private
    infrastructure), an empty mapping stays, URLs lose their user-info like everywhere else."""
    from pipelines.config import load_config
    from pipelines.redaction import REDACTED, publishable_config

    cfg = load_config(
        overrides=[
            "generate.storage_options.endpoint_url=http://minio.internal:9000",
            "generate.output=s3://AKIA:hunter2@bucket/out",
        ]
    )
    published = publishable_config(cfg.to_dict())
    assert published["generate"]["storage_options"] == REDACTED
    assert published["data"]["storage_options"] == {}
    assert "hunter2" not in str(published) and "minio.internal" not in str(published)
    assert published["train"] == cfg.to_dict()["train"]
