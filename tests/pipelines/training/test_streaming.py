"""The streaming input path on a real local Ray: what each rank reads, and whole runs through Ray Train.

Every image carries its number in its pixels (`streamdata`), so a batch tells which images it holds.
Sources: a local folder and Hugging Face-layout Parquet (several files and row groups) on the moto S3
server. Checked: the ranks' streamed shards are disjoint, cover the training split exactly once per
epoch, reshuffle per epoch, replay exactly and equal the in-memory path's batches; a streamed run's
history equals an in-memory run's, resumes mid-run like an uninterrupted run, and a corrupt file in the
stream stops it with the loader's one-line error (found inside Ray's exception wrappers). Tiny images
and model, few epochs: on 2 CPU cores the cost is Ray's start-up and the runs' exports.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest
import ray

from pipelines.config import PipelineConfig, config_from_dict
from pipelines.console import console
from pipelines.data import DataConfig, load_images
from pipelines.data.stream import load_data_for
from pipelines.errors import DataError
from pipelines.training.model_config import model_config_for
from pipelines.training.ray_train import DistributedTrainResult, train_distributed, worker_data
from pipelines.training.stream_reader import data_error_in
from pipelines.training.worker import WorkerData
from tests.pipelines.training.streamdata import RankActor, write_folder, write_parquet
from vae.config import VAEConfig

N_IMAGES = 300
PARQUET_FILES, ROW_GROUP = [100, 100, 100], 25  # 12 row groups
WORLD, BATCH = 2, 64  # per-worker batch: 32
SEED = 0
LOSSES = ("train_loss", "train_recon", "train_kl", "val_loss", "val_recon", "val_kl")
STREAMED_LINE = "data streamed from storage by Ray Data"


def make_cfg(data: DataConfig, tmp: Path, **train: Any) -> PipelineConfig:
    """Two workers, tiny model, exactly `epochs` passes, streaming unless told otherwise."""
    settings = {
        "epochs": 3,
        "min_steps": 0,
        "batch_size": BATCH,
        "num_workers": WORLD,
        "cpus_per_worker": 1,
        "seed": SEED,
        "streaming": "always",
        "storage_path": str(tmp / "runs"),
        **train,
    }
    return config_from_dict(
        {
            "data": data.to_dict(),
            "model": {"hidden_channels": [16, 32], "latent_dim": 8},
            "train": settings,
            "output_dir": str(tmp / "out"),
        }
    )


@pytest.fixture(scope="module")
def sources(ray_session, s3, tmp_path_factory: pytest.TempPathFactory) -> dict[str, DataConfig]:
    """A local folder and S3 Parquet of the same 300 numbered images (written once per module)."""
    root = str(tmp_path_factory.mktemp("streaming") / "folder")
    write_folder(fsspec.filesystem("file", auto_mkdir=True), root, N_IMAGES)
    bucket = s3.new_bucket()
    write_parquet(fsspec.filesystem("s3", **s3.storage_options()), f"{bucket}/pq", PARQUET_FILES, ROW_GROUP)
    return {
        "folder": DataConfig(source="folder", path=root),
        "parquet": DataConfig(
            source="parquet", path=f"s3://{bucket}/pq", storage_options=s3.storage_options()
        ),
    }


# ------------------------------------------------------------------------------ no Ray needed
def test_the_data_error_is_found_inside_rays_wrappers() -> None:
    """What a worker catches (a Ray Data task's `RayTaskError(DataError)`, whose own text is Ray's
    traceback header) and what the driver catches (Ray Train V2's `WorkerGroupError`, each rank's
    error in `worker_failures`) both give the loader's one-line message, as Ray really builds them."""
    from ray.exceptions import RayTaskError
    from ray.train import WorkerGroupError

    message = "corrupt image '/data/cat/0009.png': cannot identify image file; remove or replace it"
    cause = DataError(f"{message}\nFailed to apply UDF transform after 1/1 attempts (total backoff 0.0s).")
    header = "ray::MapBatches(_Decode)() (pid=1, ip=127.0.0.1)\n  File ..., in __call__"
    task = RayTaskError("MapBatches(_Decode)", header, cause).as_instanceof_cause()
    assert isinstance(task, DataError)  # Ray's wrapper is a DataError too, with Ray's text
    assert str(data_error_in(task)) == message
    workers = WorkerGroupError("Training failed due to worker errors", {1: DataError(message)})
    assert str(data_error_in(workers)) == message
    assert data_error_in(WorkerGroupError("failed", {0: RuntimeError("boom")})) is None


# ------------------------------------------------------------------------------ what each rank reads
Epoch = list[list[tuple[list[int], list[int]]]]  # per rank, per batch: (image numbers, labels)


def _collect(
    model: VAEConfig, data: WorkerData, epochs: list[int], passes: list[int] | None = None
) -> tuple[list[Epoch], list[list[int]]]:
    """Per data epoch every rank's batches (then, with `passes`, those data epochs as one epoch's
    passes), and every rank's held-out share, from two rank actors."""
    actors = [RankActor.remote(model, data, rank, WORLD, BATCH // WORLD) for rank in range(WORLD)]
    try:
        seen = [ray.get([a.train.remote(SEED, e) for a in actors]) for e in epochs]
        if passes:
            seen.append(ray.get([a.passes.remote(SEED, passes) for a in actors]))
        return seen, ray.get([a.val.remote() for a in actors])
    finally:
        for actor in actors:
            ray.kill(actor)


def _numbers(rank: list[tuple[list[int], list[int]]]) -> list[int]:
    return [v for numbers, _ in rank for v in numbers]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["folder", "parquet"])
def test_streamed_shards_are_disjoint_exact_and_reproducible(
    sources: dict[str, DataConfig], kind: str, tmp_path: Path
) -> None:
    cfg = make_cfg(sources[kind], tmp_path)
    sample = load_data_for(cfg)
    assert sample.stream is not None
    stream, model = sample.stream, model_config_for(cfg, sample)
    streamed = WorkerData(stream=ray.put(stream))
    (first, second, replay, both), val = _collect(model, streamed, [1, 2, 1], passes=[1, 2])

    train_items = stream.train_items.tolist()
    for ranks in (first, second):
        assert len({len(rank) for rank in ranks}) == 1  # the same number of steps on both ranks
        shards = [_numbers(rank) for rank in ranks]
        assert not set(shards[0]) & set(shards[1])  # disjoint
        assert sorted(shards[0] + shards[1]) == train_items  # the training split, each image once
        for rank in ranks:  # labels travel with their images
            for numbers, labels in rank:
                assert labels == stream.index.labels[numbers].tolist()
    for rank in range(WORLD):
        assert _numbers(first[rank]) != _numbers(second[rank])  # another order each epoch
    assert sorted(val[0] + val[1]) == stream.val_items.tolist() and not set(val[0]) & set(val[1])

    # The same seed replays the same batches; two passes read in one execution are the two epochs.
    assert replay == first
    assert both == [a + b for a, b in zip(first, second, strict=True)]
    # The in-memory path trains on exactly these batches.
    full = load_images(cfg.data, model)
    train, held_out = full.split(cfg.train.val_fraction, seed=SEED)
    in_memory = worker_data(full, train, held_out)
    assert _collect(model, in_memory, [1, 2], passes=[1, 2]) == ([first, second, both], val)


# ------------------------------------------------------------------------------ whole runs
@dataclass
class Run:
    """A finished `train_distributed` and the console lines it printed."""

    result: DistributedTrainResult
    lines: list[str]
    rows: list[dict[str, float]]


def _fit(cfg: PipelineConfig) -> Run:
    lines: list[str] = []
    rows: list[dict[str, float]] = []
    with console.mirrored(lines.append):
        result = train_distributed(cfg, load_data_for(cfg), on_epoch=rows.append)
    return Run(result, lines, rows)


def _losses(history: list[dict[str, float]]) -> np.ndarray:
    """(epochs, 6) the loss columns of a history (throughput differs between runs)."""
    return np.array([[row[k] for k in LOSSES] for row in history])


@dataclass
class Runs:
    """The module's shared fits: 2 streamed epochs (resumed by a test) and 3 in-memory epochs."""

    streamed: Run
    streamed_tmp: Path
    memory: Run


@pytest.fixture(scope="module")
def runs(sources: dict[str, DataConfig], tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """2 workers on the S3 Parquet source: streamed for 2 epochs, and in memory for 3 (a fit each)."""
    tmp = tmp_path_factory.mktemp("streamed")
    streamed = _fit(make_cfg(sources["parquet"], tmp, epochs=2))
    memory = _fit(make_cfg(sources["parquet"], tmp_path_factory.mktemp("memory"), streaming="never"))
    return Runs(streamed, tmp, memory)


@pytest.mark.slow
def test_streaming_trains_like_in_memory(runs: Runs) -> None:
    assert any(STREAMED_LINE in line for line in runs.streamed.lines)
    assert not any(STREAMED_LINE in line for line in runs.memory.lines)
    assert any("in-memory data" in line for line in runs.memory.lines)
    streamed, memory = runs.streamed.result.history, runs.memory.result.history
    assert [r["epoch"] for r in streamed] == [1, 2] and [r["epoch"] for r in memory] == [1, 2, 3]
    np.testing.assert_allclose(_losses(streamed), _losses(memory[:2]), rtol=1e-5)
    assert memory[-1]["val_loss"] < memory[0]["val_loss"]  # it learns


@pytest.mark.slow
def test_a_streamed_run_resumes_mid_run(runs: Runs, sources: dict[str, DataConfig]) -> None:
    first = runs.streamed.result
    again = _fit(make_cfg(sources["parquet"], runs.streamed_tmp, epochs=3))  # same run name: resumes
    assert again.result.run_name == first.run_name
    assert again.result.resumed_from_epoch == 2 and [r["epoch"] for r in again.rows] == [3]
    assert any(f"run {first.run_name} resumes after epoch 2" in line for line in again.lines)
    history = again.result.history
    assert [r["epoch"] for r in history] == [1, 2, 3] and history[:2] == first.history
    # ...and equals an uninterrupted run: the 3 in-memory epochs train on the same batches.
    np.testing.assert_allclose(_losses(history), _losses(runs.memory.result.history), rtol=1e-5)


@pytest.mark.slow
def test_a_corrupt_file_in_the_stream_is_the_loaders_one_line_error(ray_session, tmp_path: Path) -> None:
    root = tmp_path / "pets"
    rels = write_folder(fsspec.filesystem("file", auto_mkdir=True), str(root), 120)
    cfg = make_cfg(DataConfig(source="folder", path=str(root)), tmp_path, epochs=1)
    data = load_data_for(cfg)  # the driver's sample is read: the file goes bad after that
    assert data.stream is not None
    bad = rels[int(data.stream.train_items[7])]
    (root / bad).write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError) as loader:
        load_images(cfg.data, cfg.model)
    with pytest.raises(DataError) as streamed:
        train_distributed(cfg, data)
    text = str(streamed.value)
    assert "\n" not in text and text == str(loader.value)
    assert f"{root}/{bad}" in text and text.endswith("remove or replace it")
    assert not (tmp_path / "out" / "model").exists()
