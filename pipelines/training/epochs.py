"""What every runner's epoch shares: the held-out batch size, the metrics row, and its console line."""

from __future__ import annotations

from vae.training import EpochMetrics

#: Held-out images per evaluation batch (the local loop, and each Ray Train worker's share).
VAL_BATCH = 1024


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
