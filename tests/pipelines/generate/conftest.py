"""Fixtures of the generation tests: tiny saved models (conditional and not) and digits."""

from __future__ import annotations

import pytest

from tests.pipelines.generate.helpers import save_tiny_model


@pytest.fixture(autouse=True)
def _single_thread(single_torch_thread: None) -> None:
    """One intra-op thread (the Ray actors use one too)."""


@pytest.fixture(scope="session")
def cond_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A saved conditional tiny VAE (classes "0".."9")."""
    return save_tiny_model(tmp_path_factory.mktemp("models") / "cond", conditional=True)


@pytest.fixture(scope="session")
def uncond_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A saved unconditional tiny VAE."""
    return save_tiny_model(tmp_path_factory.mktemp("models") / "uncond", conditional=False)
