"""A committed synthetic dataset as a Ray Data `Dataset` of decoded image tensors and labels.

`ray.data.read_parquet` alone gives the image column as PNG structs, which `iter_torch_batches`
cannot turn into tensors. `read_synthetic` reads exactly the committed files and decodes them:

>>> ds = read_synthetic("s3://bucket/synthetic")  # doctest: +SKIP
>>> batch = next(iter(ds.iter_torch_batches(batch_size=256)))  # doctest: +SKIP
>>> batch["image"].shape, batch["label"].dtype  # doctest: +SKIP
(torch.Size([256, 1, 28, 28]), torch.int64)

Import it from here or from `pipelines.readers` (which imports Ray only when it is asked for).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import ray.data

from pipelines.data.decode import decode_png
from pipelines.dataset_format import COLUMNS
from pipelines.errors import DataError
from pipelines.readers.manifest import SyntheticManifest, open_dataset
from pipelines.storage import first_line, join, redact_url

#: Decoded bytes aimed at per decode batch when `decode_batch_size` is not given.
_DECODE_BATCH_BYTES = 64 * 1024 * 1024
#: read_parquet arguments that `read_synthetic` sets itself.
_RESERVED = ("paths", "filesystem")


def read_synthetic(
    source: str | SyntheticManifest,
    storage_options: dict[str, Any] | None = None,
    *,
    columns: Sequence[str] = ("image", "label"),
    decode_batch_size: int | None = None,
    **read_parquet_args: Any,
) -> ray.data.Dataset:
    """Read a committed synthetic dataset with Ray Data, images decoded to float tensors.

    Reads exactly the files the manifest lists (an uncommitted dataset is refused like the PyTorch
    readers refuse it), then decodes in `map_batches`, so `ds.iter_torch_batches()` yields
    `{"image": float32 (B, C, H, W) in [0, 1], "label": int64 (B,)}`, and `latent` float32 (B, D)
    when asked for. Labels are -1 when the dataset is unconditional; the class names are
    `open_dataset(path).class_names`. Other columns (`sample_id`, `method`...) come as strings.
    Like any Ray Data read, the row order is not kept unless
    `ray.data.DataContext.get_current().execution_options.preserve_order = True`.

    Args:
        source: the dataset directory (local path on storage every node sees, s3://, gs://...) or an
            opened `SyntheticManifest`.
        storage_options: fsspec options for `source` (shipped to Ray's workers with the filesystem).
        columns: the columns to produce, in this order; any of `COLUMNS`.
        decode_batch_size: rows per decode task batch; None: about 64 MB of decoded images.
        **read_parquet_args: passed to `ray.data.read_parquet` (e.g. `shuffle="files"`,
            `override_num_blocks`, `ray_remote_args`).

    Returns:
        A lazy `ray.data.Dataset` with the requested columns.

    Raises:
        DataError: the dataset is missing, uncommitted or empty, or lives in `memory://` (Ray's worker
            processes cannot see it).
        ValueError: an unknown or repeated column, `decode_batch_size` < 1, or `read_parquet_args`
            setting what this function sets (`paths`, `filesystem`).
    """
    wanted = _check_arguments(columns, decode_batch_size, read_parquet_args)
    manifest = source if isinstance(source, SyntheticManifest) else open_dataset(source, storage_options)
    if not manifest.data["files"]:
        raise DataError(f"the synthetic dataset {redact_url(manifest.url)!r} has no rows: nothing to read")
    paths, filesystem = _paths_and_filesystem(manifest)
    ds = ray.data.read_parquet(paths, filesystem=filesystem, **read_parquet_args).select_columns(wanted)
    if decode_batch_size is None:
        c, h, w = manifest.image_shape
        decode_batch_size = max(1, min(4096, _DECODE_BATCH_BYTES // (4 * c * h * w)))
    return ds.map_batches(
        decode_batch,
        batch_format="pyarrow",
        batch_size=decode_batch_size,
        fn_kwargs={"image_shape": manifest.image_shape, "latent_dim": manifest.latent_dim},
    )


def _check_arguments(
    columns: Sequence[str], decode_batch_size: int | None, read_parquet_args: dict[str, Any]
) -> list[str]:
    """The requested columns as a list (each known and given once), the other arguments checked.

    Raises:
        ValueError: see `read_synthetic`.
    """
    wanted = [columns] if isinstance(columns, str) else list(columns)
    unknown = [c for c in wanted if c not in COLUMNS]
    if unknown or not wanted or len(set(wanted)) != len(wanted):
        raise ValueError(f"columns={wanted!r}: choose distinct names among {', '.join(COLUMNS)}")
    clash = sorted(set(read_parquet_args) & set(_RESERVED))
    if clash:
        raise ValueError(f"read_synthetic sets {', '.join(clash)} itself: leave it out of the arguments")
    if decode_batch_size is not None and decode_batch_size < 1:
        raise ValueError(f"decode_batch_size={decode_batch_size}: use a positive number of rows, or None")
    return wanted


def _paths_and_filesystem(manifest: SyntheticManifest) -> tuple[list[str], Any]:
    """The data files in the filesystem's notation, with the filesystem Ray's read tasks use.

    Local files go through pyarrow's native filesystem; other protocols through the fsspec
    filesystem built from the dataset's storage options (Ray wraps it for pyarrow).
    """
    fs, root = manifest.filesystem()
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    if "memory" in protocols:
        raise DataError(
            f"the synthetic dataset {redact_url(manifest.url)!r} lives in this process's memory://, which "
            "Ray's worker processes cannot see: write it to a local path or object storage for Ray"
        )
    paths = [join(root, f["path"]) for f in manifest.data["files"]]
    if "file" in protocols or "local" in protocols:
        return paths, pafs.LocalFileSystem()
    return paths, fs


def decode_batch(
    batch: pa.Table, image_shape: tuple[int, int, int], latent_dim: int
) -> dict[str, np.ndarray]:
    """Decode one Arrow batch of a synthetic dataset into numpy columns (the `map_batches` step).

    Args:
        batch: rows with any of the dataset's columns.
        image_shape: (C, H, W) of the stored images.
        latent_dim: length of the latent vectors.

    Returns:
        The same columns: `image` float32 (B, C, H, W) in [0, 1], `label` int64 (B,) with -1 for
        null, `latent` float32 (B, D), the string columns as object arrays.

    Raises:
        DataError: an image is missing, not a PNG, or not of the manifest's shape.
    """
    out: dict[str, np.ndarray] = {}
    for name in batch.column_names:
        column = batch.column(name)
        if name == "image":
            out[name] = _decode_images(column, image_shape)  # (B, C, H, W)
        elif name == "label":
            out[name] = column.fill_null(-1).to_numpy().astype(np.int64)  # (B,)
        elif name == "latent":
            flat = column.combine_chunks().flatten().to_numpy()
            out[name] = flat.reshape(-1, latent_dim).astype(np.float32, copy=False)  # (B, D)
        else:
            out[name] = column.to_numpy()  # (B,) object
    return out


def _decode_images(column: pa.ChunkedArray, image_shape: tuple[int, int, int]) -> np.ndarray:
    """PNG structs -> float32 (B, C, H, W) in [0, 1], with the one decoder of stored images."""
    blobs = pc.struct_field(column, "bytes").to_pylist()
    names = pc.struct_field(column, "path").to_pylist()
    out = np.empty((len(blobs), *image_shape), dtype=np.float32)  # (B, C, H, W)
    for i, blob in enumerate(blobs):
        try:
            if blob is None:
                raise ValueError("no image bytes")
            out[i] = decode_png(blob).numpy()  # (C, H, W)
        except (RuntimeError, ValueError) as exc:
            raise DataError(
                f"cannot decode image {names[i]!r} as a {image_shape} PNG ({first_line(exc)}): "
                "the dataset is damaged, re-run the generation"
            ) from None
    return out


__all__ = ["COLUMNS", "decode_batch", "read_synthetic"]
