"""`ImageSet`: fingerprint, subset and the seeded held-out split, on real digits."""

from __future__ import annotations

import torch

from pipelines.data import DataConfig, load_images
from tests.pipelines.data.imagetree import GRAY8


def test_digits_limit_fingerprint_split():
    full, again = load_images(DataConfig(), GRAY8), load_images(DataConfig(), GRAY8)
    assert full.fingerprint() == again.fingerprint()
    small = load_images(DataConfig(limit=100), GRAY8)
    assert len(small) == 100 and torch.equal(small.images, full.images[:100])
    assert small.fingerprint() != full.fingerprint()

    train, val = full.split(0.2, seed=3)
    train2, val2 = full.split(0.2, seed=3)
    assert train.ids == train2.ids and val.ids == val2.ids
    assert len(val) == round(1797 * 0.2) and len(train) + len(val) == 1797
    assert not set(train.ids) & set(val.ids)
    assert val.ids != full.split(0.2, seed=4)[1].ids
    assert torch.equal(val.images, full.subset([int(i.split("/")[1]) for i in val.ids]).images)
    tiny_train, tiny_val = small.split(0.001, seed=0)
    assert len(tiny_val) == 1 and len(tiny_train) == 99
    assert len(small.split(0.0)[1]) == 0
