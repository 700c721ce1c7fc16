"""An epoch's metrics row and the console line that shows it (the text users read every epoch)."""

from __future__ import annotations

from pipelines.training.epochs import epoch_row, format_epoch
from vae.training import EpochMetrics


def test_a_row_with_a_held_out_split_and_its_line() -> None:
    row = epoch_row(
        3, EpochMetrics(20.5, 19.25, 1.25, 900, 2.0), EpochMetrics(21.0, 19.5, 1.5, 100, 0.1), 450.4
    )
    assert row == {
        "epoch": 3,
        "train_loss": 20.5,
        "train_recon": 19.25,
        "train_kl": 1.25,
        "samples_per_s": 450.4,
        "val_loss": 21.0,
        "val_recon": 19.5,
        "val_kl": 1.5,
    }
    assert format_epoch(row, 30) == (
        "epoch   3/30  train 20.500 (recon 19.250, kl 1.250)  held-out 21.000  450 samples/s"
    )


def test_a_row_without_a_held_out_split_and_its_line() -> None:
    row = epoch_row(12, EpochMetrics(1.0, 0.75, 0.25, 10, 1.0), None, 10.0)
    assert "val_loss" not in row
    assert format_epoch(row, 100) == "epoch  12/100  train 1.000 (recon 0.750, kl 0.250)  10 samples/s"
