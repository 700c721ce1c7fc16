"""Real digits as [0, 1] pools, split three ways, for the usefulness tests."""

from __future__ import annotations

import pytest
import torch

from pipelines.data import DataConfig, load_images
from pipelines.usefulness.classifier import Pool, Recipe
from vae.config import VAEConfig

#: Enough steps for ~95% on digits, few enough for a quick test.
QUICK = Recipe(steps=150, batch_size=64, width=8)


@pytest.fixture(autouse=True)
def _single_thread(single_torch_thread: None) -> None:
    """One intra-op thread: tiny CNNs on shared cores."""


@pytest.fixture(scope="session")
def digit_pools() -> dict[str, Pool]:
    """All 1797 digits in [0, 1], cut (seeded) into train 900, heldout 400 and other 497."""
    data = load_images(DataConfig(source="digits"), VAEConfig(image_size=(8, 8), channels=1))
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    cuts = {"train": perm[:900], "heldout": perm[900:1300], "other": perm[1300:]}
    return {k: Pool(data.images[idx].contiguous(), data.labels[idx].contiguous()) for k, idx in cuts.items()}
