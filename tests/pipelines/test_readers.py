"""Readers for downstream jobs: commit check, streaming with worker/rank sharding, map-style, mixing."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from pipelines.errors import DataError
from pipelines.generate import generate
from pipelines.readers import (
    MixedDataset,
    MixedIterableDataset,
    SyntheticDataset,
    SyntheticMapDataset,
    mix,
    open_dataset,
)
from tests.pipelines.generate.helpers import make_cfg, save_tiny_model

ROWS = 70  # 5 files of <= 16 rows


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A committed conditional dataset written in-process."""
    root = tmp_path_factory.mktemp("readers")
    model = save_tiny_model(root / "model", conditional=True)
    generate(make_cfg(str(root / "ds"), num_samples=ROWS), model_dir=model, progress=False, use_ray=False)
    return root / "ds"


def _key(latent: torch.Tensor) -> tuple[float, ...]:
    return tuple(latent.tolist())


def test_open_dataset_reads_the_manifest(dataset):
    m = open_dataset(str(dataset))
    assert m.rows == ROWS and len(m.files) == 5 and m.latent_dim == 4 and m.image_shape == (1, 8, 8)
    assert m.class_names == [str(k) for k in range(10)] and m.provenance["model_sha256"]


def test_uncommitted_missing_and_tampered_datasets_are_refused(dataset, tmp_path):
    with pytest.raises(DataError, match="no synthetic dataset"):
        open_dataset(str(tmp_path / "nothing"))
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in dataset.rglob("*"):
        if p.is_file():
            (copy / p.relative_to(dataset)).parent.mkdir(parents=True, exist_ok=True)
            (copy / p.relative_to(dataset)).write_bytes(p.read_bytes())
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["rows"] += 1
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="does not match"):
        open_dataset(str(copy))
    (copy / "_SUCCESS").unlink()
    with pytest.raises(DataError, match=r"incomplete \(no _SUCCESS marker\)"):
        SyntheticDataset(str(copy))


def test_streaming_items_are_tensors(dataset):
    x, y, z = next(iter(SyntheticDataset(str(dataset))))
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and 0 <= x.min() <= x.max() <= 1
    assert isinstance(y, int) and 0 <= y < 10
    assert z.shape == (4,) and z.dtype == torch.float32


def test_dataloader_workers_read_every_row_once(dataset):
    # spawn: workers start clean (a fork would copy this test process's Ray connection and threads),
    # which also proves the dataset pickles, as it must for any multi-process DataLoader.
    loader = DataLoader(
        SyntheticDataset(str(dataset)), batch_size=8, num_workers=2, multiprocessing_context="spawn"
    )
    latents = torch.cat([z for _, _, z in loader])
    assert latents.shape == (ROWS, 4)
    reference = {_key(z) for _, _, z in SyntheticDataset(str(dataset))}
    assert {_key(z) for z in latents} == reference and len(reference) == ROWS


def test_ranks_split_the_rows(dataset):
    parts = [[_key(z) for *_, z in SyntheticDataset(str(dataset), rank=r, world_size=2)] for r in range(2)]
    assert parts[0] and parts[1] and not set(parts[0]) & set(parts[1])
    assert len(parts[0]) + len(parts[1]) == ROWS


def test_shuffle_is_seeded_per_epoch(dataset):
    ds = SyntheticDataset(str(dataset), shuffle=True, seed=1)
    first = [_key(z) for *_, z in ds]
    again = [_key(z) for *_, z in ds]
    ds.set_epoch(1)
    second = [_key(z) for *_, z in ds]
    assert first == again and first != second and sorted(first) == sorted(second)


def test_map_style_matches_streaming(dataset):
    m = SyntheticMapDataset(str(dataset))
    assert len(m) == ROWS
    streamed = list(SyntheticDataset(str(dataset)))
    x, y, z = m[17]
    assert torch.equal(x, streamed[17][0]) and y == streamed[17][1] and torch.equal(z, streamed[17][2])


def _real(n: int) -> TensorDataset:
    return TensorDataset(torch.zeros(n, 1, 8, 8), torch.full((n,), 3))


def test_mix_at_a_given_ratio_is_exact_and_deterministic(dataset):
    synthetic = SyntheticMapDataset(str(dataset))
    mixed = mix(_real(30), synthetic, synthetic_fraction=0.25, seed=0)
    assert isinstance(mixed, MixedDataset) and len(mixed) == 40
    assert int(mixed.is_synthetic.sum()) == 10
    again = MixedDataset(_real(30), synthetic, 0.25, seed=0)
    assert (again.index == mixed.index).all() and (again.is_synthetic == mixed.is_synthetic).all()
    other = MixedDataset(_real(30), synthetic, 0.25, seed=1)
    assert not (other.is_synthetic == mixed.is_synthetic).all()
    sources = Counter(flag for _, _, flag in MixedDataset(_real(30), synthetic, 0.25, return_source=True))
    assert sources == {False: 30, True: 10}
    batch = next(iter(DataLoader(mixed, batch_size=40)))
    assert batch[0].shape == (40, 1, 8, 8) and batch[1].shape == (40,)


def test_mix_streaming_interleaves_exactly(dataset):
    mixed = mix([(torch.zeros(1, 8, 8), 3)] * 100, SyntheticDataset(str(dataset)), synthetic_fraction=0.5)
    assert isinstance(mixed, MixedIterableDataset)
    flags = [flag for *_, flag in MixedIterableDataset(mixed.real, mixed.synthetic, 0.5, return_source=True)]
    assert len(flags) == 2 * ROWS + 1  # R, S, R, S, ... R: stops when the synthetic stream runs out
    assert all(sum(flags[: 2 * k]) == k for k in range(1, ROWS + 1))


def test_mix_rejects_bad_fraction(dataset):
    with pytest.raises(ValueError, match="synthetic_fraction"):
        mix(_real(3), _real(3), synthetic_fraction=1.5)
