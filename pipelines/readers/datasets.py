"""PyTorch datasets over committed synthetic datasets (local or cloud storage), torchvision style.

Items are `(image, label)` like torchvision's datasets: image float32 (C, H, W) in [0, 1] (then
`transform`), label an int (-1 when the dataset is unconditional; then `target_transform`). With
`return_latent=True` they are `(image, label, latent)`, latent float32 (D,). Both readers have
`classes` (class names in label order) and `class_to_idx`; `SyntheticMapDataset` has `targets`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from pipelines.data.decode import decode_png
from pipelines.readers.manifest import SyntheticManifest, open_dataset
from pipelines.storage import join

#: `(image, label)`, or `(image, label, latent)` with `return_latent=True` (types after the transforms).
Item = tuple[Any, Any] | tuple[Any, Any, torch.Tensor]
Transform = Callable[[Any], Any]


def _columns(table: pa.Table, latent_dim: int) -> tuple[list[bytes], np.ndarray, np.ndarray | None]:
    """(PNG bytes per row, labels (N,) int64 with -1 for null, latents (N, D) float32 or None if not read)."""
    images = table.column("image").combine_chunks().field("bytes").to_pylist()
    labels = table.column("label").fill_null(-1).to_numpy().astype(np.int64)
    if "latent" not in table.column_names:
        return images, labels, None
    flat = table.column("latent").combine_chunks().flatten().to_numpy()
    return images, labels, flat.reshape(-1, latent_dim).astype(np.float32, copy=False)


def _open(source: str | SyntheticManifest, storage_options: dict[str, Any] | None) -> SyntheticManifest:
    return source if isinstance(source, SyntheticManifest) else open_dataset(source, storage_options)


class _Habits:
    """What both readers share: the torchvision habits and the making of one item."""

    manifest: SyntheticManifest
    transform: Transform | None
    target_transform: Transform | None
    return_latent: bool

    @property
    def classes(self) -> list[str]:
        """Class names in label order (empty for an unconditional dataset, whose labels are -1)."""
        return self.manifest.class_names

    @property
    def class_to_idx(self) -> dict[str, int]:
        """Class name -> label."""
        return {name: i for i, name in enumerate(self.classes)}

    def _columns(self) -> list[str]:
        return ["image", "label", "latent"] if self.return_latent else ["image", "label"]

    def _item(self, png: bytes, label: int, latent: np.ndarray | None) -> Item:
        """Decode and transform one row into the item the reader yields."""
        x: Any = decode_png(png)  # (C, H, W) float32 in [0, 1]: the one decoder of stored images
        if self.transform is not None:
            x = self.transform(x)
        y: Any = int(label)
        if self.target_transform is not None:
            y = self.target_transform(y)
        if not self.return_latent:
            return x, y
        assert latent is not None, "return_latent=True reads the latent column"
        return x, y, torch.from_numpy(latent.copy())  # (D,)


def _resolve_ranks(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world size): the given ones, else `torch.distributed`'s when initialised, else (0, 1)."""
    if rank is None or world_size is None:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            rank = dist.get_rank() if rank is None else rank
            world_size = dist.get_world_size() if world_size is None else world_size
    rank, world_size = rank or 0, world_size or 1
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(
            f"rank={rank}, world_size={world_size}: use world_size >= 1 and 0 <= rank < world_size"
        )
    return rank, world_size


def _group_rows_from_manifest(manifest: SyntheticManifest) -> list[list[int]] | None:
    """Rows of each row group per file, from the manifest's `row_group_rows`; None if it cannot say.

    The writer fills every row group to `row_group_rows` but the last of each file; the result is
    used only when it agrees with the manifest's per-file row and row-group counts.
    """
    size = manifest.data.get("row_group_rows")
    if not isinstance(size, int) or size < 1:
        return None
    out = []
    for rows, groups in zip(manifest.file_rows, manifest.row_groups, strict=True):
        sizes = [min(size, rows - g * size) for g in range(groups)]
        if -(-rows // size) != groups:
            return None
        out.append(sizes)
    return out


def _group_rows_from_footers(manifest: SyntheticManifest) -> list[list[int]]:
    """Rows of each row group per file, read from the Parquet footers (one small read per file)."""
    fs, root = manifest.filesystem()
    out = []
    for f in manifest.data["files"]:
        with fs.open(join(root, f["path"]), "rb") as handle:
            meta = pq.ParquetFile(handle).metadata
        out.append([meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
    return out


def _span(total: int, parts: int, index: int) -> tuple[int, int]:
    """[start, stop) of part `index` when `total` rows are cut into `parts` contiguous near-equal parts."""
    return index * total // parts, (index + 1) * total // parts


def _pieces(
    units: list[tuple[int, int]], sizes: list[int], start: int, stop: int
) -> list[tuple[int, int, int, int]]:
    """(file, group, first row, end row) of the row groups `units` (of `sizes` rows, read one after the
    other) that cover rows [start, stop) of their concatenation."""
    out, offset = [], 0
    for (f, g), n in zip(units, sizes, strict=True):
        lo, hi = max(start, offset), min(stop, offset + n)
        if lo < hi:
            out.append((f, g, lo - offset, hi - offset))
        offset += n
        if offset >= stop:
            break
    return out


class SyntheticDataset(_Habits, IterableDataset):
    """Streams a committed synthetic dataset, one Parquet row group at a time.

    The epoch's rows (row groups in file order, or in a seeded random order with `shuffle`) are cut
    into `world_size` contiguous near-equal ranges, one per distributed rank, and each rank's range
    into one per DataLoader worker, so every row goes to exactly one (rank, worker) and memory holds
    one row group per worker whatever the dataset size. A row group that straddles two ranges is
    read by both readers (each keeps its part).

    `len(ds)` is the number of items THIS rank yields per epoch, all its DataLoader workers together:
    `num_rows` in a single process, `num_rows // world_size` or one more under DDP (the ranks'
    lengths sum to `num_rows`), the same every epoch. So `len(DataLoader(ds, batch_size=b))` is exact
    with `num_workers` 0 or 1; with more workers each worker batches its own rows, which can add up
    to `num_workers - 1` partial batches. DDP needs the same number of steps on every rank:
    `drop_last=True` makes the ranks' lengths equal, like `DistributedSampler(drop_last=True)`.

    Args:
        source: the dataset directory (local path or fsspec URL) or an opened `SyntheticManifest`.
        storage_options: fsspec options for `source`.
        shuffle: shuffle the order of row groups and of rows inside each, per epoch (`set_epoch`).
        seed: seed of the shuffle (the same on every rank).
        rank: this process's rank; None: `torch.distributed`'s when initialised, else 0.
        world_size: number of ranks; None: `torch.distributed`'s when initialised, else 1.
        transform: applied to each image (float32 (C, H, W) in [0, 1]).
        target_transform: applied to each label (an int, -1 when unconditional).
        return_latent: yield `(image, label, latent)` instead of `(image, label)`.
        drop_last: leave out the epoch's last `num_rows % world_size` rows (which change with the
            shuffle), so that every rank has the same length.
    """

    def __init__(
        self,
        source: str | SyntheticManifest,
        storage_options: dict[str, Any] | None = None,
        *,
        shuffle: bool = False,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        transform: Transform | None = None,
        target_transform: Transform | None = None,
        return_latent: bool = False,
        drop_last: bool = False,
    ) -> None:
        super().__init__()
        if rank is not None and world_size is not None:
            _resolve_ranks(rank, world_size)  # fail early on a bad pair
        self.manifest = _open(source, storage_options)
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.rank = rank
        self.world_size = world_size
        self.transform = transform
        self.target_transform = target_transform
        self.return_latent = return_latent
        self.drop_last = drop_last
        self._fs: tuple[int, Any, str] | None = None  # (pid, fs, root): one filesystem per process
        self._group_rows: list[list[int]] | None = None  # rows per row group per file, read once

    @property
    def num_rows(self) -> int:
        """Rows of the whole dataset (all ranks and workers together)."""
        return self.manifest.rows

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle of `epoch` (call before each epoch, on every rank)."""
        self.epoch = epoch

    def __len__(self) -> int:
        """Items this rank yields per epoch, all its DataLoader workers together."""
        start, stop = self._rank_span()
        return stop - start

    def group_rows(self) -> list[list[int]]:
        """Rows of each row group, per file in manifest order (manifest, else Parquet footers; cached)."""
        if self._group_rows is None:
            self._group_rows = _group_rows_from_manifest(self.manifest) or _group_rows_from_footers(
                self.manifest
            )
        return self._group_rows

    def _filesystem(self) -> tuple[Any, str]:
        if self._fs is None or self._fs[0] != os.getpid():  # never share connections across forks
            fs, root = self.manifest.filesystem()
            self._fs = (os.getpid(), fs, root)
        return self._fs[1], self._fs[2]

    def _rank_span(self) -> tuple[int, int]:
        """[start, stop) of this rank's rows in the epoch's order."""
        rank, world = _resolve_ranks(self.rank, self.world_size)
        total = sum(map(sum, self.group_rows()))
        return _span(total - total % world if self.drop_last else total, world, rank)

    def pieces(self) -> list[tuple[int, int, int, int]]:
        """What this reader (rank and DataLoader worker) streams, in order: (file index, row group,
        first row, end row) of each row group it reads, rows counted within the group."""
        sizes = self.group_rows()
        units = [(f, g) for f, n in enumerate(sizes) for g in range(len(n))]
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch])
            units = [units[i] for i in rng.permutation(len(units))]
        start, stop = self._rank_span()
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        lo, hi = _span(stop - start, nw, wid)
        return _pieces(units, [sizes[f][g] for f, g in units], start + lo, start + hi)

    def __iter__(self) -> Iterator[Item]:
        fs, root = self._filesystem()
        paths = [join(root, f["path"]) for f in self.manifest.data["files"]]
        d, columns = self.manifest.latent_dim, self._columns()
        current: tuple[int, Any, pq.ParquetFile] | None = None
        try:
            for f, g, lo, hi in self.pieces():
                if current is None or current[0] != f:
                    if current is not None:
                        current[1].close()
                    handle = fs.open(paths[f], "rb")
                    current = (f, handle, pq.ParquetFile(handle))
                table = current[2].read_row_group(g, columns=columns).slice(lo, hi - lo)
                images, labels, latents = _columns(table, d)
                order = range(len(images))
                if self.shuffle:
                    order = np.random.default_rng([self.seed, self.epoch, f, g, lo]).permutation(len(images))
                for i in order:
                    yield self._item(images[i], labels[i], None if latents is None else latents[i])
        finally:
            if current is not None:
                current[1].close()


class SyntheticMapDataset(_Habits, Dataset):
    """Random access to a committed synthetic dataset held in memory as encoded PNG bytes.

    Loads the image bytes, labels and latents of every file at construction (PNGs stay encoded and
    are decoded per item); use `SyntheticDataset` for datasets larger than memory.

    Args:
        source: the dataset directory (local path or fsspec URL) or an opened `SyntheticManifest`.
        storage_options: fsspec options for `source`.
        transform: applied to each image (float32 (C, H, W) in [0, 1]).
        target_transform: applied to each label (an int, -1 when unconditional).
        return_latent: items are `(image, label, latent)` instead of `(image, label)`.
    """

    def __init__(
        self,
        source: str | SyntheticManifest,
        storage_options: dict[str, Any] | None = None,
        transform: Transform | None = None,
        target_transform: Transform | None = None,
        *,
        return_latent: bool = False,
    ) -> None:
        self.manifest = _open(source, storage_options)
        self.transform = transform
        self.target_transform = target_transform
        self.return_latent = return_latent
        fs, root = self.manifest.filesystem()
        d = self.manifest.latent_dim
        images: list[bytes] = []
        labels, latents = [np.zeros(0, np.int64)], [np.zeros((0, d), np.float32)]
        for f in self.manifest.data["files"]:
            with fs.open(join(root, f["path"]), "rb") as handle:
                table = pq.read_table(handle, columns=["image", "label", "latent"])
            i, y, z = _columns(table, d)
            images += i
            labels.append(y)
            latents.append(z)
        self.images = images
        self.labels = np.concatenate(labels)  # (N,) int64, -1 when unconditional
        self.latents = np.concatenate(latents)  # (N, D) float32

    @property
    def targets(self) -> list[int]:
        """The label of every item, in index order (before `target_transform`), like torchvision's."""
        return self.labels.tolist()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Item:
        return self._item(self.images[index], self.labels[index], self.latents[index])


__all__ = ["Item", "SyntheticDataset", "SyntheticMapDataset"]
