"""The VAE objective: reconstruction + beta * KL, per sample, averaged over the batch."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from vae.config import VAEConfig

if TYPE_CHECKING:
    from vae.model import VAEOutput


@dataclass
class VAELoss:
    """Loss terms, each a scalar tensor averaged over the batch (sums over pixels / latent dims).

    `total = recon + beta * kl` is the negative ELBO when beta == 1 and recon is a log-likelihood
    (BCE: Bernoulli; MSE: Gaussian up to a constant; "gaussian": Gaussian with calibrated variance).
    """

    total: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor

    def item(self) -> dict[str, float]:
        """Plain floats for logging."""
        terms = {"loss": self.total, "recon": self.recon, "kl": self.kl}
        return {k: float(v.detach()) for k, v in terms.items()}


def reconstruction_loss(
    x: torch.Tensor, logits: torch.Tensor, recon: torch.Tensor, kind: str
) -> torch.Tensor:
    """Per-sample reconstruction loss summed over pixels: (B, C, H, W) -> (B,).

    BCE works on logits (numerically stable); MSE on the activated output; "gaussian" is the
    calibrated decoder of Rybkin et al. 2021 (sigma-VAE): the Gaussian negative log-likelihood with
    the one variance that is optimal for the batch, sigma^2 = mean squared error (log sigma floored
    at -6), so the weight of reconstruction against KL follows how well the decoder already fits.
    """
    if kind == "bce":
        per_pixel = F.binary_cross_entropy_with_logits(logits.float(), x.float(), reduction="none")
    elif kind == "gaussian":
        sq = (recon.float() - x.float()).pow(2)  # (B, C, H, W)
        log_sigma = torch.clamp(0.5 * sq.mean().clamp_min(1e-12).log(), min=-6.0)  # scalar
        per_pixel = 0.5 * sq * torch.exp(-2.0 * log_sigma) + log_sigma + 0.5 * math.log(2 * math.pi)
    else:
        per_pixel = F.mse_loss(recon.float(), x.float(), reduction="none")
    return per_pixel.flatten(1).sum(dim=1)


def vae_loss(x: torch.Tensor, out: VAEOutput, cfg: VAEConfig) -> VAELoss:
    """Batch-mean of recon + beta * KL.

    Args:
        x: targets (B, C, H, W) in the data range.
        out: the forward pass on x.
        cfg: gives `recon_loss` and `beta`.

    Returns:
        `VAELoss` with total, recon and kl.
    """
    recon = reconstruction_loss(x, out.logits, out.recon, cfg.recon_loss).mean()
    kl = out.posterior.kl().mean()  # (B,) -> scalar
    return VAELoss(total=recon + cfg.beta * kl, recon=recon, kl=kl)
