"""Checks that run before any training starts, and the run's identity.

Everything here fails with a one-line `PipelineError`/`StorageError` naming the setting and the fix:
GPUs requested but absent, more workers than the cluster can place, storage that cannot be written,
or a run name whose existing run trains a different model. The derived run name is
`vae-` + 12 hex digits of sha256 over `run_key` (see `pipelines.training.ray_train`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any

from pipelines.config import PipelineConfig, TrainConfig
from pipelines.errors import PipelineError
from pipelines.raycluster import ClusterInfo
from pipelines.storage import join, probe_writable_arrow, strip_slash
from vae.config import VAEConfig

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
#: Train settings that change the result, hence the derived run name.
RESULT_KEYS = ("batch_size", "lr", "weight_decay", "val_fraction", "seed", "min_steps")
#: The fix `check_storage`'s error gives.
STORAGE_FIX = (
    "give a writable local path, or an s3:// / gs:// URL whose bucket exists and whose credentials "
    "allow writes"
)


def resolve_storage(storage_path: str) -> str:
    """A storage location every Ray node can use: URLs as given, local paths made absolute."""
    if "://" in storage_path and not storage_path.startswith("file://"):
        return strip_slash(storage_path)
    local = storage_path.removeprefix("file://")
    return os.path.abspath(os.path.expanduser(local))


def check_storage(storage: str, run_name: str) -> None:
    """Write and delete a probe file under `{storage}/{run_name}` with the filesystem Ray will use.

    Args:
        storage: from `resolve_storage`.
        run_name: the run's folder.

    Raises:
        StorageError: the location cannot be written (the message names train.storage_path).
    """
    probe_writable_arrow(join(storage, run_name), "train.storage_path", fix=STORAGE_FIX)


def resolve_use_gpu(train: TrainConfig, cluster: ClusterInfo) -> bool:
    """True/False from `train.use_gpu` (None: GPUs when the cluster has one per worker).

    Raises:
        PipelineError: use_gpu=True on a cluster without enough GPUs.
    """
    gpus = int(cluster.num_gpus)
    if train.use_gpu is None:
        use = gpus >= train.num_workers
        if 0 < gpus < train.num_workers:
            log.warning("%d GPU(s) for %d workers: training on CPUs", gpus, train.num_workers)
        return use
    if train.use_gpu and gpus == 0:
        raise PipelineError(
            "train.use_gpu=true but the Ray cluster has no GPU: set train.use_gpu=false (or null to use "
            "GPUs only when there are some), or connect to a cluster with GPUs (ray.address)"
        )
    if train.use_gpu and gpus < train.num_workers:
        raise PipelineError(
            f"train.num_workers={train.num_workers} GPU workers need {train.num_workers} GPUs, the Ray "
            f"cluster has {gpus}: lower train.num_workers or set train.use_gpu=false"
        )
    return bool(train.use_gpu)


def node_resources() -> list[tuple[float, float]]:
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return [(n["Resources"].get("CPU", 0.0), n["Resources"].get("GPU", 0.0)) for n in nodes]


def _slots(nodes: list[tuple[float, float]], cpus: int, use_gpu: bool) -> int:
    """How many workers of `cpus` CPUs (and one GPU each if `use_gpu`) the nodes can hold."""
    return sum(min(int(c // cpus), int(g) if use_gpu else 1 << 30) for c, g in nodes)


def resolve_cpus_per_worker(train: TrainConfig, use_gpu: bool, nodes: list[tuple[float, float]]) -> int:
    """`train.cpus_per_worker`, or the most CPUs every worker can get on these nodes.

    Args:
        train: the num_workers and cpus_per_worker settings.
        use_gpu: workers also need one GPU each.
        nodes: (CPUs, GPUs) of each alive node.

    Returns:
        CPUs per worker (also its torch threads).

    Raises:
        PipelineError: the cluster cannot place `num_workers` workers.
    """
    n = train.num_workers
    if train.cpus_per_worker is not None:
        if _slots(nodes, train.cpus_per_worker, use_gpu) >= n:
            return train.cpus_per_worker
        cpus = sum(c for c, _ in nodes)
        raise PipelineError(
            f"the Ray cluster ({cpus:g} CPUs on {len(nodes)} node(s)) cannot place train.num_workers={n} "
            f"workers of train.cpus_per_worker={train.cpus_per_worker} CPUs: lower either, or use a "
            "bigger cluster"
        )
    for cpus in range(int(max((c for c, _ in nodes), default=0)), 0, -1):
        if _slots(nodes, cpus, use_gpu) >= n:
            return cpus
    total = sum(c for c, _ in nodes)
    raise PipelineError(
        f"train.num_workers={n} needs at least {n} CPUs{' next to one GPU each' if use_gpu else ''}, the "
        f"Ray cluster has {total:g} CPUs on {len(nodes)} node(s): lower train.num_workers (or raise "
        "ray.num_cpus for a local Ray)"
    )


def run_key(cfg: PipelineConfig, model_cfg: VAEConfig, fingerprint: str) -> dict[str, Any]:
    """What a run trains: the inputs of the derived run name (see the module docstring)."""
    return {
        "data": fingerprint,
        "model": model_cfg.to_dict(),
        "train": {k: getattr(cfg.train, k) for k in RESULT_KEYS},
    }


def derive_run_name(key: dict[str, Any]) -> str:
    """`vae-` + the first 12 hex digits of sha256 over `run_key` (canonical JSON)."""
    blob = json.dumps(key, sort_keys=True, separators=(",", ":")).encode()
    return "vae-" + hashlib.sha256(blob).hexdigest()[:12]


def claim_run(storage: str, run_name: str, key: dict[str, Any]) -> None:
    """Record the run's key; refuse to resume a run whose model does not match this config."""
    from pyarrow import fs as pafs

    filesystem, path = pafs.FileSystem.from_uri(join(storage, run_name, RUN_FILE))
    if filesystem.get_file_info(path).type == pafs.FileType.File:
        with filesystem.open_input_stream(path) as src:
            old = json.loads(src.read())
        if old.get("model") != key["model"]:
            raise PipelineError(
                f"run '{run_name}' in '{storage}' trains a different model ({RUN_FILE}), so it cannot be "
                "resumed with this config: choose another train.run_name, or null to derive one"
            )
        if old != key:
            log.warning("resuming run %s with changed data or train settings", run_name)
        return
    with filesystem.open_output_stream(path) as out:
        out.write(json.dumps(key, indent=1).encode())
