"""`open_dataset`: the manifest of a committed dataset, refusals of missing, uncommitted and tampered ones,
and on a directory of versions following `_LATEST` and refusing a bad pointer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipelines.dataset_format import LATEST
from pipelines.errors import DataError
from pipelines.generate import generate
from pipelines.readers import SyntheticDataset, open_dataset
from tests.pipelines.generate.helpers import make_cfg, save_tiny_model
from tests.pipelines.readers.conftest import ROWS


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of two committed versions (v1: 20 rows, v2: 30 rows), `_LATEST` -> v2."""
    root = tmp_path_factory.mktemp("versions")
    model = save_tiny_model(root / "model", conditional=True)
    for rows in (20, 30):
        cfg = make_cfg(str(root / "ds"), num_samples=rows, if_exists="new_version")
        generate(cfg, model_dir=model, progress=False, use_ray=False)
    return root / "ds"


@pytest.fixture
def copy(versions: Path, tmp_path: Path) -> Path:
    """A copy of `versions` to damage."""
    return Path(shutil.copytree(versions, tmp_path / "ds"))


def test_the_root_opens_the_latest_version_and_a_version_opens_itself(versions):
    latest = open_dataset(str(versions))
    assert (latest.url, latest.rows, latest.latest_of) == (f"{versions}/v2", 30, str(versions))
    assert all(f.startswith(f"{versions}/v2/data/") for f in latest.files)
    v1 = open_dataset(f"{versions}/v1")
    assert (v1.url, v1.rows, v1.latest_of) == (f"{versions}/v1", 20, None)


def test_a_pointer_to_a_missing_or_uncommitted_version_is_refused(copy):
    (copy / LATEST).write_text(json.dumps({"version": "v7", "rows": 1, "manifest_sha256": ""}))
    with pytest.raises(
        DataError, match=r"names v7, which is missing or not committed.*if_exists=new_version"
    ):
        open_dataset(str(copy))
    (copy / LATEST).write_text(json.dumps({"version": "v2"}))
    (copy / "v2" / "_SUCCESS").unlink()
    with pytest.raises(DataError, match="names v2, which is missing or not committed"):
        open_dataset(str(copy))


@pytest.mark.parametrize("content", ["{not json", '{"version": "../elsewhere"}', '{"rows": 3}', "[]"])
def test_an_unreadable_pointer_is_refused(copy, content):
    (copy / LATEST).write_text(content)
    with pytest.raises(DataError, match=f"the {LATEST} pointer of .* is unreadable"):
        open_dataset(str(copy))


def test_a_pointer_that_does_not_match_its_version_is_refused(copy):
    pointer = json.loads((copy / LATEST).read_text())
    (copy / LATEST).write_text(json.dumps({**pointer, "manifest_sha256": "0" * 64}))
    with pytest.raises(DataError, match="does not match the manifest of v2"):
        open_dataset(str(copy))


def test_versions_without_a_pointer_name_the_newest(copy):
    (copy / LATEST).unlink()
    with pytest.raises(DataError, match=r"holds versions \(v1, v2\) but no _LATEST pointer.*/ds/v2'"):
        open_dataset(str(copy))
    assert open_dataset(str(copy / "v1")).rows == 20


def test_open_dataset_reads_the_manifest(synthetic_dir):
    m = open_dataset(str(synthetic_dir))
    assert m.rows == ROWS and len(m.files) == 5 and m.latent_dim == 4 and m.image_shape == (1, 8, 8)
    assert m.class_names == [str(k) for k in range(10)] and m.provenance["model_sha256"]


def test_uncommitted_missing_and_tampered_datasets_are_refused(synthetic_dir, tmp_path):
    with pytest.raises(DataError, match="no synthetic dataset"):
        open_dataset(str(tmp_path / "nothing"))
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in synthetic_dir.rglob("*"):
        if p.is_file():
            (copy / p.relative_to(synthetic_dir)).parent.mkdir(parents=True, exist_ok=True)
            (copy / p.relative_to(synthetic_dir)).write_bytes(p.read_bytes())
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["rows"] += 1
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="does not match"):
        open_dataset(str(copy))
    (copy / "_SUCCESS").unlink()
    with pytest.raises(DataError, match=r"incomplete \(no _SUCCESS marker\)"):
        SyntheticDataset(str(copy))
