"""Which data path a run takes, and what the driver holds when it streams.

The streaming path (Ray Train only) is taken for "folder" and "parquet" sources when
`train.streaming="always"`, or with "auto" when the source is larger than `train.stream_above_mb`,
on storage or decoded (N x C x H x W x 4 bytes, known from the listing alone). The driver then never
loads the images: it lists them (`pipelines.data.index`), the Ray Train workers read their shards
through Ray Data, and what needs real images in the driver (the fitted prior, the preview grid,
held-out figures, variants and interpolations, the usefulness report) gets a bounded, seeded sample
of each split, drawn a chunk at a time (`load_data_for`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from pipelines.data.imageset import ImageSet
from pipelines.data.index import STREAMABLE, SourceIndex, index_source
from pipelines.data.order import split_chunks
from pipelines.data.sources import load_images, read_index
from pipelines.data.split import StreamedSource, stream_source
from vae.ranges import to_model_range

if TYPE_CHECKING:
    from pipelines.config import PipelineConfig
    from vae.config import VAEConfig

#: Images of each split the driver samples at most when streaming...
SAMPLE_IMAGES = 10_000
#: ...and bytes of decoded images for both samples together at most.
SAMPLE_BYTES = 256_000_000


def streams(cfg: PipelineConfig) -> bool:
    """Whether the run's settings allow streaming at all (the size decides "auto" later)."""
    t = cfg.train
    return t.backend == "ray" and t.streaming != "never" and cfg.data.source in STREAMABLE


def choose_stream(cfg: PipelineConfig, index: SourceIndex) -> bool:
    """Stream this listed source? "always", or "auto" and larger than `train.stream_above_mb`."""
    if not streams(cfg):
        return False
    if cfg.train.streaming == "always":
        return True
    decoded = len(index) * index.image_bytes
    return max(index.nbytes, decoded) / 1e6 > cfg.train.stream_above_mb


def load_data_for(cfg: PipelineConfig, model: VAEConfig | None = None) -> ImageSet:
    """The run's real images in `model`'s size, channels and range (default `cfg.model`): all of
    them in memory, or, when the run streams, a bounded sample whose `stream` is the whole source.

    The sample's `split` keeps the source's split (`train.val_fraction`, `train.seed`) and its
    `fingerprint` is the listing's.

    Raises:
        DataError: the source cannot be listed or read.
    """
    model = model or cfg.model
    if not streams(cfg):
        return load_images(cfg.data, model)
    index = index_source(cfg.data, model.image_size, model.channels)
    if not choose_stream(cfg, index):
        return load_images(cfg.data, model)
    source = stream_source(index, cfg.train.val_fraction, cfg.train.seed)
    sample = sample_of(source, model, cfg.train.seed)
    sample.stream = source
    return sample


def sample_of(source: StreamedSource, model: VAEConfig, seed: int) -> ImageSet:
    """A seeded sample of whole chunks of each split, at most `SAMPLE_IMAGES` images per split."""
    index = source.index
    cap = max(1, min(SAMPLE_IMAGES, SAMPLE_BYTES // 2 // index.image_bytes))
    picked = np.concatenate(
        [
            _sample_chunks(index, source.train_items, cap, seed),
            _sample_chunks(index, source.val_items, cap, seed),
        ]
    )
    picked.sort()
    unit = read_index(index, picked)
    heldout = torch.from_numpy(np.isin(picked, source.val_items))
    return ImageSet(
        images=to_model_range(unit.images, model).contiguous(),  # (n, C, H, W)
        labels=unit.labels,
        class_names=unit.class_names,
        ids=unit.ids,
        chunks=unit.chunks,
        source_fingerprint=index.fingerprint,
        drawn_split=(float(source.val_fraction), int(source.seed), heldout),
    )


def _sample_chunks(index: SourceIndex, items: np.ndarray, cap: int, seed: int) -> np.ndarray:
    """Items of whole chunks, in a seeded random chunk order, until `cap` images (all if fewer)."""
    if len(items) <= cap:
        return items
    starts, counts = split_chunks(index.chunk_of[items])
    ends = starts + counts
    order = np.random.default_rng([int(seed), 7]).permutation(len(starts))
    taken, total = [], 0
    for k in order:
        room = cap - total
        if room <= 0:
            break
        part = items[starts[k] : ends[k]][:room]  # a huge chunk is cut at the cap
        taken.append(part)
        total += len(part)
    return np.sort(np.concatenate(taken))


__all__ = [
    "SAMPLE_BYTES",
    "SAMPLE_IMAGES",
    "choose_stream",
    "load_data_for",
    "sample_of",
    "streams",
]
