"""The objective: closed-form KL against Monte Carlo, reconstruction terms, and their combination."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vae.config import VAEConfig
from vae.losses import VAELoss, reconstruction_loss, vae_loss
from vae.model import Posterior, VAEOutput

LOG_2PI = math.log(2.0 * math.pi)


def _log_normal(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag(exp(logvar))) summed over the last dim."""
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) / logvar.exp()).sum(-1)


# ------------------------------------------------------------------------------------------ KL term
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_kl_closed_form_matches_monte_carlo(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    batch, dim, draws = 3, 4, 200_000
    mu = torch.randn(batch, dim, generator=gen, dtype=torch.float64) * 1.5
    logvar = torch.randn(batch, dim, generator=gen, dtype=torch.float64)

    closed = Posterior(mu, logvar).kl()
    assert closed.shape == (batch,)

    eps = torch.randn(draws, batch, dim, generator=gen, dtype=torch.float64)
    z = mu + torch.exp(0.5 * logvar) * eps  # draws from q
    log_ratio = _log_normal(z, mu, logvar) - _log_normal(z, torch.zeros_like(mu), torch.zeros_like(logvar))
    mc = log_ratio.mean(0)
    stderr = log_ratio.std(0) / math.sqrt(draws)

    # 5 standard errors: a false failure has probability ~1e-6 per entry (and seeds are fixed anyway).
    assert torch.all((closed - mc).abs() < 5 * stderr), (closed, mc, stderr)
    # The check is not vacuous: the estimates are tight relative to the value being estimated.
    assert torch.all(stderr < 0.05 * closed.abs() + 0.02)


def test_kl_is_zero_at_the_prior_and_positive_elsewhere() -> None:
    zeros = torch.zeros(2, 5)
    assert torch.equal(Posterior(zeros, zeros).kl(), torch.zeros(2))
    gen = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(64, 5, generator=gen), torch.randn(64, 5, generator=gen)
    assert torch.all(Posterior(mu, logvar).kl() > 0)


def test_kl_known_values() -> None:
    # 1-D: KL(N(m, s^2) || N(0, 1)) = 0.5 * (s^2 + m^2 - 1 - log s^2)
    mu = torch.tensor([[2.0], [0.0]])
    logvar = torch.tensor([[0.0], [math.log(4.0)]])
    expected = torch.tensor([0.5 * 4.0, 0.5 * (4.0 - 1.0 - math.log(4.0))])
    torch.testing.assert_close(Posterior(mu, logvar).kl(), expected)


def test_kl_sums_over_latent_dims() -> None:
    gen = torch.Generator().manual_seed(1)
    mu, logvar = torch.randn(3, 6, generator=gen), torch.randn(3, 6, generator=gen)
    per_dim = torch.stack([Posterior(mu[:, i : i + 1], logvar[:, i : i + 1]).kl() for i in range(6)], 1)
    torch.testing.assert_close(Posterior(mu, logvar).kl(), per_dim.sum(1))


def test_kl_gradients_match_analytic() -> None:
    gen = torch.Generator().manual_seed(2)
    mu = torch.randn(4, 3, generator=gen, dtype=torch.float64).requires_grad_()
    logvar = torch.randn(4, 3, generator=gen, dtype=torch.float64).requires_grad_()
    Posterior(mu, logvar).kl().sum().backward()
    torch.testing.assert_close(mu.grad, mu.detach())
    torch.testing.assert_close(logvar.grad, 0.5 * (logvar.detach().exp() - 1.0))


# ------------------------------------------------------------------------------ reconstruction term
def _images(seed: int = 0, shape=(3, 2, 5, 4)) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=gen)
    logits = torch.randn(shape, generator=gen) * 3
    return x, logits


def test_bce_is_bernoulli_nll_summed_per_sample() -> None:
    x, logits = _images()
    got = reconstruction_loss(x, logits, torch.sigmoid(logits), "bce")
    p = torch.sigmoid(logits.double())
    expected = -(x * p.log() + (1 - x) * (1 - p).log()).flatten(1).sum(1)
    assert got.shape == (3,)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-4)


def test_bce_uses_logits_not_recon() -> None:
    # Numerically stable: saturated logits that sigmoid rounds to exactly 0/1 still give finite loss.
    x = torch.tensor([[[[1.0, 0.0]]]])
    logits = torch.tensor([[[[-200.0, 200.0]]]])  # maximally wrong
    recon = torch.sigmoid(logits)
    assert recon[0, 0, 0, 0] == 0.0 and recon[0, 0, 0, 1] == 1.0
    got = reconstruction_loss(x, logits, recon, "bce")
    torch.testing.assert_close(got, torch.tensor([400.0]))
    right = reconstruction_loss(x, -logits, torch.sigmoid(-logits), "bce")
    assert right.item() == pytest.approx(0.0, abs=1e-6)


def test_mse_is_squared_error_summed_per_sample() -> None:
    x, logits = _images(1)
    recon = torch.tanh(logits)
    got = reconstruction_loss(x, logits, recon, "mse")
    torch.testing.assert_close(got, ((recon - x) ** 2).flatten(1).sum(1))
    # MSE looks at the activated output only.
    assert torch.equal(got, reconstruction_loss(x, logits * 0 + 123.0, recon, "mse"))


@pytest.mark.parametrize("kind", ["bce", "mse"])
def test_reconstruction_is_per_sample(kind: str) -> None:
    x, logits = _images(2)
    full = reconstruction_loss(x, logits, torch.sigmoid(logits), kind)
    for i in range(x.shape[0]):
        one = reconstruction_loss(x[i : i + 1], logits[i : i + 1], torch.sigmoid(logits[i : i + 1]), kind)
        torch.testing.assert_close(one, full[i : i + 1])


@pytest.mark.parametrize("kind", ["bce", "mse"])
def test_reconstruction_is_float32_for_bf16_inputs(kind: str) -> None:
    x, logits = _images(3)
    got = reconstruction_loss(x.bfloat16(), logits.bfloat16(), torch.sigmoid(logits).bfloat16(), kind)
    assert got.dtype == torch.float32


# ---------------------------------------------------------------------------------- full objective
def _output(seed: int = 0, batch: int = 4, dim: int = 3) -> tuple[torch.Tensor, VAEOutput]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 1, 8, 8, generator=gen)
    logits = torch.randn(batch, 1, 8, 8, generator=gen)
    post = Posterior(torch.randn(batch, dim, generator=gen), torch.randn(batch, dim, generator=gen))
    out = VAEOutput(recon=torch.sigmoid(logits), logits=logits, z=post.sample(gen), posterior=post)
    return x, out


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 4.0])
@pytest.mark.parametrize(("recon_loss", "activation"), [("bce", "sigmoid"), ("mse", "sigmoid")])
def test_vae_loss_is_batch_mean_of_recon_plus_beta_kl(beta: float, recon_loss: str, activation: str) -> None:
    cfg = VAEConfig(beta=beta, recon_loss=recon_loss, output_activation=activation)
    x, out = _output()
    loss = vae_loss(x, out, cfg)
    recon = reconstruction_loss(x, out.logits, out.recon, recon_loss).mean()
    kl = out.posterior.kl().mean()
    torch.testing.assert_close(loss.recon, recon)
    torch.testing.assert_close(loss.kl, kl)
    torch.testing.assert_close(loss.total, recon + beta * kl)
    assert loss.total.shape == loss.recon.shape == loss.kl.shape == ()


def test_vae_loss_item_gives_plain_floats() -> None:
    loss = VAELoss(total=torch.tensor(3.0, requires_grad=True), recon=torch.tensor(2.0), kl=torch.tensor(1.0))
    items = loss.item()
    assert items == {"loss": 3.0, "recon": 2.0, "kl": 1.0}
    assert all(type(v) is float for v in items.values())


def test_bce_loss_matches_torch_reference() -> None:
    # Cross-check the batch mean against torch's own BCE on probabilities.
    x, out = _output(5)
    loss = vae_loss(x, out, VAEConfig(beta=0.0))
    reference = F.binary_cross_entropy(out.recon.double(), x.double(), reduction="sum") / x.shape[0]
    assert loss.total.item() == pytest.approx(reference.item(), rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_kl_term_is_computed_as_before_bit_for_bit(dtype) -> None:
    """`vae_loss`'s KL is the closed form on float32 copies of mu and logvar (bf16 autocast included):
    the same operations in the same order as before `Posterior.kl`, so a seed trains the same model."""
    gen = torch.Generator().manual_seed(3)
    mu, logvar = torch.randn(8, 5, generator=gen).to(dtype), torch.randn(8, 5, generator=gen).to(dtype)
    m, lv = mu.float(), logvar.float()
    written_out = (-0.5 * torch.sum(1.0 + lv - m.pow(2) - lv.exp(), dim=1)).mean()
    out = VAEOutput(
        recon=torch.zeros(8, 1, 2, 2), logits=torch.zeros(8, 1, 2, 2), z=mu, posterior=Posterior(mu, logvar)
    )
    loss = vae_loss(torch.zeros(8, 1, 2, 2), out, VAEConfig(recon_loss="mse"))
    assert loss.kl.dtype == torch.float32 and torch.equal(loss.kl, written_out)
