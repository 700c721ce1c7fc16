"""Typed configuration of the VAE: one dataclass, validated on construction.

A config fully describes a model's architecture, so a saved model (config JSON + weights) can be
rebuilt without any other input.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any, Literal

ReconLoss = Literal["bce", "mse", "gaussian"]
OutputActivation = Literal["sigmoid", "tanh", "linear"]
Conditioning = Literal["concat", "film"]
LatentPrior = Literal["standard", "fitted"]

#: Values that saved configs written before a key existed imply (their weights were built that way).
LEGACY_DEFAULTS: dict[str, object] = {"conditioning": "concat", "latent_prior": "standard"}

#: Upper bounds of the architecture: far above any useful VAE of this kind, far below what would
#: exhaust memory. A config (typed in, or read from a model's config.json) beyond one is refused
#: before a single weight is allocated.
MAX_SIDE = 4096
MAX_LATENT_DIM = 4096
MAX_WIDTH = 4096
MAX_LEVELS = 12
#: Most classes a conditional model (and a labelled data set) may have; also bounds the one-hot
#: input, the per-class FiLM weights and the per-class preview rows.
MAX_CLASSES = 10_000
#: Most values of a fitted latent prior: one D x D Cholesky factor per class (1 GiB of float32).
MAX_PRIOR_VALUES = 2**28

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
        image_size: (H, W) of the images; any size from 8x8 to `MAX_SIDE` per side, square or not.
        channels: 1 (grayscale) or 3 (RGB).
        latent_dim: size of z (1..`MAX_LATENT_DIM`).
        hidden_channels: conv widths of the encoder, one stride-2 level each; the decoder mirrors them
            (at most `MAX_LEVELS` levels of at most `MAX_WIDTH` channels).
        beta: weight of the KL term (beta-VAE); 1.0 is the plain ELBO.
        recon_loss: "bce" (needs data in [0, 1], i.e. sigmoid output), "mse", or "gaussian" (a
            Gaussian likelihood with a calibrated variance, sigma-VAE: sharper than a fixed-variance MSE).
        output_activation: "sigmoid" for data in [0, 1], "tanh" for [-1, 1], "linear" for standardized.
        num_classes: number of classes for class conditioning (2..`MAX_CLASSES`); None for an
            unconditional VAE.
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
        self.image_size = _int_tuple(self.image_size, "image_size", "give [H, W] with H, W >= 8")
        self.hidden_channels = _int_tuple(
            self.hidden_channels, "hidden_channels", "give one or more positive widths"
        )
        self.validate()

    def validate(self) -> None:
        """Raise `ConfigError` naming the first invalid field and how to fix it."""
        if len(self.image_size) != 2 or min(self.image_size) < 8 or max(self.image_size) > MAX_SIDE:
            raise ConfigError(
                f"model.image_size={list(self.image_size)}: give [H, W] with 8 <= H, W <= {MAX_SIDE}"
            )
        if not _is_int(self.channels) or self.channels not in (1, 3):
            raise ConfigError(f"model.channels={self.channels!r}: use 1 (grayscale) or 3 (RGB)")
        if not _is_int(self.latent_dim) or not 1 <= self.latent_dim <= MAX_LATENT_DIM:
            raise ConfigError(
                f"model.latent_dim={self.latent_dim!r}: must be an integer in 1..{MAX_LATENT_DIM}"
            )
        self._validate_widths()
        if not _is_number(self.beta) or not 0 <= self.beta < math.inf:  # also rejects NaN
            raise ConfigError(
                f"model.beta={self.beta!r}: must be a finite number >= 0 (1.0 is the plain ELBO)"
            )
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
        if self.num_classes is not None and (
            not _is_int(self.num_classes) or not 2 <= self.num_classes <= MAX_CLASSES
        ):
            raise ConfigError(
                f"model.num_classes={self.num_classes!r}: use 2..{MAX_CLASSES} for a conditional model, "
                "or null"
            )
        if not _is_number(self.norm_mean) or not math.isfinite(self.norm_mean):
            raise ConfigError(f"model.norm_mean={self.norm_mean!r}: must be a finite number")
        if not _is_number(self.norm_std) or not 0 < self.norm_std < math.inf:
            raise ConfigError(f"model.norm_std={self.norm_std!r}: must be a finite number > 0")
        if self.conditioning not in ("concat", "film"):
            raise ConfigError(f"model.conditioning={self.conditioning!r}: use 'concat' or 'film'")
        if self.latent_prior not in ("standard", "fitted"):
            raise ConfigError(f"model.latent_prior={self.latent_prior!r}: use 'standard' or 'fitted'")
        prior_values = (self.num_classes or 1) * self.latent_dim**2
        if self.latent_prior == "fitted" and prior_values > MAX_PRIOR_VALUES:
            raise ConfigError(
                f"model.latent_dim={self.latent_dim} with {self.num_classes or 1} class(es) makes a fitted "
                f"prior of {prior_values:.3g} values (at most {MAX_PRIOR_VALUES:.3g}): lower "
                "model.latent_dim, or set model.latent_prior=standard"
            )

    def _validate_widths(self) -> None:
        widths = list(self.hidden_channels)
        if not widths or min(widths) < 1:
            raise ConfigError(f"model.hidden_channels={widths}: give one or more positive widths")
        if max(widths) > MAX_WIDTH or len(widths) > MAX_LEVELS:
            raise ConfigError(
                f"model.hidden_channels={widths[: MAX_LEVELS + 1]}: give at most {MAX_LEVELS} widths, "
                f"each at most {MAX_WIDTH}"
            )

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


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _int_tuple(values: object, key: str, fix: str) -> tuple[int, ...]:
    """`values` as a tuple of ints; a non-list or a non-integer entry (3.5, "x", true) is a ConfigError."""
    try:
        items = [] if isinstance(values, str | bytes | dict) else list(values)  # type: ignore[call-overload]
    except TypeError:
        items = []
    whole = all(_is_int(v) or (isinstance(v, float) and v.is_integer()) for v in items)
    if not items or not whole:
        raise ConfigError(f"model.{key}={values!r}: {fix}")
    return tuple(int(v) for v in items)


__all__ = [
    "ACTIVATION_RANGES",
    "LEGACY_DEFAULTS",
    "MAX_CLASSES",
    "MAX_LATENT_DIM",
    "MAX_LEVELS",
    "MAX_PRIOR_VALUES",
    "MAX_SIDE",
    "MAX_WIDTH",
    "ConfigError",
    "VAEConfig",
]
