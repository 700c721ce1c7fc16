"""Output checks and the commit protocol of a synthetic dataset.

The layout being written (shards, card, manifest, `_SUCCESS`; versions `v1/ v2/ ...` beside a
`_LATEST` pointer) is `pipelines.dataset_format`'s.

With `if_exists="new_version"` or `"overwrite"` the job writes the next version `vN/`; "overwrite"
deletes the versions (or the unversioned dataset's files) it replaces only after `_LATEST` names its
own: a job killed at any point leaves the old dataset whole and readable.

Exactly once, on local disk and on object stores without rename (see `conditional` and `lease`):

1. `resolve_output` checks the output before any work (what is there against `if_exists`, a
   write probe, and whether another job holds the writer's lease);
2. `writing` takes the lease (`_LEASE`, create-if-absent), checks again under it, removes what dead
   jobs left uncommitted, and yields the target; the job writes its shards;
3. `commit` checks the lease is still this job's, writes the card and the manifest, then commits
   with a conditional write: an unversioned dataset's `_SUCCESS` only if absent; a version's
   `_LATEST` only if it is still what this job found (compare-and-swap). Of two jobs, one commits.

A version directory left without `_SUCCESS` by a dead job is removed by the next job on the output,
and its number is never reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fsspec import AbstractFileSystem

from pipelines.dataset_format import (
    CARD,
    DATA_DIR,
    LATEST,
    LEASE,
    MANIFEST,
    MARKER,
    OWN_ENTRIES,
    LatestPointer,
    is_committed,
    list_entries,
    version_name,
    version_number,
)
from pipelines.errors import StorageError
from pipelines.generate.conditional import read_tagged, write_if
from pipelines.generate.lease import Lease, busy_error, current_holder
from pipelines.storage import TMP_PREFIX, basename, first_line, join, open_url, probe_writable, redact_url

if TYPE_CHECKING:  # the shards' module imports torch: a check of the output must not
    from pipelines.generate.shard import ShardStats

log = logging.getLogger(__name__)

#: The fix named when the output cannot be written.
_PROBE_FIX = "check the path, permissions and credentials, or choose another generate.output"


@dataclass
class OutputTarget:
    """Where the dataset goes, and what the commit replaces.

    Args:
        url: the dataset directory as the user sees it (`<output>/vN` when writing a version).
        fs: its filesystem.
        root: `url` in `fs`'s notation.
        storage_options: fsspec options (never written anywhere).
        remove: entries of `base_root` left by a job that died before committing: removed before
            writing (nothing committed is ever among them).
        base_url: the configured output (== `url` unless `version` is set).
        base_root: `base_url` in `fs`'s notation.
        version: "vN" when writing a version (the commit then moves `_LATEST` to it), else None.
        replace: entries of `base_root` the commit replaces ("overwrite": the older versions, or an
            unversioned dataset's files): deleted only after `_LATEST` names the new version.
        latest_tag: the tag of `_LATEST` as found (None: absent); the commit moves the pointer only if
            it is still that (compare-and-swap).
        lease: the writer's lease, when held (`writing`); the commit checks it first.
    """

    url: str
    fs: AbstractFileSystem
    root: str
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)
    remove: list[str] = field(default_factory=list)
    base_url: str = ""
    base_root: str = ""
    version: str | None = None
    replace: list[str] = field(default_factory=list)
    latest_tag: str | None = None
    lease: Lease | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.base_url = self.base_url or self.url
        self.base_root = self.base_root or self.root


def open_fs(url: str, storage_options: dict[str, Any] | None = None) -> tuple[AbstractFileSystem, str]:
    """Resolve an output URL to (filesystem, path in its notation), as a `StorageError` on failure."""
    try:
        return open_url(url, storage_options)
    except (ImportError, ValueError, TypeError) as exc:
        raise StorageError(f"cannot open generate.output {redact_url(url)!r}: {first_line(exc)}") from None


def _check_foreign(url: str, names: list[str]) -> None:
    foreign = [
        n
        for n in names
        if n not in OWN_ENTRIES
        and n not in (LATEST, LEASE)
        and version_number(n) is None
        and not n.startswith(TMP_PREFIX)
    ]
    if foreign:
        raise StorageError(
            f"generate.output {redact_url(url)!r} holds files that are not part of a vaeaug dataset "
            f"(e.g. {foreign[:3]}): choose an empty or new directory"
        )


@dataclass
class _Found:
    """What an output holds: its entries, whether an unversioned dataset is committed at its root,
    and its `_LATEST` pointer (None: none) with the pointer's tag."""

    names: list[str]
    root_committed: bool
    latest: LatestPointer | None
    latest_tag: str | None

    @property
    def versions(self) -> list[str]:
        return sorted(
            (n for n in self.names if version_number(n) is not None), key=lambda n: version_number(n) or 0
        )

    @property
    def committed(self) -> bool:
        return self.root_committed or self.latest is not None

    def next_version(self) -> str:
        return version_name(max([0, *(version_number(n) or 0 for n in self.names)]) + 1)


def _look(fs: AbstractFileSystem, root: str, url: str) -> _Found:
    try:
        names = list_entries(fs, root)
        blob, tag = read_tagged(fs, join(root, LATEST))
    except Exception as exc:
        raise StorageError(
            f"cannot read generate.output {redact_url(url)!r} ({type(exc).__name__}: {first_line(exc)}): "
            "check the path and credentials"
        ) from None
    try:
        latest = LatestPointer.from_json(blob) if blob is not None else None
    except ValueError:
        raise StorageError(
            f"the {LATEST} pointer of generate.output {redact_url(url)!r} is unreadable: fix or remove it "
            "(its versions stay), or choose another generate.output"
        ) from None
    return _Found(names, MARKER in names and latest is None, latest, tag)


def _refuse(url: str, if_exists: str, found: _Found) -> None:
    """Raise for the combinations of what is at `url` and `if_exists` that are refused."""
    shown = redact_url(url)
    versions = found.versions
    if if_exists == "new_version" and found.root_committed:
        raise StorageError(
            f"generate.output {shown!r} holds an unversioned dataset, and generate.if_exists=new_version "
            f"keeps versions as v1/, v2/... beside a {LATEST} pointer: move its files ({MARKER}, {MANIFEST}, "
            f"{DATA_DIR}/...) into {join(shown, 'v1')!r}, set generate.if_exists=overwrite to replace it, "
            "or choose another generate.output"
        )
    if if_exists == "error" and found.committed:
        raise StorageError(
            f"a committed dataset already exists at {shown!r}: set generate.if_exists=overwrite "
            "to replace it, or choose another generate.output (an empty one for "
            "generate.if_exists=new_version, which keeps every run as v1/, v2/...)"
        )
    if if_exists == "error" and (versions or LATEST in found.names):
        raise StorageError(
            f"generate.output {shown!r} holds versions ({', '.join(versions[-3:]) or 'a ' + LATEST}), "
            f"which generate.if_exists=error would mix with a dataset of its own: set "
            f"generate.if_exists=new_version to add {found.next_version()}/, or choose another "
            "generate.output"
        )


def resolve_output(
    url: str, if_exists: str, storage_options: dict[str, Any] | None = None, lease: Lease | None = None
) -> OutputTarget:
    """Decide where to write and check it, without changing anything but a probe file.

    Args:
        url: the configured dataset directory (local path or fsspec URL).
        if_exists: "error", "overwrite" or "new_version" (see `GenerateConfig.if_exists`).
        storage_options: fsspec options.
        lease: the caller's own lease on the output, when it holds one (`writing`).

    Returns:
        The `OutputTarget`: `url` itself for "error"; for "overwrite" and "new_version" the next
        `vN` under it (v1 first), with what the commit replaces.

    Raises:
        StorageError: another job is writing to the output (it holds a live lease); a committed
            dataset is there and `if_exists` is "error"; an unversioned dataset is there and
            `if_exists` is "new_version"; the directory holds files that are not ours; or it
            cannot be written.
    """
    fs, root = open_fs(url, storage_options)
    opts = dict(storage_options or {})
    holder = current_holder(fs, root)
    if holder is not None and (lease is None or holder.owner != lease.record.owner):
        raise busy_error(redact_url(url), holder)
    found = _look(fs, root, url)
    _refuse(url, if_exists, found)
    _check_foreign(url, found.names)
    if if_exists == "error":  # one dataset at the root; only an uncommitted leftover can be there
        probe_writable(url, "generate.output", storage_options, _PROBE_FIX)
        return OutputTarget(url, fs, root, opts, remove=[n for n in OWN_ENTRIES if n in found.names])
    version = found.next_version()
    pointed = found.latest.version if found.latest is not None else None
    uncommitted = [v for v in found.versions if v != pointed and not is_committed(fs, join(root, v))]
    remove = uncommitted + ([n for n in OWN_ENTRIES if n in found.names] if not found.root_committed else [])
    replace: list[str] = []
    if if_exists == "overwrite":  # every committed dataset there, once the new version is committed
        replace = [v for v in found.versions if v not in uncommitted]
        replace += [n for n in OWN_ENTRIES if n in found.names] if found.root_committed else []
    # Probe the output, not vN/: a check must not create (and so use up) the version's folder;
    # `prepare_output` creates it when the job really writes.
    probe_writable(url, "generate.output", storage_options, _PROBE_FIX)
    return OutputTarget(join(url, version), fs, join(root, version), opts, remove, url, root, version,
                        replace, found.latest_tag, lease)  # fmt: skip


def _remove(target: OutputTarget, names: list[str], why: str) -> None:
    for name in sorted(
        names, key=lambda n: n != MARKER
    ):  # a marker first: never a half-removed "committed" dataset
        try:
            target.fs.rm(join(target.base_root, name), recursive=True)
        except FileNotFoundError:
            continue
        except Exception as exc:
            raise StorageError(
                f"cannot remove the {why} {name!r} in {redact_url(target.base_url)!r}: {first_line(exc)}"
            ) from None
    target.fs.invalidate_cache(target.base_root)


def prepare_output(target: OutputTarget) -> None:
    """Remove what dead jobs left uncommitted (see `OutputTarget.remove`), and create the new
    version's folder. Nothing committed is touched.

    Raises:
        StorageError: the files cannot be removed.
    """
    _remove(target, target.remove, "uncommitted leftover")
    if target.version is not None:
        try:
            target.fs.makedirs(target.root, exist_ok=True)
        except Exception as exc:
            raise StorageError(f"cannot create {redact_url(target.url)!r}: {first_line(exc)}") from None
    target.fs.invalidate_cache(target.base_root)


@contextmanager
def writing(
    url: str, if_exists: str, storage_options: dict[str, Any] | None = None
) -> Iterator[OutputTarget]:
    """Hold the writer's lease on the output while the caller writes and commits a dataset.

    Takes the lease, checks the output again under it (another job may have committed since the
    first check), removes dead jobs' uncommitted leftovers, and yields the target; the lease is
    released on the way out, whatever happens. `commit` checks the lease before it commits.

    Raises:
        StorageError: another job holds the lease, or the checks of `resolve_output` fail.
    """
    fs, root = open_fs(url, storage_options)
    with Lease.acquire(fs, root, redact_url(url)) as lease:
        target = resolve_output(url, if_exists, storage_options, lease=lease)
        prepare_output(target)
        yield target


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
    sizes = {basename(e["name"]): int(e.get("size") or 0) for e in listing}
    for s in stats:
        name = basename(s.path)
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
    """Commit the written dataset: card, manifest, then the `_SUCCESS` marker; for a version, then
    move `_LATEST` to it; for "overwrite", then delete what it replaced.

    Each decisive step is conditional, so of two jobs only one can commit an output: an unversioned
    dataset's marker is created only if absent, and `_LATEST` moves only if it is still what this job
    found (`OutputTarget.latest_tag`). The lease is checked first.

    Args:
        target: the output (from `writing`, or `resolve_output` + `prepare_output`).
        manifest: JSON-ready manifest (see `pipelines.generate.driver` and `pipelines.dataset_format`).
        card: README.md text.

    Returns:
        The manifest's URL.

    Raises:
        StorageError: this job lost its lease, another job committed first, or a file cannot be
            written (nothing is committed in these cases).
    """
    if target.lease is not None:
        target.lease.check()
    blob = json.dumps(manifest, indent=2, sort_keys=False).encode()
    marker = json.dumps({"rows": manifest.get("rows"), "manifest_sha256": _sha256(blob)}).encode()
    try:
        target.fs.pipe_file(join(target.root, CARD), card.encode())
        target.fs.pipe_file(join(target.root, MANIFEST), blob)
        if target.version is not None:
            target.fs.pipe_file(join(target.root, MARKER), marker)  # vN is this job's alone
        elif not write_if(target.fs, join(target.root, MARKER), marker):
            raise StorageError(
                f"another job committed a dataset at {redact_url(target.url)!r} while this one wrote: "
                "nothing committed by this job; choose another generate.output or set generate.if_exists"
            )
    except StorageError:
        raise
    except Exception as exc:
        raise StorageError(f"cannot commit {redact_url(target.url)!r}: {first_line(exc)}") from None
    if target.version is not None:
        committed_at = datetime.now(UTC).isoformat(timespec="seconds")
        point_latest(
            target, LatestPointer(target.version, int(manifest["rows"]), _sha256(blob), committed_at)
        )
        _drop_replaced(target)
    return join(target.url, MANIFEST)


def _drop_replaced(target: OutputTarget) -> None:
    """After an "overwrite" commit: delete what it replaced (a failure leaves extra files, never a
    wrong dataset: readers follow `_LATEST`)."""
    try:
        _remove(target, target.replace, "replaced")
    except StorageError as exc:
        log.warning("%s (the new version is committed; delete them by hand)", exc)


def point_latest(target: OutputTarget, pointer: LatestPointer) -> None:
    """Move `_LATEST` in `target.base_root` to `pointer` if it is still as `resolve_output` found it.

    Args:
        target: a version target whose version is committed.
        pointer: what to write.

    Raises:
        StorageError: the pointer was moved by another job since (this version stays committed but
            unnamed; readers of the output keep the other job's), or it cannot be written.
    """
    path = join(target.base_root, LATEST)
    try:
        moved = write_if(target.fs, path, pointer.to_json(), target.latest_tag)
    except Exception as exc:
        raise StorageError(
            f"{redact_url(target.url)!r} is committed but {LATEST} in {redact_url(target.base_url)!r} could "
            f"not be moved to it ({first_line(exc)}): open the version directly, or re-run"
        ) from None
    if not moved:
        raise StorageError(
            f"another job moved {LATEST} in {redact_url(target.base_url)!r} while this one wrote "
            f"{pointer.version}: {pointer.version} is complete but not the latest; open it directly, "
            "or re-run"
        )
    target.fs.invalidate_cache(target.base_root)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


__all__ = [
    "OutputTarget",
    "commit",
    "open_fs",
    "point_latest",
    "prepare_output",
    "resolve_output",
    "verify_files",
    "writing",
]
