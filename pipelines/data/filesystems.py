"""fsspec access shared by the file-based sources, with one-line `DataError`s."""

from __future__ import annotations

from typing import Any

from fsspec import AbstractFileSystem

from pipelines.errors import DataError
from pipelines.storage import first_line, join, open_url

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
        fs, root = open_url(path, storage_options)
    except (ImportError, ValueError, TypeError) as exc:
        raise DataError(f"cannot open data.path {path!r}: {first_line(exc)}") from exc
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
    return join(path, rel) if rel else path


def is_hidden(rel: str) -> bool:
    """Whether any component of a relative path starts with "." (e.g. .DS_Store, .ipynb_checkpoints)."""
    return any(part.startswith(".") for part in rel.split("/") if part)


__all__ = ["display_name", "is_hidden", "open_root", "relative"]
