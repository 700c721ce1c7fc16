"""The synthetic dataset's contract: what the writer (`pipelines.generate`) puts on storage and the
readers (`pipelines.readers`, `vaeaug inspect`) expect there. Both import their names from here.

Layout of a dataset directory (local path or any fsspec URL):

    data/part-00000-of-00012.parquet ...   shards, deterministic names (`shard_path`)
    preview.png                            a grid of the first rows of each class
    usefulness.png                         per class: synthetic beside real held-out (when measured)
    README.md                              dataset card (Hugging Face front matter)
    manifest.json                          files, row counts, per-class counts, schema, provenance
    _SUCCESS                               written last: the dataset is complete

A directory without `_SUCCESS` is uncommitted and readers refuse it. `_SUCCESS` holds
{"rows": N, "manifest_sha256": ...}: a manifest changed after the commit is refused too.

With `generate.if_exists="new_version"` or `"overwrite"` the configured output is a directory of
versions, each a complete dataset as above, beside a pointer to the committed one readers get:

    v1/ v2/ v3/                            complete datasets, never changed once committed
    _LATEST                                {"version": "v3", "rows": ..., "manifest_sha256": ...}
    _LEASE                                 the writer's lease while a job writes (`pipelines.generate.lease`)

`_LATEST` and `_LEASE` start with "_" so Parquet dataset discovery skips them, like `_SUCCESS`.
A version's number is never reused.

Every Parquet file has the columns `COLUMNS`, in that order (Arrow types and Hugging Face features:
`pipelines.generate.schema`), and two schema metadata keys: `huggingface` (the `datasets` features)
and `PROVENANCE_KEY` (the job's provenance, without timestamps or paths).

manifest.json (a JSON object) holds: `format` (`FORMAT`), `format_version` (`FORMAT_VERSION`),
`created_at`, `rows`, `num_shards`, `files` (one {"path", "rows", "bytes", "sha256", "row_groups"}
per shard, paths relative to the dataset directory), `per_class`, `per_method`, `class_names`,
`conditional`, `image_shape` [C, H, W], `image_format` ("png"), `latent_dim`, `row_group_rows`,
`features`, `arrow_schema`, `provenance`, `preview` (`PREVIEW` or {"skipped": why}), `curation` and
`usefulness` (the report, or {"skipped": why}).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields
from typing import Any

from fsspec import AbstractFileSystem

from pipelines.storage import basename, join

#: The `format` of every manifest and of the provenance in the Parquet metadata.
FORMAT = "vaeaug.synthetic"
#: Bumped when readers of the previous version can no longer read a dataset.
FORMAT_VERSION = 1

#: Written last: the dataset is complete ({"rows", "manifest_sha256"}).
MARKER = "_SUCCESS"
MANIFEST = "manifest.json"
CARD = "README.md"
#: Per class: synthetic images beside real held-out ones, with the usefulness report's label fidelity.
PICTURE = "usefulness.png"
#: The first rows of each class as a grid (every dataset; see `pipelines.generate.preview`).
PREVIEW = "preview.png"
#: The folder of the Parquet shards.
DATA_DIR = "data"
#: Entries of a dataset directory that belong to us (anything else there is the user's).
OWN_ENTRIES = (MARKER, MANIFEST, CARD, PICTURE, PREVIEW, DATA_DIR)
#: In a directory of versions: JSON naming the newest committed version (`LatestPointer`).
LATEST = "_LATEST"
#: The writer's lease on an output while a job writes it.
LEASE = "_LEASE"

#: The columns of every shard, in file order.
COLUMNS: tuple[str, ...] = ("image", "latent", "label", "sample_id", "method", "source_id", "target_id")
#: Parquet schema metadata key of the provenance.
PROVENANCE_KEY = b"vaeaug"
#: Parquet schema metadata key of the Hugging Face `datasets` features.
HF_KEY = b"huggingface"

_VERSION = re.compile(r"^v([1-9]\d*)$")


def shard_path(index: int, num_shards: int) -> str:
    """Deterministic file name of shard `index`, relative to the dataset directory.

    Returns:
        "data/part-00003-of-00012.parquet" (at least 5 digits, more when `num_shards` needs them).
    """
    width = max(5, len(str(num_shards)))
    return f"{DATA_DIR}/part-{index:0{width}d}-of-{num_shards:0{width}d}.parquet"


def version_name(number: int) -> str:
    """The directory name of version `number` ("v3")."""
    return f"v{number}"


def version_number(name: str) -> int | None:
    """N of a version directory's name "vN" (N >= 1), else None."""
    m = _VERSION.match(name)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class LatestPointer:
    """The content of `_LATEST`: the newest committed version of a directory of versions.

    Args:
        version: the version directory's name ("v3"), relative to the pointer's directory.
        rows: rows of that version.
        manifest_sha256: sha256 of its manifest.json (as in its `_SUCCESS` marker).
        committed_at: when the pointer was moved there (UTC, ISO 8601).
    """

    version: str
    rows: int
    manifest_sha256: str
    committed_at: str = ""

    def to_json(self) -> bytes:
        """The pointer file's bytes."""
        return json.dumps(
            {
                "version": self.version,
                "rows": self.rows,
                "manifest_sha256": self.manifest_sha256,
                "committed_at": self.committed_at,
            }
        ).encode()

    @classmethod
    def from_json(cls, blob: bytes) -> LatestPointer:
        """Parse a pointer file.

        Raises:
            ValueError: not JSON, or no valid version name (only `vN` is accepted: never a path).
        """
        data = json.loads(blob)
        version = data.get("version") if isinstance(data, dict) else None
        if not isinstance(version, str) or version_number(version) is None:
            raise ValueError(f"no valid version in {blob[:80]!r}")
        return cls(version, int(data.get("rows") or 0), str(data.get("manifest_sha256") or ""),
                   str(data.get("committed_at") or ""))  # fmt: skip


@dataclass(frozen=True)
class DatasetSummary:
    """A committed dataset as a run reports it, whether this process wrote it or a Ray Job did.

    The generation driver's `GenerateResult` extends it with how the writing went; a dataset read
    back from storage gives it from its manifest (`from_manifest`).

    Args:
        dataset_dir: the committed dataset directory (a version's, `.../vN`, for "new_version").
        rows: rows committed.
        files: the Parquet files, as URLs.
        per_class: rows per class name (empty for an unconditional model).
        per_method: rows per generation method.
        manifest_path: URL of its manifest.json.
        rows_per_s: the writing rate; None when it was read back (a Ray Job's log has the rate).
        usefulness: the usefulness report (`UsefulnessReport.to_dict()`), None when not measured.
        usefulness_note: why there is no report, when there is none.
        curation: per-class acceptance of the curated rows (empty without curation).
        picture_path: URL of the per-class usefulness picture, or None.
        preview_path: URL of the preview grid, or None.
    """

    dataset_dir: str
    rows: int
    files: list[str]
    per_class: dict[str, int]
    per_method: dict[str, int]
    manifest_path: str
    rows_per_s: float | None
    usefulness: dict[str, Any] | None
    usefulness_note: str | None
    curation: dict[str, Any]
    picture_path: str | None
    preview_path: str | None

    @classmethod
    def of(cls, summary: DatasetSummary) -> DatasetSummary:
        """Just the summary of `summary` (e.g. of a `GenerateResult`, without the writing's figures)."""
        return cls(**{f.name: getattr(summary, f.name) for f in fields(cls)})

    @classmethod
    def from_manifest(cls, url: str, rows: int, files: list[str], manifest: dict[str, Any]) -> DatasetSummary:
        """The summary of the committed dataset at `url`, from its manifest (`manifest.json`'s content)."""
        usefulness = manifest.get("usefulness") or {}
        measured = "headline" in usefulness  # the writer draws the picture whenever it measures
        return cls(
            dataset_dir=url,
            rows=rows,
            files=files,
            per_class=dict(manifest.get("per_class") or {}),
            per_method=dict(manifest.get("per_method") or {}),
            manifest_path=join(url, MANIFEST),
            rows_per_s=None,
            usefulness=usefulness if measured else None,
            usefulness_note=usefulness.get("skipped"),
            curation=manifest.get("curation") or {},
            picture_path=join(url, PICTURE) if measured else None,
            preview_path=join(url, PREVIEW) if manifest.get("preview") == PREVIEW else None,
        )

    def to_dict(self) -> dict[str, Any]:
        """The summary's fields as a plain dict (their names are the flow summary's keys)."""
        return {f.name: getattr(self, f.name) for f in fields(DatasetSummary)}

    def pictures(self) -> dict[str, str]:
        """The dataset's pictures by what they show (those it has)."""
        found = {"dataset preview": self.preview_path, "usefulness per class": self.picture_path}
        return {k: v for k, v in found.items() if v}


def list_entries(fs: AbstractFileSystem, root: str) -> list[str]:
    """The names directly under `root`, sorted ([] when it is not a directory)."""
    try:
        fs.invalidate_cache(root)
        if not fs.isdir(root):
            return []
        return sorted(basename(p) for p in fs.ls(root, detail=False))
    except FileNotFoundError:
        return []


def list_versions(fs: AbstractFileSystem, root: str) -> list[str]:
    """The version directories ("v1", "v2", ...) directly under `root`, in number order (committed
    or not)."""
    names = [n for n in list_entries(fs, root) if version_number(n) is not None]
    return sorted(names, key=lambda n: version_number(n) or 0)


def read_latest(fs: AbstractFileSystem, root: str) -> LatestPointer | None:
    """The `_LATEST` pointer under `root`, or None when there is none.

    Raises:
        ValueError: the pointer exists but cannot be parsed.
    """
    try:
        blob = fs.cat_file(join(root, LATEST))
    except FileNotFoundError:
        return None
    return LatestPointer.from_json(blob)


def is_committed(fs: AbstractFileSystem, root: str) -> bool:
    """Whether `root` holds a committed dataset (its `_SUCCESS` marker exists)."""
    fs.invalidate_cache(root)
    return fs.exists(join(root, MARKER))


__all__ = [
    "CARD",
    "COLUMNS",
    "DATA_DIR",
    "FORMAT",
    "FORMAT_VERSION",
    "HF_KEY",
    "LATEST",
    "LEASE",
    "MANIFEST",
    "MARKER",
    "OWN_ENTRIES",
    "PICTURE",
    "PREVIEW",
    "PROVENANCE_KEY",
    "DatasetSummary",
    "LatestPointer",
    "is_committed",
    "list_entries",
    "list_versions",
    "read_latest",
    "shard_path",
    "version_name",
    "version_number",
]
