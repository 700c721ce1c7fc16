"""Readers for downstream jobs: commit check, streaming with worker/rank sharding, map-style, mixing,
and the torchvision habits (`(x, y)` items, `len`, `classes`, `transform` / `target_transform`)."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from pipelines.errors import DataError
from pipelines.generate import generate
from pipelines.readers import (
    MixedDataset,
    MixedIterableDataset,
    SyntheticDataset,
    SyntheticManifest,
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
    x, y, z = next(iter(SyntheticDataset(str(dataset), return_latent=True)))
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and 0 <= x.min() <= x.max() <= 1
    assert isinstance(y, int) and 0 <= y < 10
    assert z.shape == (4,) and z.dtype == torch.float32


def test_dataloader_workers_read_every_row_once(dataset):
    # spawn: workers start clean (a fork would copy this test process's Ray connection and threads),
    # which also proves the dataset pickles, as it must for any multi-process DataLoader.
    ds = SyntheticDataset(str(dataset), return_latent=True)
    loader = DataLoader(ds, batch_size=8, num_workers=2, multiprocessing_context="spawn")
    latents = torch.cat([z for _, _, z in loader])
    assert latents.shape == (ROWS, 4) and len(ds) == ROWS  # len: all the workers together
    reference = {_key(z) for _, _, z in SyntheticDataset(str(dataset), return_latent=True)}
    assert {_key(z) for z in latents} == reference and len(reference) == ROWS


def test_ranks_split_the_rows(dataset):
    parts = [
        [_key(z) for *_, z in SyntheticDataset(str(dataset), rank=r, world_size=2, return_latent=True)]
        for r in range(2)
    ]
    assert parts[0] and parts[1] and not set(parts[0]) & set(parts[1])
    assert len(parts[0]) + len(parts[1]) == ROWS


def test_shuffle_is_seeded_per_epoch(dataset):
    ds = SyntheticDataset(str(dataset), shuffle=True, seed=1, return_latent=True)
    first = [_key(z) for *_, z in ds]
    again = [_key(z) for *_, z in ds]
    ds.set_epoch(1)
    second = [_key(z) for *_, z in ds]
    assert first == again and first != second and sorted(first) == sorted(second)


def test_map_style_matches_streaming(dataset):
    m = SyntheticMapDataset(str(dataset), return_latent=True)
    assert len(m) == ROWS
    streamed = list(SyntheticDataset(str(dataset), return_latent=True))
    x, y, z = m[17]
    assert torch.equal(x, streamed[17][0]) and y == streamed[17][1] and torch.equal(z, streamed[17][2])


def test_items_are_x_y_with_classes_like_torchvision(dataset):
    streaming, mapped = SyntheticDataset(str(dataset)), SyntheticMapDataset(str(dataset))
    items = list(streaming)
    assert all(len(item) == 2 for item in items) and len(mapped[0]) == 2
    names = [str(k) for k in range(10)]
    for ds in (streaming, mapped):
        assert ds.classes == names and ds.class_to_idx == {n: k for k, n in enumerate(names)}
    assert mapped.targets == [y for _, y in items]  # map-style and streaming share the row order
    per_class = open_dataset(str(dataset)).data["per_class"]
    assert Counter(mapped.classes[y] for y in mapped.targets) == per_class
    x, y = next(iter(DataLoader(streaming, batch_size=16)))
    assert x.shape == (16, 1, 8, 8) and y.dtype == torch.int64


def test_transform_and_target_transform(dataset):
    def one_hot(y: int) -> torch.Tensor:
        return F.one_hot(torch.tensor(y), 10).float()

    def flip(x: torch.Tensor) -> torch.Tensor:
        return x.flip(-1)

    plain = SyntheticMapDataset(str(dataset), return_latent=True)
    for ds in (
        SyntheticMapDataset(str(dataset), transform=flip, target_transform=one_hot, return_latent=True),
        SyntheticDataset(str(dataset), transform=flip, target_transform=one_hot, return_latent=True),
    ):
        x, y, z = next(iter(ds))
        x0, y0, z0 = plain[0]
        assert torch.equal(x, x0.flip(-1)) and torch.equal(y, one_hot(y0)) and torch.equal(z, z0)
    batch = next(iter(DataLoader(SyntheticDataset(str(dataset), target_transform=one_hot), batch_size=4)))
    assert batch[1].shape == (4, 10)


def test_len_is_the_rows_this_rank_yields(dataset):
    ds = SyntheticDataset(str(dataset))
    assert len(ds) == ROWS == ds.num_rows
    loader = DataLoader(ds, batch_size=8)
    assert len(loader) == math.ceil(ROWS / 8) == sum(1 for _ in loader)
    assert len(DataLoader(ds, batch_size=8, drop_last=True)) == ROWS // 8
    for world in (2, 3, 4):
        for epoch in range(2):  # shuffled: other row groups, the same lengths
            ranks = [
                SyntheticDataset(str(dataset), rank=r, world_size=world, shuffle=True, return_latent=True)
                for r in range(world)
            ]
            parts = []
            for r in ranks:
                r.set_epoch(epoch)
                parts.append([_key(z) for *_, z in r])
            assert [len(r) for r in ranks] == [len(p) for p in parts]
            assert {len(r) for r in ranks} <= {ROWS // world, ROWS // world + 1}
            assert len({k for p in parts for k in p}) == ROWS  # every row once over the ranks
    even = [SyntheticDataset(str(dataset), rank=r, world_size=4, drop_last=True) for r in range(4)]
    assert [len(r) for r in even] == [sum(1 for _ in r) for r in even] == [ROWS // 4] * 4
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        SyntheticDataset(str(dataset), rank=2, world_size=2)


def test_len_from_the_parquet_footers_with_several_row_groups(dataset, tmp_path):
    """Without `row_group_rows` in the manifest, the row-group sizes come from the files' footers."""
    m = open_dataset(str(dataset))
    (tmp_path / "data").mkdir()
    files = []
    for f in m.data["files"]:  # the same rows in row groups of 5
        pq.write_table(pq.read_table(dataset / f["path"]), tmp_path / f["path"], row_group_size=5)
        files.append({**f, "row_groups": pq.ParquetFile(tmp_path / f["path"]).num_row_groups})
    data = {k: v for k, v in m.data.items() if k != "row_group_rows"} | {"files": files}
    regrouped = SyntheticManifest(url=str(tmp_path), storage_options={}, data=data)
    assert SyntheticDataset(regrouped).group_rows() == [[5, 5, 5, 1]] * 4 + [[5, 1]]
    ranks = [SyntheticDataset(regrouped, rank=r, world_size=3, return_latent=True) for r in range(3)]
    parts = [[_key(z) for *_, z in r] for r in ranks]  # rank ranges cut through row groups
    assert [len(r) for r in ranks] == [len(p) for p in parts] == [23, 23, 24]
    reference = [_key(z) for *_, z in SyntheticDataset(str(dataset), return_latent=True)]
    assert parts[0] + parts[1] + parts[2] == reference
    from_footers = SyntheticManifest(
        url=str(dataset), storage_options={}, data=data | {"files": m.data["files"]}
    )
    assert SyntheticDataset(from_footers).group_rows() == SyntheticDataset(m).group_rows()


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


def test_mix_keeps_transformed_labels(dataset):
    def one_hot(y: int) -> torch.Tensor:
        return F.one_hot(torch.tensor(y), 10).float()

    synthetic = SyntheticMapDataset(str(dataset), target_transform=one_hot)
    real = TensorDataset(torch.zeros(30, 1, 8, 8), F.one_hot(torch.full((30,), 3), 10).float())
    x, y = next(iter(DataLoader(mix(real, synthetic, synthetic_fraction=0.5), batch_size=60)))
    assert x.shape == (60, 1, 8, 8) and y.shape == (60, 10) and torch.equal(y.sum(1), torch.ones(60))
