"""The pipeline's stages as plain functions: the CLI and the Prefect flow both call these."""

from __future__ import annotations

import fsspec

from pipelines.config import PipelineConfig, save_config
from pipelines.data import load_images
from pipelines.data.imageset import ImageSet
from pipelines.evaluate import evaluate_saved_model
from pipelines.training.common import format_epoch
from pipelines.training.export import TrainResult

CONFIG_FILE = "config.yaml"


def save_merged_config(cfg: PipelineConfig) -> str:
    """Write the merged config (secrets redacted) to `<output_dir>/config.yaml`; returns its path."""
    fs, root = fsspec.core.url_to_fs(cfg.output_dir)
    fs.makedirs(root, exist_ok=True)
    fs.pipe_file(root.rstrip("/") + "/" + CONFIG_FILE, save_config(cfg).encode())
    return cfg.output_dir.rstrip("/") + "/" + CONFIG_FILE


def load_data(cfg: PipelineConfig) -> ImageSet:
    """The seed images, converted to the model's size, channels and range."""
    return load_images(cfg.data, cfg.model)


def describe_data(cfg: PipelineConfig, data: ImageSet) -> str:
    """One line about the loaded data."""
    shape = "x".join(map(str, data.image_shape))
    return f"data: {cfg.data.source}, {len(data)} images of {shape}, {data.num_classes} classes"


def train_stage(cfg: PipelineConfig, data: ImageSet | None = None, verbose: bool = True) -> TrainResult:
    """Train (Ray Train, or this process with `train.backend=local`) and export to `cfg.model_dir`.

    Args:
        cfg: the pipeline config.
        data: the loaded images (loaded here when None).
        verbose: print one line per epoch.

    Returns:
        The export's `TrainResult`.
    """
    if data is None:
        data = load_data(cfg)
        if verbose:
            print(describe_data(cfg, data))
    on_epoch = (lambda row: print(format_epoch(row, cfg.train.epochs), flush=True)) if verbose else None
    if cfg.train.backend == "local":
        from pipelines.training.local import fit_local

        _, _, result = fit_local(cfg, data, on_epoch=on_epoch)
        assert result is not None
        return result
    from pipelines.training.ray_train import train_distributed

    return train_distributed(cfg, data, on_epoch=on_epoch)


def evaluate_stage(cfg: PipelineConfig, data: ImageSet | None = None, model_dir: str | None = None) -> dict:
    """Held-out quality figures of the exported model (see `pipelines.evaluate.QualityReport`)."""
    if data is None:
        data = load_data(cfg)
    return evaluate_saved_model(cfg, data, model_dir).to_dict()
