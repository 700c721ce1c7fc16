"""Curation and the usefulness report inside a generation job (real Ray, real files read back)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pipelines.config import ReportConfig
from pipelines.generate import generate
from pipelines.usefulness.judge import load_judge
from tests.pipelines.generate.helpers import make_cfg, save_tiny_model

QUICK_REPORT = ReportConfig(steps=60, seeds=2, batch_size=32, width=8, max_synthetic=200)
THRESHOLD = 0.3


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return save_tiny_model(tmp_path_factory.mktemp("curated") / "model", conditional=True)


@pytest.fixture(scope="module")
def runs(ray_session, model_dir, tmp_path_factory) -> dict[str, Path]:
    """The same curated job: in-process (with the report) and on 2 Ray actors."""
    root = tmp_path_factory.mktemp("curation-runs")
    out = {}
    for name, actors in (("local", None), ("two", 2)):
        # The report is measured once (in-process); the judge it trains is reused by the Ray runs.
        report = QUICK_REPORT if actors is None else ReportConfig(**{**vars(QUICK_REPORT), "enabled": False})
        cfg = make_cfg(
            str(root / name), report=report, num_samples=50, per_class={"3": 7},
            curation_threshold=THRESHOLD, curation_max_rounds=20, num_actors=actors,
        )  # fmt: skip
        generate(cfg, model_dir=model_dir, progress=False, use_ray=actors is not None)
        out[name] = root / name
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "data").iterdir())}


def test_curated_files_are_byte_identical_whatever_the_number_of_actors(runs):
    assert _files(runs["local"]) == _files(runs["two"])
    assert len(_files(runs["two"])) == 4  # 57 rows in shards of 16


def test_curation_meets_the_requested_counts_exactly(runs):
    table = pq.read_table(runs["two"] / "data")
    assert table.num_rows == 57
    labels = np.array(table.column("label").to_pylist())
    expected = np.bincount(np.arange(50) % 10, minlength=10)
    expected[3] += 7
    assert np.array_equal(np.bincount(labels, minlength=10), expected)


def test_kept_images_pass_the_judge_unless_counted_as_fallback(runs, model_dir):
    manifest = json.loads((runs["two"] / "manifest.json").read_text())
    curation = manifest["curation"]
    assert curation["threshold"] == THRESHOLD
    per_class = curation["per_class"]
    assert set(per_class) == {str(k) for k in range(10)}
    for v in per_class.values():
        assert 0 <= v["acceptance_rate"] <= 1 and v["accepted"] <= v["tried"]
    judge = load_judge(model_dir)
    table = pq.read_table(runs["two"] / "data")
    pngs = [r["bytes"] for r in table.column("image").to_pylist()]
    x = (
        torch.from_numpy(np.stack([np.asarray(Image.open(io.BytesIO(p))) for p in pngs])).float()[:, None]
        / 255
    )
    y = torch.tensor(table.column("label").to_pylist())
    with torch.no_grad():
        conf = judge(x).softmax(1).gather(1, y[:, None]).squeeze(1)
    below = int((conf < THRESHOLD - 1e-4).sum())
    assert below <= sum(v["fallback"] for v in per_class.values())


def test_report_lands_in_manifest_card_and_picture(runs):
    root = runs["local"]
    report = json.loads((root / "manifest.json").read_text())["usefulness"]
    for key in ("label_fidelity", "cas", "gain", "frechet", "frechet_floor", "frechet_ratio", "verdict"):
        assert key in report
    assert set(report["accuracy"]) == {"real", "real+classic", "real+synth", "real+synth+classic", "synth"}
    assert all(len(report["accuracy"][c]) == 2 for c in ("real", "real+synth"))
    assert report["images"]["synthetic"] == 57
    card = (root / "README.md").read_text()
    assert "## Usefulness" in card and report["headline"] in card and "acceptance rate" in card
    assert Image.open(root / "usefulness.png").width > 100


def test_unconditional_model_skips_the_report(ray_session, uncond_model, tmp_path):
    cfg = make_cfg(str(tmp_path / "u"), report=QUICK_REPORT)
    result = generate(cfg, model_dir=uncond_model, progress=False, use_ray=False)
    assert result.usefulness is None and "unconditional" in (result.usefulness_note or "")
    assert result.curation == {}
    assert "Not measured" in (tmp_path / "u" / "README.md").read_text()


def test_a_report_that_cannot_run_is_noted_and_the_dataset_still_commits(ray_session, model_dir, tmp_path):
    # One synthetic row cannot be measured: the dataset is committed, the manifest says why.
    cfg = make_cfg(str(tmp_path / "one"), report=QUICK_REPORT, num_samples=1)
    result = generate(cfg, model_dir=model_dir, progress=False, use_ray=False)
    assert result.rows == 1 and result.usefulness is None
    assert "failed" in result.usefulness_note
    manifest = json.loads((tmp_path / "one" / "manifest.json").read_text())
    assert manifest["usefulness"] == {"skipped": result.usefulness_note}
    assert (tmp_path / "one" / "_SUCCESS").is_file()


def test_curation_of_an_unconditional_model_is_a_one_line_error(uncond_model, tmp_path):
    from pipelines.errors import ModelError

    cfg = make_cfg(str(tmp_path / "u"), curation_threshold=0.5)
    with pytest.raises(ModelError, match="curation_threshold.*unconditional"):
        generate(cfg, model_dir=uncond_model, progress=False, use_ray=False)
    assert not (tmp_path / "u").exists()
