"""A Ray Train worker's batches from a streamed source: Ray Data reads and decodes, the worker shuffles.

For one data epoch the worker knows its `RankPlan` (`pipelines.data.order`): which chunks, in which
order, and how the images are shuffled within windows and cut into batches. It hands the chunk runs
to Ray Data as read units (whole chunks, at least `UNIT_IMAGES` images each); Ray Data tasks fetch
and decode them in parallel, in order, a bounded number ahead (its streaming executor's backpressure
plus `PREFETCH_BLOCKS`); the worker holds one shuffle window, permutes it as the plan says and yields
the planned batches. So the worker's memory is bounded by the window and the prefetched blocks, and
the batches are exactly those the in-memory path would build for the same seed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from pipelines.data.order import RankPlan
from pipelines.errors import DataError, find_error
from pipelines.storage import first_line

#: Images per Ray Data read unit at least (whole chunks: a Parquet row group is never split).
UNIT_IMAGES = 256
#: Decoded blocks the worker asks Ray Data to keep ready.
PREFETCH_BLOCKS = 4

Batch = tuple[torch.Tensor, torch.Tensor]


def quiet_ray_data() -> None:
    """Ray Data in a training worker: ordered output, no progress bars, no per-execution INFO lines."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # the plan's order is the training order
    ctx.enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def read_units(chunks: np.ndarray) -> list[tuple[int, int]]:
    """Cut a plan's chunk runs into read units of whole chunks: (first, last) positions in reading order."""
    units, start, taken = [], 0, 0
    for count in chunks[:, 1].tolist():
        taken += count
        if taken - start >= UNIT_IMAGES:
            units.append((start, taken))
            start = taken
    if taken > start:
        units.append((start, taken))
    return units


class _Decode:
    """Ray Data task body: decode one read unit (the images at its reading positions) to the model's range."""

    def __init__(self, index: Any, seq: Any, model_cfg: Any):
        self.index, self.seq, self.model_cfg = index, seq, model_cfg

    def __call__(self, unit: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        import ray

        from vae.ranges import to_model_range

        index = ray.get(self.index) if isinstance(self.index, ray.ObjectRef) else self.index
        seq = ray.get(self.seq) if isinstance(self.seq, ray.ObjectRef) else self.seq
        for lo, hi in zip(unit["lo"].tolist(), unit["hi"].tolist(), strict=True):
            for items, images in index.read(seq[lo:hi]):
                x = to_model_range(torch.from_numpy(images), self.model_cfg).numpy()  # (n, C, H, W)
                yield {"image": x, "label": index.labels[items]}


def stream_batches(
    index: Any, items: np.ndarray, plans: RankPlan | list[RankPlan], model_cfg: Any, device: torch.device
) -> Iterator[Batch]:
    """The plans' batches, one plan after the other, read through one Ray Data execution.

    Args:
        index: the `SourceIndex` (or an ObjectRef of it).
        items: (n_split,) the split's image numbers; the plans' positions index into it.
        plans: this rank's plan, or its plans for the passes of one epoch (one execution, not one
            per pass: a small set takes many passes).
        model_cfg: the model's `VAEConfig` (its range).
        device: where the batches go.

    Returns:
        Iterator of (images (B, C, H, W), labels (B,)) on `device`, as each plan's `batches` say.

    Raises:
        DataError: a file could not be read or decoded (the loader's one-line message).
    """
    import ray
    import ray.data

    plans = plans if isinstance(plans, list) else [plans]
    seq = np.concatenate([items[plan.reading()] for plan in plans])  # image numbers in reading order
    units, offset = [], 0
    for plan in plans:  # a unit never spans two plans
        units += [(lo + offset, hi + offset) for lo, hi in read_units(plan.chunks)]
        offset += len(plan.perm)
    if not units:
        return
    ds = ray.data.from_items(
        [{"lo": lo, "hi": hi} for lo, hi in units], override_num_blocks=len(units)
    ).map_batches(_Decode(index, ray.put(seq), model_cfg), batch_size=1, batch_format="numpy")
    blocks = _arrays(ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=PREFETCH_BLOCKS))
    try:
        for plan in plans:
            yield from _shuffled(blocks, plan, device)
    except Exception as exc:  # a task's DataError arrives wrapped by Ray
        found = data_error_in(exc)
        if found is None:
            raise
        raise DataError(str(found)) from None


def _arrays(blocks: Iterator[dict[str, np.ndarray]]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for block in blocks:
        images = block["image"]
        if images.dtype == object:  # a ragged tensor column comes back as arrays of arrays
            images = np.stack(list(images))
        yield images, block["label"]


def _shuffled(
    blocks: Iterator[tuple[np.ndarray, np.ndarray]], plan: RankPlan, device: torch.device
) -> Iterator[Batch]:
    """Hold one window of decoded images, put it in the plan's order, and cut the plan's batches."""
    n, window = len(plan.perm), plan.window
    held_x: list[np.ndarray] = []  # decoded images from reading position `start` on
    held_y: list[np.ndarray] = []
    out_x: list[np.ndarray] = []  # shuffled images not yet batched
    out_y: list[np.ndarray] = []
    start, held, ready = 0, 0, 0
    sizes = iter(plan.batches)
    want = next(sizes, 0)
    for x, y in blocks if n else ():
        held_x.append(x)
        held_y.append(y)
        held += len(y)
        while start < n and held >= min(window, n - start):
            w = min(window, n - start)
            xs, ys = np.concatenate(held_x), np.concatenate(held_y)
            local = plan.perm[start : start + w] - start
            out_x.append(xs[local])
            out_y.append(ys[local])
            held_x, held_y, held = [xs[w:]], [ys[w:]], len(ys) - w
            start, ready = start + w, ready + w
        if want and ready >= want:
            bx, by = np.concatenate(out_x), np.concatenate(out_y)
            at = 0
            while want and ready - at >= want:
                yield _to(bx[at : at + want], by[at : at + want], device)
                at, want = at + want, next(sizes, 0)
            out_x, out_y, ready = [bx[at:]], [by[at:]], ready - at
        if start == n and not want:
            return  # the plan is done; the next plan's blocks stay in `blocks`
    if start != n or want:
        raise RuntimeError(f"the stream gave {start + held} of the plan's {n} images")


def _to(x: np.ndarray, y: np.ndarray, device: torch.device) -> Batch:
    return (
        torch.from_numpy(np.ascontiguousarray(x)).to(device, non_blocking=True),
        torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)).to(device, non_blocking=True),
    )


def data_error_in(exc: BaseException) -> DataError | None:
    """The `DataError` inside Ray's wrappers, as a one-line error (Ray may append a traceback), or None."""
    found = find_error(exc, DataError)
    return None if found is None else DataError(first_line(found))


__all__ = ["data_error_in", "quiet_ray_data", "read_units", "stream_batches"]
