"""Distributed training on Ray Train (V2 `TorchTrainer`), with checkpoints on any storage and resume.

Layout under `train.storage_path` (local path, s3:// or gs://), one folder per run name:

    {storage_path}/{run_name}/checkpoint_*/        Ray Train checkpoints (see `checkpoint.py`), rank 0 only
    {storage_path}/{run_name}/metrics.jsonl        one JSON line per epoch, every epoch exactly once
    {storage_path}/{run_name}/run.json             what the run trains (its key), written at first start
    {storage_path}/{run_name}/checkpoint_manager_snapshot.json   Ray's own record, used to resume

Re-running with the same run name resumes from the run's last checkpoint. Without `train.run_name`
the name is `vae-` + 12 hex digits of sha256 over the settings that decide what is trained
(`run_key`): the data fingerprint, the resolved model config, and train.batch_size, lr,
weight_decay, val_fraction and seed. Left out on purpose: `epochs` (so raising it continues a finished
run), and how the run executes (num_workers, use_gpu, cpus_per_worker, mixed_precision, streaming,
checkpointing and failure settings, storage_path).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from pipelines.config import PipelineConfig, TrainConfig, config_from_dict
from pipelines.console import console
from pipelines.data.imageset import ImageSet
from pipelines.errors import PipelineError
from pipelines.raycluster import ensure_ray
from pipelines.storage import join, last_line
from pipelines.training.checkpoint import load_checkpoint
from pipelines.training.epochs import format_epoch
from pipelines.training.export import TrainResult, export_trained_model
from pipelines.training.model_config import model_config_for
from pipelines.training.preflight import (
    check_storage,
    claim_run,
    derive_run_name,
    node_resources,
    resolve_cpus_per_worker,
    resolve_storage,
    resolve_use_gpu,
    run_key,
)
from pipelines.training.stream_reader import data_error_in
from pipelines.training.worker import (
    ARGS_KEY,
    SplitArrays,
    WorkerArgs,
    WorkerData,
    divergence_of,
    train_loop_per_worker,
)
from vae.config import VAEConfig

log = logging.getLogger(__name__)

#: A run's own metrics record, next to its checkpoints: one JSON line per epoch, rewritten by rank 0
#: every epoch (the exported model's history is `export.MODEL_METRICS_FILE`).
RUN_METRICS_FILE = "metrics.jsonl"
#: Ray Train V2's controller takes one `report` per poll (every 2 s by default) and `report` blocks on a
#: queue of one, which would pace short epochs at 2 s each; poll faster unless the user set it.
POLL_ENV, POLL_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2"


@dataclass
class DistributedTrainResult(TrainResult):
    """`TrainResult` plus where the run lives and how it ran.

    Attributes:
        run_name: the Ray Train run name (re-use it to resume).
        run_dir: `{storage_path}/{run_name}`, holding checkpoints and `metrics.jsonl`.
        checkpoint: the path of the last checkpoint.
        workers: per rank: rank, node_id, hostname, pid, device, threads.
        backend: the torch.distributed backend ("gloo" or "nccl").
        autocast: "torch.bfloat16" when mixed precision ran, else None.
    """

    run_name: str = ""
    run_dir: str = ""
    checkpoint: str = ""
    workers: list[dict[str, Any]] = field(default_factory=list)
    backend: str | None = None
    autocast: str | None = None


@dataclass(frozen=True)
class _Run:
    """A run that passed the checks: what it trains, under which name, where and on what.

    Attributes:
        cfg: the pipeline config, `train.run_name` set to `name` (recorded as run).
        name: the run name (given, or derived from `run_key`).
        storage: from `resolve_storage`; the run lives in `{storage}/{name}`.
        use_gpu: one GPU per worker.
        cpus: CPUs (torch threads) per worker.
        model: the model config, `num_classes` resolved from the data.
        fingerprint: the data's fingerprint.
    """

    cfg: PipelineConfig
    name: str
    storage: str
    use_gpu: bool
    cpus: int
    model: VAEConfig
    fingerprint: str

    @property
    def dir(self) -> str:
        return join(self.storage, self.name)


# ------------------------------------------------------------------------------------------- data
def worker_data(data: ImageSet, train_set: ImageSet, val_set: ImageSet) -> WorkerData:
    """What the workers read: the arrays (once in the object store, shared by the workers of a
    node), or the streamed source's index and split (the workers read the images themselves)."""
    import ray

    if data.stream is not None:
        return WorkerData(stream=ray.put(data.stream))

    def arrays(part: ImageSet) -> SplitArrays:
        chunks = part.chunks if part.chunks is not None else torch.arange(len(part))
        return SplitArrays(part.images.numpy(), part.labels.numpy(), chunks.numpy())

    return WorkerData(arrays=ray.put({"train": arrays(train_set), "val": arrays(val_set)}))


def _worker_cpus(cpus: int, num_workers: int, nodes: list[tuple[float, float]], streaming: bool) -> float:
    """CPUs each worker reserves: all its threads' CPUs, except that a streaming run leaves at least
    one CPU of the cluster to Ray Data's read tasks (which otherwise wait forever for one).

    The worker still runs `cpus` torch threads: decoding and training share the cores.
    """
    spare = sum(c for c, _ in nodes) - cpus * num_workers
    if not streaming or spare >= 1:
        return float(cpus)
    return float(cpus - 1) if cpus >= 2 else 0.5


@contextmanager
def _relay(queue: Any, handle: Callable[[dict[str, Any]], None]) -> Iterator[None]:
    """Hand the messages rank 0 puts on `queue` to `handle`, from a thread, while training runs."""
    from ray.util.queue import Empty

    done = threading.Event()

    def pump() -> None:
        while True:
            try:
                message = queue.get(block=True, timeout=0.5)
            except Empty:
                if done.is_set():
                    return
                continue
            except Exception:  # the queue actor is gone
                return
            try:
                handle(message)
            except Exception:
                log.exception("on_epoch callback failed")

    thread = threading.Thread(target=pump, name="epoch-relay", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=30)


# ----------------------------------------------------------------------------------------- driver
def _uri(storage: str, path: str) -> str:
    """A pyarrow (scheme-less) path under `storage` as a URL again."""
    scheme = storage.split("://", 1)[0] if "://" in storage else ""
    return f"{scheme}://{path}" if scheme and "://" not in path else path


def train_distributed(
    cfg: PipelineConfig,
    data: ImageSet,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> DistributedTrainResult:
    """Train `cfg.model` with Ray Train, checkpointing to `train.storage_path`, then export it.

    Everything that can be checked is checked before any worker starts: the cluster address
    (`ensure_ray`), workers vs the cluster's CPUs/GPUs, use_gpu, and that the storage is writable.

    Args:
        cfg: pipeline config (`train`: workers, epochs, storage, run name...; `ray`: where Ray is).
        data: the images in the model's range (`pipelines.data.stream.load_data_for`).
        on_epoch: called with each epoch's metrics row as it finishes (from a helper thread);
            None logs `format_epoch` lines at INFO.

    Returns:
        `DistributedTrainResult`: the exported model at `cfg.model_dir`, the whole history (restored
        epochs included), `resumed_from_epoch`, the run name and where its checkpoints are.

    Raises:
        PipelineError: bad settings for this cluster, unreachable cluster, or a failed run.
        StorageError: `train.storage_path` is not writable.
    """
    import ray
    from ray.util.queue import Queue

    run = _check_run(cfg, data)
    t = run.cfg.train
    train_set, val_set = data.split(t.val_fraction, seed=t.seed)  # a sample's own split when streamed
    queue = Queue(actor_options={"num_cpus": 0})
    try:
        args = _worker_args(run, data, train_set, val_set, queue)
        streaming = data.stream is not None
        reserved = _worker_cpus(run.cpus, t.num_workers, node_resources(), streaming)
        trainer = _trainer(t, run, reserved, args)
        console.line(
            f"training run {run.name}: {t.num_workers} worker(s) x {run.cpus} CPU"
            f"{' + 1 GPU' if run.use_gpu else ''}, "
            f"{'data streamed from storage by Ray Data' if streaming else 'in-memory data'}, "
            f"checkpoints in {run.dir}"
        )
        show = on_epoch or (lambda row: log.info(format_epoch(row, t.epochs)))
        result, starts = _fit(trainer, queue, run.name, show)
    finally:
        ray.kill(queue.actor)
    return _export(run, data, train_set, val_set, result, starts)


def _check_run(cfg: PipelineConfig, data: ImageSet) -> _Run:
    """Check the cluster, the workers' resources and the storage; name the run and claim its folder.

    Raises:
        PipelineError: an unreachable cluster, settings it cannot run, or a run name that trains
            another model.
        StorageError: `train.storage_path` is not writable.
    """
    t = cfg.train
    cluster = ensure_ray(cfg.ray)
    use_gpu = resolve_use_gpu(t, cluster)
    cpus = resolve_cpus_per_worker(t, use_gpu, node_resources())
    storage = resolve_storage(t.storage_path)
    if cluster.num_nodes > 1 and "://" not in storage:
        log.warning("storage_path %s is local on a multi-node cluster: it must be shared", storage)
    model_cfg = model_config_for(cfg, data)
    fingerprint = data.fingerprint()
    key = run_key(cfg, model_cfg, fingerprint)
    run_name = t.run_name or derive_run_name(key)
    check_storage(storage, run_name)
    claim_run(storage, run_name, key)
    named = cfg.model_copy(update={"train": t.model_copy(update={"run_name": run_name})})
    return _Run(named, run_name, storage, use_gpu, cpus, model_cfg, fingerprint)


def _worker_args(run: _Run, data: ImageSet, train_set: ImageSet, val_set: ImageSet, queue: Any) -> WorkerArgs:
    """The workers' `WorkerArgs`: the redacted config, the model, the data, and where to report."""
    n_train, n_val = data.source_split_sizes(run.cfg.train.val_fraction)  # the whole source's, if streamed
    pipeline = run.cfg.to_dict(redact=True)  # kept with the run and in every checkpoint: no credentials
    return WorkerArgs(
        train=config_from_dict(pipeline).train,
        pipeline=pipeline,
        model=run.model,
        data=worker_data(data, train_set, val_set),
        has_val=n_val > 0,
        metrics_uri=join(run.dir, RUN_METRICS_FILE),
        threads=run.cpus,
        passes=run.cfg.train.passes_per_epoch(n_train),
        queue=queue,
    )


def _fit(
    trainer: Any, queue: Any, run_name: str, show: Callable[[dict[str, Any]], None]
) -> tuple[Any, list[int]]:
    """Run `trainer.fit()`, showing each epoch's row; a failed run becomes one line.

    Returns:
        (Ray Train's `Result`, the epoch each (re)start of the workers resumed from).

    Raises:
        TrainingDivergedError: the loss or weights became NaN/inf (a setting to change, not a run to resume).
        DataError: a corrupt or unreadable file in the stream (fix the data).
        PipelineError: any other failure (re-run to resume from the last checkpoint).
    """
    import ray

    starts: list[int] = []

    def handle(message: dict[str, Any]) -> None:
        if message.get("event") != "start":
            show(message)
            return
        starts.append(int(message["epoch"]))
        if message["epoch"]:
            console.line(f"run {run_name} resumes after epoch {message['epoch']}")

    try:
        with _relay(queue, handle):
            return trainer.fit(), starts
    except ray.train.TrainingFailedError as exc:
        known = divergence_of(exc) or data_error_in(exc)
        if known is not None:
            raise known from None
        raise PipelineError(
            f"training run '{run_name}' failed ({last_line(exc)}); re-run with the same config (or "
            f"train.run_name={run_name}) to resume from its last checkpoint"
        ) from exc


def _export(
    run: _Run, data: ImageSet, train_set: ImageSet, val_set: ImageSet, result: Any, starts: list[int]
) -> DistributedTrainResult:
    """Export the model of the run's last checkpoint to `cfg.model_dir`, with where the run lives."""
    if result.checkpoint is None:
        raise PipelineError(f"training run '{run.name}' finished without a checkpoint in '{run.storage}'")
    with result.checkpoint.as_directory() as directory:
        state = load_checkpoint(directory, with_optimizer=False)
    epochs = run.cfg.train.epochs
    if state.epoch > epochs:
        log.warning("run %s had trained %d epochs (> train.epochs=%d)", run.name, state.epoch, epochs)
    info = result.return_value or {}
    exported = export_trained_model(
        state.model,
        run.cfg,
        data.class_names,
        run.fingerprint,
        state.history,
        val_set if len(val_set) else train_set,
        resumed_from_epoch=starts[0] if starts else int(info.get("resumed_from_epoch", 0)),
        train=train_set,
    )
    return DistributedTrainResult(
        **vars(exported),
        run_name=run.name,
        run_dir=run.dir,
        checkpoint=_uri(run.storage, result.checkpoint.path),
        workers=list(info.get("workers", [])),
        backend=info.get("backend"),
        autocast=info.get("autocast"),
    )


def _trainer(t: TrainConfig, run: _Run, cpus: float, args: WorkerArgs) -> Any:
    """The `TorchTrainer` of a run (gloo on CPU, NCCL on GPU); each worker reserves `cpus` CPUs."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    os.environ.setdefault(POLL_ENV, POLL_S)  # read by the controller when it starts
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={ARGS_KEY: args},  # Ray wants a dict: one key, the typed arguments
        torch_config=TorchConfig(backend="nccl" if run.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=t.num_workers, use_gpu=run.use_gpu, resources_per_worker={"CPU": cpus}
        ),
        run_config=RunConfig(
            name=run.name,
            storage_path=run.storage,
            failure_config=FailureConfig(max_failures=t.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=t.keep_checkpoints),
            # "Checkpoint successfully created" / "Reporting training result" every epoch: -v only
            logging_config=LoggingConfig(log_level="INFO" if console.verbose else "WARNING"),
        ),
    )
