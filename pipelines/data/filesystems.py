"""fsspec access shared by the file-based sources, with one-line `DataError`s."""

from __future__ import annotations

from typing import Any

import fsspec
from fsspec import AbstractFileSystem

from pipelines.errors import DataError

_URL_HINT = "local path, s3://, gs://, memory://, file://"


def open_root(path: str, storage_options: dict[str, Any]) -> tuple[AbstractFileSystem, str]:
    """Resolve `path` to a filesystem and its scheme-less root, checking that it exists.

    Args:
        path: local path or fsspec URL, as the user gave it (`data.path`).
        storage_options: fsspec options (`data.storage_options`).

    Returns:
        (fs, root): the filesystem and `path` in its own notation, without a trailing slash.

    Raises:
        DataError: unknown protocol, missing fsspec backend, unreadable or missing path.
    """
    try:
        fs, root = fsspec.core.url_to_fs(path, **storage_options)
    except (ImportError, ValueError, TypeError) as exc:
        raise DataError(f"cannot open data.path {path!r}: {first_line(exc)}") from exc
    root = root.rstrip("/") or root
    try:
        exists = fs.exists(root)
    except OSError as exc:
        raise DataError(f"cannot read data.path {path!r}: {first_line(exc)}") from exc
    if not exists:
        raise DataError(f"data.path {path!r} does not exist: check the path or URL ({_URL_HINT})")
    return fs, root


def relative(root: str, full: str) -> str:
    """`full` relative to `root` (both in the filesystem's notation), with forward slashes."""
    rel = full[len(root) :] if full.startswith(root) else full
    return rel.replace("\\", "/").lstrip("/")


def display_name(path: str, rel: str) -> str:
    """The user's `path` joined with a relative name, for error messages and ids."""
    return f"{path.rstrip('/')}/{rel}" if rel else path


def first_line(exc: BaseException) -> str:
    """First line of an exception's message (or its type name), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def is_hidden(rel: str) -> bool:
    """Whether any component of a relative path starts with "." (e.g. .DS_Store, .ipynb_checkpoints)."""
    return any(part.startswith(".") for part in rel.split("/") if part)


__all__ = ["display_name", "first_line", "is_hidden", "open_root", "relative"]
