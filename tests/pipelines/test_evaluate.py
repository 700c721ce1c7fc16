"""`vaeaug evaluate` with data that is not the model's: one line naming both sides, exit 2.

A real saved (tiny) model, real image folders and the embedded digits, through the CLI and
`evaluate_saved_model`. No mocks.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from pipelines.cli import main
from pipelines.config import load_config
from pipelines.errors import DataError, ModelError, PipelineError
from pipelines.evaluate import evaluate_saved_model
from pipelines.stages import load_data
from tests.pipelines.generate.helpers import save_tiny_model


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (8, 8), value).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A conditional 8x8 grayscale model of the ten digit classes "0".."9"."""
    return save_tiny_model(tmp_path_factory.mktemp("evaluate") / "model", conditional=True)


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pets")
    for name in ("cat", "dog", "emu"):
        for i in range(4):
            (root / name).mkdir(exist_ok=True)
            (root / name / f"{i}.png").write_bytes(_png(40 * i))
    return root


def _evaluate(capsys, model_dir: str, tmp_path: Path, *overrides: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of `vaeaug evaluate`."""
    code = main(["evaluate", "--model", model_dir, f"output_dir={tmp_path / 'job'}", *overrides])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


def test_a_model_evaluated_on_other_classes_names_both_sizes(model_dir, three_classes, tmp_path, capsys):
    code, _, err = _evaluate(capsys, model_dir, tmp_path, "data.source=folder", f"data.path={three_classes}")
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "has 10 classes [0, 1, 2, 3, 4, ... (5 more)]" in err
    assert "the data has 3 [cat, dog, emu]" in err and "the data it was trained on" in err


def test_the_same_number_of_classes_with_other_names_is_refused_too(model_dir, tmp_path):
    """Ten classes again, but not the digits: the names recorded with the model differ."""
    root = tmp_path / "letters"
    for name in "abcdefghij":
        (root / name).mkdir(parents=True)
        (root / name / "1.png").write_bytes(_png(90))
    cfg = load_config(None, ["data.source=folder", f"data.path={root}", "model.image_size=[8,8]"])
    with pytest.raises(DataError, match=r"has 10 classes \[0, 1, .* but the data has 10 \[a, b, c"):
        evaluate_saved_model(cfg, load_data(cfg), model_dir)


def test_images_of_another_size_are_refused(model_dir, tmp_path, capsys):
    code, _, err = _evaluate(capsys, model_dir, tmp_path, "model.image_size=[16,16]")
    assert code == 2 and len(err.splitlines()) == 1
    assert "(1, 16, 16)" in err and "(1, 8, 8)" in err and "model.image_size" in err


def test_the_model_s_own_data_is_evaluated(model_dir, tmp_path, capsys):
    code, out, _ = _evaluate(capsys, model_dir, tmp_path, "data.limit=60")
    assert code == 0 and "recon_vs_mean" in out


def test_a_missing_model_is_a_pipeline_error(tmp_path):
    """A `ModelError` (a `PipelineError`): the flow's evaluate task does not retry it."""
    cfg = load_config(None, ["data.limit=20"])
    with pytest.raises(ModelError, match="no saved model") as info:
        evaluate_saved_model(cfg, load_data(cfg), str(tmp_path / "nothing"))
    assert isinstance(info.value, PipelineError)


def test_quality_report_of_a_trained_model_on_its_held_out_split(single_torch_thread):
    """`quality_report` on a tiny VAE trained on 480 digits: the held-out figures are the ones training
    measured last, reconstructions beat the mean image (an untrained model's do not), and noise
    reconstructs far worse than held-out digits."""
    import math

    import torch

    from pipelines.data import ImageSet, load_images
    from pipelines.data.split import HeldOut
    from pipelines.evaluate import quality_report
    from pipelines.training.local import fit_local
    from vae.model import VAE

    tiny = ["model.hidden_channels=[8,16]", "model.latent_dim=4"]
    quick = ["train.epochs=8", "train.batch_size=32", "train.min_steps=400", "train.backend=local"]
    cfg = load_config(None, ["data.limit=600", "train.val_fraction=0.2", "train.seed=0", *tiny, *quick])
    data = load_images(cfg.data, cfg.model)
    model, history, _ = fit_local(cfg, data, export=False)
    train, heldout = data.split(*HeldOut.of(cfg.train))
    report = quality_report(model, train, heldout, seed=cfg.train.seed)

    assert report.images == len(heldout) == 120 and report.latent_dim == 4
    assert all(math.isfinite(v) for v in report.to_dict().values())
    assert report.heldout_loss == pytest.approx(history[-1]["val_loss"], rel=1e-6)  # training's own figure
    assert report.heldout_loss == pytest.approx(report.heldout_recon + report.heldout_kl, rel=1e-5)  # beta 1
    assert 0 <= report.active_latents <= 4
    assert report.recon_mse < 0.6 * report.mean_image_mse and report.recon_vs_mean < 0.6
    assert quality_report(model, train, heldout, seed=cfg.train.seed) == report  # seeded: repeatable

    torch.manual_seed(0)
    untrained = quality_report(VAE(model.cfg), train, heldout, seed=cfg.train.seed)
    assert untrained.mean_image_mse == report.mean_image_mse  # the baseline depends on the data only
    assert untrained.recon_vs_mean > 1 and untrained.heldout_loss > 1.5 * report.heldout_loss

    pixels = torch.rand(len(heldout), 1, 8, 8, generator=torch.Generator().manual_seed(0))
    noise = ImageSet(pixels, heldout.labels, heldout.class_names, heldout.ids)
    on_noise = quality_report(model, train, noise, seed=cfg.train.seed)
    assert on_noise.recon_mse > 4 * report.recon_mse and on_noise.heldout_loss > 3 * report.heldout_loss
