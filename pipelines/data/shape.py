"""`model.image_size` and `model.channels` from the data, when the user left them unset.

Fixed-shape sources (digits, MNIST, CIFAR-10...) have a known shape; for "folder" and "parquet" the
image headers are read (not the pixels): the most common (H, W) wins (the first image's on a tie;
the others are resized when loaded), and 3 channels if any image has colour, else 1.
`resolve_data_shape` writes the result into the pipeline config once, before anything uses it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from pipelines.data.config import DataConfig
from pipelines.data.decode import ImageHeader
from pipelines.data.folder import folder_headers
from pipelines.data.parquet import parquet_headers
from vae.config import ConfigError, VAEConfig

if TYPE_CHECKING:
    from pipelines.config import PipelineConfig

log = logging.getLogger(__name__)

#: Source -> ((H, W), channels) of sources whose images all have one known shape.
FIXED_SHAPES: dict[str, tuple[tuple[int, int], int]] = {
    "digits": ((8, 8), 1),
    "mnist": ((28, 28), 1),
    "fashion-mnist": ((28, 28), 1),
    "cifar10": ((32, 32), 3),
}
#: Source -> (data config, max images) -> headers of the images it loads, for the other sources.
HEADER_READERS: dict[str, Callable[[DataConfig, int], list[ImageHeader]]] = {
    "folder": folder_headers,
    "parquet": parquet_headers,
}
#: Headers read at most per inference (spread over a folder; the first rows of Parquet data).
MAX_INSPECTED = 2048
#: The smallest side the model accepts (see `vae.config.VAEConfig`).
MIN_SIDE = 8


def infer_data_shape(data: DataConfig) -> tuple[tuple[int, int], int]:
    """The native (H, W) and channels of the images `data` describes.

    Args:
        data: the data config.

    Returns:
        ((H, W), channels), channels 1 or 3.

    Raises:
        DataError: the data cannot be read (the same one-line messages as loading it).
    """
    if data.source in FIXED_SHAPES:
        return FIXED_SHAPES[data.source]
    return most_common_shape(HEADER_READERS[data.source](data, MAX_INSPECTED))


def most_common_shape(headers: Sequence[ImageHeader]) -> tuple[tuple[int, int], int]:
    """The most common (H, W) (the earliest image's on a tie), and 3 channels if any image has colour.

    Args:
        headers: at least one image header, in load order.

    Returns:
        ((H, W), channels).
    """
    counts = Counter(header.size for header in headers)  # keeps first-seen order: max() breaks ties
    size = max(counts, key=counts.__getitem__)
    return size, 3 if any(header.colour for header in headers) else 1


def resolve_data_shape(cfg: PipelineConfig) -> str | None:
    """Set the model's `image_size`/`channels` (and `recon_loss`) the user left unset from the data.

    Call it once, before the config is saved or used: the resolved values are what the model is
    trained with, what `config.yaml` records and what later stages read. A second call does nothing.

    Args:
        cfg: the pipeline config; `cfg.model` is replaced and `cfg.infer_from_data` emptied.

    Returns:
        A line saying what was inferred (also logged), or None when nothing was left to infer.

    Raises:
        DataError: the data cannot be read.
        ConfigError: the images are smaller than the model's 8x8 minimum (set model.image_size).
    """
    keys = tuple(cfg.infer_from_data)
    if not keys:
        return None
    notes = []
    if "image_size" in keys or "channels" in keys:
        chosen = _shape_from_data(cfg, keys)
        cfg.model = dataclasses.replace(cfg.model, **chosen)
        notes.append(_note(chosen))
    if "recon_loss" in keys:
        cfg.model = dataclasses.replace(cfg.model, recon_loss=default_likelihood(cfg.model))
        kind = "grayscale [0, 1]" if cfg.model.recon_loss == "bce" else "colour or non-[0, 1]"
        notes.append(f"model.recon_loss={cfg.model.recon_loss} chosen for {kind} data (set it to override)")
    cfg.infer_from_data = ()
    note = "; ".join(notes)
    log.info(note)
    return note


def default_likelihood(model: VAEConfig) -> str:
    """The decoder likelihood for data of `model`'s channels and range, when the user sets none.

    Grayscale in [0, 1]: Bernoulli ("bce"), which measured best on MNIST (BENCHMARKS.md: label
    fidelity 0.87 vs 0.80, gain +6.5 vs +5.1 points at 20 images per class). Colour, or a range
    other than [0, 1]: the calibrated Gaussian ("gaussian", sigma-VAE, Rybkin et al. 2021), whose
    samples of natural RGB images are much sharper than Bernoulli's or a fixed-variance MSE's.
    """
    return "bce" if model.channels == 1 and model.output_activation == "sigmoid" else "gaussian"


def _shape_from_data(cfg: PipelineConfig, keys: tuple[str, ...]) -> dict[str, object]:
    size, channels = infer_data_shape(cfg.data)
    if "image_size" in keys and min(size) < MIN_SIDE:
        fix = [max(side, MIN_SIDE) for side in size]
        raise ConfigError(
            f"model.image_size: the images of data.path {cfg.data.path!r} are {size[0]}x{size[1]}, below "
            f"the model's {MIN_SIDE}x{MIN_SIDE} minimum: set model.image_size={fix} (or larger) to "
            "upscale them"
        )
    return {key: value for key, value in (("image_size", size), ("channels", channels)) if key in keys}


def _note(chosen: dict[str, object]) -> str:
    """The line about `chosen`, e.g. "model.channels=3 inferred from the data (set it to override)"."""
    values = " and ".join(
        f"model.{key}={list(value) if isinstance(value, tuple) else value}" for key, value in chosen.items()
    )
    return f"{values} inferred from the data (set {'them' if len(chosen) > 1 else 'it'} to override)"


__all__ = [
    "default_likelihood",
    "FIXED_SHAPES",
    "HEADER_READERS",
    "MAX_INSPECTED",
    "infer_data_shape",
    "most_common_shape",
    "resolve_data_shape",
]
