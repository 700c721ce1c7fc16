"""The held-out split: one home for which images a run trains on and which it holds out.

`split_indices` is the split itself (a seeded permutation of n images); `ImageSet.split`, the
streamed source's item lists (`StreamedSource`) and every count of training images derive from it,
so a loaded set, a listed source and a report all see the same images. `HeldOut` says which
(`train.val_fraction`, `train.seed`) a split is made with: a run's settings, or the ones a saved
model recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np
import torch

if TYPE_CHECKING:
    from pipelines.data.index import SourceIndex


class _SplitSettings(Protocol):
    """What `HeldOut.of` reads of a `pipelines.config.TrainConfig`."""

    val_fraction: float
    seed: int


class HeldOut(NamedTuple):
    """Which images are held out: `val_fraction` of them, picked by a shuffle seeded with `seed`.

    A tuple, so `data.split(*held)` and `split_indices(n, *held)` take it as it is.
    """

    val_fraction: float
    seed: int

    @classmethod
    def of(cls, train: _SplitSettings, meta: dict[str, Any] | None = None) -> HeldOut:
        """The split a saved model trained with (the `train` it recorded in `meta["extra"]`), else `train`'s.

        Args:
            train: the run's `train` settings (`val_fraction`, `seed`).
            meta: a saved model's config (`vae.io.read_model_config`), or None for the run's own split.
        """
        recorded = ((meta or {}).get("extra") or {}).get("train") or {}
        return cls(
            float(recorded.get("val_fraction", train.val_fraction)),
            int(recorded.get("seed", train.seed)),
        )


def split_sizes(n: int, val_fraction: float) -> tuple[int, int]:
    """(train, validation) sizes `ImageSet.split` gives n images (validation >= 1 when the fraction > 0).

    Raises:
        ValueError: a fraction outside [0, 1), or fewer than 2 images to split.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction}: use a value in [0, 1)")
    n_val = round(n * val_fraction)
    if val_fraction > 0:
        if n < 2:
            raise ValueError(f"cannot split {n} image(s) into non-empty train and validation sets")
        n_val = min(max(n_val, 1), n - 1)
    return n - n_val, n_val


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) positions of `ImageSet.split` for n images, each sorted (int64).

    Used alike for loaded images and for a listed source that is never loaded whole.
    """
    n_val = n - split_sizes(n, val_fraction)[0]
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=gen)
    val_idx, _ = perm[:n_val].sort()
    train_idx, _ = perm[n_val:].sort()
    return train_idx.numpy(), val_idx.numpy()


@dataclass
class StreamedSource:
    """A listed source and its split, as the streaming path trains on it.

    Attributes:
        index: the listing.
        train_items: (n_train,) sorted image numbers of the training split.
        val_items: (n_val,) sorted image numbers of the held-out split.
        val_fraction: the split's `train.val_fraction`.
        seed: the split's `train.seed`.
    """

    index: SourceIndex
    train_items: np.ndarray
    val_items: np.ndarray
    val_fraction: float
    seed: int

    def __len__(self) -> int:
        return len(self.index)


def stream_source(index: SourceIndex, val_fraction: float, seed: int) -> StreamedSource:
    """The index with the split `ImageSet.split` would make of the loaded images."""
    train_items, val_items = split_indices(len(index), val_fraction, seed)
    return StreamedSource(
        index, train_items.astype(np.int64), val_items.astype(np.int64), float(val_fraction), int(seed)
    )


__all__ = ["HeldOut", "StreamedSource", "split_indices", "split_sizes", "stream_source"]
