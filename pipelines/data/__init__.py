"""Input data for training: typed config, the `ImageSet` container and `load_images` over all sources.

`load_data_for` is what a run calls: every image in memory, or for a large "folder"/"parquet" source
a bounded sample plus the listed source that Ray Train streams (`pipelines.data.stream`).

`resolve_data_shape` sets the model's image size and channels the user left unset from the data.

>>> from pipelines.data import DataConfig, load_images
>>> images = load_images(DataConfig(source="digits", limit=10), VAEConfig())  # doctest: +SKIP
"""

from __future__ import annotations

from pipelines.lazy import lazy_exports

# Loaded on first use: importing one submodule (`config`, which `pipelines.config` needs) must not
# pull in every source, torch and Ray Data with it.
_LAZY = {
    "DEFAULT_ROOT": "pipelines.data.config",
    "SOURCES": "pipelines.data.config",
    "DataConfig": "pipelines.data.config",
    "IMAGE_EXTENSIONS": "pipelines.data.decode",
    "ImageSet": "pipelines.data.imageset",
    "infer_data_shape": "pipelines.data.shape",
    "resolve_data_shape": "pipelines.data.shape",
    "LOADERS": "pipelines.data.sources",
    "load_images": "pipelines.data.sources",
    "load_data_for": "pipelines.data.stream",
}


__getattr__ = lazy_exports(__name__, _LAZY)


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
