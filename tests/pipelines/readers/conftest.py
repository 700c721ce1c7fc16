"""Fixtures of the reader tests: a small committed conditional dataset."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.generate import generate
from tests.pipelines.generate.helpers import make_cfg, save_tiny_model

#: Rows of `synthetic_dir`: 5 files of <= 16 rows, 8x8 grayscale, latent_dim 4, classes "0".."9".
ROWS = 70


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A committed conditional dataset written in-process (no Ray)."""
    root = tmp_path_factory.mktemp("readers-ds")
    model = save_tiny_model(root / "model", conditional=True)
    generate(make_cfg(str(root / "ds"), num_samples=ROWS), model_dir=model, progress=False, use_ray=False)
    return root / "ds"
