"""`index_source` and `load_data_for`: a source listed, not loaded, agrees with `load_images`.

Real files (local disk and the moto S3 server): a folder tree and Hugging Face-layout Parquet of
several files and row groups. The listing gives the loader's labels, class names and ids; reading
it gives the loader's pixels; its fingerprint follows the files. `load_data_for` streams when asked
(or when the source is larger than `train.stream_above_mb`) and then holds a sample that keeps the
source's split.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest
import torch

from pipelines.config import PipelineConfig, config_from_dict
from pipelines.data import DataConfig, load_images
from pipelines.data import stream as stream_module
from pipelines.data.index import SourceIndex, index_source
from pipelines.data.stream import choose_stream, load_data_for
from tests.pipelines.training.streamdata import (
    CLASSES,
    image_numbers,
    numbered_png,
    parquet_bytes,
    parquet_table,
    write_folder,
    write_parquet,
)
from vae.config import VAEConfig

GRAY8 = VAEConfig(image_size=(8, 8), channels=1)  # sigmoid: the model range is [0, 1] itself
N_FOLDER = 30
PARQUET_FILES, ROW_GROUP = [10, 7, 13], 4


@dataclass
class Source:
    """A written source: its config, the filesystem and root it lives on, and what was written."""

    data: DataConfig
    fs: Any
    root: str
    files: list[str]  # paths relative to root, in load order
    groups: list[list[int]]  # Parquet: per file, rows per row group; folder: []

    def size_of(self, rel: str) -> int:
        return int(self.fs.size(f"{self.root}/{rel}"))


def _folder(fs: Any, root: str, url: str, options: dict) -> Source:
    rels = write_folder(fs, root, N_FOLDER)
    return Source(DataConfig(source="folder", path=url, storage_options=options), fs, root, rels, [])


def _parquet(fs: Any, root: str, url: str, options: dict) -> Source:
    written = write_parquet(fs, root, PARQUET_FILES, ROW_GROUP)
    data = DataConfig(source="parquet", path=url, storage_options=options)
    return Source(data, fs, root, [rel for rel, _ in written], [sizes for _, sizes in written])


def _make(kind: str, storage: str, request: pytest.FixtureRequest, tmp_path: Path) -> Source:
    """Write a `kind` source ("folder" or "parquet") on `storage` ("local" or "s3")."""
    make = _folder if kind == "folder" else _parquet
    if storage == "local":
        root = str(tmp_path / "src")
        return make(fsspec.filesystem("file", auto_mkdir=True), root, root, {})
    s3 = request.getfixturevalue("s3")
    root = f"{s3.new_bucket()}/src"
    return make(fsspec.filesystem("s3", **s3.storage_options()), root, f"s3://{root}", s3.storage_options())


@pytest.fixture(params=["folder", "parquet"])
def local_source(request: pytest.FixtureRequest, tmp_path: Path) -> Source:
    return _make(request.param, "local", request, tmp_path)


@pytest.fixture(
    params=[("folder", "local"), ("folder", "s3"), ("parquet", "local"), ("parquet", "s3")],
    ids=["folder-local", "folder-s3", "parquet-local", "parquet-s3"],
)
def source(request: pytest.FixtureRequest, tmp_path: Path) -> Source:
    """Both kinds of source on both storages."""
    return _make(*request.param, request, tmp_path)


def _index(data: DataConfig) -> SourceIndex:
    return index_source(data, GRAY8.image_size, GRAY8.channels)


def _read_all(index: SourceIndex, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(items as yielded, float32 (n, C, H, W)) of `index.read(items)`."""
    got, images = zip(*index.read(items), strict=True)
    return np.concatenate(got), np.concatenate(images)


# ------------------------------------------------------------------------------ the listing
def test_listing_agrees_with_the_loader(source: Source) -> None:
    index = _index(source.data)
    loaded = load_images(source.data, GRAY8)
    n = len(loaded)
    assert len(index) == n == (N_FOLDER if source.data.source == "folder" else sum(PARQUET_FILES))
    assert index.class_names == loaded.class_names == CLASSES
    assert np.array_equal(index.labels, loaded.labels.numpy())
    assert index.ids(np.arange(n)) == loaded.ids
    assert index.nbytes == sum(source.size_of(rel) for rel in source.files)
    if source.data.source == "folder":
        assert loaded.ids == source.files
        assert np.array_equal(index.chunk_of, np.arange(n))  # one chunk per file
    else:
        rows = [sum(sizes) for sizes in source.groups]
        assert rows == PARQUET_FILES and min(len(sizes) for sizes in source.groups) >= 2
        assert loaded.ids == [
            f"{rel}#{r}" for rel, count in zip(source.files, rows, strict=True) for r in range(count)
        ]
        groups = [g for sizes in source.groups for g in sizes]
        chunk_of = np.repeat(np.arange(len(groups)), groups)  # one chunk per row group
        assert np.array_equal(index.chunk_of, chunk_of)
    # Reading everything gives the loader's pixels, and the images are the ones written.
    items, images = _read_all(index, np.arange(n))
    assert np.array_equal(items, np.arange(n))
    assert images.dtype == np.float32 and torch.equal(torch.from_numpy(images), loaded.images)
    assert np.array_equal(image_numbers(images), np.arange(n))


def test_read_follows_the_asked_order_chunk_by_chunk(local_source: Source) -> None:
    """Whole chunks in any order (as a plan reads them), items increasing within each chunk."""
    index = _index(local_source.data)
    order = np.random.default_rng(0).permutation(int(index.chunk_of.max()) + 1)
    items = np.concatenate([np.flatnonzero(index.chunk_of == c)[::2] for c in order])  # every other image
    got, images = _read_all(index, items)
    assert np.array_equal(got, items) and np.array_equal(image_numbers(images), items)


def test_a_limit_cuts_the_listing_like_the_loader(local_source: Source) -> None:
    data = DataConfig(**{**local_source.data.to_dict(), "limit": 12})  # inside file 2's first group
    index, loaded = _index(data), load_images(data, GRAY8)
    assert len(index) == len(loaded) == 12
    assert index.ids(np.arange(12)) == loaded.ids and np.array_equal(index.labels, loaded.labels.numpy())
    _, images = _read_all(index, np.arange(12))
    assert torch.equal(torch.from_numpy(images), loaded.images)


def _rewrite(source: Source, same_size: bool) -> None:
    """Rewrite the source's second file with other bytes (other noise), of the same size or not."""
    path = f"{source.root}/{source.files[1]}"
    old = source.fs.cat_file(path)
    if source.data.source == "folder":
        blobs = (numbered_png(1, 0, salt) for salt in range(1, 1000))  # image 1 is the second file
    else:
        first, count, n = PARQUET_FILES[0], PARQUET_FILES[1], sum(PARQUET_FILES)
        blobs = (parquet_bytes(parquet_table(first, count, n, salt), ROW_GROUP) for salt in range(1, 1000))
    blob = next(b for b in blobs if b != old and (len(b) == len(old)) == same_size)
    source.fs.pipe_file(path, blob)


@pytest.mark.parametrize("same_size", [True, False], ids=["same-size", "other-size"])
def test_fingerprint_follows_the_files(source: Source, same_size: bool) -> None:
    before = _index(source.data)
    assert _index(source.data).fingerprint == before.fingerprint  # stable across listings
    time.sleep(0.02)  # a local rewrite gets a later mtime
    _rewrite(source, same_size)
    after = _index(source.data)
    assert (after.nbytes == before.nbytes) == same_size
    assert after.fingerprint != before.fingerprint


def test_fingerprint_depends_on_the_target_shape(local_source: Source) -> None:
    a = index_source(local_source.data, (8, 8), 1).fingerprint
    assert index_source(local_source.data, (8, 8), 3).fingerprint != a
    assert index_source(local_source.data, (12, 8), 1).fingerprint != a


# ------------------------------------------------------------------------------ load_data_for
def _cfg(data: DataConfig, **train: Any) -> PipelineConfig:
    settings = {"backend": "ray", "streaming": "always", "val_fraction": 0.2, "seed": 3, **train}
    return config_from_dict(
        {
            "data": data.to_dict(),
            "model": {"hidden_channels": [16, 32], "latent_dim": 8},
            "train": settings,
        }
    )


def test_a_streamed_sample_keeps_the_source_split(source: Source) -> None:
    cfg = _cfg(source.data)
    sample = load_data_for(cfg)
    full = load_images(cfg.data, cfg.model)
    assert sample.stream is not None and sample.source_size == len(full) == len(sample.stream)
    assert sample.fingerprint() == _index(source.data).fingerprint != full.fingerprint()
    f_train, f_val = full.split(0.2, seed=3)
    s_train, s_val = sample.split(0.2, seed=3)
    # The stream's split is the loaded set's split...
    index = sample.stream.index
    assert index.ids(sample.stream.train_items) == f_train.ids
    assert index.ids(sample.stream.val_items) == f_val.ids
    # ...and the sample (here all of it: the source is small) keeps it, pixels included.
    assert s_val.ids == f_val.ids and s_train.ids == f_train.ids
    assert torch.equal(s_val.images, f_val.images) and torch.equal(s_train.images, f_train.images)
    assert torch.equal(s_train.labels, f_train.labels)
    with pytest.raises(ValueError, match="drawn for train.val_fraction=0.2 and train.seed=3"):
        sample.split(0.3, seed=3)


def test_a_bounded_sample_is_a_subset_of_each_split(
    local_source: Source, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stream_module, "SAMPLE_IMAGES", 5)
    cfg = _cfg(local_source.data, val_fraction=0.3)
    sample = load_data_for(cfg)
    full = load_images(cfg.data, cfg.model)
    f_train, f_val = full.split(0.3, seed=3)
    s_train, s_val = sample.split(0.3, seed=3)
    assert 0 < len(s_train) <= 5 and 0 < len(s_val) <= 5 and sample.source_size == len(full)
    assert set(s_train.ids) <= set(f_train.ids) and set(s_val.ids) <= set(f_val.ids)
    by_id = {rel: i for i, rel in enumerate(full.ids)}
    assert torch.equal(sample.images, full.images[[by_id[i] for i in sample.ids]])
    assert len(sample.stream.train_items) == len(f_train)  # the workers still stream all of it


def test_never_and_the_size_threshold_decide_the_path(local_source: Source) -> None:
    full = load_images(local_source.data, GRAY8)
    never = load_data_for(_cfg(local_source.data, streaming="never"))
    assert never.stream is None and never.ids == full.ids and never.fingerprint() == full.fingerprint()
    assert torch.equal(never.images, full.images)
    tiny = load_data_for(_cfg(local_source.data, streaming="auto", stream_above_mb=0.001))
    assert tiny.stream is not None and tiny.fingerprint() == _index(local_source.data).fingerprint
    big = load_data_for(_cfg(local_source.data, streaming="auto", stream_above_mb=1000))
    assert big.stream is None and big.ids == full.ids
    local = load_data_for(_cfg(local_source.data, backend="local"))  # only Ray Train streams
    assert local.stream is None and local.ids == full.ids


def test_sources_without_a_listing_never_stream() -> None:
    digits = load_data_for(_cfg(DataConfig(source="digits", limit=50)))
    assert digits.stream is None and len(digits) == 50


def test_auto_also_counts_the_decoded_size(local_source: Source) -> None:
    """Small files of many pixels stream: "auto" takes the larger of storage and N x C x H x W x 4."""
    cfg = _cfg(local_source.data, streaming="auto", stream_above_mb=1.0)
    small, large = index_source(cfg.data, (8, 8), 1), index_source(cfg.data, (64, 64), 3)
    assert max(small.nbytes, len(small) * small.image_bytes) < 1e6 < len(large) * large.image_bytes
    assert large.nbytes < 1e6
    assert not choose_stream(cfg, small) and choose_stream(cfg, large)
