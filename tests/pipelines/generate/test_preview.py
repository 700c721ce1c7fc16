"""The preview grid (`preview.png`) written with every dataset, shown in its card."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

import pipelines.generate.driver as driver_module
from pipelines.data.decode import decode_png
from pipelines.generate import generate
from pipelines.readers import open_dataset
from tests.pipelines.generate.helpers import make_cfg

SCALE, PAD, LABEL_W = 6, 2, 110  # 8x8 images are drawn 6x (pipelines.visualize.labelled_rows)
ROW_H = (8 + 2 * PAD) * SCALE  # 72 px per grid row
FULL_W = (8 * (8 + PAD) + PAD) * SCALE  # 8 images: 492 px


def _run(out, model, **gen):
    return generate(make_cfg(str(out), **gen), model_dir=model, progress=False, use_ray=False)


def _first_rows(root, label: int, count: int) -> list[np.ndarray]:
    """The first `count` images of `label` in row order, as uint8 (H, W)."""
    manifest = open_dataset(str(root))
    out: list[np.ndarray] = []
    for path in manifest.files:
        table = pq.read_table(path, columns=["image", "label"])
        for cell, y in zip(table.column("image").to_pylist(), table.column("label").to_pylist(), strict=True):
            if y == label and len(out) < count:
                out.append((decode_png(cell["bytes"])[0].numpy() * 255).round().astype(np.uint8))
    return out


def test_preview_has_a_row_per_class_of_its_first_rows(tmp_path, cond_model):
    out = tmp_path / "ds"
    # 2 classes over 4 shards of 4 rows: class "7" starts in the 2nd shard, in its 2nd row.
    res = _run(out, cond_model, num_samples=0, per_class={"3": 5, "7": 9}, shard_size=4)
    grid = Image.open(out / "preview.png").convert("L")
    assert grid.size == (LABEL_W + FULL_W, 2 * ROW_H)
    pixels = np.asarray(grid)  # (H, W)
    for row, label in enumerate((3, 7)):
        for j, image in enumerate(_first_rows(out, label, 8 if label == 7 else 5)):
            top, left = row * ROW_H + PAD * SCALE, LABEL_W + (PAD + j * (8 + PAD)) * SCALE
            tile = pixels[top : top + 8 * SCALE : SCALE, left : left + 8 * SCALE : SCALE]  # (8, 8)
            np.testing.assert_array_equal(tile, image)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["preview"] == "preview.png" and res.preview_path == f"{out}/preview.png"
    card = (out / "README.md").read_text()
    assert "## Preview\n\n![the first rows of each class](preview.png)" in card
    assert card.index("## Preview") < card.index("## Rows") < card.index("## Usefulness")
    assert (out / "preview.png").stat().st_mtime_ns <= (out / "_SUCCESS").stat().st_mtime_ns


def test_ten_classes_give_ten_rows(tmp_path, cond_model):
    _run(tmp_path / "ds", cond_model, num_samples=100)  # prior rows cycle through the 10 classes
    assert Image.open(tmp_path / "ds" / "preview.png").size == (LABEL_W + FULL_W, 10 * ROW_H)


def test_unconditional_preview_is_an_8x8_grid(tmp_path, uncond_model):
    _run(tmp_path / "ds", uncond_model, num_samples=100)
    assert Image.open(tmp_path / "ds" / "preview.png").size == (FULL_W, 8 * ROW_H)


def test_a_failed_preview_does_not_cost_the_dataset(tmp_path, cond_model, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk hiccup")

    monkeypatch.setattr(driver_module, "preview_png", broken)
    res = _run(tmp_path / "ds", cond_model, num_samples=20)
    assert res.preview_path is None and open_dataset(str(tmp_path / "ds")).rows == 20
    assert not (tmp_path / "ds" / "preview.png").exists()
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert manifest["preview"] == {"skipped": "the preview grid failed: disk hiccup"}
    assert (
        "## Preview\n\nNot drawn: the preview grid failed: disk hiccup."
        in (tmp_path / "ds" / "README.md").read_text()
    )


def test_overwrite_replaces_the_preview(tmp_path, cond_model):
    _run(tmp_path / "ds", cond_model, num_samples=100)
    _run(tmp_path / "ds", cond_model, num_samples=0, per_class={"1": 3}, if_exists="overwrite")
    assert not (tmp_path / "ds" / "preview.png").exists()  # the old one went with the old dataset
    assert Image.open(tmp_path / "ds" / "v1" / "preview.png").size == (
        LABEL_W + (3 * (8 + PAD) + PAD) * SCALE,
        ROW_H,
    )
