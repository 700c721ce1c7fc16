"""`load_images`: every data source behind one call, via the `LOADERS` registry.

A loader takes (data config, target (H, W), target channels) and returns an `ImageSet` in [0, 1];
`load_images` then maps it to the model's range. Add a source by adding a loader here and its name
to `pipelines.data.config.SOURCES`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from functools import partial

import numpy as np
import torch

from pipelines.data.cifar import load_cifar10
from pipelines.data.config import DataConfig
from pipelines.data.decode import fit_batch, uint8_to_unit
from pipelines.data.imageset import ImageSet
from pipelines.data.index import SourceIndex, index_source
from pipelines.errors import DataError
from pipelines.storage import first_line, join
from vae.config import VAEConfig
from vae.ranges import to_model_range

#: (data config, target (H, W), target channels) -> ImageSet in [0, 1].
Loader = Callable[[DataConfig, tuple[int, int], int], ImageSet]


def load_images(data: DataConfig, model: VAEConfig) -> ImageSet:
    """Load the images `data` describes, converted to the model's size, channels and range.

    Args:
        data: which source, where, which split, how many.
        model: the model config; its `image_size`, `channels` and `output_activation` decide the
            conversion (resize with antialiased bilinear, "L"/"RGB" channels, `to_model_range`).

    Returns:
        An `ImageSet` with images float32 (N, C, H, W) in the model's range.

    Raises:
        DataError: the data cannot be read (one-line message naming the problem and the fix).
    """
    loader = LOADERS[data.source]
    unit = loader(data, model.image_size, model.channels)
    if data.limit is not None and len(unit) > data.limit:
        unit = unit.subset(range(data.limit))
    return dataclasses.replace(unit, images=to_model_range(unit.images, model).contiguous())  # (N, C, H, W)


def load_digits(data: DataConfig, size: tuple[int, int], channels: int) -> ImageSet:
    """scikit-learn's embedded 8x8 digits (1797 images, values 0..16); works offline.

    The dataset has no official train/test split, so `data.split` is ignored and all images are
    loaded; hold out data with `ImageSet.split`. Ids are "digits/<index>".

    Args:
        data: the data config (`limit` is used).
        size: target (H, W).
        channels: target channels.

    Returns:
        An `ImageSet` in [0, 1] with class names "0".."9".
    """
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    n = len(bunch.target) if data.limit is None else min(data.limit, len(bunch.target))
    x = torch.from_numpy(np.asarray(bunch.images[:n], dtype=np.float32) / 16.0).unsqueeze(1)  # (N,1,8,8)
    return ImageSet(
        images=fit_batch(x, size, channels),
        labels=torch.as_tensor(bunch.target[:n], dtype=torch.int64),
        class_names=[str(c) for c in bunch.target_names],
        ids=[f"digits/{i}" for i in range(n)],
    )


def load_torchvision(
    data: DataConfig,
    size: tuple[int, int],
    channels: int,
    *,
    dataset: str,
    folder: str,
    expected: dict[str, str],
) -> ImageSet:
    """A torchvision dataset from a local root, converted from its in-memory arrays in one batch.

    Only for datasets whose files torchvision parses without unpickling (MNIST's idx files); CIFAR-10
    has its own reader (`pipelines.data.cifar`).

    Args:
        data: the data config (`root`, `download`, `split`, `limit`).
        size: target (H, W).
        channels: target channels.
        dataset: torchvision class name in `torchvision.datasets` (e.g. "MNIST").
        folder: the dataset's folder under the root (e.g. "MNIST"), for messages.
        expected: split -> a file the split needs, relative to the root, for messages.

    Returns:
        An `ImageSet` in [0, 1]; class names from the dataset's `.classes`; ids
        "<source>/<split>/<index>".
    """
    import torchvision.datasets

    root = data.root or "."
    if root.startswith("file://"):
        root = root[len("file://") :]
    cls = getattr(torchvision.datasets, dataset)
    try:
        ds = cls(root=root, train=data.split == "train", download=data.download)
    except RuntimeError as exc:
        if "not found" not in str(exc).lower() or data.download:
            raise DataError(f"cannot load {data.source} under {root!r}: {first_line(exc)}") from exc
        need = os.path.join(root, expected[data.split])
        raise DataError(
            f"{data.source} not found under {root!r} (expected {need}): pass data.download=true or "
            f"point data.path at the folder holding {folder}/"
        ) from None
    except OSError as exc:  # network or disk trouble while downloading or reading
        raise DataError(f"cannot load {data.source} under {root!r}: {first_line(exc)}") from exc
    raw = ds.data  # uint8: (N, H, W) tensor (MNIST family) or (N, H, W, 3) array (CIFAR)
    targets = ds.targets
    n = len(raw) if data.limit is None else min(data.limit, len(raw))
    x = uint8_to_unit(raw[:n], channels_last=True)  # (N, C0, H0, W0)
    return ImageSet(
        images=fit_batch(x, size, channels),
        labels=torch.as_tensor(targets[:n], dtype=torch.int64),
        class_names=[str(c) for c in ds.classes],
        ids=[f"{data.source}/{data.split}/{i}" for i in range(n)],
    )


def load_listed(data: DataConfig, size: tuple[int, int], channels: int) -> ImageSet:
    """A "folder" or "parquet" source: listed (`index_source`), then read whole with `SourceIndex.read`,
    the reader the streaming path uses too (the same pixels, ids and chunks). Loaded whole, the data
    is fingerprinted by its pixels (`ImageSet.fingerprint`); the streaming path by its listing.

    Folder: class names are the sorted subfolder names, images ordered by class then path, ids the
    files' paths relative to `path` ("cat/001.png"). Parquet: a file, or every *.parquet below a
    folder (sorted by path); class names from the `huggingface` ClassLabel metadata, else the distinct
    label values in increasing order (labels {3, 7, 50000} give classes "3", "7", "50000" at indices
    0, 1, 2); ids "<file relative to path>#<row in file>".

    Returns:
        An `ImageSet` in [0, 1] (not yet in the model's range).

    Raises:
        DataError: a bad path, listing, schema, labels, or an unreadable or corrupt file.
    """
    index = index_source(data, size, channels)
    return read_index(index, np.arange(len(index)))


def read_index(index: SourceIndex, items: np.ndarray) -> ImageSet:
    """The images `items` of a listed source, in [0, 1], in memory (one chunk read at a time)."""
    images = np.empty((len(items), index.channels, *index.size), dtype=np.float32)  # (N, C, H, W)
    at = 0
    for got, part in index.read(items):
        images[at : at + len(got)] = part
        at += len(got)
    return ImageSet(
        images=torch.from_numpy(images),
        labels=torch.from_numpy(index.labels[items]),
        class_names=list(index.class_names),
        ids=index.ids(items),
        chunks=torch.from_numpy(index.chunk_of[items]),
    )


def _mnist_layout(folder: str) -> dict[str, str]:
    return {
        "train": join(folder, "raw", "train-images-idx3-ubyte"),
        "test": join(folder, "raw", "t10k-images-idx3-ubyte"),
    }


#: Source name -> loader. Must have exactly the names of `pipelines.data.config.SOURCES`.
LOADERS: dict[str, Loader] = {
    "digits": load_digits,
    "mnist": partial(load_torchvision, dataset="MNIST", folder="MNIST", expected=_mnist_layout("MNIST")),
    "fashion-mnist": partial(
        load_torchvision,
        dataset="FashionMNIST",
        folder="FashionMNIST",
        expected=_mnist_layout("FashionMNIST"),
    ),
    # Not through torchvision: its CIFAR10 runs pickle.load on the files under data.path.
    "cifar10": load_cifar10,
    "folder": load_listed,
    "parquet": load_listed,
}

__all__ = ["LOADERS", "Loader", "load_digits", "load_images", "load_listed", "load_torchvision", "read_index"]
