"""The "folder" source on bad input: class folders without images are refused, not made classes.

Real files on local disk and fsspec memory://, read through `load_images` and the CLI. No mocks.
"""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import fsspec
import pytest
from PIL import Image

from pipelines.cli import main
from pipelines.data import DataConfig, load_images
from pipelines.errors import DataError
from vae.config import VAEConfig

GRAY8 = VAEConfig(image_size=(8, 8), channels=1)


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (8, 8), 90).save(buf, format="PNG")
    return buf.getvalue()


def _tree(root: Path, files: dict[str, bytes], empty: tuple[str, ...] = ()) -> Path:
    for rel, blob in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(blob)
    for name in empty:
        (root / name).mkdir(parents=True)
    return root


def _load(path: str) -> object:
    return load_images(DataConfig(source="folder", path=path), GRAY8)


def test_an_empty_class_folder_is_refused_by_name(tmp_path, capsys):
    root = _tree(tmp_path / "pets", {"cat/1.png": _png(), "dog/1.png": _png()}, empty=("emu",))
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
        _load(str(_tree(tmp_path / "pets", files)))
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
