"""Image conversion to the model's size and channels: encoded files via PIL, arrays via torch.

Everything here returns float32 in [0, 1]; `load_images` maps to the model's range afterwards.
"""

from __future__ import annotations

import io
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import ExifTags, Image, UnidentifiedImageError

from pipelines.storage import first_line

#: File extensions the file-based sources accept (compared case-insensitively).
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg")

#: ITU-R 601-2 luma weights, the ones PIL's convert("L") uses.
_LUMA = (0.299, 0.587, 0.114)
_CHUNK = 4096
#: Bytes fetched to read an image's header (PNG/JPEG headers fit; larger ones are refetched whole).
HEADER_BYTES = 64 * 1024
#: EXIF orientations that rotate by 90 degrees (height and width swap when decoded).
_TRANSPOSING = (5, 6, 7, 8)


class ImageDecodeError(Exception):
    """Bytes that are not a readable image; the message is the reason, without the file name."""


class ImageHeader(NamedTuple):
    """What an image file's header says about the decoded image."""

    size: tuple[int, int]  # (H, W) after EXIF orientation, as `decode_image` sees it
    colour: bool  # any colour band (RGB, RGBA, CMYK, YCbCr...) or a palette with a colour entry


def read_header(data: bytes) -> ImageHeader:
    """Size and colourfulness of an encoded image, from its header only (the pixels are not decoded).

    Args:
        data: the encoded file, or its first bytes (`HEADER_BYTES` are enough for most files).

    Returns:
        The `ImageHeader`.

    Raises:
        ImageDecodeError: the bytes are not a readable image header (or too few of them).
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if _orientation(img) in _TRANSPOSING:
                width, height = height, width
            return ImageHeader(size=(height, width), colour=_is_colour(img))
    except UnidentifiedImageError:
        raise ImageDecodeError("cannot identify image file") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(first_line(exc)) from None


def _orientation(img: Image.Image) -> int:
    """EXIF orientation from the header's EXIF block (1 when absent), without decoding the pixels."""
    raw = img.info.get("exif")
    if not raw:
        return 1
    exif = Image.Exif()
    try:
        exif.load(raw)
        return int(exif.get(ExifTags.Base.Orientation, 1))
    except Exception:  # malformed EXIF (struct, value, type errors...): no orientation
        return 1


def _is_colour(img: Image.Image) -> bool:
    """Whether an opened (not loaded) image has colour: colour bands, or a palette with a colour entry."""
    if img.mode in ("P", "PA"):
        if img.palette is None:
            return False
        mode, raw = img.palette.getdata()
        if mode not in ("RGB", "RGBA"):
            return True  # an unusual palette layout: keep the colour
        entries = np.frombuffer(raw, dtype=np.uint8)
        entries = entries[: len(entries) // len(mode) * len(mode)].reshape(-1, len(mode))[:, :3]
        return bool((entries != entries[:, :1]).any())
    return len([band for band in img.getbands() if band not in ("A", "a")]) > 1


def decode_image(data: bytes, size: tuple[int, int], channels: int) -> np.ndarray:
    """Decode one PNG/JPEG (any size and mode) to the target size and channels.

    Args:
        data: the encoded file.
        size: target (H, W).
        channels: 1 (converted to PIL mode "L") or 3 (mode "RGB").

    Returns:
        float32 (C, H, W) in [0, 1].

    Raises:
        ImageDecodeError: the bytes are not a readable image (the caller names the file).
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return _pil_to_unit(img, size, channels)
    except UnidentifiedImageError:
        raise ImageDecodeError("cannot identify image file") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(first_line(exc)) from None


def _pil_to_unit(img: Image.Image, size: tuple[int, int], channels: int) -> np.ndarray:
    """PIL image -> float32 (C, H, W) in [0, 1], honouring EXIF orientation."""
    if img.getexif().get(ExifTags.Base.Orientation, 1) != 1:
        from PIL import ImageOps

        img = ImageOps.exif_transpose(img)
    height, width = size
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        # 16-bit (or float) grayscale: keep the precision, resize in float mode.
        scale = 1.0 if img.mode == "F" else 65535.0
        arr = np.asarray(img, dtype=np.float32) / scale  # (h, w)
        fimg = Image.fromarray(arr)  # mode "F"
        if fimg.size != (width, height):
            fimg = fimg.resize((width, height), Image.Resampling.BILINEAR)
        gray = np.clip(np.asarray(fimg, dtype=np.float32), 0.0, 1.0)[None]  # (1, H, W)
        return np.repeat(gray, channels, axis=0)
    if img.mode in ("P", "PA") and ("transparency" in img.info or img.mode == "PA"):
        img = img.convert("RGBA")  # avoids PIL's palette-transparency warning
    img = img.convert("L" if channels == 1 else "RGB")
    if img.size != (width, height):
        # PIL's bilinear resize is antialiased when downscaling.
        img = img.resize((width, height), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)  # (H, W) or (H, W, 3)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)  # (C, H, W)
    return arr.astype(np.float32) / 255.0


def fit_batch(x01: torch.Tensor, size: tuple[int, int], channels: int) -> torch.Tensor:
    """Convert a batch of unit-range images to the target channels and size (no-op when they match).

    Args:
        x01: float (N, C0, H0, W0) in [0, 1], C0 in {1, 3}.
        size: target (H, W); resized with antialiased bilinear interpolation when different.
        channels: target channels, 1 (luma) or 3 (gray repeated).

    Returns:
        float32 (N, channels, H, W) in [0, 1].
    """
    x01 = x01.to(torch.float32)
    if x01.shape[1] == 3 and channels == 1:
        weights = torch.tensor(_LUMA, dtype=torch.float32).view(1, 3, 1, 1)
        x01 = (x01 * weights).sum(dim=1, keepdim=True)  # (N, 1, H0, W0)
    if tuple(x01.shape[2:]) != tuple(size):
        parts = [
            F.interpolate(chunk, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
            for chunk in x01.split(_CHUNK)
        ]
        x01 = torch.cat(parts).clamp_(0.0, 1.0)  # (N, C, H, W)
    if x01.shape[1] == 1 and channels == 3:
        x01 = x01.expand(-1, 3, -1, -1)
    return x01.contiguous()


def uint8_to_unit(arr: np.ndarray | torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 images -> float32 (N, C, H, W) in [0, 1].

    Args:
        arr: (N, H, W) grayscale, or (N, H, W, C) when `channels_last`, else (N, C, H, W).
        channels_last: whether the channel axis is last.

    Returns:
        float32 (N, C, H, W) in [0, 1].
    """
    t = torch.as_tensor(arr)
    if t.ndim == 3:
        t = t.unsqueeze(1)  # (N, 1, H, W)
    elif channels_last:
        t = t.permute(0, 3, 1, 2)  # (N, C, H, W)
    return t.to(torch.float32, copy=True).div_(255.0)


def decode_png(png: bytes) -> torch.Tensor:
    """A PNG as stored in a synthetic dataset -> float32 (C, H, W) in [0, 1], channels as stored."""
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_png as tv_decode_png

    raw = torch.frombuffer(bytearray(png), dtype=torch.uint8)
    return tv_decode_png(raw, mode=ImageReadMode.UNCHANGED).float().div_(255.0)


def has_image_extension(name: str) -> bool:
    """Whether `name` ends with one of `IMAGE_EXTENSIONS` (case-insensitive)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


__all__ = [
    "decode_png",
    "HEADER_BYTES",
    "IMAGE_EXTENSIONS",
    "ImageDecodeError",
    "ImageHeader",
    "decode_image",
    "fit_batch",
    "has_image_extension",
    "read_header",
    "uint8_to_unit",
]
