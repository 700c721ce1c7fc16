"""VAEConfig: validation names the offending key; to_dict/from_dict round-trips through JSON."""

from __future__ import annotations

import json
import math

import pytest

from vae.config import ACTIVATION_RANGES, ConfigError, VAEConfig

# (overrides, key that the message must name)
INVALID = [
    pytest.param({"latent_dim": 0}, "latent_dim", id="latent_dim-0"),
    pytest.param({"latent_dim": -3}, "latent_dim", id="latent_dim-negative"),
    pytest.param({"beta": -0.1}, "beta", id="beta-negative"),
    pytest.param({"beta": math.nan}, "beta", id="beta-nan"),
    pytest.param({"beta": -math.inf}, "beta", id="beta-minus-inf"),
    pytest.param({"channels": 2}, "channels", id="channels-2"),
    pytest.param({"channels": 4}, "channels", id="channels-4"),
    pytest.param({"image_size": (7, 8)}, "image_size", id="image_size-7x8"),
    pytest.param({"image_size": (8, 7)}, "image_size", id="image_size-8x7"),
    pytest.param({"image_size": 4}, "image_size", id="image_size-int-4"),
    pytest.param({"image_size": (8, 8, 8)}, "image_size", id="image_size-3d"),
    pytest.param({"hidden_channels": ()}, "hidden_channels", id="hidden_channels-empty"),
    pytest.param({"hidden_channels": (8, 0)}, "hidden_channels", id="hidden_channels-0"),
    pytest.param({"recon_loss": "bce", "output_activation": "tanh"}, "output_activation", id="bce+tanh"),
    pytest.param({"recon_loss": "bce", "output_activation": "linear"}, "output_activation", id="bce+linear"),
    pytest.param({"recon_loss": "l1"}, "recon_loss", id="recon_loss-unknown"),
    pytest.param(
        {"recon_loss": "mse", "output_activation": "relu"}, "output_activation", id="activation-relu"
    ),
    pytest.param({"num_classes": 1}, "num_classes", id="num_classes-1"),
    pytest.param({"num_classes": 0}, "num_classes", id="num_classes-0"),
    pytest.param({"norm_std": 0.0}, "norm_std", id="norm_std-0"),
    pytest.param({"norm_std": math.nan}, "norm_std", id="norm_std-nan"),
    # Non-finite floats pass a plain ">= 0" / "> 0" check: each must be refused by name.
    pytest.param({"beta": math.inf}, "beta", id="beta-inf"),
    pytest.param({"norm_std": math.inf}, "norm_std", id="norm_std-inf"),
    pytest.param({"norm_mean": math.inf}, "norm_mean", id="norm_mean-inf"),
    pytest.param({"norm_mean": math.nan}, "norm_mean", id="norm_mean-nan"),
    # Sizes beyond the bounds would allocate terabytes before any weight is checked.
    pytest.param({"latent_dim": 2_000_000_000}, "latent_dim", id="latent_dim-2e9"),
    pytest.param({"latent_dim": 5.5}, "latent_dim", id="latent_dim-float"),
    pytest.param({"latent_dim": True}, "latent_dim", id="latent_dim-bool"),
    pytest.param({"channels": 1.0}, "channels", id="channels-float"),
    pytest.param({"image_size": (8, 100_000)}, "image_size", id="image_size-huge"),
    pytest.param({"image_size": (8.5, 8)}, "image_size", id="image_size-fraction"),
    pytest.param({"image_size": "big"}, "image_size", id="image_size-text"),
    pytest.param({"hidden_channels": (8, 1_000_000)}, "hidden_channels", id="hidden_channels-wide"),
    pytest.param({"hidden_channels": (8,) * 13}, "hidden_channels", id="hidden_channels-deep"),
    pytest.param({"hidden_channels": ("a",)}, "hidden_channels", id="hidden_channels-text"),
    pytest.param({"num_classes": 50_001}, "num_classes", id="num_classes-50001"),
    pytest.param({"num_classes": 2.5}, "num_classes", id="num_classes-float"),
    pytest.param({"num_classes": 10_000, "latent_dim": 512}, "latent_dim", id="fitted-prior-too-big"),
]

VALID = [
    pytest.param({}, id="defaults"),
    pytest.param({"image_size": (8, 8), "beta": 0.0}, id="smallest-beta0"),
    pytest.param(
        {"image_size": (20, 13), "channels": 3, "hidden_channels": (8, 16, 32)}, id="non-square-rgb"
    ),
    pytest.param({"recon_loss": "mse", "output_activation": "tanh", "num_classes": 10}, id="mse-tanh-cond"),
    pytest.param(
        {"recon_loss": "mse", "output_activation": "linear", "norm_mean": 0.13, "norm_std": 0.31},
        id="mse-linear-norm",
    ),
    pytest.param({"recon_loss": "mse", "output_activation": "sigmoid", "num_classes": 2}, id="mse-sigmoid"),
    pytest.param({"num_classes": 10_000, "latent_dim": 512, "latent_prior": "standard"}, id="max-classes"),
    pytest.param({"image_size": (4096, 8), "latent_dim": 4096, "latent_prior": "standard"}, id="max-sizes"),
]


@pytest.mark.parametrize(("overrides", "key"), INVALID)
def test_invalid_value_raises_config_error_naming_key(overrides: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        VAEConfig(**overrides)
    assert key in str(info.value)


@pytest.mark.parametrize(("overrides", "key"), INVALID)
def test_from_dict_validates_too(overrides: dict, key: str) -> None:
    data = {**VAEConfig().to_dict(), **overrides}
    with pytest.raises(ConfigError, match=key):
        VAEConfig.from_dict(data)


def test_config_error_is_a_value_error() -> None:
    # Callers (CLI, pipelines) catch ValueError for bad user input.
    assert issubclass(ConfigError, ValueError)
    with pytest.raises(ValueError):
        VAEConfig(latent_dim=0)


def test_validate_rechecks_after_mutation() -> None:
    cfg = VAEConfig()
    cfg.beta = -1.0
    with pytest.raises(ConfigError, match="beta"):
        cfg.validate()


@pytest.mark.parametrize("bad_key", ["latnet_dim", "image_shape", "conditional"])
def test_from_dict_rejects_unknown_key(bad_key: str) -> None:
    data = {**VAEConfig().to_dict(), bad_key: 3}
    with pytest.raises(ConfigError) as info:
        VAEConfig.from_dict(data)
    message = str(info.value)
    assert bad_key in message
    assert "latent_dim" in message  # lists the valid keys as the fix


@pytest.mark.parametrize("overrides", VALID)
def test_to_dict_from_dict_round_trip_through_json(overrides: dict) -> None:
    cfg = VAEConfig(**overrides)
    data = json.loads(json.dumps(cfg.to_dict()))
    assert isinstance(data["image_size"], list) and isinstance(data["hidden_channels"], list)
    again = VAEConfig.from_dict(data)
    assert again == cfg
    assert isinstance(again.image_size, tuple) and isinstance(again.hidden_channels, tuple)
    assert again.to_dict() == cfg.to_dict()


def test_from_dict_partial_uses_defaults() -> None:
    # Keys added after a model was saved take the behaviour its weights were trained with.
    legacy = VAEConfig(latent_dim=3, conditioning="concat", latent_prior="standard")
    assert VAEConfig.from_dict({"latent_dim": 3}) == legacy
    assert VAEConfig.from_dict({"latent_dim": 3, "conditioning": "film"}).conditioning == "film"


def test_normalizes_sizes() -> None:
    cfg = VAEConfig(image_size=28, hidden_channels=[8, 16])
    assert cfg.image_size == (28, 28)
    assert cfg.hidden_channels == (8, 16)
    assert VAEConfig(image_size=[20, 13]).image_size == (20, 13)


@pytest.mark.parametrize(
    ("overrides", "shape", "conditional"),
    [
        ({}, (1, 8, 8), False),
        ({"image_size": (20, 13), "channels": 3, "num_classes": 4}, (3, 20, 13), True),
    ],
)
def test_derived_properties(overrides: dict, shape: tuple, conditional: bool) -> None:
    cfg = VAEConfig(**overrides)
    assert cfg.image_shape == shape
    assert cfg.conditional is conditional


def test_every_activation_has_a_documented_range() -> None:
    assert set(ACTIVATION_RANGES) == {"sigmoid", "tanh", "linear"}


def test_bound_errors_are_one_line_with_the_limit() -> None:
    with pytest.raises(ConfigError) as info:
        VAEConfig(latent_dim=2_000_000_000)
    assert str(info.value) == "model.latent_dim=2000000000: must be an integer in 1..4096"
    with pytest.raises(ConfigError, match=r"latent_prior=standard") as info:
        VAEConfig(num_classes=10_000, latent_dim=512)
    assert "\n" not in str(info.value)
