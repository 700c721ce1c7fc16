"""Pixel ranges: [0, 1] to each output activation's range and back, clamped for display and PNGs."""

from __future__ import annotations

import pytest
import torch

from vae.config import VAEConfig
from vae.ranges import to_model_range, to_uint8, to_unit_range

UNIT = torch.tensor([0.0, 0.25, 0.5, 1.0])


@pytest.mark.parametrize(
    ("activation", "loss", "expected"),
    [
        ("sigmoid", "bce", [0.0, 0.25, 0.5, 1.0]),
        ("tanh", "gaussian", [-1.0, -0.5, 0.0, 1.0]),
        ("linear", "gaussian", [-2.5, -1.25, 0.0, 2.5]),  # (x - 0.5) / 0.2
    ],
)
def test_each_activation_has_its_range_and_round_trips(activation, loss, expected):
    cfg = VAEConfig(output_activation=activation, recon_loss=loss, norm_mean=0.5, norm_std=0.2)
    model_range = to_model_range(UNIT, cfg)
    assert model_range.tolist() == pytest.approx(expected)
    assert to_unit_range(model_range, cfg).tolist() == pytest.approx(UNIT.tolist())


def test_outputs_beyond_the_range_are_clamped_for_display():
    cfg = VAEConfig(output_activation="linear", recon_loss="gaussian", norm_mean=0.5, norm_std=0.2)
    beyond = torch.tensor([-10.0, 10.0])  # a linear decoder is unbounded
    assert to_unit_range(beyond, cfg).tolist() == [0.0, 1.0]


def test_uint8_rounds_to_the_nearest_level():
    cfg = VAEConfig(output_activation="tanh", recon_loss="gaussian")
    x = to_model_range(torch.tensor([0.0, 0.6 / 255, 1.4 / 255, 1.6 / 255, 1.0]), cfg)
    out = to_uint8(x, cfg)
    assert out.dtype == torch.uint8 and out.tolist() == [0, 1, 1, 2, 255]
