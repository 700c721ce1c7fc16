"""Kill-and-resume of a Ray Train run (issue 11): a worker process SIGKILLed mid-run after the first
checkpoint, `train.max_failures=1`. The run must finish on a restarted worker group with one history row
per epoch and export weights bit-identical to an uninterrupted run with the same seed and config."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from pathlib import Path

import pytest

from pipelines.config import PipelineConfig, config_from_dict
from pipelines.data.stream import load_data_for
from pipelines.training.ray_train import DistributedTrainResult, train_distributed
from tests.pipelines.raykill import Killed, actors_of, kill_one_actor_when

EPOCHS = 4
#: Ray Train V2's worker actor class (ray/train/v2/_internal/execution/worker_group/worker.py).
WORKER_CLASS = "RayTrainWorker"
#: Loss columns of a history row (the others, samples/s, are timings).
LOSS_KEYS = ("train_loss", "train_recon", "train_kl", "val_loss", "val_recon", "val_kl")


def make_cfg(tmp: Path, workers: int) -> PipelineConfig:
    """A tiny in-memory run on digits, `max_failures=1`.

    `min_steps` gives each epoch two passes (seconds on 2 cores), so the epochs after the first
    checkpoint leave the killer thread a wide window before the run ends.
    """
    return config_from_dict(
        {
            "model": {"hidden_channels": [16, 32], "latent_dim": 8},
            "train": {
                "epochs": EPOCHS,
                "min_steps": EPOCHS * 50,
                "batch_size": 64,
                "num_workers": workers,
                "cpus_per_worker": 1,
                "max_failures": 1,
                "streaming": "never",
                "storage_path": str(tmp / "runs"),
            },
            "output_dir": str(tmp / "out"),
        }
    )


def _registered_checkpoint(storage: Path) -> bool:
    """Whether Ray Train has registered a checkpoint of a run under `storage`.

    Its controller writes this snapshot when it registers a reported checkpoint, and a restart resumes
    from the registered ones only: a `checkpoint_*` folder alone may be one that rank 0 uploaded but the
    controller has not taken yet (killed then, the run rightly redoes that epoch).
    """
    return any(storage.glob("*/checkpoint_manager_snapshot.json"))


def kill_a_worker_after_first_checkpoint(storage: Path, before: set[str], stop: threading.Event) -> Killed:
    """Start a thread that SIGKILLs one live training worker of this run once a checkpoint is registered.

    Args:
        storage: the run's `train.storage_path` (a local folder).
        before: ids of the worker actors that existed before the run (earlier runs' workers).
        stop: set when the run is over; the thread then gives up.

    Returns:
        `Killed`, filled in by the thread.
    """
    return kill_one_actor_when(
        lambda: _registered_checkpoint(storage), WORKER_CLASS, before, stop, poll_s=0.02
    )


def _losses(result: DistributedTrainResult) -> list[tuple[float, ...]]:
    return [tuple(row[k] for k in LOSS_KEYS) for row in result.history]


@pytest.mark.slow
def test_killed_worker_resumes_to_identical_weights(ray_session, tmp_path: Path, capsys) -> None:
    import ray

    workers = 2 if ray.cluster_resources().get("CPU", 0) >= 2 else 1
    clean_cfg = make_cfg(tmp_path / "clean", workers)
    clean = train_distributed(clean_cfg, load_data_for(clean_cfg))

    capsys.readouterr()  # only the interrupted run's lines below
    before = set(actors_of(WORKER_CLASS))
    stop = threading.Event()
    cfg = make_cfg(tmp_path / "killed", workers)
    killed = kill_a_worker_after_first_checkpoint(Path(cfg.train.storage_path), before, stop)
    rows: list[dict] = []
    try:
        resumed = train_distributed(cfg, load_data_for(cfg), on_epoch=rows.append)
    finally:
        stop.set()

    # The kill landed mid-run: one worker group died and a whole new one finished the run.
    assert killed.pid is not None, "the run ended before a worker could be killed"
    started = actors_of(WORKER_CLASS).keys() - before
    assert len(started) == 2 * workers, started
    assert killed.pid not in {w["pid"] for w in resumed.workers}

    # Exactly one row per epoch, in the result, the exported metrics and the run's metrics file.
    epochs = list(range(1, EPOCHS + 1))
    assert [r["epoch"] for r in resumed.history] == epochs
    lines = Path(resumed.run_dir, "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == epochs
    exported = json.loads(Path(resumed.model_dir, "metrics.json").read_text())
    assert [r["epoch"] for r in exported] == epochs
    # The new group resumed from a checkpoint (not from scratch); shown live: every epoch, and only
    # those after that checkpoint twice (re-run by the new group).
    resumed_after = [int(n) for n in re.findall(r"resumes after epoch (\d+)", capsys.readouterr().out)]
    assert len(resumed_after) == 1 and 1 <= resumed_after[0] < EPOCHS, resumed_after
    shown = [int(r["epoch"]) for r in rows]
    assert sorted(set(shown)) == epochs
    assert all(e > resumed_after[0] for e in shown if shown.count(e) > 1), shown

    # Bit-identical to the uninterrupted run: the same losses every epoch, the same weights.
    assert _losses(resumed) == _losses(clean)
    for run in (resumed, clean):
        blob = Path(run.model_dir, "model.safetensors").read_bytes()  # the file itself, read back
        config = json.loads(Path(run.model_dir, "config.json").read_text())
        assert hashlib.sha256(blob).hexdigest() == config["weights_sha256"] == run.sha256
    assert resumed.sha256 == clean.sha256
