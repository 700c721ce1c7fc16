"""The usefulness report of a synthetic dataset's files against the pipeline's real data.

Used by the generation job on its written (not yet committed) shards, so the report lands in the
manifest and the card of the commit, and by `vaeaug evaluate --dataset` on a committed dataset.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq
import torch
from fsspec import AbstractFileSystem
from PIL import Image

from pipelines.config import PipelineConfig, ReportConfig
from pipelines.data.imageset import ImageSet
from pipelines.usefulness.classifier import Pool, Recipe, SmallCNN, predict
from pipelines.usefulness.report import UsefulnessReport, usefulness_report
from pipelines.visualize import labelled_rows, png_bytes
from vae.config import VAEConfig
from vae.ranges import to_unit_range


def recipe_of(report: ReportConfig) -> Recipe:
    """The classifier recipe the `report` settings describe."""
    return Recipe(
        steps=report.steps,
        batch_size=report.batch_size,
        width=report.width,
        synthetic_share=report.synthetic_share,
    )


@dataclass
class RealSplits:
    """The real images as the report sees them: [0, 1] pools of the VAE's training and held-out split."""

    train: Pool
    heldout: Pool
    class_names: list[str]
    fingerprint: str


def real_splits(cfg: PipelineConfig, data: ImageSet, model_cfg: VAEConfig) -> RealSplits:
    """The training/held-out split the VAE used (`train.val_fraction`, `train.seed`), in [0, 1]."""
    train, heldout = data.split(cfg.train.val_fraction, seed=cfg.train.seed)

    def pool(part: ImageSet) -> Pool:
        return Pool(to_unit_range(part.images, model_cfg).contiguous(), part.labels.clone())

    return RealSplits(pool(train), pool(heldout), list(data.class_names), data.fingerprint())


def _decode(png: bytes) -> np.ndarray:
    arr = np.asarray(Image.open(io.BytesIO(png)))  # (H, W) or (H, W, C) uint8
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def read_sample(fs: AbstractFileSystem, paths: list[str], total: int, max_rows: int) -> Pool:
    """An even sample (every k-th row, k = ceil(total / max_rows)) of labelled rows of the files.

    Args:
        fs: their filesystem.
        paths: the Parquet files, in row order.
        total: rows in all of them.
        max_rows: at most this many rows are decoded.

    Returns:
        Images (n, C, H, W) in [0, 1] and their requested labels (unlabelled rows are skipped).
    """
    step = max(1, -(-total // max_rows))
    images, labels, offset = [], [], 0
    for path in paths:
        with fs.open(path, "rb") as f:
            table = pq.read_table(f, columns=["image", "label"])
        n = table.num_rows
        pick = np.arange((-offset) % step, n, step)
        offset += n
        lab = table.column("label").to_numpy(zero_copy_only=False)[pick]
        pngs = table.column("image").combine_chunks().field("bytes").take(pick).to_pylist()
        for png, y in zip(pngs, lab, strict=True):
            if y is not None and not (isinstance(y, float) and np.isnan(y)):
                images.append(_decode(png))
                labels.append(int(y))
    if not images:
        raise ValueError("the synthetic files hold no labelled rows")
    x = torch.from_numpy(np.stack(images)).float().div_(255.0)  # (n, C, H, W)
    return Pool(x, torch.tensor(labels, dtype=torch.int64))


def report_for_files(
    report: ReportConfig,
    real: RealSplits,
    fs: AbstractFileSystem,
    paths: list[str],
    total: int,
    judge: SmallCNN,
) -> tuple[UsefulnessReport, Pool]:
    """The usefulness report of the synthetic rows in `paths` (and the sample it was measured on)."""
    synthetic = read_sample(fs, paths, total, report.max_synthetic)
    flip = report.flip if report.flip is not None else synthetic.images.shape[1] == 3
    result = usefulness_report(
        real.train,
        real.heldout,
        synthetic,
        real.class_names,
        recipe=recipe_of(report),
        seeds=report.seeds,
        flip=flip,
        judge=judge,
    )
    return result, synthetic


def usefulness_picture(result: UsefulnessReport, synthetic: Pool, judge: SmallCNN, real: RealSplits) -> bytes:
    """PNG: per class, a row of synthetic images (judge-agreed first) and a row of real held-out ones."""
    probs, _ = predict(judge, synthetic.images)
    agree = probs.argmax(dim=1) == synthetic.labels
    rows: list[tuple[str, torch.Tensor]] = []
    per_row = 10
    for k, name in enumerate(real.class_names):
        mine = torch.nonzero(synthetic.labels == k).squeeze(1)
        mine = mine[torch.argsort((~agree[mine]).int(), stable=True)][:per_row]
        fid = result.fidelity_per_class.get(name)
        if len(mine):
            caption = f"{name[:9]} synth {fid:.2f}" if fid is not None else f"{name[:9]} synth"
            rows.append((caption, synthetic.images[mine]))
        held = torch.nonzero(real.heldout.labels == k).squeeze(1)[:per_row]
        if len(held):
            rows.append((f"{name[:9]} real", real.heldout.images[held]))
    return png_bytes(labelled_rows(rows, per_row, label_w=130))


__all__ = [
    "RealSplits",
    "read_sample",
    "real_splits",
    "recipe_of",
    "report_for_files",
    "usefulness_picture",
]
