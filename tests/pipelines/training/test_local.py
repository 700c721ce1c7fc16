"""Training that diverges stops with one line and exports nothing (the local runner, through the CLI).

Real training on the embedded digits in this process (train.backend=local); the Ray runner's
equivalent is in test_ray_train.py. No mocks.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from pipelines.cli import main
from pipelines.config import load_config
from pipelines.stages import load_data
from pipelines.training.local import fit_local
from vae.config import ConfigError
from vae.io import load_model
from vae.training import TrainingDivergedError

SMALL = ["data.limit=50", "model.hidden_channels=[4,8]", "model.latent_dim=2", "train.min_steps=0"]


def _train(tmp_path: Path, capsys, *overrides: str) -> tuple[int, str]:
    code = main(["train", "train.backend=local", f"output_dir={tmp_path / 'job'}", *SMALL, *overrides])
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (".inf", "give a finite number"),
        ("-.inf", "give a finite number"),
        (".nan", "give a finite number"),
        ("1.0e+39", "must be in (0, 10]"),  # beyond float32: torch's Adam step would raise a traceback
    ],
)
def test_a_non_finite_or_huge_learning_rate_is_refused_before_training(tmp_path, capsys, value, words):
    code, err = _train(tmp_path, capsys, f"train.lr={value}")
    assert code == 2 and len(err.splitlines()) == 1
    assert "train.lr=" in err and words in err
    assert not (tmp_path / "job").exists()  # refused with the config, before anything is written


def test_a_loss_that_becomes_nan_stops_training_with_one_line(tmp_path, capsys, single_torch_thread):
    """lr=10 (the largest allowed): the first update throws the weights far off, the second step's
    loss is nan."""
    code, err = _train(tmp_path, capsys, "train.lr=10", "train.epochs=3", "train.batch_size=8")
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "training loss became nan" in err and "at epoch 1 step 2" in err
    assert "lower train.lr (now 10)" in err and "no model was saved" in err
    assert (tmp_path / "job" / "config.yaml").is_file() and not (tmp_path / "job" / "model").exists()


def test_the_runner_raises_a_config_error(tmp_path, single_torch_thread):
    """`fit_local` itself: a `TrainingDivergedError`, a `ConfigError` (the CLI exits 2, the flow does
    not retry it), raised before `export_trained_model` writes anything."""
    cfg = load_config(None, [*SMALL, "train.lr=10", "train.batch_size=8", f"output_dir={tmp_path / 'job'}"])
    with pytest.raises(TrainingDivergedError) as info:
        fit_local(cfg, load_data(cfg))
    assert isinstance(info.value, ConfigError)
    assert info.value.divergence.epoch == 1 and info.value.divergence.step == 2
    assert not (tmp_path / "job").exists()


# ------------------------------------------------------------------------------ fit_local itself
LOSSES = ("train_loss", "train_recon", "train_kl", "val_loss", "val_recon", "val_kl")


def _fit(tmp_path: Path, *overrides: str, export: bool = False):
    cfg = load_config(
        None, [*SMALL, "data.limit=120", "train.epochs=2", f"output_dir={tmp_path}", *overrides]
    )
    return cfg, fit_local(cfg, load_data(cfg), export=export)


def test_fit_local_trains_each_epoch_once_and_replays_for_a_seed(tmp_path, single_torch_thread):
    cfg, (model, history, result) = _fit(tmp_path / "a")
    assert result is None and not (tmp_path / "a").exists()  # export=False writes nothing
    assert [row["epoch"] for row in history] == [1, 2]
    assert all(set(LOSSES) <= set(row) and row["samples_per_s"] > 0 for row in history)
    assert model.cfg.num_classes == 10 and model.cfg.latent_dim == 2  # conditional on the digits' classes
    _, (again, replay, _) = _fit(tmp_path / "b")
    assert [[row[k] for k in LOSSES] for row in replay] == [[row[k] for k in LOSSES] for row in history]
    for name, tensor in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name
    _, (_, other, _) = _fit(tmp_path / "c", "train.seed=1")
    assert other[0]["train_loss"] != history[0]["train_loss"]


def test_fit_local_without_a_held_out_split_exports_what_it_trained(tmp_path, single_torch_thread):
    seen: list[dict] = []
    cfg = load_config(None, [*SMALL, "train.epochs=1", "train.val_fraction=0", f"output_dir={tmp_path}"])
    model, history, result = fit_local(cfg, load_data(cfg), on_epoch=seen.append)
    assert seen == history and len(history) == 1 and "val_loss" not in history[0]
    assert result is not None and result.history == history and result.model_dir == cfg.model_dir
    exported = json.loads((Path(cfg.model_dir) / "metrics.json").read_text())
    assert exported == history
    assert Image.open(result.grid_path).size[1] > 0
    saved = load_model(cfg.model_dir)
    for name, tensor in model.state_dict().items():
        assert torch.equal(saved.state_dict()[name], tensor), name
