"""The order in which each training rank sees the images: one pure function for both data paths.

Per data epoch e (seeded by (seed, e) alone, so a resumed run replays it exactly):
  1. the chunks (a folder's file, a Parquet row group; one image each for in-memory arrays) are
     permuted, and the permuted sequence is cut into `world` contiguous runs of about equal image
     counts, one per rank: disjoint shards that cover every image exactly once;
  2. within a rank, the images of its chunks (in chunk order) are shuffled within consecutive
     windows of `window` images, seeded by (seed, e, rank): a reader streaming chunk by chunk
     only needs to hold one window;
  3. every rank cuts its sequence into the same number of batches (DDP steps together), each at
     most the per-worker batch size where the shards allow it.

In memory, the worker indexes its arrays with the result; streaming, it reads the chunks in order
and applies the same window shuffle and cuts, so both paths train on the same batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Bytes of decoded images a shuffle window holds at most (and never fewer than 4 batches).
WINDOW_BYTES = 64_000_000
#: Images a shuffle window holds at most.
MAX_WINDOW = 4096


@dataclass
class RankPlan:
    """One rank's share of one data epoch.

    Attributes:
        chunks: (k, 2) its chunk runs in reading order: (position of the first image in the split's
            items, image count).
        perm: (n,) the training order as indices into the reading order; it only permutes within
            consecutive windows of `window` images, so a reader holds one window at a time.
        batches: images per batch; sums to n; the same count on every rank.
        window: the shuffle window.
    """

    chunks: np.ndarray
    perm: np.ndarray
    batches: list[int]
    window: int

    def reading(self) -> np.ndarray:
        """(n,) positions into the split's items in chunk order (what a streaming reader fetches)."""
        return _ranges(self.chunks[:, 0], self.chunks[:, 1])

    @property
    def order(self) -> np.ndarray:
        """(n,) positions into the split's items in training order."""
        return self.reading()[self.perm]


def shuffle_window(batch: int, image_bytes: int) -> int:
    """The shuffle window for a per-worker batch and image size (the same on both paths)."""
    return max(4 * batch, min(MAX_WINDOW, WINDOW_BYTES // max(1, image_bytes)))


def split_chunks(chunk_of: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first position, count) of each run of equal chunk ids in a non-decreasing `chunk_of`."""
    chunk_of = np.asarray(chunk_of)
    if not len(chunk_of):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.concatenate([[0], np.flatnonzero(np.diff(chunk_of)) + 1]).astype(np.int64)
    counts = np.diff(np.concatenate([starts, [len(chunk_of)]])).astype(np.int64)
    return starts, counts


def plan_epoch(
    chunk_of: np.ndarray, seed: int, data_epoch: int, rank: int, world: int, batch: int, window: int
) -> RankPlan:
    """This rank's images and batches for one data epoch (see the module docstring).

    Args:
        chunk_of: (n,) non-decreasing chunk id of each item of the split.
        seed: `train.seed`.
        data_epoch: 1-based pass number over the data (`(epoch - 1) * passes + p + 1`).
        rank: this worker's rank.
        world: number of workers.
        batch: per-worker batch size.
        window: shuffle window (`shuffle_window`).

    Returns:
        The `RankPlan`.

    Raises:
        ValueError: fewer non-empty chunks than workers (a rank would get no image).
    """
    starts, counts = split_chunks(chunk_of)
    if len(starts) < world:
        raise ValueError(
            f"{len(starts)} chunk(s) of images for {world} workers: every worker needs at least one "
            "(use fewer train.num_workers, or write the Parquet data with more row groups)"
        )
    perm = np.random.default_rng([int(seed), int(data_epoch)]).permutation(len(starts))
    owner = _owners(counts[perm], world)
    runs = [np.stack([starts[perm][owner == r], counts[perm][owner == r]], axis=1) for r in range(world)]
    sizes = [int(run[:, 1].sum()) for run in runs]
    mine = runs[rank]
    n = int(mine[:, 1].sum())
    keys = np.random.default_rng([int(seed), int(data_epoch), int(rank)]).random(n)
    perm = np.lexsort((keys, np.arange(n) // window))
    steps = max(1, min(min(sizes), -(-max(sizes) // batch)))
    return RankPlan(chunks=mine, perm=perm, batches=_cuts(n, steps), window=window)


def plan_eval(chunk_of: np.ndarray, rank: int, world: int, batch: int) -> RankPlan:
    """This rank's share of the held-out split for evaluation: whole chunks dealt in turn, no shuffle.

    Ranks may get different counts (evaluation has no per-batch collective); a rank may get none.
    """
    starts, counts = split_chunks(chunk_of)
    mine = np.stack([starts[rank::world], counts[rank::world]], axis=1).reshape(-1, 2)
    n = int(mine[:, 1].sum())
    cuts = [min(batch, n - i) for i in range(0, n, batch)]
    # Nothing is shuffled: a window of one batch lets a streaming reader hold one batch, not the shard.
    return RankPlan(chunks=mine, perm=np.arange(n), batches=cuts, window=max(1, batch))


def _owners(counts: np.ndarray, world: int) -> np.ndarray:
    """Rank of each chunk: the sequence cut into `world` contiguous runs of about equal image counts,
    each of at least one chunk (the caller checked there are at least `world`)."""
    k, total = len(counts), int(counts.sum())
    before = np.cumsum(counts) - counts  # images ahead of each chunk
    cuts = np.searchsorted(before * world, np.arange(1, world) * total, side="left")
    for r in range(world - 1):  # strictly increasing, leaving a chunk for every later rank
        low = cuts[r - 1] + 1 if r else 1
        cuts[r] = min(max(cuts[r], low), k - (world - 1 - r))
    return np.searchsorted(cuts, np.arange(k), side="right")


def _cuts(n: int, steps: int) -> list[int]:
    """`n` images in `steps` near-equal batches (the first `n % steps` one larger)."""
    base, extra = divmod(n, steps)
    return [base + (1 if i < extra else 0) for i in range(steps)]


def _ranges(first: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Concatenation of arange(first[i], first[i] + count[i]) for every i, vectorised."""
    total = int(np.sum(count))
    if not total:
        return np.zeros(0, np.int64)
    offsets = np.cumsum(count) - count
    return (np.repeat(np.asarray(first, np.int64) - offsets, count) + np.arange(total)).astype(np.int64)


__all__ = ["RankPlan", "plan_epoch", "plan_eval", "shuffle_window", "split_chunks"]
