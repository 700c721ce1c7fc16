"""The pipeline's stages as plain functions (the CLI and the Prefect flow call these)."""

from __future__ import annotations

import fsspec

from pipelines.config import PipelineConfig, save_config
from pipelines.data import load_images
from pipelines.training.common import format_epoch
from pipelines.training.export import TrainResult
from pipelines.training.local import fit_local

CONFIG_FILE = "config.yaml"


def save_merged_config(cfg: PipelineConfig) -> str:
    """Write the merged config (secrets redacted) to `<output_dir>/config.yaml`; returns its path."""
    fs, root = fsspec.core.url_to_fs(cfg.output_dir)
    fs.makedirs(root, exist_ok=True)
    path = root.rstrip("/") + "/" + CONFIG_FILE
    fs.pipe_file(path, save_config(cfg).encode())
    return cfg.output_dir.rstrip("/") + "/" + CONFIG_FILE


def train_stage(cfg: PipelineConfig, verbose: bool = True) -> TrainResult:
    """Load the data, train, and export the model to `cfg.model_dir`.

    Args:
        cfg: the pipeline config.
        verbose: print one line per epoch.

    Returns:
        The export's `TrainResult`.
    """
    save_merged_config(cfg)
    data = load_images(cfg.data, cfg.model)
    if verbose:
        print(
            f"data: {cfg.data.source}, {len(data)} images of {data.image_shape}, {data.num_classes} classes"
        )
    on_epoch = (lambda row: print(format_epoch(row, cfg.train.epochs), flush=True)) if verbose else None
    _, _, result = fit_local(cfg, data, on_epoch=on_epoch)
    assert result is not None
    return result
