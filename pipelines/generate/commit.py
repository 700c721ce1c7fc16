"""Output checks and the commit protocol of a synthetic dataset.

Layout of a dataset directory (local path or any fsspec URL):

    data/part-00000-of-00012.parquet ...   shards, deterministic names
    preview.png                            a grid of the first rows of each class
    README.md                              dataset card (Hugging Face front matter)
    manifest.json                          files, row counts, per-class counts, schema, provenance
    _SUCCESS                               written last: the dataset is complete

A directory without `_SUCCESS` is uncommitted and readers refuse it. Before any work,
`resolve_output` checks the output (an existing committed dataset is kept unless `if_exists` says
"overwrite" or "new_version") and probes that it is writable; `prepare_output` then removes what
will be replaced (the marker first, so a half-removed dataset never looks committed).

With `if_exists="new_version"` the configured output is a directory of versions, each a complete
dataset as above, beside a pointer to the newest committed one:

    v1/ v2/ v3/                            complete datasets, never changed once committed
    _LATEST                                {"version": "v3", "rows": ..., "manifest_sha256": ...}

`_LATEST` is written after the version's `_SUCCESS`, so it only ever names a committed version;
readers opening the output follow it (`pipelines.readers.open_dataset`). Its name starts with "_"
so Parquet dataset discovery skips it, like `_SUCCESS`. A version directory left without
`_SUCCESS` by a failed run is never reused: the next run takes the next number.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import fsspec
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from pipelines.errors import StorageError
from pipelines.generate.shard import DATA_DIR, ShardStats

log = logging.getLogger(__name__)

MARKER = "_SUCCESS"
MANIFEST = "manifest.json"
CARD = "README.md"
#: Per class: synthetic images beside real held-out ones, with the usefulness report's label fidelity.
PICTURE = "usefulness.png"
#: The first rows of each class as a grid (every dataset; see `pipelines.generate.preview`).
PREVIEW = "preview.png"
#: Entries of a dataset directory that belong to us (anything else there is the user's).
OWN_ENTRIES = (MARKER, MANIFEST, CARD, PICTURE, PREVIEW, DATA_DIR)
#: In a directory of versions (`if_exists="new_version"`): JSON naming the newest committed version.
LATEST = "_LATEST"
_VERSION = re.compile(r"^v([1-9]\d*)$")
_TMP_PREFIX = ".vaeaug-"  # write probes and pointers being written (never part of a dataset)
_PROBE_PREFIX = _TMP_PREFIX + "write-probe-"


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
        url: the dataset directory as the user sees it (`<output>/vN` for "new_version").
        fs: its filesystem.
        root: `url` in `fs`'s notation.
        storage_options: fsspec options (never written anywhere).
        remove: entries of `base_root` to delete before writing (old or leftover dataset files).
        base_url: the configured output (== `url` unless `version` is set).
        base_root: `base_url` in `fs`'s notation.
        version: "vN" when writing a new version (the commit then moves `_LATEST` to it), else None.
    """

    url: str
    fs: AbstractFileSystem
    root: str
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)
    remove: list[str] = field(default_factory=list)
    base_url: str = ""
    base_root: str = ""
    version: str | None = None

    def __post_init__(self) -> None:
        self.base_url = self.base_url or self.url
        self.base_root = self.base_root or self.root


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


def version_number(name: str) -> int | None:
    """N of a version directory's name "vN" (N >= 1), else None."""
    m = _VERSION.match(name)
    return int(m.group(1)) if m else None


def list_versions(fs: AbstractFileSystem, root: str) -> list[str]:
    """The version directories ("v1", "v2", ...) directly under `root`, in number order (committed
    or not)."""
    names = [n for n in _names(fs, root) if version_number(n) is not None]
    return sorted(names, key=lambda n: version_number(n) or 0)


def read_latest(fs: AbstractFileSystem, root: str) -> LatestPointer | None:
    """The `_LATEST` pointer under `root`, or None when there is none.

    Raises:
        ValueError: the pointer exists but cannot be parsed.
    """
    path = join(root, LATEST)
    try:
        blob = fs.cat_file(path)
    except FileNotFoundError:
        return None
    return LatestPointer.from_json(blob)


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


def _check_foreign(url: str, names: list[str]) -> None:
    foreign = [
        n
        for n in names
        if n not in OWN_ENTRIES
        and n != LATEST
        and version_number(n) is None
        and not n.startswith(_TMP_PREFIX)
    ]
    if foreign:
        raise StorageError(
            f"generate.output {redact_url(url)!r} holds files that are not part of a vaeaug dataset "
            f"(e.g. {foreign[:3]}): choose an empty or new directory"
        )


def _refuse(url: str, if_exists: str, committed: bool, names: list[str]) -> None:
    """Raise for the combinations of what is at `url` and `if_exists` that are refused."""
    shown = redact_url(url)
    versions = sorted(
        (n for n in names if version_number(n) is not None), key=lambda n: version_number(n) or 0
    )
    if if_exists == "new_version" and committed:
        raise StorageError(
            f"generate.output {shown!r} holds an unversioned dataset, and generate.if_exists=new_version "
            f"keeps versions as v1/, v2/... beside a {LATEST} pointer: move its files ({MARKER}, {MANIFEST}, "
            f"{DATA_DIR}/...) into {join(shown, 'v1')!r}, or choose another generate.output"
        )
    if if_exists != "new_version" and not committed and (LATEST in names or versions):
        nxt = f"v{max([0, *(version_number(v) or 0 for v in versions)]) + 1}"
        raise StorageError(
            f"generate.output {shown!r} holds versions ({', '.join(versions[-3:]) or 'a ' + LATEST}), "
            f"which generate.if_exists={if_exists} would mix with a dataset of its own: set "
            f"generate.if_exists=new_version to add {nxt}/, or choose another generate.output"
        )
    if if_exists == "error" and committed:
        raise StorageError(
            f"a committed dataset already exists at {shown!r}: set generate.if_exists=overwrite "
            "to replace it, or choose another generate.output (an empty one for "
            "generate.if_exists=new_version, which keeps every run as v1/, v2/...)"
        )


def resolve_output(url: str, if_exists: str, storage_options: dict[str, Any] | None = None) -> OutputTarget:
    """Decide where to write and check it, without changing anything but a probe file.

    Args:
        url: the configured dataset directory (local path or fsspec URL).
        if_exists: "error", "overwrite" or "new_version" (see `GenerateConfig.if_exists`).
        storage_options: fsspec options.

    Returns:
        The `OutputTarget`: `url` itself, or for "new_version" the next `vN` under it (v1 first).

    Raises:
        StorageError: a committed dataset is there and `if_exists` is "error"; versions are there and
            `if_exists` is not "new_version"; an unversioned dataset is there and `if_exists` is
            "new_version"; the directory holds files that are not ours; or it cannot be written.
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
    _refuse(url, if_exists, committed, names)
    _check_foreign(url, names)
    leftovers = [n for n in OWN_ENTRIES if n in names]  # uncommitted, or replaced by "overwrite"
    if if_exists == "new_version":
        number = max([0, *(version_number(n) or 0 for n in names)]) + 1
        version = f"v{number}"
        target = OutputTarget(
            join(url, version), fs, join(root, version), opts, leftovers, url, root, version=version
        )
        # Probe the output, not vN/: a check must not create (and so use up) the version's folder;
        # `prepare_output` creates it when the job really writes.
        _probe(fs, root, url)
        return target
    target = OutputTarget(url, fs, root, opts, remove=leftovers)
    _probe(fs, root, url)
    return target


def prepare_output(target: OutputTarget) -> None:
    """Remove what `resolve_output` found to replace (the `_SUCCESS` marker first, then the rest), and
    create the new version's folder.

    Args:
        target: from `resolve_output`.

    Raises:
        StorageError: the files cannot be removed.
    """
    order = sorted(target.remove, key=lambda n: n != MARKER)  # marker first
    for name in order:
        path = join(target.base_root, name)
        try:
            target.fs.rm(path, recursive=True)
        except FileNotFoundError:
            continue
        except Exception as exc:
            raise StorageError(
                f"cannot remove the old {name!r} in {redact_url(target.base_url)!r}: {_first_line(exc)}"
            ) from None
    if target.version is not None:
        try:
            target.fs.makedirs(target.root, exist_ok=True)
        except Exception as exc:
            raise StorageError(f"cannot create {redact_url(target.url)!r}: {_first_line(exc)}") from None
    target.fs.invalidate_cache(target.base_root)


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
    """Write the dataset card, the manifest and the `_SUCCESS` marker; for a new version, then move
    the `_LATEST` pointer of the configured output to it.

    Args:
        target: the output.
        manifest: JSON-ready manifest (see `pipelines.generate.job`).
        card: README.md text.

    Returns:
        The manifest's URL.

    Raises:
        StorageError: a file cannot be written (nothing is committed when the marker is not).
    """
    blob = json.dumps(manifest, indent=2, sort_keys=False).encode()
    marker = {"rows": manifest.get("rows"), "manifest_sha256": _sha256(blob)}
    try:
        target.fs.pipe_file(join(target.root, CARD), card.encode())
        target.fs.pipe_file(join(target.root, MANIFEST), blob)
        target.fs.pipe_file(join(target.root, MARKER), json.dumps(marker).encode())
    except Exception as exc:
        raise StorageError(f"cannot commit {redact_url(target.url)!r}: {_first_line(exc)}") from None
    if target.version is not None:
        committed_at = datetime.now(UTC).isoformat(timespec="seconds")
        point_latest(
            target, LatestPointer(target.version, int(manifest["rows"]), _sha256(blob), committed_at)
        )
    return join(target.url, MANIFEST)


def point_latest(target: OutputTarget, pointer: LatestPointer) -> bool:
    """Move `_LATEST` in `target.base_root` to `pointer`, unless it names a newer version already
    (a later run that committed first keeps it: the pointer never goes back).

    Args:
        target: a new-version target whose version is committed.
        pointer: what to write.

    Returns:
        Whether the pointer was moved.

    Raises:
        StorageError: the pointer cannot be written (the version stays committed and readable
            directly; readers of the output keep the previous version).
    """
    fs, path = target.fs, join(target.base_root, LATEST)
    try:
        current = read_latest(fs, target.base_root)
    except ValueError:
        current = None  # unreadable: replace it
    if current is not None and (version_number(current.version) or 0) > (
        version_number(pointer.version) or 0
    ):
        log.warning(
            "%s already names %s, newer than %s: left as it is", LATEST, current.version, pointer.version
        )
        return False
    try:
        if isinstance(fs, LocalFileSystem):  # a reader never sees a half-written pointer
            tmp = join(target.base_root, f"{_TMP_PREFIX}latest-{uuid.uuid4().hex}")
            fs.pipe_file(tmp, pointer.to_json())
            fs.mv(tmp, path)
        else:  # object stores replace an object in one PUT
            fs.pipe_file(path, pointer.to_json())
    except Exception as exc:
        raise StorageError(
            f"{redact_url(target.url)!r} is committed but {LATEST} in {redact_url(target.base_url)!r} could "
            f"not be moved to it ({_first_line(exc)}): open the version directly, or re-run"
        ) from None
    fs.invalidate_cache(target.base_root)
    return True


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


__all__ = [
    "CARD",
    "LATEST",
    "MANIFEST",
    "MARKER",
    "OWN_ENTRIES",
    "PICTURE",
    "PREVIEW",
    "LatestPointer",
    "OutputTarget",
    "commit",
    "is_committed",
    "join",
    "list_versions",
    "open_fs",
    "point_latest",
    "prepare_output",
    "read_latest",
    "redact_url",
    "resolve_output",
    "verify_files",
    "version_number",
]
