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

import dataclasses
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pipelines.config import PipelineConfig, TrainConfig
from pipelines.console import console
from pipelines.data.imageset import ImageSet
from pipelines.errors import PipelineError
from pipelines.raycluster import ensure_ray
from pipelines.training.checkpoint import load_checkpoint
from pipelines.training.common import format_epoch, model_config_for
from pipelines.training.export import TrainResult, export_trained_model
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
from pipelines.training.worker import divergence_of, train_loop_per_worker

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
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


# ------------------------------------------------------------------------------------------- data
def _data_config(data: ImageSet, train_set: ImageSet, val_set: ImageSet) -> dict[str, Any]:
    """The loop config's data keys: the arrays (once in the object store, shared by the workers of a
    node), or the streamed source's index and split (the workers read the images themselves)."""
    import ray

    if data.stream is not None:
        return {"data": None, "stream": ray.put(data.stream)}

    def arrays(part: ImageSet) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        chunks = part.chunks if part.chunks is not None else torch.arange(len(part))
        return part.images.numpy(), part.labels.numpy(), chunks.numpy()

    return {"data": ray.put({"train": arrays(train_set), "val": arrays(val_set)}), "stream": None}


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
    data: ImageSet | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> DistributedTrainResult:
    """Train `cfg.model` with Ray Train, checkpointing to `train.storage_path`, then export it.

    Everything that can be checked is checked before any worker starts: the cluster address
    (`ensure_ray`), workers vs the cluster's CPUs/GPUs, use_gpu, and that the storage is writable.

    Args:
        cfg: pipeline config (`train`: workers, epochs, storage, run name...; `ray`: where Ray is).
        data: the images in the model's range; None loads `cfg.data`.
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

    t = cfg.train
    if t.num_workers < 1:
        raise PipelineError(f"train.num_workers={t.num_workers}: must be >= 1")
    cluster = ensure_ray(cfg.ray)
    use_gpu = resolve_use_gpu(t, cluster)
    cpus = resolve_cpus_per_worker(t, use_gpu, node_resources())
    storage = resolve_storage(t.storage_path)
    if cluster.num_nodes > 1 and "://" not in storage:
        log.warning("storage_path %s is local on a multi-node cluster: it must be shared", storage)
    if data is None:
        from pipelines.data.stream import load_data_for

        data = load_data_for(cfg)
    model_cfg = model_config_for(cfg, data)
    fingerprint = data.fingerprint()
    key = run_key(cfg, model_cfg, fingerprint)
    run_name = t.run_name or derive_run_name(key)
    check_storage(storage, run_name)
    claim_run(storage, run_name, key)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(t, run_name=run_name))  # recorded as run

    train_set, val_set = data.split(t.val_fraction, seed=t.seed)  # a sample's own split when streamed
    n_train, n_val = _split_sizes(data, train_set, val_set)
    queue = Queue(actor_options={"num_cpus": 0})
    loop_config = {
        # Redacted: Ray keeps the loop config with the run and rank 0 stores it in every checkpoint,
        # while the workers need no credentials (the data reaches them through Ray, metrics and
        # checkpoints go to storage with the cluster's own credentials).
        "pipeline": cfg.to_dict(redact=True),
        "model": model_cfg.to_dict(),
        **_data_config(data, train_set, val_set),
        "has_val": n_val > 0,
        "metrics_uri": f"{storage}/{run_name}/{METRICS_FILE}",
        "queue": queue,
        "threads": cpus,
        "passes": t.passes_per_epoch(n_train),
    }
    streaming = data.stream is not None
    reserved = _worker_cpus(cpus, t.num_workers, node_resources(), streaming)
    trainer = _trainer(t, run_name, storage, use_gpu, reserved, loop_config)
    console.line(
        f"training run {run_name}: {t.num_workers} worker(s) x {cpus} CPU{' + 1 GPU' if use_gpu else ''}, "
        f"{'data streamed from storage by Ray Data' if streaming else 'in-memory data'}, "
        f"checkpoints in {storage}/{run_name}"
    )
    show = on_epoch or (lambda row: log.info(format_epoch(row, t.epochs)))
    starts: list[int] = []  # the epoch each (re)start of the workers resumed from

    def handle(message: dict[str, Any]) -> None:
        if message.get("event") != "start":
            show(message)
            return
        starts.append(int(message["epoch"]))
        if message["epoch"]:
            console.line(f"run {run_name} resumes after epoch {message['epoch']}")

    try:
        with _relay(queue, handle):
            result = trainer.fit()
    except ray.train.TrainingFailedError as exc:
        diverged = divergence_of(exc)
        if diverged is not None:  # NaN/inf loss: a setting to change, not a run to resume
            raise diverged from None
        unreadable = data_error_in(exc)
        if unreadable is not None:  # a corrupt or unreadable file in the stream: fix the data
            raise unreadable from None
        cause = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise PipelineError(
            f"training run '{run_name}' failed ({cause}); re-run with the same config (or "
            f"train.run_name={run_name}) to resume from its last checkpoint"
        ) from exc
    finally:
        ray.kill(queue.actor)

    if result.checkpoint is None:
        raise PipelineError(f"training run '{run_name}' finished without a checkpoint in '{storage}'")
    with result.checkpoint.as_directory() as directory:
        state = load_checkpoint(directory, with_optimizer=False)
    if state.epoch > t.epochs:
        log.warning("run %s had trained %d epochs (> train.epochs=%d)", run_name, state.epoch, t.epochs)
    info = result.return_value or {}
    exported = export_trained_model(
        state.model,
        cfg,
        data.class_names,
        fingerprint,
        state.history,
        val_set if len(val_set) else train_set,
        resumed_from_epoch=starts[0] if starts else int(info.get("resumed_from_epoch", 0)),
        train=train_set,
    )
    return DistributedTrainResult(
        **vars(exported),
        run_name=run_name,
        run_dir=f"{storage}/{run_name}",
        checkpoint=_uri(storage, result.checkpoint.path),
        workers=list(info.get("workers", [])),
        backend=info.get("backend"),
        autocast=info.get("autocast"),
    )


def _split_sizes(data: ImageSet, train_set: ImageSet, val_set: ImageSet) -> tuple[int, int]:
    """(train, held-out) images the workers see: the whole source's split when streamed."""
    if data.stream is None:
        return len(train_set), len(val_set)
    return len(data.stream.train_items), len(data.stream.val_items)


def _trainer(
    t: TrainConfig,
    run_name: str,
    storage: str,
    use_gpu: bool,
    cpus: float,
    loop_config: dict[str, Any],
) -> Any:
    """The `TorchTrainer` of a run (gloo on CPU, NCCL on GPU)."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    os.environ.setdefault(POLL_ENV, POLL_S)  # read by the controller when it starts
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=t.num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus}
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=t.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=t.keep_checkpoints),
            # "Checkpoint successfully created" / "Reporting training result" every epoch: -v only
            logging_config=LoggingConfig(log_level="INFO" if console.verbose else "WARNING"),
        ),
    )
