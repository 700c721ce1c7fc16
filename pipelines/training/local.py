"""Single-process training loop (no Ray): the reference the distributed runner is measured against,
and the quick path for small data."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch

from pipelines.config import PipelineConfig, TrainConfig
from pipelines.data.imageset import ImageSet
from pipelines.training.epochs import VAL_BATCH, epoch_row
from pipelines.training.export import TrainResult, export_trained_model
from pipelines.training.model_config import model_config_for
from vae.model import VAE
from vae.training import (
    TrainingDivergedError,
    check_finite_weights,
    evaluate,
    iterate_batches,
    make_optimizer,
    train_epoch,
)


def fit_local(
    cfg: PipelineConfig,
    data: ImageSet,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    export: bool = True,
) -> tuple[VAE, list[dict[str, float]], TrainResult | None]:
    """Train `cfg.model` on `data` in this process, then export it to `cfg.model_dir`.

    Args:
        cfg: pipeline config (its `train` section: epochs, batch_size, lr, seed, val_fraction).
        data: the images, already in the model's range.
        on_epoch: called with each epoch's metrics row (e.g. to print it).
        export: write the model and reports to `cfg.model_dir`.

    Returns:
        (model, history, export result or None).

    Raises:
        TrainingDivergedError: the loss or the weights became NaN or infinite (nothing is exported).
    """
    t = cfg.train
    torch.manual_seed(t.seed)  # the initial weights
    train_set, val_set = data.split(t.val_fraction, seed=t.seed)
    model = VAE(model_config_for(cfg, data))
    optimizer = make_optimizer(model, t.lr, t.weight_decay)
    shuffle = torch.Generator().manual_seed(t.seed)
    history: list[dict[str, float]] = []
    for epoch in range(1, t.epochs + 1):
        row = _epoch(model, optimizer, t, train_set, val_set, shuffle, epoch)
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
    result = None
    if export:
        preview = val_set if len(val_set) else train_set
        result = export_trained_model(
            model, cfg, data.class_names, data.fingerprint(), history, preview, train=train_set
        )
    return model, history, result


def _epoch(
    model: VAE,
    optimizer: torch.optim.Optimizer,
    t: TrainConfig,
    train_set: ImageSet,
    val_set: ImageSet,
    shuffle: torch.Generator,
    epoch: int,
) -> dict[str, float]:
    """Train one epoch (`passes_per_epoch` shuffled passes), evaluate, and return its metrics row.

    Raises:
        TrainingDivergedError: with the epoch in its message.
    """
    passes = t.passes_per_epoch(len(train_set))
    images, labels = train_set.images, train_set.labels
    batches = itertools.chain.from_iterable(
        iterate_batches(images, labels, t.batch_size, True, shuffle) for _ in range(passes)
    )
    try:
        train = train_epoch(model, optimizer, batches)
        check_finite_weights(model, epoch)  # a last update that overflowed must not be exported
    except TrainingDivergedError as exc:
        raise exc.at(epoch=epoch) from None
    val = None
    if len(val_set):
        val = evaluate(model, iterate_batches(val_set.images, val_set.labels, VAL_BATCH), seed=t.seed)
    return epoch_row(epoch, train, val, train.samples_per_s)
