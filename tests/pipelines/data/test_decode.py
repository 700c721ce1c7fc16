"""Image decoding to the model's size and channels: real PNG/JPEG bytes written by PIL, every mode."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.data.decode import (
    ImageDecodeError,
    decode_image,
    fit_batch,
    has_image_extension,
    read_header,
    uint8_to_unit,
)


def _encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _rgb(h: int = 4, w: int = 6) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)  # (H, W, 3)


def test_rgb_to_gray_uses_pils_luma_and_gray_to_rgb_repeats():
    arr = _rgb()
    rgb = decode_image(_encode(Image.fromarray(arr)), (4, 6), 3)
    assert rgb.shape == (3, 4, 6) and rgb.dtype == np.float32
    assert np.array_equal(rgb, arr.transpose(2, 0, 1) / np.float32(255))
    gray = decode_image(_encode(Image.fromarray(arr)), (4, 6), 1)
    expected = np.asarray(Image.fromarray(arr).convert("L"), dtype=np.float32) / 255
    assert np.array_equal(gray[0], expected)
    back = decode_image(_encode(Image.fromarray(arr).convert("L")), (4, 6), 3)
    assert np.array_equal(back[0], back[2]) and np.array_equal(back[0], expected)


def test_sixteen_bit_gray_keeps_its_precision():
    arr = np.array([[0, 257, 65535]], dtype=np.uint16)  # 257 / 65535 is between two 8-bit levels
    out = decode_image(_encode(Image.fromarray(arr)), (1, 3), 1)
    assert out[0, 0].tolist() == pytest.approx([0.0, 257 / 65535, 1.0])


def test_resizing_and_transparency():
    big = decode_image(_encode(Image.fromarray(_rgb(32, 32))), (8, 4), 3)
    assert big.shape == (3, 8, 4) and 0 <= big.min() and big.max() <= 1
    rgba = Image.new("RGBA", (5, 5), (255, 0, 0, 0))
    assert decode_image(_encode(rgba), (5, 5), 3)[:, 0, 0].tolist() == [1.0, 0.0, 0.0]


def test_the_header_gives_size_after_orientation_and_colour():
    wide = Image.fromarray(_rgb(4, 6))
    exif = wide.getexif()
    exif[0x0112] = 6  # EXIF orientation: rotated 90 degrees
    rotated = _encode(wide, "JPEG", exif=exif)
    assert read_header(rotated) == ((6, 4), True)
    assert decode_image(rotated, (6, 4), 3).shape == (3, 6, 4)
    gray_palette = Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4)).convert("L").convert("P")
    assert read_header(_encode(gray_palette)) == ((3, 4), False)
    assert read_header(_encode(Image.fromarray(_rgb()).convert("P"))).colour


@pytest.mark.parametrize("data", [b"", b"not an image", _encode(Image.fromarray(_rgb()))[:40]])
def test_unreadable_bytes_are_one_line_decode_errors(data):
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(data, (4, 6), 3)
    assert "\n" not in str(caught.value) and str(caught.value)


def test_fit_batch_converts_channels_and_size():
    x = torch.rand(2, 3, 8, 8)  # (N, C, H, W)
    gray = fit_batch(x, (8, 8), 1)
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    assert torch.allclose(gray, (x * weights).sum(1, keepdim=True))
    small = fit_batch(gray, (4, 4), 3)
    assert small.shape == (2, 3, 4, 4) and torch.equal(small[:, 0], small[:, 2])
    assert fit_batch(x, (8, 8), 3).data_ptr() == x.data_ptr()  # already fits: no copy


def test_uint8_layouts():
    hw = np.full((2, 3, 4), 255, dtype=np.uint8)  # (N, H, W)
    assert uint8_to_unit(hw, channels_last=False).shape == (2, 1, 3, 4)
    hwc = np.zeros((2, 3, 4, 3), dtype=np.uint8)  # (N, H, W, C)
    out = uint8_to_unit(hwc, channels_last=True)
    assert out.shape == (2, 3, 3, 4) and out.dtype == torch.float32
    assert uint8_to_unit(hw, channels_last=False).max() == 1.0


def test_image_extensions_ignore_case():
    assert has_image_extension("a/B.PNG") and has_image_extension("x.jpeg")
    assert not has_image_extension("notes.txt") and not has_image_extension("png")
