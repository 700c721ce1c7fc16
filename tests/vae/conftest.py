"""Fixtures shared by the `vae` package tests: tiny seeded models and the scikit-learn digits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

from vae.config import VAEConfig
from vae.model import VAE

#: Small enough that every test builds its own model in milliseconds.
TINY = {"hidden_channels": (4, 8), "latent_dim": 5}


@pytest.fixture(autouse=True)
def _single_thread(single_torch_thread: None) -> None:
    """One intra-op thread: oversubscribed BLAS threads make the digits training several times slower."""


def build_vae(seed: int = 0, **overrides) -> VAE:
    """A tiny VAE with weights drawn from `seed` (every other field from `TINY` or `overrides`)."""
    torch.manual_seed(seed)
    return VAE(VAEConfig(**{**TINY, **overrides}))


@pytest.fixture
def make_vae() -> Callable[..., VAE]:
    """Factory: `make_vae(seed=0, **config_overrides)` -> a seeded tiny VAE."""
    return build_vae


@dataclass
class Digits:
    """scikit-learn's 8x8 digits as (N, 1, 8, 8) floats in [0, 1], split once with a fixed seed."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


@pytest.fixture(scope="session")
def digits() -> Digits:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    assert x.shape == (1797, 1, 8, 8) and 0.0 <= x.min() and x.max() <= 1.0
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1234))
    train, test = perm[:1500], perm[1500:]
    return Digits(x[train], y[train], x[test], y[test])
