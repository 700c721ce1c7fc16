"""Mixing real and synthetic data at a given ratio: map-style (exact, seeded) and streaming."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from pipelines.readers import MixedDataset, MixedIterableDataset, SyntheticDataset, SyntheticMapDataset, mix
from tests.pipelines.readers.conftest import ROWS


def _real(n: int) -> TensorDataset:
    return TensorDataset(torch.zeros(n, 1, 8, 8), torch.full((n,), 3))


def test_mix_at_a_given_ratio_is_exact_and_deterministic(synthetic_dir):
    synthetic = SyntheticMapDataset(str(synthetic_dir))
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


def test_mix_streaming_interleaves_exactly(synthetic_dir):
    mixed = mix(
        [(torch.zeros(1, 8, 8), 3)] * 100, SyntheticDataset(str(synthetic_dir)), synthetic_fraction=0.5
    )
    assert isinstance(mixed, MixedIterableDataset)
    flags = [flag for *_, flag in MixedIterableDataset(mixed.real, mixed.synthetic, 0.5, return_source=True)]
    assert len(flags) == 2 * ROWS + 1  # R, S, R, S, ... R: stops when the synthetic stream runs out
    assert all(sum(flags[: 2 * k]) == k for k in range(1, ROWS + 1))


def test_mix_rejects_bad_fraction(synthetic_dir):
    with pytest.raises(ValueError, match="synthetic_fraction"):
        mix(_real(3), _real(3), synthetic_fraction=1.5)


def test_mix_keeps_transformed_labels(synthetic_dir):
    def one_hot(y: int) -> torch.Tensor:
        return F.one_hot(torch.tensor(y), 10).float()

    synthetic = SyntheticMapDataset(str(synthetic_dir), target_transform=one_hot)
    real = TensorDataset(torch.zeros(30, 1, 8, 8), F.one_hot(torch.full((30,), 3), 10).float())
    x, y = next(iter(DataLoader(mix(real, synthetic, synthetic_fraction=0.5), batch_size=60)))
    assert x.shape == (60, 1, 8, 8) and y.shape == (60, 10) and torch.equal(y.sum(1), torch.ones(60))


def test_mix_options_are_keywords_and_checked():
    """`seed`, `size` and `return_source` are keywords (the map-style and streaming mixers used to take
    different 4th positional arguments); a misspelt option is refused, not ignored."""
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['sede'\]"):
        mix(_real(3), _real(3), 0.5, sede=1)
    with pytest.raises(TypeError):
        MixedDataset(_real(3), _real(3), 0.5, 1)  # type: ignore[misc]
    assert len(mix(_real(3), _real(3), 0.5, size=8, seed=2)) == 8
