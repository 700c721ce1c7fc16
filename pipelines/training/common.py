"""Pieces every training runner shares: the model config for the data, metrics rows, console lines."""

from __future__ import annotations

import dataclasses

from pipelines.config import PipelineConfig
from pipelines.data.imageset import ImageSet
from vae.config import VAEConfig
from vae.training import EpochMetrics


def model_config_for(cfg: PipelineConfig, data: ImageSet) -> VAEConfig:
    """`cfg.model` with `num_classes` set from the data when `cfg.conditional` (else None)."""
    num_classes = len(data.class_names) if cfg.conditional else None
    if num_classes is not None and num_classes < 2:
        num_classes = None  # a single class carries no information to condition on
    return dataclasses.replace(cfg.model, num_classes=num_classes)


def epoch_row(
    epoch: int, train: EpochMetrics, val: EpochMetrics | None, samples_per_s: float
) -> dict[str, float]:
    """One line of the metrics history (the same keys for every runner).

    Args:
        epoch: 1-based epoch number.
        train: training-pass means.
        val: held-out means, or None without a held-out split.
        samples_per_s: training throughput of the whole job (all workers).

    Returns:
        A flat dict of floats (JSON-ready).
    """
    row = {
        "epoch": epoch,
        "train_loss": train.loss,
        "train_recon": train.recon,
        "train_kl": train.kl,
        "samples_per_s": samples_per_s,
    }
    if val is not None:
        row.update(val_loss=val.loss, val_recon=val.recon, val_kl=val.kl)
    return row


def format_epoch(row: dict[str, float], epochs: int) -> str:
    """The line shown to the user after each epoch."""
    text = (
        f"epoch {int(row['epoch']):>3}/{epochs}  train {row['train_loss']:.3f} "
        f"(recon {row['train_recon']:.3f}, kl {row['train_kl']:.3f})"
    )
    if "val_loss" in row:
        text += f"  held-out {row['val_loss']:.3f}"
    return text + f"  {row['samples_per_s']:.0f} samples/s"
