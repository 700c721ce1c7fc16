"""fsspec access of the file-based sources: one-line errors naming data.path, relative names, hidden files."""

from __future__ import annotations

import uuid

import fsspec
import pytest

from pipelines.data.filesystems import display_name, is_hidden, open_root, relative
from pipelines.errors import DataError


def test_local_and_memory_roots(tmp_path):
    fs, root = open_root(str(tmp_path) + "/", {})
    assert fs.protocol[0] in ("file", "local") and root == str(tmp_path)
    name = f"memory://fs-{uuid.uuid4().hex}"
    fsspec.filesystem("memory").pipe(f"{name}/a/b.png", b"x")
    fs, root = open_root(name, {})
    assert fs.exists(f"{root}/a/b.png")


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/no/such/folder", "data.path '/no/such/folder' does not exist: check the path or URL"),
        ("nosuchproto://bucket/x", "cannot open data.path 'nosuchproto://bucket/x'"),
    ],
)
def test_a_bad_root_is_one_line_naming_data_path(path, words):
    with pytest.raises(DataError) as caught:
        open_root(path, {})
    assert str(caught.value).startswith(words) and "\n" not in str(caught.value)


def test_relative_and_display_names():
    assert relative("bucket/root", "bucket/root/cat/1.png") == "cat/1.png"
    assert relative("C:/data", "C:/data\\cat\\1.png") == "cat/1.png"
    assert display_name("s3://bucket/root/", "cat/1.png") == "s3://bucket/root/cat/1.png"
    assert display_name("/x/file.parquet", "") == "/x/file.parquet"


def test_hidden_components():
    assert is_hidden(".DS_Store") and is_hidden("cat/.ipynb_checkpoints/1.png")
    assert not is_hidden("cat/1.png") and not is_hidden("cat/1.v2.png")
