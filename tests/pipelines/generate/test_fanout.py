"""The Ray fan-out on a real local Ray: row counts, byte identity across actor counts, S3, retries."""

from __future__ import annotations

import io
import os
from pathlib import Path

import boto3
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pipelines.generate import generate
from pipelines.readers import SyntheticDataset, open_dataset
from tests.pipelines.generate.helpers import MIXED, make_cfg
from vae.io import load_model
from vae.ranges import to_uint8

TOTAL = 40 + 12 + 2 * 6 + 3 * 4


@pytest.fixture(scope="module")
def runs(ray_session, cond_model, tmp_path_factory) -> dict[str, Path]:
    """The same mixed job written in-process, with 1 actor and with 2 actors."""
    root = tmp_path_factory.mktemp("ray-runs")
    out = {}
    for name, actors in (("local", None), ("one", 1), ("two", 2)):
        cfg = make_cfg(str(root / name), **MIXED, num_actors=actors)
        generate(cfg, model_dir=cond_model, progress=False, use_ray=actors is not None)
        out[name] = root / name
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "data").iterdir())}


def test_exact_rows_and_unique_ids(runs):
    table = pq.read_table(runs["two"] / "data")
    assert table.num_rows == TOTAL == open_dataset(str(runs["two"])).rows
    ids = table.column("sample_id").to_pylist()
    assert len(set(ids)) == TOTAL


def test_byte_identical_whatever_the_number_of_actors(runs):
    one, two, local = _files(runs["one"]), _files(runs["two"]), _files(runs["local"])
    assert len(one) == 5  # 76 rows in shards of 16
    assert one == two == local


def test_images_have_the_model_size_and_latents_reproduce_them(runs, cond_model):
    model = load_model(cond_model)
    table = pq.read_table(runs["two"] / "data")
    pixels = np.stack(
        [np.asarray(Image.open(io.BytesIO(r["bytes"]))) for r in table.column("image").to_pylist()]
    )
    assert pixels.shape == (TOTAL, 8, 8)
    z = torch.from_numpy(np.stack(table.column("latent").to_numpy(zero_copy_only=False)))
    y = torch.tensor(table.column("label").to_pylist())
    with torch.inference_mode():
        assert (to_uint8(model.decode(z, y), model.cfg)[:, 0].numpy() == pixels).all()


def test_per_class_counts_as_requested(runs):
    df = pq.read_table(runs["one"] / "data").to_pandas()
    per_class = df[df.method == "class"].groupby("label").size().to_dict()
    assert per_class == {3: 5, 7: 7}
    prior = df[df.method == "prior"].groupby("label").size()
    assert set(prior.tolist()) == {4}  # 40 prior samples cycle through the 10 classes


@pytest.mark.slow
def test_s3_output_on_moto(ray_session, s3, cond_model):
    bucket = s3.new_bucket()
    secret = "s3cr3t-d0-not-leak"
    opts = {"key": "AKIAVAEAUGTEST", "secret": secret, "client_kwargs": {"endpoint_url": s3.endpoint_url}}
    url = f"s3://{bucket}/synthetic"
    cfg = make_cfg(url, num_samples=40, num_actors=2, storage_options=opts)
    res = generate(cfg, model_dir=cond_model, progress=False)
    assert res.rows == 40 and res.dataset_dir == url
    client = boto3.client("s3", endpoint_url=s3.endpoint_url)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert "synthetic/_SUCCESS" in keys and "synthetic/manifest.json" in keys
    for key in keys:  # credentials never land in files
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert secret.encode() not in body and b"AKIAVAEAUGTEST" not in body
    rows = list(SyntheticDataset(url, storage_options=opts))  # streaming back from the bucket
    assert len(rows) == 40 and rows[0][0].shape == (1, 8, 8)


@pytest.mark.slow
def test_failed_shards_are_retried_with_the_same_bytes(ray_session, cond_model, runs, tmp_path, monkeypatch):
    import ray

    import pipelines.generate.actors as actors
    from pipelines.dataset_format import shard_path

    class Flaky(actors.ShardWriter):  # defined here, so Ray ships it by value to the worker
        """First attempts: shard 1 leaves a partial file and raises, shard 3 kills its process."""

        def write(self, spec):
            marker = tmp_path / f"failed-{spec.index}"
            if spec.index in (1, 3) and not marker.exists():
                marker.write_text("x")
                self.fs.makedirs(f"{self.root}/data", exist_ok=True)
                self.fs.pipe_file(
                    f"{self.root}/{shard_path(spec.index, self.sampling.num_shards)}", b"partial"
                )
                if spec.index == 3:
                    os._exit(1)
                raise RuntimeError("injected failure")
            return super().write(spec)

    monkeypatch.setattr(actors, "remote_writer_class", lambda: ray.remote(Flaky))
    out = tmp_path / "ds"
    generate(make_cfg(str(out), **MIXED, num_actors=1), model_dir=cond_model, progress=False)
    assert (tmp_path / "failed-1").exists() and (tmp_path / "failed-3").exists()
    assert _files(out) == _files(runs["one"])
