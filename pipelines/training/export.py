"""The training stage's output at `PipelineConfig.model_dir`, read by the sampling stage.

Layout (local path or fsspec URL):
    model/config.json, model.safetensors, environment.json   (vae.io: self-describing model)
    model/metrics.json     per-epoch history (train/held-out loss, recon, KL, samples/s)
    model/loss_curve.png   the history as a plot
    model/samples.png      prior samples per class + real images and their reconstructions
    model/pipeline.yaml    the merged pipeline config that produced the model (secrets redacted)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pipelines.config import PipelineConfig, config_yaml
from pipelines.data.imageset import ImageSet
from pipelines.storage import join, open_url
from pipelines.visualize import loss_curve, png_bytes, sample_grid
from vae.io import SavedModel, save_model
from vae.model import VAE

#: The exported model's metrics history: one JSON array of epoch rows (a run's own record, one
#: line per epoch as it trains, is `ray_train.RUN_METRICS_FILE`).
MODEL_METRICS_FILE = "metrics.json"
LOSS_CURVE_FILE = "loss_curve.png"
GRID_FILE = "samples.png"
CONFIG_COPY = "pipeline.yaml"


@dataclass
class TrainResult:
    """What a training run produced."""

    model_dir: str
    sha256: str
    history: list[dict[str, float]]
    grid_path: str
    resumed_from_epoch: int = 0

    @property
    def final(self) -> dict[str, float]:
        """Metrics of the last epoch."""
        return self.history[-1] if self.history else {}


def export_trained_model(
    model: VAE,
    cfg: PipelineConfig,
    class_names: Sequence[str],
    data_fingerprint: str,
    history: Sequence[dict[str, Any]],
    preview: ImageSet,
    resumed_from_epoch: int = 0,
    train: ImageSet | None = None,
) -> TrainResult:
    """Fit the sampling prior (`latent_prior="fitted"`), then write the model and its reports.

    Args:
        model: the trained VAE (unwrapped, any device).
        cfg: the pipeline config (saved next to the model).
        class_names: the data's class names, in label order.
        data_fingerprint: `ImageSet.fingerprint()` of the training data (provenance, caching).
        history: one metrics dict per epoch (keys: epoch, train_loss, val_loss, ...).
        preview: held-out images for the reconstruction rows of the grid.
        resumed_from_epoch: epochs that were restored from a checkpoint rather than run now.
        train: the training split the fitted prior is fitted to (required for a "fitted" prior).

    Returns:
        `TrainResult` with the model location and checksum.
    """
    model = model.eval()
    if model.cfg.latent_prior == "fitted":
        if train is None:
            raise ValueError("a model with latent_prior='fitted' needs its training images to export")
        model.fit_latent_prior(train.images, train.labels)
    stored = cfg.to_dict(redact=True)  # the model travels (shared, published): never its credentials
    extra = {
        "class_names": list(class_names),
        "data_fingerprint": data_fingerprint,
        "data": stored["data"],
        "train": stored["train"],
        "epochs_trained": int(history[-1]["epoch"]) if history else 0,
    }
    saved: SavedModel = save_model(model, cfg.model_dir, extra=extra)
    _write_reports(model, cfg, class_names, history, preview)
    return TrainResult(
        model_dir=cfg.model_dir,
        sha256=saved.sha256,
        history=list(history),
        grid_path=join(cfg.model_dir, GRID_FILE),
        resumed_from_epoch=resumed_from_epoch,
    )


def _write_reports(
    model: VAE,
    cfg: PipelineConfig,
    class_names: Sequence[str],
    history: Sequence[dict[str, Any]],
    preview: ImageSet,
) -> None:
    """The metrics history, its loss curve, the sample grid and the config, next to the model."""
    fs, root = open_url(cfg.model_dir)
    fs.pipe_file(join(root, MODEL_METRICS_FILE), json.dumps(list(history), indent=2).encode())
    if history:
        fs.pipe_file(join(root, LOSS_CURVE_FILE), loss_curve(history))
    grid = sample_grid(model, preview.images, preview.labels, class_names, seed=cfg.train.seed)
    fs.pipe_file(join(root, GRID_FILE), png_bytes(grid))
    fs.pipe_file(join(root, CONFIG_COPY), config_yaml(cfg).encode())


def read_train_result(model_dir: str) -> TrainResult:
    """The `TrainResult` of a model exported earlier (e.g. by a Ray Job on a remote cluster).

    Args:
        model_dir: the exported model directory (local or fsspec URL).

    Returns:
        Its location, checksum and metrics history.
    """
    from vae.io import model_checksum

    sha = model_checksum(model_dir)
    fs, root = open_url(model_dir)
    metrics = join(root, MODEL_METRICS_FILE)
    history = json.loads(fs.cat_file(metrics)) if fs.exists(metrics) else []
    return TrainResult(model_dir=model_dir, sha256=sha, history=history, grid_path=join(model_dir, GRID_FILE))
