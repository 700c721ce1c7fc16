"""FiLM conditioning, the fitted latent prior, the calibrated Gaussian decoder, legacy configs."""

from __future__ import annotations

import math

import pytest
import torch

from vae.config import VAEConfig
from vae.io import load_model, save_model
from vae.losses import reconstruction_loss
from vae.model import VAE

SMALL = {"image_size": (8, 8), "hidden_channels": (8, 16), "latent_dim": 3, "num_classes": 4}


def test_film_starts_as_identity_and_then_carries_the_label():
    torch.manual_seed(0)
    film = VAE(VAEConfig(**SMALL, conditioning="film"))
    assert len(film.decoder.films) == len(film.decoder.ups)
    z = torch.randn(4, 3)
    y = torch.arange(4)
    concat = VAE(VAEConfig(**SMALL, conditioning="concat"))
    concat.load_state_dict(film.state_dict(), strict=False)  # same weights, no FiLM layers
    assert torch.allclose(film.decode(z, y), concat.decode(z, y))  # FiLM is zero-initialised
    for f in film.decoder.films:
        torch.nn.init.normal_(f.proj.weight)
    same_z = z[:1].expand(4, -1)
    out = film.decode(same_z, y)
    assert not torch.allclose(out[0], out[1])  # the label now reaches every level


def test_fitted_prior_draws_around_each_class_cluster():
    torch.manual_seed(0)
    model = VAE(VAEConfig(**SMALL, latent_prior="fitted")).eval()
    x = torch.rand(200, 1, 8, 8)
    y = torch.arange(200) % 4
    model.fit_latent_prior(x, y)
    mu = model.encode(x, y).mu  # (200, 3)
    for k in range(4):
        assert torch.allclose(model.prior_loc[k], mu[y == k].mean(0), atol=1e-4)
    eps = torch.randn(4000, 3, generator=torch.Generator().manual_seed(1))
    z = model.draw_latents(eps, torch.full((4000,), 2), temperature=1.0)
    assert torch.allclose(z.mean(0), model.prior_loc[2], atol=0.1)
    cov = model.prior_scale_tril[2] @ model.prior_scale_tril[2].T
    assert torch.allclose(torch.cov(z.T), cov, atol=0.1 * float(cov.abs().max()) + 1e-3)
    assert torch.allclose(model.draw_latents(eps, torch.full((4000,), 2), 0.0)[0], model.prior_loc[2])


def test_standard_prior_is_temperature_times_eps():
    model = VAE(VAEConfig(**SMALL, latent_prior="standard"))
    eps = torch.randn(5, 3)
    assert torch.equal(model.draw_latents(eps, torch.zeros(5, dtype=torch.long), 0.5), 0.5 * eps)
    with pytest.raises(ValueError, match="latent_prior='fitted'"):
        model.fit_latent_prior(torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))


def test_fitted_prior_survives_save_and_load(tmp_path):
    torch.manual_seed(0)
    model = VAE(VAEConfig(**SMALL, latent_prior="fitted"))
    model.fit_latent_prior(torch.rand(40, 1, 8, 8), torch.arange(40) % 4)
    save_model(model, str(tmp_path / "m"))
    back = load_model(str(tmp_path / "m"))
    assert torch.equal(back.prior_loc, model.prior_loc)
    assert torch.equal(back.prior_scale_tril, model.prior_scale_tril)


def _as_saved_by_vaeaug_0_1(path, model: VAE) -> None:
    """Rewrite a saved model in the 0.1 layout: no new config keys, decoder levels in `features`."""
    import hashlib
    import json

    from safetensors.torch import save

    state = {}
    for key, value in model.state_dict().items():
        for name, offset in (("ups", 0), ("norms", 1)):
            mark = f"decoder.{name}."
            if key.startswith(mark):
                level, _, rest = key[len(mark) :].partition(".")
                key = f"decoder.features.{3 * int(level) + offset}.{rest}"
        state[key] = value.contiguous()
    blob = save(state, metadata={"format_version": "1"})
    (path / "model.safetensors").write_bytes(blob)
    data = json.loads((path / "config.json").read_text())
    del data["model"]["conditioning"], data["model"]["latent_prior"]
    data["weights_sha256"] = hashlib.sha256(blob).hexdigest()
    (path / "config.json").write_text(json.dumps(data))


def test_a_model_saved_by_vaeaug_0_1_loads_as_it_was_trained(tmp_path):
    torch.manual_seed(0)
    old = VAE(VAEConfig(**SMALL, conditioning="concat", latent_prior="standard")).eval()
    save_model(old, str(tmp_path / "old"))
    _as_saved_by_vaeaug_0_1(tmp_path / "old", old)
    assert any(".features.3." in k for k in __import__("safetensors.torch").torch.load_file(
        str(tmp_path / "old" / "model.safetensors")))  # fmt: skip
    back = load_model(str(tmp_path / "old"))
    assert back.cfg.conditioning == "concat" and back.cfg.latent_prior == "standard"
    z, y = torch.randn(4, 3), torch.arange(4)
    assert torch.equal(back.decode(z, y), old.decode(z, y))


def test_calibrated_gaussian_is_the_nll_at_the_optimal_sigma():
    x = torch.rand(3, 1, 4, 4)
    recon = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    got = reconstruction_loss(x, recon, recon, "gaussian")  # (3,)
    sigma2 = float((recon - x).pow(2).mean())
    per_pixel = 0.5 * (recon - x).pow(2) / sigma2 + 0.5 * math.log(sigma2) + 0.5 * math.log(2 * math.pi)
    assert torch.allclose(got, per_pixel.flatten(1).sum(1), rtol=1e-5)
    # With a perfect fit sigma is floored (log sigma >= -6) instead of collapsing to 0.
    assert torch.isfinite(reconstruction_loss(x, x, x, "gaussian")).all()
