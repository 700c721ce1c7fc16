"""The committed files load unchanged with Hugging Face `datasets`, Ray Data, pandas and pyarrow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from pipelines.generate import generate
from pipelines.readers import open_dataset
from tests.pipelines.generate.helpers import CLASS_NAMES, MIXED, make_cfg

ROWS = 40 + 12 + 2 * 6 + 3 * 4


@pytest.fixture(scope="module")
def committed(cond_model, uncond_model, tmp_path_factory) -> dict[str, Path]:
    """A mixed conditional dataset and a prior-only unconditional one (written in-process)."""
    root = tmp_path_factory.mktemp("formats")
    generate(make_cfg(str(root / "cond"), **MIXED), model_dir=cond_model, progress=False, use_ray=False)
    generate(
        make_cfg(str(root / "uncond"), num_samples=20), model_dir=uncond_model, progress=False, use_ray=False
    )
    return {"cond": root / "cond", "uncond": root / "uncond"}


def test_hf_datasets_gives_pil_images_fixed_latents_and_class_names(committed, tmp_path):
    datasets = pytest.importorskip("datasets")
    files = open_dataset(str(committed["cond"])).files
    ds = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path))
    assert len(ds) == ROWS
    assert isinstance(ds.features["image"], datasets.Image)
    assert ds.features["latent"] == datasets.List(datasets.Value("float32"), length=4)
    assert ds.features["label"].names == CLASS_NAMES
    row = ds[0]
    assert row["image"].size == (8, 8) and row["image"].mode == "L"
    assert len(row["latent"]) == 4 and row["method"] == "prior"
    with_np = ds.with_format("numpy")[:5]
    assert with_np["latent"].shape == (5, 4)


def test_hf_datasets_reads_the_directory_through_its_card(committed, tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset(str(committed["cond"]), split="train", cache_dir=str(tmp_path))
    assert len(ds) == ROWS and isinstance(ds.features["image"], datasets.Image)


def test_hf_datasets_unconditional_labels_are_null(committed, tmp_path):
    datasets = pytest.importorskip("datasets")
    files = open_dataset(str(committed["uncond"])).files
    ds = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path))
    assert ds["label"] == [None] * 20 and ds.features["label"].names == CLASS_NAMES


def test_ray_data_reads_the_files(ray_session, committed):
    import ray

    ds = ray.data.read_parquet(open_dataset(str(committed["cond"])).files)
    assert ds.count() == ROWS
    batch = ds.take_batch(8, batch_format="numpy")
    assert np.stack(batch["latent"]).shape == (8, 4)
    assert batch["image"][0]["bytes"][:4] == b"\x89PNG"


def test_pandas_and_pyarrow_read_the_files(committed):
    data = committed["cond"] / "data"
    df = pd.read_parquet(data)
    assert len(df) == ROWS and df["sample_id"].is_unique
    assert df["image"].iloc[0]["bytes"][:4] == b"\x89PNG"
    table = pq.read_table(data)
    assert table.schema.field("latent").type.list_size == 4
    assert b"huggingface" in table.schema.metadata and b"vaeaug" in table.schema.metadata
    assert pads.dataset(str(data), format="parquet").count_rows() == ROWS
