"""Storage helpers every stage shares: join, open, probe, redact, and the first line of an error.

One home for what each stage used to write again: `base.rstrip("/") + "/" + name` joins, "the
first line of an exception" in one-line errors, write probes of an output location. Paths and URLs
are handled alike (`/tmp/x`, `s3://bucket/x`, `memory://x`, `file:///x`); credentials never reach
a message (`redact_url`, `redact_text`: the one policy lives in `pipelines.redaction`).
"""

from __future__ import annotations

import uuid
from typing import Any

import fsspec
from fsspec import AbstractFileSystem

from pipelines.errors import StorageError
from pipelines.redaction import redact_text, redact_url

#: Prefix of the temporary files we write (write probes, pointers being written): never part of a
#: dataset, a model or a run, and skipped by every listing of ours.
TMP_PREFIX = ".vaeaug-"
PROBE_PREFIX = TMP_PREFIX + "write-probe-"


def join(base: str, *names: str) -> str:
    """`base/name/...` for paths and URLs alike (one "/" between parts, whatever `base` ends with)."""
    out = base.rstrip("/") or base
    for name in names:
        out = out.rstrip("/") + "/" + name.lstrip("/")
    return out


def basename(path: str) -> str:
    """The last component of a path or URL (`s3://b/x/y/` -> `y`)."""
    return path.rstrip("/").rsplit("/", 1)[-1]


def strip_slash(path: str) -> str:
    """`path` without its trailing "/" (a root "/" stays)."""
    return path.rstrip("/") or path


def first_line(exc: BaseException) -> str:
    """First line of an exception's message (or its type name), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def last_line(exc: BaseException) -> str:
    """Last line of an exception's message (or its type name): Ray's wrapped errors end with the
    worker's or task's own error, after Ray's traceback."""
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__


def open_url(url: str, storage_options: dict[str, Any] | None = None) -> tuple[AbstractFileSystem, str]:
    """The filesystem of `url` and `url` in its own notation, without a trailing slash.

    Raises what fsspec raises (ImportError for a missing backend, ValueError for a bad URL): the
    caller turns it into the one-line error that names its own setting.
    """
    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    return fs, strip_slash(root)


def probe_writable(url: str, key: str, storage_options: dict[str, Any] | None = None, fix: str = "") -> None:
    """Create `url` if needed, then write and delete a probe file there through fsspec.

    Args:
        url: a folder (local path or URL).
        key: the setting it comes from, named by the error (`output_dir`, `generate.output`...).
        storage_options: fsspec options.
        fix: the error's fix (default: a writable path or a bucket whose credentials allow writes).

    Raises:
        StorageError: the location cannot be written, one line naming `key`, the reason and the fix.
    """
    try:
        fs, root = open_url(url, storage_options)
        probe = join(root, f"{PROBE_PREFIX}{uuid.uuid4().hex[:12]}")
        fs.makedirs(root, exist_ok=True)
        fs.pipe_file(probe, b"ok")
        fs.rm(probe)
    except Exception as exc:  # any backend: PermissionError, NotADirectoryError, botocore, ValueError
        raise not_writable(url, key, exc, fix) from None


def probe_writable_arrow(url: str, key: str, fix: str = "") -> None:
    """`probe_writable` through pyarrow's filesystems: the ones Ray Train writes checkpoints with."""
    import pyarrow
    from pyarrow import fs as pafs

    try:
        filesystem, root = pafs.FileSystem.from_uri(url)
        probe = join(root, f"{PROBE_PREFIX}{uuid.uuid4().hex[:12]}")
        filesystem.create_dir(root, recursive=True)
        with filesystem.open_output_stream(probe) as out:
            out.write(b"ok")
        filesystem.delete_file(probe)
    except (OSError, ValueError, pyarrow.ArrowException) as exc:
        raise not_writable(url, key, exc, fix) from None


def not_writable(url: str, key: str, exc: BaseException, fix: str = "") -> StorageError:
    """The one-line error of an output location that cannot be written."""
    fix = fix or (
        "give a writable local path, or a URL whose bucket exists and whose credentials allow writes"
    )
    return StorageError(
        f"{key} {redact_url(url)!r} is not writable ({type(exc).__name__}: {first_line(exc)}): {fix}"
    )


__all__ = [
    "PROBE_PREFIX",
    "TMP_PREFIX",
    "basename",
    "first_line",
    "join",
    "last_line",
    "not_writable",
    "open_url",
    "probe_writable",
    "probe_writable_arrow",
    "redact_text",
    "redact_url",
    "strip_slash",
]
