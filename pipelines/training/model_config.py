"""The model config a run trains: `cfg.model` completed from the data it trains on."""

from __future__ import annotations

import dataclasses

from pipelines.config import PipelineConfig
from pipelines.data.imageset import ImageSet
from vae.config import VAEConfig


def model_config_for(cfg: PipelineConfig, data: ImageSet) -> VAEConfig:
    """`cfg.model` with `num_classes` set from the data when `cfg.conditional` (else None)."""
    num_classes = len(data.class_names) if cfg.conditional else None
    if num_classes is not None and num_classes < 2:
        num_classes = None  # a single class carries no information to condition on
    return dataclasses.replace(cfg.model, num_classes=num_classes)
