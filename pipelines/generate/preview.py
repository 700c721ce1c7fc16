"""The preview grid written with every dataset: the first rows of each class, read back from the shards.

Cheap whatever the dataset's size: the shards' label counts say which files hold a class still
missing from the grid; of those only the `label` column and the row groups holding the chosen rows
are read (a few hundred KB for 10,000 rows of 8x8), and at most `per_row` images per class are
decoded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from fsspec import AbstractFileSystem

from pipelines.data.decode import decode_png
from pipelines.generate.shard import ShardStats
from pipelines.storage import join
from pipelines.visualize import labelled_rows, png_bytes

#: Images per row of the grid (and rows of an unconditional dataset's grid).
PER_ROW = 8
#: Classes shown at most (the first ones present, in label order).
MAX_CLASSES = 20
#: Images larger than this (either side, in pixels) are shrunk to it in the grid.
MAX_CELL = 64


def preview_png(
    fs: AbstractFileSystem,
    root: str,
    stats: Sequence[ShardStats],
    class_names: Sequence[str],
    conditional: bool,
    per_row: int = PER_ROW,
    max_classes: int = MAX_CLASSES,
) -> bytes:
    """PNG bytes of the grid: one row per class (its name on the left) of its first `per_row` rows,
    or for an unconditional dataset the first `per_row` x `per_row` rows.

    Args:
        fs: the dataset's filesystem.
        root: the dataset directory in `fs`'s notation (the shards are written and checked).
        stats: what the shards reported (paths, per-label row counts).
        class_names: names in label order.
        conditional: whether rows have labels.
        per_row: images per grid row.
        max_classes: grid rows of a conditional dataset at most.

    Returns:
        The PNG; a conditional grid is `110 + (per_row * (w + 2) + 2) * s` pixels wide and
        `n * (h + 4) * s` high for n classes shown and images (h, w) scaled by `s` (see
        `pipelines.visualize.labelled_rows`).

    Raises:
        ValueError: the shards hold no rows.
        OSError, pyarrow.ArrowException: a shard cannot be read (the caller reports it).
    """
    shards = sorted(stats, key=lambda s: s.index)
    if conditional:
        totals: dict[int, int] = {}
        for s in shards:
            for k, n in s.label_counts.items():
                totals[int(k)] = totals.get(int(k), 0) + n
        shown = sorted(k for k, n in totals.items() if n > 0)[:max_classes]
        picked = _first_of_classes(fs, root, shards, {k: per_row for k in shown})
        rows = [(_caption(class_names, k), _images(picked[k])) for k in shown if picked.get(k)]
        label_w = 110
    else:
        pngs = _first_rows(fs, root, shards, per_row * per_row)
        rows = [("", _images(pngs[i : i + per_row])) for i in range(0, len(pngs), per_row)]
        label_w = 0
    if not rows:
        raise ValueError("the shards hold no rows to preview")
    return png_bytes(labelled_rows(rows, per_row, label_w=label_w))


def _caption(class_names: Sequence[str], label: int) -> str:
    return str(class_names[label]) if label < len(class_names) else str(label)


def _images(pngs: list[bytes]) -> torch.Tensor:
    """Decoded PNGs -> (n, C, H, W) float32 in [0, 1], shrunk to fit `MAX_CELL`."""
    x = torch.stack([decode_png(b) for b in pngs])  # (n, C, H, W)
    h, w = x.shape[-2:]
    if max(h, w) > MAX_CELL:
        f = MAX_CELL / max(h, w)
        x = F.interpolate(x, size=(max(1, round(h * f)), max(1, round(w * f))), mode="area")
    return x


def _first_of_classes(
    fs: AbstractFileSystem, root: str, shards: Sequence[ShardStats], need: dict[int, int]
) -> dict[int, list[bytes]]:
    """Label -> PNG bytes of the first `need[label]` rows of that label, in row order."""
    out: dict[int, list[bytes]] = {k: [] for k in need}
    for s in shards:
        wanted = {k: need[k] - len(out[k]) for k in need if len(out[k]) < need[k] and s.label_counts.get(k)}
        if not wanted:
            continue
        with fs.open(join(root, s.path), "rb") as f:
            pf = pq.ParquetFile(f)
            labels = pf.read(columns=["label"]).column("label").to_numpy(zero_copy_only=False)  # (N,)
            chosen = np.sort(np.concatenate([np.flatnonzero(labels == k)[:n] for k, n in wanted.items()]))
            for idx, png in zip(chosen, _images_at(pf, chosen), strict=True):
                out[int(labels[idx])].append(png)
        if all(len(out[k]) >= need[k] for k in need):
            break
    return out


def _images_at(pf: pq.ParquetFile, rows: np.ndarray) -> list[bytes]:
    """PNG bytes of the given (sorted) rows of a shard, reading only the row groups that hold them."""
    sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)]
    starts = np.concatenate([[0], np.cumsum(sizes)])  # (G + 1,)
    groups = np.searchsorted(starts, rows, side="right") - 1  # (n,) row group of each row
    out: list[bytes] = []
    for g in np.unique(groups):
        table = pf.read_row_group(int(g), columns=["image"])
        local = rows[groups == g] - starts[g]
        out += [cell["bytes"] for cell in table.column("image").take(local).to_pylist()]
    return out


def _first_rows(fs: AbstractFileSystem, root: str, shards: Sequence[ShardStats], count: int) -> list[bytes]:
    """PNG bytes of the first `count` rows of the dataset."""
    out: list[bytes] = []
    for s in shards:
        with fs.open(join(root, s.path), "rb") as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=count, columns=["image"]):
                cells: list[dict[str, Any]] = batch.column("image").to_pylist()
                out += [c["bytes"] for c in cells[: count - len(out)]]
                if len(out) >= count:
                    return out
    return out


__all__ = ["MAX_CELL", "MAX_CLASSES", "PER_ROW", "preview_png"]
