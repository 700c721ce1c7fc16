"""The Arrow/Parquet schema of a synthetic dataset, in the Hugging Face `datasets` layout.

One row per image:

| column      | Arrow type                           | meaning                                           |
|-------------|--------------------------------------|---------------------------------------------------|
| `image`     | struct<bytes: binary, path: string>  | the PNG (`path` is "<sample_id>.png")             |
| `latent`    | fixed_size_list<float32>[latent_dim] | the z that was decoded                            |
| `label`     | int64 (null when unconditional)      | class index into the recorded class names         |
| `sample_id` | string                               | unique, deterministic: "<job id>-<row number>"    |
| `method`    | string                               | "prior", "class", "variant" or "interpolation"    |
| `source_id` | string (nullable)                    | the real image a variant / interpolation starts at |
| `target_id` | string (nullable)                    | the real image an interpolation ends at           |

The columns are `pipelines.dataset_format.COLUMNS`. The schema metadata holds `huggingface` (the
`datasets` features, so `load_dataset("parquet")` gives PIL images, fixed-length latents and class
names) and `vaeaug` (provenance). Provenance in the files has no timestamps or paths, so the same job
always writes the same bytes; the creation time lives in the manifest.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from pipelines.dataset_format import HF_KEY, PROVENANCE_KEY

#: Uncompressed bytes aimed at per row group (Hugging Face aims at ~100 MB; smaller keeps the
#: memory of streaming readers and of the writer's buffer low).
ROW_GROUP_TARGET_BYTES = 64 * 1024 * 1024
#: Columns compressed with zstd; the PNG bytes are already compressed and stored as they are.
COMPRESSION: dict[str, str] = {
    "image.bytes": "none",
    "image.path": "zstd",
    "latent.list.element": "zstd",
    "label": "zstd",
    "sample_id": "zstd",
    "method": "zstd",
    "source_id": "zstd",
    "target_id": "zstd",
}

IMAGE_TYPE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])


def hf_features(latent_dim: int, class_names: list[str]) -> dict[str, Any]:
    """The `datasets.Features` of the dataset, as the dict `Features.to_dict()` gives.

    Args:
        latent_dim: length of the latent vectors.
        class_names: class names in label order (empty: labels are plain integers).

    Returns:
        A JSON-ready features dict.
    """
    label: dict[str, Any] = (
        {"names": list(class_names), "_type": "ClassLabel"}
        if class_names
        else {"dtype": "int64", "_type": "Value"}
    )
    string = {"dtype": "string", "_type": "Value"}
    return {
        "image": {"_type": "Image"},
        "latent": {"feature": {"dtype": "float32", "_type": "Value"}, "length": latent_dim, "_type": "List"},
        "label": label,
        "sample_id": dict(string),
        "method": dict(string),
        "source_id": dict(string),
        "target_id": dict(string),
    }


def arrow_schema(latent_dim: int, class_names: list[str], provenance: dict[str, Any]) -> pa.Schema:
    """The schema every shard is written with.

    Args:
        latent_dim: length of the latent vectors.
        class_names: class names in label order.
        provenance: JSON-ready facts stored under the `vaeaug` metadata key (no timestamps or
            paths: they would make re-runs differ byte for byte).

    Returns:
        The Arrow schema with `huggingface` and `vaeaug` metadata.
    """
    hf = {"info": {"features": hf_features(latent_dim, class_names)}}
    fields = [
        pa.field("image", IMAGE_TYPE),
        pa.field("latent", pa.list_(pa.float32(), latent_dim)),
        pa.field("label", pa.int64()),
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("method", pa.string(), nullable=False),
        pa.field("source_id", pa.string()),
        pa.field("target_id", pa.string()),
    ]
    metadata = {
        HF_KEY: json.dumps(hf, sort_keys=True).encode(),
        PROVENANCE_KEY: json.dumps(provenance, sort_keys=True).encode(),
    }
    return pa.schema(fields, metadata=metadata)


def row_group_rows(image_shape: tuple[int, int, int], latent_dim: int, shard_size: int) -> int:
    """Rows per Parquet row group, sized for the images.

    Args:
        image_shape: (C, H, W); a PNG is bounded by roughly the raw pixel bytes.
        latent_dim: floats per latent.
        shard_size: rows per file (a row group never spans files).

    Returns:
        About `ROW_GROUP_TARGET_BYTES` worth of rows, at least 1 and at most `shard_size`.
    """
    c, h, w = image_shape
    row_bytes = c * h * w + h * 8 + 4 * latent_dim + 128  # pixels + PNG framing + latent + ids
    return max(1, min(shard_size, ROW_GROUP_TARGET_BYTES // row_bytes))


__all__ = [
    "COMPRESSION",
    "IMAGE_TYPE",
    "ROW_GROUP_TARGET_BYTES",
    "arrow_schema",
    "hf_features",
    "row_group_rows",
]
