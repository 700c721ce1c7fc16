"""Input data for training: typed config, the `ImageSet` container and `load_images` over all sources.

`load_data_for` is what a run calls: every image in memory, or for a large "folder"/"parquet" source
a bounded sample plus the listed source that Ray Train streams (`pipelines.data.stream`).

`resolve_data_shape` sets the model's image size and channels the user left unset from the data.

>>> from pipelines.data import DataConfig, load_images
>>> images = load_images(DataConfig(source="digits", limit=10), VAEConfig())  # doctest: +SKIP
"""

from pipelines.data.config import DEFAULT_ROOT, SOURCES, DataConfig
from pipelines.data.decode import IMAGE_EXTENSIONS
from pipelines.data.imageset import ImageSet
from pipelines.data.shape import infer_data_shape, resolve_data_shape
from pipelines.data.sources import LOADERS, load_images
from pipelines.data.stream import load_data_for

__all__ = [
    "DEFAULT_ROOT",
    "IMAGE_EXTENSIONS",
    "LOADERS",
    "SOURCES",
    "DataConfig",
    "ImageSet",
    "infer_data_shape",
    "load_data_for",
    "load_images",
    "resolve_data_shape",
]
