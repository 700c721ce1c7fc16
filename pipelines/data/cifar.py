"""The "cifar10" source, read from the official "cifar-10-batches-py" files without `pickle.load`.

The official batches are Python 2 pickles of a dict {data: uint8 ndarray (N, 3072), labels: [int],
batch_label, filenames}. Unpickling runs whatever callables a file names, so a file placed under
`data.path` could run code; `RestrictedUnpickler` resolves only the globals that rebuild a numpy
array (and `_codecs.encode` for byte strings of Python 3's protocol 2) and refuses every other one
before it is called. The result is then checked to be the batch layout (types, shapes, label range).
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipelines.data.config import DataConfig
from pipelines.data.decode import fit_batch, uint8_to_unit
from pipelines.data.imageset import ImageSet
from pipelines.errors import DataError
from pipelines.storage import first_line

FOLDER = "cifar-10-batches-py"
#: The files of each split, in the order torchvision reads them.
SPLIT_FILES: dict[str, tuple[str, ...]] = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
META_FILE = "batches.meta"
#: CIFAR-10's class names in label order (used when batches.meta is absent).
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
#: The official archive (what torchvision downloads).
ARCHIVE_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
_PIXELS = 3 * 32 * 32


#: numpy's array-unpickling helper, whatever module this numpy version keeps it in.
_NUMPY_RECONSTRUCT = np.empty(0).__reduce__()[0]


class _ArrayType:
    """Stands for `numpy.ndarray` in a batch: only usable as `_reconstruct`'s first argument, since
    calling `numpy.ndarray(shape)` itself would allocate any size a file asks for."""


def _reconstruct(subtype: Any, shape: Any, dtype_code: Any) -> np.ndarray:
    """numpy's `_reconstruct` for the empty array that the pickle's BUILD then fills from its bytes
    (numpy checks that the bytes match the shape, so memory stays bounded by the file's size)."""
    if subtype is not _ArrayType or tuple(shape) != (0,):
        raise pickle.UnpicklingError(f"_reconstruct{(subtype, shape)!r} is not how a batch array is stored")
    return _NUMPY_RECONSTRUCT(np.ndarray, (0,), dtype_code)


def _uint8_dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
    """`numpy.dtype` for the uint8 arrays of a batch only."""
    if not isinstance(spec, str) or np.dtype(spec) != np.uint8:
        raise pickle.UnpicklingError(f"numpy.dtype({spec!r}) (a batch holds uint8 arrays only)")
    return np.dtype(spec, align=bool(align), copy=bool(copy))


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """`_codecs.encode` limited to the latin-1 byte strings protocol 2 pickles of bytes use."""
    if encoding.replace("_", "-").lower() not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, "latin1")


#: (module, name) -> the object a batch may reference; numpy 1.x names numpy.core, 2.x numpy._core.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): _ArrayType,
    ("numpy", "dtype"): _uint8_dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle asked for a global outside `ALLOWED_GLOBALS`."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only `ALLOWED_GLOBALS` (no other callable can run)."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise RefusedGlobal(f"{module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise RefusedGlobal(f"persistent id {pid!r}")


@dataclass
class Batch:
    """One checked batch: uint8 images (N, 3, 32, 32) and int64 labels (N,)."""

    images: np.ndarray
    labels: np.ndarray


def restricted_load(blob: bytes, name: str) -> Any:
    """Unpickle `blob` allowing only `ALLOWED_GLOBALS` (Python 2 strings decoded as latin-1).

    Args:
        blob: the file's bytes.
        name: the file's path, for messages.

    Returns:
        The unpickled object (plain containers, numbers, strings and numpy arrays only).

    Raises:
        DataError: a refused global ("not an official CIFAR-10 batch: refusing to unpickle it") or a
            damaged pickle.
    """
    try:
        return RestrictedUnpickler(io.BytesIO(blob), encoding="latin1").load()
    except RefusedGlobal as exc:
        problem = (
            f"is not an official CIFAR-10 batch (it asks for {exc}): refusing to unpickle it; "
            "replace the folder with the official files"
        )
    except Exception as exc:  # any damage: truncated stream, bad opcode, wrong array state...
        problem = (
            f"is not a readable CIFAR-10 batch ({type(exc).__name__}: {first_line(exc)}): "
            "replace it with the official file"
        )
    raise DataError(f"{name!r} {problem} (data.download=true fetches them)")


def read_batch(blob: bytes, name: str) -> Batch:
    """Parse one official batch file and check its layout.

    Args:
        blob: the file's bytes.
        name: the file's path, for messages.

    Returns:
        The batch's images (N, 3, 32, 32) uint8 and labels (N,) int64 in 0..9.

    Raises:
        DataError: refused or damaged pickle, or not the CIFAR-10 batch layout.
    """
    obj = restricted_load(blob, name)
    entries = {_text(k): v for k, v in obj.items()} if isinstance(obj, dict) else {}
    data, labels = entries.get("data"), entries.get("labels")
    layout_ok = (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == _PIXELS
        and isinstance(labels, list)
        and len(labels) == data.shape[0]
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < len(CLASSES) for v in labels)
    )
    if not layout_ok:
        raise DataError(
            f"{name!r} is not a CIFAR-10 batch (expected a dict with 'data': uint8 (N, {_PIXELS}) and "
            "'labels': N ints in 0..9): replace it with the official file"
        )
    return Batch(images=data.reshape(-1, 3, 32, 32), labels=np.asarray(labels, dtype=np.int64))


def _text(key: Any) -> Any:
    return key.decode("latin1") if isinstance(key, bytes) else key


def read_class_names(folder: str) -> list[str]:
    """`label_names` of batches.meta (through the restricted unpickler), else `CLASSES`."""
    path = os.path.join(folder, META_FILE)
    if not os.path.isfile(path):
        return list(CLASSES)
    with open(path, "rb") as f:
        obj = restricted_load(f.read(), path)
    names = obj.get("label_names", obj.get(b"label_names")) if isinstance(obj, dict) else None
    if not isinstance(names, list) or len(names) != len(CLASSES):
        raise DataError(
            f"{path!r} has no list of {len(CLASSES)} label_names: replace it with the official file"
        )
    return [str(_text(n)) for n in names]


def load_cifar10(data: DataConfig, size: tuple[int, int], channels: int) -> ImageSet:
    """CIFAR-10 from `<root>/cifar-10-batches-py`, never unpickling anything but numpy arrays.

    Args:
        data: the data config (`root`, `download`, `split`, `limit`).
        size: target (H, W).
        channels: target channels.

    Returns:
        An `ImageSet` in [0, 1]; class names from batches.meta; ids "cifar10/<split>/<index>".

    Raises:
        DataError: missing files (without `download`), a failed download, or a batch that is not an
            official one.
    """
    root = _root(data)
    folder = os.path.join(root, FOLDER)
    files = [os.path.join(folder, f) for f in SPLIT_FILES[data.split]]
    if data.download and not all(os.path.isfile(f) for f in files):
        _download(root)
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise DataError(
            f"cifar10 not found under {root!r} (expected {missing[0]}): pass data.download=true or "
            f"point data.path at the folder holding {FOLDER}/"
        )
    images, labels = [], []
    have = 0
    for path in files:
        if data.limit is not None and have >= data.limit:
            break
        with open(path, "rb") as f:
            batch = read_batch(f.read(), path)
        images.append(batch.images)
        labels.append(batch.labels)
        have += len(batch.labels)
    n = have if data.limit is None else min(data.limit, have)
    x = uint8_to_unit(np.concatenate(images)[:n], channels_last=False)  # (N, 3, 32, 32)
    return ImageSet(
        images=fit_batch(x, size, channels),
        labels=torch.from_numpy(np.concatenate(labels)[:n]),
        class_names=read_class_names(folder),
        ids=[f"cifar10/{data.split}/{i}" for i in range(n)],
    )


def _root(data: DataConfig) -> str:
    root = data.root or "."
    return root[len("file://") :] if root.startswith("file://") else root


def _download(root: str) -> None:
    """Fetch and unpack the official archive into `root` (its MD5 is checked by torchvision)."""
    from torchvision.datasets.utils import download_and_extract_archive

    try:
        download_and_extract_archive(
            ARCHIVE_URL, root, filename=os.path.basename(ARCHIVE_URL), md5=ARCHIVE_MD5
        )
    except (OSError, RuntimeError, ValueError) as exc:  # network, disk, checksum
        raise DataError(f"cannot download cifar10 into {root!r}: {first_line(exc)}") from exc


__all__ = [
    "ALLOWED_GLOBALS",
    "Batch",
    "RestrictedUnpickler",
    "load_cifar10",
    "read_batch",
    "read_class_names",
    "restricted_load",
]
