"""The "parquet" source: Hugging Face-layout Parquet (image struct<bytes, path> + int label column).

`scan_parquet` lists a source (footers and the label column); `read_group_images` decodes the
wanted rows of one row group a batch at a time. Both the in-memory and the streaming path use them
(through `pipelines.data.index`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from pipelines.data.config import DataConfig
from pipelines.data.decode import ImageDecodeError, ImageHeader, decode_image, read_header
from pipelines.data.filesystems import display_name, is_hidden, open_root, relative
from pipelines.errors import DataError
from pipelines.storage import basename, first_line
from vae.config import MAX_CLASSES

_BATCH_ROWS = 1024


@dataclass
class ParquetListing:
    """What a Parquet source holds, from the footers and the label column (no image is read).

    Attributes:
        files: (full path on fs, display name, id prefix) of each file, sorted by path.
        groups: (K, 3) int64: per row group, its file index, its number in the file, its rows (after
            `data.limit`); ordered by file then group, so images are numbered as `load_listed` loads them.
        class_names: the ClassLabel names, or the distinct label values (see `load_listed`).
        labels: (N,) int64 class index of each image.
        sizes: (F,) bytes of each file.
        stamps: (F,) mtime or ETag of each file, for the fingerprint.
    """

    files: list[tuple[str, str, str]]
    groups: np.ndarray
    class_names: list[str]
    labels: np.ndarray
    sizes: list[int]
    stamps: list[str]

    def first_file_rows(self) -> np.ndarray:
        """(K,) the file row of each listed row group's first row."""
        rows = self.groups[:, 2]
        before = np.cumsum(rows) - rows  # rows of all earlier groups
        new_file = np.concatenate([[True], np.diff(self.groups[:, 0]) != 0])
        file_start = np.maximum.accumulate(np.where(new_file, before, 0))
        return (before - file_start).astype(np.int64)


def scan_parquet(data: DataConfig) -> tuple[AbstractFileSystem, ParquetListing]:
    """List a Parquet source: footers, schemas and the label column only (bounded by `data.limit`).

    Raises:
        DataError: as `load_listed`, for everything but the image bytes.
    """
    assert data.path is not None  # guaranteed by DataConfig
    fs, root = open_root(data.path, data.storage_options)
    files, groups, labels, sizes, stamps = [], [], [], [], []
    names: list[str] | None = None
    remaining = data.limit
    for full, name, rel in iter_parquet_files(fs, root, data.path):
        if remaining is not None and remaining <= 0:
            break
        info = fs.info(full)
        with fs.open(full, "rb") as fh:
            pfile = _open_parquet(fh, name)
            file_names = check_schema(pfile.schema_arrow, data.image_column, data.label_column, name)
            names = names if names is not None else file_names
            for row, batch in read_batches(pfile, name, [data.label_column], remaining):
                labels.append(_labels(batch.column(0), name, row))
                remaining = None if remaining is None else remaining - batch.num_rows
            meta = pfile.metadata
        rows_left = sum(len(x) for x in labels) - sum(int(g[2]) for g in groups)
        for g in range(meta.num_row_groups):
            take = min(meta.row_group(g).num_rows, rows_left)
            if take > 0:
                groups.append((len(files), g, take))
            rows_left -= take
        files.append((full, name, rel))
        sizes.append(int(info.get("size") or 0))
        stamps.append(str(info.get("ETag") or info.get("mtime") or info.get("LastModified") or ""))
    if not labels:
        raise _no_rows(data.path)
    class_names, dense = _classes(np.concatenate(labels), names, data.path)
    table = np.asarray(groups, dtype=np.int64).reshape(-1, 3)
    return fs, ParquetListing(files, table, class_names, dense, sizes, stamps)


def read_group_images(
    fs: AbstractFileSystem,
    listing: ParquetListing,
    group: int,
    rows: np.ndarray,
    image_column: str,
    size: tuple[int, int],
    channels: int,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Decode the wanted rows of one row group, a batch at a time (never the whole group at once).

    Args:
        fs: the filesystem.
        listing: the source's listing.
        group: row of `listing.groups`.
        rows: sorted row numbers within the group to decode.
        image_column: `data.image_column`.
        size: target (H, W).
        channels: target channels.

    Returns:
        Iterator of (rows decoded, float32 (n, C, H, W) in [0, 1]).

    Raises:
        DataError: a corrupt page or image (naming the file and row), an unreadable file.
    """
    file_index, number, _ = (int(v) for v in listing.groups[group])
    full, name, _ = listing.files[file_index]
    first = int(listing.first_file_rows()[group])
    try:
        fh = fs.open(full, "rb")
    except OSError as exc:
        raise DataError(f"cannot read Parquet file {name!r}: {first_line(exc)}; check access to it") from exc
    with fh:
        pfile = _open_parquet(fh, name)
        start = 0
        try:
            batches = pfile.iter_batches(batch_size=_BATCH_ROWS, row_groups=[number], columns=[image_column])
            for batch in batches:
                lo, hi = np.searchsorted(rows, [start, start + batch.num_rows])
                if hi > lo:
                    wanted = rows[lo:hi]
                    blobs = pc.struct_field(batch.column(0), "bytes").take(pa.array(wanted - start))
                    yield wanted, _decode_rows(blobs.to_pylist(), first + wanted, size, channels, name)
                start += batch.num_rows
        except (pa.ArrowException, OSError) as exc:
            raise DataError(
                f"corrupt Parquet data in {name!r} row group {number}: {first_line(exc)}; "
                "replace the file or write it again"
            ) from None


def _classes(labels: np.ndarray, names: list[str] | None, path: str) -> tuple[list[str], np.ndarray]:
    """Class names and int64 class indices of the loaded labels (see `load_listed`).

    Raises:
        DataError: a label beyond the ClassLabel names, or more than `MAX_CLASSES` classes.
    """
    if names is not None:
        if len(names) > MAX_CLASSES:
            raise DataError(
                f"the 'huggingface' metadata of {path!r} names {len(names)} classes, more than the "
                f"{MAX_CLASSES} a model can condition on: merge classes, or set conditional=false"
            )
        max_label = int(labels.max())
        if max_label >= len(names):
            raise DataError(
                f"label {max_label} in {path!r} is outside the {len(names)} ClassLabel names of the "
                f"'huggingface' metadata: fix the labels or the metadata's names"
            )
        return names, labels.astype(np.int64)
    # Without names the classes are the values present: sparse or huge values (a stray 50000) must
    # not make tens of thousands of classes that have no image (the model would sample them blind).
    values, dense = np.unique(labels, return_inverse=True)
    if len(values) > MAX_CLASSES:
        raise DataError(
            f"the labels of {path!r} hold {len(values)} distinct values, more than the {MAX_CLASSES} "
            "classes a model can condition on: check data.label_column, or set conditional=false"
        )
    return [str(int(v)) for v in values], dense.astype(np.int64).reshape(-1)


def read_batches(
    pfile: pq.ParquetFile, name: str, columns: list[str], limit: int | None = None
) -> Iterator[tuple[int, pa.RecordBatch]]:
    """Record batches of `columns`, one row group at a time, with the file row of each batch's first row.

    Args:
        pfile: the open Parquet file.
        name: its display name, for messages.
        columns: the columns to read.
        limit: stop after this many rows (None: all).

    Returns:
        Iterator of (first row, batch); batches hold at most `_BATCH_ROWS` rows.

    Raises:
        DataError: a page cannot be read or decompressed (a corrupt file whose footer is intact),
            naming the file and the row group.
    """
    row = 0
    for group in range(pfile.num_row_groups):
        try:
            for batch in pfile.iter_batches(batch_size=_BATCH_ROWS, row_groups=[group], columns=columns):
                if limit is not None and row + batch.num_rows > limit:
                    batch = batch.slice(0, limit - row)
                yield row, batch
                row += batch.num_rows
                if limit is not None and row >= limit:
                    return
        except (pa.ArrowException, OSError) as exc:
            raise DataError(
                f"corrupt Parquet data in {name!r} row group {group} (rows from {row}): {first_line(exc)}; "
                "replace the file or write it again"
            ) from None


def parquet_headers(data: DataConfig, max_images: int) -> list[ImageHeader]:
    """Headers of the first `max_images` images `load_listed` loads (only the image column is read,
    and the pixels are not decoded).

    Args:
        data: the data config (`path`, `storage_options`, `image_column`, `label_column`, `limit`).
        max_images: how many images to look at, at most.

    Returns:
        One `ImageHeader` per inspected row, in load order.

    Raises:
        DataError: as `load_listed` for a bad path, bad columns, missing or corrupt image bytes.
    """
    assert data.path is not None  # guaranteed by DataConfig
    fs, root = open_root(data.path, data.storage_options)
    wanted = max_images if data.limit is None else min(max_images, data.limit)
    headers: list[ImageHeader] = []
    for full, name, _ in iter_parquet_files(fs, root, data.path):
        if len(headers) >= wanted:
            break
        with fs.open(full, "rb") as fh:
            headers.extend(_file_headers(_open_parquet(fh, name), data, name, wanted - len(headers)))
    if not headers:
        raise _no_rows(data.path)
    return headers


def _file_headers(pfile: pq.ParquetFile, data: DataConfig, name: str, wanted: int) -> list[ImageHeader]:
    """Headers of the first `wanted` images of one Parquet file."""
    check_schema(pfile.schema_arrow, data.image_column, data.label_column, name)
    headers: list[ImageHeader] = []
    for first, batch in read_batches(pfile, name, [data.image_column], wanted):
        blobs = pc.struct_field(batch.column(0), "bytes").to_pylist()
        for row, blob in enumerate(blobs, start=first):
            try:
                headers.append(read_header(_image_bytes(blob, name, row)))
            except ImageDecodeError as exc:
                raise _corrupt(name, row, exc) from None
    return headers


def _open_parquet(fh: Any, name: str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(fh)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"cannot read Parquet file {name!r}: {first_line(exc)}") from exc


def _no_rows(path: str) -> DataError:
    return DataError(f"the Parquet data at data.path {path!r} has no rows: point it at non-empty files")


def iter_parquet_files(fs: AbstractFileSystem, root: str, path: str) -> Iterator[tuple[str, str, str]]:
    """The Parquet files at `root`: itself if a file, else every non-hidden *.parquet below it.

    Args:
        fs: the filesystem.
        root: the scheme-less root, as returned by `open_root`.
        path: the user's `data.path`, for names in messages.

    Returns:
        Iterator of (full path on fs, display name, id prefix), sorted by path.
    """
    if not fs.isdir(root):
        base = basename(root)
        yield root, path, base
        return
    try:
        found = sorted(fs.find(root))
    except OSError as exc:
        raise DataError(f"cannot list data.path {path!r}: {first_line(exc)}") from exc
    files = []
    for full in found:
        rel = relative(root, full)
        if rel.lower().endswith(".parquet") and not is_hidden(rel) and not rel.split("/")[-1].startswith("_"):
            files.append((full, rel))
    if not files:
        raise DataError(
            f"no .parquet files under data.path {path!r}: point it at a Parquet file or a folder of them"
        )
    for full, rel in files:
        yield full, display_name(path, rel), rel


def check_schema(schema: pa.Schema, image_column: str, label_column: str, name: str) -> list[str] | None:
    """Check the image and label columns of one file and read its ClassLabel names.

    Args:
        schema: the file's Arrow schema (with metadata).
        image_column: `data.image_column`.
        label_column: `data.label_column`.
        name: the file's display name, for messages.

    Returns:
        The label column's ClassLabel names from the `huggingface` metadata, or None.

    Raises:
        DataError: a column is missing or has the wrong type.
    """
    for key, column in (("image_column", image_column), ("label_column", label_column)):
        if column not in schema.names:
            raise DataError(
                f"column {column!r} not found in {name!r} (columns: {schema.names}): set data.{key} "
                "(data.image_column / data.label_column) to the right column"
            )
    image_type = schema.field(image_column).type
    if not (
        pa.types.is_struct(image_type)
        and image_type.get_field_index("bytes") >= 0
        and _is_binary(image_type.field(image_type.get_field_index("bytes")).type)
    ):
        raise DataError(
            f"column {image_column!r} in {name!r} has type {image_type}, not struct<bytes: binary, "
            "path: string> (Hugging Face Image): set data.image_column to the image column"
        )
    label_type = schema.field(label_column).type
    if not pa.types.is_integer(label_type):
        raise DataError(
            f"column {label_column!r} in {name!r} has type {label_type}, not an integer class index: "
            "set data.label_column to the integer label column"
        )
    return class_label_names(schema.metadata, label_column)


def class_label_names(metadata: dict[bytes, bytes] | None, label_column: str) -> list[str] | None:
    """ClassLabel names of `label_column` from the `huggingface` schema metadata, if any.

    Args:
        metadata: Arrow schema metadata.
        label_column: the label column's name.

    Returns:
        The names, or None when the metadata or the ClassLabel is absent or unreadable.
    """
    raw = (metadata or {}).get(b"huggingface")
    if not raw:
        return None
    try:
        info: Any = json.loads(raw)
        feature = info["info"]["features"][label_column]
        names = feature.get("names") if isinstance(feature, dict) else None
    except (ValueError, KeyError, TypeError):
        return None
    return [str(n) for n in names] if isinstance(names, list) and names else None


def _decode_rows(
    blobs: list[bytes | None], rows: np.ndarray, size: tuple[int, int], channels: int, name: str
) -> np.ndarray:
    """Decode image bytes to float32 (N, C, H, W) in [0, 1]; `rows` (file rows) name a bad one."""
    out = np.empty((len(blobs), channels, *size), dtype=np.float32)  # (N, C, H, W)
    for i, (blob, row) in enumerate(zip(blobs, rows.tolist(), strict=True)):
        try:
            out[i] = decode_image(_image_bytes(blob, name, row), size, channels)
        except ImageDecodeError as exc:
            raise _corrupt(name, row, exc) from None
    return out


def _image_bytes(blob: bytes | None, name: str, row: int) -> bytes:
    """A row's image bytes; a null is an error (path-only images are not supported)."""
    if blob is None:
        raise DataError(
            f"row {row} of {name!r} has no image bytes (path-only images are not supported): "
            "embed the image bytes in the Parquet file"
        )
    return blob


def _corrupt(name: str, row: int, exc: ImageDecodeError) -> DataError:
    return DataError(f"corrupt image in {name!r} row {row}: {exc}; remove or replace it")


def _labels(column: pa.Array, name: str, first_row: int) -> np.ndarray:
    """Integer labels of one batch; nulls and negatives are errors."""
    if column.null_count:
        row = first_row + column.is_null().to_pylist().index(True)
        raise DataError(f"row {row} of {name!r} has no label: fill in the label column or drop the row")
    values = column.to_numpy(zero_copy_only=False).astype(np.int64)
    if len(values) and values.min() < 0:
        idx = int(np.argmax(values < 0))
        raise DataError(
            f"row {first_row + idx} of {name!r} has label {int(values[idx])}: "
            "labels must be class indices >= 0 (drop unlabelled rows)"
        )
    return values


def _is_binary(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t)


__all__ = [
    "ParquetListing",
    "check_schema",
    "class_label_names",
    "iter_parquet_files",
    "parquet_headers",
    "read_batches",
    "read_group_images",
    "scan_parquet",
]
