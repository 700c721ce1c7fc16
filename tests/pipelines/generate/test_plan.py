"""The job -> shard specs plan: coverage, determinism and validation."""

from __future__ import annotations

import pytest

from pipelines.config import GenerateConfig
from pipelines.errors import DataError, ModelError, PipelineError
from pipelines.generate.plan import make_plan, source_images, validate_request
from tests.pipelines.generate.helpers import CLASS_NAMES, MIXED, TINY, digits
from vae.config import ConfigError, VAEConfig

COND = VAEConfig(**TINY, num_classes=10)
UNCOND = VAEConfig(**TINY)


def test_shards_cover_rows_once_and_respect_shard_size(cond_model):
    data = digits(cond_model)
    plan = make_plan(GenerateConfig(**MIXED, shard_size=7), COND, CLASS_NAMES, data)
    assert plan.total_rows == 40 + 12 + 2 * 6 + 3 * 4
    assert all(0 < s.rows <= 7 for s in plan.shards)
    assert [s.index for s in plan.shards] == list(range(len(plan.shards)))
    starts = [s.start for s in plan.shards]
    assert starts == [sum(s.rows for s in plan.shards[:i]) for i in range(len(plan.shards))]
    per_method: dict[str, int] = {}
    for s in plan.shards:
        for p in s.pieces:
            per_method[p.method] = per_method.get(p.method, 0) + p.count
    assert per_method == {"prior": 40, "class": 12, "variant": 12, "interpolation": 12}
    spanning = [s for s in plan.shards if len({p.method for p in s.pieces}) > 1]
    assert spanning, "a shard spans segments when they do not align with shard boundaries"


def test_plan_is_deterministic_and_seeded(cond_model):
    data = digits(cond_model)
    a = make_plan(GenerateConfig(**MIXED, seed=3), COND, CLASS_NAMES, data)
    b = make_plan(GenerateConfig(**MIXED, seed=3), COND, CLASS_NAMES, data)
    c = make_plan(GenerateConfig(**MIXED, seed=4), COND, CLASS_NAMES, data)
    assert a.shards == b.shards and (a.pairs == b.pairs).all()
    assert not (a.pairs == c.pairs).all()


def test_interpolation_pairs_are_distinct_images_of_one_class(cond_model):
    data = digits(cond_model)
    plan = make_plan(GenerateConfig(num_samples=0, interpolations=50), COND, CLASS_NAMES, data)
    src = source_images(plan, data)
    a, b = src.pairs[:, 0], src.pairs[:, 1]
    assert (a != b).all()
    assert (src.labels[a] == src.labels[b]).all()
    assert len(src.ids) == len(set(plan.source_indices)) == src.images.shape[0]


def test_per_class_expectation_counts_prior_cycle_and_classes():
    plan = make_plan(GenerateConfig(num_samples=23, per_class={"4": 5}), COND, CLASS_NAMES)
    expected = plan.expected_per_class()
    assert sum(expected.values()) == 28
    assert expected[4] == 2 + 5 and expected[0] == 3 and expected[9] == 2


@pytest.mark.parametrize("kwargs", [{"num_samples": 0}, {"num_samples": 0, "per_class": {"3": 0}}])
def test_nothing_to_generate(kwargs):
    with pytest.raises(PipelineError, match="nothing to generate: set generate.num_samples > 0"):
        validate_request(GenerateConfig(**kwargs), COND, CLASS_NAMES)
    with pytest.raises(PipelineError, match="nothing to generate"):
        make_plan(GenerateConfig(**kwargs), COND, CLASS_NAMES)


def test_unknown_class_lists_valid_ones():
    with pytest.raises(PipelineError, match=r"unknown class\(es\) \['cat'\].*\['0', '1'"):
        make_plan(GenerateConfig(per_class={"cat": 3}), COND, CLASS_NAMES)


def test_per_class_on_unconditional_model():
    with pytest.raises(ModelError, match="needs a class-conditional model"):
        validate_request(GenerateConfig(per_class={"3": 3}), UNCOND, CLASS_NAMES)


def test_variants_need_data():
    with pytest.raises(DataError, match="need real images"):
        make_plan(GenerateConfig(variants_per_image=2), COND, CLASS_NAMES, None)


def test_data_of_another_shape_is_refused(cond_model):
    data = digits(cond_model)
    other = VAEConfig(**{**TINY, "image_size": (16, 16)}, num_classes=10)
    with pytest.raises(DataError, match="the model makes"):
        make_plan(GenerateConfig(variants_per_image=1), other, CLASS_NAMES, data)


# ------------------------------------------------------------------------------ size limits
def test_an_absurd_row_count_is_refused_with_the_config_in_seconds(tmp_path, capsys):
    """The probe's `generate.num_samples=10**13` (a MemoryError after 55 s): refused as a setting."""
    import time

    from pipelines.cli import main

    start = time.perf_counter()
    code = main(["generate", "generate.num_samples=10000000000000", f"output_dir={tmp_path / 'job'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "generate.num_samples=10000000000000: must be in 0..1_000_000_000" in err
    assert time.perf_counter() - start < 20 and not (tmp_path / "job").exists()


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"num_samples": 10**9, "per_class": {"3": 1}}, "1_000_000_001 rows"),
        ({"num_samples": 0, "interpolations": 10**8, "interpolation_steps": 100}, "10_000_000_000 rows"),
        ({"per_class": {"3": 10**10}}, "generate.per_class.3"),
        ({"shard_size": 10**7}, "generate.shard_size"),
        ({"batch_size": 10**6}, "generate.batch_size"),
    ],
)
def test_generate_settings_beyond_the_limits(settings, words):
    with pytest.raises(ConfigError, match=words) as info:
        GenerateConfig(**settings)
    assert "\n" not in str(info.value)


def test_rows_that_only_the_data_reveals_are_checked_before_allocation(cond_model):
    """60 images x 10**8 variants: counted from the data's size, refused before shards or pairs exist."""
    data = digits(cond_model)
    with pytest.raises(ConfigError, match=r"asks for 6_000_000_000 rows, more than the 1_000_000_000"):
        make_plan(GenerateConfig(num_samples=0, variants_per_image=10**8), COND, CLASS_NAMES, data)


@pytest.mark.parametrize(
    ("settings", "model", "words"),
    [
        (
            {"num_samples": 10**9, "shard_size": 1000},
            COND,
            r"into 1_000_000 files, more than 100_000: raise generate.shard_size to at least 10000",
        ),
        (
            {"num_samples": 10**6, "shard_size": 10**6},
            VAEConfig(latent_dim=4096, latent_prior="standard"),
            r"lower generate.shard_size to 65536 or less",
        ),
        (
            {"num_samples": 10, "batch_size": 256},
            VAEConfig(image_size=(4096, 4096), channels=3, recon_loss="gaussian"),
            r"decodes 12_884_901_888 values at once for 3x4096x4096 images: lower generate.batch_size to 21",
        ),
    ],
    ids=["too-many-shards", "shard-latents", "decoder-batch"],
)
def test_plans_too_large_for_memory_are_refused_up_front(settings, model, words):
    gen = GenerateConfig(**settings)
    with pytest.raises(ConfigError, match=words):
        validate_request(gen, model, CLASS_NAMES if model.conditional else None)
    with pytest.raises(ConfigError, match=words):
        make_plan(gen, model, CLASS_NAMES if model.conditional else None)
