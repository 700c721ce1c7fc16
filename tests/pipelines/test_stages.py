"""The stages' typed results: one dataset summary whichever way the dataset was written, and the run
summary the flow returns as a dict (its keys are a contract: tests, docs and `vaeaug run` read them)."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from pipelines.dataset_format import DatasetSummary
from pipelines.evaluate import QualityReport
from pipelines.stages import DatasetCheck, RunSummary, read_back_summary, run_summary, usefulness_lines

#: The flow's return value, key by key and in this order.
RUN_KEYS = [
    "model_dir", "model_sha256", "training_cached", "training_worker_nodes", "run_name", "run_dir",
    "grid_path", "final_epoch", "quality", "dataset_dir", "rows", "files", "per_class", "per_method",
    "manifest_path", "rows_per_s", "usefulness", "usefulness_note", "curation", "picture_path",
    "preview_path", "validated", "timings",
]  # fmt: skip


QUALITY = QualityReport(
    images=3, heldout_loss=20.5, heldout_recon=19.0, heldout_kl=1.5, recon_mse=0.02, mean_image_mse=0.08,
    active_latents=4, latent_dim=16,
)  # fmt: skip


def _dataset(**over) -> DatasetSummary:
    fields = {
        "dataset_dir": "/x/synthetic", "rows": 12, "files": ["/x/synthetic/data/part-0.parquet"],
        "per_class": {"a": 5, "b": 7}, "per_method": {"prior": 12},
        "manifest_path": "/x/synthetic/manifest.json", "rows_per_s": 100.0, "usefulness": None,
        "usefulness_note": "off", "curation": {}, "picture_path": None,
        "preview_path": "/x/synthetic/preview.png",
    }  # fmt: skip
    return DatasetSummary(**{**fields, **over})


def _run(**over) -> RunSummary:
    fields = {
        "model_dir": "/x/model", "model_sha256": "a" * 64, "training_cached": False,
        "training_worker_nodes": ["n1"], "run_name": "vae-1", "run_dir": "/runs/vae-1",
        "grid_path": "/x/model/samples.png", "final_epoch": {"epoch": 2.0}, "quality": QUALITY,
        "dataset": _dataset(), "validated": DatasetCheck(rows=12, files=1, columns=["image", "label"]),
        "timings": {"train": 1.5},
    }  # fmt: skip
    return RunSummary(**{**fields, **over})


def test_run_summary_round_trips_through_the_flows_dict():
    summary = _run()
    returned = summary.to_dict()
    assert list(returned) == RUN_KEYS
    assert returned["validated"] == {"rows": 12, "files": 1, "columns": ["image", "label"]}
    assert returned["preview_path"] == "/x/synthetic/preview.png"
    assert returned["quality"] == {**asdict(QUALITY), "recon_vs_mean": 0.25}  # derived figure included
    assert RunSummary.from_dict(returned) == summary
    later = summary.with_timing("total", 9.0)
    assert later.timings == {"train": 1.5, "total": 9.0} and summary.timings == {"train": 1.5}


def test_run_summary_text_names_the_model_the_dataset_and_every_picture():
    text = run_summary(_run())
    assert "  model     /x/model\n  run       vae-1  (checkpoints: /runs/vae-1)" in text
    assert "  dataset   /x/synthetic  (12 rows in 1 files, committed)" in text
    assert (
        "  held-out  images 3, heldout_loss 20.5, heldout_recon 19, heldout_kl 1.5, recon_mse 0.02, " in text
    )
    assert "active_latents 4, latent_dim 16, recon_vs_mean 0.25\n" in text
    assert "  per class a=5, b=7" in text and "  time      train 1.5 s" in text
    pictures = [line for line in text.splitlines() if line.startswith("  picture")]
    assert pictures == [
        "  picture   /x/model/samples.png  (samples and reconstructions)",
        "  picture   /x/model/loss_curve.png  (loss curve)",
        "  picture   /x/synthetic/preview.png  (dataset preview)",
    ]
    assert "usefulness: off" in text and "SyntheticDataset('/x/synthetic')" in text
    assert "data_files='/x/synthetic' + '/data/*.parquet'" in text
    cached = run_summary(_run(training_cached=True))
    assert "/x/model  (from the training cache)" in cached and "  run " not in cached


def test_usefulness_lines_name_the_figures_the_curation_and_the_picture():
    acc = {c: [0.8, 0.8] for c in ("real", "real+classic", "real+synth", "real+synth+classic")}
    report = {
        "class_names": ["a", "b"], "label_fidelity": 0.9, "fidelity_per_class": {}, "confidence": 0.8,
        "cas": 0.95, "accuracy": {**acc, "synth": [0.7]}, "gain": 0.0, "frechet": 2.0, "frechet_floor": 1.0,
        "images": {"train": 100, "heldout": 500, "synthetic": 100}, "recipe": {"steps": 10}, "seeds": 2,
    }  # fmt: skip
    curation = {"threshold": 0.5, "per_class": {"a": {"acceptance_rate": 0.5}, "b": {"acceptance_rate": 0.7}}}
    lines = usefulness_lines(_dataset(usefulness=report, curation=curation, picture_path="/x/usefulness.png"))
    text = "\n".join(lines)
    assert lines[0].startswith("The synthetic set has NO MEASURABLE EFFECT")
    assert "label fidelity 0.900" in text and "CAS 0.950" in text and "Fréchet ratio 2.00" in text
    assert "acceptance 0.50-0.70" in text and "/x/usefulness.png" in text
    assert usefulness_lines(_dataset()) == ["usefulness: off"]
    assert usefulness_lines(_dataset(usefulness_note=None)) == ["usefulness: not measured"]


@pytest.mark.parametrize("measured", [False, True])
def test_a_dataset_read_back_from_its_manifest_summarizes_as_the_writer_did(
    tmp_path, measured, single_torch_thread
):
    """What a Ray Job wrote (read back from the manifest) and what this process wrote give the same
    summary, but for the writing rate only the writer knows."""
    from pipelines.config import ReportConfig
    from pipelines.readers import open_dataset
    from tests.pipelines.generate.helpers import run_local, save_tiny_model

    model_dir = save_tiny_model(tmp_path / "model", conditional=True)
    report = ReportConfig(steps=30, seeds=2, batch_size=16, width=4, max_synthetic=60) if measured else None
    result = run_local(tmp_path / "synthetic", model_dir, num_samples=60, report=report)
    written = DatasetSummary.of(result)
    read_back = read_back_summary(open_dataset(result.dataset_dir))
    assert written.rows_per_s is not None and written.rows_per_s > 0 and read_back.rows_per_s is None
    assert read_back.to_dict() == {**written.to_dict(), "rows_per_s": None}
    assert (written.usefulness is not None) is measured and (written.picture_path is not None) is measured
    assert written.preview_path == str(tmp_path / "synthetic" / "preview.png")
    assert set(result.__dict__) - set(written.to_dict()) >= {"seconds", "num_actors", "seed"}  # run figures
