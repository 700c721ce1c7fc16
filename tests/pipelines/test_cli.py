"""The `vaeaug` CLI: the main job end to end on digits, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata

import pytest
import yaml
from PIL import Image

from pipelines.cli import build_parser, main, parse_args


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


def test_help_and_version_load_neither_torch_nor_ray_nor_prefect():
    code = """
import contextlib, io, sys
from pipelines.cli import COMMANDS, main
for argv in (["--help"], ["--version"], *([name, "--help"] for name in COMMANDS)):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        main(argv)
print(sorted(m for m in ("torch", "ray", "prefect", "pipelines.config") if m in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"vaeaug {metadata.version('vaeaug')}"


@pytest.mark.parametrize(
    ("argv", "verbose", "overrides"),
    [
        (["run", "a=1"], False, ["a=1"]),
        (["-v", "run", "a=1"], True, ["a=1"]),
        (["run", "-v", "a=1"], True, ["a=1"]),
        (["run", "a=1", "--verbose"], True, ["a=1"]),
        (["run", "a=1", "-v", "b=2", "c=3"], True, ["a=1", "b=2", "c=3"]),
        (["train", "a=1", "--config", "f.yaml", "b=2"], False, ["a=1", "b=2"]),
        (["serve", "--cron", "0 3 * * *", "a=1", "-v", "b=2"], True, ["a=1", "b=2"]),
    ],
)
def test_options_go_anywhere_among_overrides(argv, verbose, overrides):
    args = parse_args(build_parser(), argv)
    assert args.verbose is verbose
    assert args.overrides == overrides


def test_verbose_after_a_command_without_overrides():
    assert parse_args(build_parser(), ["inspect", "DIR", "-v", "--json"]).verbose is True
    assert parse_args(build_parser(), ["-v", "inspect", "DIR"]).verbose is True


@pytest.mark.parametrize("argv", [["run", "a=1", "--bogus", "b=2"], ["inspect", "DIR", "extra"]])
def test_unknown_arguments_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as info:
        parse_args(build_parser(), argv)
    assert info.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A tiny conditional model and a committed 60-row dataset sampled from it (no Ray)."""
    from pipelines.generate import generate
    from tests.pipelines.generate.helpers import make_cfg, save_tiny_model

    root = tmp_path_factory.mktemp("cli")
    model_dir = save_tiny_model(root / "model", conditional=True)
    generate(
        make_cfg(str(root / "synthetic"), num_samples=60), model_dir=model_dir, progress=False, use_ray=False
    )
    return model_dir, str(root / "synthetic")


def test_inspect_json_is_one_document(tiny_dataset, capsys):
    assert main(["inspect", tiny_dataset[1], "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["rows"] == 60 and doc["per_class"]["3"] == 6
    label = next(c for c in doc["schema"] if c["name"] == "label")
    assert label["class_names"] == [str(k) for k in range(10)]


def test_evaluate_json_keeps_notes_off_stdout(tiny_dataset, tmp_path, capsys, single_torch_thread):
    args = ["evaluate", "--json", "--model", tiny_dataset[0], "data.limit=100", f"output_dir={tmp_path}"]
    assert main(args) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["model_dir"] == tiny_dataset[0]
    assert doc["quality"]["latent_dim"] == 4 and doc["quality"]["heldout_loss"] > 0
    assert "inferred from the data" in captured.err
