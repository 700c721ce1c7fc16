"""The function each Ray Train worker runs: thin glue around `vae.training`'s step functions.

Per epoch every rank trains on its own disjoint shard, evaluates its share of the held-out split,
and the sums are all-reduced so the reported row describes the whole job. Rank 0 alone writes the
checkpoint and the metrics file; every rank calls `ray.train.report` once per epoch (it is a barrier).

Randomness: the model is initialised from `train.seed` (DDP then broadcasts rank 0's weights), and each
epoch reseeds torch/numpy/Python from (seed, epoch, rank), so a resumed run replays the remaining
epochs exactly as an uninterrupted one would.

Data: in memory, every epoch permutes the training split with a generator seeded by (seed, epoch),
drops the remainder so all ranks get the same number of samples, and gives rank r every world-th
index from r (disjoint shards, equal batch counts). Streamed, each rank reads its Ray Data shard
(`streaming_split(equal=True)`), shuffled within a buffer of 8 batches seeded by (seed, epoch).
Per-worker batch = train.batch_size // world size, so the global batch stays the same.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import socket
import tempfile
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from pipelines.config import config_from_dict
from pipelines.training.checkpoint import load_checkpoint, restore_rng, save_checkpoint
from pipelines.training.common import epoch_row
from vae.config import VAEConfig
from vae.model import VAE
from vae.training import (
    Batch,
    EpochMetrics,
    TrainingDivergedError,
    check_finite_weights,
    evaluate,
    make_optimizer,
    train_epoch,
)

VAL_BATCH = 1024

# Keys of the `config` dict the driver passes (see `ray_train.train_distributed`):
#   pipeline: PipelineConfig.to_dict(redact=True) (no credentials: the train settings are what is read)
#   model: VAEConfig.to_dict() (num_classes resolved)
#   data: ObjectRef of {"train": (images, labels), "val": (images, labels)} numpy arrays, or None
#         when the data streams through Ray Data ("train"/"val" dataset shards)
#   has_val: whether there is a held-out split          metrics_uri: where rank 0 writes metrics.jsonl
#   queue: a ray.util.queue.Queue for the driver (rank 0 puts {"event": "start", "epoch": k}, then
#          each epoch's row), or None
#   threads: torch intra-op threads per worker
#   passes: passes over the training split per epoch (`TrainConfig.passes_per_epoch`; 1 if absent)


def _seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed torch, numpy and Python from (seed, epoch, rank) alone."""
    value = int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])
    torch.manual_seed(value)
    np.random.seed(value)
    random.seed(value)


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    """Wrap a (read-only, shared-memory) numpy array without copying; it is only ever read."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "The given NumPy array is not writable"
        return torch.from_numpy(array)


def _index_batches(
    images: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor, batch: int, device: torch.device
) -> Iterator[Batch]:
    for start in range(0, len(idx), batch):
        sel = idx[start : start + batch]
        yield images[sel].to(device, non_blocking=True), labels[sel].to(device, non_blocking=True)


def _stream_batches(name: str, batch: int, device: torch.device, shuffle_seed: int | None) -> Iterator[Batch]:
    import ray.train

    shard = ray.train.get_dataset_shard(name)
    kwargs: dict[str, Any] = {}
    if shuffle_seed is not None:
        kwargs = {"local_shuffle_buffer_size": 8 * batch, "local_shuffle_seed": shuffle_seed}
    for b in shard.iter_torch_batches(batch_size=batch, device=device, **kwargs):
        yield b["image"], b["label"]


class _Shards:
    """This rank's batches: a seeded, disjoint slice of in-memory arrays, or its Ray Data shard."""

    def __init__(self, data: dict[str, Any] | None, rank: int, world: int, batch: int, device: torch.device):
        self.rank, self.world, self.batch, self.device = rank, world, batch, device
        self.streaming = data is None
        if data is not None:
            self.train = tuple(_as_tensor(a) for a in data["train"])
            self.val = tuple(_as_tensor(a) for a in data["val"])

    def train_batches(self, seed: int, epoch: int) -> Iterator[Batch]:
        if self.streaming:
            return _stream_batches("train", self.batch, self.device, seed * 100_003 + epoch)
        images, labels = self.train
        gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
        perm = torch.randperm(len(images), generator=gen)
        usable = len(perm) // self.world * self.world  # equal shards: equal batch counts on every rank
        return _index_batches(images, labels, perm[:usable][self.rank :: self.world], self.batch, self.device)

    def val_batches(self) -> Iterator[Batch]:
        if self.streaming:
            return _stream_batches("val", VAL_BATCH, self.device, None)
        images, labels = self.val
        idx = torch.arange(self.rank, len(images), self.world)
        return _index_batches(images, labels, idx, VAL_BATCH, self.device)


def _epoch_batches(shards: _Shards, seed: int, epoch: int, passes: int) -> Iterator[Batch]:
    """An epoch of `passes` passes: pass p of epoch e shuffles as data epoch (e - 1) * passes + p + 1."""
    return itertools.chain.from_iterable(
        shards.train_batches(seed, (epoch - 1) * passes + p + 1) for p in range(passes)
    )


def _reduce(
    train: EpochMetrics, val: EpochMetrics | None, device: torch.device
) -> tuple[EpochMetrics, EpochMetrics | None]:
    """Sum the per-rank sums (and take the slowest rank's time) so metrics cover the whole job."""
    parts = [train] + ([val] if val is not None else [])
    sums = [[m.loss * m.samples, m.recon * m.samples, m.kl * m.samples, m.samples] for m in parts]
    vec = torch.tensor([x for row in sums for x in row] + [train.seconds], dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        secs = vec[-1:].clone()
        dist.all_reduce(vec, op=dist.ReduceOp.SUM)
        dist.all_reduce(secs, op=dist.ReduceOp.MAX)
        vec[-1] = secs[0]
    v = vec.tolist()
    out = []
    for i in range(len(parts)):
        loss, recon, kl, n = v[4 * i : 4 * i + 4]
        out.append(EpochMetrics(loss / n, recon / n, kl / n, int(n), v[-1]) if n else None)
    return out[0], (out[1] if val is not None else None)


def _evaluate_shard(model: torch.nn.Module, batches: Iterator[Batch], seed: int) -> EpochMetrics:
    first = next(batches, None)
    if first is None:  # this rank's share of a tiny held-out split is empty
        return EpochMetrics(0.0, 0.0, 0.0, 0, 0.0)
    return evaluate(model, itertools.chain([first], batches), seed=seed)


def write_metrics(uri: str, history: list[dict[str, float]]) -> None:
    """(Re)write the metrics history as JSON lines, one epoch per line, at a pyarrow-resolvable URI.

    Args:
        uri: local absolute path or s3:// / gs:// URL of the file.
        history: every epoch so far (a resumed run's history includes the restored epochs).
    """
    from pyarrow import fs as pafs

    filesystem, path = pafs.FileSystem.from_uri(uri)
    filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
    text = "".join(json.dumps(row) + "\n" for row in history)
    with filesystem.open_output_stream(path) as out:
        out.write(text.encode())


def _tell(queue: Any, message: dict[str, Any]) -> None:
    """Send a message to the driver; a driver that went away does not stop training."""
    if queue is None:
        return
    try:
        queue.put(message, timeout=10)
    except Exception as exc:  # the queue actor died with its driver
        warnings.warn(f"cannot send progress to the driver: {exc}", RuntimeWarning, stacklevel=2)


def _worker_info(rank: int, device: torch.device, threads: int) -> list[dict[str, Any]]:
    import ray

    info = {
        "rank": rank,
        "node_id": ray.get_runtime_context().get_node_id(),
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "device": str(device),
        "threads": threads,
    }
    if not (dist.is_available() and dist.is_initialized()):
        return [info]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, info)
    return gathered


def _train_checked(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterator[Batch],
    epoch: int,
    autocast_dtype: torch.dtype | None,
) -> EpochMetrics:
    """`train_epoch`, stopped by a NaN/inf loss or weights with the epoch in the one-line error.

    Raises:
        TrainingDivergedError: the loss or the weights became non-finite during the epoch.
    """
    try:
        train = train_epoch(model, optimizer, batches, autocast_dtype)
        # DDP keeps the ranks' weights equal, so every rank stops here together (no rank is left
        # waiting in a collective), before a checkpoint with NaN weights could be written.
        check_finite_weights(model, epoch)
    except TrainingDivergedError as exc:
        raise exc.at(epoch=epoch) from None
    return train


def divergence_of(exc: BaseException) -> TrainingDivergedError | None:
    """The workers' `TrainingDivergedError` inside Ray Train's wrappers (the run's failure, its worker
    failures, their wrapped user errors and causes), or None when the run failed for another reason.

    The driver raises it as is: a one-line `ConfigError` that no retry or resume can fix.
    """
    pending: list[BaseException] = [exc]
    for _ in range(64):  # a few wrappers deep; bounded against cycles
        if not pending:
            return None
        err = pending.pop(0)
        if isinstance(err, TrainingDivergedError):
            return err
        nested = [getattr(err, "_base_exc", None), getattr(err, "cause", None), err.__cause__]
        nested += list((getattr(err, "worker_failures", None) or {}).values())
        pending += [e for e in nested if isinstance(e, BaseException)]
    return None


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any] | None:
    """Train on this worker's shard for the remaining epochs, reporting and checkpointing each epoch.

    Args:
        config: built by the driver (`pipelines.training.ray_train`); see the keys above.

    Returns:
        On rank 0: {"resumed_from_epoch", "workers" (rank, node_id, device... per rank), "backend",
        "autocast"}; None on the other ranks.
    """
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    threads = int(config["threads"])
    torch.set_num_threads(threads)
    cfg = config_from_dict(config["pipeline"])
    t = cfg.train
    device = ray.train.torch.get_device()
    autocast_dtype = torch.bfloat16 if t.mixed_precision and device.type == "cuda" else None

    torch.manual_seed(t.seed)
    model = VAE(VAEConfig.from_dict(config["model"]))
    history: list[dict[str, float]] = []
    start_epoch, opt_state = 0, None
    restored = ray.train.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as directory:
            state = load_checkpoint(directory)
        model.load_state_dict(state.model.state_dict())
        start_epoch, history, opt_state = state.epoch, state.history[: state.epoch], state.optimizer
        if state.rng is not None:
            restore_rng(state.rng)
    model = ray.train.torch.prepare_model(model)
    optimizer = make_optimizer(model, t.lr, t.weight_decay)
    if opt_state is not None:
        optimizer.load_state_dict(opt_state)

    data = None if config["data"] is None else ray.get(config["data"])
    shards = _Shards(data, rank, world, max(1, t.batch_size // world), device)
    has_val = bool(config["has_val"])
    queue = config.get("queue") if rank == 0 else None
    _tell(queue, {"event": "start", "epoch": start_epoch})
    passes = int(config.get("passes", 1))
    for epoch in range(start_epoch + 1, t.epochs + 1):
        _seed_epoch(t.seed, epoch, rank)
        train = _train_checked(
            model, optimizer, _epoch_batches(shards, t.seed, epoch, passes), epoch, autocast_dtype
        )
        val = _evaluate_shard(model, shards.val_batches(), t.seed + rank) if has_val else None
        train, val = _reduce(train, val, device)
        row = epoch_row(epoch, train, val, train.samples_per_s)
        history.append(row)
        save_now = epoch % t.checkpoint_every == 0 or epoch == t.epochs
        if rank != 0:
            ray.train.report(row, checkpoint=None)
            continue
        write_metrics(config["metrics_uri"], history)
        _tell(queue, row)
        if not save_now:
            ray.train.report(row, checkpoint=None)
            continue
        with tempfile.TemporaryDirectory(prefix="vae-ckpt-") as tmp:
            save_checkpoint(tmp, model, optimizer, epoch, history, config["pipeline"])
            ray.train.report(row, checkpoint=Checkpoint.from_directory(tmp))

    workers = _worker_info(rank, device, threads)
    if rank != 0:
        return None
    return {
        "resumed_from_epoch": start_epoch,
        "workers": workers,
        "backend": dist.get_backend() if dist.is_available() and dist.is_initialized() else None,
        "autocast": str(autocast_dtype) if autocast_dtype is not None else None,
    }
