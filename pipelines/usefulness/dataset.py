"""The usefulness report of a synthetic dataset's files against the pipeline's real data.

Used by the generation job on its written (not yet committed) shards, so the report lands in the
manifest and the card of the commit, and by `vaeaug evaluate --dataset` on a committed dataset.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from fsspec import AbstractFileSystem

from pipelines.config import PipelineConfig, ReportConfig
from pipelines.data.decode import decode_png
from pipelines.data.imageset import ImageSet
from pipelines.data.split import HeldOut
from pipelines.errors import DataError
from pipelines.storage import first_line
from pipelines.usefulness.classifier import Pool, Recipe, SmallCNN, predict
from pipelines.usefulness.judge import JudgeError, ensure_judge, read_judge_info
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


def real_splits(data: ImageSet, model_cfg: VAEConfig, val_fraction: float, seed: int) -> RealSplits:
    """The training/held-out split of `data` (as `ImageSet.split` makes it), in [0, 1].

    `fingerprint` identifies the training split itself (data, fraction and seed): the judge trained
    on it is reused only for the same split.
    """
    train, heldout = data.split(val_fraction, seed)

    def pool(part: ImageSet) -> Pool:
        return Pool(to_unit_range(part.images, model_cfg).contiguous(), part.labels.clone())

    key = json.dumps([data.fingerprint(), float(val_fraction), int(seed)]).encode()
    return RealSplits(pool(train), pool(heldout), list(data.class_names), hashlib.sha256(key).hexdigest())


@dataclass
class Judging:
    """What the report and curation of a job need: the real splits, the judge, or why there is none.

    Args:
        real: the real training/held-out split of the model.
        judge: the real-trained classifier (None: neither the report nor curation can run).
        judge_sha: the judge's weights sha256 when curating (it decides the rows), else None.
        note: why there is no usefulness report (None: the report can run).
    """

    real: RealSplits | None = None
    judge: SmallCNN | None = None
    judge_sha: str | None = None
    note: str | None = None


def prepare_judging(
    cfg: PipelineConfig, model: Any, model_dir: str, model_opts: dict[str, Any], meta: dict[str, Any],
    data: ImageSet | None, curate: bool,
) -> Judging:  # fmt: skip
    """Train (or reuse) the judge on the split the model trained on, when the report or curation needs it.

    Curation cannot run without the judge, so its problems raise; the report is a measurement, so
    its problems (no data, other data than the model's, a read-only model folder) become the `note`.

    Raises:
        DataError: curation without usable real data.
    """
    if not (curate or cfg.report.enabled):
        return Judging(note="usefulness report off (report.enabled=false)")
    if not model.cfg.conditional:
        return Judging(note="no usefulness report: the model is unconditional (no labels to judge)")
    problem = _data_problem(data, model, meta)
    if problem is not None:
        if curate:
            raise DataError(f"generate.curation_threshold needs the model's real data: {problem}")
        return Judging(note=f"no usefulness report: {problem}")
    assert data is not None
    real = real_splits(data, model.cfg, *HeldOut.of(cfg.train, meta))  # the split the model trained with
    note = None
    if len(real.heldout.images) < 2:
        note = "no usefulness report: the model's train.val_fraction left fewer than 2 held-out images"
    try:
        judge, _ = ensure_judge(
            model_dir, real.train, real.class_names, recipe_of(cfg.report), real.fingerprint, model_opts
        )
    except (OSError, JudgeError) as exc:
        if curate:
            raise
        return Judging(
            note=f"no usefulness report: cannot save the judge under {model_dir!r}: {first_line(exc)}"
        )
    info = read_judge_info(model_dir, model_opts) if curate else None
    return Judging(real=real, judge=judge, judge_sha=info.weights_sha256 if info else None, note=note)


def _data_problem(data: ImageSet | None, model: Any, meta: dict[str, Any]) -> str | None:
    """Why `data` cannot stand for the model's training data, or None."""
    if data is None:
        return "the real data could not be loaded (check data.source / data.path)"
    names = (meta.get("extra") or {}).get("class_names")
    if names is not None and list(names) != list(data.class_names):
        return f"the real data's classes {data.class_names[:5]} differ from the model's {list(names)[:5]}"
    recorded = (meta.get("extra") or {}).get("data_fingerprint")
    if recorded and recorded != data.fingerprint():
        return "the real data is not the data the model was trained on (its fingerprint differs)"
    if tuple(data.image_shape) != tuple(model.cfg.image_shape):
        return f"the real images are {tuple(data.image_shape)}, the model makes {model.cfg.image_shape}"
    return None


def read_sample(fs: AbstractFileSystem, paths: list[str], total: int, max_rows: int) -> Pool:
    """A seeded uniform sample of at most `max_rows` labelled rows of the files (all rows if fewer).

    Random rather than every k-th row: labels cycle through the classes row by row, so a stride
    sharing a factor with the number of classes would see only some of them. Only the row groups
    that hold sampled rows are read, so a large dataset costs its sample, not its size.

    Args:
        fs: their filesystem.
        paths: the Parquet files, in row order.
        total: rows in all of them.
        max_rows: at most this many rows are decoded.

    Returns:
        Images (n, C, H, W) in [0, 1] and their requested labels (unlabelled rows are skipped).
    """
    chosen = np.arange(total)
    if total > max_rows:
        chosen = np.sort(np.random.default_rng(0).choice(total, size=max_rows, replace=False))
    pngs: list[bytes] = []
    labels: list[int] = []
    offset = 0  # global row number of the current row group's first row
    for path in paths:
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            for group in range(pf.num_row_groups):
                n = pf.metadata.row_group(group).num_rows
                lo, hi = np.searchsorted(chosen, [offset, offset + n])
                pick = chosen[lo:hi] - offset
                offset += n
                if len(pick):
                    _take(pf.read_row_group(group, columns=["image", "label"]), pick, pngs, labels)
    if not pngs:
        raise ValueError("the synthetic files hold no labelled rows")
    return Pool(torch.stack([decode_png(p) for p in pngs]), torch.tensor(labels, dtype=torch.int64))


def _take(table: Any, pick: np.ndarray, pngs: list[bytes], labels: list[int]) -> None:
    """Append the labelled rows `pick` of a row group's table."""
    lab = table.column("label").take(pick).to_pylist()
    images = table.column("image").combine_chunks().field("bytes").take(pick).to_pylist()
    for png, y in zip(images, lab, strict=True):
        if y is not None:
            pngs.append(png)
            labels.append(int(y))


def report_for_files(
    report: ReportConfig,
    real: RealSplits,
    fs: AbstractFileSystem,
    paths: list[str],
    total: int,
    judge: SmallCNN,
    curated: bool = False,
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
        curated=curated,
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
    "Judging",
    "RealSplits",
    "prepare_judging",
    "read_sample",
    "real_splits",
    "recipe_of",
    "report_for_files",
    "usefulness_picture",
]
