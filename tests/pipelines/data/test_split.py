"""`pipelines.data.split`: the one held-out split every stage sees, pinned to its indices.

The split decides which real images a model never trained on; the held-out figures, the usefulness
report and a model cache all assume it never changes for the same images, fraction and seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from pipelines.config import load_config
from pipelines.data import DataConfig, load_images
from pipelines.data.index import index_source
from pipelines.data.split import HeldOut, split_indices, split_sizes, stream_source
from tests.pipelines.data.imagetree import GRAY8


def test_the_split_is_pinned_for_a_seed():
    """The same positions as every release so far: a change here moves every model's held-out set."""
    train, val = split_indices(20, 0.25, seed=7)
    assert val.tolist() == [7, 9, 12, 15, 17]
    assert train.tolist() == sorted(set(range(20)) - {7, 9, 12, 15, 17}) and train.dtype == np.int64
    assert split_indices(20, 0.25, seed=8)[1].tolist() != val.tolist()


@pytest.mark.parametrize(
    ("n", "fraction", "sizes"),
    [(10, 0.0, (10, 0)), (10, 0.001, (9, 1)), (10, 0.25, (8, 2)), (3, 0.9, (1, 2)), (1, 0.0, (1, 0))],
)
def test_sizes_keep_one_image_on_each_side(n, fraction, sizes):
    assert split_sizes(n, fraction) == sizes
    train, val = split_indices(n, fraction, seed=0)
    assert (len(train), len(val)) == sizes and sorted([*train, *val]) == list(range(n))


def test_bad_fractions_and_too_few_images_are_refused():
    with pytest.raises(ValueError, match=r"val_fraction=1.0: use a value in \[0, 1\)"):
        split_sizes(10, 1.0)
    with pytest.raises(ValueError, match="cannot split 1 image"):
        split_sizes(1, 0.5)


@dataclass
class _Train:
    val_fraction: float
    seed: int


def test_held_out_is_the_recorded_split_of_a_saved_model_else_the_run_s():
    run = load_config(None, ["train.val_fraction=0.2", "train.seed=5"]).train
    assert HeldOut.of(run) == (0.2, 5)
    recorded = {"extra": {"train": {"val_fraction": 0.3, "seed": 9}}}
    assert HeldOut.of(run, recorded) == HeldOut(0.3, 9)
    assert HeldOut.of(_Train(0.1, 1), {"extra": {"train": {"seed": 4}}}) == (0.1, 4)  # partly recorded
    assert HeldOut.of(_Train(0.1, 1), {"extra": None}) == (0.1, 1)  # a model saved without it


def test_a_listed_source_and_its_loaded_images_split_alike(tree):
    """The streamed source's items, the loaded set's split and every count of them agree."""
    data = DataConfig(source="folder", path=str(tree))
    loaded = load_images(data, GRAY8)
    streamed = stream_source(index_source(data, GRAY8.image_size, GRAY8.channels), *HeldOut(0.4, 3))
    train, val = loaded.split(*HeldOut(0.4, 3))
    assert [loaded.ids[i] for i in streamed.val_items] == val.ids
    assert [loaded.ids[i] for i in streamed.train_items] == train.ids
    assert loaded.source_split_sizes(0.4) == (len(train), len(val)) == (4, 2)
    sample = loaded.subset([0, 1])  # a sample standing for the whole streamed source
    sample.stream = streamed
    assert sample.source_split_sizes(0.4) == (4, 2) and sample.source_size == 6
