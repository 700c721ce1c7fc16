"""`SourceIndex`: a "folder" or "parquet" source listed, not loaded, for the streaming path.

The driver lists the files (a folder's names, sizes and mtimes or ETags; Parquet footers and the
label column) and keeps per image only its label and its chunk: the unit a reader fetches at once
(a folder's file, a Parquet row group). From that alone it derives the class list, the held-out split
(the same as `ImageSet.split`'s), the data fingerprint and the size on storage. The pixels are read
later, a chunk at a time, by `SourceIndex.read`: in Ray Data tasks while training, or in the driver
for a bounded sample (`pipelines.data.stream`).

Everything per image is a numpy or Arrow array, so a million images cost the driver tens of MB and
pass through Ray's object store without a copy.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from pipelines.data.config import DataConfig
from pipelines.data.decode import ImageDecodeError, decode_image
from pipelines.data.filesystems import display_name, open_root
from pipelines.data.folder import corrupt_image, scan_folder, unreadable_image
from pipelines.data.parquet import ParquetListing, read_group_images, scan_parquet
from pipelines.storage import join

#: Folder files fetched per round trip (s3fs fetches a round concurrently).
FETCH_BATCH = 256
#: Sources the streaming path can read.
STREAMABLE = ("folder", "parquet")


@dataclass
class SourceIndex:
    """A listed source: per image a label and a chunk, per chunk where to read it.

    Attributes:
        data: the data config it was listed from.
        size: target (H, W) of the decoded images.
        channels: target channels, 1 or 3.
        class_names: the class names, as the in-memory loader gives them.
        labels: (N,) int64 class index per image, in the loader's order.
        chunk_of: (N,) int64 non-decreasing chunk per image: a folder's file, a Parquet row group.
        nbytes: bytes on storage of the listed files.
        fingerprint: sha256 hex of the listing (names, sizes, stamps, labels) and the target shape.
        rels: folder: (N,) Arrow strings, each file relative to the root; None for Parquet.
        file_sizes: folder: (N,) int64 bytes of each file, so a read asks for exactly them (s3fs
            would first ask each object's size); None for Parquet.
        parquet: the Parquet listing (files and row groups); None for a folder.
    """

    data: DataConfig
    size: tuple[int, int]
    channels: int
    class_names: list[str]
    labels: np.ndarray
    chunk_of: np.ndarray
    nbytes: int
    fingerprint: str
    rels: pa.Array | None = None
    file_sizes: np.ndarray | None = None
    parquet: ParquetListing | None = None

    def __len__(self) -> int:
        return int(len(self.labels))

    @property
    def image_bytes(self) -> int:
        """Bytes of one decoded float32 (C, H, W) image."""
        return 4 * self.channels * self.size[0] * self.size[1]

    def chunk_starts(self) -> np.ndarray:
        """(K + 1,) int64: chunk k holds images [starts[k], starts[k + 1])."""
        if self.parquet is None:
            return np.arange(len(self) + 1, dtype=np.int64)
        return np.concatenate([[0], np.cumsum(self.parquet.groups[:, 2])]).astype(np.int64)

    def ids(self, items: np.ndarray) -> list[str]:
        """The ids `load_images` gives these images ("cat/001.png", "part-0.parquet#12")."""
        if self.rels is not None:
            return self.rels.take(pa.array(items, pa.int64())).to_pylist()
        assert self.parquet is not None
        starts = self.chunk_starts()
        items = np.asarray(items, dtype=np.int64)
        groups = np.searchsorted(starts, items, side="right") - 1
        rows = items - starts[groups] + self.parquet.first_file_rows()[groups]  # row within its file
        rels = [self.parquet.files[int(f)][2] for f in self.parquet.groups[:, 0]]
        return [f"{rels[g]}#{r}" for g, r in zip(groups.tolist(), rows.tolist(), strict=True)]

    def read(self, items: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Decode images in the given order, at most a chunk or `FETCH_BATCH` files at a time.

        Args:
            items: image numbers; within one chunk in increasing order (as the plans give them).

        Returns:
            Iterator of (items, float32 (n, C, H, W) in [0, 1]), covering `items` in order.

        Raises:
            DataError: an unreadable or corrupt file (the same one-line message as `load_images`).
        """
        items = np.asarray(items, dtype=np.int64)
        fs, root = open_root(self.data.path or "", self.data.storage_options)
        if self.rels is not None:
            for start in range(0, len(items), FETCH_BATCH):
                part = items[start : start + FETCH_BATCH]
                yield part, self._read_files(fs, root, self.rels.take(pa.array(part)).to_pylist(), part)
            return
        yield from self._read_groups(fs, items)

    def _read_files(self, fs: Any, root: str, rels: list[str], items: np.ndarray) -> np.ndarray:
        assert self.file_sizes is not None
        ends = self.file_sizes[items].tolist()  # listed sizes: no size request per object
        blobs = fs.cat_ranges([join(root, rel) for rel in rels], [0] * len(rels), ends, on_error="return")
        out = np.empty((len(rels), self.channels, *self.size), dtype=np.float32)  # (n, C, H, W)
        for i, (rel, blob) in enumerate(zip(rels, blobs, strict=True)):
            name = display_name(self.data.path or "", rel)
            if isinstance(blob, BaseException):
                raise unreadable_image(name, blob)
            try:
                out[i] = decode_image(blob, self.size, self.channels)
            except ImageDecodeError as exc:
                raise corrupt_image(name, exc) from None
        return out

    def _read_groups(self, fs: Any, items: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        assert self.parquet is not None
        starts = self.chunk_starts()
        groups = np.searchsorted(starts, items, side="right") - 1
        cuts = np.flatnonzero(np.diff(groups)) + 1
        for part, group in zip(np.split(items, cuts), groups[np.concatenate([[0], cuts])], strict=False):
            if not len(part):
                continue
            rows = part - starts[group]
            for got, images in read_group_images(
                fs, self.parquet, int(group), rows, self.data.image_column, self.size, self.channels
            ):
                yield got + starts[group], images


def index_source(data: DataConfig, size: tuple[int, int], channels: int) -> SourceIndex:
    """List a "folder" or "parquet" source without reading its images.

    Args:
        data: the data config (`source` in `STREAMABLE`).
        size: target (H, W).
        channels: target channels.

    Returns:
        The `SourceIndex`, in the order `load_images` would load the images.

    Raises:
        DataError: the same one-line errors as `load_images` for the path, the listing, the schema
            and the labels (corrupt images are found when read).
    """
    if data.source == "folder":
        return _index_folder(data, size, channels)
    return _index_parquet(data, size, channels)


def _index_folder(data: DataConfig, size: tuple[int, int], channels: int) -> SourceIndex:
    """A folder listed: one chunk per file; the fingerprint covers names, sizes and mtimes or ETags."""
    _, listing = scan_folder(data)
    labels = listing.labels()
    header = _header(data, size, channels, listing.class_names, len(labels))
    return SourceIndex(
        data=data,
        size=size,
        channels=channels,
        class_names=listing.class_names,
        labels=labels,
        chunk_of=np.arange(len(labels), dtype=np.int64),
        nbytes=int(listing.sizes.sum()),
        fingerprint=_digest(header, labels, listing.stamps),
        rels=pa.array(listing.rels, pa.string()),
        file_sizes=listing.sizes,
    )


def _index_parquet(data: DataConfig, size: tuple[int, int], channels: int) -> SourceIndex:
    """Parquet files listed: one chunk per row group; the fingerprint covers files, stamps and groups."""
    _, pq_listing = scan_parquet(data)
    files = [
        [rel, size_, stamp]
        for (_, _, rel), size_, stamp in zip(
            pq_listing.files, pq_listing.sizes, pq_listing.stamps, strict=True
        )
    ]
    header = _header(data, size, channels, pq_listing.class_names, len(pq_listing.labels))
    header["files"] = files
    header["groups"] = pq_listing.groups.tolist()
    return SourceIndex(
        data=data,
        size=size,
        channels=channels,
        class_names=pq_listing.class_names,
        labels=pq_listing.labels,
        chunk_of=np.repeat(np.arange(len(pq_listing.groups)), pq_listing.groups[:, 2]).astype(np.int64),
        nbytes=int(sum(pq_listing.sizes)),
        fingerprint=_digest(header, pq_listing.labels, np.zeros(0, np.uint64)),
        parquet=pq_listing,
    )


def _header(
    data: DataConfig, size: tuple[int, int], channels: int, class_names: list[str], n: int
) -> dict[str, Any]:
    return {
        "source": data.source,
        "shape": [channels, *size],
        "classes": class_names,
        "images": n,
        "columns": [data.image_column, data.label_column] if data.source == "parquet" else None,
    }


def _digest(header: dict[str, Any], labels: np.ndarray, stamps: np.ndarray) -> str:
    h = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(stamps, dtype=np.uint64).tobytes())
    return h.hexdigest()


__all__ = ["FETCH_BATCH", "STREAMABLE", "SourceIndex", "index_source"]
