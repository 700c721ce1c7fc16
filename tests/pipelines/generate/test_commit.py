"""Commit protocol, output policies, dataset card and bad input (single-process path, no Ray)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import fsspec
import pytest
import yaml

from pipelines.errors import DataError, ModelError, PipelineError, StorageError
from pipelines.readers import open_dataset
from pipelines.storage import redact_url
from tests.pipelines.generate.helpers import run_local, snapshot


def test_commit_writes_manifest_card_and_marker_last(tmp_path, cond_model):
    out = tmp_path / "ds"
    res = run_local(out, cond_model, num_samples=40, per_class={"2": 6})
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "_SUCCESS",
        "data",
        "manifest.json",
        "preview.png",
    ]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rows"] == res.rows == 46
    assert [f["path"] for f in manifest["files"]] == [f"data/part-0000{i}-of-00003.parquet" for i in range(3)]
    for f in manifest["files"]:
        assert hashlib.sha256((out / f["path"]).read_bytes()).hexdigest() == f["sha256"]
    assert manifest["per_class"]["2"] == 4 + 6 and sum(manifest["per_class"].values()) == 46
    prov = manifest["provenance"]
    assert prov["model_sha256"] and prov["seed"] == 0 and prov["vaeaug_version"] and prov["created_at"]
    assert prov["seed_source"] == "fixed" and res.seed == 0 and res.version is None
    assert manifest["preview"] == "preview.png" and res.preview_path == f"{out}/preview.png"
    marker = json.loads((out / "_SUCCESS").read_text())
    assert marker["manifest_sha256"] == hashlib.sha256((out / "manifest.json").read_bytes()).hexdigest()
    assert (out / "_SUCCESS").stat().st_mtime_ns >= (out / "manifest.json").stat().st_mtime_ns


def test_dataset_card_front_matter_declares_the_features(tmp_path, cond_model):
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "ds"
    run_local(out, cond_model, num_samples=20)
    text = (out / "README.md").read_text()
    front = yaml.safe_load(text.split("---\n")[1])
    manifest = json.loads((out / "manifest.json").read_text())
    declared = datasets.Features._from_yaml_list(front["dataset_info"]["features"])
    assert declared == datasets.Features.from_dict(manifest["features"])
    assert front["configs"][0]["data_files"][0]["path"] == "data/*.parquet"


def test_existing_dataset_is_not_clobbered(tmp_path, cond_model):
    out = tmp_path / "ds"
    run_local(out, cond_model, num_samples=20)
    before = snapshot(out)
    with pytest.raises(StorageError, match="committed dataset already exists.*if_exists=overwrite"):
        run_local(out, cond_model, num_samples=30)
    assert snapshot(out) == before


def test_overwrite_swaps_to_a_new_version_then_removes_every_old_file(tmp_path, cond_model):
    out = tmp_path / "ds"
    run_local(out, cond_model, num_samples=60)  # 4 shards, unversioned at the root
    res = run_local(out, cond_model, num_samples=20, if_exists="overwrite")  # 2 shards
    assert (res.version, res.dataset_dir) == ("v1", f"{out}/v1")
    assert sorted(p.name for p in out.iterdir()) == ["_LATEST", "v1"]  # the old files went after the commit
    assert sorted(p.name for p in (out / "v1" / "data").iterdir()) == [Path(f).name for f in res.files]
    assert open_dataset(str(out)).rows == 20
    again = run_local(out, cond_model, num_samples=30, if_exists="overwrite")
    assert again.version == "v2" and sorted(p.name for p in out.iterdir()) == ["_LATEST", "v2"]
    assert open_dataset(str(out)).rows == 30


def test_leftover_uncommitted_dataset_is_refused_then_cleaned(tmp_path, cond_model):
    out = tmp_path / "ds"
    run_local(out, cond_model, num_samples=60)
    (out / "_SUCCESS").unlink()  # as if the job had died before committing
    with pytest.raises(DataError, match="incomplete"):
        open_dataset(str(out))
    res = run_local(out, cond_model, num_samples=20)  # if_exists=error: an uncommitted leftover is cleaned
    assert len(list((out / "data").iterdir())) == len(res.files) == 2


def test_directory_with_foreign_files_is_refused(tmp_path, cond_model):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(StorageError, match="not part of a vaeaug dataset"):
        run_local(tmp_path, cond_model)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_unwritable_output_fails_before_any_work(tmp_path, cond_model):
    (tmp_path / "file").write_text("x")
    with pytest.raises(
        StorageError,
        match=r"^generate\.output .* is not writable .*check the path, permissions and credentials",
    ):
        run_local(tmp_path / "file" / "ds", cond_model)


def test_memory_url_output(cond_model):
    url = "memory://vaeaug-tests/ds"
    res = run_local(url, cond_model, num_samples=20)
    fs = fsspec.filesystem("memory")
    assert fs.exists("/vaeaug-tests/ds/_SUCCESS") and open_dataset(url).rows == res.rows == 20
    fs.rm("/vaeaug-tests", recursive=True)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_samples": 0}, PipelineError, "nothing to generate"),
        ({"per_class": {"ten": 3}}, PipelineError, r"unknown class.*\['0', '1', '2'"),
    ],
)
def test_bad_requests_commit_nothing(tmp_path, cond_model, kwargs, error, match):
    with pytest.raises(error, match=match):
        run_local(tmp_path / "ds", cond_model, **kwargs)
    assert not (tmp_path / "ds").exists()


def test_per_class_on_unconditional_model(tmp_path, uncond_model):
    with pytest.raises(ModelError, match="needs a class-conditional model"):
        run_local(tmp_path / "ds", uncond_model, per_class={"3": 2})
    assert not (tmp_path / "ds").exists()


def test_missing_and_corrupt_model(tmp_path, cond_model):
    with pytest.raises(ModelError, match="no saved model"):
        run_local(tmp_path / "ds", str(tmp_path / "nope"))
    broken = tmp_path / "broken"
    shutil.copytree(cond_model, broken)
    blob = bytearray((broken / "model.safetensors").read_bytes())
    blob[-10:] = b"\x00" * 10
    (broken / "model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(ModelError, match="corrupt weights"):
        run_local(tmp_path / "ds", str(broken))
    assert not (tmp_path / "ds").exists()


def test_redact_url_drops_user_info():
    assert redact_url("s3://AKIA:s3cret@bucket/x") == "s3://bucket/x"
    assert redact_url("/local/path") == "/local/path"
