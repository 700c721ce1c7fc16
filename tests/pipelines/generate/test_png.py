"""The PNG encoder of the shards: files that PIL and torchvision decode to the exact pixels, with
either zlib backend, and a clear error when the chosen backend is not installed."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import decode_png

from pipelines.errors import PipelineError
from pipelines.generate.png import BACKENDS, PNGEncoder


@pytest.mark.parametrize(
    ("shape", "level"), [((1, 8, 8), 1), ((3, 5, 9), 0), ((1, 28, 28), 9), ((3, 32, 32), 6)]
)
def test_png_round_trips_through_pil_and_torchvision(shape, level):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(3, *shape), dtype=np.uint8)
    pngs = PNGEncoder(*shape, level=level).encode_batch(x)
    for img, png in zip(x, pngs, strict=True):
        pil = np.asarray(Image.open(io.BytesIO(png)))
        assert pil.reshape(shape[1], shape[2], -1).transpose(2, 0, 1).tolist() == img.tolist()
        tv = decode_png(torch.frombuffer(bytearray(png), dtype=torch.uint8))
        assert tv.numpy().tolist() == img.tolist()


@pytest.mark.parametrize("backend", BACKENDS)
def test_png_backends_give_valid_pngs(backend):
    if backend == "zlib-ng":
        pytest.importorskip("zlib_ng")
    x = np.random.default_rng(1).integers(0, 256, size=(2, 1, 28, 28), dtype=np.uint8)
    for img, png in zip(x, PNGEncoder(1, 28, 28, level=1, backend=backend).encode_batch(x), strict=True):
        assert np.asarray(Image.open(io.BytesIO(png))).tolist() == img[0].tolist()


def test_missing_png_backend_is_a_clear_error(monkeypatch):
    import pipelines.generate.png as png

    monkeypatch.setattr(png, "_zlib_ng", lambda: None)
    assert png.default_backend() == "zlib"
    with pytest.raises(PipelineError, match="pip install zlib-ng"):
        PNGEncoder(1, 8, 8, backend="zlib-ng")
