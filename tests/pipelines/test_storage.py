"""pipelines.storage: joins, names, one-line errors and write probes on real filesystems."""

from __future__ import annotations

import os

import fsspec
import pytest

from pipelines.errors import StorageError
from pipelines.storage import (
    PROBE_PREFIX,
    basename,
    first_line,
    join,
    open_url,
    probe_writable,
    probe_writable_arrow,
    strip_slash,
)


@pytest.mark.parametrize(
    ("base", "names", "expected"),
    [
        ("/tmp/x", ("y",), "/tmp/x/y"),
        ("/tmp/x/", ("y",), "/tmp/x/y"),
        ("s3://bucket/a/", ("data", "part-0.parquet"), "s3://bucket/a/data/part-0.parquet"),
        ("s3://bucket", ("/lead",), "s3://bucket/lead"),
        ("/", ("a",), "/a"),
        ("memory://root", (), "memory://root"),
    ],
)
def test_join(base: str, names: tuple[str, ...], expected: str) -> None:
    assert join(base, *names) == expected


def test_basename_and_strip_slash() -> None:
    assert basename("s3://b/x/y/") == "y" and basename("/tmp/file.png") == "file.png"
    assert strip_slash("/tmp/x//") == "/tmp/x" and strip_slash("/") == "/"


def test_first_line() -> None:
    assert first_line(ValueError("bad value\n  traceback text")) == "bad value"
    assert first_line(ValueError("  \n")) == "ValueError"
    assert first_line(KeyError()) == "KeyError"


def test_open_url_gives_the_filesystem_and_its_root(tmp_path) -> None:
    fs, root = open_url(str(tmp_path) + "/")
    assert root == str(tmp_path) and fs.exists(root)
    fs, root = open_url("memory://store/a/")
    assert root == "/store/a" and "memory" in fs.protocol


def test_probe_writable_creates_the_folder_and_leaves_nothing(tmp_path) -> None:
    target = tmp_path / "new" / "folder"
    probe_writable(str(target), "output_dir")
    assert target.is_dir() and os.listdir(target) == []
    probe_writable("memory://probe-test/out", "generate.output")
    assert fsspec.filesystem("memory").ls("/probe-test/out") == []


def test_probe_writable_arrow_creates_the_folder_and_leaves_nothing(tmp_path) -> None:
    target = tmp_path / "runs" / "vae-1"
    probe_writable_arrow(str(target), "train.storage_path")
    assert target.is_dir() and not [n for n in os.listdir(target) if n.startswith(PROBE_PREFIX)]


@pytest.mark.parametrize("probe", [probe_writable, probe_writable_arrow])
def test_an_unwritable_location_is_one_line_naming_the_key_and_the_fix(tmp_path, probe) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(StorageError) as info:
        probe(str(blocker / "out"), "output_dir")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"output_dir '{blocker / 'out'}' is not writable (")
    assert message.endswith(
        "give a writable local path, or a URL whose bucket exists and whose credentials allow writes"
    )


def test_the_error_names_its_own_fix_and_never_the_credentials(tmp_path) -> None:
    blocker = tmp_path / "f"
    blocker.write_text("x")
    with pytest.raises(StorageError) as info:
        probe_writable(str(blocker), "generate.output", fix="choose another generate.output")
    assert str(info.value).endswith(": choose another generate.output")
    with pytest.raises(StorageError) as info:
        probe_writable("ftp://user:hunter2@127.0.0.1:1/out", "output_dir")
    assert "hunter2" not in str(info.value) and "output_dir 'ftp://" in str(info.value)
