"""Output checks and the commit protocol of a synthetic dataset.

Layout of a dataset directory (local path or any fsspec URL):

    data/part-00000-of-00012.parquet ...   shards, deterministic names
    README.md                              dataset card (Hugging Face front matter)
    manifest.json                          files, row counts, per-class counts, schema, provenance
    _SUCCESS                               written last: the dataset is complete

A directory without `_SUCCESS` is uncommitted and readers refuse it. Before any work,
`resolve_output` checks the output (an existing committed dataset is kept unless `if_exists` says
"overwrite" or "new_version") and probes that it is writable; `prepare_output` then removes what
will be replaced (the marker first, so a half-removed dataset never looks committed).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import fsspec
from fsspec import AbstractFileSystem

from pipelines.errors import StorageError
from pipelines.generate.shard import DATA_DIR, ShardStats

MARKER = "_SUCCESS"
MANIFEST = "manifest.json"
CARD = "README.md"
#: Per class: synthetic images beside real held-out ones, with the usefulness report's label fidelity.
PICTURE = "usefulness.png"
#: Entries of a dataset directory that belong to us (anything else there is the user's).
OWN_ENTRIES = (MARKER, MANIFEST, CARD, PICTURE, DATA_DIR)
_VERSION = re.compile(r"^v(\d+)$")
_PROBE_PREFIX = ".vaeaug-write-probe-"


def redact_url(url: str) -> str:
    """`url` without any user:password part (safe for files and logs)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def join(base: str, name: str) -> str:
    """`base/name` for paths and URLs alike."""
    return base.rstrip("/") + "/" + name


@dataclass
class OutputTarget:
    """Where the dataset goes and what must be removed first.

    Args:
        url: the dataset directory as the user sees it (may be a `vN` under the configured output).
        fs: its filesystem.
        root: `url` in `fs`'s notation.
        storage_options: fsspec options (never written anywhere).
        remove: entries of `root` to delete before writing (old or leftover dataset files).
    """

    url: str
    fs: AbstractFileSystem
    root: str
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)
    remove: list[str] = field(default_factory=list)


def open_fs(url: str, storage_options: dict[str, Any] | None = None) -> tuple[AbstractFileSystem, str]:
    """Resolve an output URL to (filesystem, path in its notation), as a `StorageError` on failure."""
    try:
        fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    except (ImportError, ValueError, TypeError) as exc:
        raise StorageError(f"cannot open generate.output {redact_url(url)!r}: {_first_line(exc)}") from None
    return fs, root.rstrip("/") or root


def _names(fs: AbstractFileSystem, root: str) -> list[str]:
    try:
        fs.invalidate_cache(root)
        if not fs.isdir(root):
            return []
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False))
    except FileNotFoundError:
        return []


def is_committed(fs: AbstractFileSystem, root: str) -> bool:
    """Whether `root` holds a committed dataset (its `_SUCCESS` marker exists)."""
    fs.invalidate_cache(root)
    return fs.exists(join(root, MARKER))


def _probe(fs: AbstractFileSystem, root: str, url: str) -> None:
    probe = join(root, f"{_PROBE_PREFIX}{uuid.uuid4().hex}")
    try:
        fs.makedirs(root, exist_ok=True)
        fs.pipe_file(probe, b"ok")
        fs.rm(probe)
    except Exception as exc:  # any backend: PermissionError, botocore errors, NotADirectoryError...
        raise StorageError(
            f"cannot write to generate.output {redact_url(url)!r} "
            f"({type(exc).__name__}: {_first_line(exc)}): check the path, permissions and credentials, "
            "or choose another generate.output"
        ) from None


def resolve_output(url: str, if_exists: str, storage_options: dict[str, Any] | None = None) -> OutputTarget:
    """Decide where to write and check it, without changing anything but a probe file.

    Args:
        url: the configured dataset directory (local path or fsspec URL).
        if_exists: "error", "overwrite" or "new_version" (what to do with a committed dataset there).
        storage_options: fsspec options.

    Returns:
        The `OutputTarget` (a fresh `vN` subdirectory for "new_version" when `url` is committed).

    Raises:
        StorageError: a committed dataset is there and `if_exists` is "error"; the directory holds
            files that are not ours; or it cannot be written.
    """
    fs, root = open_fs(url, storage_options)
    opts = dict(storage_options or {})
    try:
        committed = is_committed(fs, root)
        names = _names(fs, root)
    except Exception as exc:
        raise StorageError(
            f"cannot read generate.output {redact_url(url)!r} ({type(exc).__name__}: {_first_line(exc)}): "
            "check the path and credentials"
        ) from None
    if committed and if_exists == "error":
        raise StorageError(
            f"a committed dataset already exists at {redact_url(url)!r}: set generate.if_exists=overwrite "
            "to replace it, generate.if_exists=new_version to write v2/, v3/... beside it, or choose "
            "another generate.output"
        )
    if committed and if_exists == "new_version":
        taken = [int(m.group(1)) for n in names if (m := _VERSION.match(n))]
        version = f"v{max([1, *taken]) + 1}"
        target = OutputTarget(join(url, version), fs, join(root, version), opts)
        _probe(fs, target.root, target.url)
        return target
    foreign = [
        n for n in names if n not in OWN_ENTRIES and not _VERSION.match(n) and not n.startswith(_PROBE_PREFIX)
    ]
    if foreign:
        raise StorageError(
            f"generate.output {redact_url(url)!r} holds files that are not part of a vaeaug dataset "
            f"(e.g. {foreign[:3]}): choose an empty or new directory"
        )
    target = OutputTarget(url, fs, root, opts, remove=[n for n in OWN_ENTRIES if n in names])
    _probe(fs, root, url)
    return target


def prepare_output(target: OutputTarget) -> None:
    """Remove what `resolve_output` found to replace: the `_SUCCESS` marker first, then the rest.

    Args:
        target: from `resolve_output`.

    Raises:
        StorageError: the files cannot be removed.
    """
    order = sorted(target.remove, key=lambda n: n != MARKER)  # marker first
    for name in order:
        path = join(target.root, name)
        try:
            target.fs.rm(path, recursive=True)
        except FileNotFoundError:
            continue
        except Exception as exc:
            raise StorageError(
                f"cannot remove the old {name!r} in {redact_url(target.url)!r}: {_first_line(exc)}"
            ) from None
    target.fs.invalidate_cache(target.root)


def verify_files(target: OutputTarget, stats: list[ShardStats]) -> None:
    """Check that exactly the shards in `stats` are in `data/`, with the sizes the writers reported.

    Raises:
        StorageError: a shard is missing, has another size, or a foreign file is in `data/`.
    """
    data_dir = join(target.root, DATA_DIR)
    target.fs.invalidate_cache(data_dir)
    try:
        listing = target.fs.ls(data_dir, detail=True)
    except FileNotFoundError:
        listing = []
    sizes = {e["name"].rstrip("/").rsplit("/", 1)[-1]: int(e.get("size") or 0) for e in listing}
    for s in stats:
        name = s.path.rsplit("/", 1)[-1]
        if name not in sizes:
            raise StorageError(
                f"shard {s.path} is missing from {redact_url(target.url)!r}: nothing committed"
            )
        if sizes.pop(name) != s.bytes:
            raise StorageError(
                f"shard {s.path} in {redact_url(target.url)!r} does not have the size its writer reported "
                "(another job writing to the same output?): nothing committed"
            )
    if sizes:
        raise StorageError(
            f"unexpected files in {redact_url(join(target.url, DATA_DIR))!r}: {sorted(sizes)[:3]} "
            "(another job writing to the same output?): nothing committed"
        )


def commit(target: OutputTarget, manifest: dict[str, Any], card: str) -> str:
    """Write the dataset card, the manifest and, last, the `_SUCCESS` marker.

    Args:
        target: the output.
        manifest: JSON-ready manifest (see `pipelines.generate.job`).
        card: README.md text.

    Returns:
        The manifest's URL.
    """
    blob = json.dumps(manifest, indent=2, sort_keys=False).encode()
    marker = {"rows": manifest.get("rows"), "manifest_sha256": _sha256(blob)}
    try:
        target.fs.pipe_file(join(target.root, CARD), card.encode())
        target.fs.pipe_file(join(target.root, MANIFEST), blob)
        target.fs.pipe_file(join(target.root, MARKER), json.dumps(marker).encode())
    except Exception as exc:
        raise StorageError(f"cannot commit {redact_url(target.url)!r}: {_first_line(exc)}") from None
    return join(target.url, MANIFEST)


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


__all__ = [
    "CARD",
    "MANIFEST",
    "MARKER",
    "OWN_ENTRIES",
    "PICTURE",
    "OutputTarget",
    "commit",
    "is_committed",
    "join",
    "open_fs",
    "prepare_output",
    "redact_url",
    "resolve_output",
    "verify_files",
]
