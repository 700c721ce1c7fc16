"""Typed configuration of the input data: which source, where it lives, which part of it to load."""

from __future__ import annotations

from typing import ClassVar, Self

from pydantic import Field, model_validator

from pipelines.sections import Section, StorageOptions
from vae.config import ConfigError

#: Sources read from a local root folder in their official layout (`path` defaults to `DEFAULT_ROOT`):
#: MNIST's by torchvision, CIFAR-10's by `pipelines.data.cifar` (torchvision's reader unpickles).
TORCHVISION_SOURCES: tuple[str, ...] = ("mnist", "fashion-mnist", "cifar10")
#: Sources read from a user-given local path or fsspec URL (`path` is required).
URL_SOURCES: tuple[str, ...] = ("folder", "parquet")
#: Every source name `DataConfig.source` accepts; `pipelines.data.sources.LOADERS` has one loader each.
SOURCES: tuple[str, ...] = ("digits", *TORCHVISION_SOURCES, *URL_SOURCES)
#: Root folder of the torchvision sources when `path` is not given.
DEFAULT_ROOT = "./data"
SPLITS: tuple[str, ...] = ("train", "test")


class DataConfig(Section):
    """Where the training images come from.

    Args:
        source: one of `SOURCES`: "digits" (scikit-learn's 8x8 digits, embedded, works offline),
            "mnist", "fashion-mnist", "cifar10" (torchvision), "folder" (one subfolder per class of
            PNG/JPEG files) or "parquet" (Hugging Face layout: image struct<bytes, path> + int label).
        path: for torchvision sources the local root folder (default "./data"); for "folder" and
            "parquet" the required local path or fsspec URL (s3://, gs://, memory://, file://).
            Ignored by "digits".
        download: let torchvision download a missing dataset into `path`.
        split: "train" or "test" (torchvision sources). "digits" has no official split and always
            loads all 1797 images; "folder" and "parquet" load what `path` points at.
        image_column: Parquet column holding the images (struct<bytes: binary, path: string>).
        label_column: Parquet column holding the integer class labels.
        limit: load only the first N images (in the source's stable order), for quick runs.
        storage_options: extra fsspec options for `path` (e.g. {"anon": true} or endpoint settings).
    """

    section: ClassVar[str] = "data"

    # `source` and `split` stay strings checked below (the messages name the choices); the schema
    # still lists them, so Prefect's form offers a choice.
    source: str = Field("digits", json_schema_extra={"enum": list(SOURCES)})
    path: str | None = None
    download: bool = False
    split: str = Field("train", json_schema_extra={"enum": list(SPLITS)})
    image_column: str = "image"
    label_column: str = "label"
    limit: int | None = None
    storage_options: StorageOptions = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> Self:
        """Raise `ConfigError` naming the first invalid field and how to fix it."""
        if self.source not in SOURCES:
            raise ConfigError(f"data.source={self.source!r} is unknown: use one of {list(SOURCES)}")
        if self.path is not None and not self.path.strip():
            raise ConfigError(f"data.path={self.path!r}: give a non-empty path or URL, or null")
        if self.source in URL_SOURCES and self.path is None:
            raise ConfigError(
                f"data.path is required for data.source={self.source!r}: give a local path or URL "
                "(s3://, gs://, memory://, file://)"
            )
        if self.source in TORCHVISION_SOURCES and self.path is not None and _is_remote(self.path):
            raise ConfigError(
                f"data.path={self.path!r}: source {self.source!r} is read from a local "
                "folder only: give a local directory (or copy the files there first)"
            )
        if self.split not in SPLITS:
            raise ConfigError(f"data.split={self.split!r}: use one of {list(SPLITS)}")
        for key in ("image_column", "label_column"):
            if not getattr(self, key):
                raise ConfigError(f"data.{key}='': give the name of a Parquet column")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"data.limit={self.limit!r}: give a positive integer, or null for all images")
        return self

    @property
    def root(self) -> str | None:
        """`path`, or `DEFAULT_ROOT` for torchvision sources when no path was given."""
        if self.path is None and self.source in TORCHVISION_SOURCES:
            return DEFAULT_ROOT
        return self.path


def _is_remote(path: str) -> bool:
    """Whether `path` is a URL other than file:// (torchvision cannot read those)."""
    return "://" in path and not path.startswith("file://")


__all__ = [
    "DEFAULT_ROOT",
    "SOURCES",
    "SPLITS",
    "TORCHVISION_SOURCES",
    "URL_SOURCES",
    "DataConfig",
]
