"""Builders shared by the generation and reader tests: tiny saved models and configs."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from pipelines.config import GenerateConfig, PipelineConfig, RayConfig, ReportConfig
from pipelines.data import DataConfig, ImageSet, load_images
from vae.config import VAEConfig
from vae.io import save_model
from vae.model import VAE

CLASS_NAMES = [str(k) for k in range(10)]  # the digits' class names
#: A decoder small enough to sample thousands of 8x8 images per second on one thread.
TINY = {"image_size": (8, 8), "hidden_channels": (4, 8), "latent_dim": 4}


def save_tiny_model(path: Path, conditional: bool, seed: int = 0) -> str:
    """Save a seeded tiny VAE (10 classes "0".."9" when conditional) and return its directory."""
    torch.manual_seed(seed)
    model = VAE(VAEConfig(**TINY, num_classes=10 if conditional else None))
    save_model(model, str(path), extra={"class_names": CLASS_NAMES})
    return str(path)


def digits(model_dir: str, limit: int = 60) -> ImageSet:
    """The first `limit` scikit-learn digits in the model's range."""
    from vae.io import read_model_config

    cfg = VAEConfig.from_dict(read_model_config(model_dir)["model"])
    return load_images(DataConfig(source="digits", limit=limit), cfg)


def make_cfg(output: str, report: ReportConfig | None = None, **generate: Any) -> PipelineConfig:
    """A pipeline config writing to `output`, small shards and batches by default.

    Curation and the usefulness report are off unless asked for (`curation_threshold=...`,
    `report=ReportConfig(...)`): their own tests cover them.
    """
    settings: dict[str, Any] = {
        "num_samples": 40,
        "shard_size": 16,
        "batch_size": 8,
        "output": output,
        "curation_threshold": None,
    }
    settings.update(generate)
    return PipelineConfig(
        data=DataConfig(source="digits", limit=60),
        generate=GenerateConfig(**settings),
        ray=RayConfig(num_cpus=4),
        report=report or ReportConfig(enabled=False),
    )


#: A job mixing every mode (conditional model): 40 prior + 12 per-class + 2x6 variants + 3x4 interpolations.
MIXED = {
    "num_samples": 40,
    "per_class": {"3": 5, "7": 7},
    "variants_per_image": 2,
    "variant_limit": 6,
    "interpolations": 3,
    "interpolation_steps": 4,
}


def run_local(out: Path, model_dir: str, **gen: Any) -> Any:
    """`generate` in this process (no Ray) into `out` with `make_cfg`'s settings plus `gen`."""
    from pipelines.generate import generate

    return generate(make_cfg(str(out), **gen), model_dir=model_dir, progress=False, use_ray=False)


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under `root` (to assert nothing changed)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }
