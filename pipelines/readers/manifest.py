"""Opening a committed synthetic dataset: the `_SUCCESS` check and its manifest."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import fsspec
from fsspec import AbstractFileSystem

from pipelines.errors import DataError
from pipelines.generate.commit import MANIFEST, MARKER, join, redact_url


@dataclass
class SyntheticManifest:
    """A committed dataset: where it is and what its manifest says.

    Args:
        url: the dataset directory (local path or fsspec URL).
        storage_options: fsspec options used to open it.
        data: the parsed manifest.json.
    """

    url: str
    storage_options: dict[str, Any] = field(repr=False)
    data: dict[str, Any] = field(repr=False)

    @property
    def rows(self) -> int:
        """Total rows."""
        return int(self.data["rows"])

    @property
    def files(self) -> list[str]:
        """The Parquet files as URLs (what `datasets`, Ray Data, pandas and pyarrow take)."""
        return [join(self.url, f["path"]) for f in self.data["files"]]

    @property
    def file_rows(self) -> list[int]:
        """Rows per file, in `files` order."""
        return [int(f["rows"]) for f in self.data["files"]]

    @property
    def row_groups(self) -> list[int]:
        """Row groups per file, in `files` order."""
        return [int(f["row_groups"]) for f in self.data["files"]]

    @property
    def class_names(self) -> list[str]:
        """Class names in label order (empty if none were recorded)."""
        return list(self.data.get("class_names") or [])

    @property
    def latent_dim(self) -> int:
        """Length of the `latent` vectors."""
        return int(self.data["latent_dim"])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images."""
        c, h, w = self.data["image_shape"]
        return (int(c), int(h), int(w))

    @property
    def provenance(self) -> dict[str, Any]:
        """Model checksum, seed, config, versions and creation time."""
        return dict(self.data.get("provenance") or {})

    def filesystem(self) -> tuple[AbstractFileSystem, str]:
        """A filesystem for the dataset and its root in that filesystem's notation."""
        fs, root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        return fs, root.rstrip("/") or root


def open_dataset(path: str, storage_options: dict[str, Any] | None = None) -> SyntheticManifest:
    """Open a synthetic dataset, refusing one that is not committed.

    Args:
        path: the dataset directory (local path or fsspec URL: s3://, gs://, memory://...).
        storage_options: fsspec options (credentials are taken from the environment/profile otherwise).

    Returns:
        The dataset's `SyntheticManifest`.

    Raises:
        DataError: nothing at `path`, no `_SUCCESS` marker (incomplete: the writing job did not
            finish), or a manifest that does not match the marker.
    """
    opts = dict(storage_options or {})
    shown = redact_url(path)
    try:
        fs, root = fsspec.core.url_to_fs(path, **opts)
        root = root.rstrip("/") or root
        fs.invalidate_cache(root)
        has_marker = fs.exists(join(root, MARKER))
        has_manifest = has_marker and fs.exists(join(root, MANIFEST))
    except (ImportError, ValueError, TypeError, OSError) as exc:
        raise DataError(f"cannot open the synthetic dataset {shown!r}: {exc}") from None
    if not has_marker:
        if fs.exists(root):
            raise DataError(
                f"the synthetic dataset at {shown!r} is incomplete (no {MARKER} marker): the job that "
                "wrote it did not finish or is still running; re-run the generation"
            )
        raise DataError(f"no synthetic dataset at {shown!r}: check the path or URL")
    if not has_manifest:
        raise DataError(f"the synthetic dataset at {shown!r} has no {MANIFEST}: re-run the generation")
    blob = fs.cat_file(join(root, MANIFEST))
    try:
        marker = json.loads(fs.cat_file(join(root, MARKER)) or b"{}")
        data = json.loads(blob)
    except json.JSONDecodeError as exc:
        raise DataError(f"corrupt manifest or marker in {shown!r}: {exc}") from None
    expected = marker.get("manifest_sha256")
    if expected and expected != hashlib.sha256(blob).hexdigest():
        raise DataError(
            f"the manifest of {shown!r} does not match its {MARKER} marker (changed after the commit?): "
            "re-run the generation"
        )
    return SyntheticManifest(url=path, storage_options=opts, data=data)


__all__ = ["SyntheticManifest", "open_dataset"]
