"""`vaeaug inspect`: a committed dataset's manifest, counts, schema and quality figures, as text."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import fsspec
import numpy as np
import pyarrow.parquet as pq

from pipelines.readers import decode_image, open_dataset

SAMPLE_ROWS = 2048


def sample_quality(path: str, storage_options: dict[str, Any] | None = None) -> dict[str, float]:
    """Figures from the first rows of the first file: pixel mean, latent statistics of prior rows
    (close to mean 0, std = temperature when the sampler is right), and the share of duplicate images.

    Args:
        path: the committed dataset.
        storage_options: fsspec options.

    Returns:
        rows_sampled, pixel_mean, duplicate_fraction, prior_latent_mean, prior_latent_std.
    """
    manifest = open_dataset(path, storage_options)
    fs, _ = manifest.filesystem()
    _, first = fsspec.core.url_to_fs(manifest.files[0], **manifest.storage_options)
    with fs.open(first, "rb") as f:
        pf = pq.ParquetFile(f)
        table = next(pf.iter_batches(batch_size=SAMPLE_ROWS, columns=["image", "latent", "method"]))
    pngs = [row["bytes"] for row in table.column("image").to_pylist()]
    pixels = np.stack([decode_image(b).numpy() for b in pngs[:256]])  # (n, C, H, W) in [0, 1]
    latents = np.stack(table.column("latent").to_numpy(zero_copy_only=False))  # (n, D)
    prior = latents[np.asarray(table.column("method").to_pylist()) == "prior"]
    unique = len({hashlib.sha256(b).digest() for b in pngs})
    out = {
        "rows_sampled": float(len(pngs)),
        "pixel_mean": float(pixels.mean()),
        "duplicate_fraction": 1.0 - unique / len(pngs),
    }
    if len(prior):
        out["prior_latent_mean"] = float(prior.mean())
        out["prior_latent_std"] = float(prior.std(axis=0).mean())
    return out


def _model_metrics(model_dir: str | None) -> dict[str, float] | None:
    if not model_dir:
        return None
    try:
        with fsspec.open(model_dir.rstrip("/") + "/metrics.json", "rb") as f:
            history = json.loads(f.read())
    except (OSError, ValueError, ImportError):
        return None
    return history[-1] if history else None


def _counts(counts: dict[str, int] | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in (counts or {}).items())


def describe_dataset(path: str, storage_options: dict[str, Any] | None = None) -> str:
    """A human-readable description of a committed synthetic dataset.

    Args:
        path: the dataset directory (local path or fsspec URL); an uncommitted one is refused.
        storage_options: fsspec options.

    Returns:
        Multi-line text: location, rows/files, per-class and per-method counts, schema, provenance,
        quality figures.
    """
    manifest = open_dataset(path, storage_options)
    m = manifest.data
    prov = manifest.provenance
    c, h, w = manifest.image_shape
    lines = [
        f"dataset   {path}  (committed {m.get('created_at', '?')})",
        f"rows      {manifest.rows} in {len(manifest.files)} files, images {h}x{w}x{c} PNG, "
        f"latent_dim {manifest.latent_dim}",
        "per class "
        + (", ".join(f"{k}={v}" for k, v in m.get("per_class", {}).items()) or "(unconditional)"),
        "methods   " + _counts(m.get("per_method")),
        f"model     sha256 {str(prov.get('model_sha256', '?'))[:16]}  seed {prov.get('seed')}  "
        f"vaeaug {prov.get('vaeaug_version')}  torch {prov.get('torch_version')}",
        "schema",
        *("  " + line for line in str(m.get("arrow_schema", "")).splitlines() if not line.startswith("  ")),
        "quality (sample of the first file)",
    ]
    for key, value in sample_quality(path, storage_options).items():
        lines.append(f"  {key:<20} {value:.4g}")
    metrics = _model_metrics(prov.get("model_dir"))
    if metrics:
        lines.append("model training (last epoch)")
        for key in ("epoch", "train_loss", "val_loss", "val_recon", "val_kl"):
            if key in metrics:
                lines.append(f"  {key:<20} {metrics[key]:.4g}")
    return "\n".join(lines)
