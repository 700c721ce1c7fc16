"""`plan_epoch` / `plan_eval`: the per-rank training order both data paths follow (pure numpy).

Properties checked over several chunk layouts (one image per chunk as in memory, uneven Parquet-like
row groups, a training split's gaps) and 1 to 3 ranks: disjoint shards that cover every image exactly
once, whole chunks per rank, the same number of batches on every rank, a pure function of (seed,
epoch), and a shuffle that stays inside its window.
"""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.data.order import RankPlan, plan_epoch, plan_eval, shuffle_window, split_chunks

BATCH, WINDOW = 8, 32


def _groups(counts: list[int]) -> np.ndarray:
    """chunk_of of consecutive chunks with these image counts."""
    return np.repeat(np.arange(len(counts)), counts).astype(np.int64)


def _split_of_groups() -> np.ndarray:
    """chunk_of of a training split of row groups: chunk ids with gaps, some groups thinned."""
    chunk_of = _groups([64, 64, 64, 17, 64, 5, 64, 30, 64, 64])
    keep = np.random.default_rng(0).random(len(chunk_of)) > 0.1
    keep[chunk_of == 5] = False  # a whole row group held out
    return chunk_of[keep]


LAYOUTS = {
    "one-image-per-chunk": np.arange(103, dtype=np.int64),
    "parquet-like": _groups([64, 64, 64, 17, 64, 5, 64, 30]),
    "uneven": _groups(np.random.default_rng(1).integers(1, 50, size=20).tolist()),
    "split-with-gaps": _split_of_groups(),
}


def _plans(chunk_of: np.ndarray, world: int, seed: int = 0, epoch: int = 1) -> list[RankPlan]:
    return [plan_epoch(chunk_of, seed, epoch, rank, world, BATCH, WINDOW) for rank in range(world)]


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_ranks_cover_every_image_once_in_whole_chunks(layout: str, world: int) -> None:
    chunk_of = LAYOUTS[layout]
    for epoch in (1, 2, 3):
        plans = _plans(chunk_of, world, epoch=epoch)
        orders = [p.order for p in plans]
        flat = np.concatenate(orders)
        assert np.array_equal(np.sort(flat), np.arange(len(chunk_of)))  # disjoint, exactly once
        for plan in plans:
            assert len(plan.chunks) >= 1
            assert np.array_equal(np.sort(plan.order), np.sort(plan.reading()))
            # A chunk is never split between ranks: a rank holds all of each chunk it touches.
            mine = np.unique(chunk_of[plan.order])
            assert np.isin(chunk_of, mine).sum() == len(plan.order)
        # DDP steps together: the same number of batches everywhere, each rank's sizes sum to its shard.
        assert len({len(p.batches) for p in plans}) == 1
        for plan in plans:
            assert sum(plan.batches) == len(plan.order) and min(plan.batches) >= 1
            assert max(plan.batches) <= BATCH


@pytest.mark.parametrize("world", [2, 3])
def test_one_image_per_chunk_shards_are_balanced(world: int) -> None:
    sizes = [len(p.order) for p in _plans(LAYOUTS["one-image-per-chunk"], world)]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_the_plan_is_a_function_of_seed_and_epoch(layout: str) -> None:
    chunk_of, world = LAYOUTS[layout], 2
    first = _plans(chunk_of, world, seed=5, epoch=2)
    again = _plans(chunk_of, world, seed=5, epoch=2)
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(a.order, b.order) and a.batches == b.batches
        assert np.array_equal(a.chunks, b.chunks)
    for other in (_plans(chunk_of, world, seed=5, epoch=3), _plans(chunk_of, world, seed=6, epoch=2)):
        assert not np.array_equal(
            np.concatenate([p.order for p in first]), np.concatenate([p.order for p in other])
        )
    # Each rank's shuffle is its own: ranks do not share a permutation pattern.
    assert not np.array_equal(first[0].perm[:8], first[1].perm[:8])


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_the_shuffle_stays_inside_its_window(layout: str) -> None:
    for plan in _plans(LAYOUTS[layout], 2, epoch=4):
        reading, order = plan.reading(), plan.order
        assert plan.window == WINDOW
        assert not np.array_equal(order, reading)  # shuffled...
        for start in range(0, len(order), WINDOW):  # ...but only within each window
            part = slice(start, start + WINDOW)
            assert set(order[part].tolist()) == set(reading[part].tolist())


def test_reading_follows_the_chunks_in_plan_order() -> None:
    chunk_of = LAYOUTS["parquet-like"]
    plan = plan_epoch(chunk_of, 0, 1, 0, 2, BATCH, WINDOW)
    starts, counts = split_chunks(chunk_of)
    expected = np.concatenate([np.arange(s, s + c) for s, c in plan.chunks.tolist()])
    assert np.array_equal(plan.reading(), expected)
    for s, c in plan.chunks.tolist():  # each run is one whole chunk
        assert (s, c) in set(zip(starts.tolist(), counts.tolist(), strict=True))


def test_too_few_chunks_for_the_workers_is_a_value_error() -> None:
    chunk_of = _groups([100, 100])
    plan_epoch(chunk_of, 0, 1, 1, 2, BATCH, WINDOW)  # one chunk per rank is enough
    with pytest.raises(ValueError, match=r"2 chunk\(s\) of images for 3 workers.*train.num_workers"):
        plan_epoch(chunk_of, 0, 1, 0, 3, BATCH, WINDOW)


def test_tiny_shards_still_step_together() -> None:
    """Shards smaller than a batch: one batch each, of the whole shard (no rank waits for another)."""
    plans = _plans(_groups([3, 2, 5]), 3)
    assert [p.batches for p in plans] == [[len(p.order)] for p in plans]


@pytest.mark.parametrize("world", [1, 2, 3, 5])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_eval_plan_covers_the_split_once_in_reading_order(layout: str, world: int) -> None:
    chunk_of = LAYOUTS[layout]
    plans = [plan_eval(chunk_of, rank, world, BATCH) for rank in range(world)]
    flat = np.concatenate([p.order for p in plans])
    assert np.array_equal(np.sort(flat), np.arange(len(chunk_of)))
    for plan in plans:
        assert np.array_equal(plan.order, plan.reading())  # no shuffle
        assert sum(plan.batches) == len(plan.order)
        assert all(1 <= b <= BATCH for b in plan.batches)
        assert plan.window <= BATCH  # a streaming reader holds one batch of the held-out shard, not all


def test_eval_plan_may_leave_a_rank_without_images() -> None:
    plans = [plan_eval(_groups([4, 4]), rank, 3, BATCH) for rank in range(3)]
    assert [len(p.order) for p in plans] == [4, 4, 0] and plans[2].batches == []


def test_shuffle_window_is_bounded_by_bytes_and_batches() -> None:
    assert shuffle_window(32, 4 * 8 * 8) == 4096  # tiny images: the image cap
    assert shuffle_window(16, 4 * 3 * 256 * 256) == 81  # 64 MB of 786 kB images
    assert shuffle_window(64, 4 * 3 * 256 * 256) == 256  # never fewer than 4 batches
