"""The `vaeaug` CLI: the main job end to end on digits, and one-line errors with exit code 2."""

from __future__ import annotations

import json

import pytest
import yaml
from PIL import Image

from pipelines.cli import main


def test_train_locally_writes_model_grid_and_config(tmp_path, capsys):
    out = tmp_path / "job"
    args = [
        "train",
        f"output_dir={out}",
        "train.epochs=3",
        "train.min_steps=0",
        "model.hidden_channels=[16,32]",
        "train.backend=local",
    ]
    code = main(args)
    assert code == 0
    printed = capsys.readouterr().out
    assert "epoch   3/3" in printed
    model_dir = out / "model"
    for name in ("config.json", "model.safetensors", "environment.json", "metrics.json", "loss_curve.png"):
        assert (model_dir / name).is_file(), name
    grid = Image.open(model_dir / "samples.png")
    assert grid.width > 200 and grid.height > 200
    history = json.loads((model_dir / "metrics.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3]
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["train"]["epochs"] == 3
    meta = json.loads((model_dir / "config.json").read_text())
    assert meta["extra"]["class_names"] == [str(i) for i in range(10)]
    assert meta["model"]["num_classes"] == 10


@pytest.mark.parametrize(
    "args",
    [
        ["run", "train.epochz=1"],
        ["run", "model.beta=-1"],
        ["run", "model.latent_dim=0"],
        ["run", "data.source=nope"],
        ["train", "train.epochs=many"],
        ["run", "--config", "/nonexistent/config.yaml"],
        ["train", "data.source=folder", "data.path=/nonexistent/images", "train.backend=local"],
        ["inspect", "/nonexistent/dataset"],
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, capsys, tmp_path):
    if args[0] != "inspect":
        args = [*args, f"output_dir={tmp_path / 'out'}"]
    code = main(args)
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vaeaug ") and "error:" in err
    assert len(err.splitlines()) == 1


def test_help_for_every_command(capsys):
    from pipelines.cli import COMMANDS

    for name in COMMANDS:
        with pytest.raises(SystemExit) as info:
            main([name, "--help"])
        assert info.value.code == 0
        text = capsys.readouterr().out
        assert "KEY=VALUE" in text or "dataset" in text
