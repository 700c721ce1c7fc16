"""The "folder" source: one subfolder per class of PNG/JPEG files, on any fsspec filesystem."""

from __future__ import annotations

import numpy as np
import torch
from fsspec import AbstractFileSystem

from pipelines.data.config import DataConfig
from pipelines.data.decode import (
    HEADER_BYTES,
    IMAGE_EXTENSIONS,
    ImageDecodeError,
    ImageHeader,
    decode_image,
    has_image_extension,
    read_header,
)
from pipelines.data.filesystems import display_name, first_line, is_hidden, open_root, relative
from pipelines.data.imageset import ImageSet
from pipelines.errors import DataError
from vae.config import MAX_CLASSES

#: Files fetched per round trip (s3fs fetches one round concurrently).
_FETCH_BATCH = 256


def load_folder(data: DataConfig, size: tuple[int, int], channels: int) -> ImageSet:
    """Load `<path>/<class>/**/<file>.{png,jpg,jpeg}`; class names are the sorted subfolder names.

    Args:
        data: the data config (`path`, `storage_options`, `limit` are used).
        size: target (H, W).
        channels: target channels, 1 or 3.

    Returns:
        An `ImageSet` in [0, 1] (not yet in the model's range), ordered by class then path; ids are
        the files' paths relative to `path` (e.g. "cat/001.png").

    Raises:
        DataError: missing path, no class subfolders, a class subfolder without images, no image
            files, unreadable or corrupt file.
    """
    assert data.path is not None  # guaranteed by DataConfig
    fs, class_names, files = list_folder(data)
    labels = {name: i for i, name in enumerate(class_names)}

    height, width = size
    images = np.empty((len(files), channels, height, width), dtype=np.float32)  # (N, C, H, W)
    for start in range(0, len(files), _FETCH_BATCH):
        batch = files[start : start + _FETCH_BATCH]
        blobs = fs.cat_ranges([full for _, full in batch], None, None, on_error="return")
        for i, ((rel, _), blob) in enumerate(zip(batch, blobs, strict=True), start=start):
            name = display_name(data.path, rel)
            if isinstance(blob, BaseException):
                raise _unreadable(name, blob)
            try:
                images[i] = decode_image(blob, size, channels)
            except ImageDecodeError as exc:
                raise _corrupt(name, exc) from None

    return ImageSet(
        images=torch.from_numpy(images),
        labels=torch.tensor([labels[rel.split("/", 1)[0]] for rel, _ in files], dtype=torch.int64),
        class_names=class_names,
        ids=[rel for rel, _ in files],
    )


def list_folder(data: DataConfig) -> tuple[AbstractFileSystem, list[str], list[tuple[str, str]]]:
    """The class names and image files `load_folder` loads (the first `data.limit` files).

    Args:
        data: the data config (`path`, `storage_options`, `limit`).

    Returns:
        (fs, class_names, files): the filesystem, sorted class names and (relative, full) paths of
        the image files, ordered by class then relative path.

    Raises:
        DataError: missing path, a file instead of a folder, no class subfolders, no image files.
    """
    assert data.path is not None  # guaranteed by DataConfig
    fs, root = open_root(data.path, data.storage_options)
    if not fs.isdir(root):
        raise DataError(
            f"data.path {data.path!r} is a file, not a folder: give a folder with one subfolder per "
            "class (or use data.source='parquet' for Parquet files)"
        )
    class_names, files = _scan(fs, root, data.path)
    if data.limit is not None:
        files = files[: data.limit]
    return fs, class_names, files


def folder_headers(data: DataConfig, max_images: int) -> list[ImageHeader]:
    """Headers of at most `max_images` of the files `load_folder` loads, spread evenly (the first one
    included), reading only the first `HEADER_BYTES` of each file where that is enough.

    Args:
        data: the data config (`path`, `storage_options`, `limit`).
        max_images: how many files to look at, at most.

    Returns:
        One `ImageHeader` per inspected file, in load order.

    Raises:
        DataError: as `load_folder` for a bad path, an unreadable or corrupt file.
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
                raise _corrupt(name, exc) from None
    try:
        blob = fs.cat_file(full)
    except Exception as exc:  # any backend error, as `cat_ranges(on_error="return")` in `load_folder`
        raise _unreadable(name, exc) from exc
    try:
        return read_header(blob)
    except ImageDecodeError as exc:
        raise _corrupt(name, exc) from None


def _unreadable(name: str, exc: BaseException) -> DataError:
    return DataError(f"cannot read image {name!r}: {first_line(exc)}; check access to the file")


def _corrupt(name: str, exc: ImageDecodeError) -> DataError:
    return DataError(f"corrupt image {name!r}: {exc}; remove or replace it")


def _check_classes(class_names: list[str], found: list[tuple[str, str]], path: str) -> None:
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
    used = {rel.split("/", 1)[0] for rel, _ in found}
    empty = [name for name in class_names if name not in used]
    if empty:
        shown = ", ".join(repr(display_name(path, name)) for name in empty[:3])
        more = f" and {len(empty) - 3} more" if len(empty) > 3 else ""
        raise DataError(
            f"class folder {shown}{more} of data.path has no image files: remove "
            f"{'it' if len(empty) == 1 else 'them'} or add images ({', '.join(IMAGE_EXTENSIONS)}) to "
            f"{'it' if len(empty) == 1 else 'each'}"
        )


def _scan(fs, root: str, path: str) -> tuple[list[str], list[tuple[str, str]]]:
    """List class subfolders and image files below `root` in one recursive listing.

    Returns:
        (class_names, files): sorted class names and (relative, full) paths of image files, ordered
        by class index then relative path. Hidden entries (".name") are skipped.
    """
    try:
        entries = fs.find(root, withdirs=True, detail=True)
    except OSError as exc:
        raise DataError(f"cannot list data.path {path!r}: {first_line(exc)}") from exc
    classes: set[str] = set()
    found: list[tuple[str, str]] = []
    for full, info in entries.items():
        rel = relative(root, full)
        if not rel or is_hidden(rel):
            continue
        parts = rel.split("/")
        if info.get("type") == "directory":
            if len(parts) == 1:
                classes.add(parts[0])
        elif len(parts) >= 2:  # files directly under root belong to no class
            classes.add(parts[0])
            if has_image_extension(parts[-1]):
                found.append((rel, full))
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
    _check_classes(class_names, found, path)
    index = {name: i for i, name in enumerate(class_names)}
    found.sort(key=lambda item: (index[item[0].split("/", 1)[0]], item[0]))
    return class_names, found


__all__ = ["folder_headers", "list_folder", "load_folder"]
