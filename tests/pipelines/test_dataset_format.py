"""The synthetic dataset's contract: file names, version names, the `_LATEST` pointer, the columns."""

from __future__ import annotations

import json

import fsspec
import pytest

from pipelines.dataset_format import (
    COLUMNS,
    DATA_DIR,
    LATEST,
    MARKER,
    PROVENANCE_KEY,
    LatestPointer,
    is_committed,
    list_entries,
    list_versions,
    read_latest,
    shard_path,
    version_name,
    version_number,
)


def test_the_writers_schema_has_the_contracts_columns_and_metadata_keys():
    from pipelines.generate.schema import arrow_schema

    schema = arrow_schema(3, ["a", "b"], {"seed": 1})
    assert tuple(schema.names) == COLUMNS
    assert json.loads(schema.metadata[PROVENANCE_KEY]) == {"seed": 1}


def test_shard_names_sort_in_shard_order_and_widen_past_five_digits():
    assert shard_path(3, 12) == f"{DATA_DIR}/part-00003-of-00012.parquet"
    assert shard_path(7, 123_456) == f"{DATA_DIR}/part-000007-of-123456.parquet"
    names = [shard_path(i, 100_000) for i in (2, 10, 99_999)]
    assert names == sorted(names)


@pytest.mark.parametrize(
    ("name", "number"), [("v1", 1), ("v12", 12), ("v0", None), ("v01", None), ("x3", None), ("v3/..", None)]
)
def test_version_names(name, number):
    assert version_number(name) == number
    if number is not None:
        assert version_name(number) == name


def test_latest_pointer_round_trips_and_refuses_paths():
    pointer = LatestPointer("v3", 20, "ab" * 32, "2026-11-22T03:00:00+00:00")
    assert LatestPointer.from_json(pointer.to_json()) == pointer
    for blob in (b'{"version": "../elsewhere"}', b'{"rows": 3}', b"[]"):
        with pytest.raises(ValueError, match="no valid version"):
            LatestPointer.from_json(blob)


def test_listing_a_directory_of_versions():
    fs = fsspec.filesystem("memory")
    root = "/dataset-format-test"
    assert list_entries(fs, root) == [] and read_latest(fs, root) is None
    for name in ("v10", "v2", "notes"):
        fs.pipe_file(f"{root}/{name}/{MARKER}", b"{}")
    fs.pipe_file(f"{root}/{LATEST}", LatestPointer("v10", 5, "x").to_json())
    assert list_entries(fs, root) == [LATEST, "notes", "v10", "v2"]
    assert list_versions(fs, root) == ["v2", "v10"]
    assert read_latest(fs, root) == LatestPointer("v10", 5, "x")
    assert is_committed(fs, f"{root}/v2") and not is_committed(fs, root)
    fs.rm(root, recursive=True)
