"""`vaeaug inspect`: a committed dataset's manifest, counts, schema and quality figures.

`dataset_description(path)` gathers them in a `DatasetDescription` (`to_dict()` for `vaeaug inspect --json`);
`render_description` turns one into the text `vaeaug inspect` prints; `describe_dataset` does both.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from pipelines.data.decode import decode_png
from pipelines.errors import DataError
from pipelines.readers import SyntheticManifest, open_dataset
from pipelines.readers.manifest import listed_sizes
from pipelines.storage import first_line, join, redact_url

SAMPLE_ROWS = 2048
#: Class names shown on the label's schema line before "... (N more)".
NAMES_SHOWN = 20
#: Provenance keys a description keeps (the full config and model config stay in the manifest).
PROVENANCE_KEYS = ("model_sha256", "seed", "vaeaug_version", "torch_version", "model_dir", "job_id")
#: Problems named in the one-line error about a damaged dataset before "and N more".
PROBLEMS_SHOWN = 5
#: What reading a damaged Parquet file or PNG can raise (pyarrow, fsspec, torchvision's decoder).
_READ_ERRORS = (pa.ArrowException, OSError, ValueError, KeyError, RuntimeError, StopIteration)


@dataclass
class SchemaColumn:
    """One top-level column of the dataset's Arrow schema.

    Args:
        name: the column name.
        type: its Arrow type as Arrow writes it ("int64", "struct<bytes: binary, path: string>").
        nullable: whether it may hold nulls.
        class_names: the Hugging Face `ClassLabel` names of a label column (index = label), else None.
    """

    name: str
    type: str
    nullable: bool = True
    class_names: list[str] | None = None


@dataclass
class DatasetDescription:
    """What `vaeaug inspect` reports about a committed dataset.

    Args:
        dataset: the dataset directory (credentials removed from URLs).
        created_at: the commit time recorded in the manifest (None if absent).
        rows: total rows.
        files: the Parquet files as URLs.
        image_shape: (C, H, W) of the images.
        image_format: the image encoding ("png").
        latent_dim: length of the `latent` vectors.
        class_names: class names in label order (empty: unconditional).
        per_class: rows per class name.
        per_method: rows per sampling method ("prior", "class", "variant", "interpolation").
        schema: the top-level columns, the label's class names included.
        provenance: the model's sha256, seed, versions, model directory and job id.
        quality: figures from a sample of the first file (see `sample_quality`).
        model_training: the last epoch of the model's `metrics.json`, when readable.
        usefulness: the manifest's usefulness report (`headline`, figures) or `{"skipped": why}`.
        curation: the manifest's curation summary (empty when curation was off).
        preview: URL of the dataset's preview image, when the manifest names one.
    """

    dataset: str
    created_at: str | None
    rows: int
    files: list[str]
    image_shape: tuple[int, int, int]
    image_format: str
    latent_dim: int
    class_names: list[str]
    per_class: dict[str, int]
    per_method: dict[str, int]
    schema: list[SchemaColumn]
    provenance: dict[str, Any]
    quality: dict[str, float]
    model_training: dict[str, float] | None = None
    usefulness: dict[str, Any] | None = None
    curation: dict[str, Any] = field(default_factory=dict)
    preview: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples as lists)."""
        out = dataclasses.asdict(self)
        out["image_shape"] = list(self.image_shape)
        return out


def sample_quality(path: str, storage_options: dict[str, Any] | None = None) -> dict[str, float]:
    """Figures from the first rows of the first file: pixel mean, latent statistics of prior rows
    (close to mean 0, std = temperature when the sampler is right), and the share of duplicate images.

    Args:
        path: the committed dataset.
        storage_options: fsspec options.

    Returns:
        rows_sampled, pixel_mean, duplicate_fraction, prior_latent_mean, prior_latent_std.
    """
    return _sample_quality(open_dataset(path, storage_options))


def _sample_quality(manifest: SyntheticManifest) -> dict[str, float]:
    fs, root = manifest.filesystem()
    first = join(root, manifest.data["files"][0]["path"])
    try:
        with fs.open(first, "rb") as f:
            pf = pq.ParquetFile(f)
            table = next(pf.iter_batches(batch_size=SAMPLE_ROWS, columns=["image", "latent", "method"]))
        pngs = [row["bytes"] for row in table.column("image").to_pylist()]
        pixels = np.stack([decode_png(b).numpy() for b in pngs[:256]])  # (n, C, H, W) in [0, 1]
    except _READ_ERRORS as exc:  # a footer that parses over damaged pages or PNGs
        raise DataError(
            f"cannot read the first rows of {redact_url(manifest.files[0])!r} ({type(exc).__name__}: "
            f"{first_line(exc)}): the file is damaged; re-run the generation"
        ) from None
    latents = np.stack(table.column("latent").to_numpy(zero_copy_only=False))  # (n, D)
    prior = latents[np.asarray(table.column("method").to_pylist()) == "prior"]
    unique = len({hashlib.sha256(b).digest() for b in pngs})
    out = {
        "rows_sampled": float(len(pngs)),
        "pixel_mean": float(pixels.mean()),
        "duplicate_fraction": 1.0 - unique / len(pngs),
    }
    if len(prior):
        out["prior_latent_mean"] = float(prior.mean())
        out["prior_latent_std"] = float(prior.std(axis=0).mean())
    return out


def file_problems(manifest: SyntheticManifest) -> list[str]:
    """Every data file checked against the manifest: present, of its recorded size, with a Parquet
    footer that parses and counts the recorded rows (one listing per folder, one footer read per file).

    Args:
        manifest: the opened dataset.

    Returns:
        One short line per damaged file ("data/part-00001-of-00004.parquet has 100 bytes, the
        manifest says 5120"); empty when every file matches.
    """
    fs, root = manifest.filesystem()
    entries = list(manifest.data.get("files") or [])
    sizes = listed_sizes(fs, root, [str(entry.get("path")) for entry in entries])
    problems = [_file_problem(fs, root, entry, sizes) for entry in entries]
    return [problem for problem in problems if problem is not None]


def _file_problem(
    fs: AbstractFileSystem, root: str, entry: dict[str, Any], sizes: dict[str, int]
) -> str | None:
    """What is wrong with one manifest file entry, or None."""
    rel = str(entry.get("path"))
    have, want = sizes.get(rel), entry.get("bytes")
    if have is None:
        return f"{rel} is missing"
    if want is not None and have != int(want):
        return f"{rel} has {have} bytes, the manifest says {want}"
    try:
        with fs.open(join(root, rel), "rb") as f:
            rows = pq.ParquetFile(f).metadata.num_rows
    except _READ_ERRORS as exc:
        return f"{rel} has no readable Parquet footer ({first_line(exc)})"
    if "rows" in entry and rows != int(entry["rows"]):
        return f"{rel} holds {rows} rows, the manifest says {entry['rows']}"
    return None


def damaged_error(path: str, problems: list[str]) -> DataError:
    """The one-line error naming a damaged dataset's problems (the first `PROBLEMS_SHOWN` of them)."""
    shown = "; ".join(problems[:PROBLEMS_SHOWN])
    more = f"; and {len(problems) - PROBLEMS_SHOWN} more" if len(problems) > PROBLEMS_SHOWN else ""
    return DataError(
        f"the synthetic dataset {redact_url(path)!r} is damaged ({len(problems)} file(s)): {shown}{more}: "
        "re-run the generation (or restore the files from a copy)"
    )


def _model_metrics(model_dir: str | None) -> dict[str, float] | None:
    if not model_dir:
        return None
    from pipelines.training.export import MODEL_METRICS_FILE  # here: the exporter pulls in matplotlib

    try:
        with fsspec.open(join(model_dir, MODEL_METRICS_FILE), "rb") as f:
            history = json.loads(f.read())
    except (OSError, ValueError, ImportError):
        return None
    return history[-1] if history else None


def schema_columns(manifest: dict[str, Any]) -> list[SchemaColumn]:
    """The top-level columns of a manifest's `arrow_schema` text, with the label's class names from
    its Hugging Face `features` (`ClassLabel` names) or, for older manifests, its `class_names`.
    """
    features = manifest.get("features") or {}
    columns = []
    for line in str(manifest.get("arrow_schema", "")).splitlines():
        if not line or line.startswith(" ") or ": " not in line:
            continue  # nested children ("  child 0, bytes: binary") and metadata
        name, _, arrow_type = line.partition(": ")
        nullable = not arrow_type.endswith(" not null")
        arrow_type = arrow_type.removesuffix(" not null")
        feature = features.get(name) or {}
        names = feature.get("names") if feature.get("_type") == "ClassLabel" else None
        if names is None and name == "label" and not features and manifest.get("class_names"):
            names = manifest["class_names"]
        columns.append(SchemaColumn(name, arrow_type, nullable, list(names) if names else None))
    return columns


def dataset_description(path: str, storage_options: dict[str, Any] | None = None) -> DatasetDescription:
    """Describe a committed synthetic dataset.

    Args:
        path: the dataset directory (local path or fsspec URL); an uncommitted one is refused.
        storage_options: fsspec options.

    Returns:
        Its `DatasetDescription` (reads the manifest, every file's footer, a sample of the first file
        and the model's metrics when its directory is reachable).

    Raises:
        DataError: no committed dataset at `path`, or damaged files: one line naming every missing,
            truncated or unreadable file (see `file_problems`).
    """
    manifest = open_dataset(path, storage_options)
    problems = file_problems(manifest)
    if problems:
        raise damaged_error(path, problems)
    m = manifest.data
    prov = manifest.provenance
    preview = m.get("preview")
    return DatasetDescription(
        dataset=redact_url(path),
        created_at=m.get("created_at"),
        rows=manifest.rows,
        files=[redact_url(u) for u in manifest.files],
        image_shape=manifest.image_shape,
        image_format=str(m.get("image_format", "png")),
        latent_dim=manifest.latent_dim,
        class_names=manifest.class_names,
        per_class=dict(m.get("per_class") or {}),
        per_method=dict(m.get("per_method") or {}),
        schema=schema_columns(m),
        provenance={k: prov.get(k) for k in PROVENANCE_KEYS if k in prov},
        quality=_sample_quality(manifest),
        model_training=_model_metrics(prov.get("model_dir")),
        usefulness=m.get("usefulness") or None,
        curation=dict(m.get("curation") or {}),
        preview=redact_url(join(path, preview)) if preview else None,
    )


def _counts(counts: dict[str, int] | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in (counts or {}).items())


def _names(names: list[str]) -> str:
    shown = ", ".join(f"{i}={n}" for i, n in enumerate(names[:NAMES_SHOWN]))
    more = len(names) - NAMES_SHOWN
    return shown + (f", ... ({more} more)" if more > 0 else "")


def _schema_line(column: SchemaColumn) -> str:
    line = f"  {column.name}: {column.type}" + ("" if column.nullable else " not null")
    if column.class_names:
        line += f"  (class label, {len(column.class_names)} classes: {_names(column.class_names)})"
    return line


def _usefulness_line(usefulness: dict[str, Any] | None) -> str | None:
    if not usefulness:
        return None
    if usefulness.get("headline"):
        return f"usefulness {usefulness['headline']}"
    if usefulness.get("skipped"):
        return f"usefulness not measured: {usefulness['skipped']}"
    return None


def render_description(d: DatasetDescription) -> str:
    """The text `vaeaug inspect` prints: location, rows/files, per-class and per-method counts,
    provenance, preview image, usefulness headline, schema (with class names), quality figures.
    """
    c, h, w = d.image_shape
    prov = d.provenance
    lines = [
        f"dataset   {d.dataset}  (committed {d.created_at or '?'})",
        f"rows      {d.rows} in {len(d.files)} files, images {h}x{w}x{c} {d.image_format.upper()}, "
        f"latent_dim {d.latent_dim}",
        "per class " + (_counts(d.per_class) or "(unconditional)"),
        "methods   " + _counts(d.per_method),
        f"model     sha256 {str(prov.get('model_sha256', '?'))[:16]}  seed {prov.get('seed')}  "
        f"vaeaug {prov.get('vaeaug_version')}  torch {prov.get('torch_version')}",
    ]
    if d.preview:
        lines.append(f"preview   {d.preview}")
    usefulness = _usefulness_line(d.usefulness)
    if usefulness:
        lines.append(usefulness)
    lines += ["schema", *map(_schema_line, d.schema), "quality (sample of the first file)"]
    lines += [f"  {key:<20} {value:.4g}" for key, value in d.quality.items()]
    if d.model_training:
        lines.append("model training (last epoch)")
        for key in ("epoch", "train_loss", "val_loss", "val_recon", "val_kl"):
            if key in d.model_training:
                lines.append(f"  {key:<20} {d.model_training[key]:.4g}")
    return "\n".join(lines)


def describe_dataset(path: str, storage_options: dict[str, Any] | None = None) -> str:
    """A human-readable description of a committed synthetic dataset (what `vaeaug inspect` prints).

    Args:
        path: the dataset directory (local path or fsspec URL); an uncommitted one is refused.
        storage_options: fsspec options.

    Returns:
        Multi-line text: location, rows/files, per-class and per-method counts, provenance, preview,
        usefulness headline, schema, quality figures.
    """
    return render_description(dataset_description(path, storage_options))
