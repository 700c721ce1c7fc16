"""Test data for the streaming input path: tiny images that carry their own number in their pixels.

Image i (its position in the order `load_images` loads the source) is an 8x8 grayscale PNG whose
pixel (0, 0) is i // 256 and pixel (0, 1) is i % 256; the other pixels are a class pattern plus
seeded noise, so a model has something to learn. Decoded in [0, 1] (a sigmoid model's range), a
batch tells which images it holds (`image_numbers`), wherever it was read.

Sources are written through fsspec, so the same code writes a local folder and an S3 bucket:
`write_folder` (one subfolder per class, files "<class>/<i:04d>.png") and `write_parquet` (Hugging
Face layout: image struct<bytes, path> + int64 label, several files of several row groups).

`RankActor` builds a training worker's `_Shards` in a Ray actor and returns the image numbers of its
batches, so tests see exactly what each rank would train on.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch
from fsspec import AbstractFileSystem
from PIL import Image

if TYPE_CHECKING:
    from pipelines.training.worker import WorkerData
    from vae.config import VAEConfig

CLASSES = ["cat", "dog", "emu"]
IMAGE_TYPE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])


def class_of(i: int, n: int) -> int:
    """Class of image i of n: contiguous blocks, so loading by class then name keeps the numbering."""
    return i * len(CLASSES) // n


def numbered_png(i: int, label: int, salt: int = 0) -> bytes:
    """8x8 grayscale PNG of image i: its number in pixels (0, 0) and (0, 1), a class pattern elsewhere.

    Args:
        i: the image number (< 65536).
        label: its class index (decides the pattern).
        salt: changes the noise (another file with the same number and about the same size).
    """
    noise = np.random.default_rng([i, salt]).integers(0, 48, size=(8, 8))
    ramp = np.add.outer(np.arange(8), np.arange(8)) * (8 * (label + 1))  # (8, 8) class pattern
    pixels = ((ramp + noise) % 256).astype(np.uint8)
    pixels[0, 0], pixels[0, 1] = i // 256, i % 256
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def image_numbers(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """(B,) int64 numbers of a batch of such images, float (B, 1, 8, 8) in [0, 1]."""
    px = np.rint(np.asarray(x, dtype=np.float64)[:, 0, 0, :2] * 255.0).astype(np.int64)  # (B, 2)
    return px[:, 0] * 256 + px[:, 1]


def folder_rel(i: int, n: int) -> str:
    """Relative path of image i of n in a folder source."""
    return f"{CLASSES[class_of(i, n)]}/{i:04d}.png"


def write_folder(fs: AbstractFileSystem, root: str, n: int) -> list[str]:
    """Write n numbered images as a folder source under `root`; returns their relative paths in order."""
    rels = [folder_rel(i, n) for i in range(n)]
    fs.pipe({f"{root}/{rel}": numbered_png(i, class_of(i, n)) for i, rel in enumerate(rels)})
    return rels


def parquet_table(first: int, count: int, n: int, salt: int = 0) -> pa.Table:
    """Rows `first`..`first + count - 1` of n numbered images, HF layout with ClassLabel names."""
    rows = range(first, first + count)
    image = pa.array(
        [{"bytes": numbered_png(i, class_of(i, n), salt), "path": f"{i:04d}.png"} for i in rows],
        type=IMAGE_TYPE,
    )
    label = pa.array([class_of(i, n) for i in rows], pa.int64())
    features = {"image": {"_type": "Image"}, "label": {"names": CLASSES, "_type": "ClassLabel"}}
    meta = {"huggingface": json.dumps({"info": {"features": features}})}
    return pa.table({"image": image, "label": label}).replace_schema_metadata(meta)


def parquet_bytes(table: pa.Table, row_group: int) -> bytes:
    """A Parquet file of `table` with row groups of `row_group` rows."""
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=row_group)
    return buf.getvalue()


def write_parquet(
    fs: AbstractFileSystem, root: str, files: list[int], row_group: int
) -> list[tuple[str, list[int]]]:
    """Write numbered images as Parquet files "data/part-<k>.parquet" of `files[k]` rows each.

    Returns:
        Per file: (path relative to `root`, its row-group sizes).
    """
    n, first, out = sum(files), 0, []
    for k, count in enumerate(files):
        rel = f"data/part-{k}.parquet"
        fs.pipe_file(f"{root}/{rel}", parquet_bytes(parquet_table(first, count, n), row_group))
        out.append((rel, [min(row_group, count - s) for s in range(0, count, row_group)]))
        first += count
    return out


@ray.remote(num_cpus=0)
class RankActor:
    """One training rank's `_Shards` in its own process (as in a Ray Train worker)."""

    def __init__(self, model: VAEConfig, data: WorkerData, rank: int, world: int, batch: int):
        from pipelines.training.worker import _Shards

        self.shards = _Shards(model, data, rank, world, batch, torch.device("cpu"))

    def train(self, seed: int, data_epoch: int) -> list[tuple[list[int], list[int]]]:
        """(image numbers, labels) of each batch of one data epoch, in training order."""
        return _seen(self.shards.train_batches(seed, data_epoch))

    def passes(self, seed: int, data_epochs: list[int]) -> list[tuple[list[int], list[int]]]:
        """The same for consecutive data epochs read as one epoch's passes (one Ray Data execution)."""
        return _seen(self.shards.epoch_batches(seed, data_epochs))

    def val(self) -> list[int]:
        """Image numbers of this rank's share of the held-out split."""
        return [int(v) for x, _ in self.shards.val_batches() for v in image_numbers(x)]


def _seen(batches: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> list[tuple[list[int], list[int]]]:
    return [(image_numbers(x).tolist(), y.tolist()) for x, y in batches]
