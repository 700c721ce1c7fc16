"""The downstream-classifier recipe the usefulness report measures with.

A small CNN, trained from scratch (nothing pretrained is available offline) for a fixed number of
optimizer steps, on one or two pools of images (real, or real + synthetic at a fixed share of each
batch), with or without classic augmentation. The same recipe labels synthetic images (label
fidelity), is trained on synthetic images alone (CAS), and gives the feature space of the Fréchet
distance. Images are float32 (N, C, H, W) in [0, 1] throughout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Recipe:
    """How one downstream classifier is trained.

    Args:
        steps: optimizer steps (the same for every condition that is compared).
        batch_size: images per step.
        lr: Adam learning rate (cosine-decayed to 0 over `steps`).
        width: channels of the first stage (the second has twice as many).
        synthetic_share: share of each batch drawn from the synthetic pool when there is one.
    """

    steps: int = 600
    batch_size: int = 64
    lr: float = 2e-3
    width: int = 32
    synthetic_share: float = 0.5


class SmallCNN(nn.Module):
    """Conv, pool, two convs (pooled in between when the map is still >= 12 px) -> global mean -> linear.

    Works for any H, W >= 8 and 1 or 3 channels.
    """

    def __init__(self, channels: int, num_classes: int, image_size: tuple[int, int], width: int = 32) -> None:
        super().__init__()
        w2 = 2 * width

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        # One conv at full resolution (the costly level), then the work at half (and quarter) size.
        layers = [*block(channels, width), nn.MaxPool2d(2), *block(width, w2)]
        if min(image_size) // 2 >= 12:
            layers += [nn.MaxPool2d(2)]
        layers += [*block(w2, w2)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(w2, num_classes))

    def features(self, x01: torch.Tensor) -> torch.Tensor:
        """Penultimate features (B, 2*width) of images (B, C, H, W) in [0, 1]."""
        return self.body(x01 * 2.0 - 1.0).mean(dim=(2, 3))

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        """Class logits (B, K)."""
        return self.head(self.features(x01))


def classic_augment(x: torch.Tensor, gen: torch.Generator, flip: bool) -> torch.Tensor:
    """Random affine (rotation ±10°, scale 0.9-1.1, shift ±10%) and, if `flip`, horizontal flips.

    Args:
        x: (B, C, H, W) in [0, 1].
        gen: CPU generator (reproducible draws).
        flip: mirror half of the images left-right (natural photos; not digits or text).

    Returns:
        Augmented images, same shape.
    """
    b = x.shape[0]

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, generator=gen)

    angle = uniform(-10, 10) * math.pi / 180
    scale = uniform(0.9, 1.1)
    tx, ty = uniform(-0.2, 0.2), uniform(-0.2, 0.2)  # ±10% of the size ([-1, 1] spans the image)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)  # (B, 2, 3)
    if flip:
        mirror = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
        theta[:, :, 0] = theta[:, :, 0] * mirror[:, None]
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


@dataclass
class Pool:
    """Labelled images to draw training batches from: images (N, C, H, W) in [0, 1], labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.images)


def _batch(pools: list[Pool], sizes: list[int], gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for pool, n in zip(pools, sizes, strict=True):
        if n == 0:
            continue
        idx = torch.randint(len(pool.images), (n,), generator=gen)  # with replacement: any pool size
        xs.append(pool.images[idx])
        ys.append(pool.labels[idx])
    return torch.cat(xs), torch.cat(ys)


def train_classifier(
    real: Pool | None,
    synthetic: Pool | None,
    num_classes: int,
    recipe: Recipe,
    seed: int,
    augment: bool = False,
    flip: bool = False,
) -> SmallCNN:
    """Train the recipe's CNN on `real`, `synthetic`, or both (`recipe.synthetic_share` of each batch).

    Args:
        real: the real training images, or None (synthetic only: CAS).
        synthetic: the synthetic images, or None (real only).
        num_classes: K.
        recipe: steps, batch size, learning rate, width, synthetic share.
        seed: seeds the initial weights, the batches and the augmentation.
        augment: apply `classic_augment` to every batch.
        flip: with `augment`, also mirror images left-right.

    Returns:
        The trained classifier in eval mode.
    """
    pools = [p for p in (real, synthetic) if p is not None]
    if not pools:
        raise ValueError("train_classifier needs real or synthetic images")
    n_syn = round(recipe.batch_size * recipe.synthetic_share) if (real and synthetic) else 0
    sizes = [recipe.batch_size - n_syn, n_syn] if len(pools) == 2 else [recipe.batch_size]
    c, h, w = pools[0].images.shape[1:]
    # Weights and dropout draw from torch's global RNG: seed it, without touching the caller's state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SmallCNN(c, num_classes, (h, w), recipe.width)
        _fit(model, pools, sizes, recipe, seed, augment, flip)
    return model.eval()


def _fit(
    model: SmallCNN, pools: list[Pool], sizes: list[int], recipe: Recipe, seed: int, augment: bool, flip: bool
) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=recipe.lr, total_steps=recipe.steps, pct_start=0.15
    )
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(recipe.steps):
        x, y = _batch(pools, sizes, gen)
        if augment:
            x = classic_augment(x, gen, flip)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()


@torch.no_grad()
def predict(model: SmallCNN, images: torch.Tensor, batch: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities (N, K), features (N, F)) of images (N, C, H, W) in [0, 1]."""
    model.eval()
    probs, feats = [], []
    for lo in range(0, len(images), batch):
        f = model.features(images[lo : lo + batch])
        feats.append(f)
        probs.append(model.head(f).softmax(dim=1))
    return torch.cat(probs), torch.cat(feats)


def accuracy(model: SmallCNN, pool: Pool) -> float:
    """Share of `pool` the model labels correctly."""
    probs, _ = predict(model, pool.images)
    return float((probs.argmax(dim=1) == pool.labels).float().mean())


__all__ = ["Pool", "Recipe", "SmallCNN", "accuracy", "classic_augment", "predict", "train_classifier"]
