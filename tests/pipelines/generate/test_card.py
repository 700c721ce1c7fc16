"""The dataset card (README.md): front matter that `datasets` reads, and a usefulness section that says
plainly when the synthetic set hurts (a warning above the figures), helps, or was not measured."""

from __future__ import annotations

import pytest
import yaml

from pipelines.dataset_format import DATA_DIR, MANIFEST, MARKER, PICTURE
from pipelines.generate.card import dataset_card, preview_section, rows_section, usefulness_section
from pipelines.generate.schema import hf_features
from pipelines.usefulness.report import UsefulnessReport

NAMES = ["cat", "dog"]


def _report(mixed: list[float]) -> dict:
    """A report on 1,000 held-out images: real ~83%, real+synth+classic as given."""
    accuracy = {
        "real": [0.83, 0.83], "real+classic": [0.82, 0.84], "real+synth": [0.80, 0.81],
        "real+synth+classic": mixed, "synth": [0.5],
    }  # fmt: skip
    best_real, best_mix = 0.83, max(0.805, sum(mixed) / len(mixed))
    return UsefulnessReport(
        class_names=NAMES, label_fidelity=0.4, fidelity_per_class={"cat": 0.3, "dog": 0.5}, confidence=0.5,
        cas=0.6, accuracy=accuracy, gain=best_mix - best_real, frechet=3.0, frechet_floor=1.0,
        images={"train": 1000, "heldout": 1000, "synthetic": 500}, recipe={"steps": 10}, seeds=2,
    ).to_dict()  # fmt: skip


def _manifest(**over) -> dict:
    manifest = {
        "rows": 12, "image_shape": [3, 16, 8], "latent_dim": 4,
        "files": [{"path": f"{DATA_DIR}/part-00000-of-00001.parquet", "rows": 12, "bytes": 2048}],
        "features": hf_features(4, NAMES), "per_method": {"prior": 10, "variant": 2},
        "per_class": {"cat": 6, "dog": 6}, "preview": "preview.png",
        "provenance": {"model_sha256": "ab" * 32, "seed": 7, "seed_source": None, "job_id": "j1",
                       "vaeaug_version": "0.1.0", "torch_version": "2.x"},
        "created_at": "2026-01-01T00:00:00+00:00", "usefulness": _report([0.75, 0.76]), "curation": {},
    }  # fmt: skip
    return {**manifest, **over}


def _section(card: str, heading: str) -> list[str]:
    """The lines of one `## heading` section of a card."""
    lines = card.splitlines()
    start = lines.index(f"## {heading}") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start:end]


def test_a_hurting_set_opens_its_usefulness_section_with_the_warning():
    card = dataset_card(_manifest())
    first = next(line for line in _section(card, "Usefulness") if line.strip())
    assert first.startswith("**WARNING: the synthetic set HURTS a downstream classifier: 83.0% -> 80.5%")
    assert "Do not train on it as it is" in first
    assert "| augmentation gain (points) | -2.5 |" in card
    assert "| real+synth+classic | 75.5 ± 0.5% |" in card
    assert f"![synthetic images per class beside real held-out ones]({PICTURE})" in card


@pytest.mark.parametrize(
    ("mixed", "headline"),
    [([0.90, 0.90], "**The synthetic set HELPS a downstream classifier: 83.0% -> 90.0% (+7.0 points).**"),
     ([0.83, 0.83], "**The synthetic set has NO MEASURABLE EFFECT")],
)  # fmt: skip
def test_helping_and_neutral_sets_say_so(mixed, headline):
    lines = usefulness_section(_report(mixed), {})
    assert lines[2].startswith(headline) and "WARNING" not in "\n".join(lines)


def test_an_unmeasured_set_says_why():
    assert usefulness_section({"skipped": "the model is unconditional"}, {})[2] == (
        "Not measured: the model is unconditional."
    )
    assert usefulness_section({}, {})[2] == "Not measured: no report."


def test_curation_rows_per_class():
    curation = {"threshold": 0.8, "per_class": {"cat": {"acceptance_rate": 0.25, "fallback": 3}}}
    lines = usefulness_section({}, curation)
    assert "kept only when the judge gave its label >= 0.8" in "\n".join(lines)
    assert "| cat | 0.250 | 3 |" in lines


def test_front_matter_counts_the_rows_and_bytes_and_names_the_classes():
    card = dataset_card(_manifest())
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["dataset_info"]["splits"] == [{"name": "train", "num_examples": 12, "num_bytes": 2048}]
    label = next(f for f in front["dataset_info"]["features"] if f["name"] == "label")
    assert label["dtype"] == {"class_label": {"names": {"0": "cat", "1": "dog"}}}
    assert front["configs"][0]["data_files"] == [{"split": "train", "path": f"{DATA_DIR}/*.parquet"}]
    assert "12 PNG images (8x16, 3 channel(s)) decoded from latents of dimension 4" in card


def test_provenance_names_the_format_files_and_the_seed():
    card = dataset_card(_manifest())
    provenance = "\n".join(_section(card, "Provenance"))
    assert f"`{MANIFEST}` lists every file" in provenance and f"`{MARKER}` marks the dataset" in provenance
    assert "- seed: 7 (fixed), job id: `j1`" in provenance


def test_rows_and_preview_sections():
    assert rows_section({"prior": 3}, {}) == [
        "## Rows",
        "",
        "| method | rows |",
        "|---|---|",
        "| prior | 3 |",
        "",
    ]
    assert "| dog | 6 |" in rows_section({"prior": 12}, {"cat": 6, "dog": 6})
    assert preview_section(None) == []  # a dataset written before previews existed
    assert preview_section({"skipped": "no classes"})[2] == "Not drawn: no classes."
    assert preview_section("preview.png")[2] == "![the first rows of each class](preview.png)"
