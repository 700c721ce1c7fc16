"""The sample grid of an exported model: its rows, its size, its real row, and its seed.

Real (untrained, seeded) VAEs on tiny random images; the grid is read back pixel by pixel.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.visualize import CELL_PX, labelled_rows, png_bytes, sample_grid
from vae.config import VAEConfig
from vae.model import VAE

H = W = 8
PAD = 2  # make_grid's padding in `labelled_rows`
LABEL_W = 110  # the caption column
SCALE = CELL_PX // H  # each 8x8 image is upscaled 6x
ROW_PX = (H + 2 * PAD) * SCALE  # one grid row: image, padding above and below


def _model(num_classes: int | None, seed: int = 0) -> VAE:
    torch.manual_seed(seed)
    cfg = VAEConfig(
        image_size=(H, W), channels=1, hidden_channels=(4, 8), latent_dim=2, num_classes=num_classes
    )
    return VAE(cfg)


def _real(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, H, W, generator=gen), torch.randint(0, 3, (n,), generator=gen)


def _cell(grid: Image.Image, row: int, column: int) -> np.ndarray:
    """The (H, W) gray values of the image at (row, column), read at the centre of each upscaled pixel."""
    pixels = np.asarray(grid.convert("L"))
    left = LABEL_W + (PAD + column * (W + PAD)) * SCALE
    top = row * ROW_PX + PAD * SCALE
    ys = top + SCALE * np.arange(H) + SCALE // 2
    xs = left + SCALE * np.arange(W) + SCALE // 2
    return pixels[np.ix_(ys, xs)]


@pytest.mark.parametrize(("num_classes", "sample_rows"), [(3, 3), (None, 4)])
def test_the_grid_has_sample_rows_then_real_and_reconstruction(num_classes, sample_rows) -> None:
    """One sample row per class (conditional) or four (unconditional), then a real and a
    reconstruction row, `per_row` images wide; the real row shows the first `per_row` images."""
    real, labels = _real(12)
    grid = sample_grid(_model(num_classes), real, labels, ["a", "b", "c", "d"], per_row=10)
    rows = sample_rows + 2
    assert grid.size == (LABEL_W + (10 * (W + PAD) + PAD) * SCALE, rows * ROW_PX)
    for column in (0, 9):
        expected = (real[column, 0] * 255).round().to(torch.uint8).numpy()
        np.testing.assert_array_equal(_cell(grid, sample_rows, column), expected)
    reconstruction = _cell(grid, sample_rows + 1, 0)
    assert not np.array_equal(reconstruction, _cell(grid, sample_rows, 0))  # the decoder's, not a copy


def test_the_seed_decides_the_samples_and_nothing_else() -> None:
    real, labels = _real(10)
    model = _model(3)
    one = sample_grid(model, real, labels, ["a", "b", "c"], seed=0)
    again = sample_grid(model, real, labels, ["a", "b", "c"], seed=0)
    other = sample_grid(model, real, labels, ["a", "b", "c"], seed=1)
    assert png_bytes(one) == png_bytes(again)
    assert not np.array_equal(_cell(one, 0, 0), _cell(other, 0, 0))  # other prior draws...
    for row in (3, 4):  # ...the same real images and reconstructions (the posterior mean)
        np.testing.assert_array_equal(_cell(one, row, 0), _cell(other, row, 0))


def test_labelled_rows_stacks_rows_of_any_width() -> None:
    wide, narrow = torch.zeros(5, 1, H, W), torch.ones(2, 1, H, W)
    canvas = labelled_rows([("wide", wide), ("narrow", narrow)], per_row=5)
    assert canvas.size == (LABEL_W + (5 * (W + PAD) + PAD) * SCALE, 2 * ROW_PX)
    assert (_cell(canvas, 1, 1) == 255).all() and (_cell(canvas, 0, 4) == 0).all()
    assert canvas.getpixel((canvas.width - 1, ROW_PX + ROW_PX // 2)) == (255, 255, 255)  # white beyond
