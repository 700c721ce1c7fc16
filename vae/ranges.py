"""Conversion between [0, 1] pixel intensities and the range the model's output activation fits."""

from __future__ import annotations

import torch

from vae.config import VAEConfig


def to_model_range(x01: torch.Tensor, cfg: VAEConfig) -> torch.Tensor:
    """Map images in [0, 1] to the model's data range.

    Args:
        x01: float images in [0, 1], any shape.
        cfg: the model config; its `output_activation` selects the range.

    Returns:
        sigmoid: unchanged; tanh: 2x - 1; linear: (x - norm_mean) / norm_std.
    """
    if cfg.output_activation == "sigmoid":
        return x01
    if cfg.output_activation == "tanh":
        return x01 * 2.0 - 1.0
    return (x01 - cfg.norm_mean) / cfg.norm_std


def to_unit_range(x: torch.Tensor, cfg: VAEConfig) -> torch.Tensor:
    """Inverse of `to_model_range`, clamped to [0, 1] (for PNG encoding and display)."""
    if cfg.output_activation == "sigmoid":
        out = x
    elif cfg.output_activation == "tanh":
        out = (x + 1.0) * 0.5
    else:
        out = x * cfg.norm_std + cfg.norm_mean
    return out.clamp(0.0, 1.0)


def to_uint8(x: torch.Tensor, cfg: VAEConfig) -> torch.Tensor:
    """Model-range images -> uint8 in [0, 255] (round to nearest)."""
    return (to_unit_range(x, cfg) * 255.0).round().to(torch.uint8)
