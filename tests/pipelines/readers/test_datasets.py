"""The PyTorch readers: streaming with rank and worker sharding, map-style, and the torchvision habits
(`(x, y)` items, `len`, `classes`, `transform` / `target_transform`)."""

from __future__ import annotations

import math
from collections import Counter

import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from pipelines.readers import SyntheticDataset, SyntheticManifest, SyntheticMapDataset, open_dataset
from tests.pipelines.readers.conftest import ROWS


def _key(latent: torch.Tensor) -> tuple[float, ...]:
    return tuple(latent.tolist())


def test_streaming_items_are_tensors(synthetic_dir):
    x, y, z = next(iter(SyntheticDataset(str(synthetic_dir), return_latent=True)))
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and 0 <= x.min() <= x.max() <= 1
    assert isinstance(y, int) and 0 <= y < 10
    assert z.shape == (4,) and z.dtype == torch.float32


def test_dataloader_workers_read_every_row_once(synthetic_dir):
    # spawn: workers start clean (a fork would copy this test process's Ray connection and threads),
    # which also proves the synthetic_dir pickles, as it must for any multi-process DataLoader.
    ds = SyntheticDataset(str(synthetic_dir), return_latent=True)
    loader = DataLoader(ds, batch_size=8, num_workers=2, multiprocessing_context="spawn")
    latents = torch.cat([z for _, _, z in loader])
    assert latents.shape == (ROWS, 4) and len(ds) == ROWS  # len: all the workers together
    reference = {_key(z) for _, _, z in SyntheticDataset(str(synthetic_dir), return_latent=True)}
    assert {_key(z) for z in latents} == reference and len(reference) == ROWS


def test_ranks_split_the_rows(synthetic_dir):
    parts = [
        [_key(z) for *_, z in SyntheticDataset(str(synthetic_dir), rank=r, world_size=2, return_latent=True)]
        for r in range(2)
    ]
    assert parts[0] and parts[1] and not set(parts[0]) & set(parts[1])
    assert len(parts[0]) + len(parts[1]) == ROWS


def test_shuffle_is_seeded_per_epoch(synthetic_dir):
    ds = SyntheticDataset(str(synthetic_dir), shuffle=True, seed=1, return_latent=True)
    first = [_key(z) for *_, z in ds]
    again = [_key(z) for *_, z in ds]
    ds.set_epoch(1)
    second = [_key(z) for *_, z in ds]
    assert first == again and first != second and sorted(first) == sorted(second)


def test_map_style_matches_streaming(synthetic_dir):
    m = SyntheticMapDataset(str(synthetic_dir), return_latent=True)
    assert len(m) == ROWS
    streamed = list(SyntheticDataset(str(synthetic_dir), return_latent=True))
    x, y, z = m[17]
    assert torch.equal(x, streamed[17][0]) and y == streamed[17][1] and torch.equal(z, streamed[17][2])


def test_items_are_x_y_with_classes_like_torchvision(synthetic_dir):
    streaming, mapped = SyntheticDataset(str(synthetic_dir)), SyntheticMapDataset(str(synthetic_dir))
    items = list(streaming)
    assert all(len(item) == 2 for item in items) and len(mapped[0]) == 2
    names = [str(k) for k in range(10)]
    for ds in (streaming, mapped):
        assert ds.classes == names and ds.class_to_idx == {n: k for k, n in enumerate(names)}
    assert mapped.targets == [y for _, y in items]  # map-style and streaming share the row order
    per_class = open_dataset(str(synthetic_dir)).data["per_class"]
    assert Counter(mapped.classes[y] for y in mapped.targets) == per_class
    x, y = next(iter(DataLoader(streaming, batch_size=16)))
    assert x.shape == (16, 1, 8, 8) and y.dtype == torch.int64


def test_transform_and_target_transform(synthetic_dir):
    def one_hot(y: int) -> torch.Tensor:
        return F.one_hot(torch.tensor(y), 10).float()

    def flip(x: torch.Tensor) -> torch.Tensor:
        return x.flip(-1)

    plain = SyntheticMapDataset(str(synthetic_dir), return_latent=True)
    for ds in (
        SyntheticMapDataset(str(synthetic_dir), transform=flip, target_transform=one_hot, return_latent=True),
        SyntheticDataset(str(synthetic_dir), transform=flip, target_transform=one_hot, return_latent=True),
    ):
        x, y, z = next(iter(ds))
        x0, y0, z0 = plain[0]
        assert torch.equal(x, x0.flip(-1)) and torch.equal(y, one_hot(y0)) and torch.equal(z, z0)
    batch = next(
        iter(DataLoader(SyntheticDataset(str(synthetic_dir), target_transform=one_hot), batch_size=4))
    )
    assert batch[1].shape == (4, 10)


def test_len_is_the_rows_this_rank_yields(synthetic_dir):
    ds = SyntheticDataset(str(synthetic_dir))
    assert len(ds) == ROWS == ds.num_rows
    loader = DataLoader(ds, batch_size=8)
    assert len(loader) == math.ceil(ROWS / 8) == sum(1 for _ in loader)
    assert len(DataLoader(ds, batch_size=8, drop_last=True)) == ROWS // 8
    for world in (2, 3, 4):
        for epoch in range(2):  # shuffled: other row groups, the same lengths
            ranks = [
                SyntheticDataset(
                    str(synthetic_dir), rank=r, world_size=world, shuffle=True, return_latent=True
                )
                for r in range(world)
            ]
            parts = []
            for r in ranks:
                r.set_epoch(epoch)
                parts.append([_key(z) for *_, z in r])
            assert [len(r) for r in ranks] == [len(p) for p in parts]
            assert {len(r) for r in ranks} <= {ROWS // world, ROWS // world + 1}
            assert len({k for p in parts for k in p}) == ROWS  # every row once over the ranks
    even = [SyntheticDataset(str(synthetic_dir), rank=r, world_size=4, drop_last=True) for r in range(4)]
    assert [len(r) for r in even] == [sum(1 for _ in r) for r in even] == [ROWS // 4] * 4
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        SyntheticDataset(str(synthetic_dir), rank=2, world_size=2)


def test_len_from_the_parquet_footers_with_several_row_groups(synthetic_dir, tmp_path):
    """Without `row_group_rows` in the manifest, the row-group sizes come from the files' footers."""
    m = open_dataset(str(synthetic_dir))
    (tmp_path / "data").mkdir()
    files = []
    for f in m.data["files"]:  # the same rows in row groups of 5
        pq.write_table(pq.read_table(synthetic_dir / f["path"]), tmp_path / f["path"], row_group_size=5)
        files.append({**f, "row_groups": pq.ParquetFile(tmp_path / f["path"]).num_row_groups})
    data = {k: v for k, v in m.data.items() if k != "row_group_rows"} | {"files": files}
    regrouped = SyntheticManifest(url=str(tmp_path), storage_options={}, data=data)
    assert SyntheticDataset(regrouped).group_rows() == [[5, 5, 5, 1]] * 4 + [[5, 1]]
    ranks = [SyntheticDataset(regrouped, rank=r, world_size=3, return_latent=True) for r in range(3)]
    parts = [[_key(z) for *_, z in r] for r in ranks]  # rank ranges cut through row groups
    assert [len(r) for r in ranks] == [len(p) for p in parts] == [23, 23, 24]
    reference = [_key(z) for *_, z in SyntheticDataset(str(synthetic_dir), return_latent=True)]
    assert parts[0] + parts[1] + parts[2] == reference
    from_footers = SyntheticManifest(
        url=str(synthetic_dir), storage_options={}, data=data | {"files": m.data["files"]}
    )
    assert SyntheticDataset(from_footers).group_rows() == SyntheticDataset(m).group_rows()
