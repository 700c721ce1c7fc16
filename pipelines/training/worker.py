"""The function each Ray Train worker runs: thin glue around `vae.training`'s step functions.

Per epoch every rank trains on its own disjoint shard, evaluates its share of the held-out split,
and the sums are all-reduced so the reported row describes the whole job. Rank 0 alone writes the
checkpoint and the metrics file; every rank calls `ray.train.report` once per epoch (it is a barrier).

Randomness: the model is initialised from `train.seed` (DDP then broadcasts rank 0's weights), and each
epoch reseeds torch/numpy/Python from (seed, epoch, rank), so a resumed run replays the remaining
epochs exactly as an uninterrupted one would.

Data: every data epoch, each rank takes its disjoint shard of the training split from one seeded plan
(`pipelines.data.order.plan_epoch`: chunks permuted by (seed, epoch), cut into equal-count runs per
rank, shuffled within windows, the same number of batches on every rank; every image exactly once).
In memory the rank indexes the arrays from the object store; streamed, Ray Data reads and decodes
the planned chunks from storage (`pipelines.training.stream_reader`). Both give the same batches.
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
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from pipelines.config import TrainConfig
from pipelines.data.order import RankPlan, plan_epoch, plan_eval, shuffle_window
from pipelines.errors import find_error
from pipelines.training.checkpoint import load_checkpoint, restore_rng, save_checkpoint
from pipelines.training.epochs import VAL_BATCH, epoch_row
from pipelines.training.stream_reader import quiet_ray_data, stream_batches
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

#: The one key of the `train_loop_config` dict Ray Train hands each worker: its `WorkerArgs`.
ARGS_KEY = "args"


@dataclass(frozen=True)
class SplitArrays:
    """One split held in memory, as numpy arrays (zero-copy, read-only views from the object store).

    Attributes:
        images: (N, C, H, W) float32 in the model's range.
        labels: (N,) int64.
        chunks: (N,) the chunk (file / row group) of each image, which the epoch plans shuffle by.
    """

    images: np.ndarray
    labels: np.ndarray
    chunks: np.ndarray


@dataclass(frozen=True)
class WorkerData:
    """What the workers read their images from: exactly one of `arrays` and `stream` is set.

    Attributes:
        arrays: ObjectRef of {"train": SplitArrays, "val": SplitArrays} (once in the object store,
            shared by the workers of a node), or that dict itself; None when streamed.
        stream: ObjectRef of the `StreamedSource` (the source's index and split: the workers read
            and decode the images themselves through Ray Data), or the source itself; None in memory.
    """

    arrays: Any = None
    stream: Any = None


@dataclass(frozen=True)
class WorkerArgs:
    """Everything the driver (`pipelines.training.ray_train`) hands each Ray Train worker.

    Ray Train keeps it with the run, and rank 0 stores `pipeline` in every checkpoint: nothing in it
    holds credentials (the workers need none: the data reaches them through Ray, metrics and
    checkpoints go to storage with the cluster's own credentials).

    Attributes:
        train: the run's train settings, from the redacted config (seed, epochs, lr, batch size...).
        pipeline: `PipelineConfig.to_dict(redact=True)`: the run's record in every checkpoint.
        model: the model config, `num_classes` resolved from the data.
        data: where the images come from.
        has_val: whether there is a held-out split.
        metrics_uri: where rank 0 writes the run's metrics (`ray_train.RUN_METRICS_FILE`).
        threads: torch intra-op threads per worker.
        passes: passes over the training split per epoch (`TrainConfig.passes_per_epoch`).
        queue: a `ray.util.queue.Queue` to the driver (rank 0 puts {"event": "start", "epoch": k},
            then each epoch's row), or None.
    """

    train: TrainConfig
    pipeline: dict[str, Any]
    model: VAEConfig
    data: WorkerData
    has_val: bool
    metrics_uri: str
    threads: int
    passes: int = 1
    queue: Any = None


@dataclass(frozen=True)
class _Rank:
    """Where this worker runs: its rank among `world`, its device, and its autocast dtype (or None)."""

    rank: int
    world: int
    device: torch.device
    autocast: torch.dtype | None


@dataclass
class _Progress:
    """The model being trained (DDP-wrapped), its optimizer, and the epochs done so far."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    start_epoch: int  # epochs restored from the run's last checkpoint (0 on a fresh run)
    history: list[dict[str, float]]


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


def _planned_batches(
    images: torch.Tensor, labels: torch.Tensor, plan: RankPlan, device: torch.device
) -> Iterator[Batch]:
    """The plan's batches from in-memory arrays."""
    order = torch.from_numpy(plan.order)
    at = 0
    for size in plan.batches:
        sel = order[at : at + size]
        at += size
        yield images[sel].to(device, non_blocking=True), labels[sel].to(device, non_blocking=True)


def _fetch(value: Any) -> Any:
    """`value`, or what it refers to when it is an ObjectRef."""
    if value is None or type(value).__name__ != "ObjectRef":
        return value
    import ray

    return ray.get(value)


class _Shards:
    """This rank's batches: the same plan (`pipelines.data.order`) over in-memory arrays or a stream.

    In memory the arrays come from the object store; streamed, the source's index and split do, and
    Ray Data reads the planned chunks (`pipelines.training.stream_reader`).
    """

    def __init__(
        self, model_cfg: VAEConfig, data: WorkerData, rank: int, world: int, batch: int, device: torch.device
    ):
        self.rank, self.world, self.batch, self.device = rank, world, batch, device
        self.model_cfg = model_cfg
        self.window = shuffle_window(batch, 4 * int(np.prod(model_cfg.image_shape)))
        self.stream = _fetch(data.stream)
        if self.stream is not None:
            import ray

            quiet_ray_data()
            self.index_ref = ray.put(self.stream.index)  # once, for every read task of the run
            chunk_of = self.stream.index.chunk_of
            self.chunks = {k: chunk_of[self.stream_items(k)] for k in ("train", "val")}
            return
        arrays: dict[str, SplitArrays] = _fetch(data.arrays)
        self.arrays = {k: (_as_tensor(a.images), _as_tensor(a.labels)) for k, a in arrays.items()}
        self.chunks = {k: np.asarray(a.chunks) for k, a in arrays.items()}

    def stream_items(self, part: str) -> np.ndarray:
        assert self.stream is not None
        return self.stream.train_items if part == "train" else self.stream.val_items

    def _batches(self, part: str, plan: RankPlan) -> Iterator[Batch]:
        if self.stream is not None:
            return stream_batches(self.index_ref, self.stream_items(part), plan, self.model_cfg, self.device)
        images, labels = self.arrays[part]
        return _planned_batches(images, labels, plan, self.device)

    def train_batches(self, seed: int, data_epoch: int) -> Iterator[Batch]:
        return self.epoch_batches(seed, [data_epoch])

    def epoch_batches(self, seed: int, data_epochs: list[int]) -> Iterator[Batch]:
        """The batches of consecutive data epochs (an epoch's passes), streamed in one execution."""
        plans = [
            plan_epoch(self.chunks["train"], seed, e, self.rank, self.world, self.batch, self.window)
            for e in data_epochs
        ]
        if self.stream is not None:
            items = self.stream_items("train")
            return stream_batches(self.index_ref, items, plans, self.model_cfg, self.device)
        return itertools.chain.from_iterable(self._batches("train", plan) for plan in plans)

    def val_batches(self) -> Iterator[Batch]:
        return self._batches("val", plan_eval(self.chunks["val"], self.rank, self.world, VAL_BATCH))


def _epoch_batches(shards: _Shards, seed: int, epoch: int, passes: int) -> Iterator[Batch]:
    """An epoch of `passes` passes: pass p of epoch e shuffles as data epoch (e - 1) * passes + p + 1."""
    return shards.epoch_batches(seed, [(epoch - 1) * passes + p + 1 for p in range(passes)])


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
    """The workers' `TrainingDivergedError` inside Ray Train's wrappers, or None when the run failed
    for another reason. The driver raises it as is: a one-line `ConfigError` no resume can fix."""
    return find_error(exc, TrainingDivergedError)


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any] | None:
    """Train on this worker's shard for the remaining epochs, reporting and checkpointing each epoch.

    Args:
        config: `{ARGS_KEY: WorkerArgs}`, built by the driver (`pipelines.training.ray_train`).

    Returns:
        On rank 0: {"resumed_from_epoch", "workers" (rank, node_id, device... per rank), "backend",
        "autocast"}; None on the other ranks.
    """
    args: WorkerArgs = config[ARGS_KEY]
    torch.set_num_threads(args.threads)
    here = _this_rank(args.train)
    progress = _start(args)
    shards = _Shards(
        args.model, args.data, here.rank, here.world, args.train.batch_size // here.world, here.device
    )
    queue = args.queue if here.rank == 0 else None
    _tell(queue, {"event": "start", "epoch": progress.start_epoch})
    for epoch in range(progress.start_epoch + 1, args.train.epochs + 1):
        row = _train_epoch(args, here, progress, shards, epoch)
        progress.history.append(row)
        _report(args, here, progress, epoch, row, queue)
    workers = _worker_info(here.rank, here.device, args.threads)
    if here.rank != 0:
        return None
    return {
        "resumed_from_epoch": progress.start_epoch,
        "workers": workers,
        "backend": dist.get_backend() if dist.is_available() and dist.is_initialized() else None,
        "autocast": str(here.autocast) if here.autocast is not None else None,
    }


def _this_rank(t: TrainConfig) -> _Rank:
    """This worker's rank, world size and device (from Ray Train), and bf16 autocast when asked on GPU."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    device = ray.train.torch.get_device()
    autocast = torch.bfloat16 if t.mixed_precision and device.type == "cuda" else None
    return _Rank(ctx.get_world_rank(), ctx.get_world_size(), device, autocast)


def _start(args: WorkerArgs) -> _Progress:
    """The model seeded from `train.seed`, or restored from the run's last checkpoint (weights, history,
    optimizer and RNG states), DDP-wrapped, with its optimizer."""
    import ray.train
    import ray.train.torch

    t = args.train
    torch.manual_seed(t.seed)
    model = VAE(args.model)
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
    return _Progress(model, optimizer, start_epoch, history)


def _train_epoch(
    args: WorkerArgs, here: _Rank, progress: _Progress, shards: _Shards, epoch: int
) -> dict[str, float]:
    """Train this rank's shard for one epoch, evaluate its held-out share, and return the whole job's row."""
    seed = args.train.seed
    _seed_epoch(seed, epoch, here.rank)
    batches = _epoch_batches(shards, seed, epoch, args.passes)
    train = _train_checked(progress.model, progress.optimizer, batches, epoch, here.autocast)
    val = _evaluate_shard(progress.model, shards.val_batches(), seed + here.rank) if args.has_val else None
    train, val = _reduce(train, val, here.device)
    return epoch_row(epoch, train, val, train.samples_per_s)


def _report(
    args: WorkerArgs, here: _Rank, progress: _Progress, epoch: int, row: dict[str, float], queue: Any
) -> None:
    """Report the epoch to Ray Train on every rank (a barrier). Rank 0 first rewrites the metrics file
    and tells the driver, and on checkpoint epochs (every `checkpoint_every`, and the last) reports a
    checkpoint with it."""
    import ray.train
    from ray.train import Checkpoint

    t = args.train
    if here.rank != 0:
        ray.train.report(row, checkpoint=None)
        return
    write_metrics(args.metrics_uri, progress.history)
    _tell(queue, row)
    if not (epoch % t.checkpoint_every == 0 or epoch == t.epochs):
        ray.train.report(row, checkpoint=None)
        return
    with tempfile.TemporaryDirectory(prefix="vae-ckpt-") as tmp:
        save_checkpoint(tmp, progress.model, progress.optimizer, epoch, progress.history, args.pipeline)
        ray.train.report(row, checkpoint=Checkpoint.from_directory(tmp))
