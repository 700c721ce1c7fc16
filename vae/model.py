"""Convolutional Gaussian VAE, optionally class-conditional.

Encoder: `len(hidden_channels)` stride-2 conv levels -> flatten -> (mu, logvar).
Decoder: linear -> the encoder's last feature map -> transposed convs that retrace the encoder's
spatial sizes exactly (so any H x W >= 8, odd or non-square, round-trips) -> output activation.
Conditioning (num_classes set): one-hot labels are appended as constant channels to the encoder input
and concatenated to z before decoding; with `conditioning="film"` every decoder level also applies a
learned per-class scale and shift (FiLM), so the label reaches each level and cannot be ignored.
Latent prior: with `latent_prior="fitted"` the model carries a Gaussian per class fitted to the
encoded training images (`fit_latent_prior`) and samples are drawn from it instead of N(0, I).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vae.config import VAEConfig


@dataclass
class Posterior:
    """Diagonal Gaussian q(z|x): the one distribution object (`sample`, `kl`, `mode`). mu, logvar: (B, D)."""

    mu: torch.Tensor
    logvar: torch.Tensor

    def sample(self, generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
        """Reparameterized draw z = mu + temperature * sigma * eps (differentiable in mu and logvar)."""
        eps = torch.randn(self.mu.shape, generator=generator, device=self.mu.device, dtype=self.mu.dtype)
        return self.mu + temperature * torch.exp(0.5 * self.logvar) * eps

    def kl(self) -> torch.Tensor:
        """Closed-form KL(N(mu, diag(exp(logvar))) || N(0, I)) per sample: (B, D) -> (B,).

        In float32 at least: under bf16 autocast the sum over latent dims would lose the small terms.
        """
        dtype = torch.promote_types(self.mu.dtype, torch.float32)
        mu, logvar = self.mu.to(dtype), self.logvar.to(dtype)
        return -0.5 * torch.sum(1.0 + logvar - mu.pow(2) - logvar.exp(), dim=1)

    def mode(self) -> torch.Tensor:
        """The most likely z, mu: (B, D)."""
        return self.mu


@dataclass
class VAEOutput:
    """Result of a forward pass. `logits` are pre-activation decoder outputs, `recon` post-activation."""

    recon: torch.Tensor  # (B, C, H, W) in the data range
    logits: torch.Tensor  # (B, C, H, W) before the output activation
    z: torch.Tensor  # (B, D)
    posterior: Posterior


@dataclass
class Samples:
    """Images decoded from latents. `labels` is None for an unconditional model."""

    images: torch.Tensor  # (N, C, H, W) in the data range
    z: torch.Tensor  # (N, D)
    labels: torch.Tensor | None  # (N,) int64


def _conv_out(size: int) -> int:
    # Conv2d(k=3, s=2, p=1): floor((n + 2 - 3) / 2) + 1 == ceil(n / 2)
    return (size + 1) // 2


def _groups(channels: int) -> int:
    # GroupNorm groups with >= 8 channels each: a group of one channel on a 1x1 map would normalize
    # a single value to a constant and cut the encoder off from its input.
    for g in (8, 4, 2):
        if channels % g == 0 and channels // g >= 8:
            return g
    return 1


class Encoder(nn.Module):
    """x (B, C[+K], H, W) -> mu, logvar (B, D)."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        in_ch = cfg.channels + (cfg.num_classes or 0)
        layers: list[nn.Module] = []
        h, w = cfg.image_size
        self.sizes = [(h, w)]  # spatial size at the input of each level, then the final one
        for width in cfg.hidden_channels:
            layers += [
                nn.Conv2d(in_ch, width, kernel_size=3, stride=2, padding=1),
                nn.GroupNorm(_groups(width), width),
                nn.SiLU(),
            ]
            in_ch = width
            h, w = _conv_out(h), _conv_out(w)
            self.sizes.append((h, w))
        self.features = nn.Sequential(*layers)
        flat = in_ch * h * w
        self.to_mu = nn.Linear(flat, cfg.latent_dim)
        self.to_logvar = nn.Linear(flat, cfg.latent_dim)

    def forward(self, x: torch.Tensor) -> Posterior:
        f = self.features(x).flatten(1)  # (B, C_last * h * w)
        return Posterior(self.to_mu(f), self.to_logvar(f))


class FiLM(nn.Module):
    """Per-class scale and shift of a feature map: h * (1 + gamma_y) + beta_y (identity at init)."""

    def __init__(self, num_classes: int, channels: int) -> None:
        super().__init__()
        self.proj = nn.Linear(num_classes, 2 * channels, bias=False)
        nn.init.zeros_(self.proj.weight)

    def forward(self, h: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.proj(onehot.to(h.dtype)).chunk(2, dim=1)  # (B, C) each
        return h * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]


def _rename_sequential_levels(state: dict, prefix: str, *args: object) -> None:
    """Read weights saved when the decoder levels were one `features` Sequential (vaeaug 0.1).

    Level i was `features.{3i}` (transposed conv), `features.{3i+1}` (GroupNorm), `features.{3i+2}`
    (SiLU, no weights); now they are `ups.{i}` and `norms.{i}`.
    """
    old = prefix + "features."
    for key in [k for k in state if k.startswith(old)]:
        index, _, rest = key[len(old) :].partition(".")
        level, part = divmod(int(index), 3)
        state[f"{prefix}{('ups', 'norms')[part]}.{level}.{rest}"] = state.pop(key)


class Decoder(nn.Module):
    """z (B, D[+K]) -> logits (B, C, H, W); mirrors the encoder level by level."""

    def __init__(self, cfg: VAEConfig, sizes: list[tuple[int, int]]) -> None:
        super().__init__()
        widths = list(cfg.hidden_channels)
        self.start_shape = (widths[-1], *sizes[-1])
        self.fc = nn.Linear(cfg.latent_dim + (cfg.num_classes or 0), widths[-1] * sizes[-1][0] * sizes[-1][1])
        self.ups, self.norms, self.films = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        out_widths = widths[-2::-1] + [widths[0]]  # decoder widths after each upsampling level
        in_ch = widths[-1]
        film = cfg.conditional and cfg.conditioning == "film"
        for level, out_ch in enumerate(out_widths):
            th, tw = sizes[-2 - level]  # target size of this level = encoder's input size there
            # ConvTranspose2d(k=3, s=2, p=1) gives 2n - 1 + output_padding; pick it to land on (th, tw).
            pad = (1 - th % 2, 1 - tw % 2)
            self.ups.append(
                nn.ConvTranspose2d(in_ch, out_ch, kernel_size=3, stride=2, padding=1, output_padding=pad)
            )
            self.norms.append(nn.GroupNorm(_groups(out_ch), out_ch))
            if film:
                self.films.append(FiLM(cfg.num_classes or 0, out_ch))
            in_ch = out_ch
        self.to_pixels = nn.Conv2d(in_ch, cfg.channels, kernel_size=3, padding=1)
        self._register_load_state_dict_pre_hook(_rename_sequential_levels)

    def forward(self, z: torch.Tensor, onehot: torch.Tensor | None = None) -> torch.Tensor:
        """z (B, D[+K]) with the one-hot labels (B, K) appended already; `onehot` again for FiLM."""
        h = self.fc(z).view(z.shape[0], *self.start_shape)  # (B, C_last, h, w)
        for level, (up, norm) in enumerate(zip(self.ups, self.norms, strict=True)):
            h = norm(up(h))  # (B, C_level, H_level, W_level)
            if len(self.films) and onehot is not None:
                h = self.films[level](h, onehot)
            h = F.silu(h)
        return self.to_pixels(h)  # (B, C, H, W) logits


#: At most this many images (an even sample) are encoded to fit the "fitted" prior.
PRIOR_FIT_MAX = 50_000

_ACTIVATIONS = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "linear": lambda t: t}


class VAE(nn.Module):
    """Gaussian VAE with encode / decode / sample / reconstruct / interpolate.

    Args:
        cfg: architecture and loss settings.
    """

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg, self.encoder.sizes)
        self._activation = _ACTIVATIONS[cfg.output_activation]
        if cfg.latent_prior == "fitted":
            groups, d = cfg.num_classes or 1, cfg.latent_dim
            # Per class (one group if unconditional): mean (G, D) and Cholesky factor (G, D, D) of the
            # aggregate posterior; N(0, I) until `fit_latent_prior` runs. Saved with the weights.
            self.register_buffer("prior_loc", torch.zeros(groups, d))
            self.register_buffer("prior_scale_tril", torch.eye(d).repeat(groups, 1, 1))

    # ----------------------------------------------------------------- helpers
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def _one_hot(self, y: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        if self.cfg.num_classes is None:
            if y is not None:
                raise ValueError("labels were given to an unconditional model: train with num_classes set")
            return None
        if y is None:
            raise ValueError(f"this model is class-conditional ({self.cfg.num_classes} classes): pass labels")
        y = torch.as_tensor(y, device=self.device).long().reshape(-1)
        if y.shape[0] != batch:
            raise ValueError(f"got {y.shape[0]} labels for a batch of {batch}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.cfg.num_classes):
            raise ValueError(f"label out of range: labels must be in [0, {self.cfg.num_classes - 1}]")
        return F.one_hot(y, self.cfg.num_classes).to(self.fc_dtype)

    @property
    def fc_dtype(self) -> torch.dtype:
        return self.decoder.fc.weight.dtype

    # ------------------------------------------------------------------ public
    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> Posterior:
        """q(z|x[, y]).

        Args:
            x: images (B, C, H, W) in the data range.
            y: labels (B,), required iff the model is conditional.

        Returns:
            The posterior with mu and logvar of shape (B, D).
        """
        onehot = self._one_hot(y, x.shape[0])
        if onehot is not None:
            maps = onehot[:, :, None, None].expand(-1, -1, *x.shape[-2:])  # (B, K, H, W)
            x = torch.cat([x, maps.to(x.dtype)], dim=1)
        return self.encoder(x)

    def decode_logits(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder output before the activation, (B, C, H, W)."""
        onehot = self._one_hot(y, z.shape[0])
        if onehot is not None:
            z = torch.cat([z, onehot.to(z.dtype)], dim=1)
        return self.decoder(z, onehot)

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """p(x|z[, y]) mean: images (B, C, H, W) in the data range of the output activation."""
        return self._activation(self.decode_logits(z, y))

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> VAEOutput:
        """Encode, draw z by reparameterization, decode."""
        post = self.encode(x, y)
        z = post.sample(generator)
        logits = self.decode_logits(z, y)
        return VAEOutput(recon=self._activation(logits), logits=logits, z=z, posterior=post)

    def draw_latents(
        self, eps: torch.Tensor, labels: torch.Tensor | None = None, temperature: float = 1.0
    ) -> torch.Tensor:
        """Map standard normal draws eps (n, D) to latents of the model's sampling prior.

        "standard": z = temperature * eps. "fitted": z = loc_y + temperature * L_y @ eps, the Gaussian
        fitted to the encoded training images of class y (of all images if unconditional).
        Works on eps's device and dtype; returns (n, D).
        """
        if self.cfg.latent_prior != "fitted":
            return temperature * eps
        loc = self.prior_loc.to(eps.device, eps.dtype)  # (G, D)
        tril = self.prior_scale_tril.to(eps.device, eps.dtype)  # (G, D, D)
        g = labels.to(eps.device).long() if labels is not None and self.cfg.conditional else None
        if g is None:
            g = torch.zeros(eps.shape[0], dtype=torch.long, device=eps.device)
        return loc[g] + temperature * torch.einsum("nij,nj->ni", tril[g], eps)

    @torch.no_grad()
    def fit_latent_prior(self, images: torch.Tensor, labels: torch.Tensor | None, batch: int = 1024) -> None:
        """Fit the "fitted" prior: per class, the mean and covariance of the aggregate posterior.

        Cov = Cov(mu) + mean(sigma^2) over the class's images, shrunk 1% towards its diagonal and
        floored at 1e-4 so the Cholesky factor exists; a class with < 2 images keeps N(mean, I).

        Args:
            images: the training images (N, C, H, W) in the model's range.
            labels: (N,) class indices (required for a conditional model).
            batch: encoder batch size.
        """
        if self.cfg.latent_prior != "fitted":
            raise ValueError("fit_latent_prior needs model.latent_prior='fitted'")
        if self.cfg.conditional and labels is None:
            raise ValueError("fit_latent_prior of a class-conditional model needs the images' labels")
        if len(images) > PRIOR_FIT_MAX:  # an even sample is plenty for D-dimensional Gaussians
            keep = torch.linspace(0, len(images) - 1, PRIOR_FIT_MAX).long()
            images, labels = images[keep], (labels[keep] if labels is not None else None)
        was_training = self.training
        self.eval()
        mus, variances = [], []
        for lo in range(0, len(images), batch):
            y = labels[lo : lo + batch] if self.cfg.conditional and labels is not None else None
            post = self.encode(images[lo : lo + batch].to(self.device, self.fc_dtype), y)
            mus.append(post.mu.float().cpu())
            variances.append(post.logvar.float().exp().cpu())
        mu, var = torch.cat(mus), torch.cat(variances)  # (N, D) each
        if not (torch.isfinite(mu).all() and torch.isfinite(var).all()):
            raise ValueError(
                "the encoder gives non-finite latents: training diverged (lower the learning rate)"
            )
        groups = labels.cpu().long() if self.cfg.conditional and labels is not None else torch.zeros(len(mu))
        d = mu.shape[1]
        for g in range(self.prior_loc.shape[0]):
            sel = groups == g
            loc, cov = torch.zeros(d), torch.eye(d)
            if int(sel.sum()) >= 2:
                m, v = mu[sel].double(), var[sel].double()
                loc = m.mean(0)
                cov = torch.cov(m.T).reshape(d, d) + torch.diag(v.mean(0))
                cov = 0.99 * cov + 0.01 * torch.diag(torch.diagonal(cov)) + 1e-4 * torch.eye(d)
            elif int(sel.sum()) == 1:
                loc = mu[sel][0].double()
            self.prior_loc[g] = loc.to(self.prior_loc)
            self.prior_scale_tril[g] = torch.linalg.cholesky(cov.double()).to(self.prior_scale_tril)
        self.train(was_training)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
    ) -> Samples:
        """Draw n images from the sampling prior (see `draw_latents`) at `temperature`.

        Args:
            n: number of images.
            labels: (n,) class of each image; required iff the model is conditional.
            generator: torch RNG for reproducible draws (on the model's device).
            temperature: prior scale; < 1 trades diversity for fidelity.

        Returns:
            `Samples` with images (n, C, H, W), the decoded z (n, D) and the labels.
        """
        eps = torch.randn(
            (n, self.cfg.latent_dim), generator=generator, device=self.device, dtype=self.fc_dtype
        )
        self._one_hot(labels, n)  # validate the labels before they index the fitted prior
        z = self.draw_latents(eps, labels, temperature)
        return Samples(images=self.decode(z, labels), z=z, labels=labels)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Decode the posterior mean of x: a deterministic reconstruction (B, C, H, W)."""
        return self.decode(self.encode(x, y).mode(), y)

    @torch.no_grad()
    def interpolate(
        self,
        z0: torch.Tensor,
        z1: torch.Tensor,
        steps: int,
        y: torch.Tensor | None = None,
    ) -> Samples:
        """Decode `steps` points on the straight line from z0 to z1 (both ends included).

        Args:
            z0, z1: latents of shape (D,).
            steps: number of points, >= 2.
            y: a scalar class (or (steps,) labels) for a conditional model.

        Returns:
            `Samples` with images (steps, C, H, W) and the interpolated z (steps, D).
        """
        if steps < 2:
            raise ValueError(f"interpolate needs steps >= 2, got {steps}")
        t = torch.linspace(0.0, 1.0, steps, device=z0.device, dtype=z0.dtype)[:, None]  # (S, 1)
        z = (1 - t) * z0[None] + t * z1[None]  # (S, D)
        labels = None
        if y is not None:
            labels = torch.as_tensor(y, device=z.device).long().reshape(-1).expand(steps).clone()
        return Samples(images=self.decode(z, labels), z=z, labels=labels)
