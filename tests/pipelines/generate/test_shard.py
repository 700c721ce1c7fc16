"""One shard: latents that re-decode to the stored images, byte-identical rewrites."""

from __future__ import annotations

import io

import fsspec
import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

from pipelines.config import GenerateConfig, PipelineConfig
from pipelines.dataset_format import shard_path
from pipelines.generate.driver import _sampling_spec
from pipelines.generate.plan import make_plan, source_images
from pipelines.generate.shard import shard_generator, shard_rows, write_shard
from tests.pipelines.generate.helpers import MIXED, digits
from vae.io import load_model, read_model_config
from vae.ranges import to_uint8


def _setup(model_dir: str, **gen):
    model = load_model(model_dir)
    meta = read_model_config(model_dir)
    data = digits(model_dir)
    cfg = PipelineConfig(generate=GenerateConfig(**{**MIXED, "shard_size": 20, "batch_size": 8, **gen}))
    plan = make_plan(cfg.generate, model.cfg, meta["extra"]["class_names"], data)
    job, _ = _sampling_spec(cfg, model, meta, plan, data)
    return model, plan, job, source_images(plan, data)


def _write(model, job, spec, src):
    fs = fsspec.filesystem("memory")
    root = f"/shard-test-{np.random.default_rng().integers(1 << 30)}"
    stats = write_shard(model, job, spec, src, fs, root)
    return stats, fs.cat_file(f"{root}/{stats.path}")


def test_shard_rows_reproduce_images_and_rewrite_same_bytes(cond_model):
    model, plan, job, src = _setup(cond_model)
    spec = plan.shards[2]  # spans the per-class and variant segments
    stats, blob = _write(model, job, spec, src)
    table = pq.read_table(io.BytesIO(blob))
    assert stats.rows == spec.rows == table.num_rows
    assert (
        stats.path == shard_path(2, len(plan.shards)) == f"data/part-00002-of-{len(plan.shards):05d}.parquet"
    )
    assert len(set(table.column("sample_id").to_pylist())) == spec.rows
    assert table.column("sample_id")[0].as_py() == f"{job.job_id}-{spec.start:010d}"
    pixels = np.stack(
        [np.asarray(Image.open(io.BytesIO(r["bytes"]))) for r in table.column("image").to_pylist()]
    )
    assert pixels.shape == (spec.rows, 8, 8)  # the model's size (grayscale)
    z = torch.from_numpy(np.stack(table.column("latent").to_numpy(zero_copy_only=False)))  # (N, D)
    y = torch.tensor(table.column("label").to_pylist())
    with torch.inference_mode():
        redecoded = to_uint8(model.decode(z, y), model.cfg)[:, 0].numpy()  # (N, H, W)
    assert (redecoded == pixels).all()
    again, blob2 = _write(model, job, spec, src)
    assert blob2 == blob and again.sha256 == stats.sha256


def test_latents_do_not_depend_on_the_decoder_batch_size(cond_model):
    model, plan, job, src = _setup(cond_model)
    _, _, job3, _ = _setup(cond_model, batch_size=3)
    a = shard_rows(model, job, plan.shards[3], src)
    b = shard_rows(model, job3, plan.shards[3], src)
    assert torch.equal(a.z, b.z) and torch.equal(a.labels, b.labels)


def test_variants_and_interpolations_start_at_their_sources(cond_model):
    model, plan, job, src = _setup(cond_model, variant_temperature=0.0, num_samples=0, per_class={})
    rows = [shard_rows(model, job, spec, src) for spec in plan.shards]
    z = torch.cat([r.z for r in rows])
    methods = sum((r.methods for r in rows), [])
    sources = sum((r.source_ids for r in rows), [])
    targets = sum((r.target_ids for r in rows), [])
    with torch.inference_mode():
        mu = model.encode(src.images, src.labels).mu  # (M, D)
    first_variant = methods.index("variant")
    assert sources[first_variant] == src.ids[0] and targets[first_variant] is None
    torch.testing.assert_close(z[first_variant], mu[0])  # temperature 0: the posterior mean
    first_interp = methods.index("interpolation")
    a, b = (int(v) for v in src.pairs[0])
    assert (sources[first_interp], targets[first_interp]) == (src.ids[a], src.ids[b])
    torch.testing.assert_close(z[first_interp], mu[a])
    torch.testing.assert_close(z[first_interp + job.interpolation_steps - 1], mu[b])


def test_shard_randomness_depends_on_seed_and_index_only():
    a = torch.randn(4, generator=shard_generator(7, 3))
    assert torch.equal(a, torch.randn(4, generator=shard_generator(7, 3)))
    assert not torch.equal(a, torch.randn(4, generator=shard_generator(7, 4)))
    assert not torch.equal(a, torch.randn(4, generator=shard_generator(8, 3)))
