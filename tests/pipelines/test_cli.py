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


def test_evaluate_measures_the_usefulness_of_a_dataset(tmp_path, capsys, single_torch_thread):
    from pipelines.generate import generate
    from tests.pipelines.generate.helpers import make_cfg, save_tiny_model

    model_dir = save_tiny_model(tmp_path / "model", conditional=True)
    generate(
        make_cfg(str(tmp_path / "synthetic"), num_samples=60),
        model_dir=model_dir,
        progress=False,
        use_ray=False,
    )
    args = ["evaluate", "--model", model_dir, "--dataset", str(tmp_path / "synthetic"), "data.limit=300"]
    args += ["report.steps=30", "report.width=4", "report.batch_size=16", f"output_dir={tmp_path / 'job'}"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "the synthetic set" in out.lower() and "label fidelity" in out and "CAS" in out
    assert (tmp_path / "model" / "judge" / "judge.json").is_file()


def test_usefulness_lines_name_the_figures_the_curation_and_the_picture():
    from pipelines.stages import usefulness_lines

    acc = {c: [0.8, 0.8] for c in ("real", "real+classic", "real+synth", "real+synth+classic")}
    report = {
        "class_names": ["a", "b"], "label_fidelity": 0.9, "fidelity_per_class": {}, "confidence": 0.8,
        "cas": 0.95, "accuracy": {**acc, "synth": [0.7]}, "gain": 0.0, "frechet": 2.0, "frechet_floor": 1.0,
        "images": {"train": 100, "heldout": 500, "synthetic": 100}, "recipe": {"steps": 10}, "seeds": 2,
    }  # fmt: skip
    curation = {"threshold": 0.5, "per_class": {"a": {"acceptance_rate": 0.5}, "b": {"acceptance_rate": 0.7}}}
    lines = usefulness_lines(
        {"usefulness": report, "curation": curation, "picture_path": "/x/usefulness.png"}
    )
    text = "\n".join(lines)
    assert lines[0].startswith("The synthetic set has NO MEASURABLE EFFECT")
    assert "label fidelity 0.900" in text and "CAS 0.950" in text and "Fréchet ratio 2.00" in text
    assert "acceptance 0.50-0.70" in text and "/x/usefulness.png" in text
    assert usefulness_lines({"usefulness": None, "usefulness_note": "off"}) == ["usefulness: off"]
