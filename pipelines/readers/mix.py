"""Mixing a real dataset with a synthetic one at a given ratio, deterministically.

Both datasets must give `(image, label, ...)` items (torchvision's `(x, y)`; anything after the
label, such as the synthetic readers' latent with `return_latent=True`, is dropped) with images of
the same shape and range: the synthetic readers give float (C, H, W) in [0, 1], so pass them the
real data's `transform=` (and `target_transform=`) to match. Mixed items are `(image, label)`, or
`(image, label, is_synthetic)` with `return_source=True`; integer labels (Python ints, 0-d tensors
or numpy integers) come out as Python ints so that batches of both sources collate together.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Sized
from typing import Any, TypedDict, Unpack

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset


def _draw(rng: np.random.Generator, available: int, count: int) -> np.ndarray:
    """`count` indices into `available` items: a shuffle, repeated (reshuffled) if more are needed."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    if available == 0:
        raise ValueError(f"cannot draw {count} items from an empty dataset")
    reps = -(-count // available)
    return np.concatenate([rng.permutation(available) for _ in range(reps)])[:count].astype(np.int64)


def _check_fraction(synthetic_fraction: float) -> None:
    if not 0.0 <= synthetic_fraction <= 1.0:
        raise ValueError(f"synthetic_fraction={synthetic_fraction}: use a value in [0, 1]")


def _label(y: Any) -> Any:
    """An integer label as a Python int; anything else (a one-hot vector, a string...) as it is."""
    if isinstance(y, numbers.Integral):
        return int(y)
    if isinstance(y, torch.Tensor) and y.ndim == 0 and not y.dtype.is_floating_point:
        return int(y)
    if isinstance(y, np.ndarray) and y.ndim == 0 and np.issubdtype(y.dtype, np.integer):
        return int(y)
    return y


def _item(item: Any, synthetic: bool, return_source: bool) -> tuple:
    x, y = item[0], _label(item[1])
    return (x, y, synthetic) if return_source else (x, y)


class MixedDataset(Dataset):
    """Real and synthetic items in a fixed shuffled order with an exact synthetic share.

    Args:
        real: map-style dataset of `(image, label, ...)`.
        synthetic: map-style dataset of `(image, label, ...)` (e.g. `SyntheticMapDataset`).
        synthetic_fraction: share of synthetic items, in [0, 1].
        seed: seeds which items are used and their order.
        size: total items; None: every real item once plus enough synthetic ones for the fraction
            (with `synthetic_fraction=1`, the synthetic dataset's length). A source is reused in a
            new shuffle when it has fewer items than asked of it.
        return_source: add an `is_synthetic` flag to each item.
    """

    def __init__(
        self,
        real: Dataset,
        synthetic: Dataset,
        synthetic_fraction: float = 0.5,
        *,
        seed: int = 0,
        size: int | None = None,
        return_source: bool = False,
    ) -> None:
        _check_fraction(synthetic_fraction)
        n_real_avail, n_syn_avail = len(real), len(synthetic)  # type: ignore[arg-type]
        if size is None:
            size = (
                n_syn_avail if synthetic_fraction == 1.0 else round(n_real_avail / (1 - synthetic_fraction))
            )
        n_syn = round(size * synthetic_fraction)
        n_real = size - n_syn
        rng = np.random.default_rng(seed)
        real_idx, syn_idx = _draw(rng, n_real_avail, n_real), _draw(rng, n_syn_avail, n_syn)
        order = rng.permutation(size)
        self.is_synthetic = np.concatenate([np.zeros(n_real, bool), np.ones(n_syn, bool)])[order]  # (size,)
        self.index = np.concatenate([real_idx, syn_idx])[order]  # (size,) index into its source
        self.real, self.synthetic, self.return_source = real, synthetic, return_source

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple:
        syn = bool(self.is_synthetic[i])
        item = (self.synthetic if syn else self.real)[int(self.index[i])]
        return _item(item, syn, self.return_source)


class MixedIterableDataset(IterableDataset):
    """Interleaves two iterables so that exactly `synthetic_fraction` of every prefix is synthetic.

    Position i is synthetic when floor((i + 1) f) > floor(i f); iteration stops when the source
    due next runs out. Deterministic given the inputs; the sources do their own worker sharding
    (`SyntheticDataset` does).

    Args:
        real: iterable of `(image, label, ...)`.
        synthetic: iterable of `(image, label, ...)` (e.g. `SyntheticDataset`).
        synthetic_fraction: share of synthetic items, in [0, 1].
        return_source: add an `is_synthetic` flag to each item.
    """

    def __init__(
        self, real: Any, synthetic: Any, synthetic_fraction: float = 0.5, *, return_source: bool = False
    ) -> None:
        super().__init__()
        _check_fraction(synthetic_fraction)
        self.real, self.synthetic, self.fraction = real, synthetic, synthetic_fraction
        self.return_source = return_source

    def __iter__(self) -> Iterator[tuple]:
        real, syn = iter(self.real), iter(self.synthetic)
        f, i = self.fraction, 0
        while True:
            take_syn = int((i + 1) * f) > int(i * f)
            try:
                item = next(syn if take_syn else real)
            except StopIteration:
                return
            yield _item(item, take_syn, self.return_source)
            i += 1


class MixOptions(TypedDict, total=False):
    """The keyword options of `mix` (those of `MixedDataset`; an iterable mix takes `return_source`)."""

    seed: int
    size: int | None
    return_source: bool


def mix(
    real: Any, synthetic: Any, synthetic_fraction: float = 0.5, **options: Unpack[MixOptions]
) -> MixedDataset | MixedIterableDataset:
    """Combine a real dataset with a synthetic one at a given ratio.

    Args:
        real: the real data, `(image, label, ...)` items.
        synthetic: the synthetic data (`SyntheticMapDataset` or `SyntheticDataset`).
        synthetic_fraction: share of synthetic items, in [0, 1].
        **options: `seed` (order and choice of items; map-style only), `size` (total items;
            map-style only, see `MixedDataset`), `return_source` (add an `is_synthetic` flag to
            each item).

    Returns:
        A map-style `MixedDataset` when both inputs support `len()` and indexing, else a
        `MixedIterableDataset`.

    Raises:
        TypeError: an option that is not one of `MixOptions`.
    """
    unknown = sorted(set(options) - set(MixOptions.__annotations__))
    if unknown:
        raise TypeError(f"mix() got unknown option(s) {unknown}: use {sorted(MixOptions.__annotations__)}")
    map_style = all(
        isinstance(d, Sized) and hasattr(d, "__getitem__") and not isinstance(d, IterableDataset)
        for d in (real, synthetic)
    )
    if map_style:
        return MixedDataset(real, synthetic, synthetic_fraction, **options)
    return_source = options.get("return_source", False)
    return MixedIterableDataset(real, synthetic, synthetic_fraction, return_source=return_source)


__all__ = ["MixOptions", "MixedDataset", "MixedIterableDataset", "mix"]
