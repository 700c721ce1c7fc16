"""The "parquet" source on bad input: sparse or huge labels, too many classes, a corrupt data page.

Real Parquet files on local disk, read through `load_images` (and the CLI for the exit code). No mocks.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.cli import main
from pipelines.data import DataConfig, load_images
from pipelines.data.parquet import parquet_headers
from pipelines.errors import DataError
from vae.config import MAX_CLASSES, VAEConfig

GRAY8 = VAEConfig(image_size=(8, 8), channels=1)
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
