"""Readers of committed synthetic datasets for downstream jobs.

>>> from pipelines.readers import SyntheticDataset, open_dataset, mix
>>> ds = SyntheticDataset("s3://bucket/synthetic")  # doctest: +SKIP
>>> loader = DataLoader(ds, batch_size=256, num_workers=4)  # (x, y) batches  # doctest: +SKIP

- `open_dataset`: the manifest of a committed dataset (refuses an uncommitted one).
- `SyntheticDataset`: streaming `IterableDataset` (rows split over ranks, then DataLoader workers;
  `len` is this rank's share).
- `SyntheticMapDataset`: map-style, PNG bytes held in memory.
  Both follow torchvision: `(x, y)` items, `transform`, `target_transform`, `classes`,
  `class_to_idx`; `return_latent=True` gives `(x, y, latent)`.
- `mix` / `MixedDataset` / `MixedIterableDataset`: real + synthetic at a given ratio.
- `read_synthetic`: a Ray Data `Dataset` of decoded image tensors and labels (for Ray Train);
  Ray is imported only when it is first used.
"""

from __future__ import annotations

from pipelines.lazy import lazy_exports
from pipelines.readers.datasets import SyntheticDataset, SyntheticMapDataset
from pipelines.readers.manifest import SyntheticManifest, open_dataset
from pipelines.readers.mix import MixedDataset, MixedIterableDataset, mix

_LAZY = {"read_synthetic": "pipelines.readers.raydata"}  # names whose module imports Ray


__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = [
    "MixedDataset",
    "MixedIterableDataset",
    "SyntheticDataset",
    "SyntheticManifest",
    "SyntheticMapDataset",
    "mix",
    "open_dataset",
    "read_synthetic",
]
