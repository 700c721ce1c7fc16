"""Checks of a whole job before any work: a user error must cost seconds, not a training run.

`check_job` runs before Prefect, Ray or the data load start (and again at the start of the flow, for
deployments): the config, the data's shape (image headers), the dataset output (`generate.if_exists`
against what is there, and a write probe), the model folder and the checkpoint storage. Every
failure is a one-line `PipelineError`/`ConfigError` naming the setting and the fix; the stages then
never retry them (see `pipelines.flow.transient`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fsspec import AbstractFileSystem

from pipelines.config import PipelineConfig
from pipelines.errors import StorageError
from pipelines.storage import first_line, not_writable, open_url, probe_writable


@dataclass
class JobCheck:
    """What the checks found.

    Args:
        shape_note: what was inferred from the data (None: nothing left to infer).
        dataset_dir: where this run's dataset will be written (a new version's folder, when the
            output keeps versions).
    """

    shape_note: str | None
    dataset_dir: str | None


def _file_error(url: str, key: str) -> StorageError:
    return StorageError(
        f"{key} {url!r} is not writable (it is a file, not a folder): give a folder path, or move the "
        "file away"
    )


def refuse_file(
    url: str, key: str, storage_options: dict[str, Any] | None = None
) -> tuple[AbstractFileSystem, str]:
    """Refuse an output folder setting that names an existing file (nothing is created).

    Args:
        url: the folder (local path or fsspec URL).
        key: the setting, for the message ("output_dir").
        storage_options: fsspec options for `url`.

    Returns:
        (fs, path): the folder's filesystem and its path there.

    Raises:
        StorageError: `url` is a file, or its storage cannot be reached.
    """
    try:
        fs, path = open_url(url, storage_options)
        is_file = fs.isfile(path)
    except Exception as exc:  # any backend: a bad URL, missing credentials, an unreachable endpoint
        raise StorageError(
            f"{key} {url!r} cannot be checked ({type(exc).__name__}: {first_line(exc)}): give a local "
            "path or a reachable URL"
        ) from None
    if is_file:
        raise _file_error(url, key)
    return fs, path


def make_output_dir(url: str, key: str, storage_options: dict[str, Any] | None = None) -> None:
    """Create the folder `url` (and its parents) if it does not exist.

    Args:
        url: the folder (local path or fsspec URL).
        key: the setting, for the message ("output_dir").
        storage_options: fsspec options for `url`.

    Raises:
        StorageError: `url` is a file, or the folder cannot be created.
    """
    fs, path = refuse_file(url, key, storage_options)
    try:
        fs.makedirs(path, exist_ok=True)
    except Exception as exc:  # PermissionError, NotADirectoryError (a file above it), botocore...
        raise not_writable(url, key, exc) from None


def check_job(cfg: PipelineConfig, train: bool = True, generate: bool = True) -> JobCheck:
    """Check what a job will read and write, changing nothing but probe files.

    Args:
        cfg: the pipeline config; the model's unset size/channels are resolved from the data here.
        train: the job trains (the model folder and `train.storage_path` must be writable).
        generate: the job writes a dataset (`generate.output` must be free or `if_exists` must say
            what to do, and writable).

    Returns:
        `JobCheck`.

    Raises:
        ConfigError, DataError, StorageError: the first problem found (one line with the fix).
    """
    from pipelines.data import resolve_data_shape

    refuse_file(cfg.output_dir, "output_dir")  # every job writes its config.yaml there
    note = resolve_data_shape(cfg)
    if train:
        probe_writable(cfg.output_dir, "output_dir")
        if cfg.train.backend == "ray" and not cfg.ray.submit_job:
            from pipelines.training.preflight import resolve_storage

            probe_writable(resolve_storage(cfg.train.storage_path), "train.storage_path")
    dataset_dir = None
    if generate:
        from pipelines.generate.commit import resolve_output

        g = cfg.generate
        dataset_dir = resolve_output(cfg.dataset_dir, g.if_exists, g.storage_options).url
    return JobCheck(shape_note=note, dataset_dir=dataset_dir)


__all__ = ["JobCheck", "check_job", "make_output_dir", "refuse_file"]
