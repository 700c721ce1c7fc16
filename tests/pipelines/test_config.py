"""Config: defaults -> YAML -> dotted overrides; unknown keys and wrong types are errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipelines.config import (
    PipelineConfig,
    config_from_dict,
    config_yaml,
    load_config,
    parse_overrides,
)
from vae.config import ConfigError


def test_defaults_are_the_digits_job():
    cfg = load_config()
    assert cfg.data.source == "digits"
    assert cfg.model.image_size == (8, 8)
    # local paths are made absolute (Ray workers may run in another directory)
    assert cfg.model_dir == str(Path.cwd() / "outputs/digits/model")
    assert cfg.dataset_dir == str(Path.cwd() / "outputs/digits/synthetic")
    assert load_config(None, ["output_dir=s3://b/x"]).model_dir == "s3://b/x/model"


def test_yaml_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"train": {"epochs": 7, "lr": 0.01}, "model": {"latent_dim": 4}}))
    cfg = load_config(f, ["train.epochs=3", "model.hidden_channels=[8, 16]", "generate.per_class={'3': 5}"])
    assert cfg.train.epochs == 3  # override wins
    assert cfg.train.lr == 0.01  # from the file
    assert cfg.model.latent_dim == 4
    assert cfg.model.hidden_channels == (8, 16)
    assert cfg.generate.per_class == {"3": 5}


def test_round_trip_through_saved_yaml():
    cfg = load_config(None, ["train.epochs=2", "model.image_size=[12, 10]", "conditional=false"])
    again = config_from_dict(yaml.safe_load(config_yaml(cfg)))
    assert again == cfg


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("train.epochz=1", ["train.epochz", "valid keys"]),
        ("nonsense=1", ["nonsense"]),
        ("train.epochs=abc", ["train.epochs", "int"]),
        ("train.lr=fast", ["train.lr", "float"]),
        ("model.beta=-0.5", ["model.beta", ">= 0"]),
        ("model.latent_dim=0", ["model.latent_dim"]),
        ("data.source=imagenet", ["data.source", "digits"]),
        ("train.num_workers=0", ["train.num_workers", ">= 1"]),
        ("model.image_size=[8]", ["model.image_size"]),
        ("generate.if_exists=clobber", ["generate.if_exists", "overwrite"]),
        ("generate.num_samples=-1", ["generate.num_samples"]),
        ("train.use_gpu=maybe", ["train.use_gpu"]),
        ("train=5", ["train", "mapping"]),
    ],
)
def test_bad_values_name_the_key(override, words):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key.subkey=value"):
        parse_overrides(["train.epochs"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_secrets_never_reach_saved_config():
    cfg = load_config(
        None,
        ["generate.storage_options={key: AKIA123, secret: s3cr3t, client_kwargs: {region_name: eu}}"],
    )
    text = config_yaml(cfg)
    assert "AKIA123" not in text and "s3cr3t" not in text
    assert "eu" in text  # non-secret options are kept
    assert isinstance(cfg, PipelineConfig)


def test_unset_likelihood_follows_a_non_unit_output_range():
    from pipelines.config import load_config

    cfg = load_config(None, ["model.output_activation=tanh"])
    assert cfg.model.recon_loss == "gaussian"
    assert (
        load_config(None, ["model.output_activation=tanh", "model.recon_loss=mse"]).model.recon_loss == "mse"
    )


def test_training_budget_floor_in_optimizer_steps():
    from pipelines.config import TrainConfig

    t = TrainConfig(epochs=30, min_steps=3000, batch_size=128)
    assert t.steps_per_pass(900) == 8 and t.passes_per_epoch(900) == 13
    assert t.total_steps(900) == 30 * 13 * 8 >= 3000
    assert TrainConfig(epochs=30, min_steps=0).passes_per_epoch(900) == 1
    assert TrainConfig(epochs=30, min_steps=100, batch_size=128).passes_per_epoch(60000) == 1
    assert "3120 optimizer steps" in t.budget_line(900)


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        ([], "digits"),
        (["data.source=mnist"], "mnist"),
        (["data.source=fashion-mnist", "data.path=/srv/data"], "fashion-mnist"),  # a root folder, not a name
        (["data.source=folder", "data.path=/srv/images/flowers"], "flowers"),
        (["data.source=folder", "data.path=/srv/images/flowers/"], "flowers"),
        (["data.source=parquet", "data.path=s3://bucket/pets/"], "pets"),
        (["data.source=parquet", "data.path=/srv/pets.parquet"], "pets"),
        (["data.source=folder", "data.path='/srv/my photos (2024)'"], "my_photos_2024"),
        (["data.source=parquet", "data.path=s3://bucket/*.parquet"], "parquet"),  # no usable name
    ],
)
def test_default_output_dir_is_named_after_the_data(overrides, name):
    cfg = load_config(None, overrides)
    assert cfg.output_dir == str(Path.cwd() / "outputs" / name)
    assert cfg.model_dir == str(Path.cwd() / "outputs" / name / "model")


def test_explicit_output_dir_wins_and_survives_a_round_trip(tmp_path):
    flowers = ["data.source=folder", "data.path=/srv/images/flowers"]
    assert load_config(None, [*flowers, "output_dir=s3://b/x"]).output_dir == "s3://b/x"
    assert load_config(None, [*flowers, "output_dir=runs/f"]).output_dir == str(Path.cwd() / "runs/f")
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"data": {"source": "folder", "path": "/srv/pets"}, "output_dir": None}))
    cfg = load_config(f)
    assert cfg.output_dir == str(Path.cwd() / "outputs/pets")
    # the saved config records the derived directory, so reloading it keeps it whatever the data
    saved = yaml.safe_load(config_yaml(cfg))
    assert saved["output_dir"] == cfg.output_dir
    saved["data"] = {"source": "digits"}
    assert config_from_dict(saved).output_dir == cfg.output_dir


@pytest.mark.parametrize(
    "override",
    [
        "train.lr=.inf",
        "train.lr=.nan",
        "train.weight_decay=.inf",
        "train.stream_above_mb=.inf",
        "model.beta=.inf",
        "model.norm_mean=-.inf",
        "generate.temperature=.inf",
        "generate.variant_temperature=.nan",
        "generate.curation_threshold=.nan",  # float | None
        "report.synthetic_share=.nan",
        "flow.retry_delay_seconds=.inf",
    ],
)
def test_every_float_setting_must_be_finite(override):
    """YAML's .inf/.nan pass "> 0" and ">= 0" checks: each float setting refuses them by name."""
    key = override.split("=", 1)[0]
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert message.startswith(f"{key}=") and "finite" in message and "\n" not in message


def test_non_finite_floats_are_refused_from_yaml_and_saved_configs_too(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("train:\n  lr: .inf\n")
    with pytest.raises(ConfigError, match=r"^train\.lr=inf: give a finite number"):
        load_config(path)
    data = load_config().to_dict()
    data["generate"]["temperature"] = float("nan")
    with pytest.raises(ConfigError, match=r"^generate\.temperature=nan"):
        config_from_dict(data)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "model.latent_dimm=4",
            "unknown config key(s) ['model.latent_dimm']: valid keys under 'model' are [",
        ),
        ("model.hidden_channels=[8.0, 16]", "model.hidden_channels[0]=8.0: expected int"),
        ("model.image_size=16", "model.image_size=16: expected a list"),
        ("model=5", "model: expected a mapping of settings, got 5"),
        ("generate.per_class={a: x}", "generate.per_class.a='x': expected int"),
        ("train.lr=0", "train.lr=0: must be in (0, 10] (Adam's step size"),
    ],
)
def test_the_model_section_and_nested_keys_name_the_key(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert str(info.value).startswith(message)


def test_settings_sit_between_the_file_and_the_overrides_and_sections_may_be_partial(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train: {epochs: 7, lr: 0.01}\nmodel: {latent_dim: 4}\n")
    cfg = load_config(f, ["train.epochs=3"], settings={"train": {"epochs": 5, "batch_size": 64}})
    assert (cfg.train.epochs, cfg.train.lr, cfg.train.batch_size) == (3, 0.01, 64)
    assert cfg.train.min_steps == 3000 and cfg.model.latent_dim == 4  # the rest: file or defaults
    assert cfg.infer_from_data == ("image_size", "channels", "recon_loss")
    again = config_from_dict(cfg.to_dict())
    assert again == cfg and again.infer_from_data == ()  # bookkeeping: neither compared nor saved
    assert "infer_from_data" not in cfg.to_dict()
