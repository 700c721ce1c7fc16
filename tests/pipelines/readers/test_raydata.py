"""The Ray Data reader on a real local Ray: decoded tensors equal to the PyTorch reader's, the decode
step, refusals, S3, and one epoch of a real Ray Train `TorchTrainer` fed by it."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipelines.errors import DataError
from pipelines.generate import generate
from pipelines.readers import SyntheticDataset, SyntheticMapDataset
from pipelines.readers.raydata import decode_batch, read_synthetic
from tests.pipelines.generate.helpers import make_cfg, save_tiny_model
from tests.pipelines.readers.conftest import ROWS


def _key(latent: torch.Tensor) -> tuple[float, ...]:
    return tuple(latent.tolist())


def test_importing_the_readers_does_not_import_ray():
    code = (
        "import sys, pipelines.readers as r; assert 'ray' not in sys.modules, 'ray imported'; "
        "r.read_synthetic; assert 'ray.data' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_batches_are_the_decoded_images_labels_and_latents(ray_session, synthetic_dir):
    ds = read_synthetic(str(synthetic_dir), columns=("image", "label", "latent"))
    reference = {_key(z): (x, y) for x, y, z in SyntheticDataset(str(synthetic_dir), return_latent=True)}
    seen = 0
    for batch in ds.iter_torch_batches(batch_size=32):
        assert set(batch) == {"image", "label", "latent"}
        x, y, z = batch["image"], batch["label"], batch["latent"]
        assert x.dtype == torch.float32 and x.shape[1:] == (1, 8, 8)  # (B, C, H, W)
        assert y.dtype == torch.int64 and z.dtype == torch.float32 and z.shape[1:] == (4,)
        for i in range(len(y)):
            x_ref, y_ref = reference.pop(_key(z[i]))
            assert torch.equal(x[i], x_ref) and int(y[i]) == y_ref
        seen += len(y)
    assert seen == ROWS and not reference


def test_refusals_are_one_clear_line(synthetic_dir, tmp_path):  # before any Ray work
    with pytest.raises(ValueError, match="columns=.*choose distinct names among image, latent, label"):
        read_synthetic(str(synthetic_dir), columns=("image", "pixels"))
    with pytest.raises(ValueError, match="decode_batch_size=0: use a positive number"):
        read_synthetic(str(synthetic_dir), decode_batch_size=0)
    with pytest.raises(ValueError, match="read_synthetic sets filesystem itself"):
        read_synthetic(str(synthetic_dir), filesystem=None)
    copy = tmp_path / "copy"
    shutil.copytree(synthetic_dir, copy)
    (copy / "_SUCCESS").unlink()
    with pytest.raises(DataError, match=r"incomplete \(no _SUCCESS marker\)"):
        read_synthetic(str(copy))
    mem = fsspec.filesystem("memory")
    mem.put(str(synthetic_dir), "/raydata-test", recursive=True)
    try:
        with pytest.raises(DataError, match="memory://, which Ray's worker processes cannot see"):
            read_synthetic("memory://raydata-test")
    finally:
        mem.rm("/raydata-test", recursive=True)


def test_decode_batch_of_an_unconditional_dataset(tmp_path):
    """The map_batches step on its own: null labels become -1, string columns stay strings."""
    model = save_tiny_model(tmp_path / "model", conditional=False)
    generate(make_cfg(str(tmp_path / "ds"), num_samples=12), model_dir=model, progress=False, use_ray=False)
    table = pq.read_table(tmp_path / "ds" / "data", columns=["image", "label", "latent", "sample_id"])
    out = decode_batch(table, image_shape=(1, 8, 8), latent_dim=4)
    assert list(out) == ["image", "label", "latent", "sample_id"]
    assert out["image"].shape == (12, 1, 8, 8) and out["image"].dtype == np.float32
    assert out["label"].tolist() == [-1] * 12 and out["latent"].shape == (12, 4)
    items = list(SyntheticDataset(str(tmp_path / "ds"), return_latent=True))
    assert all(torch.equal(torch.from_numpy(out["image"][i]), x) for i, (x, _, _) in enumerate(items))
    assert out["sample_id"].tolist() == table.column("sample_id").to_pylist()
    broken = table.set_column(0, "image", pa.array([{"bytes": b"not a png", "path": "x.png"}] * 12))
    with pytest.raises(DataError, match="cannot decode image 'x.png' as a .* PNG"):
        decode_batch(broken, image_shape=(1, 8, 8), latent_dim=4)


@pytest.mark.slow
def test_reads_from_s3(ray_session, s3, synthetic_dir):
    bucket = s3.new_bucket()
    fsspec.filesystem("s3", **s3.storage_options()).put(
        str(synthetic_dir), f"{bucket}/synthetic", recursive=True
    )
    ds = read_synthetic(f"s3://{bucket}/synthetic", storage_options=s3.storage_options())
    labels = torch.cat([b["label"] for b in ds.iter_torch_batches(batch_size=64)])
    assert sorted(labels.tolist()) == sorted(SyntheticMapDataset(str(synthetic_dir)).targets)


@pytest.mark.slow  # a Ray Train controller, a worker and Ray Data's split coordinator start
def test_feeds_a_torch_trainer_for_one_epoch(ray_session, synthetic_dir: Path, tmp_path: Path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    def train_loop(config: dict) -> dict:  # defined here: Ray ships it by value to the worker
        import ray.train
        import ray.train.torch
        import torch.nn.functional as F

        torch.manual_seed(0)
        model = ray.train.torch.prepare_model(torch.nn.Linear(64, 10))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        shard = ray.train.get_dataset_shard("train")
        counts = torch.zeros(10, dtype=torch.int64)
        for batch in shard.iter_torch_batches(batch_size=config["batch_size"]):
            x, y = batch["image"].flatten(1), batch["label"]  # (B, 64), (B,)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            counts += torch.bincount(y, minlength=10)
        return {"counts": counts.tolist(), "loss": float(loss)}

    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"batch_size": 16},
        scaling_config=ScalingConfig(num_workers=1, use_gpu=False),
        run_config=RunConfig(name="readers-one-epoch", storage_path=str(tmp_path / "runs")),
        datasets={"train": read_synthetic(str(synthetic_dir))},
    )
    result = trainer.fit()
    out = result.return_value
    expected = Counter(SyntheticMapDataset(str(synthetic_dir)).targets)
    assert sum(out["counts"]) == ROWS and out["counts"] == [expected[k] for k in range(10)]
    assert math.isfinite(out["loss"])
