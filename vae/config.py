"""Typed configuration of the VAE: one dataclass, validated on construction.

A config fully describes a model's architecture, so a saved model (config JSON + weights) can be
rebuilt without any other input.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

ReconLoss = Literal["bce", "mse", "gaussian"]
OutputActivation = Literal["sigmoid", "tanh", "linear"]
Conditioning = Literal["concat", "film"]
LatentPrior = Literal["standard", "fitted"]

#: Values that saved configs written before a key existed imply (their weights were built that way).
LEGACY_DEFAULTS: dict[str, object] = {"conditioning": "concat", "latent_prior": "standard"}

#: The data range each output activation fits (see `vae.ranges`).
ACTIVATION_RANGES: dict[str, str] = {
    "sigmoid": "[0, 1]",
    "tanh": "[-1, 1]",
    "linear": "standardized (mean 0, std 1 per `norm_mean`/`norm_std`)",
}


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key and the fix."""


@dataclass
class VAEConfig:
    """Architecture and objective of a convolutional (optionally class-conditional) VAE.

    Args:
        image_size: (H, W) of the images; any size from 8x8 upwards, square or not.
        channels: 1 (grayscale) or 3 (RGB).
        latent_dim: size of z.
        hidden_channels: conv widths of the encoder, one stride-2 level each; the decoder mirrors them.
        beta: weight of the KL term (beta-VAE); 1.0 is the plain ELBO.
        recon_loss: "bce" (needs data in [0, 1], i.e. sigmoid output), "mse", or "gaussian" (a
            Gaussian likelihood with a calibrated variance, sigma-VAE: sharper than a fixed-variance MSE).
        output_activation: "sigmoid" for data in [0, 1], "tanh" for [-1, 1], "linear" for standardized.
        num_classes: number of classes for class conditioning; None for an unconditional VAE.
        norm_mean: pixel mean used to standardize data when `output_activation` is "linear".
        norm_std: pixel std used to standardize data when `output_activation` is "linear".
        conditioning: how a conditional decoder sees the label: "concat" (one-hot appended to z only)
            or "film" (also a learned per-class scale and shift at every decoder level, so the
            decoder cannot ignore the label).
        latent_prior: where samples are drawn from: "standard" (N(0, I), the VAE prior) or "fitted"
            (a Gaussian per class fitted to the encoded training images after training: the
            aggregate posterior, so draws land where the data is instead of in holes of N(0, I)).
    """

    image_size: tuple[int, int] = (8, 8)
    channels: int = 1
    latent_dim: int = 16
    hidden_channels: tuple[int, ...] = (32, 64)
    beta: float = 1.0
    recon_loss: ReconLoss = "bce"
    output_activation: OutputActivation = "sigmoid"
    num_classes: int | None = None
    norm_mean: float = 0.5
    norm_std: float = 0.5
    conditioning: Conditioning = "film"
    latent_prior: LatentPrior = "fitted"

    def __post_init__(self) -> None:
        if isinstance(self.image_size, int):
            self.image_size = (self.image_size, self.image_size)
        self.image_size = tuple(int(v) for v in self.image_size)  # type: ignore[assignment]
        self.hidden_channels = tuple(int(v) for v in self.hidden_channels)
        self.validate()

    def validate(self) -> None:
        """Raise `ConfigError` naming the first invalid field and how to fix it."""
        if len(self.image_size) != 2 or min(self.image_size) < 8:
            raise ConfigError(f"model.image_size={list(self.image_size)}: give [H, W] with H, W >= 8")
        if self.channels not in (1, 3):
            raise ConfigError(f"model.channels={self.channels}: use 1 (grayscale) or 3 (RGB)")
        if self.latent_dim < 1:
            raise ConfigError(f"model.latent_dim={self.latent_dim}: must be a positive integer")
        if not self.hidden_channels or min(self.hidden_channels) < 1:
            raise ConfigError(
                f"model.hidden_channels={list(self.hidden_channels)}: give one or more positive widths"
            )
        if not self.beta >= 0:  # also rejects NaN
            raise ConfigError(f"model.beta={self.beta}: must be >= 0 (1.0 is the plain ELBO)")
        if self.recon_loss not in ("bce", "mse", "gaussian"):
            raise ConfigError(f"model.recon_loss={self.recon_loss!r}: use 'bce', 'mse' or 'gaussian'")
        if self.output_activation not in ACTIVATION_RANGES:
            raise ConfigError(
                f"model.output_activation={self.output_activation!r}: use one of {sorted(ACTIVATION_RANGES)}"
            )
        if self.recon_loss == "bce" and self.output_activation != "sigmoid":
            raise ConfigError(
                f"model.recon_loss='bce' needs data in [0, 1] but output_activation="
                f"{self.output_activation!r}: use output_activation='sigmoid', "
                "or recon_loss='gaussian' or 'mse'"
            )
        if self.num_classes is not None and self.num_classes < 2:
            raise ConfigError(
                f"model.num_classes={self.num_classes}: use >= 2 for a conditional model, or null"
            )
        if not self.norm_std > 0:
            raise ConfigError(f"model.norm_std={self.norm_std}: must be > 0")
        if self.conditioning not in ("concat", "film"):
            raise ConfigError(f"model.conditioning={self.conditioning!r}: use 'concat' or 'film'")
        if self.latent_prior not in ("standard", "fitted"):
            raise ConfigError(f"model.latent_prior={self.latent_prior!r}: use 'standard' or 'fitted'")

    @property
    def conditional(self) -> bool:
        """Whether the model is class-conditional."""
        return self.num_classes is not None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return (self.channels, *self.image_size)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["image_size"] = list(self.image_size)
        out["hidden_channels"] = list(self.hidden_channels)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VAEConfig:
        """Build from a saved dict; unknown keys are an error (typos must not pass silently).

        Keys missing from a config saved before they existed take `LEGACY_DEFAULTS`, the behaviour
        the saved weights were trained with.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown model config key(s) {unknown}: valid keys are {sorted(known)}")
        return cls(**{**LEGACY_DEFAULTS, **data})


__all__ = ["ACTIVATION_RANGES", "LEGACY_DEFAULTS", "ConfigError", "VAEConfig"]
