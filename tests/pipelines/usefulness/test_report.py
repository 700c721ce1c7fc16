"""The usefulness figures on cases with a known answer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipelines.usefulness.classifier import Pool, train_classifier
from pipelines.usefulness.metrics import frechet_distance, label_fidelity
from pipelines.usefulness.report import UsefulnessReport, usefulness_report
from tests.pipelines.usefulness.conftest import QUICK

NAMES = [str(k) for k in range(10)]


@pytest.fixture(scope="module")
def real_as_synthetic(digit_pools) -> UsefulnessReport:
    """The real training set itself scored as the "synthetic" set."""
    p = digit_pools
    return usefulness_report(p["train"], p["heldout"], p["train"], NAMES, recipe=QUICK, seeds=2)


def test_real_training_set_as_synthetic_gives_cas_and_frechet_ratio_one(real_as_synthetic):
    r = real_as_synthetic
    assert r.cas == pytest.approx(
        1.0, abs=0.03
    )  # the same recipe on the same images (seed 0 vs the seeds mean)
    assert r.frechet_ratio == pytest.approx(1.0, abs=1e-9)
    assert r.label_fidelity > 0.9  # the judge knows its own training images
    assert r.mean("real") > 0.85


def test_other_real_images_as_synthetic_score_like_real_data(digit_pools):
    p = digit_pools
    r = usefulness_report(p["train"], p["heldout"], p["other"], NAMES, recipe=QUICK, seeds=1)
    assert 0.9 <= r.cas <= 1.1
    assert 0.5 <= r.frechet_ratio <= 2.0
    assert r.label_fidelity > 0.85


def test_noise_images_get_label_fidelity_one_in_k(digit_pools):
    p = digit_pools
    judge = train_classifier(p["train"], None, 10, QUICK, seed=0)
    gen = torch.Generator().manual_seed(1)
    noise = Pool(torch.rand((2000, 1, 8, 8), generator=gen), torch.arange(2000) % 10)
    fid = label_fidelity(judge, noise)
    assert fid.overall == pytest.approx(0.1, abs=0.03)
    assert set(fid.per_class) == set(range(10))


def test_noise_as_synthetic_is_reported_as_hurting(digit_pools):
    p = digit_pools
    gen = torch.Generator().manual_seed(2)
    noise = Pool(torch.rand((1000, 1, 8, 8), generator=gen), torch.arange(1000) % 10)
    r = usefulness_report(p["train"], p["heldout"], noise, NAMES, recipe=QUICK, seeds=2)
    assert r.cas < 0.3
    assert r.frechet_ratio > 5
    if r.verdict == "hurts":
        assert r.headline().startswith("WARNING")


def test_frechet_distance_of_gaussians_matches_the_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(0.0, 1.0, size=(20000, 3))
    b = rng.normal(2.0, 2.0, size=(20000, 3))
    # ||mu_a - mu_b||^2 + tr(I + 4I - 2 * 2I) = 3 * 4 + 3 * (1 + 4 - 4) = 15
    assert frechet_distance(a, b) == pytest.approx(15.0, rel=0.05)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_verdict_and_headline_say_plainly_when_the_set_hurts():
    base = dict(
        class_names=NAMES, label_fidelity=0.4, fidelity_per_class={}, confidence=0.5, cas=0.6,
        frechet=3.0, frechet_floor=1.0, images={"train": 1000, "heldout": 10000, "synthetic": 1000},
        recipe={"steps": 10}, seeds=2,
    )  # fmt: skip
    acc = {"real": [0.83, 0.83], "real+classic": [0.82, 0.84], "real+synth": [0.80, 0.81], "synth": [0.5]}
    hurt = UsefulnessReport(**base, accuracy={**acc, "real+synth+classic": [0.80, 0.80]}, gain=-0.025)
    assert hurt.verdict == "hurts"
    assert "HURTS" in hurt.headline() and hurt.headline().startswith("WARNING")
    helps = UsefulnessReport(**base, accuracy={**acc, "real+synth+classic": [0.88, 0.88]}, gain=0.05)
    assert helps.verdict == "helps" and "HELPS" in helps.headline()
    same = UsefulnessReport(**base, accuracy={**acc, "real+synth+classic": [0.834, 0.834]}, gain=0.004)
    assert same.verdict == "neutral"
    few = UsefulnessReport(**{**base, "images": {"train": 100, "heldout": 12, "synthetic": 100}},
                           accuracy={**acc, "real+synth+classic": [0.7, 0.7]}, gain=-0.13)  # fmt: skip
    assert few.verdict == "inconclusive" and few.headline().startswith("INCONCLUSIVE")


def test_noise_grows_with_a_small_held_out_set():
    acc = {c: [0.8, 0.8] for c in ("real", "real+classic", "real+synth", "real+synth+classic")}
    kw = dict(class_names=NAMES, label_fidelity=1.0, fidelity_per_class={}, confidence=1.0, cas=1.0,
              accuracy={**acc, "synth": [0.8]}, gain=0.02, frechet=1.0, frechet_floor=1.0,
              recipe={"steps": 1}, seeds=2)  # fmt: skip
    big = UsefulnessReport(**kw, images={"train": 1, "heldout": 10000, "synthetic": 1})
    small = UsefulnessReport(**kw, images={"train": 1, "heldout": 100, "synthetic": 1})
    assert big.verdict == "helps"  # 2 points against a 0.4-point standard error
    assert small.verdict == "neutral"  # the same 2 points are within 4 points of noise


def test_report_round_trips_through_its_dict(real_as_synthetic):
    d = real_as_synthetic.to_dict()
    back = UsefulnessReport.from_dict(d)
    assert back == real_as_synthetic
    assert d["verdict"] in ("helps", "hurts", "neutral", "inconclusive") and not math.isnan(
        d["frechet_ratio"]
    )
    assert len(d["accuracy"]["real"]) == 2 and len(d["accuracy"]["synth"]) == 1


def test_the_sample_read_back_covers_every_class_whatever_the_stride(tmp_path):
    """Labels cycle 0..K-1 row by row: a sample must not alias with that cycle (e.g. only even classes)."""
    import fsspec
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from pipelines.usefulness.dataset import read_sample

    def png(value: int) -> bytes:
        import io

        buf = io.BytesIO()
        Image.new("L", (8, 8), value).save(buf, format="PNG")
        return buf.getvalue()

    rows = 340
    images = pa.StructArray.from_arrays(
        [pa.array([png(i % 10) for i in range(rows)]), pa.array([f"{i}.png" for i in range(rows)])],
        names=["bytes", "path"],
    )
    labels = pa.array([i % 10 for i in range(rows)], pa.int64())
    pq.write_table(pa.table({"image": images, "label": labels}), tmp_path / "a.parquet", row_group_size=64)
    sample = read_sample(fsspec.filesystem("file"), [str(tmp_path / "a.parquet")], rows, max_rows=170)
    assert len(sample) == 170
    assert set(sample.labels.tolist()) == set(range(10))
    assert torch.allclose(
        sample.images[:, 0, 0, 0] * 255, sample.labels.float()
    )  # image and label stay paired
    again = read_sample(fsspec.filesystem("file"), [str(tmp_path / "a.parquet")], rows, max_rows=170)
    assert torch.equal(again.images, sample.images)  # seeded
