"""Quality figures of a trained model on the held-out split of its data."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from pipelines.config import PipelineConfig
from pipelines.data.imageset import ImageSet
from pipelines.data.split import HeldOut
from pipelines.errors import DataError, ModelError
from vae.io import ModelFileError, load_model, read_model_config
from vae.model import VAE
from vae.training import evaluate, iterate_batches


@dataclass
class QualityReport:
    """Held-out figures: the ELBO terms, and reconstruction error against two baselines."""

    images: int
    heldout_loss: float
    heldout_recon: float
    heldout_kl: float
    recon_mse: float  # mean squared error of reconstruct(x) vs x, per pixel, in [0,1] units
    mean_image_mse: float  # the same for predicting the training mean image
    active_latents: int  # latent dims whose posterior mean varies (cov > 0.01): used capacity
    latent_dim: int

    @property
    def recon_vs_mean(self) -> float:
        """recon_mse / mean_image_mse: < 1 means reconstructions beat the mean image."""
        return self.recon_mse / self.mean_image_mse if self.mean_image_mse > 0 else float("nan")

    def to_dict(self) -> dict[str, float]:
        """Plain floats, with `recon_vs_mean` included."""
        return {**asdict(self), "recon_vs_mean": self.recon_vs_mean}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> QualityReport:
        """Inverse of `to_dict` (the derived `recon_vs_mean` is recomputed, not read)."""
        return cls(**{f.name: raw[f.name] for f in fields(cls)})

    def formatted(self) -> dict[str, str]:
        """Each figure as people read it (floats to 4 significant digits), in `to_dict`'s order."""
        return {k: f"{v:.4g}" if isinstance(v, float) else str(v) for k, v in self.to_dict().items()}

    def line(self) -> str:
        """The figures on one console line: `images 180, heldout_loss 20.83, ...`."""
        return ", ".join(f"{k} {v}" for k, v in self.formatted().items())


@torch.no_grad()
def quality_report(model: VAE, train: ImageSet, heldout: ImageSet, seed: int = 0) -> QualityReport:
    """Measure `model` on `heldout` (all in the model's range).

    Args:
        model: the trained VAE.
        train: the training split (for the mean-image baseline).
        heldout: images the model did not train on.
        seed: seeds the reparameterization noise of the ELBO estimate.

    Returns:
        The `QualityReport`.
    """
    from vae.ranges import to_unit_range

    model.eval()
    cond = model.cfg.conditional
    elbo = evaluate(model, iterate_batches(heldout.images, heldout.labels, 1024), seed=seed)
    x = heldout.images  # (N, C, H, W)
    y = heldout.labels if cond else None
    recon = torch.cat(
        [
            model.reconstruct(x[i : i + 1024], None if y is None else y[i : i + 1024])
            for i in range(0, len(x), 1024)
        ]
    )
    x01 = to_unit_range(x, model.cfg)
    recon_mse = float(((to_unit_range(recon, model.cfg) - x01) ** 2).mean())
    mean01 = to_unit_range(train.images, model.cfg).mean(0, keepdim=True)  # (1, C, H, W)
    mean_mse = float(((mean01 - x01) ** 2).mean())
    mu = model.encode(x, y).mu  # (N, D)
    active = int((mu.var(dim=0) > 0.01).sum()) if len(x) > 1 else 0
    return QualityReport(
        images=len(heldout),
        heldout_loss=elbo.loss,
        heldout_recon=elbo.recon,
        heldout_kl=elbo.kl,
        recon_mse=recon_mse,
        mean_image_mse=mean_mse,
        active_latents=active,
        latent_dim=model.cfg.latent_dim,
    )


def check_model_fits_data(model: VAE, recorded: list[str] | None, data: ImageSet, model_dir: str) -> None:
    """The data must be what the model was trained on: the same image shape and, for a conditional
    model, the same classes (labels beyond the model's classes would fail deep inside the forward pass).

    Args:
        model: the loaded model.
        recorded: the class names saved with the model (None for models saved without them).
        data: the loaded data, in the model's size.
        model_dir: where the model is, for the message.

    Raises:
        DataError: one line with both class lists' sizes (or both shapes) and the fix.
    """
    fix = "evaluate the model with the data it was trained on (data.source / data.path), or pass --model"
    if tuple(data.image_shape) != tuple(model.cfg.image_shape):
        raise DataError(
            f"the data's images are {tuple(data.image_shape)} but the model at {model_dir!r} makes "
            f"{model.cfg.image_shape}: use the config the model was trained with (model.image_size, "
            "model.channels), or pass --model"
        )
    if not model.cfg.conditional:
        return  # an unconditional model ignores the labels
    names = list(recorded) if recorded else None
    if data.num_classes != model.cfg.num_classes or (names is not None and names != data.class_names):
        model_names = names or [str(k) for k in range(model.cfg.num_classes or 0)]
        raise DataError(
            f"the model at {model_dir!r} has {model.cfg.num_classes} classes {_preview(model_names)} but "
            f"the data has {data.num_classes} {_preview(data.class_names)}: {fix}"
        )


def _preview(names: list[str], shown: int = 5) -> str:
    more = f", ... ({len(names) - shown} more)" if len(names) > shown else ""
    return "[" + ", ".join(names[:shown]) + more + "]"


def evaluate_saved_model(cfg: PipelineConfig, data: ImageSet, model_dir: str | None = None) -> QualityReport:
    """Load the exported model and report on the same held-out split training used.

    Args:
        cfg: the pipeline config (its `train.val_fraction` and `train.seed` define the split).
        data: the full data set, as loaded for training.
        model_dir: the model to evaluate (default `cfg.model_dir`).

    Returns:
        The `QualityReport` (on the whole data when there is no held-out split).

    Raises:
        ModelError: no readable model at the model directory.
        DataError: the data is not what the model was trained on (other classes or image shape).
    """
    where = model_dir or cfg.model_dir
    try:
        recorded = (read_model_config(where).get("extra") or {}).get("class_names")
        model = load_model(where)
    except ModelFileError as exc:  # a PipelineError, so the flow does not retry it
        raise ModelError(str(exc)) from None
    check_model_fits_data(model, recorded, data, where)
    train, heldout = data.split(*HeldOut.of(cfg.train))
    return quality_report(model, train, heldout if len(heldout) else train, seed=cfg.train.seed)
