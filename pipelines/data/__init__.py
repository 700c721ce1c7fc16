"""Input data for training: typed config, the `ImageSet` container and `load_images` over all sources.

>>> from pipelines.data import DataConfig, load_images
>>> images = load_images(DataConfig(source="digits", limit=10), VAEConfig())  # doctest: +SKIP
"""

from pipelines.data.config import DEFAULT_ROOT, SOURCES, DataConfig
from pipelines.data.decode import IMAGE_EXTENSIONS
from pipelines.data.imageset import ImageSet
from pipelines.data.sources import LOADERS, load_images

__all__ = ["DEFAULT_ROOT", "IMAGE_EXTENSIONS", "LOADERS", "SOURCES", "DataConfig", "ImageSet", "load_images"]
