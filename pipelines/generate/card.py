"""The dataset card (README.md) with Hugging Face YAML front matter describing the features."""

from __future__ import annotations

from typing import Any

import yaml


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
    prov = manifest["provenance"]
    files = manifest["files"]
    front = {
        "pretty_name": f"vaeaug synthetic images ({manifest['rows']} rows)",
        "tags": ["synthetic", "vae", "image"],
        "dataset_info": {
            "features": features_yaml(manifest["features"]),
            "splits": [
                {
                    "name": "train",
                    "num_examples": manifest["rows"],
                    "num_bytes": sum(f["bytes"] for f in files),
                }
            ],
        },
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data/*.parquet"}]}],
    }
    c, h, w = manifest["image_shape"]
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).rstrip(),
        "---",
        "",
        "# Synthetic images from a VAE",
        "",
        f"{manifest['rows']} PNG images ({w}x{h}, {c} channel(s)) decoded from latents of dimension "
        f"{manifest['latent_dim']}, in {len(files)} Parquet file(s) under `data/`.",
        "",
        "| method | rows |",
        "|---|---|",
        *[f"| {m} | {n} |" for m, n in manifest["per_method"].items()],
        "",
    ]
    if manifest.get("per_class"):
        lines += [
            "| class | rows |",
            "|---|---|",
            *[f"| {k} | {v} |" for k, v in manifest["per_class"].items()],
        ]
        lines.append("")
    lines += [
        "## Columns",
        "",
        "- `image`: PNG (`struct<bytes, path>`, the `datasets` Image feature)",
        "- `latent`: the z that was decoded (`fixed_size_list<float32>`)",
        "- `label`: class index (null for an unconditional model); names in the features",
        "- `sample_id`: unique and deterministic; `method`: prior, class, variant or interpolation",
        "- `source_id` / `target_id`: the real image(s) a variant or interpolation comes from",
        "",
        "## Provenance",
        "",
        f"- model weights sha256: `{prov['model_sha256']}`",
        f"- seed: {prov['seed']}, job id: `{prov['job_id']}`",
        f"- vaeaug {prov['vaeaug_version']}, torch {prov['torch_version']}",
        f"- created: {manifest['created_at']}",
        "",
        "`manifest.json` lists every file with its row count and sha256; `_SUCCESS` marks the dataset",
        "as complete. Load it with",
        "",
        "```python",
        'datasets.load_dataset("parquet", data_files="<this directory>/data/*.parquet", split="train")',
        "```",
        "",
    ]
    return "\n".join(lines)


__all__ = ["dataset_card", "features_yaml"]
