"""Opening a committed synthetic dataset: the `_SUCCESS` check, its manifest, the `_LATEST` pointer
of a directory of versions, and the data files checked against the manifest (sizes always,
checksums on request)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from fsspec import AbstractFileSystem

from pipelines.dataset_format import LATEST, MANIFEST, MARKER, list_versions, read_latest
from pipelines.errors import DataError
from pipelines.storage import basename, join, open_url, redact_url


@dataclass
class SyntheticManifest:
    """A committed dataset: where it is and what its manifest says.

    Args:
        url: the dataset directory (local path or fsspec URL); a version's (`.../v3`) when it was
            opened through a `_LATEST` pointer.
        storage_options: fsspec options used to open it.
        data: the parsed manifest.json.
        latest_of: the directory of versions whose `_LATEST` pointer led here, else None.
    """

    url: str
    storage_options: dict[str, Any] = field(repr=False)
    data: dict[str, Any] = field(repr=False)
    latest_of: str | None = None

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
        return open_url(self.url, self.storage_options)


Verify = Literal["size", "sha256", "none"]


def open_dataset(
    path: str, storage_options: dict[str, Any] | None = None, verify: Verify = "size"
) -> SyntheticManifest:
    """Open a synthetic dataset, refusing one that is not committed or whose files do not match.

    `path` is a dataset directory, or a directory of versions (written with
    `generate.if_exists=new_version` or `overwrite`): its `_LATEST` pointer is followed to the
    committed version it names, whose URL the returned manifest carries (`path/vN` opens version N
    itself).

    Args:
        path: the dataset directory (local path or fsspec URL: s3://, gs://, memory://...).
        storage_options: fsspec options (credentials are taken from the environment/profile otherwise).
        verify: "size" (default: one listing; every file must have the manifest's size), "sha256"
            (also read every file and compare its checksum: slow on large sets), or "none".

    Returns:
        The dataset's `SyntheticManifest`.

    Raises:
        DataError: nothing at `path`, no `_SUCCESS` marker (incomplete: the writing job did not
            finish), a manifest that does not match the marker, a data file missing or unlike the
            manifest, or a `_LATEST` pointer that is unreadable or names a version that is missing,
            uncommitted or not the one it recorded.
    """
    opts = dict(storage_options or {})
    shown = redact_url(path)
    try:
        fs, root = open_url(path, opts)
        fs.invalidate_cache(root)
        # The pointer first: an "overwrite" of an unversioned dataset names its new version before
        # it deletes the old root files.
        has_latest = fs.exists(join(root, LATEST))
        has_marker = not has_latest and fs.exists(join(root, MARKER))
        versions = [] if has_marker or has_latest else list_versions(fs, root)
    except (ImportError, ValueError, TypeError, OSError) as exc:
        raise DataError(f"cannot open the synthetic dataset {shown!r}: {exc}") from None
    if has_latest:
        manifest = _follow_latest(fs, root, path, opts)
        verify_dataset_files(manifest, verify)
        return manifest
    if versions:
        raise DataError(
            f"{shown!r} holds versions ({', '.join(versions[-3:])}) but no {LATEST} pointer to the newest "
            f"committed one: open one directly ({join(shown, versions[-1])!r}), or run with "
            "generate.if_exists=new_version to add a version and the pointer"
        )
    manifest = _open_committed(fs, root, path, opts)
    verify_dataset_files(manifest, verify)
    return manifest


def verify_dataset_files(manifest: SyntheticManifest, verify: Verify = "size") -> None:
    """Check the data files against the manifest: present, of the recorded size, and (for
    "sha256") of the recorded checksum.

    Raises:
        DataError: one line naming the first file that does not match, and the fix.
    """
    if verify == "none":
        return
    fs, root = manifest.filesystem()
    shown = redact_url(manifest.url)
    fix = "the dataset was changed or damaged after its commit; re-run the generation"
    sizes = listed_sizes(fs, root, [f["path"] for f in manifest.data["files"]])
    for f in manifest.data["files"]:
        rel, want = f["path"], int(f["bytes"])
        have = sizes.get(rel)
        if have is None:
            raise DataError(f"{rel} of the synthetic dataset {shown!r} is missing: {fix}")
        if have != want:
            raise DataError(
                f"{rel} of the synthetic dataset {shown!r} has {have} bytes, its manifest says {want}: {fix}"
            )
        if verify == "sha256" and hashlib.sha256(fs.cat_file(join(root, rel))).hexdigest() != f["sha256"]:
            raise DataError(
                f"{rel} of the synthetic dataset {shown!r} does not match its manifest's sha256: {fix}"
            )


def listed_sizes(fs: AbstractFileSystem, root: str, rels: list[str]) -> dict[str, int]:
    """Size of every file in the folders holding `rels` (paths relative to `root`), keyed by path
    relative to `root`: one listing per folder, whatever the number of files."""
    sizes: dict[str, int] = {}
    for folder in sorted({rel.rsplit("/", 1)[0] if "/" in rel else "" for rel in rels}):
        base = join(root, folder) if folder else root
        fs.invalidate_cache(base)
        try:
            listed = fs.ls(base, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            listed = []
        for item in listed:
            name = basename(str(item["name"]))
            sizes[f"{folder}/{name}" if folder else name] = int(item.get("size") or 0)
    return sizes


def _follow_latest(fs: AbstractFileSystem, root: str, path: str, opts: dict[str, Any]) -> SyntheticManifest:
    """The version `root`'s `_LATEST` names, checked against the pointer."""
    shown = redact_url(path)
    try:
        pointer = read_latest(fs, root)
    except (ValueError, TypeError) as exc:  # not JSON, or no valid version in it
        raise DataError(
            f"the {LATEST} pointer of {shown!r} is unreadable ({exc}): open a version directly "
            f"({join(shown, 'vN')!r}) or re-run with generate.if_exists=new_version to rewrite it"
        ) from None
    if pointer is None:  # removed between the two looks
        raise DataError(f"the {LATEST} pointer of {shown!r} disappeared while reading it: try again")
    version_url, version_root = join(path, pointer.version), join(root, pointer.version)
    fix = "open a committed version directly or re-run with generate.if_exists=new_version"
    if not fs.exists(join(version_root, MARKER)):
        raise DataError(
            f"the {LATEST} pointer of {shown!r} names {pointer.version}, which is missing or not "
            f"committed (no {MARKER}): {fix}"
        )
    manifest = _open_committed(fs, version_root, version_url, opts)
    blob = fs.cat_file(join(version_root, MANIFEST))
    if pointer.manifest_sha256 and pointer.manifest_sha256 != hashlib.sha256(blob).hexdigest():
        raise DataError(
            f"the {LATEST} pointer of {shown!r} does not match the manifest of {pointer.version} "
            f"(changed after the commit?): {fix}"
        )
    manifest.latest_of = path
    return manifest


def _open_committed(fs: AbstractFileSystem, root: str, path: str, opts: dict[str, Any]) -> SyntheticManifest:
    """The committed dataset at `root` (`path` as the user gave it), its marker and manifest checked."""
    shown = redact_url(path)
    try:
        has_marker = fs.exists(join(root, MARKER))
        has_manifest = has_marker and fs.exists(join(root, MANIFEST))
        exists = has_marker or fs.exists(root)
    except OSError as exc:
        raise DataError(f"cannot open the synthetic dataset {shown!r}: {exc}") from None
    if not has_marker:
        if exists:
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


__all__ = ["SyntheticManifest", "Verify", "listed_sizes", "open_dataset", "verify_dataset_files"]
