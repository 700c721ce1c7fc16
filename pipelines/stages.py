"""The pipeline's stages as plain functions: the CLI and the Prefect flow both call these.

Stages take and return typed objects: the callers load the data once and pass it in; a generation
(here or as a Ray Job) ends in a `DatasetSummary`, a whole run in a `RunSummary`. Dicts appear only
at the edges: the flow's return value (`RunSummary.to_dict`, what Prefect stores) and JSON output.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pipelines.config import PipelineConfig, config_yaml
from pipelines.console import console
from pipelines.data import resolve_data_shape
from pipelines.data.imageset import ImageSet
from pipelines.data.stream import load_data_for
from pipelines.dataset_format import DATA_DIR, DatasetSummary
from pipelines.errors import DataError, PipelineError
from pipelines.evaluate import QualityReport, evaluate_saved_model
from pipelines.storage import join, open_url, strip_slash
from pipelines.training.epochs import format_epoch
from pipelines.training.export import LOSS_CURVE_FILE, TrainResult

if TYPE_CHECKING:
    from pipelines.readers import SyntheticManifest
    from pipelines.usefulness.report import UsefulnessReport

#: The merged config of a job, saved in its output directory (secrets redacted).
CONFIG_FILE = "config.yaml"


# ------------------------------------------------------------------------------------ results
@dataclass(frozen=True)
class DatasetCheck:
    """A committed dataset read back: rows in its Parquet footers, files, the schema's columns."""

    rows: int
    files: int
    columns: list[str]


@dataclass(frozen=True)
class RunSummary:
    """What `vaeaug run` made: the model, its held-out quality, the dataset, where the time went.

    The flow returns it as a dict (`to_dict`: Prefect's edge; the dataset's fields sit at the top
    level beside the model's); `from_dict` reads that dict back.

    Args:
        model_dir: the exported model.
        model_sha256: its weights' checksum.
        training_cached: the model came from the training cache (no training in this run).
        training_worker_nodes: Ray node id of each training worker (empty for local training).
        run_name: the Ray Train run (None for local training and a cached model's record without one).
        run_dir: where the run's checkpoints are.
        grid_path: the model's samples/reconstructions picture.
        final_epoch: the last epoch's figures ({} without history).
        quality: the model's held-out figures.
        dataset: the committed dataset.
        validated: the dataset as read back.
        timings: seconds per console stage.
    """

    model_dir: str
    model_sha256: str
    training_cached: bool
    training_worker_nodes: list[str | None]
    run_name: str | None
    run_dir: str | None
    grid_path: str
    final_epoch: dict[str, float]
    quality: QualityReport
    dataset: DatasetSummary
    validated: DatasetCheck
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The flow's return value: the model's keys, the dataset's, then "validated" and "timings"."""
        model = {f.name: getattr(self, f.name) for f in fields(self)}
        del model["dataset"], model["validated"], model["timings"]
        return {
            **model,
            "quality": self.quality.to_dict(),
            **self.dataset.to_dict(),
            "validated": asdict(self.validated),
            "timings": dict(self.timings),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunSummary:
        """Inverse of `to_dict` (e.g. the summary a flow run returned)."""
        own = {f.name for f in fields(cls)} - {"quality", "dataset", "validated", "timings"}
        dataset = DatasetSummary(**{f.name: raw[f.name] for f in fields(DatasetSummary)})
        return cls(
            **{name: raw[name] for name in own},
            quality=QualityReport.from_dict(raw["quality"]),
            dataset=dataset,
            validated=DatasetCheck(**raw["validated"]),
            timings=dict(raw.get("timings") or {}),
        )

    def with_timing(self, name: str, seconds: float) -> RunSummary:
        """The summary with one more entry in its timings."""
        return replace(self, timings={**self.timings, name: seconds})

    def pictures(self) -> dict[str, str]:
        """The run's pictures by what they show: the model's, then the dataset's."""
        return {**model_pictures(self.model_dir, self.grid_path), **self.dataset.pictures()}


# ------------------------------------------------------------------------------------- stages
def save_merged_config(cfg: PipelineConfig) -> str:
    """Write the merged config (secrets redacted) to `<output_dir>/config.yaml`; returns its path."""
    from pipelines.checks import make_output_dir

    assert cfg.output_dir is not None  # set when the config is built (`PipelineConfig._resolve_paths`)
    make_output_dir(cfg.output_dir, "output_dir")  # a file there is a one-line StorageError
    fs, root = open_url(cfg.output_dir)
    fs.pipe_file(join(root, CONFIG_FILE), config_yaml(cfg).encode())
    return join(cfg.output_dir, CONFIG_FILE)


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


def train_stage(cfg: PipelineConfig, data: ImageSet, verbose: bool = True) -> TrainResult:
    """Train (Ray Train, or this process with `train.backend=local`) and export to `cfg.model_dir`.

    Args:
        cfg: the pipeline config.
        data: the loaded images (`load_data`).
        verbose: print the budget line and one line per epoch.

    Returns:
        The export's `TrainResult` (a `DistributedTrainResult` from Ray Train).
    """
    if verbose:
        console.line(cfg.train.budget_line(data.source_split_sizes(cfg.train.val_fraction)[0]))
    on_epoch = epoch_printer(cfg.train.epochs) if verbose else None
    if cfg.train.backend == "local":
        from pipelines.training.local import fit_local

        _, _, result = fit_local(cfg, data, on_epoch=on_epoch)
        assert result is not None
        return result
    from pipelines.training.ray_train import train_distributed

    return train_distributed(cfg, data, on_epoch=on_epoch)


def train_job_stage(cfg: PipelineConfig) -> TrainResult:
    """`ray.submit_job`: train as a Ray Job on the cluster (which loads the data) and read its export."""
    from pipelines.rayjob import run_as_ray_job
    from pipelines.training.export import read_train_result

    run_as_ray_job(cfg, "train")
    return read_train_result(cfg.model_dir)


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


def evaluate_stage(cfg: PipelineConfig, data: ImageSet, model_dir: str | None = None) -> QualityReport:
    """Held-out quality figures of the exported model (on `data`, as loaded for training)."""
    return evaluate_saved_model(cfg, data, model_dir)


def usefulness_report_stage(
    cfg: PipelineConfig, dataset_dir: str, model_dir: str | None = None
) -> tuple[UsefulnessReport | None, str | None]:
    """The usefulness report of a committed dataset against the model's real data: (report, None), or
    (None, why not) when it cannot be measured (e.g. an unconditional model).

    The held-out split is the one the model trained with (recorded with it); the judge saved with the
    model is reused when it was trained on that split with `cfg.report`'s recipe. The real data is
    loaded here, in the model's own size and range.
    """
    from pipelines.readers import open_dataset
    from pipelines.usefulness.dataset import prepare_judging, report_for_files
    from vae.io import load_model, read_model_config

    model_dir = model_dir or cfg.model_dir
    meta = read_model_config(model_dir)
    model = load_model(model_dir)
    data = load_data_for(cfg, model.cfg)
    judging = prepare_judging(cfg, model, model_dir, {}, meta, data, curate=False)
    if judging.note is not None or judging.real is None or judging.judge is None:
        return None, judging.note
    manifest = open_dataset(dataset_dir, cfg.generate.storage_options)
    if manifest.class_names != judging.real.class_names:
        raise DataError(
            f"dataset {dataset_dir!r} has classes {manifest.data.get('class_names')}, the model "
            f"{judging.real.class_names}: evaluate a dataset generated by this model (--model)"
        )
    fs, _ = manifest.filesystem()
    paths = [open_url(u, cfg.generate.storage_options)[1] for u in manifest.files]
    curated = bool(manifest.data.get("curation"))
    report, _ = report_for_files(cfg.report, judging.real, fs, paths, manifest.rows, judging.judge, curated)
    return report, None


def read_back_summary(manifest: SyntheticManifest) -> DatasetSummary:
    """The summary of a dataset a Ray Job committed, read back through the readers."""
    return DatasetSummary.from_manifest(manifest.url, manifest.rows, manifest.files, manifest.data)


def generate_stage(
    cfg: PipelineConfig,
    data: ImageSet | None,
    model_dir: str | None = None,
    progress: bool = True,
    run_time: datetime | None = None,
) -> DatasetSummary:
    """Sample the synthetic dataset on Ray and commit it (see `pipelines.generate.generate`), or, with
    `ray.submit_job`, have a Ray Job do it and read the committed dataset back.

    Args:
        cfg: the pipeline config (`generate` section; `data` for variants and interpolations).
        data: the real images as loaded for training; None: the job loads them if it needs any.
        model_dir: the trained model (default `cfg.model_dir`).
        progress: show a progress bar.
        run_time: when the run was scheduled (per-run seeds derive from it); None: now.

    Returns:
        The committed dataset's `DatasetSummary`.
    """
    if cfg.ray.submit_job:
        from pipelines.rayjob import run_as_ray_job
        from pipelines.readers import open_dataset

        run_as_ray_job(cfg, "generate")
        return read_back_summary(open_dataset(cfg.dataset_dir, cfg.generate.storage_options))
    from pipelines.generate import generate

    with console.stage("generate", live=False) as stage:
        result = generate(cfg, model_dir=model_dir, data=data, progress=progress, run_time=run_time)
        actors = f"{result.num_actors} actor(s)" if result.num_actors else "this process"
        stage.note(f"{result.rows} rows at {result.rows_per_s:.0f} rows/s on {actors}")
    return DatasetSummary.of(result)


def validate_stage(dataset_dir: str, expected_rows: int, storage_options: dict | None = None) -> DatasetCheck:
    """Re-open a committed dataset with the readers and check its rows against the job's count.

    Args:
        dataset_dir: the committed dataset.
        expected_rows: rows the job reported.
        storage_options: fsspec options.

    Returns:
        Its rows (from the Parquet footers, equal to the manifest's), files, and the schema's columns.

    Raises:
        PipelineError: the dataset is not committed or its row counts disagree.
    """
    import pyarrow.parquet as pq

    from pipelines.readers import open_dataset

    manifest = open_dataset(dataset_dir, storage_options)
    fs, _ = manifest.filesystem()
    footer_rows = 0
    columns: list[str] = []
    for url in manifest.files:
        with fs.open(open_url(url, storage_options)[1], "rb") as f:
            meta = pq.ParquetFile(f).metadata
            footer_rows += meta.num_rows
            columns = meta.schema.to_arrow_schema().names
    if not (manifest.rows == footer_rows == expected_rows):
        raise PipelineError(
            f"dataset {dataset_dir} is inconsistent: manifest {manifest.rows} rows, files {footer_rows}, "
            f"job {expected_rows}: regenerate it with generate.if_exists=overwrite"
        )
    return DatasetCheck(rows=footer_rows, files=len(manifest.files), columns=columns)


# ------------------------------------------------------------------------------------ reports
def usefulness_lines(dataset: DatasetSummary) -> list[str]:
    """The console's usefulness summary of a committed dataset (or why there is none)."""
    from pipelines.usefulness.report import UsefulnessReport

    if not dataset.usefulness:
        return [f"usefulness: {dataset.usefulness_note or 'not measured'}"]
    lines = UsefulnessReport.from_dict(dataset.usefulness).summary_lines()
    curation = dataset.curation
    if curation:
        rates = [v["acceptance_rate"] for v in curation["per_class"].values()]
        lines.append(
            f"  curation: kept samples the judge labels as requested with p >= {curation['threshold']}; "
            f"acceptance {min(rates):.2f}-{max(rates):.2f} per class"
        )
    if dataset.picture_path:
        lines.append(f"  per-class picture: {dataset.picture_path}")
    return lines


def model_pictures(model_dir: str, grid_path: str) -> dict[str, str]:
    """The pictures exported with a model, by what they show."""
    return {"samples and reconstructions": grid_path, "loss curve": join(model_dir, LOSS_CURVE_FILE)}


def run_summary(summary: RunSummary) -> str:
    """The end of `vaeaug run`: where everything is, how good it is, what took the time, how to load it."""
    dataset = summary.dataset
    lines = ["", "Summary"]
    if summary.training_cached:
        lines.append(f"  model     {summary.model_dir}  (from the training cache)")
    else:
        lines.append(f"  model     {summary.model_dir}")
        if summary.run_name:
            lines.append(f"  run       {summary.run_name}  (checkpoints: {summary.run_dir})")
    lines.append(f"  held-out  {summary.quality.line()}")
    lines.append(
        f"  dataset   {dataset.dataset_dir}  ({dataset.rows} rows in {len(dataset.files)} files, committed)"
    )
    if dataset.per_class:
        lines.append("  per class " + ", ".join(f"{k}={v}" for k, v in dataset.per_class.items()))
    for what, path in summary.pictures().items():
        lines.append(f"  picture   {path}  ({what})")
    if summary.timings:
        lines.append("  time      " + ", ".join(f"{k} {v:.1f} s" for k, v in summary.timings.items()))
    lines += ["", *usefulness_lines(dataset), "", "Load it:", how_to_load(dataset.dataset_dir)]
    return "\n".join(lines)


def how_to_load(dataset_dir: str) -> str:
    """A snippet that loads the committed dataset downstream (PyTorch, Ray Data, Hugging Face)."""
    return (
        "from pipelines.readers import SyntheticDataset  # PyTorch: (image, label) items, len, classes\n"
        f"ds = SyntheticDataset({dataset_dir!r})\n"
        f"# Ray Data: pipelines.readers.read_synthetic({dataset_dir!r}).iter_torch_batches()\n"
        f"# Hugging Face: datasets.load_dataset('parquet', data_files={strip_slash(dataset_dir)!r} + "
        f"'/{DATA_DIR}/*.parquet')"
    )
