"""Readers of committed synthetic datasets for downstream jobs.

>>> from pipelines.readers import SyntheticDataset, open_dataset, mix
>>> ds = SyntheticDataset("s3://bucket/synthetic")  # doctest: +SKIP
>>> loader = DataLoader(ds, batch_size=256, num_workers=4)  # doctest: +SKIP

- `open_dataset`: the manifest of a committed dataset (refuses an uncommitted one).
- `SyntheticDataset`: streaming `IterableDataset` (row groups split over workers and ranks).
- `SyntheticMapDataset`: map-style, PNG bytes held in memory.
- `mix` / `MixedDataset` / `MixedIterableDataset`: real + synthetic at a given ratio.
"""

from pipelines.readers.datasets import SyntheticDataset, SyntheticMapDataset, decode_image
from pipelines.readers.manifest import SyntheticManifest, open_dataset
from pipelines.readers.mix import MixedDataset, MixedIterableDataset, mix

__all__ = [
    "MixedDataset",
    "MixedIterableDataset",
    "SyntheticDataset",
    "SyntheticManifest",
    "SyntheticMapDataset",
    "decode_image",
    "mix",
    "open_dataset",
]
