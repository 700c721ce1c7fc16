"""The "parquet" source: Hugging Face tables (local, S3, written by `datasets`) load like the same
images in a folder; bad input (sparse or huge labels, too many classes, wrong columns, a corrupt image
or data page) is a one-line error.

Real Parquet files on local disk and a moto S3 server, read through `load_images` (and the CLI for
the exit code). No mocks.
"""

from __future__ import annotations

import io

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pipelines.cli import main
from pipelines.data import DataConfig, load_images
from pipelines.data.parquet import parquet_headers
from pipelines.errors import DataError
from tests.pipelines.data.imagetree import (
    EXPECTED_GRAY,
    EXPECTED_IDS,
    GRAY8,
    RGB12x10,
    hf_table,
    parquet_bytes,
    tree_files,
)
from vae.config import MAX_CLASSES

IMAGE_TYPE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (8, 8), value).save(buf, format="PNG")
    return buf.getvalue()


def _table(labels: list[int]) -> pa.Table:
    """One 8x8 grey PNG per label (grey level = the row's index), no Hugging Face metadata."""
    images = [{"bytes": _png(i % 256), "path": f"{i}.png"} for i in range(len(labels))]
    return pa.table({"image": pa.array(images, type=IMAGE_TYPE), "label": pa.array(labels, pa.int64())})


def _load(path) -> object:
    return load_images(DataConfig(source="parquet", path=str(path)), GRAY8)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize(
    ("labels", "names", "dense"),
    [
        pytest.param([0, 1, 1, 0], ["0", "1"], [0, 1, 1, 0], id="dense-unchanged"),
        pytest.param([0, 50_000, 0, 0], ["0", "50000"], [0, 1, 0, 0], id="one-stray-label"),
        pytest.param([3, 2_000_000_000, 7], ["3", "7", "2000000000"], [0, 2, 1], id="huge-label"),
        pytest.param([1, 2, 3, 1], ["1", "2", "3"], [0, 1, 2, 0], id="one-based"),
    ],
)
def test_sparse_labels_become_dense_classes_named_by_their_values(tmp_path, labels, names, dense):
    """Classes are the distinct labels present: no class without an image, no allocation by value."""
    pq.write_table(_table(labels), tmp_path / "x.parquet")
    loaded = _load(tmp_path / "x.parquet")
    assert loaded.class_names == names
    assert loaded.labels.tolist() == dense
    assert [loaded.class_names[k] for k in loaded.labels.tolist()] == [str(v) for v in labels]


def test_more_distinct_labels_than_the_class_limit_are_refused(tmp_path):
    # Only the label column is large; every row shares one tiny PNG.
    n = MAX_CLASSES + 1
    png = _png(7)
    images = pa.array([{"bytes": png, "path": None}] * n, type=IMAGE_TYPE)
    table = pa.table({"image": images, "label": pa.array(np.arange(n) * 3, pa.int64())})
    pq.write_table(table, tmp_path / "many.parquet")
    with pytest.raises(DataError) as err:
        _load(tmp_path / "many.parquet")
    text = _one_line(err)
    assert f"{n} distinct values" in text and str(MAX_CLASSES) in text and "data.label_column" in text


def _corrupt_first_page(path, column: str) -> None:
    """Overwrite the first data page of `column` in row group 1 with garbage; the footer stays intact."""
    group = pq.ParquetFile(path).metadata.row_group(1)
    leaf = {"label": "label", "image": "image.bytes"}[column]
    chunk = next(group.column(i) for i in range(group.num_columns) if group.column(i).path_in_schema == leaf)
    start = chunk.data_page_offset
    blob = bytearray(path.read_bytes())
    blob[start : start + 64] = b"\xff" * 64
    path.write_bytes(bytes(blob))


@pytest.mark.parametrize("column", ["label", "image"])
def test_a_corrupt_data_page_names_the_file_and_row_group(tmp_path, column, capsys):
    path = tmp_path / "damaged.parquet"
    pq.write_table(_table([0, 1] * 6), path, row_group_size=4, compression="snappy")
    _corrupt_first_page(path, column)
    assert pq.ParquetFile(path).metadata.num_rows == 12  # the footer still reads
    with pytest.raises(DataError) as err:
        _load(path)
    text = _one_line(err)
    assert "damaged.parquet" in text and "row group 1" in text and "replace the file" in text
    # Shape inference reads the image column the same way.
    if column == "image":
        with pytest.raises(DataError, match="row group 1"):
            parquet_headers(DataConfig(source="parquet", path=str(path)), 100)
    # The CLI: one line, exit 2, nothing written.
    out = tmp_path / "out"
    code = main(
        ["train", "data.source=parquet", f"data.path={path}", "model.image_size=[8,8]", "model.channels=1",
         "train.backend=local", f"output_dir={out}"]
    )  # fmt: skip
    err_text = capsys.readouterr().err.strip()
    assert code == 2 and len(err_text.splitlines()) == 1 and "row group 1" in err_text
    assert not (out / "model").exists()


# ----------------------------------------------------------------------------- Hugging Face tables


def test_parquet_local_and_s3(tmp_path, tree, s3):
    pq.write_table(hf_table(), tmp_path / "train.parquet")
    local = load_images(DataConfig(source="parquet", path=str(tmp_path / "train.parquet")), RGB12x10)
    assert local.class_names == ["cat", "dog", "emu"] and local.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert local.ids == [f"train.parquet#{i}" for i in range(6)]
    from_folder = load_images(DataConfig(source="folder", path=str(tree)), RGB12x10)
    assert torch.equal(local.images, from_folder.images)  # same bytes, same decoding

    bucket = s3.new_bucket()
    fs = fsspec.filesystem("s3", **s3.storage_options())
    table = hf_table()
    fs.pipe_file(f"{bucket}/ds/data/train-00001.parquet", parquet_bytes(table.slice(3)))
    fs.pipe_file(f"{bucket}/ds/data/train-00000.parquet", parquet_bytes(table.slice(0, 3)))
    fs.pipe_file(f"{bucket}/ds/_SUCCESS", b"")
    remote = load_images(DataConfig(source="parquet", path=f"s3://{bucket}/ds"), RGB12x10)  # env endpoint
    assert remote.ids == [f"data/train-00000.parquet#{i}" for i in range(3)] + [
        f"data/train-00001.parquet#{i}" for i in range(3)
    ]
    assert torch.equal(remote.images, local.images) and remote.fingerprint() == local.fingerprint()
    limited = load_images(DataConfig(source="parquet", path=f"s3://{bucket}/ds", limit=4), RGB12x10)
    assert limited.ids == remote.ids[:4]


def test_parquet_written_by_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    files = tree_files()
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog", "emu"])}
    )
    ds = datasets.Dataset.from_dict(
        {
            "image": [Image.open(io.BytesIO(files[rel])) for rel in EXPECTED_IDS],
            "label": [0, 0, 1, 1, 2, 2],
        },
        features=features,
    )
    ds.to_parquet(str(tmp_path / "hf.parquet"))
    s = load_images(DataConfig(source="parquet", path=str(tmp_path / "hf.parquet")), GRAY8)
    assert s.class_names == ["cat", "dog", "emu"] and s.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert (s.images.mean(dim=(1, 2, 3)) * 255).tolist() == pytest.approx(EXPECTED_GRAY, abs=3)


def test_parquet_without_metadata_falls_back(tmp_path):
    pq.write_table(hf_table(with_metadata=False, n=4), tmp_path / "x.parquet")
    s = load_images(DataConfig(source="parquet", path=str(tmp_path)), GRAY8)
    assert s.class_names == ["0", "1"] and s.ids == [f"x.parquet#{i}" for i in range(4)]


def test_parquet_errors(tmp_path):
    def load(path, **kw):
        return load_images(DataConfig(source="parquet", path=str(path), **kw), GRAY8)

    with pytest.raises(DataError, match="does not exist"):
        load(tmp_path / "missing.parquet")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .parquet files under"):
        load(tmp_path / "empty")

    table = hf_table(n=2)
    pq.write_table(table.rename_columns(["image", "target"]), tmp_path / "nolabel.parquet")
    with pytest.raises(DataError) as err:
        load(tmp_path / "nolabel.parquet")
    msg = str(err.value)
    assert "'label' not found" in msg and "['image', 'target']" in msg and "data.label_column" in msg

    wrong = pa.table({"image": pa.array(["a.png", "b.png"]), "label": pa.array([0, 1])})
    pq.write_table(wrong, tmp_path / "wrongtype.parquet")
    with pytest.raises(DataError, match=r"column 'image' .* has type string, not struct<bytes"):
        load(tmp_path / "wrongtype.parquet")

    corrupt = pa.table(
        {
            "image": pa.array(
                [table["image"][0].as_py(), {"bytes": b"broken", "path": "zz.png"}], type=table["image"].type
            ),
            "label": pa.array([0, 1]),
        }
    )
    pq.write_table(corrupt, tmp_path / "corrupt.parquet")
    with pytest.raises(DataError, match=r"corrupt image in '.*corrupt.parquet' row 1: cannot identify"):
        load(tmp_path / "corrupt.parquet")
    with pytest.raises(DataError, match="'lbl' not found"):
        load(tmp_path / "nolabel.parquet", label_column="lbl", image_column="image")
