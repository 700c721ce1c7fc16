"""The training cache: strictly validated JSON records, never pickles (issue 11, item 3).

Record tests use real files (local and the moto S3 server); the flow test runs the real flow on the
Prefect test server and the session's local Ray with a real pickle payload planted where the cache
and Prefect's result storage would look.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import pytest

from pipelines.training_cache import (
    FORMAT_VERSION,
    TrainingCache,
    TrainingRecord,
    load_record,
    record_path,
    save_record,
    training_cache_key,
    training_inputs,
    training_key,
)
from tests.pipelines.test_flow import _settings as flow_settings

HEX_A, HEX_B, HEX_C = "a" * 64, "b" * 64, "c" * 64
MODEL_DIR = "/jobs/x/model"


def _write_marker(path: str) -> dict:
    """What the planted payload runs when unpickled: proof of execution."""
    Path(path).write_text("executed")
    return {}


class Planted:
    """Unpickling this runs `_write_marker` (pickle calls what `__reduce__` names)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (_write_marker, (str(self.marker),))


def _payloads(marker: Path) -> dict[str, bytes]:
    """A bare pickle, and a Prefect result record asking for the pickle serializer; both checked live."""
    from prefect._internal.result_records import ResultRecord, ResultRecordMetadata
    from prefect.serializers import PickleSerializer

    bare = pickle.dumps(Planted(marker))
    meta = ResultRecordMetadata(storage_key="planted", serializer=PickleSerializer(picklelib="pickle"))
    prefect_record = ResultRecord(result=Planted(marker), metadata=meta).serialize()
    for blob, load in ((bare, pickle.loads), (prefect_record, ResultRecord.deserialize)):
        load(blob)  # the payload really runs code when loaded the unsafe way...
        assert marker.read_text() == "executed"
        marker.unlink()  # ...so an absent marker later means nothing loaded it that way
    return {"pickle": bare, "prefect-record": prefect_record}


def _record(**over) -> TrainingRecord:
    fields = {
        "model_dir": MODEL_DIR,
        "sha256": HEX_A,
        "history": [{"epoch": 1, "train_loss": 0.5, "val_loss": 0.25}, {"epoch": 2, "train_loss": 0.4}],
        "grid_path": MODEL_DIR + "/samples.png",
        "data_fingerprint": HEX_B,
        "key": HEX_C,
        "worker_nodes": ["node-1", None],
        "run_name": "vae-123",
        "run_dir": "/runs/vae-123",
    }
    return TrainingRecord(**{**fields, **over})


def _load(path: str) -> TrainingRecord | None:
    return load_record(path, HEX_C, HEX_B, MODEL_DIR)


def test_record_round_trips_through_a_local_file(tmp_path):
    path = record_path(str(tmp_path / "cache"), "/unused", HEX_C)
    assert path == f"{tmp_path}/cache/train/{HEX_C}.json"
    record = _record()
    save_record(path, record)
    assert _load(path) == record
    stored = json.loads(Path(path).read_text())  # plain JSON on disk
    assert stored["format"] == FORMAT_VERSION and stored["history"][0]["epoch"] == 1
    assert [p.name for p in Path(path).parent.iterdir()] == [f"{HEX_C}.json"]  # no temp file left


def test_record_round_trips_through_s3(s3):
    bucket = s3.new_bucket()
    path = record_path(None, f"s3://{bucket}/job", HEX_C)
    assert path == f"s3://{bucket}/job/.cache/train/{HEX_C}.json"
    save_record(path, _record())
    assert _load(path) == _record()


def test_absent_record_is_a_silent_miss(tmp_path, capsys):
    assert _load(str(tmp_path / "nope.json")) is None
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"sha256": "A" * 64}, "sha256 must be 64 hex digits"),
        ({"sha256": 12}, "sha256 must be 64 hex digits"),
        ({"history": [{"epoch": "1"}]}, "history must be"),
        ({"history": [{"train_loss": True}]}, "history must be"),
        ({"history": {"epoch": 1}}, "history must be"),
        ({"worker_nodes": [1]}, "worker_nodes must be"),
        ({"run_name": ["x"]}, "run_name must be"),
        ({"model_dir": ""}, "model_dir must be"),
        ({"format": FORMAT_VERSION + 1}, "format"),
        ({"format": True}, "format"),
        ({"extra": "x"}, "unknown fields \\['extra'\\]"),
        ({"key": HEX_A}, "key must be this run's key"),
        ({"data_fingerprint": HEX_A}, "data_fingerprint must be this data's"),
        ({"model_dir": "/elsewhere/model", "grid_path": "/elsewhere/model/s.png"}, "model_dir must be"),
        ({"grid_path": "/etc/passwd"}, "grid_path must be in model_dir"),
    ],
)
def test_a_record_that_does_not_validate_is_ignored_with_one_warning(tmp_path, capsys, change, words):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({**json.loads(_record().to_json()), **change}))
    assert _load(str(path)) is None
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and f"ignored the training cache record {path}" in out[0], out
    assert re.search(words, out[0]), out[0]


@pytest.mark.parametrize(
    "text",
    [
        '{"history": [{"loss": NaN}]}',
        "[1, 2]",
        "not json",
        '{"format": 1',
    ],
)
def test_non_records_are_ignored(tmp_path, capsys, text):
    path = tmp_path / "r.json"
    path.write_text(text)
    assert _load(str(path)) is None
    assert "ignored the training cache record" in capsys.readouterr().out


def test_pickle_payloads_are_never_executed(tmp_path, capsys):
    marker = tmp_path / "marker"
    for name, blob in _payloads(marker).items():
        path = tmp_path / f"{name}.json"
        path.write_bytes(blob)
        assert _load(str(path)) is None, name
        assert not marker.exists(), f"{name} was executed"
        assert "ignored the training cache record" in capsys.readouterr().out, name


def test_a_non_finite_history_is_not_written(tmp_path, capsys):
    path = tmp_path / "r.json"
    save_record(str(path), _record(history=[{"train_loss": float("nan")}]))
    assert not path.exists()
    assert "training cache not written" in capsys.readouterr().out


def test_key_follows_data_and_settings_but_not_secrets(tmp_path):
    from pipelines.config import load_config

    def inputs(*overrides: str) -> dict:
        base = [f"output_dir={tmp_path}", "data.storage_options.secret=hunter2"]
        return training_inputs(load_config(None, [*base, *overrides]))

    plain = inputs()
    secret_cfg = load_config(None, [f"output_dir={tmp_path}", "data.storage_options.secret=hunter2"])
    assert secret_cfg.to_dict()["data"]["storage_options"]["secret"] == "hunter2"  # it is set...
    assert "hunter2" not in json.dumps(plain)  # ...and kept out of the key's inputs
    key = training_key(plain, HEX_B)
    assert len(key) == 64 and key == training_key(inputs(), HEX_B)
    assert training_key(inputs("data.storage_options.secret=other"), HEX_B) == key
    assert training_key(plain, HEX_A) != key
    assert training_key(inputs("train.lr=0.001"), HEX_B) != key


def test_cache_keys_its_record_by_data_and_training_sections(tmp_path):
    from pipelines.config import load_config

    cfg = load_config(None, [f"output_dir={tmp_path / 'job'}"])
    cache = TrainingCache.open(cfg, HEX_B)
    assert cache.key == training_cache_key(cfg, HEX_B) == training_key(training_inputs(cfg), HEX_B)
    assert cache.path == f"{tmp_path}/job/.cache/train/{cache.key}.json"
    assert cache.model_dir == cfg.model_dir and cache.data_fingerprint == HEX_B
    elsewhere = load_config(None, [f"output_dir={tmp_path / 'job'}", f"flow.result_storage={tmp_path}/r/"])
    assert TrainingCache.open(elsewhere, HEX_B).path == f"{tmp_path}/r/train/{cache.key}.json"
    assert TrainingCache.open(cfg, HEX_A).key != cache.key


def test_cache_reuses_a_model_only_while_it_has_the_recorded_checksum(tmp_path, capsys):
    from pipelines.training.export import GRID_FILE, TrainResult
    from tests.pipelines.generate.helpers import save_tiny_model
    from vae.io import model_checksum

    model_dir = save_tiny_model(tmp_path / "model", conditional=False)
    cache = TrainingCache(str(tmp_path / "cache" / "r.json"), HEX_C, HEX_B, model_dir)
    assert cache.lookup() is None  # nothing stored yet
    result = TrainResult(model_dir, model_checksum(model_dir), [{"epoch": 1.0}], f"{model_dir}/{GRID_FILE}")
    record = TrainingRecord.of(result, HEX_B, HEX_C)
    assert (record.worker_nodes, record.run_name, record.run_dir) == ([], None, None)  # not Ray Train
    cache.store(record)
    assert cache.lookup() == record and capsys.readouterr().out == ""

    save_tiny_model(tmp_path / "model", conditional=False, seed=1)  # other weights, same place
    assert cache.lookup() is None
    assert f"cached model at {model_dir} is gone or changed: retraining" in capsys.readouterr().out
    (tmp_path / "model" / "model.safetensors").unlink()
    assert cache.lookup() is None


def test_record_of_a_ray_train_run_names_the_run_and_the_worker_nodes():
    from pipelines.training.ray_train import DistributedTrainResult

    result = DistributedTrainResult(
        MODEL_DIR, HEX_A, [], MODEL_DIR + "/samples.png", run_name="vae-1", run_dir="/runs/vae-1",
        workers=[{"rank": 0, "node_id": "n1"}, {"rank": 1}],
    )  # fmt: skip
    record = TrainingRecord.of(result, HEX_B, HEX_C)
    assert (record.worker_nodes, record.run_name, record.run_dir) == (["n1", None], "vae-1", "/runs/vae-1")
    assert (record.key, record.data_fingerprint, record.sha256) == (HEX_C, HEX_B, HEX_A)


# ----------------------------------------------------------------------------------- the flow
@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness", "ray_session")
def test_flow_ignores_planted_pickles_then_reuses_its_own_record(tmp_path, capsys):
    """Pickles planted at the record's path and where Prefect's result storage would look are not
    executed: the flow warns, trains, writes a valid record, and the next run reuses the model.
    Prefect itself persists nothing (its storage folders are left exactly as planted)."""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    from pipelines import stages
    from pipelines.checks import check_job
    from pipelines.config import load_config
    from pipelines.flow import augmentation_flow

    # test_flow's small job; local training and no usefulness report keep the two runs short
    settings = flow_settings(tmp_path, report={"enabled": False}, train={"backend": "local"})
    cfg = load_config(None, None, settings=settings)
    check_job(cfg)  # resolves the data's shape, as the flow does before keying
    key = training_cache_key(cfg, stages.load_data(cfg).fingerprint())
    marker = tmp_path / "marker"
    payloads = _payloads(marker)
    record = tmp_path / "prefect-results" / "train" / f"{key}.json"  # flow.result_storage
    record.parent.mkdir(parents=True)
    record.write_bytes(payloads["pickle"])
    prefect_dirs = [tmp_path / "prefect-local-storage", tmp_path / "prefect-results"]
    for folder in prefect_dirs:  # under the key's name, as Prefect's cache stored results
        for name, blob in payloads.items():
            (folder / f"{key}-{name}").parent.mkdir(parents=True, exist_ok=True)
            (folder / f"{key}-{name}").write_bytes(blob)
        (folder / key).write_bytes(payloads["prefect-record"])
    before = {f: sorted(p.name for p in f.iterdir()) for f in prefect_dirs}

    with temporary_settings({PREFECT_LOCAL_STORAGE_PATH: prefect_dirs[0]}):
        capsys.readouterr()
        first = augmentation_flow(**settings)
        out = capsys.readouterr().out
        assert not marker.exists(), "a planted payload was executed"
        assert first["training_cached"] is False
        assert f"ignored the training cache record {record}" in out
        assert TrainingRecord.from_json(record.read_text()).sha256 == first["model_sha256"]

        settings["generate"].update({"seed": 1, "if_exists": "overwrite"})
        second = augmentation_flow(**settings)
        out = capsys.readouterr().out
        assert second["training_cached"] is True
        assert second["model_sha256"] == first["model_sha256"]
        assert "reused the cached model: same data and training settings" in out

    assert not marker.exists()
    assert {f: sorted(p.name for p in f.iterdir()) for f in prefect_dirs} == before
