"""The dataset card (README.md) with Hugging Face YAML front matter describing the features."""

from __future__ import annotations

from typing import Any

import yaml

from pipelines.dataset_format import DATA_DIR, MANIFEST, MARKER, PICTURE


def features_yaml(features: dict[str, Any]) -> list[dict[str, Any]]:
    """`datasets` features dict -> the list form used in dataset cards (`Features._to_yaml_list`).

    Args:
        features: as produced by `pipelines.generate.schema.hf_features`.

    Returns:
        [{"name": ..., "dtype": ...} | {"name": ..., "list": ..., "length": ...}, ...]
    """
    out: list[dict[str, Any]] = []
    for name, feat in features.items():
        kind = feat["_type"]
        if kind == "Image":
            out.append({"name": name, "dtype": "image"})
        elif kind == "List":
            out.append({"name": name, "list": feat["feature"]["dtype"], "length": feat["length"]})
        elif kind == "ClassLabel":
            names = {str(i): n for i, n in enumerate(feat["names"])}
            out.append({"name": name, "dtype": {"class_label": {"names": names}}})
        else:
            out.append({"name": name, "dtype": feat["dtype"]})
    return out


def dataset_card(manifest: dict[str, Any]) -> str:
    """README.md for a committed dataset.

    Args:
        manifest: the dataset's manifest (rows, files, features, counts, provenance).

    Returns:
        Markdown with YAML front matter (`dataset_info.features`, `configs.data_files`).
    """
    c, h, w = manifest["image_shape"]
    lines = [
        "---",
        yaml.safe_dump(front_matter(manifest), sort_keys=False).rstrip(),
        "---",
        "",
        "# Synthetic images from a VAE",
        "",
        f"{manifest['rows']} PNG images ({w}x{h}, {c} channel(s)) decoded from latents of dimension "
        f"{manifest['latent_dim']}, in {len(manifest['files'])} Parquet file(s) under `{DATA_DIR}/`.",
        "",
        *preview_section(manifest.get("preview")),
        *rows_section(manifest["per_method"], manifest.get("per_class") or {}),
        *usefulness_section(manifest.get("usefulness") or {}, manifest.get("curation") or {}),
        *_COLUMNS_SECTION,
        *provenance_section(manifest),
    ]
    return "\n".join(lines)


def front_matter(manifest: dict[str, Any]) -> dict[str, Any]:
    """The card's YAML front matter: name, tags, `dataset_info` (features, split) and `configs`."""
    return {
        "pretty_name": f"vaeaug synthetic images ({manifest['rows']} rows)",
        "tags": ["synthetic", "vae", "image"],
        "dataset_info": {
            "features": features_yaml(manifest["features"]),
            "splits": [
                {
                    "name": "train",
                    "num_examples": manifest["rows"],
                    "num_bytes": sum(f["bytes"] for f in manifest["files"]),
                }
            ],
        },
        "configs": [
            {"config_name": "default", "data_files": [{"split": "train", "path": f"{DATA_DIR}/*.parquet"}]}
        ],
    }


def rows_section(per_method: dict[str, int], per_class: dict[str, int]) -> list[str]:
    """Card lines: rows per method, then per class (conditional datasets)."""
    lines = [
        "## Rows",
        "",
        "| method | rows |",
        "|---|---|",
        *[f"| {m} | {n} |" for m, n in per_method.items()],
        "",
    ]
    if per_class:
        lines += ["| class | rows |", "|---|---|", *[f"| {k} | {v} |" for k, v in per_class.items()], ""]
    return lines


#: Card lines describing the columns (`pipelines.dataset_format.COLUMNS`).
_COLUMNS_SECTION = (
    "## Columns",
    "",
    "- `image`: PNG (`struct<bytes, path>`, the `datasets` Image feature)",
    "- `latent`: the z that was decoded (`fixed_size_list<float32>`)",
    "- `label`: class index (null for an unconditional model); names in the features",
    "- `sample_id`: unique and deterministic; `method`: prior, class, variant or interpolation",
    "- `source_id` / `target_id`: the real image(s) a variant or interpolation comes from",
    "",
)


def provenance_section(manifest: dict[str, Any]) -> list[str]:
    """Card lines: the model, seed, versions and time, and how to load the dataset."""
    prov = manifest["provenance"]
    return [
        "## Provenance",
        "",
        f"- model weights sha256: `{prov['model_sha256']}`",
        f"- seed: {prov['seed']} ({prov.get('seed_source') or 'fixed'}), job id: `{prov['job_id']}`",
        f"- vaeaug {prov['vaeaug_version']}, torch {prov['torch_version']}",
        f"- created: {manifest['created_at']}",
        "",
        f"`{MANIFEST}` lists every file with its row count and sha256; `{MARKER}` marks the dataset",
        "as complete. Load it with",
        "",
        "```python",
        'datasets.load_dataset("parquet", '
        f'data_files="<this directory>/{DATA_DIR}/*.parquet", split="train")',
        "```",
        "",
    ]


def preview_section(preview: str | dict[str, Any] | None) -> list[str]:
    """Card lines: the preview grid (the manifest's `preview`: its file name, or {"skipped": why})."""
    if preview is None:  # a dataset written before previews existed
        return []
    lines = ["## Preview", ""]
    if isinstance(preview, str):
        lines += [f"![the first rows of each class]({preview})", ""]
    else:
        lines += [f"Not drawn: {preview.get('skipped') or 'unknown reason'}.", ""]
    return lines


def usefulness_section(report: dict[str, Any], curation: dict[str, Any]) -> list[str]:
    """Card lines: the usefulness headline (a warning when the set hurts), figures, curation."""
    lines = ["## Usefulness", ""]
    if "headline" not in report:
        lines += [f"Not measured: {report.get('skipped') or 'no report'}.", ""]
    else:
        mean, spread = report["mean_accuracy"], report["spread_accuracy"]
        lines += [
            f"**{report['headline']}**",
            "",
            f"Measured on {report['images']['heldout']} real held-out images the VAE never trained on, "
            f"with a small CNN trained {report['recipe']['steps']} steps per run, {report['seeds']} seed(s) "
            f"per condition ({report['images']['synthetic']} synthetic rows sampled).",
            "",
            "| figure | value |",
            "|---|---|",
            f"| label fidelity (judge agrees with the requested label) | {report['label_fidelity']:.3f} |",
            f"| mean judge confidence in the requested label | {report['confidence']:.3f} |",
            f"| CAS (synthetic-only accuracy / real-only) | {report['cas']:.3f} |",
            f"| Fréchet distance to held-out (judge features) | {report['frechet']:.4g} |",
            f"| Fréchet floor (real train vs held-out) | {report['frechet_floor']:.4g} |",
            f"| Fréchet ratio (1 = as close as real data) | {report['frechet_ratio'] or float('inf'):.2f} |",
            f"| augmentation gain (points) | {100 * report['gain']:+.1f} |",
            "",
            "| downstream training data | accuracy (mean ± half-range) |",
            "|---|---|",
            *[f"| {c} | {100 * mean[c]:.1f} ± {100 * spread[c]:.1f}% |" for c in mean],
            "",
            f"![synthetic images per class beside real held-out ones]({PICTURE})",
            "",
        ]
    if curation:
        lines += [
            f"Curated: a sampled image was kept only when the judge gave its label >= "
            f"{curation['threshold']} (rejected draws were redrawn).",
            "",
            "| class | acceptance rate | kept below threshold |",
            "|---|---|---|",
            *[
                f"| {k} | {v['acceptance_rate']:.3f} | {v['fallback']} |"
                for k, v in curation["per_class"].items()
            ],
            "",
        ]
    return lines


__all__ = [
    "dataset_card",
    "features_yaml",
    "front_matter",
    "preview_section",
    "provenance_section",
    "rows_section",
    "usefulness_section",
]
