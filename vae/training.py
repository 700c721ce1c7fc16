"""Framework-free training and evaluation steps.

These plain functions are what every runner calls: the local loop below, and the Ray Train workers in
`pipelines/` (where `model` may be wrapped in DistributedDataParallel).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from vae.losses import vae_loss
from vae.model import VAE

Batch = tuple[torch.Tensor, torch.Tensor | None]  # x (B, C, H, W), y (B,) or None


@dataclass
class EpochMetrics:
    """Per-sample means over one pass; `samples_per_s` counts this process only."""

    loss: float
    recon: float
    kl: float
    samples: int
    seconds: float

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0


def unwrap(model: nn.Module) -> VAE:
    """The VAE inside a DDP / compiled wrapper (or the model itself)."""
    inner = getattr(model, "module", model)
    inner = getattr(inner, "_orig_mod", inner)
    if not isinstance(inner, VAE):
        raise TypeError(f"expected a VAE, got {type(inner).__name__}")
    return inner


def make_optimizer(model: nn.Module, lr: float = 1e-3, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adam over all parameters.

    Args:
        model: the (possibly wrapped) VAE.
        lr: learning rate.
        weight_decay: decoupled weight decay (AdamW when > 0).

    Returns:
        The optimizer.
    """
    if weight_decay > 0:
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    return torch.optim.Adam(model.parameters(), lr=lr)


def _labels(model: nn.Module, y: torch.Tensor | None) -> torch.Tensor | None:
    # Unconditional models ignore labels; conditional ones need them.
    return y if unwrap(model).cfg.conditional else None


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    autocast_dtype: torch.dtype | None = None,
    grad_clip: float | None = None,
) -> dict[str, float]:
    """One optimizer step on a batch.

    Args:
        model: the VAE, possibly DDP-wrapped (its forward then syncs gradients).
        optimizer: from `make_optimizer`.
        x: images (B, C, H, W) on the model's device, in the data range.
        y: labels (B,) (used only by conditional models).
        autocast_dtype: e.g. torch.bfloat16 for mixed precision; None for full precision.
        grad_clip: max global gradient norm, or None.

    Returns:
        Batch-mean loss terms as floats: loss, recon, kl.
    """
    model.train()
    with _autocast(x.device, autocast_dtype):
        out = model(x, _labels(model, y))
    loss = vae_loss(x, out, unwrap(model).cfg)  # in float32 even under autocast
    optimizer.zero_grad(set_to_none=True)
    loss.total.backward()
    if grad_clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return loss.item()


@torch.no_grad()
def eval_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """Loss terms on a batch without updating the model (one reparameterized draw per image)."""
    model.eval()
    vae = unwrap(model)
    out = vae(x, _labels(model, y), generator=generator)
    return vae.loss(x, out).item()


def run_epoch(
    step: Callable[[torch.Tensor, torch.Tensor | None], dict[str, float]], batches: Iterable[Batch]
) -> EpochMetrics:
    """Apply `step` to each batch and return per-sample means weighted by batch size."""
    totals = {"loss": 0.0, "recon": 0.0, "kl": 0.0}
    n = 0
    start = time.perf_counter()
    for x, y in batches:
        metrics = step(x, y)
        for k in totals:
            totals[k] += metrics[k] * x.shape[0]
        n += x.shape[0]
    seconds = time.perf_counter() - start
    if n == 0:
        raise ValueError("no batches: the dataset shard is empty")
    return EpochMetrics(totals["loss"] / n, totals["recon"] / n, totals["kl"] / n, n, seconds)


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Batch],
    autocast_dtype: torch.dtype | None = None,
) -> EpochMetrics:
    """One pass of `train_step` over `batches`."""
    return run_epoch(lambda x, y: train_step(model, optimizer, x, y, autocast_dtype), batches)


def evaluate(model: nn.Module, batches: Iterable[Batch], seed: int = 0) -> EpochMetrics:
    """Held-out loss terms; the reparameterization noise is seeded so repeated calls agree."""
    device = unwrap(model).device
    generator = torch.Generator(device=device).manual_seed(seed)
    return run_epoch(lambda x, y: eval_step(model, x, y, generator), batches)


def iterate_batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Iterator[Batch]:
    """Mini-batches of an in-memory dataset.

    Args:
        images: (N, C, H, W).
        labels: (N,).
        batch_size: rows per batch (the last batch may be smaller).
        shuffle: permute the rows first (with `generator`, reproducibly).
        generator: CPU RNG for the permutation.
        device: where batches are moved.

    Yields:
        (x, y) pairs on `device`.
    """
    order = torch.randperm(len(images), generator=generator) if shuffle else torch.arange(len(images))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        yield images[idx].to(device, non_blocking=True), labels[idx].to(device, non_blocking=True)
