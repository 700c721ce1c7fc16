"""The pipeline's stages as plain functions: the CLI and the Prefect flow both call these."""

from __future__ import annotations

from typing import Any

import fsspec

from pipelines.config import PipelineConfig, save_config
from pipelines.data import load_images, resolve_data_shape
from pipelines.data.imageset import ImageSet
from pipelines.evaluate import evaluate_saved_model
from pipelines.training.common import format_epoch
from pipelines.training.export import TrainResult

CONFIG_FILE = "config.yaml"


def save_merged_config(cfg: PipelineConfig) -> str:
    """Write the merged config (secrets redacted) to `<output_dir>/config.yaml`; returns its path."""
    fs, root = fsspec.core.url_to_fs(cfg.output_dir)
    fs.makedirs(root, exist_ok=True)
    fs.pipe_file(root.rstrip("/") + "/" + CONFIG_FILE, save_config(cfg).encode())
    return cfg.output_dir.rstrip("/") + "/" + CONFIG_FILE


def load_data(cfg: PipelineConfig) -> ImageSet:
    """The seed images, converted to the model's size, channels and range.

    The size and channels the user left unset are inferred from the data first (`resolve_data_shape`,
    which updates `cfg.model`; a no-op when the caller already resolved them).
    """
    resolve_data_shape(cfg)
    return load_images(cfg.data, cfg.model)


def describe_data(cfg: PipelineConfig, data: ImageSet) -> str:
    """One line about the loaded data."""
    shape = "x".join(map(str, data.image_shape))
    return f"data: {cfg.data.source}, {len(data)} images of {shape}, {data.num_classes} classes"


def train_stage(cfg: PipelineConfig, data: ImageSet | None = None, verbose: bool = True) -> TrainResult:
    """Train (Ray Train, or this process with `train.backend=local`) and export to `cfg.model_dir`.

    Args:
        cfg: the pipeline config.
        data: the loaded images (loaded here when None).
        verbose: print one line per epoch.

    Returns:
        The export's `TrainResult`.
    """
    if cfg.ray.submit_job:
        from pipelines.rayjob import run_as_ray_job
        from pipelines.training.export import read_train_result

        run_as_ray_job(cfg, "train")
        return read_train_result(cfg.model_dir)
    if data is None:
        data = load_data(cfg)
        if verbose:
            print(describe_data(cfg, data))
    if verbose:
        train_images = len(data) - len(data.split(cfg.train.val_fraction, seed=cfg.train.seed)[1])
        print(cfg.train.budget_line(train_images), flush=True)
    on_epoch = (lambda row: print(format_epoch(row, cfg.train.epochs), flush=True)) if verbose else None
    if cfg.train.backend == "local":
        from pipelines.training.local import fit_local

        _, _, result = fit_local(cfg, data, on_epoch=on_epoch)
        assert result is not None
        return result
    from pipelines.training.ray_train import train_distributed

    return train_distributed(cfg, data, on_epoch=on_epoch)


def evaluate_stage(cfg: PipelineConfig, data: ImageSet | None = None, model_dir: str | None = None) -> dict:
    """Held-out quality figures of the exported model (see `pipelines.evaluate.QualityReport`)."""
    if data is None:
        data = load_data(cfg)
    return evaluate_saved_model(cfg, data, model_dir).to_dict()


def usefulness_stage(
    cfg: PipelineConfig, dataset_dir: str, data: ImageSet | None = None, model_dir: str | None = None
) -> list[str]:
    """The usefulness report of a committed dataset against `cfg`'s real data; console lines.

    The judge saved with the model is reused when it fits the data and `cfg.report`'s recipe.
    """
    from pipelines.generate.commit import open_fs
    from pipelines.readers import open_dataset
    from pipelines.usefulness.dataset import real_splits, recipe_of, report_for_files
    from pipelines.usefulness.judge import ensure_judge
    from vae.io import load_model

    model_dir = model_dir or cfg.model_dir
    model = load_model(model_dir)
    data = data if data is not None else load_data(cfg)
    real = real_splits(cfg, data, model.cfg)
    if len(real.heldout.images) < 2:
        return ["usefulness: not measured: train.val_fraction leaves fewer than 2 held-out images"]
    judge, _ = ensure_judge(model_dir, real.train, real.class_names, recipe_of(cfg.report), real.fingerprint)
    manifest = open_dataset(dataset_dir, cfg.generate.storage_options)
    fs, _ = manifest.filesystem()
    paths = [open_fs(u, cfg.generate.storage_options)[1] for u in manifest.files]
    report, _ = report_for_files(cfg.report, real, fs, paths, manifest.rows, judge)
    return report.summary_lines()


def generate_stage(
    cfg: PipelineConfig, data: ImageSet | None = None, model_dir: str | None = None, progress: bool = True
) -> dict[str, Any]:
    """Sample the synthetic dataset on Ray and commit it (see `pipelines.generate.generate`).

    Args:
        cfg: the pipeline config (`generate` section; `data` for variants and interpolations).
        data: the real images, if already loaded.
        model_dir: the trained model (default `cfg.model_dir`).
        progress: show a progress bar.

    Returns:
        dataset_dir, rows, files, per_class, per_method, manifest_path, rows_per_s, usefulness (the
        report dict or None), usefulness_note, curation, picture_path.
    """
    if cfg.ray.submit_job:
        from pipelines.rayjob import run_as_ray_job
        from pipelines.readers import open_dataset

        run_as_ray_job(cfg, "generate")
        manifest = open_dataset(cfg.dataset_dir, cfg.generate.storage_options)
        return _dataset_summary(manifest)
    from pipelines.generate import generate

    result = generate(cfg, model_dir=model_dir, data=data, progress=progress)
    return {
        "dataset_dir": result.dataset_dir,
        "rows": result.rows,
        "files": result.files,
        "per_class": result.per_class,
        "per_method": result.per_method,
        "manifest_path": result.manifest_path,
        "rows_per_s": result.rows_per_s,
        "usefulness": result.usefulness,
        "usefulness_note": result.usefulness_note,
        "curation": result.curation,
        "picture_path": result.picture_path,
    }


def _dataset_summary(manifest: Any) -> dict[str, Any]:
    data = manifest.data
    usefulness = data.get("usefulness") or {}
    return {
        "usefulness": None if "headline" not in usefulness else usefulness,
        "usefulness_note": usefulness.get("skipped"),
        "curation": data.get("curation") or {},
        "picture_path": None,
        "dataset_dir": manifest.url,
        "rows": manifest.rows,
        "files": manifest.files,
        "per_class": dict(data.get("per_class") or {}),
        "per_method": dict(data.get("per_method") or {}),
        "manifest_path": manifest.url.rstrip("/") + "/manifest.json",
    }


def validate_stage(
    dataset_dir: str, expected_rows: int, storage_options: dict | None = None
) -> dict[str, Any]:
    """Re-open a committed dataset with the readers and check its rows against the job's count.

    Args:
        dataset_dir: the committed dataset.
        expected_rows: rows the job reported.
        storage_options: fsspec options.

    Returns:
        rows (from the manifest and from the Parquet footers), files, and the schema's column names.

    Raises:
        PipelineError: the dataset is not committed or its row counts disagree.
    """
    import pyarrow.parquet as pq

    from pipelines.errors import PipelineError
    from pipelines.readers import open_dataset

    manifest = open_dataset(dataset_dir, storage_options)
    fs, _ = manifest.filesystem()
    footer_rows = 0
    columns: list[str] = []
    for url in manifest.files:
        _, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
        with fs.open(path, "rb") as f:
            meta = pq.ParquetFile(f).metadata
            footer_rows += meta.num_rows
            columns = meta.schema.to_arrow_schema().names
    if not (manifest.rows == footer_rows == expected_rows):
        raise PipelineError(
            f"dataset {dataset_dir} is inconsistent: manifest {manifest.rows} rows, files {footer_rows}, "
            f"job {expected_rows}: regenerate it with generate.if_exists=overwrite"
        )
    return {"rows": footer_rows, "files": len(manifest.files), "columns": columns}


def usefulness_lines(summary: dict[str, Any]) -> list[str]:
    """The console's usefulness summary of a generate result (or why there is none)."""
    from pipelines.usefulness.report import UsefulnessReport

    report = summary.get("usefulness")
    if not report:
        return [f"usefulness: {summary.get('usefulness_note') or 'not measured'}"]
    lines = UsefulnessReport.from_dict(report).summary_lines()
    curation = summary.get("curation") or {}
    if curation:
        rates = [v["acceptance_rate"] for v in curation["per_class"].values()]
        lines.append(
            f"  curation: kept samples the judge labels as requested with p >= {curation['threshold']}; "
            f"acceptance {min(rates):.2f}-{max(rates):.2f} per class"
        )
    if summary.get("picture_path"):
        lines.append(f"  per-class picture: {summary['picture_path']}")
    return lines


def how_to_load(dataset_dir: str) -> str:
    """A snippet that loads the committed dataset downstream."""
    return (
        f"from pipelines.readers import SyntheticDataset  # PyTorch, streams from any fsspec URL\n"
        f"ds = SyntheticDataset({dataset_dir!r})\n"
        f"# or: datasets.load_dataset('parquet', data_files={dataset_dir.rstrip('/')!r} + '/data/*.parquet')"
    )
