"""PyTorch datasets over committed synthetic datasets (local or cloud storage).

Items are `(image, label, latent)`: image float32 (C, H, W) in [0, 1], label an int (-1 when the
dataset is unconditional), latent float32 (D,).
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

Item = tuple[torch.Tensor, int, torch.Tensor]
_COLUMNS = ["image", "label", "latent"]


#: PNG bytes -> float32 (C, H, W) in [0, 1] (the one decoder of stored images, shared with the writer side).
decode_image = decode_png


def _columns(table: pa.Table, latent_dim: int) -> tuple[list[bytes], np.ndarray, np.ndarray]:
    """(PNG bytes per row, labels (N,) int64 with -1 for null, latents (N, D) float32)."""
    images = table.column("image").combine_chunks().field("bytes").to_pylist()
    labels = table.column("label").fill_null(-1).to_numpy().astype(np.int64)
    flat = table.column("latent").combine_chunks().flatten().to_numpy()
    return images, labels, flat.reshape(-1, latent_dim).astype(np.float32, copy=False)


def _open(source: str | SyntheticManifest, storage_options: dict[str, Any] | None) -> SyntheticManifest:
    return source if isinstance(source, SyntheticManifest) else open_dataset(source, storage_options)


class SyntheticDataset(IterableDataset):
    """Streams a committed synthetic dataset, one Parquet row group at a time.

    Work is split by row group across DataLoader workers and distributed ranks (each row group goes
    to exactly one (rank, worker)), so memory holds one row group per worker whatever the dataset
    size. With fewer row groups than workers x ranks some workers get nothing; ranks may get
    unequal row counts (use `drop_last`-style logic in the training loop for DDP).

    Args:
        source: the dataset directory (local path or fsspec URL) or an opened `SyntheticManifest`.
        storage_options: fsspec options for `source`.
        shuffle: shuffle the order of row groups and of rows inside each, per epoch (`set_epoch`).
        seed: seed of the shuffle (the same on every rank).
        rank: this process's rank; None: `torch.distributed`'s when initialised, else 0.
        world_size: number of ranks; None: `torch.distributed`'s when initialised, else 1.
        transform: applied to each image tensor.
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
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.manifest = _open(source, storage_options)
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.rank = rank
        self.world_size = world_size
        self.transform = transform
        self._fs: tuple[int, Any, str] | None = None  # (pid, fs, root): one filesystem per process

    @property
    def num_rows(self) -> int:
        """Rows of the whole dataset (all ranks and workers together)."""
        return self.manifest.rows

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle of `epoch` (call before each epoch, on every rank)."""
        self.epoch = epoch

    def _filesystem(self) -> tuple[Any, str]:
        if self._fs is None or self._fs[0] != os.getpid():  # never share connections across forks
            fs, root = self.manifest.filesystem()
            self._fs = (os.getpid(), fs, root)
        return self._fs[1], self._fs[2]

    def _slot(self) -> tuple[int, int]:
        """(this reader's index, number of readers) over ranks x DataLoader workers."""
        rank, world = self.rank, self.world_size
        if rank is None or world is None:
            dist = torch.distributed
            if dist.is_available() and dist.is_initialized():
                rank = dist.get_rank() if rank is None else rank
                world = dist.get_world_size() if world is None else world
        rank, world = rank or 0, world or 1
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank * nw + wid, world * nw

    def units(self) -> list[tuple[int, int]]:
        """The (file index, row group) pairs this reader streams, in order."""
        units = [(f, g) for f, n in enumerate(self.manifest.row_groups) for g in range(n)]
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch])
            units = [units[i] for i in rng.permutation(len(units))]
        me, total = self._slot()
        return units[me::total]

    def __iter__(self) -> Iterator[Item]:
        fs, root = self._filesystem()
        paths = [f"{root}/{f['path']}" for f in self.manifest.data["files"]]
        d = self.manifest.latent_dim
        current: tuple[int, Any, pq.ParquetFile] | None = None
        try:
            for f, g in self.units():
                if current is None or current[0] != f:
                    if current is not None:
                        current[1].close()
                    handle = fs.open(paths[f], "rb")
                    current = (f, handle, pq.ParquetFile(handle))
                images, labels, latents = _columns(current[2].read_row_group(g, columns=_COLUMNS), d)
                order = range(len(images))
                if self.shuffle:
                    order = np.random.default_rng([self.seed, self.epoch, f, g]).permutation(len(images))
                for i in order:
                    x = decode_image(images[i])
                    if self.transform is not None:
                        x = self.transform(x)
                    yield x, int(labels[i]), torch.from_numpy(latents[i].copy())
        finally:
            if current is not None:
                current[1].close()


class SyntheticMapDataset(Dataset):
    """Random access to a committed synthetic dataset held in memory as encoded PNG bytes.

    Loads the image bytes, labels and latents of every file at construction (PNGs stay encoded and
    are decoded per item); use `SyntheticDataset` for datasets larger than memory.

    Args:
        source: the dataset directory (local path or fsspec URL) or an opened `SyntheticManifest`.
        storage_options: fsspec options for `source`.
        transform: applied to each image tensor.
    """

    def __init__(
        self,
        source: str | SyntheticManifest,
        storage_options: dict[str, Any] | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.manifest = _open(source, storage_options)
        self.transform = transform
        fs, root = self.manifest.filesystem()
        images: list[bytes] = []
        labels, latents = [], []
        for f in self.manifest.data["files"]:
            with fs.open(f"{root}/{f['path']}", "rb") as handle:
                table = pq.read_table(handle, columns=_COLUMNS)
            i, y, z = _columns(table, self.manifest.latent_dim)
            images += i
            labels.append(y)
            latents.append(z)
        self.images = images
        self.labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)  # (N,)
        self.latents = (
            np.concatenate(latents) if latents else np.zeros((0, self.manifest.latent_dim))
        )  # (N, D)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Item:
        x = decode_image(self.images[index])
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.labels[index]), torch.from_numpy(self.latents[index].copy())


__all__ = ["Item", "SyntheticDataset", "SyntheticMapDataset", "decode_image"]
