"""Framework-free training and evaluation steps.

These plain functions are what every runner calls: the local loop below, and the Ray Train workers in
`pipelines/` (where `model` may be wrapped in DistributedDataParallel).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from vae.config import ConfigError
from vae.losses import vae_loss
from vae.model import VAE

Batch = tuple[torch.Tensor, torch.Tensor | None]  # x (B, C, H, W), y (B,) or None


@dataclass(frozen=True)
class Divergence:
    """Where and how training diverged (filled in as the error passes up through the loops).

    Args:
        what: "loss" (a non-finite loss on a batch) or "weights" (non-finite parameters after a pass).
        terms: the batch's loss terms (loss, recon, kl); empty for "weights".
        lr: the optimizer's learning rate, when known.
        step: 1-based optimizer step within the epoch, when known.
        epoch: 1-based epoch, when known.
    """

    what: str
    terms: dict[str, float] = dataclasses.field(default_factory=dict)
    lr: float | None = None
    step: int | None = None
    epoch: int | None = None


class TrainingDivergedError(ConfigError):
    """The loss or the weights became NaN or infinite: training stops (nothing is saved) with one line.

    A `ConfigError`: the fix is a setting (a lower learning rate), and a retry with the same settings
    diverges the same way, so runners must not retry it.
    """

    def __init__(self, divergence: Divergence) -> None:
        self.divergence = divergence
        super().__init__(_divergence_text(divergence))

    def __reduce__(self) -> tuple[type, tuple[Divergence]]:
        # Rebuilt from its fields, not its message: Ray pickles a worker's error to the driver.
        return (type(self), (self.divergence,))

    def at(self, *, step: int | None = None, epoch: int | None = None) -> TrainingDivergedError:
        """The same error with the step and/or epoch filled in (values already known are kept)."""
        d = self.divergence
        return TrainingDivergedError(
            dataclasses.replace(d, step=d.step if d.step is not None else step, epoch=d.epoch or epoch)
        )


def _divergence_text(d: Divergence) -> str:
    where = " ".join(f"{k} {v}" for k, v in (("epoch", d.epoch), ("step", d.step)) if v is not None)
    if d.what == "weights":
        problem = "the model's weights became nan or infinite"
    else:
        bad = next((f"{v}" for v in d.terms.values() if not math.isfinite(v)), "nan")
        terms = ", ".join(f"{k} {v:.4g}" for k, v in d.terms.items())
        problem = f"training loss became {bad}" + (f" ({terms})" if terms else "")
    rate = f" (now {d.lr:g})" if d.lr is not None else ""
    return (
        f"{problem}{' at ' + where if where else ''}: lower train.lr{rate}, or check the data for "
        "extreme values; no model was saved"
    )


def check_finite_weights(model: nn.Module, epoch: int | None = None) -> None:
    """Raise `TrainingDivergedError` if any parameter of `model` is NaN or infinite.

    Args:
        model: the (possibly wrapped) model.
        epoch: the epoch just trained, for the message.

    Raises:
        TrainingDivergedError: a non-finite weight (the last step's update overflowed).
    """
    with torch.no_grad():
        finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    if not finite:
        raise TrainingDivergedError(Divergence("weights", epoch=epoch))


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
) -> dict[str, float]:
    """One optimizer step on a batch.

    Args:
        model: the VAE, possibly DDP-wrapped (its forward then syncs gradients).
        optimizer: from `make_optimizer`.
        x: images (B, C, H, W) on the model's device, in the data range.
        y: labels (B,) (used only by conditional models).
        autocast_dtype: e.g. torch.bfloat16 for mixed precision; None for full precision.

    Returns:
        Batch-mean loss terms as floats: loss, recon, kl.

    Raises:
        TrainingDivergedError: the batch's loss is NaN or infinite (checked before the update, so the
            weights are left as they were; the caller adds the step and epoch to the message).
    """
    model.train()
    with _autocast(x.device, autocast_dtype):
        out = model(x, _labels(model, y))
    loss = vae_loss(x, out, unwrap(model).cfg)  # in float32 even under autocast
    terms = loss.item()  # the one device sync of the step, moved before the backward pass
    if not all(math.isfinite(v) for v in terms.values()):
        lr = optimizer.param_groups[0].get("lr") if optimizer.param_groups else None
        raise TrainingDivergedError(Divergence("loss", terms, lr=lr))
    optimizer.zero_grad(set_to_none=True)
    loss.total.backward()
    optimizer.step()
    return terms


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
    return vae_loss(x, out, vae.cfg).item()


def run_epoch(
    step: Callable[[torch.Tensor, torch.Tensor | None], dict[str, float]], batches: Iterable[Batch]
) -> EpochMetrics:
    """Apply `step` to each batch and return per-sample means weighted by batch size.

    Raises:
        TrainingDivergedError: from `step`, with the 1-based index of the batch added.
    """
    totals = {"loss": 0.0, "recon": 0.0, "kl": 0.0}
    n = 0
    start = time.perf_counter()
    for index, (x, y) in enumerate(batches, start=1):
        try:
            metrics = step(x, y)
        except TrainingDivergedError as exc:
            raise exc.at(step=index) from None
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
