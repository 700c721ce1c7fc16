"""The pipeline's stages as plain functions: the CLI and the Prefect flow both call these."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import fsspec

from pipelines.config import PipelineConfig, save_config
from pipelines.console import console
from pipelines.data import resolve_data_shape
from pipelines.data.imageset import ImageSet, split_sizes
from pipelines.data.stream import load_data_for
from pipelines.errors import DataError
from pipelines.evaluate import evaluate_saved_model
from pipelines.training.common import format_epoch
from pipelines.training.export import TrainResult

if TYPE_CHECKING:
    from pipelines.usefulness.report import UsefulnessReport

CONFIG_FILE = "config.yaml"


def save_merged_config(cfg: PipelineConfig) -> str:
    """Write the merged config (secrets redacted) to `<output_dir>/config.yaml`; returns its path."""
    from pipelines.checks import make_output_dir

    make_output_dir(cfg.output_dir, "output_dir")  # a file there is a one-line StorageError
    fs, root = fsspec.core.url_to_fs(cfg.output_dir)
    fs.pipe_file(root.rstrip("/") + "/" + CONFIG_FILE, save_config(cfg).encode())
    return cfg.output_dir.rstrip("/") + "/" + CONFIG_FILE


def load_data(cfg: PipelineConfig) -> ImageSet:
    """The seed images, converted to the model's size, channels and range: all of them, or a bounded
    sample standing for a source the run streams (`pipelines.data.stream`).

    The size and channels the user left unset are inferred from the data first (`resolve_data_shape`,
    which updates `cfg.model`; a no-op when the caller already resolved them).
    """
    resolve_data_shape(cfg)
    return load_data_for(cfg)


def describe_data(cfg: PipelineConfig, data: ImageSet) -> str:
    """One line about the loaded data."""
    shape = "x".join(map(str, data.image_shape))
    line = f"data: {cfg.data.source}, {data.source_size} images of {shape}, {data.num_classes} classes"
    if data.stream is not None:
        size = max(data.stream.index.nbytes, data.source_size * data.stream.index.image_bytes) / 1e6
        line += (
            f" ({size:.0f} MB: streamed to the workers by Ray Data; {len(data)} sampled for the "
            "driver's reports)"
        )
    return line


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
            console.line(describe_data(cfg, data))
    if verbose:
        console.line(cfg.train.budget_line(split_sizes(data.source_size, cfg.train.val_fraction)[0]))
    on_epoch = epoch_printer(cfg.train.epochs) if verbose else None
    if cfg.train.backend == "local":
        from pipelines.training.local import fit_local

        _, _, result = fit_local(cfg, data, on_epoch=on_epoch)
        assert result is not None
        return result
    from pipelines.training.ray_train import train_distributed

    return train_distributed(cfg, data, on_epoch=on_epoch)


def epoch_printer(epochs: int) -> Callable[[dict[str, float]], None]:
    """A per-epoch callback printing the epoch's figures and the time left (mean epoch time so far)."""
    started = time.perf_counter()
    marks: list[float] = []

    def show(row: dict[str, float]) -> None:
        now = time.perf_counter()
        marks.append(now)
        per_epoch = (marks[-1] - marks[0]) / (len(marks) - 1) if len(marks) > 1 else now - started
        left = max(0, epochs - int(row["epoch"]))
        # from the second epoch on: the first one also pays the workers' start-up
        eta = f"  ETA {per_epoch * left:.0f} s" if left and len(marks) > 1 else ""
        console.line(format_epoch(row, epochs) + eta)

    return show


def quality_line(quality: dict[str, Any]) -> str:
    """The held-out quality figures on one line."""
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in quality.items())


def evaluate_stage(cfg: PipelineConfig, data: ImageSet | None = None, model_dir: str | None = None) -> dict:
    """Held-out quality figures of the exported model (see `pipelines.evaluate.QualityReport`)."""
    if data is None:
        data = load_data(cfg)
    return evaluate_saved_model(cfg, data, model_dir).to_dict()


def usefulness_report_stage(
    cfg: PipelineConfig, dataset_dir: str, model_dir: str | None = None
) -> tuple[UsefulnessReport | None, str | None]:
    """The usefulness report of a committed dataset against the model's real data: (report, None), or
    (None, why not) when it cannot be measured (e.g. an unconditional model).

    The held-out split is the one the model trained with (recorded with it); the judge saved with the
    model is reused when it was trained on that split with `cfg.report`'s recipe.
    """
    from pipelines.generate.commit import open_fs
    from pipelines.readers import open_dataset
    from pipelines.usefulness.dataset import prepare_judging, report_for_files
    from vae.io import load_model, read_model_config

    model_dir = model_dir or cfg.model_dir
    meta = read_model_config(model_dir)
    model = load_model(model_dir)
    data = load_data_for(cfg, model.cfg)  # in the model's own size and range
    judging = prepare_judging(cfg, model, model_dir, {}, meta, data, curate=False)
    if judging.note is not None or judging.real is None or judging.judge is None:
        return None, judging.note
    manifest = open_dataset(dataset_dir, cfg.generate.storage_options)
    if list(manifest.data.get("class_names") or []) != judging.real.class_names:
        raise DataError(
            f"dataset {dataset_dir!r} has classes {manifest.data.get('class_names')}, the model "
            f"{judging.real.class_names}: evaluate a dataset generated by this model (--model)"
        )
    fs, _ = manifest.filesystem()
    paths = [open_fs(u, cfg.generate.storage_options)[1] for u in manifest.files]
    curated = bool(manifest.data.get("curation"))
    report, _ = report_for_files(cfg.report, judging.real, fs, paths, manifest.rows, judging.judge, curated)
    return report, None


def usefulness_stage(cfg: PipelineConfig, dataset_dir: str, model_dir: str | None = None) -> list[str]:
    """The usefulness report of a committed dataset as console lines (see `usefulness_report_stage`)."""
    report, note = usefulness_report_stage(cfg, dataset_dir, model_dir)
    return report.summary_lines() if report is not None else [f"usefulness: {note}"]


def generate_stage(
    cfg: PipelineConfig,
    data: ImageSet | None = None,
    model_dir: str | None = None,
    progress: bool = True,
    run_time: datetime | None = None,
) -> dict[str, Any]:
    """Sample the synthetic dataset on Ray and commit it (see `pipelines.generate.generate`).

    Args:
        cfg: the pipeline config (`generate` section; `data` for variants and interpolations).
        data: the real images, if already loaded.
        model_dir: the trained model (default `cfg.model_dir`).
        progress: show a progress bar.
        run_time: when the run was scheduled (per-run seeds derive from it); None: now.

    Returns:
        dataset_dir, rows, files, per_class, per_method, manifest_path, rows_per_s, usefulness (the
        report dict or None), usefulness_note, curation, picture_path, preview_path.
    """
    if cfg.ray.submit_job:
        from pipelines.rayjob import run_as_ray_job
        from pipelines.readers import open_dataset

        run_as_ray_job(cfg, "generate")
        manifest = open_dataset(cfg.dataset_dir, cfg.generate.storage_options)
        return _dataset_summary(manifest)
    from pipelines.generate import generate

    with console.stage("generate", live=False) as stage:
        result = generate(cfg, model_dir=model_dir, data=data, progress=progress, run_time=run_time)
        actors = f"{result.num_actors} actor(s)" if result.num_actors else "this process"
        stage.note(f"{result.rows} rows at {result.rows_per_s:.0f} rows/s on {actors}")
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
        "preview_path": result.preview_path,
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


def picture_paths(summary: dict[str, Any]) -> dict[str, str]:
    """The pictures a run wrote, by what they show (only those that exist in the summary)."""
    from pipelines.training.export import LOSS_CURVE_FILE

    model_dir = summary.get("model_dir")
    found = {
        "samples and reconstructions": summary.get("grid_path"),
        "loss curve": f"{model_dir.rstrip('/')}/{LOSS_CURVE_FILE}" if model_dir else None,
        "dataset preview": summary.get("preview_path"),
        "usefulness per class": summary.get("picture_path"),
    }
    return {k: v for k, v in found.items() if v}


def run_summary(summary: dict[str, Any]) -> str:
    """The end of `vaeaug run`: where everything is, how good it is, what took the time, how to load it."""
    lines = ["", "Summary"]
    if summary.get("training_cached"):
        lines.append(f"  model     {summary['model_dir']}  (from the training cache)")
    else:
        lines.append(f"  model     {summary['model_dir']}")
        if summary.get("run_name"):
            lines.append(f"  run       {summary['run_name']}  (checkpoints: {summary['run_dir']})")
    if summary.get("quality"):
        lines.append(f"  held-out  {quality_line(summary['quality'])}")
    lines.append(
        f"  dataset   {summary['dataset_dir']}  ({summary['rows']} rows in {len(summary['files'])} files, "
        "committed)"
    )
    if summary.get("per_class"):
        lines.append("  per class " + ", ".join(f"{k}={v}" for k, v in summary["per_class"].items()))
    for what, path in picture_paths(summary).items():
        lines.append(f"  picture   {path}  ({what})")
    timings = summary.get("timings") or {}
    if timings:
        lines.append("  time      " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    lines += ["", *usefulness_lines(summary), "", "Load it:", how_to_load(summary["dataset_dir"])]
    return "\n".join(lines)


def how_to_load(dataset_dir: str) -> str:
    """A snippet that loads the committed dataset downstream (PyTorch, Ray Data, Hugging Face)."""
    return (
        "from pipelines.readers import SyntheticDataset  # PyTorch: (image, label) items, len, classes\n"
        f"ds = SyntheticDataset({dataset_dir!r})\n"
        f"# Ray Data: pipelines.readers.read_synthetic({dataset_dir!r}).iter_torch_batches()\n"
        f"# Hugging Face: datasets.load_dataset('parquet', data_files={dataset_dir.rstrip('/')!r} + "
        "'/data/*.parquet')"
    )
