"""The "folder" source: a real tree of classes loads alike from local disk, memory:// and S3 (the
`s3` fixture, a moto server), and bad input (class folders without images, corrupt or missing files)
is a one-line error, never a made-up class.

Real files read through `load_images` and the CLI. No mocks.
"""

from __future__ import annotations

import io
import uuid

import fsspec
import pytest
import torch
from PIL import Image

from pipelines.cli import main
from pipelines.data import DataConfig, load_images
from pipelines.errors import DataError
from tests.pipelines.data.imagetree import (
    EXPECTED_GRAY,
    EXPECTED_IDS,
    GRAY8,
    RGB12x10,
    check_tree,
    tree_files,
    write_local,
)


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (8, 8), 90).save(buf, format="PNG")
    return buf.getvalue()


def _load(path: str) -> object:
    return load_images(DataConfig(source="folder", path=path), GRAY8)


def test_an_empty_class_folder_is_refused_by_name(tmp_path, capsys):
    root = write_local(tmp_path / "pets", {"cat/1.png": _png(), "dog/1.png": _png()}, empty=("emu",))
    with pytest.raises(DataError) as err:
        _load(str(root))
    text = str(err.value)
    assert "\n" not in text
    assert f"{root}/emu" in text and "has no image files" in text and "remove it or add images" in text
    # Through the CLI: one line, exit 2, no model.
    out = tmp_path / "out"
    args = ["data.source=folder", f"data.path={root}", "train.backend=local", f"output_dir={out}"]
    code = main(["train", *args])
    err_text = capsys.readouterr().err.strip()
    assert code == 2 and len(err_text.splitlines()) == 1 and "emu" in err_text
    assert not (out / "model").exists()


def test_a_class_folder_with_only_other_files_is_empty_too(tmp_path):
    files = {"cat/1.png": _png(), "dog/notes.txt": b"no images", "dog/clip.gif": b"GIF89a", "eel/x.txt": b""}
    with pytest.raises(DataError) as err:
        _load(str(write_local(tmp_path / "pets", files)))
    text = str(err.value)
    assert "dog" in text and "eel" in text and "remove them or add images" in text


def test_empty_class_folders_on_memory_storage(tmp_path):
    """fsspec backends list folders too: an empty one is refused the same way (memory://)."""
    root = f"memory://vaeaug-tests/{uuid.uuid4().hex}/pets"
    fs, path = fsspec.core.url_to_fs(root)
    fs.pipe_file(f"{path}/cat/1.png", _png())
    fs.pipe_file(f"{path}/dog/readme.txt", b"later")
    try:
        with pytest.raises(DataError, match=r"dog' of data.path has no image files"):
            _load(root)
        fs.pipe_file(f"{path}/dog/1.png", _png())  # the fix the message gives
        loaded = _load(root)
        assert loaded.class_names == ["cat", "dog"] and loaded.labels.tolist() == [0, 1]
    finally:
        fs.rm(path, recursive=True)


# ----------------------------------------------------------------------------- a real tree


def test_folder_local_gray_and_rgb(tree):
    gray = load_images(DataConfig(source="folder", path=str(tree)), GRAY8)
    check_tree(gray, GRAY8)
    means = (gray.images.mean(dim=(1, 2, 3)) * 255).tolist()
    assert means == pytest.approx(EXPECTED_GRAY, abs=3)  # JPEG is lossy

    rgb = load_images(DataConfig(source="folder", path=str(tree) + "/"), RGB12x10)
    check_tree(rgb, RGB12x10)
    red, green = rgb.images[0], rgb.images[2]
    assert red[0].min().item() == 1.0 and red[1:].max().item() == 0.0
    assert green[1].min().item() == 1.0 and green[[0, 2]].max().item() == 0.0
    assert load_images(DataConfig(source="folder", path=str(tree), limit=3), GRAY8).ids == EXPECTED_IDS[:3]


def test_folder_memory_and_s3_equal_local(tree, s3):
    local = load_images(DataConfig(source="folder", path=str(tree)), RGB12x10)

    mem_root = f"/tree-{uuid.uuid4().hex[:8]}"
    mem = fsspec.filesystem("memory")
    try:
        for rel, blob in tree_files().items():
            mem.pipe_file(f"{mem_root}/{rel}", blob)
        from_mem = load_images(DataConfig(source="folder", path=f"memory://{mem_root}"), RGB12x10)
    finally:
        mem.rm(mem_root, recursive=True)

    bucket = s3.new_bucket()
    s3fs_ = fsspec.filesystem("s3", **s3.storage_options())
    for rel, blob in tree_files().items():
        s3fs_.pipe_file(f"{bucket}/imgs/{rel}", blob)
    from_s3 = load_images(
        DataConfig(source="folder", path=f"s3://{bucket}/imgs", storage_options=s3.storage_options()),
        RGB12x10,
    )
    for other in (from_mem, from_s3):
        assert other.ids == local.ids and other.class_names == local.class_names
        assert torch.equal(other.images, local.images) and other.fingerprint() == local.fingerprint()

    s3fs_.pipe_file(f"{bucket}/imgs/dog/3.png", b"\x89PNG\r\n garbage")
    with pytest.raises(DataError, match=rf"corrupt image 's3://{bucket}/imgs/dog/3.png': cannot identify"):
        load_images(DataConfig(source="folder", path=f"s3://{bucket}/imgs"), GRAY8)  # env endpoint


def test_folder_errors(tmp_path, tree):
    def load(path):
        return load_images(DataConfig(source="folder", path=str(path)), GRAY8)

    with pytest.raises(DataError, match="does not exist: check the path or URL"):
        load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="has no class subfolders: put the images in one subfolder per class"):
        load(tmp_path / "empty")
    write_local(tmp_path / "noimg", {"a/readme.txt": b"x", "b/img.gif": b"GIF89a"})
    with pytest.raises(DataError, match=r"no image files under .*\['a', 'b'\].*\.png, \.jpg, \.jpeg"):
        load(tmp_path / "noimg")
    with pytest.raises(DataError, match="is a file, not a folder"):
        load(tree / "cat" / "a.png")
    bad = write_local(tmp_path / "bad", {"cat/ok.png": tree_files()["cat/a.png"], "cat/bad.png": b"nope"})
    with pytest.raises(DataError) as err:
        load(bad)
    msg = str(err.value)
    assert "corrupt image" in msg and "cat/bad.png" in msg and "remove or replace it" in msg
    assert "\n" not in msg and "BytesIO" not in msg
