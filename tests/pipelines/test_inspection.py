"""`vaeaug inspect`'s description: a typed, JSON-ready summary of a committed dataset and its text."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from pipelines.dataset_format import MANIFEST, MARKER
from pipelines.errors import DataError
from pipelines.inspection import (
    DatasetDescription,
    SchemaColumn,
    dataset_description,
    describe_dataset,
    render_description,
    schema_columns,
)

CLASSES = [str(k) for k in range(10)]


@pytest.fixture(scope="module")
def committed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A committed 60-row dataset of a tiny conditional model (no Ray, no usefulness report)."""
    from pipelines.generate import generate
    from tests.pipelines.generate.helpers import make_cfg, save_tiny_model

    root = tmp_path_factory.mktemp("describe")
    model_dir = save_tiny_model(root / "model", conditional=True)
    generate(
        make_cfg(str(root / "synthetic"), num_samples=60), model_dir=model_dir, progress=False, use_ray=False
    )
    return root / "synthetic"


def _edited_copy(src: Path, dst: Path, **changes: Any) -> str:
    """A copy of the dataset at `src` whose manifest has `changes` (None removes a key), re-sealed."""
    shutil.copytree(src, dst)
    manifest = json.loads((dst / MANIFEST).read_text())
    for key, value in changes.items():
        if value is None:
            manifest.pop(key, None)
        else:
            manifest[key] = value
    blob = json.dumps(manifest, indent=2).encode()
    (dst / MANIFEST).write_bytes(blob)
    marker = json.loads((dst / MARKER).read_text())
    marker["manifest_sha256"] = hashlib.sha256(blob).hexdigest()
    (dst / MARKER).write_text(json.dumps(marker))
    return str(dst)


def test_description_of_a_committed_dataset(committed: Path):
    d = dataset_description(str(committed))
    assert (d.rows, len(d.files), d.image_shape, d.latent_dim) == (60, 4, (1, 8, 8), 4)
    assert d.class_names == CLASSES and d.per_class == {c: 6 for c in CLASSES}
    assert d.per_method == {"prior": 60}
    assert [c.name for c in d.schema] == [
        "image", "latent", "label", "sample_id", "method", "source_id", "target_id"
    ]  # fmt: skip
    label = next(c for c in d.schema if c.name == "label")
    assert (label.type, label.class_names) == ("int64", CLASSES)
    assert not next(c for c in d.schema if c.name == "sample_id").nullable
    assert d.quality["rows_sampled"] == 16 and 0 < d.quality["pixel_mean"] < 1
    assert d.usefulness == {"skipped": "usefulness report off (report.enabled=false)"}
    assert "model_sha256" in d.provenance
    doc = json.loads(json.dumps(d.to_dict()))
    assert doc["image_shape"] == [1, 8, 8] and doc["schema"][2]["class_names"] == CLASSES


def test_describe_dataset_prints_the_committed_datasets_own_facts(committed: Path):
    """The text `vaeaug inspect` prints for a dataset as written: every figure is the manifest's."""
    manifest = json.loads((committed / MANIFEST).read_text())
    lines = describe_dataset(str(committed)).splitlines()
    assert lines[0] == f"dataset   {committed}  (committed {manifest['created_at']})"
    assert lines[1] == "rows      60 in 4 files, images 8x8x1 PNG, latent_dim 4"
    assert lines[2] == "per class " + ", ".join(f"{c}=6" for c in CLASSES)
    assert lines[3] == "methods   prior=60"
    prov = manifest["provenance"]
    assert lines[4] == (
        f"model     sha256 {prov['model_sha256'][:16]}  seed {prov['seed']}  "
        f"vaeaug {prov['vaeaug_version']}  torch {prov['torch_version']}"
    )
    assert lines[5] == f"preview   {committed}/preview.png" and (committed / "preview.png").is_file()
    assert lines[6] == "usefulness not measured: usefulness report off (report.enabled=false)"
    schema = lines[lines.index("schema") + 1 : lines.index("quality (sample of the first file)")]
    assert [line.split(":")[0].strip() for line in schema] == [
        "image", "latent", "label", "sample_id", "method", "source_id", "target_id"
    ]  # fmt: skip
    assert "  sample_id: string not null" in schema
    quality = dict(line.split() for line in lines[lines.index("quality (sample of the first file)") + 1 :])
    assert quality["rows_sampled"] == "16" and quality["duplicate_fraction"] == "0"
    assert 0 < float(quality["pixel_mean"]) < 1 and "prior_latent_std" in quality


def test_text_names_the_classes_and_the_usefulness_but_no_preview_when_the_manifest_has_none(
    committed, tmp_path
):
    path = _edited_copy(committed, tmp_path / "ds", preview=None)
    assert dataset_description(path).preview is None
    text = describe_dataset(path)
    assert "  label: int64  (class label, 10 classes: 0=0, 1=1, " in text
    assert "usefulness not measured: usefulness report off" in text
    assert "preview" not in text
    assert "per class 0=6, 1=6" in text


def test_preview_and_headline_come_from_the_manifest(committed, tmp_path):
    headline = "The synthetic set HELPS: +2.0 points"
    path = _edited_copy(
        committed, tmp_path / "ds", preview="preview.png", usefulness={"headline": headline, "gain": 0.02}
    )
    d = dataset_description(path)
    assert d.preview == f"{path}/preview.png"
    assert d.usefulness is not None and d.usefulness["gain"] == 0.02
    lines = render_description(d).splitlines()
    assert f"preview   {path}/preview.png" in lines
    assert f"usefulness {headline}" in lines


def test_older_manifests_without_features_take_the_class_names():
    schema = "label: int64\n  -- field metadata --\nmethod: string not null"
    manifest = {"arrow_schema": schema, "class_names": ["cat", "dog"]}
    assert schema_columns(manifest) == [
        SchemaColumn("label", "int64", True, ["cat", "dog"]),
        SchemaColumn("method", "string", False, None),
    ]
    features = {"label": {"dtype": "int64", "_type": "Value"}}  # unconditional: plain integers
    assert schema_columns({"arrow_schema": "label: int64", "features": features})[0].class_names is None


def test_long_class_lists_are_shortened_and_unconditional_sets_say_so():
    names = [f"c{k}" for k in range(25)]
    d = DatasetDescription(
        dataset="memory://x", created_at=None, rows=0, files=[], image_shape=(3, 4, 5), image_format="png",
        latent_dim=2, class_names=[], per_class={}, per_method={}, provenance={}, quality={},
        schema=[SchemaColumn("label", "int64", True, names)],
    )  # fmt: skip
    text = render_description(d)
    assert "c19, ... (5 more)" in text and "c20" not in text
    assert "per class (unconditional)" in text and "images 4x5x3 PNG" in text
    assert "committed ?" in text


def test_an_uncommitted_dataset_is_refused(committed, tmp_path):
    shutil.copytree(committed, tmp_path / "ds")
    (tmp_path / "ds" / MARKER).unlink()
    with pytest.raises(DataError, match="incomplete"):
        dataset_description(str(tmp_path / "ds"))


# ------------------------------------------------------------------------------ damaged files
def _damaged_copy(committed: Path, dst: Path, damage: dict[int, Any]) -> tuple[str, list[Path]]:
    """A copy of the dataset whose shard i is rewritten by `damage[i](bytes)`; its shards in order."""
    shutil.copytree(committed, dst)
    manifest = json.loads((dst / MANIFEST).read_text())
    shards = [dst / f["path"] for f in manifest["files"]]
    for index, edit in damage.items():
        shards[index].write_bytes(edit(shards[index].read_bytes()))
    return str(dst), shards


def _truncate(blob: bytes) -> bytes:
    return blob[: len(blob) // 2]


def _garble_footer(blob: bytes) -> bytes:
    """Same size, same trailing length and magic: only the footer's Thrift bytes are overwritten."""
    return blob[:-60] + b"\xff" * 52 + blob[-8:]


def _garble_pages(blob: bytes) -> bytes:
    """Same size, intact footer: the first data page (right after the leading magic) is overwritten."""
    return blob[:4] + b"\xff" * 64 + blob[68:]


def _inspect(path: str, capsys) -> tuple[int, str]:
    from pipelines.cli import main

    code = main(["inspect", path])
    return code, capsys.readouterr().err.strip()


def test_a_truncated_second_shard_is_not_called_healthy(committed, tmp_path, capsys):
    path, shards = _damaged_copy(committed, tmp_path / "ds", {1: _truncate})
    with pytest.raises(DataError) as info:
        dataset_description(path)
    text = str(info.value)
    assert "\n" not in text and shards[1].name in text and "re-run the generation" in text
    code, err = _inspect(path, capsys)
    assert code == 2 and len(err.splitlines()) == 1 and shards[1].name in err


@pytest.mark.parametrize("damage", [_garble_footer, _truncate], ids=["garbled-footer", "truncated"])
def test_a_damaged_first_shard_is_one_line_not_a_traceback(committed, tmp_path, capsys, damage):
    path, shards = _damaged_copy(committed, tmp_path / "ds", {0: damage})
    code, err = _inspect(path, capsys)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert shards[0].name in err and "Traceback" not in err


def test_every_file_with_a_broken_footer_is_listed(committed, tmp_path):
    path, shards = _damaged_copy(committed, tmp_path / "ds", {1: _garble_footer, 3: _garble_footer})
    with pytest.raises(DataError) as info:
        dataset_description(path)
    text = str(info.value)
    assert "damaged (2 file(s))" in text and "\n" not in text
    assert f"{shards[1].name} has no readable Parquet footer" in text and shards[3].name in text
    assert shards[0].name not in text and shards[2].name not in text


def test_damaged_pages_behind_an_intact_footer_are_one_line(committed, tmp_path, capsys):
    path, shards = _damaged_copy(committed, tmp_path / "ds", {0: _garble_pages})
    with pytest.raises(DataError, match=r"cannot read the first rows of .*part-00000") as info:
        dataset_description(path)
    assert "\n" not in str(info.value) and "re-run the generation" in str(info.value)
    code, err = _inspect(path, capsys)
    assert code == 2 and len(err.splitlines()) == 1
