"""Distributed training on a real local Ray (Train V2): sharding, checkpoints on S3 + resume, two nodes,
bad input. Small models and few epochs keep the whole file to a few minutes on 2 CPU cores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.config import ConfigError, PipelineConfig, TrainConfig, config_from_dict
from pipelines.data.stream import load_data_for
from pipelines.errors import PipelineError, StorageError
from pipelines.training.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from pipelines.training.preflight import derive_run_name, resolve_cpus_per_worker, run_key
from pipelines.training.ray_train import DistributedTrainResult, train_distributed
from pipelines.training.worker import SplitArrays, WorkerData, _Shards
from vae.config import VAEConfig
from vae.model import VAE
from vae.training import make_optimizer

ROOT = Path(__file__).resolve().parents[3]


def make_cfg(tmp: Path, storage: str | None = None, **train) -> PipelineConfig:
    """A small, fast config on digits (1797 8x8 images)."""
    settings = {
        "epochs": 2,
        "min_steps": 0,
        "batch_size": 64,
        "cpus_per_worker": 1,
        "storage_path": storage or str(tmp / "runs"),
    }
    settings.update(train)
    return config_from_dict(
        {
            "model": {"hidden_channels": [16, 32], "latent_dim": 8},
            "train": settings,
            "output_dir": str(tmp / "out"),
        }
    )


def fit(cfg: PipelineConfig, **kwargs) -> DistributedTrainResult:
    """`train_distributed` on the config's data, loaded as the training stage loads it."""
    return train_distributed(cfg, load_data_for(cfg), **kwargs)


# ------------------------------------------------------------------------------- no Ray needed
def test_run_name_is_stable_and_tracks_what_is_trained(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    model = VAEConfig(hidden_channels=(16, 32), latent_dim=8, num_classes=10)
    name = derive_run_name(run_key(cfg, model, "f" * 64))
    assert name.startswith("vae-") and len(name) == 16
    assert name == derive_run_name(run_key(make_cfg(tmp_path), model, "f" * 64))
    # Execution settings and epochs do not change the run (more epochs continue it)...
    for same in ({"epochs": 9}, {"num_workers": 2}, {"checkpoint_every": 3}):
        assert derive_run_name(run_key(make_cfg(tmp_path, **same), model, "f" * 64)) == name
    # ...what is trained does.
    assert derive_run_name(run_key(make_cfg(tmp_path, lr=1e-3), model, "f" * 64)) != name
    assert derive_run_name(run_key(cfg, model, "e" * 64)) != name
    assert derive_run_name(run_key(cfg, VAEConfig(latent_dim=4), "f" * 64)) != name


def test_cpus_per_worker_fits_the_nodes() -> None:
    auto = TrainConfig(num_workers=2)
    assert resolve_cpus_per_worker(auto, False, [(8.0, 0.0)]) == 4
    assert resolve_cpus_per_worker(auto, False, [(4.0, 0.0), (2.0, 0.0)]) == 2  # not 3: one node has 2
    assert resolve_cpus_per_worker(TrainConfig(num_workers=3), False, [(1.0, 0.0), (2.0, 0.0)]) == 1
    assert resolve_cpus_per_worker(auto, True, [(16.0, 1.0), (16.0, 1.0)]) == 16
    with pytest.raises(PipelineError, match="num_workers=3"):
        resolve_cpus_per_worker(TrainConfig(num_workers=3), False, [(2.0, 0.0)])
    with pytest.raises(PipelineError, match="cpus_per_worker=2"):
        resolve_cpus_per_worker(TrainConfig(num_workers=2, cpus_per_worker=2), False, [(3.0, 0.0)])


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = VAE(VAEConfig(hidden_channels=(8,), latent_dim=4))
    opt = make_optimizer(model, 1e-3)
    model(torch.rand(4, 1, 8, 8)).logits.sum().backward()
    opt.step()
    rng = capture_rng()
    expected = torch.rand(3)
    save_checkpoint(tmp_path / "ck", model, opt, 5, [{"epoch": 1.0}], {"train": {"epochs": 5}})
    state = load_checkpoint(tmp_path / "ck")
    assert state.epoch == 5 and state.history == [{"epoch": 1.0}] and state.config["train"]["epochs"] == 5
    for k, v in model.state_dict().items():
        assert torch.equal(state.model.state_dict()[k], v)
    fresh = make_optimizer(state.model, 1e-3)
    fresh.load_state_dict(state.optimizer)
    assert fresh.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    restore_rng(rng)
    assert torch.equal(torch.rand(3), expected)
    with pytest.raises(FileNotFoundError, match="state.json"):
        load_checkpoint(tmp_path)


def test_in_memory_shards_are_disjoint_and_equal() -> None:
    n, world = 103, 3
    images = np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1)
    zeros = np.zeros(n, dtype=np.int64)
    arrays = {
        "train": SplitArrays(images, zeros, np.arange(n)),
        "val": SplitArrays(images[:5], zeros[:5], np.arange(5)),
    }
    data, model = WorkerData(arrays=arrays), VAEConfig(image_size=(8, 8))
    for epoch in (1, 2):
        seen, steps = [], set()
        for rank in range(world):
            shard = _Shards(model, data, rank, world, 8, torch.device("cpu"))
            batches = list(shard.train_batches(0, epoch))
            steps.add(len(batches))
            seen.append([int(v) for x, _ in batches for v in x.flatten()])
        assert len(steps) == 1  # equal batch counts: no rank waits on a collective
        flat = [v for s in seen for v in s]
        assert sorted(flat) == list(range(n))  # disjoint, and every image exactly once
    assert seen[0] != sorted(seen[0])  # shuffled


def test_num_workers_below_one_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="num_workers"):
        TrainConfig(num_workers=0)


def test_unreachable_cluster_fails_fast(tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        from pipelines.errors import PipelineError
        from pipelines.config import config_from_dict
        from pipelines.data.stream import load_data_for
        from pipelines.training.ray_train import DistributedTrainResult, train_distributed
        cfg = config_from_dict({{"ray": {{"address": "127.0.0.1:9"}},
                                 "train": {{"storage_path": {str(tmp_path / "runs")!r}}}}})
        try:
            train_distributed(cfg, load_data_for(cfg))
        except PipelineError as exc:
            print("ERROR:", exc)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert "ERROR: cannot reach the Ray cluster at '127.0.0.1:9'" in out.stdout, out.stderr[-2000:]
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------ on a local Ray
def test_bad_settings_fail_before_training(ray_session, tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="use_gpu=true but the Ray cluster has no GPU"):
        fit(make_cfg(tmp_path, use_gpu=True))
    with pytest.raises(PipelineError, match="num_workers=64"):
        fit(make_cfg(tmp_path, num_workers=64, cpus_per_worker=None))
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(StorageError, match="storage_path .*file/runs/vae-[0-9a-f]{12}' is not writable"):
        fit(make_cfg(tmp_path, storage=str(tmp_path / "file" / "runs")))
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()


def test_bad_bucket_fails_before_training(ray_session, s3, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="s3://no-such-bucket-here/runs/vae-[0-9a-f]{12}' is not writable"):
        fit(make_cfg(tmp_path, storage="s3://no-such-bucket-here/runs"))


@dataclass
class S3Run:
    """A 2-worker run (3 epochs, data streamed through Ray Data) checkpointing to a moto S3 bucket."""

    result: DistributedTrainResult
    rows: list[dict]
    bucket: str
    storage: str
    tmp: Path


@pytest.fixture(scope="module")
def s3_run(ray_session, s3, tmp_path_factory: pytest.TempPathFactory) -> S3Run:
    """Shared by the tests below: each `fit` costs tens of seconds of Ray start-up on 2 cores."""
    tmp = tmp_path_factory.mktemp("s3run")
    bucket = s3.new_bucket()
    storage = f"s3://{bucket}/runs"
    rows: list[dict] = []
    cfg = make_cfg(tmp, storage=storage, epochs=3, num_workers=2, streaming="always")
    result = fit(cfg, on_epoch=rows.append)
    return S3Run(result, rows, bucket, storage, tmp)


@pytest.mark.slow
def test_two_workers_match_one_worker(s3_run: S3Run, tmp_path: Path) -> None:
    two = s3_run.result
    assert [r["epoch"] for r in s3_run.rows] == [1, 2, 3]  # shown live, one row per epoch
    assert [r["epoch"] for r in two.history] == [1, 2, 3]
    assert len(two.workers) == 2 and two.backend == "gloo" and two.resumed_from_epoch == 0
    assert two.final["val_loss"] < two.history[0]["val_loss"]  # it learns
    # The same global batch on one worker (in-memory data) reaches about the same held-out loss.
    rows: list[dict] = []
    one = fit(make_cfg(tmp_path, epochs=3, num_workers=1), on_epoch=rows.append)
    assert [r["epoch"] for r in rows] == [1, 2, 3] and len(one.workers) == 1
    v1, v2 = one.final["val_loss"], two.final["val_loss"]
    assert abs(v1 - v2) / v1 < 0.05, (v1, v2)
    # Export at the stable location; metrics next to the checkpoints.
    for name in ("config.json", "model.safetensors", "metrics.json", "loss_curve.png", "samples.png"):
        assert (Path(one.model_dir) / name).is_file(), name
    lines = Path(one.run_dir, "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    assert Path(one.checkpoint).is_dir()


@pytest.mark.slow
def test_checkpoints_on_s3_and_resume(s3_run: S3Run) -> None:
    import s3fs

    first, bucket = s3_run.result, s3_run.bucket
    assert first.checkpoint.startswith(f"s3://{bucket}/runs/{first.run_name}/checkpoint_")
    fs = s3fs.S3FileSystem()
    run_dir = f"{bucket}/runs/{first.run_name}"
    assert fs.exists(f"{run_dir}/metrics.jsonl") and fs.exists(f"{run_dir}/run.json")

    # Same config, more epochs: same derived run name, continues at epoch 4.
    rows: list[dict] = []
    cfg = make_cfg(s3_run.tmp, storage=s3_run.storage, epochs=4, num_workers=2, streaming="always")
    again = fit(cfg, on_epoch=rows.append)
    assert again.run_name == first.run_name
    assert again.resumed_from_epoch == 3
    assert [r["epoch"] for r in rows] == [4]  # no epoch re-done
    assert [r["epoch"] for r in again.history] == [1, 2, 3, 4]
    assert again.history[:3] == first.history

    lines = fs.cat_file(f"{run_dir}/metrics.jsonl").decode().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4]
    names = [p.rsplit("/", 1)[-1] for p in fs.ls(run_dir)]
    checkpoints = [n for n in names if n.startswith("checkpoint_") and not n.endswith(".json")]
    assert len(checkpoints) == cfg.train.keep_checkpoints  # older ones pruned
    assert json.loads((Path(again.model_dir) / "config.json").read_text())["extra"]["epochs_trained"] == 4

    # The run's name with a different model: refused before any worker starts.
    other = config_from_dict({**cfg.to_dict(), "model": {**cfg.to_dict()["model"], "latent_dim": 4}})
    other.train.run_name = first.run_name
    with pytest.raises(PipelineError, match="trains a different model"):
        fit(other)


@pytest.mark.slow
def test_two_node_cluster(tmp_path: Path) -> None:
    """Workers land on both nodes of a `ray.cluster_utils.Cluster` (own process: one Ray per process)."""
    script = textwrap.dedent(
        f"""
        import json, ray
        from ray.cluster_utils import Cluster
        from pipelines.config import config_from_dict
        from pipelines.data.stream import load_data_for
        from pipelines.training.ray_train import DistributedTrainResult, train_distributed

        cluster = Cluster(initialize_head=True, connect=True, head_node_args={{"num_cpus": 1}})
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        cfg = config_from_dict({{
            "model": {{"hidden_channels": [16, 32], "latent_dim": 8}},
            "train": {{"epochs": 1, "min_steps": 0, "batch_size": 64, "num_workers": 2,
                       "storage_path": {str(tmp_path / "runs")!r}}},
            "output_dir": {str(tmp_path / "out")!r},
        }})
        result = train_distributed(cfg, load_data_for(cfg))
        nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
        print("RESULT", json.dumps({{"nodes": nodes, "workers": result.workers,
                                    "epochs": [r["epoch"] for r in result.history]}}))
        ray.shutdown()
        cluster.shutdown()
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=400, env=env, cwd=ROOT
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, out.stdout[-2000:] + out.stderr[-4000:]
    result = json.loads(lines[-1].removeprefix("RESULT "))
    assert len(result["nodes"]) == 2
    assert sorted(w["node_id"] for w in result["workers"]) == sorted(result["nodes"])
    assert result["epochs"] == [1]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_nccl_bf16(ray_session, tmp_path: Path) -> None:
    result = fit(make_cfg(tmp_path, use_gpu=True, mixed_precision=True, num_workers=1))
    assert result.backend == "nccl"
    assert result.autocast == "torch.bfloat16"
    assert result.workers[0]["device"].startswith("cuda")
    assert result.final["val_loss"] < result.history[0]["val_loss"] or len(result.history) == 1


@pytest.mark.slow
def test_a_diverging_run_is_one_config_error_and_exports_nothing(ray_session, tmp_path: Path) -> None:
    """A nan loss on a worker reaches the driver as that worker's one-line `ConfigError` (not "resume
    the run", which would diverge again), and no model is exported."""
    from vae.training import TrainingDivergedError

    with pytest.raises(TrainingDivergedError) as info:
        fit(make_cfg(tmp_path, lr=10.0))
    text = str(info.value)
    assert isinstance(info.value, ConfigError) and "\n" not in text
    assert text.startswith("training loss became") and "at epoch 1 step" in text and "lower train.lr" in text
    assert not (tmp_path / "out" / "model").exists()
