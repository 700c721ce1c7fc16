"""Conditional writes of small files: create-if-absent and compare-and-swap.

The commit protocol (`pipelines.generate.commit`) and the writer's lease (`pipelines.generate.lease`)
need two atomic steps that every store it runs on can do:

- `write_if(fs, path, data, tag=None)`: write only if `path` does not exist;
- `write_if(fs, path, data, tag)`: write only if `path` is unchanged since it was read with that tag.

How, per store:

- local disk: an exclusive `flock` on a lock file serialises the read-compare-write (processes on
  one machine; the lock file lives in the temporary directory, named after the guarded directory,
  so outputs carry no litter), and the new bytes land by `rename` (a reader never sees half a file);
- S3 (s3fs): conditional PUTs, `If-None-Match: *` and `If-Match: <ETag>` (one request each; the
  store decides, whatever the number of writers and machines);
- memory:// (tests, one process): a process-wide lock.

Any other store falls back to read-then-write, which cannot exclude a writer on another machine
racing in the same instant; a warning says so once per store.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import tempfile
import threading
import uuid
from collections.abc import Iterator

from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from pipelines.storage import TMP_PREFIX, join

log = logging.getLogger(__name__)

_process_lock = threading.Lock()
_warned: set[str] = set()


def _kind(fs: AbstractFileSystem) -> str:
    if isinstance(fs, LocalFileSystem):
        return "local"
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return {"s3": "s3", "s3a": "s3", "memory": "memory"}.get(protocol, protocol)


def _tag_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_tagged(fs: AbstractFileSystem, path: str) -> tuple[bytes | None, str | None]:
    """(content, tag) of `path`, or (None, None) when it does not exist.

    The tag identifies this content for `write_if` (an ETag on S3, a checksum elsewhere). On S3 it is
    read before the content, so a write between the two leaves a tag older than the content: a
    `write_if` with it then fails, which is the safe side.
    """
    try:
        if _kind(fs) == "s3":
            fs.invalidate_cache(path)
            tag = str(fs.info(path, refresh=True).get("ETag") or "").strip('"')
            return fs.cat_file(path), tag
        data = fs.cat_file(path)
    except (FileNotFoundError, NotADirectoryError):  # no such file, or a parent is a file
        return None, None
    return data, _tag_of(data)


@contextlib.contextmanager
def _local_lock(fs: AbstractFileSystem, path: str) -> Iterator[None]:
    import fcntl

    directory = os.path.realpath(os.path.dirname(path))
    fs.makedirs(directory, exist_ok=True)
    locks = os.path.join(tempfile.gettempdir(), "vaeaug-locks")
    os.makedirs(locks, exist_ok=True)
    name = hashlib.sha256(directory.encode()).hexdigest()[:32] + ".lock"
    fd = os.open(os.path.join(locks, name), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _swap_in(fs: AbstractFileSystem, path: str, data: bytes) -> None:
    """Write `path` by rename from a temporary sibling: readers see the old bytes or the new."""
    tmp = join(os.path.dirname(path), f"{TMP_PREFIX}tmp-{uuid.uuid4().hex}")
    fs.pipe_file(tmp, data)
    try:
        fs.mv(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            fs.rm(tmp)
        raise


def _s3_write_if(fs: AbstractFileSystem, path: str, data: bytes, tag: str | None) -> bool:
    try:
        if tag is None:
            fs.pipe_file(path, data, mode="create")
        else:
            fs.pipe_file(path, data, IfMatch=f'"{tag}"')
    except FileExistsError:  # If-None-Match failed
        return False
    except OSError as exc:  # If-Match failed (412), or a concurrent conditional write (409)
        text = str(exc)
        if exc.errno == errno.EINVAL or "Precondition" in text or "Conflict" in text:
            return False
        raise
    finally:
        fs.invalidate_cache(path)
    return True


def _compare_and_write(fs: AbstractFileSystem, path: str, data: bytes, tag: str | None) -> bool:
    """Read-compare-write; the caller holds whatever makes this atomic (or accepts that it is not)."""
    current, current_tag = read_tagged(fs, path)
    if (current is None) != (tag is None) or (tag is not None and current_tag != tag):
        return False
    _swap_in(fs, path, data) if _kind(fs) == "local" else fs.pipe_file(path, data)
    fs.invalidate_cache(path)
    return True


def write_if(fs: AbstractFileSystem, path: str, data: bytes, tag: str | None = None) -> bool:
    """Write `data` to `path` only if it is absent (`tag` None) or unchanged since read with `tag`.

    Args:
        fs: the filesystem.
        path: the file, in `fs`'s notation.
        data: the new content (small: a pointer, a marker, a lease).
        tag: from `read_tagged`, or None to require that `path` does not exist.

    Returns:
        Whether this call wrote the file (False: another writer got there first).

    Raises:
        OSError: the store failed for another reason (permissions, network).
    """
    kind = _kind(fs)
    if kind == "s3":
        return _s3_write_if(fs, path, data, tag)
    if kind == "local":
        with _local_lock(fs, path):
            return _compare_and_write(fs, path, data, tag)
    if kind == "memory":
        with _process_lock:
            return _compare_and_write(fs, path, data, tag)
    if kind not in _warned:
        _warned.add(kind)
        log.warning(
            "%s:// has no conditional writes here: two jobs racing on one output in the same instant "
            "are not told apart (local disk and S3 are)",
            kind,
        )
    return _compare_and_write(fs, path, data, tag)


def delete_if(fs: AbstractFileSystem, path: str, tag: str) -> bool:
    """Delete `path` if it is unchanged since read with `tag` (exact on local disk and memory://;
    on object stores a read-then-delete: the window is one request)."""
    kind = _kind(fs)
    lock = _local_lock(fs, path) if kind == "local" else _process_lock if kind == "memory" else None
    with lock or contextlib.nullcontext():
        _, current_tag = read_tagged(fs, path)
        if current_tag != tag:
            return False
        with contextlib.suppress(FileNotFoundError):
            fs.rm(path)
        fs.invalidate_cache(path)
        return True


__all__ = ["delete_if", "read_tagged", "write_if"]
