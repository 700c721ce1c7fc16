"""`Section`: strict pydantic config sections whose every error is one `ConfigError` line."""

from __future__ import annotations

import pytest

from pipelines.config import GenerateConfig, PipelineConfig, ReportConfig, TrainConfig
from pipelines.sections import describe_fields
from vae.config import ConfigError


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: TrainConfig(epochs=0), "train.epochs=0: must be >= 1"),
        (lambda: TrainConfig(val_fraction=1.0), "train.val_fraction=1.0: must be in [0, 1)"),
        (lambda: TrainConfig(epochs="3"), "train.epochs='3': expected int"),  # no "3" -> 3
        (lambda: TrainConfig(mixed_precision=1), "train.mixed_precision=1: expected bool"),
        (lambda: GenerateConfig(png_compression=10), "generate.png_compression=10: must be in 0..9"),
        (lambda: GenerateConfig(num_samples=-1), "generate.num_samples=-1: must be in 0..1_000_000_000"),
        (lambda: GenerateConfig(per_class={"a": -1}), "generate.per_class.a=-1: counts must be in 0.."),
        (lambda: ReportConfig(synthetic_share=1), "report.synthetic_share=1: must be in (0, 1)"),
        (lambda: ReportConfig(seeds=0), "report.seeds=0: must be >= 1 (2 or more give a spread)"),
        (lambda: TrainConfig.from_dict({"epochs": 3, "epochz": 1}), "unknown config key(s) ['train.epochz']"),
        (lambda: PipelineConfig(train={"lr": float("nan")}), "train.lr=nan: give a finite number"),
    ],
)
def test_every_way_of_building_raises_one_config_error_line(build, message):
    with pytest.raises(ConfigError) as info:  # never pydantic's ValidationError
        build()
    assert type(info.value) is ConfigError
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_assignments_are_validated_and_ints_are_floats():
    t = TrainConfig(lr=1)
    assert t.lr == 1.0 and isinstance(t.lr, float)  # YAML's `lr: 1`
    with pytest.raises(ConfigError, match=r"^train\.num_workers=0: must be >= 1"):
        t.num_workers = 0
    with pytest.raises(ConfigError, match=r"^train\.batch_size=128 is smaller than train\.num_workers=200"):
        t.num_workers = 200  # the section's own rules run again
    assert GenerateConfig(per_class={3: 5}).per_class == {"3": 5}  # YAML's int class names


def test_describe_fields_reads_the_docstrings_args():
    schema = {"properties": {"epochs": {"type": "integer"}, "lr": {"type": "number"}}}
    doc = """Training settings.

    More detail.

    Args:
        epochs: passes over
            the data.
        lr: step size.
        other: not a field.

    Returns:
        nothing: not an arg.
    """
    describe_fields(schema, doc)
    assert schema["description"] == "Training settings."
    assert schema["properties"]["epochs"]["description"] == "passes over the data."
    assert schema["properties"]["lr"]["description"] == "step size."
    assert "other" not in schema["properties"]
