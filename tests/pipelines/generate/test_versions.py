"""`generate.if_exists=new_version`: sibling versions v1/, v2/... and the `_LATEST` pointer."""

from __future__ import annotations

import json
import shutil

import fsspec
import pytest

from pipelines.dataset_format import LATEST, LatestPointer, read_latest
from pipelines.errors import StorageError
from pipelines.generate import generate
from pipelines.generate.commit import OutputTarget, open_fs, point_latest
from pipelines.generate.conditional import read_tagged
from pipelines.readers import SyntheticDataset, open_dataset
from tests.pipelines.generate.helpers import make_cfg, run_local, snapshot


def test_versions_are_siblings_and_latest_follows_the_newest(tmp_path, cond_model):
    out = tmp_path / "ds"
    v1 = run_local(out, cond_model, num_samples=20, if_exists="new_version")
    v1_files = snapshot(out / "v1")
    v2 = run_local(out, cond_model, num_samples=30, if_exists="new_version")
    v3 = run_local(out, cond_model, num_samples=10, if_exists="new_version")
    assert sorted(p.name for p in out.iterdir()) == [LATEST, "v1", "v2", "v3"]
    assert [r.dataset_dir for r in (v1, v2, v3)] == [f"{out}/v1", f"{out}/v2", f"{out}/v3"]
    assert (v3.output_dir, v3.version, v3.files[0]) == (
        str(out),
        "v3",
        f"{out}/v3/data/part-00000-of-00001.parquet",
    )
    assert all((out / v / "_SUCCESS").exists() for v in ("v1", "v2", "v3"))
    assert snapshot(out / "v1") == v1_files  # a committed version is never touched again
    pointer = json.loads((out / LATEST).read_text())
    marker = json.loads((out / "v3" / "_SUCCESS").read_text())
    assert pointer["version"] == "v3" and pointer["rows"] == 10
    assert pointer["manifest_sha256"] == marker["manifest_sha256"]
    latest = open_dataset(str(out))
    assert (latest.url, latest.rows, latest.latest_of) == (f"{out}/v3", 10, str(out))
    assert all(f.startswith(f"{out}/v3/") for f in latest.files)
    assert open_dataset(f"{out}/v1").rows == 20 and open_dataset(f"{out}/v1").latest_of is None
    assert len(list(SyntheticDataset(str(out)))) == 10  # the torch reader follows the pointer too


def test_unversioned_dataset_refuses_new_version_until_moved_into_v1(tmp_path, cond_model):
    out = tmp_path / "ds"
    run_local(out, cond_model, num_samples=20)
    before = snapshot(out)
    with pytest.raises(
        StorageError, match=r"holds an unversioned dataset.*move its files .* into '.*/ds/v1'"
    ):
        run_local(out, cond_model, num_samples=30, if_exists="new_version")
    assert snapshot(out) == before
    (out / "v1").mkdir()  # the fix the message names
    for p in list(out.iterdir()):
        if p.name != "v1":
            shutil.move(p, out / "v1" / p.name)
    res = run_local(out, cond_model, num_samples=30, if_exists="new_version")
    assert res.version == "v2" and open_dataset(str(out)).rows == 30 and open_dataset(f"{out}/v1").rows == 20


def test_a_directory_of_versions_refuses_error(tmp_path, cond_model):
    out = tmp_path / "ds"
    run_local(out, cond_model, num_samples=20, if_exists="new_version")
    before = snapshot(out)
    with pytest.raises(StorageError, match=r"committed dataset already exists.*if_exists=overwrite"):
        run_local(out, cond_model, num_samples=30)
    assert snapshot(out) == before
    shutil.rmtree(out / "v1")  # versions but nothing committed: still not a place for an unversioned set
    (out / LATEST).unlink()
    (out / "v1").mkdir()
    with pytest.raises(StorageError, match=r"holds versions \(v1\).*if_exists=error.*new_version to add v2/"):
        run_local(out, cond_model, num_samples=30)


def test_overwrite_of_versions_keeps_only_the_new_one(tmp_path, cond_model):
    out = tmp_path / "ds"
    run_local(out, cond_model, num_samples=20, if_exists="new_version")
    run_local(out, cond_model, num_samples=20, if_exists="new_version")
    res = run_local(out, cond_model, num_samples=10, if_exists="overwrite")
    assert res.version == "v3" and sorted(p.name for p in out.iterdir()) == [LATEST, "v3"]
    assert open_dataset(str(out)).rows == 10


def test_a_failed_version_is_skipped_and_the_pointer_stays(tmp_path, cond_model):
    out = tmp_path / "ds"
    run_local(out, cond_model, num_samples=20, if_exists="new_version")
    shutil.copytree(out / "v1" / "data", out / "v2" / "data")  # v2: a run that died before its commit
    assert open_dataset(str(out)).url == f"{out}/v1"
    res = run_local(out, cond_model, num_samples=30, if_exists="new_version")
    assert res.version == "v3" and open_dataset(str(out)).url == f"{out}/v3"  # v2's number is never reused
    assert not (out / "v2").exists()  # a dead job's leftover: removed under the next job's lease


def test_uncommitted_leftovers_at_the_root_are_cleaned(tmp_path, cond_model):
    out = tmp_path / "ds"
    run_local(out, cond_model, num_samples=20)
    (out / "_SUCCESS").unlink()  # an unversioned run that died before its commit
    res = run_local(out, cond_model, num_samples=30, if_exists="new_version")
    assert res.version == "v1" and sorted(p.name for p in out.iterdir()) == [LATEST, "v1"]


def test_the_pointer_moves_only_from_what_the_job_found(tmp_path, cond_model):
    out = tmp_path / "ds"
    run_local(out, cond_model, num_samples=20, if_exists="new_version")
    fs, root = open_fs(str(out))
    found_v1 = read_tagged(fs, f"{root}/{LATEST}")[1]
    run_local(out, cond_model, num_samples=30, if_exists="new_version")
    # A job that found v1 as the latest, and committed its version after v2 moved the pointer:
    late = OutputTarget(f"{out}/v3", fs, f"{root}/v3", base_url=str(out), base_root=root, version="v3",
                        latest_tag=found_v1)  # fmt: skip
    with pytest.raises(StorageError, match="another job moved _LATEST.*v3 is complete but not the latest"):
        point_latest(late, LatestPointer("v3", 20, "x"))
    assert read_latest(fs, root).version == "v2"
    assert not list(out.glob(".vaeaug-*"))  # no temporary file left


def test_versions_on_an_object_store_url(cond_model):
    url = "memory://vaeaug-versions/ds"
    try:
        run_local(url, cond_model, num_samples=20, if_exists="new_version")
        res = run_local(url, cond_model, num_samples=10, if_exists="new_version")
        assert res.dataset_dir == f"{url}/v2"
        latest = open_dataset(url)
        assert (latest.url, latest.rows) == (f"{url}/v2", 10)
    finally:
        fsspec.filesystem("memory").rm("/vaeaug-versions", recursive=True)


def test_versions_on_s3(s3, cond_model):
    url = f"s3://{s3.new_bucket()}/synthetic"
    opts = s3.storage_options()
    for rows in (20, 10):
        cfg = make_cfg(url, num_samples=rows, if_exists="new_version", storage_options=opts)
        res = generate(cfg, model_dir=cond_model, progress=False, use_ray=False)
    assert (res.dataset_dir, res.output_dir) == (f"{url}/v2", url)
    latest = open_dataset(url, opts)
    assert (latest.url, latest.rows) == (f"{url}/v2", 10) and open_dataset(f"{url}/v1", opts).rows == 20
    fs, root = open_fs(url, opts)
    assert read_latest(fs, root).version == "v2"
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)) == [LATEST, "v1", "v2"]
