"""The "folder" source: one subfolder per class of PNG/JPEG files, on any fsspec filesystem."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from pipelines.data.config import DataConfig
from pipelines.data.decode import (
    HEADER_BYTES,
    IMAGE_EXTENSIONS,
    ImageDecodeError,
    ImageHeader,
    has_image_extension,
    read_header,
)
from pipelines.data.filesystems import display_name, is_hidden, open_root, relative
from pipelines.errors import DataError
from pipelines.storage import first_line, join
from vae.config import MAX_CLASSES

#: Files fetched per round trip (s3fs fetches one round concurrently).
_FETCH_BATCH = 256


def list_folder(data: DataConfig) -> tuple[AbstractFileSystem, list[str], list[tuple[str, str]]]:
    """The class names and image files `load_listed` loads (the first `data.limit` files).

    Args:
        data: the data config (`path`, `storage_options`, `limit`).

    Returns:
        (fs, class_names, files): the filesystem, sorted class names and (relative, full) paths of
        the image files, ordered by class then relative path.

    Raises:
        DataError: missing path, a file instead of a folder, no class subfolders, no image files.
    """
    fs, listing = scan_folder(data)
    files = [(rel, join(listing.root, rel)) for rel in listing.rels]
    return fs, listing.class_names, files


def folder_headers(data: DataConfig, max_images: int) -> list[ImageHeader]:
    """Headers of at most `max_images` of the files `load_listed` loads, spread evenly (the first one
    included), reading only the first `HEADER_BYTES` of each file where that is enough.

    Args:
        data: the data config (`path`, `storage_options`, `limit`).
        max_images: how many files to look at, at most.

    Returns:
        One `ImageHeader` per inspected file, in load order.

    Raises:
        DataError: as `load_listed` for a bad path, an unreadable or corrupt file.
    """
    assert data.path is not None  # guaranteed by DataConfig
    fs, _, files = list_folder(data)
    count = min(max_images, len(files))
    picked = [files[i * len(files) // count] for i in range(count)]  # all of them when count == len
    headers: list[ImageHeader] = []
    for start in range(0, len(picked), _FETCH_BATCH):
        batch = picked[start : start + _FETCH_BATCH]
        prefixes = fs.cat_ranges([full for _, full in batch], 0, HEADER_BYTES, on_error="return")
        for (rel, full), prefix in zip(batch, prefixes, strict=True):
            headers.append(_header(fs, display_name(data.path, rel), full, prefix))
    return headers


def _header(fs: AbstractFileSystem, name: str, full: str, prefix: bytes | BaseException) -> ImageHeader:
    """The header from a file's first bytes, else from the whole file (a long header, a failed range read)."""
    if isinstance(prefix, bytes):
        try:
            return read_header(prefix)
        except ImageDecodeError as exc:
            if len(prefix) < HEADER_BYTES:  # that was the whole file
                raise corrupt_image(name, exc) from None
    try:
        blob = fs.cat_file(full)
    except Exception as exc:  # any backend error, as `cat_ranges(on_error="return")` in `load_listed`
        raise unreadable_image(name, exc) from exc
    try:
        return read_header(blob)
    except ImageDecodeError as exc:
        raise corrupt_image(name, exc) from None


def unreadable_image(name: str, exc: BaseException) -> DataError:
    return DataError(f"cannot read image {name!r}: {first_line(exc)}; check access to the file")


def corrupt_image(name: str, exc: ImageDecodeError) -> DataError:
    return DataError(f"corrupt image {name!r}: {exc}; remove or replace it")


def _check_classes(class_names: list[str], found: list[str], path: str) -> None:
    """Every class folder must hold an image, and there may be at most `MAX_CLASSES` of them.

    An empty folder would still be a class: a conditional model would get a label it never saw
    an image of, and generation would fill its share of rows with whatever the decoder makes of it.

    Raises:
        DataError: naming the empty class folder(s), or the class count, and the fix.
    """
    if len(class_names) > MAX_CLASSES:
        raise DataError(
            f"data.path {path!r} has {len(class_names)} class subfolders, more than the {MAX_CLASSES} "
            "classes a model can condition on: point data.path at the folder whose subfolders are the classes"
        )
    used = {rel.split("/", 1)[0] for rel in found}
    empty = [name for name in class_names if name not in used]
    if empty:
        shown = ", ".join(repr(display_name(path, name)) for name in empty[:3])
        more = f" and {len(empty) - 3} more" if len(empty) > 3 else ""
        raise DataError(
            f"class folder {shown}{more} of data.path has no image files: remove "
            f"{'it' if len(empty) == 1 else 'them'} or add images ({', '.join(IMAGE_EXTENSIONS)}) to "
            f"{'it' if len(empty) == 1 else 'each'}"
        )


@dataclass
class FolderListing:
    """What a folder source holds, from its listing alone (no file is read).

    Attributes:
        root: the scheme-less root on its filesystem.
        class_names: sorted class subfolder names.
        rels: image files relative to the root, ordered by class index then path.
        sizes: (N,) int64 bytes of each file.
        stamps: (N,) uint64 digest of each file's (path, size, mtime or ETag), for the fingerprint.
    """

    root: str
    class_names: list[str]
    rels: list[str]
    sizes: np.ndarray
    stamps: np.ndarray

    def labels(self) -> np.ndarray:
        """(N,) int64 class index of each file (its first path component)."""
        index = {name: i for i, name in enumerate(self.class_names)}
        return np.fromiter((index[rel.split("/", 1)[0]] for rel in self.rels), np.int64, len(self.rels))

    def head(self, n: int) -> FolderListing:
        """The first `n` files (`data.limit`)."""
        return FolderListing(self.root, self.class_names, self.rels[:n], self.sizes[:n], self.stamps[:n])


def scan_folder(data: DataConfig) -> tuple[AbstractFileSystem, FolderListing]:
    """The listing of a folder source (the first `data.limit` files), checked as `list_folder` does."""
    assert data.path is not None  # guaranteed by DataConfig
    fs, root = open_root(data.path, data.storage_options)
    if not fs.isdir(root):
        raise DataError(
            f"data.path {data.path!r} is a file, not a folder: give a folder with one subfolder per "
            "class (or use data.source='parquet' for Parquet files)"
        )
    listing = _scan(fs, root, data.path)
    return fs, listing if data.limit is None else listing.head(data.limit)


def _entries(fs: AbstractFileSystem, root: str) -> Iterator[tuple[str, bool, int, str]]:
    """(relative path, is a folder, size, mtime or ETag) of everything below `root`, hidden ones skipped.

    A local folder is walked with `os.scandir` (a million files must not become a million info dicts
    in the driver); other filesystems are listed with one recursive `find`.
    """
    if isinstance(fs, LocalFileSystem):
        stack = [""]
        while stack:
            here = stack.pop()
            with os.scandir(os.path.join(root, here) if here else root) as found:
                for entry in found:
                    if entry.name.startswith("."):
                        continue
                    rel = join(here, entry.name) if here else entry.name
                    if entry.is_dir():
                        stack.append(rel)
                        yield rel, True, 0, ""
                    else:
                        stat = entry.stat()
                        yield rel, False, stat.st_size, str(stat.st_mtime_ns)
        return
    for full, info in fs.find(root, withdirs=True, detail=True).items():
        rel = relative(root, full)
        if rel and not is_hidden(rel):
            stamp = info.get("ETag") or info.get("mtime") or info.get("LastModified") or ""
            yield rel, info.get("type") == "directory", int(info.get("size") or 0), str(stamp)


def _stamp(rel: str, size: int, stamp: str) -> int:
    digest = hashlib.blake2b(f"{rel}\0{size}\0{stamp}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _scan(fs: AbstractFileSystem, root: str, path: str) -> FolderListing:
    """List class subfolders and image files below `root` in one recursive listing.

    Returns:
        The listing, files ordered by class index then relative path. Hidden entries (".name") are
        skipped.
    """
    classes: set[str] = set()
    found: list[tuple[str, int, int]] = []  # (rel, size, stamp digest)
    try:
        for rel, is_dir, size, stamp in _entries(fs, root):
            parts = rel.split("/")
            if is_dir:
                if len(parts) == 1:
                    classes.add(parts[0])
            elif len(parts) >= 2:  # files directly under root belong to no class
                classes.add(parts[0])
                if has_image_extension(parts[-1]):
                    found.append((rel, size, _stamp(rel, size, stamp)))
    except OSError as exc:
        raise DataError(f"cannot list data.path {path!r}: {first_line(exc)}") from exc
    if not classes:
        raise DataError(
            f"data.path {path!r} has no class subfolders: put the images in one subfolder per class, "
            f"e.g. {display_name(path, 'cat/001.png')!r}"
        )
    class_names = sorted(classes)
    if not found:
        raise DataError(
            f"no image files under data.path {path!r} (class subfolders {class_names[:5]}"
            f"{'...' if len(class_names) > 5 else ''}): add files ending in "
            f"{', '.join(IMAGE_EXTENSIONS)} (any case)"
        )
    _check_classes(class_names, [rel for rel, _, _ in found], path)
    index = {name: i for i, name in enumerate(class_names)}
    found.sort(key=lambda item: (index[item[0].split("/", 1)[0]], item[0]))
    return FolderListing(
        root=root,
        class_names=class_names,
        rels=[rel for rel, _, _ in found],
        sizes=np.fromiter((size for _, size, _ in found), np.int64, len(found)),
        stamps=np.fromiter((stamp for _, _, stamp in found), np.uint64, len(found)),
    )


__all__ = [
    "FolderListing",
    "corrupt_image",
    "folder_headers",
    "list_folder",
    "scan_folder",
    "unreadable_image",
]
